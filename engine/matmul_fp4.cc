#include "engine/matmul_fp4.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "engine/simd.h"

namespace agentrt::engine {
namespace {

using simd::hsum;

float e8m0_to_float(uint8_t e) {
  if (e == 255) return NAN;
  if (e == 0) return std::ldexp(1.0f, -127);  // the one subnormal power of two
  const uint32_t bits = uint32_t(e) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

const uint8_t* row_bytes_at(const WeightMatrix& w, int64_t row) {
  return static_cast<const uint8_t*>(w.data) + row * (w.cols / 2);
}

// Twice the E2M1 values, which are all integers and fit int8: a byte shuffle is the decoder.
const __m128i kDoubledLut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);

// Decodes 32 values (16 bytes) to four float vectors holding 2x the values, in column order.
void load_group_x2(const uint8_t* p, __m256 out[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i nib = _mm_set1_epi8(0x0f);
  const __m128i even = _mm_shuffle_epi8(kDoubledLut, _mm_and_si128(bytes, nib));
  const __m128i odd = _mm_shuffle_epi8(kDoubledLut, _mm_and_si128(_mm_srli_epi16(bytes, 4), nib));
  const __m128i c0 = _mm_unpacklo_epi8(even, odd);  // columns 0..15
  const __m128i c1 = _mm_unpackhi_epi8(even, odd);  // columns 16..31
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c0));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c0, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c1));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c1, 8)));
}

float nibble_value(const uint8_t* p, int64_t col) {
  const uint8_t b = p[col / 2];
  return kE2m1Values[(col & 1) ? (b >> 4) : (b & 15)];
}

}  // namespace

float fp4_group_scale(const WeightMatrix& w, int64_t row, int64_t group) {
  const int64_t groups = (w.cols + kFp4Group - 1) / kFp4Group;
  return e8m0_to_float(static_cast<const uint8_t*>(w.scale)[(w.row_offset + row) * groups + group]);
}

void decode_fp4_row_reference(const WeightMatrix& w, int64_t row, float* out) {
  const uint8_t* p = row_bytes_at(w, row);
  for (int64_t c = 0; c < w.cols; ++c)
    out[c] = nibble_value(p, c) * fp4_group_scale(w, row, c / kFp4Group);
}

void decode_fp4_row(const WeightMatrix& w, int64_t row, float* out) {
  const uint8_t* p = row_bytes_at(w, row);
  int64_t c = 0, g = 0;
  for (; c + kFp4Group <= w.cols; c += kFp4Group, ++g) {
    const __m256 s = _mm256_set1_ps(0.5f * fp4_group_scale(w, row, g));
    __m256 v[4];
    load_group_x2(p + c / 2, v);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + c + 8 * i, _mm256_mul_ps(v[i], s));
  }
  for (; c < w.cols; ++c) out[c] = nibble_value(p, c) * fp4_group_scale(w, row, c / kFp4Group);
}

float dot_fp4(const WeightMatrix& w, int64_t row, const float* x) {
  float out;
  dot_multi_fp4(w, row, x, 1, &out);
  return out;
}

void dot_multi_fp4(const WeightMatrix& w, int64_t row, const float* x, int64_t nt, float* out) {
  const uint8_t* p = row_bytes_at(w, row);
  __m256 total[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
  int64_t c = 0, g = 0;
  for (; c + kFp4Group <= w.cols; c += kFp4Group, ++g) {
    const __m256 s = _mm256_set1_ps(0.5f * fp4_group_scale(w, row, g));
    __m256 v[4];
    load_group_x2(p + c / 2, v);
    for (int64_t t = 0; t < nt; ++t) {
      const float* xt = x + t * w.cols + c;
      __m256 acc = _mm256_mul_ps(v[0], _mm256_loadu_ps(xt));
      acc = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xt + 8), acc);
      acc = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xt + 16), acc);
      acc = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xt + 24), acc);
      total[t] = _mm256_fmadd_ps(acc, s, total[t]);
    }
  }
  for (int64_t t = 0; t < nt; ++t) {
    float v = hsum(total[t]);
    for (int64_t j = c; j < w.cols; ++j)
      v += nibble_value(p, j) * fp4_group_scale(w, row, j / kFp4Group) * x[t * w.cols + j];
    out[t] = v;
  }
}

}  // namespace agentrt::engine
