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

// Selects, not branches: a branch per scale cost the streamed FP4 experts' loop a sync pair.
__device__ __forceinline__ float e8m0(uint8_t e) {
  const uint32_t bits = e == 0 ? 0x00400000u : e == 255 ? 0x7fc00000u : uint32_t(e) << 23;
  return __uint_as_float(bits);  // 2^(e - 127); 0: 2^-127; 255: NaN
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

// Values per 16-byte chunk of a stored row.
template <WeightType T>
constexpr int chunk_values() {
  return T == WeightType::f32       ? 4
         : T == WeightType::f8_e4m3 ? 16
         : T == WeightType::f4_e2m1 ? 32
                                    : 8;
}

// FP8 / FP4 by placing the bits into a float32 (sign to bit 31, exponent and mantissa just below
// the float's exponent field): one shift, one arithmetic shift and one mask per value, no
// conversion instructions. The result is the true value times 2^-120 (e4m3) or 2^-126 (e2m1);
// subnormals become float subnormals, so it is exact. The products would be subnormal too, so
// the activations are scaled up by kXScale instead and the chunk sums back down by kOutScale.
template <int K>
__device__ __forceinline__ float e4m3_placed(uint32_t w) {  // byte K of w
  const int32_t t = int32_t(w << (24 - 8 * K));
  return __int_as_float((t >> 4) & int32_t(0x87f00000u));
}
template <int K>
__device__ __forceinline__ float e2m1_placed(uint32_t w) {  // nibble K of w
  const int32_t t = int32_t(w << (28 - 4 * K));
  return __int_as_float((t >> 6) & int32_t(0x81c00000u));
}

// Two FP8 e4m3 bytes of w as an f16 pair, the lower byte in the low half: bytes 0, 1
// (e4m3_low_pair) or 2, 3 (e4m3_high_pair, the upper half read in place). Exact (every e4m3 value
// is an f16, NaN stays NaN), one instruction each on sm_89 and later (Hopper's F2FP unpack): the
// tensor-core products' weight fragments (gemv_stream.cu, gemv_warp_rows.cu, f16_fragments.h).
// Building a bf16 pair from the bits took three to five integer instructions.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
#error "e4m3_low_pair and e4m3_high_pair need sm_89 or later (cvt.rn.f16x2.e4m3x2)"
#endif
__device__ __forceinline__ uint32_t e4m3_low_pair(uint32_t w) {
  uint32_t r;
  asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;}"
      : "=r"(r)
      : "r"(w));
  return r;
}
__device__ __forceinline__ uint32_t e4m3_high_pair(uint32_t w) {
  uint32_t r;
  asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;}"
      : "=r"(r)
      : "r"(w));
  return r;
}

template <WeightType T>
constexpr float x_scale() {
  return T == WeightType::f8_e4m3 ? 0x1p60f : T == WeightType::f4_e2m1 ? 0x1p63f : 1.0f;
}
template <WeightType T>
constexpr float out_scale() {  // 2^120 / 2^60 and 2^126 / 2^63
  return x_scale<T>();
}

// Values per 32-bit word of a stored row.
template <WeightType T>
constexpr int word_values() {
  return chunk_values<T>() / 4;
}

// The values of one stored word (FP8/FP4 times their placement factor, see above).
template <WeightType T>
__device__ __forceinline__ void decode_word(uint32_t w, float (&v)[word_values<T>()]) {
  if constexpr (T == WeightType::f32) {
    v[0] = __uint_as_float(w);
  } else if constexpr (T == WeightType::bf16) {
    v[0] = __uint_as_float(w << 16);
    v[1] = __uint_as_float(w & 0xffff0000u);
  } else if constexpr (T == WeightType::f16) {
    v[0] = f16_bits(uint16_t(w & 0xffff));
    v[1] = f16_bits(uint16_t(w >> 16));
  } else if constexpr (T == WeightType::f8_e4m3) {
    v[0] = e4m3_placed<0>(w);
    v[1] = e4m3_placed<1>(w);
    v[2] = e4m3_placed<2>(w);
    v[3] = e4m3_placed<3>(w);
  } else {
    v[0] = e2m1_placed<0>(w);
    v[1] = e2m1_placed<1>(w);
    v[2] = e2m1_placed<2>(w);
    v[3] = e2m1_placed<3>(w);
    v[4] = e2m1_placed<4>(w);
    v[5] = e2m1_placed<5>(w);
    v[6] = e2m1_placed<6>(w);
    v[7] = e2m1_placed<7>(w);
  }
}

