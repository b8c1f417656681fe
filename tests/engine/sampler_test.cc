#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

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
