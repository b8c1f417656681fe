// FP4 (e2m1) dot products in integer arithmetic, for the streamed experts of one row
// (moe_decode.cu). Twice an e2m1 value is a small integer (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12), so a
// word of 8 nibbles becomes two words of 4 int8 with 6 byte permutes (a table lookup), and `dp4a`
// multiplies them by activations held as int8. The activations are split into three int8 parts
// per block of 32 (a power-of-two scale, then the rounding residual twice, 7 more bits each), so
// each product keeps about 21 bits: float32-like. The consumers' loop takes 183 instructions per
// 64 weights where decoding every value to a float for an FMA took 300, most of them integer
// logic, the pipe that limited it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/fp4_e4m3.h"
#include "engine/cuda/stream_ring.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda::stream {

constexpr int kI8Parts = 3;
constexpr int kI8Quads = 2 * kI8Parts;  // uint4s of activation parts per 32 columns
constexpr float kI8Step = 0x1p-7f;      // each part holds the previous one's residual * 2^7

// prmt.b32 in its default mode, sign replication included (__byte_perm masks every selector
// first): fp4_e4m3.h's byte_perm.
using fp4_e4m3::byte_perm;

// Staged int8 activations: for every block of 32 columns, kI8Quads uint4s (part p in quads 2p
// and 2p + 1) laid out so that lanes reading quad q of blocks 32 g .. 32 g + 31 read consecutive
// addresses, then one float per block: its scale times 1/2 (the lookup's values are twice e2m1).
__host__ __device__ inline int64_t i8_blocks(int64_t cols) { return (cols / 32 + 31) / 32 * 32; }
__host__ __device__ inline int64_t i8_bytes(int64_t cols) {
  return i8_blocks(cols) * (kI8Quads * 16 + 4);
}
__device__ __forceinline__ int i8_slot(int block, int q) {
  const unsigned b = unsigned(block);  // unsigned: / and % by 32 are shifts and masks
  return int(((b / 32) * kI8Quads + unsigned(q)) * 32 + b % 32);
}
__device__ __forceinline__ float* i8_scales(uint4* xs, int64_t cols) {
  return reinterpret_cast<float*>(xs + i8_blocks(cols) * kI8Quads);
}

// The smallest power of two s with amax / s <= 126 (at least 2^-100, so 1/s is a float).
__device__ __forceinline__ float block_scale(float amax) {
  const uint32_t bits = (__float_as_uint(amax * (1.0f / 126.0f)) + 0x7fffffu) & 0x7f800000u;
  return fmaxf(__uint_as_float(bits), 0x1p-100f);
}
__device__ __forceinline__ float inverse_pow2(float s) {  // exactly 1/s for a power of two s
  return __uint_as_float(0x7f000000u - __float_as_uint(s));
}

// A block of 32 columns as int8 parts, 4 columns a lane, in groups of 8 lanes (every lane of the
// warp calls it): word[p] holds part p of this lane's 4 columns, one byte each; returns the
// block's scale times 1/2 (the lookup's values are twice e2m1). A block holding a NaN or an
// infinity gets a NaN scale, so its products come out NaN as a float dot product's would.
__device__ __forceinline__ float quantize_quad(float4 v, uint32_t (&word)[kI8Parts]) {
  const bool finite = isfinite(v.x) && isfinite(v.y) && isfinite(v.z) && isfinite(v.w);
  float amax = finite ? fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)))
                      : __uint_as_float(0x7f800000u);
  for (int off = 4; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (amax > 0x1p127f) {  // not finite
    for (int p = 0; p < kI8Parts; ++p) word[p] = 0;
    return __uint_as_float(0x7fc00000u);
  }
  const float s = block_scale(amax), inv = inverse_pow2(s);
  // |y| <= 126, so |a0| <= 127; each residual is at most 1/2, times 2^7 at most 64. Adding
  // 1.5 * 2^23 rounds to an integer, whose two's complement is then the float's low byte.
  constexpr float kMagic = 0x1.8p23f;
  float r[4] = {v.x * inv, v.y * inv, v.z * inv, v.w * inv};
#pragma unroll
  for (int p = 0; p < kI8Parts; ++p) {
    uint32_t t[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float m = r[i] + kMagic;
      t[i] = __float_as_uint(m);
      r[i] = (r[i] - (m - kMagic)) * (1.0f / kI8Step);
    }
    word[p] = byte_perm(byte_perm(t[0], t[1], 0x0040u), byte_perm(t[2], t[3], 0x0040u), 0x5410u);
  }
  return 0.5f * s;
}

