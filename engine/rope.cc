#include "engine/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

namespace agentrt::engine {
namespace {

// transformers computes the tables in float32 (torch.arange(...).float() / dim, base ** ...);
// doing the same keeps the angles within an ulp of the reference at large positions.
std::vector<float> plain_inv_freq(double theta, int dim) {
  std::vector<float> out(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const float e = float(2 * i) / float(dim);
    out[i] = 1.0f / std::pow(float(theta), e);
  }
  return out;
}

// transformers modeling_rope_utils._compute_yarn_parameters (truncate = true).
std::vector<float> yarn_inv_freq(const RopeParams& p) {
  const int dim = p.dim;
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(p.original_max_position / (rotations * 2 * std::numbers::pi))) /
           (2 * std::log(p.theta));
  };
  double low = std::floor(correction_dim(p.beta_fast));
  double high = std::ceil(correction_dim(p.beta_slow));
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  std::vector<float> out(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const float pos_freq = std::pow(float(p.theta), float(2 * i) / float(dim));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (float(p.factor) * pos_freq);
    const float ramp = std::clamp(float((i - low) / (high - low)), 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    out[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return out;
}

}  // namespace

RopeTable::RopeTable(const RopeParams& params) : dim_(params.dim) {
  if (dim_ <= 0 || dim_ % 2 != 0)
    throw std::invalid_argument("rope: rotated dim must be positive and even, got " +
                                std::to_string(dim_));
  if (params.kind == RopeParams::Kind::yarn) {
    if (params.factor <= 0 || params.original_max_position <= 0)
      throw std::invalid_argument("rope: yarn needs factor > 0 and original_max_position > 0");
    inv_freq_ = yarn_inv_freq(params);
    scaling_ = float(params.attention_factor);
  } else {
    inv_freq_ = plain_inv_freq(params.theta, dim_);
    scaling_ = 1.0f;
  }
}

void RopeTable::angles(int64_t pos, float* cos, float* sin) const {
  const float fpos = float(pos);
  for (int i = 0; i < dim_ / 2; ++i) {
    const float angle = inv_freq_[i] * fpos;  // float32 product, as torch's matmul
    cos[i] = float(std::cos(double(angle))) * scaling_;
    sin[i] = float(std::sin(double(angle))) * scaling_;
  }
}

void RopeTable::apply(float* x, int64_t head_dim, const float* cos, const float* sin,
                      bool inverse) const {
  float* r = x + head_dim - dim_;
  const float sign = inverse ? -1.0f : 1.0f;
  for (int i = 0; i < dim_ / 2; ++i) {
    const float a = r[2 * i], b = r[2 * i + 1];
    const float c = cos[i], s = sign * sin[i];
    r[2 * i] = a * c - b * s;
    r[2 * i + 1] = b * c + a * s;
  }
}

}  // namespace agentrt::engine
