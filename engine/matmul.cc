#include "engine/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/matmul_fp4.h"
#include "engine/simd.h"

namespace agentrt::engine {
namespace {

int64_t row_bytes_of(WeightType t, int64_t cols) {
  switch (t) {
    case WeightType::f32:
      return 4 * cols;
    case WeightType::bf16:
    case WeightType::f16:
      return 2 * cols;
    case WeightType::f8_e4m3:
      return cols;
    case WeightType::f4_e2m1:
      return cols / 2;
  }
  return 4 * cols;
}

constexpr int64_t kFp8Block = 128;

// All 256 e4m3 values (OCP FP8: bias 7, no infinities, S.1111.111 is NaN).
struct E4m3Table {
  float v[256];
  E4m3Table() {
    for (int b = 0; b < 256; ++b) {
      const int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
      float mag;
      if (exp == 15 && man == 7)
        mag = NAN;
      else if (exp == 0)
        mag = std::ldexp(float(man) / 8.0f, -6);
      else
        mag = std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
      v[b] = sign ? -mag : mag;
    }
  }
};
const E4m3Table kE4m3;  // immutable lookup table

float fp8_scale(const WeightMatrix& w, int64_t row, int64_t col_block) {
  const int64_t col_blocks = (w.cols + kFp8Block - 1) / kFp8Block;
  const int64_t i = ((w.row_offset + row) / kFp8Block) * col_blocks + col_block;
  if (w.scale_type == ScaleType::f32) return static_cast<const float*>(w.scale)[i];
  const uint8_t e = static_cast<const uint8_t*>(w.scale)[i];
  return e == 255 ? NAN : std::ldexp(1.0f, int(e) - 127);
}

// Eight e4m3 values divided by 256: e4m3's bits shifted into a float16 (exponent bias 15 instead
// of 7) give the value times 2^-8, normals and subnormals alike, and F16C converts those in one
// instruction. (The e4m3 NaN code decodes as 480 here; checkpoints do not hold NaNs.)
__m256 load_e4m3x8_div256(const uint8_t* p) {
  const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i t = _mm_slli_epi16(b, 7);  // see load_e4m3x16_div256
  return _mm256_cvtph_ps(_mm_add_epi16(t, _mm_and_si128(t, _mm_set1_epi16(0x4000))));
}

using simd::hsum;
}  // namespace
float dot_weight_row(const WeightMatrix& w, int64_t row, const float* x);
namespace {

// Sixteen at a time: one widening, one mask/shift pass over 256 bits, two F16C conversions.
void load_e4m3x16_div256(const uint8_t* p, __m256& lo, __m256& hi) {
  const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // b << 7 puts exponent and mantissa in place and the sign at bit 14; adding bit 14 to itself
  // carries it into bit 15 (the float16 sign) and clears it.
  const __m256i t = _mm256_slli_epi16(b, 7);
  const __m256i h = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

float dot_fp8(const WeightMatrix& w, int64_t row, const float* x) {
  const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * w.cols;
  __m256 total = _mm256_setzero_ps();
  float tail = 0;
  for (int64_t c0 = 0, blk = 0; c0 < w.cols; c0 += kFp8Block, ++blk) {
    const int64_t c1 = std::min(w.cols, c0 + kFp8Block);
    const float scale = fp8_scale(w, row, blk);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      __m256 lo, hi;
      load_e4m3x16_div256(p + c, lo, hi);
      a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + c), a0);
      a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + c + 8), a1);
    }
    for (; c + 8 <= c1; c += 8)
      a0 = _mm256_fmadd_ps(load_e4m3x8_div256(p + c), _mm256_loadu_ps(x + c), a0);
    total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scale * 256.0f), total);
    float s = 0;
    for (; c < c1; ++c) s += kE4m3.v[p[c]] * x[c];
    tail += s * scale;
  }
  return hsum(total) + tail;
}

float bf16_to_f32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