// One block of 32 columns as int8 parts, one column a lane of a warp (every lane calls it):
// parts[p] of this lane's column; returns the block's scale as quantize_quad does.
__device__ __forceinline__ float quantize_lane(float v, int8_t (&parts)[kI8Parts]) {
  float amax = isfinite(v) ? fabsf(v) : __uint_as_float(0x7f800000u);
  for (int off = 16; off > 0; off >>= 1)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (amax > 0x1p127f) {  // not finite
    for (int p = 0; p < kI8Parts; ++p) parts[p] = 0;
    return __uint_as_float(0x7fc00000u);
  }
  const float s = block_scale(amax);
  float r = v * inverse_pow2(s);
#pragma unroll
  for (int p = 0; p < kI8Parts; ++p) {
    const float a = rintf(r);
    parts[p] = int8_t(__float2int_rn(a));
    r = (r - a) * (1.0f / kI8Step);
  }
  return 0.5f * s;
}

// Consumer warps stage x[0, cols) (cols a multiple of 32) as int8 parts at xs: each group of 8
// lanes takes a block of 32 columns, 4 a lane.
__device__ void stage_x_i8(const float* x, int64_t cols, uint4* xs) {
  const int group = int(threadIdx.x) / 8, g = int(threadIdx.x) % 8;
  const int blocks = int(cols / 32);
  float* scales = i8_scales(xs, cols);
  // Whole warps loop together (the shuffles): a group past the end quantizes zeros unseen.
  for (int b0 = group - group % 4; b0 < blocks; b0 += kConsumerWarps * 4) {
    const int b = b0 + group % 4;
    const float4 v = b < blocks ? __ldg(reinterpret_cast<const float4*>(x) + b * 8 + g)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    uint32_t word[kI8Parts];
    const float scale = quantize_quad(v, word);
    if (b >= blocks) continue;
#pragma unroll
    for (int p = 0; p < kI8Parts; ++p)
      reinterpret_cast<uint32_t*>(xs + i8_slot(b, 2 * p + g / 4))[g % 4] = word[p];
    if (g == 0) scales[b] = scale;
  }
}

// The same parts in global memory, written by the kernel that computes the values: part p at
// [p * cols, (p + 1) * cols), then cols / 32 float scales, padded to 16 bytes (vectors side by
// side stay aligned for uint4 loads). At most 4 * cols bytes: a float vector's room.
__host__ __device__ inline int64_t i8_plain_bytes(int64_t cols) {
  return (kI8Parts * cols + cols / 8 + 15) / 16 * 16;
}

// Consumer threads copy `count` plain int8 vectors (cols a multiple of 32, i8_plain_bytes(cols)
// apart) into staged layouts stride bytes apart. Every thread issues all its loads before its
// first store: a load-store loop waited for one L2 round trip per vector and part, which held the
// other warps at the barrier after it for microseconds.
__device__ void stage_plain_i8(const int8_t* x, int64_t count, int64_t cols, char* xs,
                               int64_t stride) {
  constexpr int kBatch = 8;
  constexpr int kStride = kConsumerWarps * 32;
  const int n16 = int(cols / 16), parts16 = kI8Parts * n16;
  const int per_vector = parts16 + int(cols / 32);  // 16-byte pieces, then 4-byte scales
  const int total = int(count) * per_vector;
  for (int base = int(threadIdx.x); base < total; base += kStride * kBatch) {
    // Item i = base + r * kStride is piece k of vector vec: stepped, not divided, each time.
    int vec[kBatch], k[kBatch];
    vec[0] = base / per_vector, k[0] = base % per_vector;
#pragma unroll
    for (int r = 1; r < kBatch; ++r) {
      vec[r] = vec[r - 1], k[r] = k[r - 1] + kStride;
      while (k[r] >= per_vector) k[r] -= per_vector, ++vec[r];
    }
    uint4 v[kBatch];
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
      if (vec[r] >= count) break;
      const int8_t* src = x + vec[r] * i8_plain_bytes(cols);
      if (k[r] < parts16)
        v[r] = __ldg(reinterpret_cast<const uint4*>(src) + k[r]);
      else
        v[r].x = __ldg(reinterpret_cast<const uint32_t*>(src + kI8Parts * cols) + (k[r] - parts16));
    }
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
      if (vec[r] >= count) break;
      uint4* dst = reinterpret_cast<uint4*>(xs + vec[r] * stride);
      if (k[r] < parts16) {
        int p = 0, c = k[r];  // part, 16 columns
        while (c >= n16) c -= n16, ++p;
        dst[i8_slot(c / 2, 2 * p + c % 2)] = v[r];
      } else {
        i8_scales(dst, cols)[k[r] - parts16] = __uint_as_float(v[r].x);
      }
    }
  }
}

