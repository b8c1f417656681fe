// Model / ModelSequence API contracts beyond the numerics: errors and
// bookkeeping.
#include "engine/model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <thread>

#include "engine/model_init.h"
#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

std::shared_ptr<const Model> tiny() {
  return Model::load(testing::golden_dir("tiny_b"), {Device::cpu, 1});
}

TEST(Model, CudaWithoutBackendSaysSo) {
#ifndef AGENTRT_HAVE_CUDA
  try {
    Model::load(testing::golden_dir("tiny_b"), {Device::cuda, 0});
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("this build has no CUDA backend"), std::string::npos)
        << e.what();
  }
#else
  GTEST_SKIP() << "built with the CUDA backend";
#endif
}

TEST(Model, MissingDirectoryNamesIt) {
  try {
    Model::load("/nonexistent/model-dir");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model-dir"), std::string::npos) << e.what();
  }
}

TEST(Model, BadTokenThrowsAndLeavesTheSequenceUsable) {
  auto model = tiny();
  auto seq = model->new_sequence();
  const std::vector<int32_t> ok = {1, 2, 3};
  const auto before = seq->forward(ok);
  const std::vector<int32_t> bad = {4, model->vocab_size()};
  EXPECT_THROW(seq->forward(bad), std::out_of_range);
  EXPECT_EQ(seq->length(), 3);
  auto other = model->new_sequence();
  const std::vector<int32_t> more = {1, 2, 3, 4};
  const auto want = other->forward(more);
  const std::vector<int32_t> four = {4};
  const auto got = seq->forward(four);
  EXPECT_LE(testing::rel_l2(got.data(), want.data(), model->vocab_size()), 1e-6);
}

TEST(Model, TruncateOutOfRangeThrows) {
  auto model = tiny();
  auto seq = model->new_sequence();
  const std::vector<int32_t> ids = {5, 6, 7};
  seq->forward(ids);
  EXPECT_THROW(seq->truncate(4), std::out_of_range);
  EXPECT_THROW(seq->truncate(-1), std::out_of_range);
  seq->truncate(3);
  EXPECT_EQ(seq->length(), 3);
}

TEST(Model, DecodeBatchRejectsMismatchedOrRepeatedSequences) {
  auto model = tiny();
  auto a = model->new_sequence();
  std::vector<ModelSequence*> seqs = {a.get(), a.get()};
  const std::vector<int32_t> two = {1, 2}, one = {1};
  EXPECT_THROW(model->decode_batch(seqs, two), std::invalid_argument);
  EXPECT_THROW(model->decode_batch(seqs, one), std::invalid_argument);
  auto other_model = tiny();
  auto b = other_model->new_sequence();
  std::vector<ModelSequence*> foreign = {b.get()};
  EXPECT_THROW(model->decode_batch(foreign, one), std::invalid_argument);
}

// The default decode_batch_and_sample: decode_batch, then each sampler on its row; a row whose
// mask allows nothing gets an error and the others their tokens; every token is fed.
TEST(Model, DecodeBatchAndSampleChoosesEachRow) {
  auto model = tiny();
  const auto f = testing::GoldenFixture::load("tiny_b");
  const int64_t V = model->vocab_size();
  std::vector<std::unique_ptr<ModelSequence>> a, b;
  for (int i = 0; i < 3; ++i) {
    a.push_back(model->new_sequence());
    b.push_back(model->new_sequence());
    a.back()->forward(std::span(f.ids).first(10 + i));
    b.back()->forward(std::span(f.ids).first(10 + i));
  }
  std::vector<uint32_t> odd(size_t((V + 31) / 32), 0xaaaaaaaau), none(odd.size(), 0u);
  Sampler g0(SamplingParams{.temperature = 0.0f}), g1(SamplingParams{.temperature = 0.0f}),
      g2(SamplingParams{.temperature = 0.0f});
  std::vector<Sampler*> samplers = {&g0, &g1, &g2};
  const std::vector<TokenMask> masks = {TokenMask{}, TokenMask{odd.data(), odd.size()},
                                        TokenMask{none.data(), none.size()}};
  std::vector<ModelSequence*> sa = {a[0].get(), a[1].get(), a[2].get()},
                              sb = {b[0].get(), b[1].get(), b[2].get()};
  const std::vector<int32_t> tokens = {3, 4, 5};
  const auto got = model->decode_batch_and_sample(sa, tokens, samplers, masks);
  const auto rows = model->decode_batch(sb, tokens);
  ASSERT_EQ(got.size(), 3u);
  Sampler host(SamplingParams{.temperature = 0.0f});
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(got[i].error) << "row " << i;
    EXPECT_EQ(got[i].sample.token, host.sample(rows[i], masks[i]).token) << "row " << i;
  }
  EXPECT_EQ(got[1].sample.token % 2, 1);  // the mask allows odd ids only
  EXPECT_TRUE(got[2].error);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i]->length(), 11 + i);
  std::vector<Sampler*> too_few = {&g0};
  EXPECT_THROW(model->decode_batch_and_sample(sa, tokens, too_few, masks), std::invalid_argument);
}

