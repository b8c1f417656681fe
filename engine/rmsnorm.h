// RMS normalisation, as transformers DeepseekV4RMSNorm / DeepseekV4UnweightedRMSNorm compute it:
// x * rsqrt(mean(x^2) + eps) [* weight].
#pragma once

#include <cstdint>

namespace agentrt::engine {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; weight may be null (unweighted). out may
// alias x.
void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out);

// The same over `rows` consecutive rows of n values each.
void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t n, float eps,
                   float* out);

}  // namespace agentrt::engine
