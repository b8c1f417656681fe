// The public Model API against the transformers golden fixtures
// (scripts/make_engine_fixtures.py): every position's logits within 1e-4
// relative L2, for one prefill and for the fixture's chunked schedule;
// truncate-and-continue and decode_batch against single sequences.
#include <gtest/gtest.h>

#include "engine/model.h"
#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

using testing::GoldenFixture;
using testing::rel_l2;

class Golden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = GoldenFixture::load(GetParam());
    model_ = Model::load(fixture_.dir, {Device::cpu, 2});
    ASSERT_EQ(model_->vocab_size(), fixture_.vocab);
  }
  GoldenFixture fixture_;
  std::shared_ptr<const Model> model_;
};

TEST_P(Golden, PrefillMatchesTransformers) {
  auto seq = model_->new_sequence();
  const auto logits = seq->forward(fixture_.ids, /*all_positions=*/true);
  const int64_t V = fixture_.vocab;
  ASSERT_EQ(logits.size(), fixture_.prefill.size());
  for (size_t p = 0; p < fixture_.ids.size(); ++p)
    EXPECT_LE(rel_l2(&logits[p * V], &fixture_.prefill[p * V], V), 1e-4) << "position " << p;
  EXPECT_EQ(seq->length(), int64_t(fixture_.ids.size()));
}

TEST_P(Golden, ChunkedScheduleMatchesTransformers) {
  auto seq = model_->new_sequence();
  const int64_t V = fixture_.vocab;
  size_t pos = 0;
  for (int64_t c : fixture_.schedule) {
    const auto logits = seq->forward(std::span(fixture_.ids).subspan(pos, c), true);
    for (int64_t i = 0; i < c; ++i)
      EXPECT_LE(rel_l2(&logits[i * V], &fixture_.chunked[(pos + i) * V], V), 1e-4)
          << "position " << pos + i;
    pos += c;
  }
}

TEST_P(Golden, LastRowOnlyByDefault) {
  auto seq = model_->new_sequence();
  const auto logits = seq->forward(std::span(fixture_.ids).first(50));
  const int64_t V = fixture_.vocab;
  ASSERT_EQ(int64_t(logits.size()), V);
  EXPECT_LE(rel_l2(logits.data(), &fixture_.prefill[49 * V], V), 1e-4);
}

TEST_P(Golden, TruncateAndContinueMatchesTransformers) {
  const int64_t n = int64_t(fixture_.ids.size()), V = fixture_.vocab;
  auto seq = model_->new_sequence();
  seq->forward(fixture_.ids);  // the whole sequence, then rewind into the middle of a window
  for (int64_t k : {n - 1, n / 2 + 3, int64_t(13), int64_t(0)}) {
    seq->truncate(k);
    ASSERT_EQ(seq->length(), k);
    const auto rest = seq->forward(std::span(fixture_.ids).subspan(k), true);
    for (int64_t p = k; p < n; ++p)
      ASSERT_LE(rel_l2(&rest[(p - k) * V], &fixture_.prefill[p * V], V), 1e-4)
          << "truncate to " << k << ", position " << p;
  }
}

TEST_P(Golden, DecodeBatchMatchesSingleSequences) {
  const int64_t V = fixture_.vocab;
  const size_t starts[3] = {3, 64, 150};
  auto [seqs, ptrs] = testing::start_sequences(*model_, fixture_.ids, starts);
  for (size_t step = 0; step < 5; ++step) {
    std::vector<int32_t> toks;
    for (size_t s : starts) toks.push_back(fixture_.ids[s + step]);
    const auto out = model_->decode_batch(ptrs, toks);
    ASSERT_EQ(out.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      const size_t p = starts[i] + step;
      EXPECT_LE(rel_l2(out[i].data(), &fixture_.prefill[p * V], V), 1e-4) << "sequence " << i;
      EXPECT_EQ(seqs[i]->length(), int64_t(p + 1));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(testing::golden_names()));

}  // namespace
}  // namespace agentrt::engine
