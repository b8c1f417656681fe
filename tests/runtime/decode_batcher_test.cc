// Continuous batching on a tiny random-weight V4 model: concurrent generations through one
// DecodeBatcher produce the tokens they produce alone (greedy), the scheduler really put several
// sequences in one pass, and prefill chunks interleave with decode steps.
#include "runtime/decode_batcher.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/model_init.h"
#include "runtime/native_backend.h"

namespace agentrt {
namespace {

namespace fs = std::filesystem;

class DecodeBatcherTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path tok = fs::path(AGENTRT_HOME) / "models" / "deepseek-v3-tokenizer";
    if (!fs::exists(tok / "tokenizer.json")) return;
    dir_ = fs::temp_directory_path() / ("agentrt-batch-test-" + std::to_string(::getpid()));
    engine::ModelInitOptions options;
    options.tokenizer_dir = tok;
    options.seed = 11;
    engine::write_random_model(dir_, options);
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (dir_.empty()) GTEST_SKIP() << "tokenizer not found (run scripts/setup.sh)";
  }
  static GenerationRequest greedy_request(int i) {
    GenerationRequest r;
    chat::Message user;
    user.content = "Session " + std::to_string(i) + ": tell me about the number " +
                   std::to_string(i * 7 + 1) + ".";
    r.messages = {user};
    r.max_tokens = 12;
    r.sampling.temperature = 0;
    return r;
  }
  static std::vector<std::string> run_all(NativeBackend& backend, int n, bool concurrent) {
    std::vector<std::string> out(n);
    const auto one = [&](int i) {
      std::string text;
      const auto g = backend.generate(
          greedy_request(i), [&](const chat::ParseEvent& e) { text += e.text; }, nullptr);
      out[i] = text + "|" + std::to_string(g.usage.completion_tokens);
    };
    if (!concurrent) {
      for (int i = 0; i < n; ++i) one(i);
      return out;
    }
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) threads.emplace_back(one, i);
    for (auto& t : threads) t.join();
    return out;
  }
  static inline fs::path dir_;
};

TEST_F(DecodeBatcherTest, ConcurrentGenerationsMatchSequentialOnesAndShareForwardPasses) {
  constexpr int kSessions = 4;
  NativeBackend direct(dir_);
  const auto sequential = run_all(direct, kSessions, false);
  NativeBackendOptions options;
  options.batching = DecodeBatcherOptions{};
  options.batching->prefill_chunk = 16;  // several chunks per prompt: interleaving is exercised
  NativeBackend batched(dir_, options);
  const auto concurrent = run_all(batched, kSessions, true);
  for (int i = 0; i < kSessions; ++i) EXPECT_EQ(concurrent[i], sequential[i]) << "session " << i;
  const auto stats = batched.batcher()->stats();
  EXPECT_GT(stats.batched_passes, 0) << "no pass carried more than one sequence";
  EXPECT_GE(stats.max_batch_seen, 2);
  EXPECT_GT(stats.prefill_chunks, kSessions);
}

TEST_F(DecodeBatcherTest, ChunkedPrefillMatchesOnePassAndDecodeStepsRunMeanwhile) {
  const auto model = engine::Model::load(dir_);
  DecodeBatcherOptions options;
  options.prefill_chunk = 8;
  options.gather_window = std::chrono::microseconds(0);
  DecodeBatcher batcher(model, options);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 96; ++i) prompt.push_back(100 + (i * 37) % 5000);
  const auto reference = model->new_sequence()->forward(prompt);

  auto long_seq = model->new_sequence();
  auto short_seq = model->new_sequence();
  short_seq->forward(std::span(prompt).first(4));
  std::atomic<bool> prefill_done{false};
  std::vector<float> chunked;
  std::thread prefill([&] {
    DecodeBatcher::Activity a(batcher);
    chunked = batcher.forward(*long_seq, prompt);
    prefill_done = true;
  });
  // While the 12-chunk prefill runs, single decode steps keep being served.
  int steps_during_prefill = 0;
  {
    DecodeBatcher::Activity a(batcher);
    for (int i = 0; i < 6; ++i) {
      const int32_t t = 200 + i;
      batcher.forward(*short_seq, std::span(&t, 1));
      if (!prefill_done) ++steps_during_prefill;
    }
  }
  prefill.join();
  ASSERT_EQ(chunked.size(), reference.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    diff += (chunked[i] - reference[i]) * (chunked[i] - reference[i]);
    norm += reference[i] * reference[i];
  }
  EXPECT_LE(std::sqrt(diff / norm), 1e-4);
  EXPECT_EQ(long_seq->length(), 96);
  EXPECT_EQ(short_seq->length(), 10);
  EXPECT_GT(steps_during_prefill, 0) << "decode steps waited for the whole prefill";
  EXPECT_GE(batcher.stats().prefill_chunks, 12);
}