// The activations under one stored word, times x_scale<T>().
template <WeightType T>
__device__ __forceinline__ void load_x(const float* x, float (&v)[word_values<T>()]) {
  constexpr int n = word_values<T>();
  if constexpr (n == 1) {
    v[0] = __ldg(x);
  } else if constexpr (n == 2) {
    const float2 a = __ldg(reinterpret_cast<const float2*>(x));
    v[0] = a.x, v[1] = a.y;
  } else {
#pragma unroll
    for (int i = 0; i < n / 4; ++i) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(x) + i);
      v[4 * i] = a.x, v[4 * i + 1] = a.y, v[4 * i + 2] = a.z, v[4 * i + 3] = a.w;
    }
  }
  if constexpr (x_scale<T>() != 1.0f)
#pragma unroll
    for (int i = 0; i < n; ++i) v[i] *= x_scale<T>();
}

// Asks the L2 for the line holding p, without waiting for it.
__device__ __forceinline__ void prefetch_l2_line(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// One stored row as the fast path reads it: its 16-byte chunks and, for FP8/FP4, the block
// scales under each chunk (FP8: one per 8 chunks of a 128-column block; FP4: one per chunk).
struct RowView {
  const uint4* chunks = nullptr;
  const void* scales = nullptr;
};

__device__ __forceinline__ RowView row_view(const WeightMatrix& w, int64_t row, int64_t row_bytes) {
  RowView v;
  v.chunks = reinterpret_cast<const uint4*>(static_cast<const char*>(w.data) + row * row_bytes);
  const int64_t scale_size = w.scale_type == ScaleType::f32 ? 4 : 1;
  if (w.type == WeightType::f8_e4m3)
    v.scales = static_cast<const char*>(w.scale) +
               ((w.row_offset + row) / 128) * ((w.cols + 127) / 128) * scale_size;
  else if (w.type == WeightType::f4_e2m1)
    v.scales = static_cast<const uint8_t*>(w.scale) + (w.row_offset + row) * (w.cols / 32);
  return v;
}

// The fast path of rows_dot for one stored type. Thread `part` of a group of `parts` lanes owns
// chunks part, part + parts, ... of R rows at the same columns; it loads kUnroll chunks of every
// row before using them (bytes in flight) and each activation once for all R rows: memory-bound
// decode needs few instructions per weight byte, and the activations (4 to 32 floats per 16
// weight bytes) would otherwise cost more cache bandwidth than the weights.
template <WeightType T, int NT, int R>
__device__ __forceinline__ void rows_dot_typed(const RowView (&rv)[R], bool f32_scales, int chunks,
                                               int part, int parts, const float* const (&x)[NT],
                                               float (&acc)[R][NT]) {
  constexpr int V = chunk_values<T>(), W = word_values<T>();
  // One row for one or two tokens (the small decode products, latency-bound): 8 chunks in flight.
  constexpr int kUnroll = R >= 4 ? 2 : R == 1 && NT <= 2 ? 8 : 4;
  constexpr bool scaled = T == WeightType::f8_e4m3 || T == WeightType::f4_e2m1;
  for (int c0 = part; c0 < chunks; c0 += parts * kUnroll) {
    // Long rows take several rounds: the chunks two rounds ahead are asked of the L2 now, so
    // more bytes are in flight than the registers hold (the bf16 head streams 1 GB this way).
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int ahead = c0 + parts * (2 * kUnroll + u);
      if (ahead < chunks)
#pragma unroll
        for (int r = 0; r < R; ++r) prefetch_l2_line(rv[r].chunks + ahead);
    }
    uint4 raw[kUnroll][R];
    float scale[kUnroll][R];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + parts * u;
      const bool ok = c < chunks;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        raw[u][r] = ok ? __ldg(rv[r].chunks + c) : make_uint4(0, 0, 0, 0);
        if constexpr (scaled) {  // a chunk never straddles a scale block
          const int si = T == WeightType::f8_e4m3 ? c >> 3 : c;
          float sc = 0.0f;
          if (ok)
            sc = T == WeightType::f8_e4m3 && f32_scales
                     ? __ldg(static_cast<const float*>(rv[r].scales) + si)
                     : e8m0(__ldg(static_cast<const uint8_t*>(rv[r].scales) + si));
          scale[u][r] = sc * out_scale<T>();
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + parts * u;
      if (c >= chunks) break;
      float s[R][NT];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t) s[r][t] = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float xv[NT][W];
#pragma unroll
        for (int t = 0; t < NT; ++t) load_x<T>(x[t] + c * V + j * W, xv[t]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint4 q = raw[u][r];
          float v[W];
          decode_word<T>(j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w, v);
#pragma unroll
          for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int i = 0; i < W; ++i) s[r][t] = fmaf(v[i], xv[t][i], s[r][t]);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t)
          acc[r][t] = scaled ? fmaf(s[r][t], scale[u][r], acc[r][t]) : acc[r][t] + s[r][t];
    }
  }
}

