// Token sampling: greedy, temperature, top-k, top-p, min-p, seeded; an allowed-token bitmask
// (the grammar hook) applied before anything else; log-probabilities of the choice.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace agentrt::engine {

struct SamplingParams {
  float temperature = 1.0f;  // <= 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off; keep tokens with p >= min_p * p_max
  uint64_t seed = 0;
  bool greedy() const { return temperature <= 0.0f; }
};

// Bit i of word i/32 (least significant bit first) says token i is allowed; tokens past the
// mask's coverage (mask_words * 32) are disallowed. A null mask allows everything.
struct TokenMask {
  const uint32_t* words = nullptr;
  size_t num_words = 0;
  bool allows(int64_t id) const {
    if (!words) return true;
    const size_t w = static_cast<size_t>(id) >> 5;
    return w < num_words && ((words[w] >> (id & 31)) & 1u);
  }
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);

  struct Sample {
    int32_t token;
    float logprob;  // log p(token) under the temperature-scaled, masked distribution
  };
  // Throws std::invalid_argument if the mask allows no token.
  Sample sample(std::span<const float> logits, TokenMask mask = {});
  // Sampling (not greedy) from a list of (logit, id) holding every allowed token that could
  // matter, in any order: the GPU path collects the allowed tokens within 20 temperatures of the
  // best (relative probability >= e^-20) and z_all, the sum over every allowed token of
  // exp((logit - best) / temperature), normalises the probabilities as sample() would over the
  // whole vocabulary (when top_k does not cut the list anyway). Draws like sample().
  Sample sample_candidates(std::vector<std::pair<float, int32_t>> cand, double z_all);
  // The same for candidates already sorted best first, ties to the lower id (as on the device).
  Sample sample_sorted_candidates(std::span<const std::pair<float, int32_t>> cand, double z_all);
  // The n most likely allowed tokens with their log-probabilities (temperature 1).
  static std::vector<std::pair<int32_t, float>> top_logprobs(std::span<const float> logits, int n,
                                                             TokenMask mask = {});
  const SamplingParams& params() const { return params_; }

 private:
  // The sampling steps after the candidates are sorted (best first); z_all > 0 as above.
  Sample sample_sorted(std::span<const std::pair<float, int32_t>> cand, double z_all);
  SamplingParams params_;
  // sample_sorted's probabilities, kept between calls: a draw over a whole vocabulary's allowed
  // tokens (the GPU path's sorted rows) would otherwise allocate and fault in ~0.5-1 MB a call.
  std::vector<double> p_;
  std::mt19937_64 rng_;
};

}  // namespace agentrt::engine
