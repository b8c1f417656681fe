// Shared by the GPU tests: whether they can run here, and a message saying why not.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "engine/model_init.h"

#ifdef AGENTRT_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/float_bits.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/kernels.h"
#include "engine/quantize.h"
#endif

namespace agentrt::engine::testing {

// The GPU tests' usual random model: the small preset, vocabulary 3,000, FP8 linears and FP4
// experts.
inline void write_small_fp8_model(const std::filesystem::path& dir, uint32_t seed) {
  ModelInitOptions init;
  init.preset = "small";
  init.vocab_size = 3000;
  init.dtype = "fp8";
  init.expert_dtype = "fp4";
  init.seed = seed;
  write_random_model(dir, init);
}

// Empty when a CUDA device is usable; otherwise why the GPU tests skip.
inline std::string cuda_skip_reason() {
#ifdef AGENTRT_HAVE_CUDA
  std::string why;
  if (!cuda::device_available(&why)) return "no CUDA device: " + why;
  return {};
#else
  return "no CUDA device: the CUDA backend is not built (no nvcc at configure time)";
#endif
}

#ifdef AGENTRT_HAVE_CUDA
// n values drawn from N(0, sd^2).
inline std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// One mHC boundary's random weights (fn [outputs][hc * hidden], base, scale: 1 for the head, else
// 3) and inputs (streams [n][hc][hidden], the norm's weight, a block output [n][hidden]).
struct RandomHyperCase {
  std::vector<float> fn, base, scale, streams, norm, y;
  RandomHyperCase(int64_t outputs, int64_t hc, int64_t hidden, int64_t n, bool head,
                  std::mt19937& rng)
      : fn(randn(outputs * hc * hidden, rng, 0.05f)),
        base(randn(outputs, rng, 0.5f)),
        scale(randn(head ? 1 : 3, rng, 0.3f)) {
    for (auto& v : scale) v += 1.0f;
    streams = randn(n * hc * hidden, rng);
    norm = randn(hidden, rng, 0.1f);
    y = randn(n * hidden, rng);
  }
};

// A host vector copied into a new device buffer (at least 4 bytes), and back.
template <typename T>
cuda::DeviceBuffer upload(const std::vector<T>& v) {
  cuda::DeviceBuffer b(std::max<int64_t>(int64_t(v.size() * sizeof(T)), 4));
  cuda::copy_to_device(b.get(), v.data(), int64_t(v.size() * sizeof(T)));
  return b;
}

// A RandomHyperCase on the device with a random mix of the sublayer before (mix_width floats a
// row): its weights, block output and norm, and two copies of the streams and of the mix, one
// for the reference path (want) and one for the path under test (got).
struct HyperCaseOnDevice {
  std::vector<float> mix;
  cuda::DeviceBuffer fn, base, scale, y, norm, s_want, s_got, m_want, m_got;
  cuda::HyperDevice w;
  HyperCaseOnDevice(const RandomHyperCase& r, int64_t n, int64_t mix_width, std::mt19937& rng)
      : mix(n * mix_width) {
    for (auto& v : mix) v = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
    fn = upload(r.fn), base = upload(r.base), scale = upload(r.scale), y = upload(r.y),
    norm = upload(r.norm);
    s_want = upload(r.streams), s_got = upload(r.streams), m_want = upload(mix),
    m_got = upload(mix);
    w = {fn.as<float>(), base.as<float>(), scale.as<float>()};
  }
};

// One row of `cols` values (a multiple of 128) as GemmPrecision::fp8 quantises activations
// (fp8_act_quant.h, quantize_rows_e4m3): e4m3 codes and one power-of-two scale per 128 columns.
inline void quantise_row_e4m3(const float* x, int64_t cols, uint8_t* q, float* scales) {
  namespace aq = cuda::fp8_act_quant;
  for (int64_t kb = 0; kb < cols / aq::kBlock; ++kb) {
    const float* b = x + kb * aq::kBlock;
    float amax = 0.0f;
    for (int i = 0; i < aq::kBlock; ++i) amax = std::fmax(amax, std::fabs(b[i]));
    const int e = aq::scale_exponent(cuda::float_bits(amax));
    const float inv = e == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e);
    for (int i = 0; i < aq::kBlock; ++i) q[kb * aq::kBlock + i] = float_to_e4m3(b[i] * inv);
    scales[kb] = aq::exp2_exact(e);
  }
}

// The same row under one scale, its largest magnitude's (the grouped expert kernel's row scales,
// moe_fp8.cu's store_row_quantised): each column block's scale slot gets it.
inline void quantise_row_e4m3_uniform(const float* x, int64_t cols, uint8_t* q, float* scales) {
  namespace aq = cuda::fp8_act_quant;
  float amax = 0.0f;
  for (int64_t i = 0; i < cols; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const int e = aq::scale_exponent(cuda::float_bits(amax));
  const float inv = e == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e);
  for (int64_t i = 0; i < cols; ++i) q[i] = float_to_e4m3(x[i] * inv);
  for (int64_t kb = 0; kb < cols / aq::kBlock; ++kb) scales[kb] = aq::exp2_exact(e);
}

// An e4m3 code's value (OCP FP8: bias 7, S.1111.111 NaN).
inline double e4m3_value(uint8_t b) {
  const int exp = (b >> 3) & 15, man = b & 7;
  if (exp == 15 && man == 7) return std::nan("");
  const double mag =
      exp == 0 ? std::ldexp(double(man) / 8.0, -6) : std::ldexp(1.0 + double(man) / 8.0, exp - 7);
  return (b & 0x80) ? -mag : mag;
}

// The row as the FP8 GEMMs see it: each code's value times its block's scale.
inline std::vector<double> e4m3_block_values(const float* x, int64_t cols) {
  std::vector<uint8_t> q(cols);
  std::vector<float> scales(cols / cuda::fp8_act_quant::kBlock);
  quantise_row_e4m3(x, cols, q.data(), scales.data());
  std::vector<double> out(cols);
  for (int64_t c = 0; c < cols; ++c)
    out[c] = e4m3_value(q[c]) * double(scales[c / cuda::fp8_act_quant::kBlock]);
  return out;
}

template <typename T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  cuda::copy_to_host(v.data(), b.get(), int64_t(count * sizeof(T)));
  return v;
}
#endif

}  // namespace agentrt::engine::testing
