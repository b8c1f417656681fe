// Caches: chunked prefill, one-token decode, truncate-and-continue and batched rows all give the
// logits of one plain prefill (bit-for-bit where the arithmetic is the same, else within 1e-5).
#include <gtest/gtest.h>

#include <random>

#include "engine/forward.h"
#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

struct Loaded {
  explicit Loaded(const std::string& name)
      : fixture(testing::GoldenFixture::load(name)),
        pass(ForwardConfig::from_file(fixture.dir / "config.json"),
             ForwardWeights::load(fixture.dir,
                                  ForwardConfig::from_file(fixture.dir / "config.json"))) {}
  testing::GoldenFixture fixture;
  ForwardPass pass;
};

std::vector<float> feed(const ForwardPass& fp, SequenceCache& cache, std::span<const int32_t> ids,
                        const Parallel& par) {
  std::vector<ForwardRow> rows;
  for (size_t i = 0; i < ids.size(); ++i)
    rows.push_back({&cache, cache.length + int64_t(i), ids[i], true});
  std::vector<float> logits(ids.size() * fp.config().vocab_size);
  fp.run(rows, logits.data(), par);
  cache.length += int64_t(ids.size());
  return logits;
}

double worst_rel(const std::vector<float>& got, const std::vector<float>& want, int64_t V) {
  double worst = 0;
  for (size_t r = 0; r < got.size() / V; ++r)
    worst = std::max(worst, testing::rel_l2(&got[r * V], &want[r * V], V));
  return worst;
}

class CacheTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CacheTest, TruncateAndContinueMatchesOnePrefill) {
  Loaded m(GetParam());
  Serial par;
  const auto& ids = m.fixture.ids;
  const int64_t n = int64_t(ids.size()), V = m.fixture.vocab;
  SequenceCache ref_cache = m.pass.new_cache();
  const std::vector<float> ref = feed(m.pass, ref_cache, ids, par);

  std::mt19937 rng(42);
  // Rewind points inside windows, on window boundaries, inside the sliding window, to zero.
  for (int64_t k : {int64_t(0), int64_t(1), int64_t(7), int64_t(31), int64_t(32), int64_t(33),
                    n / 2, n - 5, n - 1}) {
    SequenceCache cache = m.pass.new_cache();
    // Feed past k with different tokens, then rewind to k and feed the real continuation.
    std::vector<int32_t> junk(ids.begin(), ids.begin() + k);
    for (int i = 0; i < 41; ++i) junk.push_back(int32_t(rng() % V));
    feed(m.pass, cache, junk, par);
    cache.truncate(k);
    ASSERT_EQ(cache.length, k);
    const auto rest = feed(m.pass, cache, std::span(ids).subspan(k), par);
    const std::vector<float> want(ref.begin() + k * V, ref.end());
    EXPECT_LE(worst_rel(rest, want, V), 1e-5) << GetParam() << " truncate to " << k;
  }
}

TEST_P(CacheTest, OneTokenDecodeMatchesPrefill) {
  Loaded m(GetParam());
  Serial par;
  const auto& ids = m.fixture.ids;
  const int64_t V = m.fixture.vocab;
  SequenceCache ref_cache = m.pass.new_cache();
  const std::vector<float> ref = feed(m.pass, ref_cache, ids, par);
  SequenceCache cache = m.pass.new_cache();
  std::vector<float> got;
  for (int32_t id : ids) {
    const auto l = feed(m.pass, cache, std::span(&id, 1), par);
    got.insert(got.end(), l.begin(), l.end());
  }
  EXPECT_LE(worst_rel(got, ref, V), 1e-5) << GetParam();
}

TEST_P(CacheTest, BatchedRowsOfDifferentSequencesMatchSingleSequences) {
  Loaded m(GetParam());
  WorkerPool par(2);
  const auto& ids = m.fixture.ids;
  const int64_t V = m.fixture.vocab;
  // Three sequences at different lengths, then decoded together one row each.
  const int64_t starts[3] = {5, 40, 97};
  std::vector<SequenceCache> caches, singles;
  for (int64_t s : starts) {
    caches.push_back(m.pass.new_cache());
    singles.push_back(m.pass.new_cache());
    feed(m.pass, caches.back(), std::span(ids).first(s), par);
    feed(m.pass, singles.back(), std::span(ids).first(s), par);
  }
  for (int step = 0; step < 6; ++step) {
    std::vector<ForwardRow> rows;
    for (int i = 0; i < 3; ++i)
      rows.push_back({&caches[i], caches[i].length, ids[starts[i] + step], true});
    std::vector<float> batched(3 * V);
    m.pass.run(rows, batched.data(), par);
    for (int i = 0; i < 3; ++i) {
      caches[i].length += 1;
      const auto single = feed(m.pass, singles[i], std::span(&ids[starts[i] + step], 1), par);
      EXPECT_LE(testing::rel_l2(&batched[i * V], single.data(), V), 1e-5)
          << "sequence " << i << " step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CacheTest, ::testing::ValuesIn(testing::golden_names()));

}  // namespace
}  // namespace agentrt::engine
