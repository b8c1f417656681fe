// MXFP4 expert weights (e2m1 values, one ue8m0 scale per 32 columns of a row) as e4m3 with one
// float32 scale per 128 x 128 block: the form cuBLASLt's block-scaled FP8 GEMMs take
// (BLK128x128_32F), for the routed experts of prefill under GemmPrecision::fp8 (moe_fp8.cu).
// Host-callable, so a test without a GPU (CudaFp4E4m3.*) and the GPU tests' host reference
// compute exactly what the kernel does.
//
// A block's scale is 2^(emax - 127 - 6), emax its largest finite ue8m0 code: a value v * 2^(code
// - 127) is stored as v * 2^(6 - (emax - code)), at most 6 * 2^6 = 384 (e4m3 reaches 448). Every
// e2m1 value (0, 0.5, 1, 1.5, 2, 3, 4, 6) times 2^d is an e4m3 number for d >= -8 (1.5 * 2^-8 is
// 3 steps of e4m3's smallest subnormal, 2^-9), so the conversion is exact wherever a block's
// codes span at most 14 binades; farther below the block's largest they round to the nearest
// e4m3 (to zero under 2^-10), values 2^14 times smaller than the block's largest scale's.
// A NaN scale (code 255) makes its 32 values e4m3 NaNs, as the bf16 path makes them NaN.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/float_bits.h"

namespace agentrt::engine::cuda::fp4_e4m3 {

constexpr int kBlock = 128;        // rows and columns per float32 scale
constexpr int kScaleColumns = 32;  // columns per ue8m0 scale of the stored weights
constexpr uint8_t kNanCode = 255;  // ue8m0 NaN
constexpr int kExactSpan = 14;     // binades below the block's largest code that stay exact

// The largest of two codes, NaN codes ignored (start from kNoCode).
constexpr int kNoCode = -1;
__host__ __device__ inline int max_finite_code(int acc, uint8_t code) {
  return code == kNanCode ? acc : (int(code) > acc ? int(code) : acc);
}

// 2^e for -149 <= e <= 127 (float subnormals below -126), exactly.
__host__ __device__ inline float exp2_any(int e) {
  return e >= -126 ? power_of_two(e) : bits_float(1u << (e + 149));
}

// The block's float32 scale from its largest finite code (kNoCode: every scale NaN, scale 1).
__host__ __device__ inline float block_scale(int emax) {
  return emax == kNoCode ? 1.0f : exp2_any(emax - 127 - 6);
}

// The e2m1 value of a nibble (sign in bit 3), exactly, built as float bits: e = 0 is 0 or 0.5
// (subnormal), else (1 + m / 2) 2^(e - 1), i.e. exponent field e + 126 and m as the top mantissa
// bit. A handful of integer instructions, no table (the conversion kernel is instruction-bound).
__host__ __device__ inline float e2m1_value(uint32_t nibble) {
  const uint32_t e = (nibble >> 1) & 3, m = nibble & 1;
  const uint32_t mag = e != 0 ? ((e + 126) << 23) | (m << 22) : (m != 0 ? 0x3f000000u : 0u);
  return bits_float(mag | ((nibble & 8) << 28));
}

// What a code's values are multiplied by in a block whose largest finite code is emax: 2^(6 -
// (emax - code)), exact; 0 below 2^-140 (every e2m1 value then rounds to a signed zero in e4m3
// anyway); NaN for a NaN code. The conversion is e2m1_value(nibble) * code_factor(code, emax).
__host__ __device__ inline float code_factor(uint8_t code, int emax) {
  if (code == kNanCode) return bits_float(0x7fc00000u);
  const int d = 6 - (emax - int(code));
  return d < -140 ? 0.0f : exp2_any(d);
}

// The value to store as e4m3 for one nibble under `code`, in a block whose largest finite code is
// emax: exact in float32 (the e4m3 conversion then rounds only past kExactSpan); NaN for a NaN
// code.
__host__ __device__ inline float scaled_value(uint32_t nibble, uint8_t code, int emax) {
  return e2m1_value(nibble) * code_factor(code, emax);
}

// prmt.b32 in its default mode (__byte_perm): byte i of the result is byte (sel >> 4i) & 7 of
// {a, b} (a's bytes 0-3, b's 4-7), or 0xff / 0x00 by that byte's top bit where bit 4i + 3 of
// sel is set (sign replication). On the host, an emulation for the tests.
__host__ __device__ inline uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
#else
  const uint64_t bytes = uint64_t(a) | (uint64_t(b) << 32);
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t n = (sel >> (4 * i)) & 15, byte = uint32_t(bytes >> (8 * (n & 7))) & 0xff;
    d |= ((n & 8) ? ((byte & 0x80) ? 0xffu : 0u) : byte) << (8 * i);
  }
  return d;
#endif
}

// Eight FP4 values (a 32-bit word, value j in nibble j) as eight e4m3 bytes (.x values 0-3,
// .y 4-7, value j in byte j % 4): each nibble's magnitude (its low 3 bits) picks a byte of the
// table (table_lo's bytes 0-3, table_hi's 4-7: the block's scaled e2m1 magnitudes, each below
// 0x80), its sign bit sets bit 7. The sign comes from the same permute in its sign-replication
// mode: with 0x7f in every byte, a positive nibble picks 0x7f and a negative one 0x00, whose bit
// 6, moved to bit 7 and inverted, is the sign. 11 instructions a word where selecting 0x80 or 0
// by the sign bit shifted into a selector took 13 (the grouped FP8 kernel converts every weight
// it multiplies: 16 words a thread a step).
__host__ __device__ inline uint2 e4m3_of_fp4_word(uint32_t w, uint32_t table_lo,
                                                  uint32_t table_hi) {
  constexpr uint32_t kPositive = 0x7f7f7f7fu, kSign = 0x80808080u;
  const uint32_t mag = w & 0x77777777u;
  const uint32_t m0 = byte_perm(table_lo, table_hi, mag),
                 m1 = byte_perm(table_lo, table_hi, mag >> 16);
  const uint32_t p0 = byte_perm(kPositive, kPositive, w),
                 p1 = byte_perm(kPositive, kPositive, w >> 16);
  return make_uint2(m0 | (~(p0 << 1) & kSign), m1 | (~(p1 << 1) & kSign));
}

#ifdef __CUDACC__
// The largest finite code of one 128 x 128 block, from a block of 128 threads holding 4 codes
// each (a row's 4 codes of the block): every thread gets it. warp_max: 4 ints of shared memory;
// one __syncthreads inside, so a caller reusing warp_max synchronises before calling again.
__device__ __forceinline__ int block_largest_code(uint32_t codes, int* warp_max) {
  int emax = kNoCode;
#pragma unroll
  for (int i = 0; i < 4; ++i) emax = max_finite_code(emax, uint8_t(codes >> (8 * i)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) emax = max(emax, __shfl_xor_sync(0xffffffffu, emax, o));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = emax;
  __syncthreads();
  return max(max(warp_max[0], warp_max[1]), max(warp_max[2], warp_max[3]));
}
#endif

}  // namespace agentrt::engine::cuda::fp4_e4m3
