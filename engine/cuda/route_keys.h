// The order route_warp.cuh chooses experts in, as unsigned keys (host-callable, so a test without
// a GPU checks it against the CPU's comparator: CudaRouteKeys.OrderAsTheCpuComparator).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace agentrt::engine::cuda {

// Orders biased scores as unsigned keys: a larger float has a larger key, -0 ties with +0 (the
// CPU's comparator finds them equal), a NaN is below every number (the comparator never prefers
// one) and 0 marks an expert already chosen.
__host__ __device__ inline uint32_t choice_key(float v) {
  if (v != v) return 1u;
  if (v == 0.0f) v = 0.0f;
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace agentrt::engine::cuda
