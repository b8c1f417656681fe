// Which segment a position falls in, for the routed experts' grouped rows (moe_gemm.cu,
// moe_fp8.cu): segments a0 .. a1 - 1 start at starts[a] (ascending).
#pragma once

#include <cstdint>

namespace agentrt::engine::cuda {

// The last a in [a0, a1) with starts[a] <= v (a0 when none is).
__device__ __forceinline__ int64_t segment_of(const int32_t* starts, int64_t a0, int64_t a1,
                                              int32_t v) {
  int64_t lo = a0, hi = a1 - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= v)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace agentrt::engine::cuda
