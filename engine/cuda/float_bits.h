// Float32 bit patterns, the same on the host and the device, so that host tests replay the
// kernels' bit tricks exactly (sort_keys.h, f16_fragments.h, fp8_act_quant.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace agentrt::engine::cuda {

__host__ __device__ inline uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

__host__ __device__ inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Four bf16 values packed in a uint2 (the lower address in the lower half of each word) widened
// to float32, exactly: a bf16 is the top half of its float32.
__host__ __device__ inline float4 bf16x4_as_float4(uint2 v) {
  return make_float4(bits_float(v.x << 16), bits_float(v.x & 0xffff0000u), bits_float(v.y << 16),
                     bits_float(v.y & 0xffff0000u));
}

// 2^e for -126 <= e <= 127, exactly.
__host__ __device__ inline float power_of_two(int e) { return bits_float(uint32_t(e + 127) << 23); }

}  // namespace agentrt::engine::cuda
