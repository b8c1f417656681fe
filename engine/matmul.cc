#include "engine/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace agentrt::engine {
namespace {

int64_t element_size(WeightType t) { return t == WeightType::f32 ? 4 : 2; }

float bf16_to_f32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
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

// Rows decoded per block in the many-token path: the block stays in L1/L2 while every token's
// activations stream past it once.
constexpr int64_t kRowBlock = 8;

}  // namespace

WeightMatrix WeightMatrix::slice_rows(int64_t begin, int64_t count) const {
  WeightMatrix out = *this;
  out.rows = count;
  out.data = static_cast<const char*>(data) + begin * cols * element_size(type);
  return out;
}

int64_t WeightMatrix::bytes() const { return rows * cols * element_size(type); }

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
      for (int64_t i = 0; i < w.cols; ++i) out[i] = bf16_to_f32(p[i]);
      return;
    }
    case WeightType::f16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * w.cols;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = _cvtsh_ss(p[i]);
      return;
    }
  }
}

float dot_weight_row(const WeightMatrix& w, int64_t row, const float* x) {
  switch (w.type) {
    case WeightType::f32:
      return dot_f32(static_cast<const float*>(w.data) + row * w.cols, x, w.cols);
    case WeightType::bf16:
      return dot_half<load_bf16x8, bf16_to_f32>(
          static_cast<const uint16_t*>(w.data) + row * w.cols, x, w.cols);
    case WeightType::f16:
      return dot_half<load_f16x8, f16_scalar>(
          static_cast<const uint16_t*>(w.data) + row * w.cols, x, w.cols);
  }
  return 0.0f;
}

void matmul(const float* x, int64_t n, const WeightMatrix& w, float* y, const Parallel& par_in) {
  const int64_t rows = w.rows, cols = w.cols;
  // Small products are not worth waking the other threads for.
  static const Serial serial;
  const Parallel& par = n * rows * cols < (int64_t(1) << 17) ? serial : par_in;
  if (n <= 2) {
    // Decode-sized: memory bound on the weights; fused conversion, rows split over threads.
    const int64_t grain = 16;
    par.for_range((rows + grain - 1) / grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b * grain; r < std::min(rows, e * grain); ++r)
        for (int64_t t = 0; t < n; ++t) y[t * rows + r] = dot_weight_row(w, r, x + t * cols);
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
      for (int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * cols;
        float* yt = y + t * rows + r0;
        for (int64_t i = 0; i < nr; ++i) yt[i] = dot_f32(wr + i * cols, xt, cols);
      }
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