TEST(Model, SequencesOnSeveralThreadsShareOneModel) {
  auto model = tiny();
  const auto f = testing::GoldenFixture::load("tiny_b");
  const int64_t V = model->vocab_size();
  std::vector<std::vector<float>> results(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      auto seq = model->new_sequence();
      results[i] = seq->forward(std::span(f.ids).first(60 + i), true);
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i)
    for (int p = 0; p < 60 + i; ++p)
      EXPECT_LE(testing::rel_l2(&results[i][p * V], &f.prefill[p * V], V), 1e-4) << i << " " << p;
}

TEST(Model, LoadsWhatModelInitWrites) {
  // Engine A's random-model maker and this engine must agree on names, shapes and config.
  const auto dir =
      std::filesystem::temp_directory_path() / ("agentrt-model-init-" + std::to_string(::getpid()));
  ModelInitOptions o;
  o.preset = "tiny";
  o.vocab_size = 1000;
  o.seed = 5;
  write_random_model(dir, o);
  auto model = Model::load(dir, {Device::cpu, 1});
  EXPECT_EQ(model->vocab_size(), 1000);
  auto seq = model->new_sequence();
  std::vector<int32_t> ids(70);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 37) % 1000);
  const auto logits = seq->forward(ids, true);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  // Chunked through the cache gives the same rows.
  auto seq2 = model->new_sequence();
  const auto a = seq2->forward(std::span(ids).first(33), true);
  const auto b = seq2->forward(std::span(ids).subspan(33), true);
  EXPECT_LE(testing::rel_l2(b.data() + 10 * 1000, logits.data() + 43 * 1000, 1000), 1e-5);
  std::filesystem::remove_all(dir);
}

TEST(Model, LongPromptIsSlicedWithoutChangingTheResult) {
  // Over 512 rows, forward() runs in slices; the rows must equal a run in other chunk sizes.
  auto model = tiny();
  const int64_t V = model->vocab_size();
  std::vector<int32_t> ids(1100);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % V);
  auto one = model->new_sequence();
  const auto all = one->forward(ids, true);
  auto chunked = model->new_sequence();
  for (size_t pos = 0; pos < ids.size(); pos += 300) {
    const size_t n = std::min<size_t>(300, ids.size() - pos);
    const auto part = chunked->forward(std::span(ids).subspan(pos, n), true);
    for (size_t i = 0; i < n; i += 37)
      ASSERT_LE(testing::rel_l2(&part[i * V], &all[(pos + i) * V], V), 1e-5) << pos + i;
  }
  EXPECT_EQ(one->length(), 1100);
}

TEST(Model, EmptyForwardIsANoOp) {
  auto model = tiny();
  auto seq = model->new_sequence();
  EXPECT_TRUE(seq->forward({}).empty());
  EXPECT_EQ(seq->length(), 0);
}

}  // namespace
}  // namespace agentrt::engine
