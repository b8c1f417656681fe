#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace agentrt::engine {

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {}

Sampler::Sample Sampler::sample(std::span<const float> logits, TokenMask mask) {
  // Candidates: allowed tokens with finite logits.
  std::vector<std::pair<float, int32_t>> cand;
  cand.reserve(mask.words ? 256 : logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i]) || !mask.allows(static_cast<int64_t>(i))) continue;
    cand.push_back({logits[i], static_cast<int32_t>(i)});
  }
  if (cand.empty()) throw std::invalid_argument("sampler: the token mask allows no token");

  if (params_.greedy()) {
    const auto best = *std::max_element(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
      return a.first < b.first || (a.first == b.first && a.second > b.second);
    });
    double z = 0;
    for (const auto& c : cand) z += std::exp(double(c.first) - best.first);
    return {best.second, static_cast<float>(-std::log(z))};
  }

  std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  return sample_sorted(cand, 0.0);
}

Sampler::Sample Sampler::sample_candidates(std::vector<std::pair<float, int32_t>> cand,
                                           double z_all) {
  if (cand.empty()) throw std::invalid_argument("sampler: the token mask allows no token");
  if (params_.greedy()) throw std::logic_error("sampler: sample_candidates is for sampling");
  std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  return sample_sorted(cand, z_all);
}

Sampler::Sample Sampler::sample_sorted_candidates(std::span<const std::pair<float, int32_t>> cand,
                                                  double z_all) {
  if (cand.empty()) throw std::invalid_argument("sampler: the token mask allows no token");
  if (params_.greedy()) throw std::logic_error("sampler: sample_sorted_candidates is for sampling");
  return sample_sorted(cand, z_all);
}

Sampler::Sample Sampler::sample_sorted(std::span<const std::pair<float, int32_t>> cand,
                                       double z_all) {
  const double inv_t = 1.0 / params_.temperature;
  const bool truncated_by_k =
      params_.top_k > 0 && cand.size() >= static_cast<size_t>(params_.top_k);
  if (params_.top_k > 0 && cand.size() > static_cast<size_t>(params_.top_k))
    cand = cand.first(static_cast<size_t>(params_.top_k));
  p_.resize(cand.size());
  const std::span<double> p(p_);
  double z = 0;
  for (size_t i = 0; i < cand.size(); ++i)
    z += p[i] = std::exp((cand[i].first - cand[0].first) * inv_t);
  // A partial list normalises by the mass of every allowed token (unless top_k cut it anyway).
  if (z_all > 0 && !truncated_by_k) z = std::max(z, z_all);
  for (double& v : p) v /= z;
  size_t keep = cand.size();
  if (params_.min_p > 0) {
    const double floor = params_.min_p * p[0];
    keep = std::max<size_t>(
        1, std::count_if(p.begin(), p.begin() + keep, [&](double v) { return v >= floor; }));
  }
  if (params_.top_p < 1.0f) {
    double acc = 0;
    size_t n = 0;
    while (n < keep) {
      acc += p[n++];
      if (acc >= params_.top_p) break;
    }
    keep = std::max<size_t>(1, n);
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  std::uniform_real_distribution<double> uniform(0.0, kept);
  const double u = uniform(rng_);
  double acc = 0;
  size_t chosen = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) {
      chosen = i;
      break;
    }
  }
  return {cand[chosen].second, static_cast<float>(std::log(p[chosen] / kept))};
}

std::vector<std::pair<int32_t, float>> Sampler::top_logprobs(std::span<const float> logits, int n,
                                                             TokenMask mask) {
  std::vector<std::pair<float, int32_t>> cand;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i]) || !mask.allows(static_cast<int64_t>(i))) continue;
    cand.push_back({logits[i], static_cast<int32_t>(i)});
    max_logit = std::max(max_logit, logits[i]);
  }
  double z = 0;
  for (const auto& c : cand) z += std::exp(double(c.first) - max_logit);
  const size_t k = std::min<size_t>(std::max(n, 0), cand.size());
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  std::vector<std::pair<int32_t, float>> out;
  for (size_t i = 0; i < k; ++i) {
    out.push_back({cand[i].second, static_cast<float>(cand[i].first - max_logit - std::log(z))});
  }
  return out;
}

}  // namespace agentrt::engine
