// The routed experts' activation for one value: the pair's routing weight times
// silu(min(g, limit)) * clamp(u, -limit, limit) (limit <= 0: no clamps). The routing weight goes
// in here: the down product is linear, so scaling its input scales its output. Host-callable, so
// the GPU tests' host replay of the FP8 experts computes what the kernels do.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace agentrt::engine::cuda {

__host__ __device__ inline float swiglu_weighted(float g, float u, float limit, float weight) {
  if (limit > 0) {
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
  }
  return weight * (g / (1.0f + expf(-g)) * u);
}

}  // namespace agentrt::engine::cuda