// acc[r][t] = dot(w[r] row row[r], x[t]) for r < R, t < NT, computed by a group of `parts`
// consecutive lanes of one warp (parts a power of two <= 32, groups aligned to it; every lane of
// the group gets the results). Narrow rows want small groups (enough chunks per lane to amortise
// the setup), wide ones whole warps. The R matrices share type and width (rows of one matrix, or
// the same row of the gate and up projections); x[t] points at token t's activations.
template <int NT, int R>
__device__ __forceinline__ void rows_dot(const WeightMatrix (&w)[R], const int64_t (&row)[R],
                                         const float* const (&x)[NT], int parts,
                                         float (&acc)[R][NT]) {
  const int part = int(threadIdx.x) & (parts - 1);
  const WeightType type = w[0].type;
  const int64_t row_bytes = w[0].cols * value_bytes_x2(type) / 2;
  RowView rv[R];
  bool vector_ok = row_bytes % 16 == 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    rv[r] = row_view(w[r], row[r], row_bytes);
    vector_ok &= (reinterpret_cast<uintptr_t>(rv[r].chunks) & 15) == 0;
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) vector_ok &= (reinterpret_cast<uintptr_t>(x[t]) & 15) == 0;
  if (vector_ok) {
    const int chunks = int(row_bytes / 16);
    const bool f32_scales = w[0].scale_type == ScaleType::f32;
    switch (type) {
      case WeightType::f32:
        rows_dot_typed<WeightType::f32, NT, R>(rv, f32_scales, chunks, part, parts, x, acc);
        break;
      case WeightType::bf16:
        rows_dot_typed<WeightType::bf16, NT, R>(rv, f32_scales, chunks, part, parts, x, acc);
        break;
      case WeightType::f16:
        rows_dot_typed<WeightType::f16, NT, R>(rv, f32_scales, chunks, part, parts, x, acc);
        break;
      case WeightType::f8_e4m3:
        rows_dot_typed<WeightType::f8_e4m3, NT, R>(rv, f32_scales, chunks, part, parts, x, acc);
        break;
      case WeightType::f4_e2m1:
        rows_dot_typed<WeightType::f4_e2m1, NT, R>(rv, f32_scales, chunks, part, parts, x, acc);
        break;
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int64_t c = part; c < w[r].cols; c += parts) {
        const float v = decode_one(w[r], row[r], c);
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[r][t] = fmaf(v, x[t][c], acc[r][t]);
      }
  }
  const unsigned lane = threadIdx.x & 31;
  const unsigned group_mask =
      parts == 32 ? 0xffffffffu : ((1u << parts) - 1) << (lane & ~unsigned(parts - 1));
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t)
      for (int off = parts >> 1; off > 0; off >>= 1)
        acc[r][t] += __shfl_xor_sync(group_mask, acc[r][t], off);
}

// Lanes per row group for rows of `cols` values of type t: at least 4 chunks per lane (to
// amortise the setup and the reduction), 1 to 32.
inline int rows_dot_parts(WeightType t, int64_t cols) {
  const int64_t chunks = cols * value_bytes_x2(t) / 32;
  int parts = 1;
  while (parts < 32 && parts * 8 <= chunks) parts *= 2;
  return parts;
}

}  // namespace agentrt::engine::cuda
