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
    EXPECT_NE(std::string(e.what()).find("CUDA backend not built/available"), std::string::npos)
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
