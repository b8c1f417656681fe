// The forward pass (below the Model API) against the transformers golden fixtures.
#include "engine/forward.h"

#include <gtest/gtest.h>

#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

using testing::GoldenFixture;

// Feeds ids[begin, end) into the cache, returns [end-begin][vocab] logits.
std::vector<float> feed(const ForwardPass& fp, SequenceCache& cache,
                        const std::vector<int32_t>& ids, int64_t begin, int64_t end,
                        const Parallel& par) {
  std::vector<ForwardRow> rows;
  for (int64_t p = begin; p < end; ++p) rows.push_back({&cache, p, ids[p], true});
  std::vector<float> logits((end - begin) * fp.config().vocab_size);
  fp.run(rows, logits.data(), par);
  cache.length = end;
  return logits;
}

class ForwardGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ForwardGolden, PrefillAndChunkedMatchTransformers) {
  const GoldenFixture f = GoldenFixture::load(GetParam());
  const ForwardConfig config = ForwardConfig::from_file(f.dir / "config.json");
  ForwardPass fp(config, ForwardWeights::load(f.dir, config));
  ASSERT_EQ(config.vocab_size, f.vocab);
  WorkerPool par(2);
  const int64_t n = int64_t(f.ids.size()), V = f.vocab;

  SequenceCache cache = fp.new_cache();
  const std::vector<float> prefill = feed(fp, cache, f.ids, 0, n, par);
  double worst = 0;
  for (int64_t p = 0; p < n; ++p) {
    const double e = testing::rel_l2(&prefill[p * V], &f.prefill[p * V], V);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << GetParam() << " prefill position " << p;
  }
  RecordProperty("prefill_worst_rel_l2", std::to_string(worst));

  SequenceCache chunked_cache = fp.new_cache();
  int64_t pos = 0;
  double worst_chunked = 0;
  for (int64_t c : f.schedule) {
    const std::vector<float> got = feed(fp, chunked_cache, f.ids, pos, pos + c, par);
    for (int64_t i = 0; i < c; ++i) {
      const double e = testing::rel_l2(&got[i * V], &f.chunked[(pos + i) * V], V);
      worst_chunked = std::max(worst_chunked, e);
      EXPECT_LE(e, 1e-4) << GetParam() << " chunked position " << pos + i;
    }
    pos += c;
  }
  std::printf("%s: worst rel L2 prefill %.3g, chunked %.3g\n", GetParam().c_str(), worst,
              worst_chunked);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ForwardGolden, ::testing::ValuesIn(testing::golden_names()));

}  // namespace
}  // namespace agentrt::engine
