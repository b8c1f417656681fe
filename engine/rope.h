// Interleaved partial RoPE as DeepSeek-V4 uses it: each head is laid out [nope | rope], the rope
// slice's consecutive channel pairs (2i, 2i+1) rotate by angle pos * inv_freq[i]. Sliding layers
// use the "main" table (plain theta), compressed layers the "compress" table (its own theta,
// optionally YaRN-scaled). The attention output's rope slice is rotated back (inverse = true).
#pragma once

#include <cstdint>
#include <vector>

namespace agentrt::engine {

struct RopeParams {
  enum class Kind { plain, yarn };
  Kind kind = Kind::plain;
  double theta = 10000.0;
  int dim = 64;  // rotated channels per head (qk_rope_head_dim)
  // YaRN only (transformers _compute_yarn_parameters).
  double factor = 1.0;
  double original_max_position = 0.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 1.0;  // V4 pins it to 1 for YaRN
};

class RopeTable {
 public:
  explicit RopeTable(const RopeParams& params);

  int dim() const { return dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // cos/sin (dim/2 each) for one position; computed as transformers does (float32 angle).
  void angles(int64_t pos, float* cos, float* sin) const;

  // Rotates the trailing dim() channels of x[0..head_dim) in place.
  void apply(float* x, int64_t head_dim, const float* cos, const float* sin,
             bool inverse = false) const;

 private:
  int dim_;
  float scaling_;
  std::vector<float> inv_freq_;
};

}  // namespace agentrt::engine
