#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

namespace agentrt::engine {
namespace {

TEST(Sampler, GreedyPicksTheMaxAndReportsItsLogprob) {
  Sampler s({.temperature = 0.0f});
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f};
  const auto r = s.sample(logits);
  EXPECT_EQ(r.token, 1);
  const double z = std::exp(0.0) + std::exp(2.0) + std::exp(1.0);
  EXPECT_NEAR(r.logprob, 2.0 - std::log(z), 1e-5);
}

TEST(Sampler, MaskIsAppliedBeforeSampling) {
  Sampler s({.temperature = 0.0f});
  const std::vector<float> logits = {5.0f, 1.0f, 3.0f, 9.0f};
  const uint32_t mask[] = {0b0110};  // tokens 1 and 2
  EXPECT_EQ(s.sample(logits, {mask, 1}).token, 2);
  const uint32_t none[] = {0};
  EXPECT_THROW(s.sample(logits, {none, 1}), std::invalid_argument);
  // Tokens beyond the mask's coverage are disallowed.
  std::vector<float> big(40, 0.0f);
  big[35] = 10.0f;
  const uint32_t one_word[] = {0xFFFFFFFFu};
  EXPECT_LT(s.sample(big, {one_word, 1}).token, 32);
}

TEST(Sampler, SeededDrawsAreDeterministic) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.7f);
  Sampler a({.temperature = 1.0f, .seed = 5}), b({.temperature = 1.0f, .seed = 5});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(logits).token, b.sample(logits).token);
}

TEST(Sampler, TopKTopPMinPRestrictTheSupport) {
  const std::vector<float> logits = {3.0f, 2.9f, 0.0f, -1.0f, -5.0f};
  Sampler k({.temperature = 1.0f, .top_k = 2, .seed = 1});
  Sampler p({.temperature = 1.0f, .top_p = 0.5f, .seed = 1});
  Sampler m({.temperature = 1.0f, .min_p = 0.5f, .seed = 1});
  for (int i = 0; i < 300; ++i) {
    EXPECT_LT(k.sample(logits).token, 2);
    EXPECT_EQ(p.sample(logits).token, 0);  // the top token alone holds >= 50%
    EXPECT_LT(m.sample(logits).token, 2);
  }
}

TEST(Sampler, TemperatureSamplesFollowTheDistribution) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  Sampler s({.temperature = 1.0f, .seed = 11});
  int ones = 0;
  for (int i = 0; i < 4000; ++i) ones += s.sample(logits).token;
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

TEST(Sampler, TopLogprobsAreNormalised) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const auto top = Sampler::top_logprobs(logits, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].first, 2);
  double total = 0;
  for (const auto& [id, lp] : top) total += std::exp(lp);
  EXPECT_NEAR(total, 1.0, 1e-5);
}

}  // namespace
}  // namespace agentrt::engine

namespace agentrt::engine {
namespace {

// The GPU path's contract: the allowed tokens within 20 temperatures of the best plus the
// normaliser over all of them draw the same tokens as sample() on the whole row.
TEST(Sampler, CandidatesNearTheBestDrawLikeTheWholeRow) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 4.0f);
  std::vector<float> logits(5000);
  for (auto& v : logits) v = dist(rng);
  std::vector<uint32_t> mask((logits.size() + 31) / 32, 0);
  for (size_t i = 0; i < logits.size(); ++i)
    if (rng() % 3) mask[i >> 5] |= 1u << (i & 31);
  const TokenMask tm{mask.data(), mask.size()};
  const SamplingParams cases[] = {{.temperature = 0.7f, .seed = 1},
                                  {.temperature = 1.0f, .top_k = 40, .seed = 2},
                                  {.temperature = 1.3f, .top_p = 0.9f, .seed = 3},
                                  {.temperature = 0.9f, .min_p = 0.05f, .seed = 4},
                                  {.temperature = 2.0f, .top_k = 3000, .top_p = 0.95f, .seed = 5}};
  for (const SamplingParams& p : cases) {
    float best = -INFINITY;
    for (size_t i = 0; i < logits.size(); ++i)
      if (tm.allows(int64_t(i))) best = std::max(best, logits[i]);
    std::vector<std::pair<float, int32_t>> near;
    double z_all = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (!tm.allows(int64_t(i))) continue;
      z_all += std::exp(double(logits[i] - best) / p.temperature);
      if (logits[i] >= best - 20.0f * p.temperature) near.push_back({logits[i], int32_t(i)});
    }
    std::shuffle(near.begin(), near.end(), rng);  // the GPU collects in no order
    Sampler whole(p), from_near(p);
    for (int draw = 0; draw < 200; ++draw) {
      const auto a = whole.sample(logits, tm);
      const auto b = from_near.sample_candidates(near, z_all);
      ASSERT_EQ(a.token, b.token) << "temperature " << p.temperature << " draw " << draw;
      EXPECT_NEAR(a.logprob, b.logprob, 1e-5);
    }
  }
  Sampler s({.temperature = 1.0f});
  EXPECT_THROW(s.sample_candidates({}, 1.0), std::invalid_argument);
}

// Every allowed token sorted best first, ties to the lower id (what the CUDA backend's sort
// hands over when too many tokens are near the best), draws as the whole row does.
TEST(Sampler, SortedCandidatesDrawLikeTheWholeRow) {
  std::mt19937 rng(4);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(6000);
  for (auto& v : logits) v = std::round(dist(rng) * 4.0f) / 4.0f;  // many ties
  logits[7] = -0.0f;
  logits[8] = 0.0f;
  logits[9] = std::numeric_limits<float>::quiet_NaN();
  logits[10] = -std::numeric_limits<float>::infinity();
  std::vector<uint32_t> mask((logits.size() + 31) / 32, 0);
  for (size_t i = 0; i < logits.size(); ++i)
    if (rng() % 4) mask[i >> 5] |= 1u << (i & 31);
  for (const TokenMask tm : {TokenMask{}, TokenMask{mask.data(), mask.size()}}) {
    std::vector<std::pair<float, int32_t>> sorted;
    for (size_t i = 0; i < logits.size(); ++i)
      if (std::isfinite(logits[i]) && tm.allows(int64_t(i)))
        sorted.push_back({logits[i] == 0.0f ? 0.0f : logits[i], int32_t(i)});
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    const SamplingParams cases[] = {
        {.temperature = 0.7f, .seed = 1},
        {.temperature = 1.0f, .top_k = 50, .seed = 2},
        {.temperature = 1.2f, .top_p = 0.8f, .min_p = 0.02f, .seed = 3}};
    for (const SamplingParams& p : cases) {
      Sampler whole(p), from_sorted(p);
      for (int draw = 0; draw < 100; ++draw) {
        const auto a = whole.sample(logits, tm);
        const auto b = from_sorted.sample_sorted_candidates(sorted, 0.0);
        ASSERT_EQ(a.token, b.token) << "temperature " << p.temperature << " draw " << draw;
        EXPECT_EQ(a.logprob, b.logprob);
      }
    }
  }
  Sampler s({.temperature = 1.0f}), greedy({.temperature = 0.0f});
  EXPECT_THROW(s.sample_sorted_candidates({}, 0.0), std::invalid_argument);
  const std::vector<std::pair<float, int32_t>> one = {{1.0f, 0}};
  EXPECT_THROW(greedy.sample_sorted_candidates(one, 0.0), std::logic_error);
}

}  // namespace
}  // namespace agentrt::engine
