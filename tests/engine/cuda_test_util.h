// Shared by the GPU tests: whether they can run here, and a message saying why not.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

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
inline ModelInitOptions small_fp8_init(uint64_t seed) {
  ModelInitOptions init;
  init.preset = "small";
  init.vocab_size = 3000;
  init.dtype = "fp8";
  init.expert_dtype = "fp4";
  init.seed = seed;
  return init;
}
inline void write_small_fp8_model(const std::filesystem::path& dir, uint32_t seed) {
  write_random_model(dir, small_fp8_init(seed));
}

// The small preset reshaped to the shapes the GPU's wgmma attention takes (64 heads of 512, wo_a
// in 8 groups of 128 rows), in two layers (sliding, CSA).
inline nlohmann::json wgmma_shaped_overrides() {
  return {{"num_attention_heads", 64},
          {"head_dim", 512},
          {"qk_rope_head_dim", 64},
          {"index_head_dim", 64},
          {"o_groups", 8},
          {"o_lora_rank", 128},
          {"num_hidden_layers", 2},
          {"layer_types", {"sliding_attention", "compressed_sparse_attention"}},
          {"mlp_layer_types", {"hash_moe", "moe"}}};
}
inline void write_wgmma_shaped_model(const std::filesystem::path& dir, uint64_t seed) {
  ModelInitOptions init = small_fp8_init(seed);
  init.config_overrides = wgmma_shaped_overrides();
  write_random_model(dir, init);
}

// n token ids below `vocab`, from seed.
inline std::vector<int32_t> random_ids(size_t n, uint32_t seed, int32_t vocab = 3000) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = int32_t(rng() % uint32_t(vocab));
  return ids;
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