__m256 load_bf16x8(const uint16_t* p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

__m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <__m256 (*Load)(const uint16_t*), float (*Scalar)(uint16_t)>
float dot_half(const uint16_t* w, const float* x, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(Load(w + i), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(Load(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(Load(w + i), _mm256_loadu_ps(x + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += Scalar(w[i]) * x[i];
  return s;
}

float f16_scalar(uint16_t v) { return _cvtsh_ss(v); }

// out[r][t] = dot(w + r*cols, x + t*cols) for 4 rows x 3 tokens: 12 accumulators, the 3 token
// vectors and one weight vector fill the 16 AVX2 registers, so each load feeds 3 or 4 FMAs.
void tile_4x3(const float* w, const float* x, int64_t cols, int64_t nt, float out[4][3]) {
  __m256 acc[4][3];
  for (auto& row : acc)
    for (auto& a : row) a = _mm256_setzero_ps();
  const float* x0 = x;
  const float* x1 = nt > 1 ? x + cols : x;
  const float* x2 = nt > 2 ? x + 2 * cols : x;
  int64_t k = 0;
  for (; k + 8 <= cols; k += 8) {
    const __m256 a = _mm256_loadu_ps(x0 + k), b = _mm256_loadu_ps(x1 + k),
                 c = _mm256_loadu_ps(x2 + k);
    for (int r = 0; r < 4; ++r) {
      const __m256 wr = _mm256_loadu_ps(w + r * cols + k);
      acc[r][0] = _mm256_fmadd_ps(wr, a, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(wr, b, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(wr, c, acc[r][2]);
    }
  }
  const float* xs[3] = {x0, x1, x2};
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < 3; ++t) {
      float v = hsum(acc[r][t]);
      for (int64_t j = k; j < cols; ++j) v += w[r * cols + j] * xs[t][j];
      out[r][t] = v;
    }
}

// out[t] = dot(w row, x[t]) for t < nt <= 4, converting each 8 weights once for all tokens (the
// few-token decode path: batched decode streams the weights once per step).
template <__m256 (*Load)(const uint16_t*), float (*Scalar)(uint16_t)>
void dot_multi_half(const uint16_t* w, const float* x, int64_t cols, int64_t nt, float* out) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 8 <= cols; k += 8) {
    const __m256 wv = Load(w + k);
    for (int64_t t = 0; t < nt; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * cols + k), acc[t]);
  }
  for (int64_t t = 0; t < nt; ++t) {
    float v = hsum(acc[t]);
    for (int64_t j = k; j < cols; ++j) v += Scalar(w[j]) * x[t * cols + j];
    out[t] = v;
  }
}

// The FP8 version: per 128-column block, accumulate unscaled, then apply the block's scale.
void dot_multi_fp8(const WeightMatrix& w, int64_t row, const float* x, int64_t nt, float* out) {
  const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * w.cols;
  for (int64_t t = 0; t < nt; ++t) out[t] = 0;
  for (int64_t c0 = 0, blk = 0; c0 < w.cols; c0 += kFp8Block, ++blk) {
    const int64_t c1 = std::min(w.cols, c0 + kFp8Block);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
      const __m256 wv = load_e4m3x8_div256(p + c);
      for (int64_t t = 0; t < nt; ++t)
        acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * w.cols + c), acc[t]);
    }
    const float scale = fp8_scale(w, row, blk);
    for (int64_t t = 0; t < nt; ++t) {
      float v = hsum(acc[t]) * 256.0f;
      for (int64_t j = c; j < c1; ++j) v += kE4m3.v[p[j]] * x[t * w.cols + j];
      out[t] += v * scale;
    }
  }
}

void dot_multi(const WeightMatrix& w, int64_t row, const float* x, int64_t nt, float* out) {
  const auto* p16 = static_cast<const uint16_t*>(w.data) + row * w.cols;
  switch (w.type) {
    case WeightType::bf16:
      return dot_multi_half<load_bf16x8, bf16_to_f32>(p16, x, w.cols, nt, out);
    case WeightType::f16:
      return dot_multi_half<load_f16x8, f16_scalar>(p16, x, w.cols, nt, out);
    case WeightType::f8_e4m3:
      return dot_multi_fp8(w, row, x, nt, out);
    case WeightType::f4_e2m1:
      return dot_multi_fp4(w, row, x, nt, out);
    case WeightType::f32:
      for (int64_t t = 0; t < nt; ++t) out[t] = dot_weight_row(w, row, x + t * w.cols);
  }
}

// Rows decoded per block in the many-token path: the block stays in L1/L2 while every token's
// activations stream past it once.
constexpr int64_t kRowBlock = 8;

}  // namespace

WeightMatrix WeightMatrix::slice_rows(int64_t begin, int64_t count) const {
  WeightMatrix out = *this;
  out.rows = count;
  out.data = static_cast<const char*>(data) + begin * row_bytes();
  out.row_offset = row_offset + begin;
  return out;
}

int64_t WeightMatrix::row_bytes() const { return row_bytes_of(type, cols); }