// The lookup tables: twice the e2m1 magnitudes 0 1 2 3 | 4 6 8 12, and their negatives.
struct Fp4Table {
  uint32_t pos0, pos1, neg0, neg1, pick;
};
// Passed through a shuffle, which the compiler cannot see through: as constants, ptxas copied
// them into fresh registers before every prmt (two dozen instructions a block of 32 columns).
__device__ __forceinline__ Fp4Table fp4_table() {
  auto opaque = [](uint32_t v) { return __shfl_sync(0xffffffffu, v, 0); };
  return {opaque(0x03020100u), opaque(0x0C080604u), opaque(0xFDFEFF00u), opaque(0xF4F8FAFCu),
          opaque(0x32103210u)};
}

// Twice the e2m1 values of the 8 nibbles of w (nibble i = bits 4i..4i+3, the row's i-th value):
// values 0-3 in lo, 4-7 in hi, one int8 each.
__device__ __forceinline__ void fp4_word_to_i8(uint32_t w, const Fp4Table& t, int& lo, int& hi) {
  const uint32_t mag = w & 0x77777777u;  // the sign bits would be prmt's sign-replicate flags
  // Byte i of the result from byte i of the positive (selector i) or negative (i + 4) lookup.
  const uint32_t pick = ((w >> 1) & 0x44444444u) | t.pick;
  const uint32_t mag_hi = mag >> 16, pick_hi = pick >> 16;
  lo = int(byte_perm(byte_perm(t.pos0, t.pos1, mag), byte_perm(t.neg0, t.neg1, mag), pick));
  hi =
      int(byte_perm(byte_perm(t.pos0, t.pos1, mag_hi), byte_perm(t.neg0, t.neg1, mag_hi), pick_hi));
}

// This lane's dot products of M stored FP4 rows with the staged activations over 32-column
// blocks lane, lane + 32, ... < blocks: rows[m][c] is block c's 16 bytes of row m, scales[m][c]
// its e8m0 scale.
template <int M>
__device__ __forceinline__ void lane_dots_i8(const uint4* const (&rows)[M],
                                             const uint8_t* const (&scales)[M], int blocks,
                                             const uint4* xs, const float* xscales, int lane,
                                             float (&acc)[M]) {
  const Fp4Table table = fp4_table();
  for (int c = lane; c < blocks; c += 32) {
    uint4 q[M];
    float sc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      q[m] = rows[m][c];
      sc[m] = e8m0(scales[m][c]);
    }
    uint4 a[kI8Quads];
#pragma unroll
    for (int i = 0; i < kI8Quads; ++i) a[i] = xs[i8_slot(c, i)];
    const float xs_c = xscales[c];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      int d[kI8Parts] = {0, 0, 0};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int lo, hi;
        fp4_word_to_i8(j == 0 ? q[m].x : j == 1 ? q[m].y : j == 2 ? q[m].z : q[m].w, table, lo, hi);
#pragma unroll
        for (int p = 0; p < kI8Parts; ++p) {
          // Word j's values are columns 8j..8j+7: ints 2j and 2j + 1 of the part's 8.
          const uint4 u = a[2 * p + j / 2];
          d[p] = __dp4a(lo, int(j % 2 == 0 ? u.x : u.z), d[p]);
          d[p] = __dp4a(hi, int(j % 2 == 0 ? u.y : u.w), d[p]);
        }
      }
      const float f = fmaf(float(d[2]), kI8Step * kI8Step, fmaf(float(d[1]), kI8Step, float(d[0])));
      acc[m] = fmaf(f, sc[m] * xs_c, acc[m]);
    }
  }
}

}  // namespace agentrt::engine::cuda::stream