// A step that brings its sampler is chosen in the pass: the same token as the logits row and a
// host sample; a mask that allows nothing throws invalid_argument with the token fed.
TEST_F(DecodeBatcherTest, ForwardAndSampleChoosesInThePass) {
  const auto model = engine::Model::load(dir_);
  DecodeBatcher batcher(model);
  DecodeBatcher::Activity activity(batcher);
  auto a = model->new_sequence(), b = model->new_sequence();
  const std::vector<int32_t> prompt = {100, 200, 300, 400};
  engine::Sampler sa(engine::SamplingParams{.temperature = 0.0f}),
      sb(engine::SamplingParams{.temperature = 0.0f});
  std::vector<uint32_t> odd(size_t((model->vocab_size() + 31) / 32), 0xaaaaaaaau);
  const engine::TokenMask tm{odd.data(), odd.size()};
  // A prompt (sampled on the host after the prefill), then one-token steps (chosen in the pass).
  auto got = batcher.forward_and_sample(*a, prompt, sa, tm);
  auto want = sb.sample(b->forward(prompt), tm);
  EXPECT_EQ(got.token, want.token);
  for (int step = 0; step < 3; ++step) {
    const std::vector<int32_t> next = {got.token};
    got = batcher.forward_and_sample(*a, next, sa, tm);
    want = sb.sample(b->forward(next), tm);
    ASSERT_EQ(got.token, want.token) << "step " << step;
    EXPECT_EQ(got.token % 2, 1);
    EXPECT_NEAR(got.logprob, want.logprob, 1e-5);
  }
  std::vector<uint32_t> none(odd.size(), 0u);
  const int64_t before = a->length();
  const std::vector<int32_t> next = {got.token};
  EXPECT_THROW(batcher.forward_and_sample(*a, next, sa, {none.data(), none.size()}),
               std::invalid_argument);
  EXPECT_EQ(a->length(), before + 1);
  EXPECT_GT(batcher.stats().decode_steps, 0);
}

// A model that records the hint each decode_batch_and_sample call carries, the work done by the
// model it wraps.
class HintRecordingModel final : public engine::Model {
 public:
  explicit HintRecordingModel(std::shared_ptr<const engine::Model> inner)
      : inner_(std::move(inner)) {}
  const engine::ModelConfig& config() const override { return inner_->config(); }
  int32_t vocab_size() const override { return inner_->vocab_size(); }
  std::unique_ptr<engine::ModelSequence> new_sequence() const override {
    return inner_->new_sequence();
  }
  std::vector<std::vector<float>> decode_batch(std::span<engine::ModelSequence* const> seqs,
                                               std::span<const int32_t> tokens) const override {
    return inner_->decode_batch(seqs, tokens);
  }
  std::vector<BatchChoice> decode_batch_and_sample(
      std::span<engine::ModelSequence* const> seqs, std::span<const int32_t> tokens,
      std::span<engine::Sampler* const> samplers, std::span<const engine::TokenMask> masks,
      const BatchChoiceOptions& options) const override {
    {
      std::lock_guard lock(mutex_);
      hints_.push_back(options.expect_same_batch);
    }
    return inner_->decode_batch_and_sample(seqs, tokens, samplers, masks, options);
  }
  std::vector<bool> hints() const {
    std::lock_guard lock(mutex_);
    return hints_;
  }

 private:
  std::shared_ptr<const engine::Model> inner_;
  mutable std::mutex mutex_;
  mutable std::vector<bool> hints_;
};

// The batcher tells a pass to expect the same batch next (a CUDA model then queues that step
// ahead) only when every active generation is in it and no prompt waits.
TEST_F(DecodeBatcherTest, PassesExpectTheSameBatchOnlyWhenEveryActiveGenerationIsInThem) {
  const auto model = std::make_shared<HintRecordingModel>(engine::Model::load(dir_));
  DecodeBatcherOptions options;
  options.gather_window = std::chrono::microseconds(200);
  DecodeBatcher batcher(model, options);
  auto a = model->new_sequence();
  engine::Sampler greedy(engine::SamplingParams{.temperature = 0.0f});
  int32_t token = 100;
  {
    DecodeBatcher::Activity only(batcher);
    a->forward(std::vector<int32_t>{1, 2, 3});
    for (int step = 0; step < 3; ++step)
      token = batcher.forward_and_sample(*a, {&token, 1}, greedy, {}).token;
    // A second generation is active but submits nothing: the passes are partial.
    DecodeBatcher::Activity idle(batcher);
    for (int step = 0; step < 2; ++step)
      token = batcher.forward_and_sample(*a, {&token, 1}, greedy, {}).token;
  }
  EXPECT_EQ(model->hints(), (std::vector<bool>{true, true, true, false, false}));
}

}  // namespace
}  // namespace agentrt
