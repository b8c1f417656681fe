// Warp-level tensor-core helpers (sm_80+ mma.sync, bf16 or f16 inputs, float32 accumulation) for
// the prefill kernels that are too irregular for cuBLAS (per-row key lists, fused epilogues) and
// the decode step's FP8 products (f16: Hopper turns two FP8 bytes into an f16 pair in one cvt).
//
// Fragment layout of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4:
//   A 16x16 (row-major): a0 = A[g][2c, 2c+1], a1 = A[g+8][2c, 2c+1], a2 = A[g][2c+8, 2c+9],
//                        a3 = A[g+8][2c+8, 2c+9]
//   B 16x8 (k x n):      b0 = B[2c, 2c+1][g], b1 = B[2c+8, 2c+9][g]
//   C 16x8:              c0, c1 = C[g][2c, 2c+1], c2, c3 = C[g+8][2c, 2c+1]
// Two bf16 in one 32-bit register: the lower column (or k) index in the low half.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/cuda/f16_fragments.h"

namespace agentrt::engine::cuda {

__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices from shared memory: lanes 8i..8i+7 give the addresses of matrix i's
// eight rows (16-byte aligned); register i receives matrix i's [g][2c, 2c+1].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Four 8x8 bf16 matrices from shared memory, transposed: lanes 8i..8i+7 give the addresses of
// matrix i's eight rows (16-byte aligned); register i receives matrix i's [2c, 2c+1][g].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// x as bf16 hi + bf16 lo (hi + lo carries ~16 significant bits of x): the split that makes
// three bf16 products (hi*hi + hi*lo + lo*hi) about as accurate as one float32 product.
struct Bf16Parts {
  uint32_t hi, lo;
};
__device__ __forceinline__ Bf16Parts split_bf16(float x0, float x1) {
  const __nv_bfloat162 hi = __floats2bfloat162_rn(x0, x1);
  const float2 back = __bfloat1622float2(hi);
  const __nv_bfloat162 lo = __floats2bfloat162_rn(x0 - back.x, x1 - back.y);
  return {*reinterpret_cast<const uint32_t*>(&hi), *reinterpret_cast<const uint32_t*>(&lo)};
}

// x as f16 hi + f16 lo: ~22 significant bits of x where x's magnitude suits f16 (the FP8
// products scale each block of x by a power of two first, f16_fragments.h).
struct F16Parts {
  uint32_t hi, lo;
};
__device__ __forceinline__ F16Parts split_f16(float x0, float x1) {
  const __half2 hi = __floats2half2_rn(x0, x1);
  const float2 back = __half22float2(hi);
  const __half2 lo = __floats2half2_rn(x0 - back.x, x1 - back.y);
  return {*reinterpret_cast<const uint32_t*>(&hi), *reinterpret_cast<const uint32_t*>(&lo)};
}

// One lane's 4 columns of a 128-column block of activations, the warp holding the whole block (4
// columns a lane; every lane calls it): the block scaled by 2^e (f16_fragments::block_exponent
// of its largest magnitude) as f16 high and low pairs of columns (0, 1) and (2, 3), and 2^-e.
struct F16Quad {
  F16Parts p01, p23;
  float unscale;
};
__device__ __forceinline__ F16Quad f16_block_quad(float4 v) {
  float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int e = f16_fragments::block_exponent(amax);
  const float up = f16_fragments::power_of_two(e);
  return {split_f16(v.x * up, v.y * up), split_f16(v.z * up, v.w * up),
          f16_fragments::power_of_two(-e)};
}

// Two bf16 at p (4-byte aligned) as one fragment register.
__device__ __forceinline__ uint32_t ld_bf16x2(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Four floats as bf16 at hi + off (8-byte aligned); kSplit: their low parts `plane` values
// further on.
template <bool kSplit>
__device__ __forceinline__ void store_bf16_parts(uint16_t* hi, int64_t plane, int64_t off,
                                                 float4 v) {
  if constexpr (kSplit) {
    const Bf16Parts a = split_bf16(v.x, v.y), b = split_bf16(v.z, v.w);
    *reinterpret_cast<uint2*>(hi + off) = make_uint2(a.hi, b.hi);
    *reinterpret_cast<uint2*>(hi + plane + off) = make_uint2(a.lo, b.lo);
  } else {
    *reinterpret_cast<uint2*>(hi + off) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
  }
}
// The same with the split chosen at run time.
__device__ __forceinline__ void store_bf16_parts(bool split, uint16_t* hi, int64_t plane,
                                                 int64_t off, float4 v) {
  if (split)
    store_bf16_parts<true>(hi, plane, off, v);
  else
    store_bf16_parts<false>(hi, plane, off, v);
}

}  // namespace agentrt::engine::cuda
