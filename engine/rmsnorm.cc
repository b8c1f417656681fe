#include "engine/rmsnorm.h"

#include <cmath>

namespace agentrt::engine {

void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  // Accumulate in double: the sum of squares over thousands of channels is where float32 loses
  // the most, and this is never the hot loop.
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  if (weight) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
  }
}

void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t n, float eps,
                   float* out) {
  for (int64_t r = 0; r < rows; ++r) rms_norm(x + r * n, weight, n, eps, out + r * n);
}

}  // namespace agentrt::engine
