// FP4 (MXFP4) and FP8 weights: the encoders, the FP4 kernels against their plain reference, and
// whole models with quantised matrices against the same model with those matrices dequantised to
// float32 (the engine's float path is itself checked against transformers in golden_test.cc).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/matmul.h"
#include "engine/matmul_fp4.h"
#include "engine/model.h"
#include "engine/model_init.h"
#include "engine/quantize.h"
#include "engine/safetensors_writer.h"

namespace agentrt::engine {
namespace {

namespace fs = std::filesystem;

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(Quantize, EveryE2m1CodeRoundTrips) {
  for (int code = 0; code < 16; ++code) {
    if (code == 8) continue;  // -0 encodes as itself only by sign; checked below
    EXPECT_EQ(float_to_e2m1(kE2m1Values[code]), code) << code;
  }
  EXPECT_EQ(float_to_e2m1(-0.0f), 8);
  EXPECT_EQ(float_to_e2m1(100.0f), 7);  // saturates at 6
  EXPECT_EQ(float_to_e2m1(-2.4f), 8 | 4);
}

TEST(Quantize, EveryFiniteE4m3CodeRoundTrips) {
  const float one = 1.0f;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    const uint8_t b = uint8_t(code);
    WeightMatrix w{WeightType::f8_e4m3, 1, 1, &b, &one, ScaleType::f32, 0};
    float v;
    decode_weight_row(w, 0, &v);
    EXPECT_EQ(float_to_e4m3(v), code) << "value " << v;
  }
  EXPECT_EQ(float_to_e4m3(1e6f), 0x7e);
}

struct Fp4Matrix {
  std::vector<uint8_t> data, scales;
  WeightMatrix view(int64_t rows, int64_t cols) const {
    return {WeightType::f4_e2m1, rows, cols, data.data(), scales.data(), ScaleType::e8m0, 0};
  }
};

Fp4Matrix random_fp4(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937 rng(seed);
  Fp4Matrix m;
  m.data.resize(rows * cols / 2);
  m.scales.resize(rows * cols / 32);
  for (auto& b : m.data) b = uint8_t(rng());
  for (auto& s : m.scales) s = uint8_t(120 + rng() % 12);
  return m;
}

TEST(Fp4Kernels, DecodeMatchesTheReferenceExactly) {
  const int64_t rows = 5, cols = 96;
  const Fp4Matrix m = random_fp4(rows, cols, 1);
  const WeightMatrix w = m.view(rows, cols);
  std::vector<float> fast(cols), ref(cols);
  for (int64_t r = 0; r < rows; ++r) {
    decode_fp4_row(w, r, fast.data());
    decode_fp4_row_reference(w, r, ref.data());
    EXPECT_EQ(fast, ref) << "row " << r;
  }
  // Spot-check the layout: low nibble is the even column, scale 2^(e - 127) per 32 columns.
  const float scale = std::ldexp(1.0f, int(m.scales[0]) - 127);
  EXPECT_EQ(ref[0], kE2m1Values[m.data[0] & 15] * scale);
  EXPECT_EQ(ref[1], kE2m1Values[m.data[0] >> 4] * scale);
}

TEST(Fp4Kernels, MatmulMatchesTheReferenceForDecodeAndPrefillShapes) {
  const int64_t rows = 37, cols = 160;
  const Fp4Matrix m = random_fp4(rows, cols, 2);
  const WeightMatrix w = m.view(rows, cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  const Serial serial;
  for (int64_t n : {1, 3, 4, 9}) {
    std::vector<float> x(n * cols), y(n * rows), ref(n * rows);
    for (float& v : x) v = dist(rng);
    matmul(x.data(), n, w, y.data(), serial);
    matmul_reference(x.data(), n, w, ref.data());
    EXPECT_LE(rel_l2(y, ref), 1e-6) << "n=" << n;
  }
  // A row slice keeps its place in the scale grid.
  const WeightMatrix s = w.slice_rows(10, 4);
  std::vector<float> a(cols), b(cols);
  decode_weight_row(s, 2, a.data());
  decode_weight_row(w, 12, b.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(w.bytes(), rows * cols / 2);
}

TEST(Quantize, Mxfp4AndFp8KeepTheValuesClose) {
  const int64_t rows = 130, cols = 256;
  std::mt19937 rng(4);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> v(rows * cols);
  for (float& x : v) x = dist(rng);
  const QuantizedMatrix q4 = quantize_mxfp4(v.data(), rows, cols);
  const QuantizedMatrix q8 = quantize_fp8_blocks(v.data(), rows, cols);
  const WeightMatrix w4{WeightType::f4_e2m1, rows, cols, q4.data.data(), q4.scales.data(),
                        ScaleType::e8m0,     0};
  const WeightMatrix w8{WeightType::f8_e4m3, rows, cols, q8.data.data(), q8.scales.data(),
                        ScaleType::e8m0,     0};
  std::vector<float> d4(rows * cols), d8(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    decode_weight_row(w4, r, &d4[r * cols]);
    decode_weight_row(w8, r, &d8[r * cols]);
  }
  EXPECT_LT(rel_l2(d4, v), 0.15);  // 4-bit: coarse but unbiased
  EXPECT_LT(rel_l2(d8, v), 0.04);
  EXPECT_THROW(quantize_mxfp4(v.data(), 2, 48), std::invalid_argument);
}

// --- whole models ---------------------------------------------------------------------------

struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::map<std::string, RawTensor> read_safetensors(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  uint64_t len = 0;
  in.read(reinterpret_cast<char*>(&len), 8);
  std::string header(len, '\0');
  in.read(header.data(), std::streamsize(len));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<std::string, RawTensor> out;
  const auto j = nlohmann::json::parse(header);
  for (const auto& [name, t] : j.items()) {
    if (name == "__metadata__") continue;
    const auto offs = t["data_offsets"].get<std::vector<size_t>>();
    out[name] = {t["dtype"], t["shape"].get<std::vector<int64_t>>(),
                 std::vector<uint8_t>(data.begin() + offs[0], data.begin() + offs[1])};
  }
  return out;
}

// Rewrites every quantised matrix of `from` (I8 = MXFP4, F8_E4M3 = block FP8, each with its
// `.scale`) as the float32 matrix it stands for, dropping the scales and expert_dtype.
void write_dequantized_copy(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  auto cfg = nlohmann::json::parse(std::ifstream(from / "config.json"));
  cfg.erase("expert_dtype");
  std::ofstream(to / "config.json") << cfg.dump(2);
  auto tensors = read_safetensors(from / "model.safetensors");
  std::vector<TensorToWrite> out;
  for (const auto& [name, t] : tensors) {
    if (name.ends_with(".scale")) continue;
    if (t.dtype != "I8" && t.dtype != "F8_E4M3") {
      out.push_back({name, t.dtype, t.shape, t.bytes});
      continue;
    }
    const RawTensor& s = tensors.at(name.substr(0, name.size() - 7) + ".scale");
    const bool fp4 = t.dtype == "I8";
    const int64_t rows = t.shape[0], cols = fp4 ? t.shape[1] * 2 : t.shape[1];
    const WeightMatrix w{fp4 ? WeightType::f4_e2m1 : WeightType::f8_e4m3,
                         rows,
                         cols,
                         t.bytes.data(),
                         s.bytes.data(),
                         ScaleType::e8m0,
                         0};
    TensorToWrite f{name, "F32", {rows, cols}, std::vector<uint8_t>(rows * cols * 4)};
    for (int64_t r = 0; r < rows; ++r)
      decode_weight_row(w, r, reinterpret_cast<float*>(f.bytes.data()) + r * cols);
    out.push_back(std::move(f));
  }
  write_safetensors(to / "model.safetensors", out);
}

class QuantizedModel : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(QuantizedModel, MatchesTheSameModelDequantizedToFloat32) {
  const auto [dtype, expert_dtype] = GetParam();
  const fs::path base =
      fs::temp_directory_path() /
      ("agentrt-quant-" + std::string(dtype) + expert_dtype + "-" + std::to_string(::getpid()));
  ModelInitOptions options;
  options.vocab_size = 512;
  options.seed = 11;
  options.dtype = dtype;
  options.expert_dtype = expert_dtype;
  write_random_model(base / "q", options);
  write_dequantized_copy(base / "q", base / "f");
  const auto cfg = nlohmann::json::parse(std::ifstream(base / "q" / "config.json"));
  EXPECT_EQ(cfg.value("expert_dtype", ""), expert_dtype);

  const auto q = Model::load(base / "q", {Device::cpu, 2});
  const auto f = Model::load(base / "f", {Device::cpu, 2});
  std::vector<int32_t> ids(70);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 37 + 5) % 512);
  const auto lq = q->new_sequence()->forward(ids, true);
  const auto lf = f->new_sequence()->forward(ids, true);
  EXPECT_LE(rel_l2(lq, lf), 1e-5);
  // Decode through the cache agrees with prefill on the quantised model too.
  auto seq = q->new_sequence();
  seq->forward(std::span(ids).first(69));
  const auto last = seq->forward(std::span(ids).subspan(69, 1));
  const std::vector<float> want(lq.end() - 512, lq.end());
  EXPECT_LE(rel_l2(last, want), 1e-5);
  fs::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, QuantizedModel,
                         ::testing::Values(std::pair{"bf16", "fp4"}, std::pair{"fp8", "fp4"},
                                           std::pair{"fp8", "fp8"}));

std::string load_error(const fs::path& dir) {
  try {
    Model::load(dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(QuantizedModel, ExpertDtypeMustDescribeTheStoredExperts) {
  const fs::path dir =
      fs::temp_directory_path() / ("agentrt-quant-mismatch-" + std::to_string(::getpid()));
  ModelInitOptions options;
  options.vocab_size = 256;
  write_random_model(dir, options);  // bf16 experts
  auto cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  cfg["expert_dtype"] = "fp4";
  std::ofstream(dir / "config.json") << cfg.dump();
  EXPECT_NE(load_error(dir).find("expert_dtype fp4 but tensor 'layers.0.ffn.experts.0.w1.weight'"),
            std::string::npos)
      << load_error(dir);
  cfg["expert_dtype"] = "int3";
  std::ofstream(dir / "config.json") << cfg.dump();
  EXPECT_NE(load_error(dir).find("unknown expert_dtype 'int3'"), std::string::npos);
  fs::remove_all(dir);
}

TEST(QuantizedModel, MissingOrMisShapedFp4ScalesAreNamed) {
  const fs::path dir =
      fs::temp_directory_path() / ("agentrt-quant-scales-" + std::to_string(::getpid()));
  ModelInitOptions options;
  options.vocab_size = 256;
  options.expert_dtype = "fp4";
  write_random_model(dir, options);
  auto tensors = read_safetensors(dir / "model.safetensors");
  const std::string victim = "model.layers.1.ffn.experts.3.w2.scale";
  ASSERT_TRUE(tensors.count(victim));
  const auto rewrite = [&](const std::map<std::string, RawTensor>& ts) {
    std::vector<TensorToWrite> out;
    for (const auto& [n, t] : ts) out.push_back({n, t.dtype, t.shape, t.bytes});
    write_safetensors(dir / "model.safetensors", out);
  };
  auto missing = tensors;
  missing.erase(victim);
  rewrite(missing);
  EXPECT_NE(load_error(dir).find("FP4 tensor 'layers.1.ffn.experts.3.w2.weight' has no scales"),
            std::string::npos)
      << load_error(dir);
  auto bad = tensors;
  bad[victim].shape = {bad[victim].shape[1], bad[victim].shape[0]};
  rewrite(bad);
  EXPECT_NE(load_error(dir).find("scale tensor 'layers.1.ffn.experts.3.w2.scale' has shape"),
            std::string::npos)
      << load_error(dir);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace agentrt::engine