int64_t WeightMatrix::bytes() const { return rows * row_bytes(); }

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void decode_weight_row(const WeightMatrix& w, int64_t row, float* out) {
  switch (w.type) {
    case WeightType::f32:
      std::memcpy(out, static_cast<const float*>(w.data) + row * w.cols, w.cols * 4);
      return;
    case WeightType::bf16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * w.cols;
      int64_t i = 0;
      for (; i + 8 <= w.cols; i += 8) _mm256_storeu_ps(out + i, load_bf16x8(p + i));
      for (; i < w.cols; ++i) out[i] = bf16_to_f32(p[i]);
      return;
    }
    case WeightType::f16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * w.cols;
      int64_t i = 0;
      for (; i + 8 <= w.cols; i += 8) _mm256_storeu_ps(out + i, load_f16x8(p + i));
      for (; i < w.cols; ++i) out[i] = _cvtsh_ss(p[i]);
      return;
    }
    case WeightType::f8_e4m3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * w.cols;
      for (int64_t c0 = 0, blk = 0; c0 < w.cols; c0 += kFp8Block, ++blk) {
        const int64_t c1 = std::min(w.cols, c0 + kFp8Block);
        const float scale = fp8_scale(w, row, blk);
        const __m256 vs = _mm256_set1_ps(scale * 256.0f);
        int64_t c = c0;
        for (; c + 8 <= c1; c += 8)
          _mm256_storeu_ps(out + c, _mm256_mul_ps(load_e4m3x8_div256(p + c), vs));
        for (; c < c1; ++c) out[c] = kE4m3.v[p[c]] * scale;
      }
      return;
    }
    case WeightType::f4_e2m1:
      return decode_fp4_row(w, row, out);
  }
}

float dot_weight_row(const WeightMatrix& w, int64_t row, const float* x) {
  switch (w.type) {
    case WeightType::f32:
      return dot_f32(static_cast<const float*>(w.data) + row * w.cols, x, w.cols);
    case WeightType::bf16:
      return dot_half<load_bf16x8, bf16_to_f32>(static_cast<const uint16_t*>(w.data) + row * w.cols,
                                                x, w.cols);
    case WeightType::f16:
      return dot_half<load_f16x8, f16_scalar>(static_cast<const uint16_t*>(w.data) + row * w.cols,
                                              x, w.cols);
    case WeightType::f8_e4m3:
      return dot_fp8(w, row, x);
    case WeightType::f4_e2m1:
      return dot_fp4(w, row, x);
  }
  return 0.0f;
}

void matmul(const float* x, int64_t n, const WeightMatrix& w, float* y, const Parallel& par_in) {
  const int64_t rows = w.rows, cols = w.cols;
  // Small products are not worth waking the other threads for.
  static const Serial serial;
  const Parallel& par = n * rows * cols < (int64_t(1) << 17) ? serial : par_in;
  if (n <= 4) {
    // Decode-sized: memory bound on the weights; fused conversion, rows split over threads.
    const int64_t grain = 16;
    par.for_range((rows + grain - 1) / grain, [&](int64_t b, int64_t e) {
      float out[4];
      for (int64_t r = b * grain; r < std::min(rows, e * grain); ++r) {
        dot_multi(w, r, x, n, out);
        for (int64_t t = 0; t < n; ++t) y[t * rows + r] = out[t];
      }
    });
    return;
  }
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  par.for_range(blocks, [&](int64_t b, int64_t e) {
    std::vector<float> buf(kRowBlock * cols);
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t r0 = blk * kRowBlock, nr = std::min(kRowBlock, rows - r0);
      const float* wr;
      if (w.type == WeightType::f32) {
        wr = static_cast<const float*>(w.data) + r0 * cols;
      } else {
        for (int64_t i = 0; i < nr; ++i) decode_weight_row(w, r0 + i, buf.data() + i * cols);
        wr = buf.data();
      }
      int64_t i = 0;
      for (; i + 4 <= nr; i += 4) {
        for (int64_t t = 0; t < n; t += 3) {
          const int64_t nt = std::min<int64_t>(3, n - t);
          float out[4][3];
          tile_4x3(wr + i * cols, x + t * cols, cols, nt, out);
          for (int r = 0; r < 4; ++r)
            for (int64_t j = 0; j < nt; ++j) y[(t + j) * rows + r0 + i + r] = out[r][j];
        }
      }
      for (; i < nr; ++i)
        for (int64_t t = 0; t < n; ++t)
          y[t * rows + r0 + i] = dot_f32(wr + i * cols, x + t * cols, cols);
    }
  });
}

void matmul_reference(const float* x, int64_t n, const WeightMatrix& w, float* y) {
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    decode_weight_row(w, r, row.data());
    for (int64_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(row[c]) * double(x[t * w.cols + c]);
      y[t * w.rows + r] = float(s);
    }
  }
}

}  // namespace agentrt::engine
