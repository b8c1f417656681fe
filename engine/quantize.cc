#include "engine/quantize.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace agentrt::engine {
namespace {

// The ue8m0 exponent of the smallest power of two s with amax / s <= max_code.
uint8_t scale_exponent(float amax, float max_code) {
  if (!(amax > 0.0f)) return 127;  // all zeros: scale 1
  const int e = int(std::ceil(std::log2(amax / max_code)));
  return uint8_t(std::clamp(e + 127, 1, 254));
}

float exp2i(uint8_t e) { return std::ldexp(1.0f, int(e) - 127); }

}  // namespace

uint8_t float_to_e4m3(float value) {
  const uint8_t sign = std::signbit(value) ? 0x80 : 0;
  const float a = std::min(std::fabs(value), 448.0f);
  if (std::isnan(value)) return 0x7f;
  const float min_normal = std::ldexp(1.0f, -6);
  if (a < min_normal) {  // subnormals: steps of 2^-9; the top one rounds into the first normal
    const int m = int(std::nearbyint(a / std::ldexp(1.0f, -9)));
    return uint8_t(sign | m);  // m == 8 is exactly exponent field 1, mantissa 0
  }
  int e;
  const float frac = std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  int exp_field = e - 1 + 7;
  int m = int(std::nearbyint((frac * 2.0f - 1.0f) * 8.0f));
  if (m == 8) {
    m = 0;
    ++exp_field;
  }
  if (exp_field > 15 || (exp_field == 15 && m == 7)) return uint8_t(sign | 0x7e);  // 448
  return uint8_t(sign | (exp_field << 3) | m);
}

uint8_t float_to_e2m1(float value) {
  static constexpr float kMagnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const uint8_t sign = std::signbit(value) ? 8 : 0;
  const float a = std::fabs(value);
  int best = 0;
  for (int i = 1; i < 8; ++i)
    if (std::fabs(kMagnitudes[i] - a) < std::fabs(kMagnitudes[best] - a)) best = i;
  return uint8_t(sign | best);
}

QuantizedMatrix quantize_fp8_blocks(const float* v, int64_t rows, int64_t cols) {
  const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
  QuantizedMatrix q;
  q.data.resize(rows * cols);
  q.scales.resize(rb * cb);
  for (int64_t br = 0; br < rb; ++br)
    for (int64_t bc = 0; bc < cb; ++bc) {
      const int64_t r1 = std::min(rows, br * 128 + 128), c1 = std::min(cols, bc * 128 + 128);
      float amax = 0.0f;
      for (int64_t r = br * 128; r < r1; ++r)
        for (int64_t c = bc * 128; c < c1; ++c) amax = std::max(amax, std::fabs(v[r * cols + c]));
      const uint8_t e = scale_exponent(amax, 448.0f);
      q.scales[br * cb + bc] = e;
      const float inv = 1.0f / exp2i(e);
      for (int64_t r = br * 128; r < r1; ++r)
        for (int64_t c = bc * 128; c < c1; ++c)
          q.data[r * cols + c] = float_to_e4m3(v[r * cols + c] * inv);
    }
  return q;
}

QuantizedMatrix quantize_mxfp4(const float* v, int64_t rows, int64_t cols) {
  if (cols % 32 != 0)
    throw std::invalid_argument("quantize_mxfp4: " + std::to_string(cols) +
                                " columns is not a multiple of 32");
  QuantizedMatrix q;
  q.data.assign(rows * cols / 2, 0);
  q.scales.resize(rows * cols / 32);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < cols / 32; ++g) {
      const float* x = v + r * cols + g * 32;
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
      const uint8_t e = scale_exponent(amax, 6.0f);
      q.scales[r * (cols / 32) + g] = e;
      const float inv = 1.0f / exp2i(e);
      for (int i = 0; i < 32; ++i) {
        const uint8_t code = float_to_e2m1(x[i] * inv);
        q.data[(r * cols + g * 32 + i) / 2] |= (i & 1) ? uint8_t(code << 4) : code;
      }
    }
  return q;
}

}  // namespace agentrt::engine
