// The radix sort keys of sampling.cu's sort_allowed, shared with the host tests: a float's bits
// turned so that an ascending unsigned sort puts larger floats first (-0 and 0 apart: callers
// map -0 to 0 first), and back.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/float_bits.h"

namespace agentrt::engine::cuda {

// Negative floats order by their complemented bits, others by their bits with the sign set;
// complementing that order makes it descending.
__host__ __device__ inline uint32_t descending_bits(float f) {
  const uint32_t u = float_bits(f);
  return ~((u & 0x80000000u) ? ~u : (u | 0x80000000u));
}

__host__ __device__ inline float from_descending_bits(uint32_t d) {
  const uint32_t o = ~d;
  return bits_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

}  // namespace agentrt::engine::cuda
