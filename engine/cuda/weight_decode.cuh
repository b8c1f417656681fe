// Device-side decoding of stored weights (engine/matmul.h's WeightMatrix, with device pointers):
// one value at a time for the plain kernels, one 16-byte chunk at a time for the fast ones, and a
// warp's dot product of one weight row with up to 8 activation rows (the decode GEMV's core,
// shared by the dense and the expert kernels).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "engine/matmul.h"

namespace agentrt::engine::cuda {

// Twice the bytes per value, so FP4 stays integral.
__host__ __device__ inline int64_t value_bytes_x2(WeightType t) {
  switch (t) {
    case WeightType::f32:
      return 8;
    case WeightType::bf16:
    case WeightType::f16:
      return 4;
    case WeightType::f8_e4m3:
      return 2;
    case WeightType::f4_e2m1:
      return 1;
  }
  return 8;
}

__device__ __forceinline__ float e8m0(uint8_t e) {
  if (e == 255) return __uint_as_float(0x7fc00000u);
  if (e == 0) return __uint_as_float(0x00400000u);  // 2^-127
  return __uint_as_float(uint32_t(e) << 23);
}

__device__ __forceinline__ float bf16_bits(uint16_t v) {
  return __uint_as_float(uint32_t(v) << 16);
}

__device__ __forceinline__ float f16_bits(uint16_t v) { return __half2float(__ushort_as_half(v)); }

__device__ __forceinline__ float e4m3_bits(uint8_t v) {
  __nv_fp8_e4m3 f;
  f.__x = v;
  return float(f);
}

// E2M1: sign bit 3, exponent bits 2-1 (bias 1; 0 = subnormal 0.5 steps), mantissa bit 0.
__device__ __forceinline__ float e2m1_bits(uint32_t v) {
  const uint32_t e = (v >> 1) & 3, m = v & 1;
  const float mag = e == 0 ? 0.5f * float(m) : float(2 + m) * float(1u << e) * 0.25f;
  return (v & 8) ? -mag : mag;
}

__device__ __forceinline__ float block_scale(const WeightMatrix& w, int64_t row, int64_t col) {
  if (w.type == WeightType::f8_e4m3) {
    const int64_t cb = (w.cols + 127) / 128;
    const int64_t i = ((w.row_offset + row) / 128) * cb + col / 128;
    return w.scale_type == ScaleType::f32 ? static_cast<const float*>(w.scale)[i]
                                          : e8m0(static_cast<const uint8_t*>(w.scale)[i]);
  }
  if (w.type == WeightType::f4_e2m1)
    return e8m0(
        static_cast<const uint8_t*>(w.scale)[(w.row_offset + row) * (w.cols / 32) + col / 32]);
  return 1.0f;
}

__device__ __forceinline__ float decode_one(const WeightMatrix& w, int64_t row, int64_t col) {
  const char* base = static_cast<const char*>(w.data);
  switch (w.type) {
    case WeightType::f32:
      return reinterpret_cast<const float*>(base)[row * w.cols + col];
    case WeightType::bf16:
      return bf16_bits(reinterpret_cast<const uint16_t*>(base)[row * w.cols + col]);
    case WeightType::f16:
      return f16_bits(reinterpret_cast<const uint16_t*>(base)[row * w.cols + col]);
    case WeightType::f8_e4m3:
      return e4m3_bits(reinterpret_cast<const uint8_t*>(base)[row * w.cols + col]) *
             block_scale(w, row, col);
    case WeightType::f4_e2m1: {
      const uint8_t b = reinterpret_cast<const uint8_t*>(base)[row * (w.cols / 2) + col / 2];
      return e2m1_bits((col & 1) ? b >> 4 : b & 15) * block_scale(w, row, col);
    }
  }
  return 0.0f;
}

// Decodes one 16-byte chunk starting at value `col0` into vals[]; returns how many values.
__device__ __forceinline__ int decode_chunk(const WeightMatrix& w, int64_t row, int64_t col0,
                                            uint4 raw, float vals[32]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  switch (w.type) {
    case WeightType::f32:
      for (int i = 0; i < 4; ++i) vals[i] = __uint_as_float(words[i]);
      return 4;
    case WeightType::bf16:
      for (int i = 0; i < 4; ++i) {
        vals[2 * i] = bf16_bits(uint16_t(words[i] & 0xffff));
        vals[2 * i + 1] = bf16_bits(uint16_t(words[i] >> 16));
      }
      return 8;
    case WeightType::f16:
      for (int i = 0; i < 4; ++i) {
        vals[2 * i] = f16_bits(uint16_t(words[i] & 0xffff));
        vals[2 * i + 1] = f16_bits(uint16_t(words[i] >> 16));
      }
      return 8;
    case WeightType::f8_e4m3: {
      const float s = block_scale(w, row, col0);  // 16 values never straddle a 128-block
      for (int i = 0; i < 16; ++i) vals[i] = e4m3_bits(uint8_t(words[i / 4] >> (8 * (i % 4)))) * s;
      return 16;
    }
    case WeightType::f4_e2m1: {
      const float s = block_scale(w, row, col0);  // exactly one 32-value group
      for (int i = 0; i < 32; ++i) vals[i] = e2m1_bits((words[i / 8] >> (4 * (i % 8))) & 15) * s;
      return 32;
    }
  }
  return 0;
}

// E2M1 by building the float's bits (no table, no branches on the value's magnitude).
__device__ __forceinline__ float e2m1_fast(uint32_t v) {
  const uint32_t e = (v >> 1) & 3, m = v & 1;
  const uint32_t bits = e ? (((e + 126) << 23) | (m << 22)) : (m ? 0x3f000000u : 0u);
  return __uint_as_float(bits | ((v & 8u) << 28));
}

// Values per 16-byte chunk of a stored row.
template <WeightType T>
constexpr int chunk_values() {
  return T == WeightType::f32       ? 4
         : T == WeightType::f8_e4m3 ? 16
         : T == WeightType::f4_e2m1 ? 32
                                    : 8;
}

// Decodes one 16-byte chunk without its block scale (applied once per chunk by the caller).
template <WeightType T>
__device__ __forceinline__ void decode_raw(uint4 raw, float (&vals)[chunk_values<T>()]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  if constexpr (T == WeightType::f32) {
    for (int i = 0; i < 4; ++i) vals[i] = __uint_as_float(words[i]);
  } else if constexpr (T == WeightType::bf16) {
    for (int i = 0; i < 4; ++i) {
      vals[2 * i] = __uint_as_float(words[i] << 16);
      vals[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  } else if constexpr (T == WeightType::f16) {
    for (int i = 0; i < 4; ++i) {
      vals[2 * i] = f16_bits(uint16_t(words[i] & 0xffff));
      vals[2 * i + 1] = f16_bits(uint16_t(words[i] >> 16));
    }
  } else if constexpr (T == WeightType::f8_e4m3) {
    for (int i = 0; i < 16; ++i) vals[i] = e4m3_bits(uint8_t(words[i / 4] >> (8 * (i % 4))));
  } else {
    for (int i = 0; i < 32; ++i) vals[i] = e2m1_fast((words[i / 8] >> (4 * (i % 8))) & 15);
  }
}

// The fast path of warp_row_dot for one stored type: each lane loads kUnroll chunks before
// using them (more bytes in flight per warp), decodes in registers, and scales each chunk's dot
// product once.
template <WeightType T, int NT>
__device__ __forceinline__ void warp_row_dot_typed(const WeightMatrix& w, int64_t row,
                                                   const char* p, int64_t chunks,
                                                   const float* const (&x)[NT], float (&acc)[NT]) {
  constexpr int V = chunk_values<T>();
  constexpr int kUnroll = 4;
  const int lane = threadIdx.x & 31;
  const uint4* src = reinterpret_cast<const uint4*>(p);
  constexpr bool scaled = T == WeightType::f8_e4m3 || T == WeightType::f4_e2m1;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    // Issue every load of the group (data, block scales, activations) before the arithmetic.
    uint4 raw[kUnroll];
    float scale[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      const bool ok = c < chunks;
      raw[u] = ok ? __ldg(src + c) : make_uint4(0, 0, 0, 0);
      scale[u] = ok && scaled ? block_scale(w, row, c * V) : 1.0f;  // never straddles a block
    }
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      float vals[V];
      decode_raw<T>(raw[u], vals);
      const int64_t col0 = c * V;
      for (int t = 0; t < NT; ++t) {
        const float4* xt = reinterpret_cast<const float4*>(x[t] + col0);
        float4 xv[V / 4];
        for (int i = 0; i < V / 4; ++i) xv[i] = __ldg(xt + i);
        float s = 0.0f;
        for (int i = 0; i < V / 4; ++i) {
          s = fmaf(vals[4 * i], xv[i].x, s);
          s = fmaf(vals[4 * i + 1], xv[i].y, s);
          s = fmaf(vals[4 * i + 2], xv[i].z, s);
          s = fmaf(vals[4 * i + 3], xv[i].w, s);
        }
        acc[t] = fmaf(s, scale[u], acc[t]);
      }
    }
  }
}

// acc[t] = dot(w[row], x[t]) for t < NT, summed over the warp (every lane gets the result).
// x[t] points at token t's activations (w.cols floats).
template <int NT>
__device__ __forceinline__ void warp_row_dot(const WeightMatrix& w, int64_t row,
                                             const float* const (&x)[NT], float (&acc)[NT]) {
  const int lane = threadIdx.x & 31;
  const int64_t row_bytes = w.cols * value_bytes_x2(w.type) / 2;
  const char* p = static_cast<const char*>(w.data) + row * row_bytes;
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  bool vector_ok = row_bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(p) & 15) == 0;
  for (int t = 0; t < NT; ++t) vector_ok &= (reinterpret_cast<uintptr_t>(x[t]) & 15) == 0;
  if (vector_ok) {
    const int64_t chunks = row_bytes / 16;
    switch (w.type) {
      case WeightType::f32:
        warp_row_dot_typed<WeightType::f32, NT>(w, row, p, chunks, x, acc);
        break;
      case WeightType::bf16:
        warp_row_dot_typed<WeightType::bf16, NT>(w, row, p, chunks, x, acc);
        break;
      case WeightType::f16:
        warp_row_dot_typed<WeightType::f16, NT>(w, row, p, chunks, x, acc);
        break;
      case WeightType::f8_e4m3:
        warp_row_dot_typed<WeightType::f8_e4m3, NT>(w, row, p, chunks, x, acc);
        break;
      case WeightType::f4_e2m1:
        warp_row_dot_typed<WeightType::f4_e2m1, NT>(w, row, p, chunks, x, acc);
        break;
    }
  } else {
    for (int64_t c = lane; c < w.cols; c += 32) {
      const float v = decode_one(w, row, c);
      for (int t = 0; t < NT; ++t) acc[t] = fmaf(v, x[t][c], acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int off = 16; off > 0; off >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], off);
}

}  // namespace agentrt::engine::cuda
