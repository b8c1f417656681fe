// GemmPrecision::fp8 (engine/cuda/fp8_gemm.{h,cu}, fp8_act_quant.h): prefill products of FP8
// weights as cuBLASLt block-scaled FP8 GEMMs with the activations quantised to e4m3 per row and
// 128 columns. The host tests (CudaFp8ActQuant.*) run without a GPU; the GPU tests
// (CudaFp8Gemm.*) check the device quantisation bitwise against the host's, and the GEMMs against
// a host product of the same quantised activations, which pins down cuBLASLt's scale layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/matmul.h"
#include "engine/model.h"
#include "engine/model_init.h"
#include "engine/quantize.h"
#include "engine/safetensors_writer.h"
#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/fp4_e4m3.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/linear.h"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/wgmma_runs.h"
#endif

namespace agentrt::engine {
namespace {

#ifndef AGENTRT_HAVE_CUDA
TEST(CudaFp8Gemm, MatchesTheHostQuantisedProduct) {
  GTEST_SKIP() << "CUDA backend not built (no nvcc at configure time)";
}
#else

namespace aq = cuda::fp8_act_quant;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

// The scale is the smallest power of two that keeps the block's largest magnitude within 448,
// over every binade, at and around the boundaries 448 * 2^k, for zero, subnormals, the largest
// float, infinity and NaN.
TEST(CudaFp8ActQuant, ScaleIsTheSmallestPowerOfTwoThatFits) {
  std::vector<float> amaxes = {0.0f,
                               std::numeric_limits<float>::denorm_min(),
                               std::numeric_limits<float>::min(),
                               std::numeric_limits<float>::max(),
                               1.0f,
                               448.0f,
                               449.0f};
  for (int k = -140; k <= 119; ++k) {
    const float edge = std::ldexp(448.0f, k);
    if (edge == 0.0f || std::isinf(edge)) continue;
    amaxes.push_back(edge);
    amaxes.push_back(std::nextafter(edge, 0.0f));
    amaxes.push_back(std::nextafter(edge, INFINITY));
    amaxes.push_back(std::ldexp(1.0f, k));
    amaxes.push_back(std::ldexp(1.9f, k));
  }
  for (const float amax : amaxes) {
    const int e = aq::scale_exponent(bits_of(amax));
    ASSERT_GE(e, -126) << amax;
    ASSERT_LE(e, 127) << amax;
    const double s = std::ldexp(1.0, e);
    EXPECT_EQ(double(aq::exp2_exact(e)), s) << e;
    EXPECT_LE(double(amax) / s, 448.0) << "amax " << amax << " e " << e;
    if (e > -126) {
      EXPECT_GT(double(amax) / (s / 2), 448.0) << "amax " << amax << " e " << e;
    }
  }
  EXPECT_EQ(aq::scale_exponent(bits_of(INFINITY)), aq::kNotFinite);
  EXPECT_EQ(aq::scale_exponent(bits_of(std::numeric_limits<float>::quiet_NaN())), aq::kNotFinite);
  EXPECT_TRUE(std::isnan(aq::exp2_exact(aq::kNotFinite)));
}

TEST(CudaFp8ActQuant, ScaleLayouts) {
  // Activations: a block's scales for consecutive rows are consecutive.
  EXPECT_EQ(aq::act_scale_index(0, 0, 8), 0);
  EXPECT_EQ(aq::act_scale_index(5, 0, 8), 5);
  EXPECT_EQ(aq::act_scale_index(5, 2, 8), 21);
  // Weights: column blocks padded to a multiple of 4 per row block.
  EXPECT_EQ(aq::weight_scale_ld(128), 4);
  EXPECT_EQ(aq::weight_scale_ld(512), 4);
  EXPECT_EQ(aq::weight_scale_ld(640), 8);
  EXPECT_EQ(aq::weight_scale_ld(4096), 32);
  EXPECT_EQ(aq::whole_rows(37) % 4, 0);  // cuBLASLt's scales: rows a multiple of 4
  EXPECT_EQ(aq::whole_rows(37), 32);
  EXPECT_EQ(aq::whole_rows(64), 64);
  EXPECT_EQ(aq::whole_rows(3), 0);
}

// x's rows as the FP8 GEMM sees them: each quantised value times its block's scale.
std::vector<double> quantised_rows(const std::vector<float>& x, int64_t n, int64_t cols) {
  std::vector<double> out;
  out.reserve(n * cols);
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<double> row = testing::e4m3_block_values(&x[t * cols], cols);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

// The host reference itself: each quantised value is within half an e4m3 step of the value
// (2^-4 relative for normals, 2^-10 of the block's scale for e4m3's subnormals).
TEST(CudaFp8ActQuant, QuantisedRowsStayWithinHalfAStep) {
  const int64_t n = 5, cols = 256;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * cols);
  for (int64_t i = 0; i < n * cols; ++i) x[i] = dist(rng) * std::ldexp(1.0f, int(i % 40) - 20);
  const std::vector<double> q = quantised_rows(x, n, cols);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t kb = 0; kb < cols / 128; ++kb) {
      float amax = 0.0f;
      for (int i = 0; i < 128; ++i) amax = std::fmax(amax, std::fabs(x[t * cols + kb * 128 + i]));
      const double s = aq::exp2_exact(aq::scale_exponent(bits_of(amax)));
      for (int i = 0; i < 128; ++i) {
        const int64_t k = t * cols + kb * 128 + i;
        EXPECT_LE(std::fabs(q[k] - x[k]), std::fabs(x[k]) / 16 + s * std::ldexp(1.0, -10)) << k;
      }
    }
}

struct Fp8Host {
  std::vector<uint8_t> data, scales;
  std::vector<float> f32_scales;
  WeightMatrix view;
};

Fp8Host make_fp8(int64_t rows, int64_t cols, uint64_t seed, bool f32_scales) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<float> v(rows * cols);
  for (float& x : v) x = dist(rng);
  // Blocks of different magnitudes, so that a scale read from the wrong block shows.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v[r * cols + c] *= float(1 + (r / 128 + 3 * (c / 128)) % 5);
  QuantizedMatrix q = quantize_fp8_blocks(v.data(), rows, cols);
  Fp8Host m;
  m.data = std::move(q.data);
  m.scales = std::move(q.scales);
  for (uint8_t e : m.scales) m.f32_scales.push_back(std::ldexp(1.0f, int(e) - 127));
  m.view = {WeightType::f8_e4m3,
            rows,
            cols,
            m.data.data(),
            f32_scales ? static_cast<const void*>(m.f32_scales.data()) : m.scales.data(),
            f32_scales ? ScaleType::f32 : ScaleType::e8m0,
            0};
  return m;
}

double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// y[t][g rows + r] for the block-diagonal product (group g reads columns g cols ..), from x as
// given (quantised or exact).
std::vector<double> host_product(const WeightMatrix& w, int64_t groups,
                                 const std::vector<double>& x, int64_t n, int64_t y_stride) {
  const int64_t rg = w.rows / groups, xc = groups * w.cols;
  std::vector<double> y(n * y_stride, 0.0);
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    decode_weight_row(w, r, row.data());
    const int64_t g = r / rg;
    for (int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(row[c]) * x[t * xc + g * w.cols + c];
      y[t * y_stride + r] = s;
    }
  }
  return y;
}

// The GEMMs against the host's float64 product of the same quantised values: Hopper's FP8 tensor
// cores accumulate with about 14 significant bits inside each 128-column block (cuBLASLt promotes
// to float32 between blocks), so ~1e-4 is expected; a scale from the wrong block or row gives
// errors of 0.1-1 here (the test matrices' blocks differ in size by factors up to 7).
constexpr double kAccumulation = 1e-3;

class CudaFp8Gemm : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = testing::cuda_skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

// The device's codes and scales are the host's, bit for bit: strided rows, a block of zeros, one
// holding an infinity (NaN scale), a NaN value, a block of NaNs, values that round to e4m3's
// subnormals.
TEST_F(CudaFp8Gemm, QuantisesAsTheHost) {
  const int64_t n = 13, cols = 384, stride = 388;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * stride, 0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < cols; ++c)
      x[t * stride + c] = dist(rng) * std::ldexp(1.0f, int(t) * 9 - 60 + int(c / 128));
  for (int64_t c = 128; c < 256; ++c) x[2 * stride + c] = 0.0f;
  x[4 * stride + 7] = INFINITY;
  x[5 * stride + 300] = std::numeric_limits<float>::quiet_NaN();
  for (int64_t c = 0; c < 128; ++c) x[7 * stride + c] = std::numeric_limits<float>::quiet_NaN();
  x[6 * stride + 1] = 1000.0f;  // the rest of its block falls to e4m3 subnormals or zero
  auto dx = testing::upload(x);
  // scale_rows 16 > n: the scales' row count need not be n.
  cuda::DeviceBuffer dq(n * cols), ds16(16 * (cols / 128) * 4);
  cuda::quantize_rows_e4m3(dx.as<float>(), stride, n, cols, dq.as<uint8_t>(), ds16.as<float>(), 16,
                           nullptr);
  AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
  const auto q = testing::download<uint8_t>(dq, n * cols);
  const auto s = testing::download<float>(ds16, 16 * (cols / 128));
  std::vector<uint8_t> want_q(cols);
  std::vector<float> want_s(cols / 128);
  for (int64_t t = 0; t < n; ++t) {
    testing::quantise_row_e4m3(&x[t * stride], cols, want_q.data(), want_s.data());
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(int(q[t * cols + c]), int(want_q[c])) << "row " << t << " column " << c;
    for (int64_t kb = 0; kb < cols / 128; ++kb) {
      const float got = s[aq::act_scale_index(t, kb, 16)];
      if (std::isnan(want_s[kb]))
        EXPECT_TRUE(std::isnan(got)) << "row " << t << " block " << kb;
      else
        EXPECT_EQ(got, want_s[kb]) << "row " << t << " block " << kb;
    }
  }
}

// LinearRunner under fp8 (run and run_grouped) against the host's product of the same quantised
// activations: equal up to the FP8 tensor cores' accumulation, whatever the row count's remainder
// mod 16 (the padded GEMM of the last rows), ue8m0 or float32 weight scales, column blocks per row
// a multiple of 4 or not (the padded weight scales), groups, a row slice. Against the exact
// activations the error is e4m3's (a few 1e-2).
TEST_F(CudaFp8Gemm, MatchesTheHostQuantisedProduct) {
  struct Case {
    int64_t rows, cols, groups, n;
    bool f32_scales;
    int64_t slice_from;  // rows of a larger matrix from here (a multiple of 128), or -1
  };
  const Case cases[] = {
      {256, 1024, 1, 48, false, -1}, {256, 1024, 1, 47, true, -1},  {256, 1024, 1, 36, false, -1},
      {256, 1024, 1, 37, true, -1},  {384, 256, 1, 18, false, -1},  {384, 256, 1, 19, true, -1},
      {512, 384, 2, 21, false, -1},  {1024, 128, 8, 40, false, -1}, {256, 512, 1, 17, false, 128}};
  for (const Case& c : cases) {
    const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " groups " +
                             std::to_string(c.groups) + " n " + std::to_string(c.n) +
                             (c.f32_scales ? " f32 scales" : " ue8m0 scales") +
                             (c.slice_from >= 0 ? " slice" : "");
    const int64_t full_rows = c.slice_from >= 0 ? c.slice_from + c.rows + 128 : c.rows;
    const Fp8Host m = make_fp8(full_rows, c.cols, uint64_t(c.rows + c.n), c.f32_scales);
    const WeightMatrix w = c.slice_from >= 0 ? m.view.slice_rows(c.slice_from, c.rows) : m.view;
    const int64_t xc = c.groups * c.cols, y_stride = c.rows + 8;
    std::mt19937 rng(uint32_t(c.n));
    std::normal_distribution<float> dist;
    std::vector<float> x(c.n * xc);
    for (float& v : x) v = dist(rng);
    const std::vector<double> want =
        host_product(w, c.groups, quantised_rows(x, c.n, xc), c.n, y_stride);
    const std::vector<double> exact =
        host_product(w, c.groups, std::vector<double>(x.begin(), x.end()), c.n, y_stride);
    // A slice of the matrix on the device (row_offset 128 there too).
    cuda::DeviceMatrix dm(m.view);
    const WeightMatrix dw =
        c.slice_from >= 0 ? dm.view().slice_rows(c.slice_from, c.rows) : dm.view();
    auto dx = testing::upload(x);
    auto dy = testing::upload(std::vector<float>(c.n * y_stride, 0.0f));
    cuda::LinearRunner runner(cuda::GemmPrecision::fp8, 16);
    if (c.groups == 1)
      runner.run(dw, dx.as<float>(), xc, c.n, dy.as<float>(), y_stride, nullptr);
    else
      runner.run_grouped(dw, c.groups, dx.as<float>(), xc, c.n, dy.as<float>(), y_stride, nullptr);
    AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> got = testing::download<float>(dy, c.n * y_stride);
    ASSERT_EQ(runner.fp8_counts().fp8, 1) << what << ": cuBLASLt gave no FP8 algorithm";
    EXPECT_EQ(runner.fp8_counts().fallbacks, 0) << what;
    const double error = rel_l2(got, want);
    std::printf(
        "[ fp8 GEMM ] %s: rel L2 %.3g against the quantised product, %.3g against the exact\n",
        what.c_str(), error, rel_l2(got, exact));
    EXPECT_LE(error, kAccumulation) << what;
    EXPECT_LE(rel_l2(got, exact), 6e-2) << what;
    // The padding columns of y are untouched.
    for (int64_t t = 0; t < c.n; ++t)
      for (int64_t r = c.rows; r < y_stride; ++r) ASSERT_EQ(got[t * y_stride + r], 0.0f) << what;
  }
}

// Which scale layouts cuBLASLt reads: all four combinations of the activation scales' order and
// the weight scale rows' padding on matrices of 2 and 8 column blocks (padding matters only for
// the first), each against the host's product. The defaults (torch._scaled_mm's) must match;
// the printed errors say which layout does where they do not.
TEST_F(CudaFp8Gemm, ScaleLayoutProbe) {
  const int64_t n = 32;
  for (const int64_t cols : {int64_t(256), int64_t(1024)}) {
    const Fp8Host m = make_fp8(256, cols, uint64_t(cols), false);
    std::mt19937 rng{uint32_t(cols)};
    std::normal_distribution<float> dist;
    std::vector<float> x(n * cols);
    for (size_t i = 0; i < x.size(); ++i) x[i] = dist(rng) * float(1 + (i / 128) % 7);
    const std::vector<double> want = host_product(m.view, 1, quantised_rows(x, n, cols), n, 256);
    cuda::DeviceMatrix dm(m.view);
    auto dx = testing::upload(x);
    auto dy = testing::upload(std::vector<float>(n * 256, 0.0f));
    double best = 1e30, default_error = 1e30;
    for (const bool rows_contiguous : {true, false})
      for (const bool padded : {true, false}) {
        cuda::Fp8Gemm gemm(cuda::Fp8ScaleLayout{rows_contiguous, padded});
        const bool ran =
            gemm.run(dm.view(), 1, dx.as<float>(), cols, n, dy.as<float>(), 256, nullptr);
        AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
        const double error = ran ? rel_l2(testing::download<float>(dy, n * 256), want) : 1e30;
        std::printf(
            "[ fp8 scale layout ] %lld columns, activation scales %s, weight scale rows %s: %s "
            "%.3g\n",
            (long long)cols, rows_contiguous ? "[block][row]" : "[row][block]",
            padded ? "padded to 4" : "unpadded", ran ? "rel L2" : "no algorithm", error);
        best = std::min(best, error);
        if (rows_contiguous && padded) default_error = error;
      }
    EXPECT_LE(default_error, kAccumulation)
        << cols << " columns: the default layout is not cuBLASLt's";
    EXPECT_LE(best, kAccumulation) << cols << " columns: no layout tried matches";
  }
}

// run_same_input quantises x once for the FP8 products; a bf16 matrix among them takes the bf16
// GEMM.
TEST_F(CudaFp8Gemm, ProductsOfTheSameInput) {
  const int64_t cols = 512, n = 70;
  const Fp8Host a = make_fp8(256, cols, 1, false), b = make_fp8(128, cols, 2, true);
  std::vector<uint16_t> bf(64 * cols);
  std::vector<float> bf_values(64 * cols);
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  for (size_t i = 0; i < bf.size(); ++i) {
    const float v = dist(rng);
    bf[i] = uint16_t(bits_of(v) >> 16);  // truncated: exactly a bf16
    bf_values[i] = v;
  }
  const WeightMatrix c{WeightType::bf16, 64, cols, bf.data(), nullptr, ScaleType::f32, 0};
  std::vector<float> x(n * cols);
  for (float& v : x) v = dist(rng) * 10.0f;
  const std::vector<double> xq = quantised_rows(x, n, cols), xe(x.begin(), x.end());
  cuda::DeviceMatrix da(a.view), db(b.view), dc(c);
  auto dx = testing::upload(x);
  std::vector<cuda::DeviceBuffer> ys;
  const WeightMatrix* ws[3] = {&a.view, &b.view, &c};
  const cuda::DeviceMatrix* dms[3] = {&da, &db, &dc};
  std::vector<cuda::LinearRunner::Product> products;
  for (int i = 0; i < 3; ++i) {
    ys.emplace_back(n * ws[i]->rows * 4);
    products.push_back({dms[i]->view(), ys.back().as<float>()});
  }
  cuda::LinearRunner runner(cuda::GemmPrecision::fp8, 16);
  runner.run_same_input(products, dx.as<float>(), n, nullptr);
  AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(runner.fp8_counts().fp8, 2);
  EXPECT_EQ(runner.fp8_counts().fallbacks, 0);
  for (int i = 0; i < 3; ++i) {
    const auto got = testing::download<float>(ys[i], n * ws[i]->rows);
    const auto want = host_product(*ws[i], 1, i < 2 ? xq : xe, n, ws[i]->rows);
    EXPECT_LE(rel_l2(got, want), i < 2 ? kAccumulation : 1e-2) << "product " << i;
  }
}

// A whole random model (FP8 linears, MXFP4 experts) prefilled under fp8 stays near the CPU's
// float32 logits. e4m3 activations move each product by ~3e-2 and each routed expert's output by
// ~8e-2 (two quantisations in series; CudaKernels.RoutedExpertsOnFp8GemmsMatchSwigluExpert), and
// a near-tied expert or top-k choice can flip, so this bounds the median only, loosely (the H200
// measured 0.21, worst 0.89): the products' and experts' own tests pin down their arithmetic.
TEST_F(CudaFp8Gemm, RandomModelPrefillStaysNearTheCpu) {
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_fp8_prefill";
  testing::write_small_fp8_model(dir, 7);
  const auto cpu = Model::load(dir, {Device::cpu, 0});
  std::mt19937 rng(11);
  std::vector<int32_t> ids(300);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  const int64_t V = cpu->vocab_size();
  const auto want = cpu->new_sequence()->forward(ids, true);
  // With per-block scales and with row scales (CudaOptions::fp8_row_scales, the default), under
  // the same bound.
  for (bool row_scales : {false, true}) {
    cuda::CudaOptions options;
    options.precision = cuda::GemmPrecision::fp8;
    options.fp8_row_scales = row_scales;
    const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
    const auto got = gpu->new_sequence()->forward(ids, true);
    std::vector<double> errors;
    for (size_t p = 0; p < ids.size(); ++p)
      errors.push_back(testing::rel_l2(&got[p * V], &want[p * V], V));
    std::sort(errors.begin(), errors.end());
    const auto counts = cuda_fp8_counts(*gpu);
    std::printf(
        "[ fp8 prefill%s ] rel L2 vs CPU median %.3g worst %.3g; %lld FP8 GEMMs, %lld refused, "
        "%lld of other shapes; %lld expert passes, %lld fell back\n",
        row_scales ? ", row scales" : "", errors[errors.size() / 2], errors.back(),
        (long long)counts.fp8, (long long)counts.fallbacks, (long long)counts.unfit,
        (long long)counts.experts, (long long)counts.expert_fallbacks);
    for (const std::string& shape : counts.refused) std::printf("  refused: %s\n", shape.c_str());
    EXPECT_GT(counts.fp8, 0);
    EXPECT_GT(counts.experts, 0);
    EXPECT_LE(errors[errors.size() / 2], 0.35);
  }
  std::filesystem::remove_all(dir);
}

// Whether this GPU runs the wgmma kernels (compute capability 9.0).
bool wgmma_runs_here() {
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess && cuda::wgmma_kernels_run(device);
}

// FP8 GEMMs writing bf16 rows (LinearRunner::Product::bf16_out, the prefill query's
// CudaOptions::query_bf16): each value the float32 product's rounded to bf16, within one bf16
// step (cuBLASLt's epilogue rounds its float32 sums), whole rows and a tail; a product the
// runner was not offered bf16 for is refused.
TEST_F(CudaFp8Gemm, ProductsWrittenAsBf16AreTheFloatProductsRounded) {
  const int64_t rows = 512, cols = 1024;
  const Fp8Host m = make_fp8(rows, cols, 77, false);
  cuda::DeviceMatrix dm(m.view);
  for (const int64_t n : {int64_t(48), int64_t(301)}) {
    SCOPED_TRACE(std::to_string(n) + " rows");
    std::mt19937 rng{uint32_t(n)};
    std::normal_distribution<float> dist;
    std::vector<float> x(n * cols);
    for (float& v : x) v = dist(rng);
    auto dx = testing::upload(x);
    cuda::DeviceBuffer dy(n * rows * 4), dh(n * rows * 2);
    cuda::LinearRunner runner(cuda::GemmPrecision::fp8, 16);
    runner.run(dm.view(), dx.as<float>(), cols, n, dy.as<float>(), rows, nullptr);
    if (!runner.fp8_writes_bf16(dm.view(), n, dh.get(), nullptr))
      GTEST_SKIP() << "cuBLASLt offers no FP8 GEMM with bf16 output for these shapes";
    const cuda::LinearRunner::Product p{dm.view(), dh.as<float>(), true};
    runner.run_same_input(std::span(&p, 1), dx.as<float>(), n, nullptr);
    AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
    const auto f = testing::download<float>(dy, n * rows);
    const auto h = testing::download<uint16_t>(dh, n * rows);
    int64_t off = 0;
    for (int64_t i = 0; i < n * rows; ++i) {
      const float got = cuda::bits_float(uint32_t(h[i]) << 16);
      const float step = f[i] == 0.0f ? 0.0f : std::ldexp(1.0f, std::ilogb(f[i]) - 7);  // bf16's
      off += std::fabs(got - f[i]) > step;
    }
    EXPECT_EQ(off, 0) << off << " bf16 values more than a step from the float32 product";
    // Not offered: decode-sized rows (the GEMV's) are refused with a message.
    const cuda::LinearRunner::Product few{dm.view(), dh.as<float>(), true};
    EXPECT_THROW(runner.run_same_input(std::span(&few, 1), dx.as<float>(), 4, nullptr),
                 std::logic_error);
  }
}

// The prefill's bf16 intermediates (CudaOptions::query_bf16: wq_b's output; pair_out_bf16: the
// routed experts' pair rows; shared_gate_up_bf16: the shared expert's gate and up rows) keep the
// fp8 prefill as near the CPU's float32 logits as float32 intermediates do: bf16 keeps 8
// significant bits where e4m3's products keep 4. Against each other the two differ more than
// either's own rounding (the H200 measured a median of 0.10 for the query): in a random model a
// small change flips near-tied indexer and expert choices, so the bound is on each one's distance
// from the CPU (a model with the wgmma attention's shapes).
TEST_F(CudaFp8Gemm, Bf16IntermediatesStayAsNearTheCpu) {
  if (!wgmma_runs_here())
    GTEST_SKIP() << "attention_wgmma.cu needs a GPU of compute capability 9.0 (wgmma)";
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_bf16_intermediates";
  testing::write_wgmma_shaped_model(dir, 6);
  const std::vector<int32_t> ids = testing::random_ids(300, 14);
  const auto cpu = Model::load(dir, {Device::cpu, 0});
  const auto want = cpu->new_sequence()->forward(ids, true);
  const int64_t V = cpu->vocab_size();
  double medians[4] = {};
  const char* names[4] = {"float32 intermediates", "bf16 query", "bf16 pair rows",
                          "bf16 shared gate/up"};
  for (int mode = 0; mode < 4; ++mode) {
    cuda::CudaOptions options;
    options.precision = cuda::GemmPrecision::fp8;
    options.query_bf16 = mode == 1;
    options.pair_out_bf16 = mode == 2;
    options.shared_fp8_rows = mode == 3;
    options.shared_gate_up_bf16 = mode == 3;
    const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
    const auto got = gpu->new_sequence()->forward(ids, true);
    std::vector<double> errors;
    for (size_t p = 0; p < ids.size(); ++p)
      errors.push_back(testing::rel_l2(&got[p * V], &want[p * V], V));
    std::sort(errors.begin(), errors.end());
    medians[mode] = errors[errors.size() / 2];
    std::printf("[ fp8 prefill, %s ] rel L2 vs CPU median %.3g worst %.3g\n", names[mode],
                medians[mode], errors.back());
  }
  for (int mode = 1; mode < 4; ++mode)
    EXPECT_LE(medians[mode], 1.25 * medians[0] + 0.02)
        << names[mode] << " moved the logits away from the CPU's";
  std::filesystem::remove_all(dir);
}

// A 300-row fp8 prefill's logits (a whole-rows GEMM and a tail) of a model with the GPU
// attention's shapes (64 heads of 512, wo_a in 8 groups of 128 rows), with a path that writes a
// GEMM's e4m3 rows itself off and on (set(options, on)): bit for bit where the rest of the pass
// is deterministic, bounded tightly either way, and as many FP8 products.
void expect_same_fp8_logits(const char* tag, uint32_t seed, void (*set)(cuda::CudaOptions&, bool)) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("agentrt_cuda_fp8_logits_" + std::to_string(seed));
  testing::write_wgmma_shaped_model(dir, seed);
  const std::vector<int32_t> ids = testing::random_ids(300, seed + 8);
  std::vector<std::vector<float> > logits;
  std::vector<int64_t> fp8_products;
  for (bool on : {false, true}) {
    cuda::CudaOptions options;
    options.precision = cuda::GemmPrecision::fp8;
    set(options, on);
    const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
    logits.push_back(gpu->new_sequence()->forward(ids, true));
    fp8_products.push_back(cuda_fp8_counts(*gpu).fp8);
  }
  EXPECT_GT(fp8_products[0], 0);
  EXPECT_EQ(fp8_products[0], fp8_products[1]) << "a product left the FP8 GEMMs";
  ASSERT_EQ(logits[0].size(), logits[1].size());
  int64_t differ = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) differ += logits[0][i] != logits[1][i];
  const int64_t V = int64_t(logits[0].size() / ids.size());
  double worst = 0;
  for (size_t p = 0; p < ids.size(); ++p)
    worst = std::max(worst, testing::rel_l2(&logits[1][p * V], &logits[0][p * V], V));
  std::printf("[ %s ] %lld of %zu logits differ, worst rel L2 %.3g\n", tag, (long long)differ,
              logits[0].size(), worst);
  EXPECT_LE(worst, 1e-6) << "the logits moved with " << tag;
  std::filesystem::remove_all(dir);
}

// The wgmma attention writing wo_a's e4m3 rows itself (CudaOptions::attention_fp8_out) gives
// the prefill's logits bit for bit: it writes the bytes the GEMM's quantiser would (that
// kernel's own test, CudaKernels.AttentionOnWarpgroupMmaMatchesTheMmaKernel).
TEST_F(CudaFp8Gemm, AttentionWritingWoAsRowsGivesTheSameLogits) {
  if (!wgmma_runs_here())
    GTEST_SKIP() << "attention_wgmma.cu needs a GPU of compute capability 9.0 (wgmma)";
  expect_same_fp8_logits("attention fp8 out", 5,
                         [](cuda::CudaOptions& o, bool on) { o.attention_fp8_out = on; });
}

// The wgmma attention's lean kernel (CudaOptions::attention_lean: fewer instructions a tile, the
// query asked for ahead) gives the prefill's logits bit for bit, on the model's real key lists
// (the sliding window, CSA's chosen entries, HCA's visible ones).
TEST_F(CudaFp8Gemm, LeanAttentionGivesTheSameLogits) {
  if (!wgmma_runs_here())
    GTEST_SKIP() << "attention_wgmma.cu needs a GPU of compute capability 9.0 (wgmma)";
  expect_same_fp8_logits("attention lean", 11,
                         [](cuda::CudaOptions& o, bool on) { o.attention_lean = on; });
}

// The shared expert's SwiGLU writing w2's e4m3 rows itself (CudaOptions::shared_fp8_rows, float32
// gate and up rows) likewise: swiglu_rows.h writes the bytes swiglu() and the quantiser would.
TEST_F(CudaFp8Gemm, SharedExpertWritingW2sRowsGivesTheSameLogits) {
  if (!wgmma_runs_here()) GTEST_SKIP() << "the fp8 prefill's paths need compute capability 9.0";
  expect_same_fp8_logits("shared fp8 rows", 7,
                         [](cuda::CudaOptions& o, bool on) { o.shared_fp8_rows = on; });
}

// ---- MXFP4 experts as e4m3 with 128 x 128 block scales (fp4_e4m3.h, moe_fp8.cu) ----

namespace fe = cuda::fp4_e4m3;

// The stored value of a nibble under a ue8m0 code: e2m1 times 2^(code - 127).
double mxfp4_value(uint32_t nibble, uint8_t code) {
  static constexpr double kMag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  const double mag = std::ldexp(kMag[nibble & 7], int(code) - 127);
  return (nibble & 8) ? -mag : mag;
}

// Every nibble under every code up to 14 binades below the block's largest converts exactly
// (e4m3 code times the block's float32 scale); farther below, within half of e4m3's smallest
// step (2^-10 of the block's scale); a NaN code gives NaN; extreme block codes (0, 254) included.
TEST(CudaFp4E4m3, ConversionIsExactWithinFourteenBinades) {
  for (int emax : {0, 20, 127, 200, 254})
    for (int code = std::max(0, emax - 30); code <= emax; ++code)
      for (uint32_t nibble = 0; nibble < 16; ++nibble) {
        const double want = mxfp4_value(nibble, uint8_t(code)),
                     scale = double(fe::block_scale(emax));
        const uint8_t q = float_to_e4m3(fe::scaled_value(nibble, uint8_t(code), emax));
        const double got = testing::e4m3_value(q) * scale;
        SCOPED_TRACE("emax " + std::to_string(emax) + " code " + std::to_string(code) + " nibble " +
                     std::to_string(nibble));
        if (emax - code <= fe::kExactSpan)
          ASSERT_EQ(got, want);
        else
          ASSERT_LE(std::fabs(got - want), std::ldexp(scale, -10));
        ASSERT_EQ(std::signbit(got), bool(nibble & 8));
      }
  EXPECT_TRUE(
      std::isnan(testing::e4m3_value(float_to_e4m3(fe::scaled_value(3, fe::kNanCode, 127)))));
  // The largest code among finite ones; a block of NaN codes keeps scale 1.
  int emax = fe::kNoCode;
  for (uint8_t c : {uint8_t(130), fe::kNanCode, uint8_t(140), uint8_t(2)})
    emax = fe::max_finite_code(emax, c);
  EXPECT_EQ(emax, 140);
  EXPECT_EQ(fe::block_scale(fe::kNoCode), 1.0f);
  EXPECT_EQ(double(fe::block_scale(0)), std::ldexp(1.0, -133));  // a float subnormal, exact
}

// The grouped kernel's word conversion (e4m3_of_fp4_word, through the host's emulation of the
// byte permute) against a byte per nibble: the table's byte for its magnitude, 0x80 added for
// its sign. Every nibble in every position of the word, under tables of every shift the kernel
// builds (plus NaN bytes), other nibbles random.
TEST(CudaFp4E4m3, WordConversionPicksTheTablesBytes) {
  // The permute's own rules first: plain selection and sign replication.
  EXPECT_EQ(fe::byte_perm(0x44332211u, 0x88776655u, 0x7654u), 0x88776655u);
  EXPECT_EQ(fe::byte_perm(0x44332211u, 0x88776655u, 0x8f0fu), 0x00ff11ffu);
  std::mt19937 rng(3);
  for (int shift = 0; shift < 30; ++shift) {
    uint8_t table[8];
    for (int m = 0; m < 8; ++m)
      table[m] = shift == 29 ? uint8_t(0x7f)
                 : shift == 28
                     ? uint8_t(0)
                     : float_to_e4m3(fe::e2m1_value(uint32_t(m)) * std::ldexp(1.0f, 6 - shift));
    uint32_t lo = 0, hi = 0;
    for (int m = 0; m < 4; ++m) {
      lo |= uint32_t(table[m]) << (8 * m);
      hi |= uint32_t(table[m + 4]) << (8 * m);
    }
    for (int pos = 0; pos < 8; ++pos)
      for (uint32_t nibble = 0; nibble < 16; ++nibble) {
        const uint32_t w = (uint32_t(rng()) & ~(15u << (4 * pos))) | (nibble << (4 * pos));
        const uint2 got = fe::e4m3_of_fp4_word(w, lo, hi);
        for (int j = 0; j < 8; ++j) {
          const uint32_t n = (w >> (4 * j)) & 15;
          const uint32_t want = table[n & 7] | ((n & 8) ? 0x80u : 0u);
          const uint32_t byte = ((j < 4 ? got.x : got.y) >> (8 * (j % 4))) & 0xff;
          ASSERT_EQ(byte, want) << "shift " << shift << " word " << w << " value " << j;
        }
      }
  }
}

// The host's conversion of an MXFP4 matrix (the reference for the kernel): codes and scales.
// whole_rows: each block takes the largest code of its 128 rows' whole width (the grouped
// kernel's row scales, GroupedExpertProduct::row_scales).
void convert_on_host(const QuantizedMatrix& m, int64_t rows, int64_t cols, int64_t ld,
                     std::vector<uint8_t>& q, std::vector<float>& scales, bool whole_rows = false) {
  q.assign(rows * cols, 0);
  scales.assign((rows / 128) * ld, 0.0f);
  const int64_t codes_per_row = cols / 32;
  for (int64_t rb = 0; rb < rows / 128; ++rb)
    for (int64_t cb = 0; cb < cols / 128; ++cb) {
      int emax = fe::kNoCode;
      const int64_t first = whole_rows ? 0 : cb * 4, last = whole_rows ? codes_per_row : first + 4;
      for (int64_t r = rb * 128; r < rb * 128 + 128; ++r)
        for (int64_t i = first; i < last; ++i)
          emax = fe::max_finite_code(emax, m.scales[r * codes_per_row + i]);
      scales[rb * ld + cb] = fe::block_scale(emax);
      for (int64_t r = rb * 128; r < rb * 128 + 128; ++r)
        for (int64_t c = cb * 128; c < cb * 128 + 128; ++c) {
          const uint8_t byte = m.data[r * (cols / 2) + c / 2];
          const uint32_t nibble = (c & 1) ? byte >> 4 : byte & 15;
          q[r * cols + c] =
              float_to_e4m3(fe::scaled_value(nibble, m.scales[r * codes_per_row + c / 32], emax));
        }
    }
}

// The kernel's codes and scales are the host's, bit for bit: rows of very different sizes, a
// block whose codes span more than 14 binades (rounding), a NaN code, padded scale rows.
TEST_F(CudaFp8Gemm, ConvertsMxfp4WeightsAsTheHost) {
  const int64_t rows = 256, cols = 384, ld = aq::weight_scale_ld(cols);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v[r * cols + c] = normal(rng) * std::ldexp(1.0f, int(r % 9));
  QuantizedMatrix m = quantize_mxfp4(v.data(), rows, cols);
  m.scales[5 * (cols / 32) + 1] = uint8_t(m.scales[5 * (cols / 32) + 1] - 20);  // 20 binades down
  m.scales[200 * (cols / 32) + 7] = fe::kNanCode;
  const WeightMatrix w{WeightType::f4_e2m1, rows, cols, m.data.data(), m.scales.data(),
                       ScaleType::e8m0,     0};
  cuda::DeviceMatrix dm(w);
  cuda::DeviceBuffer dq(rows * cols);
  // NaN beforehand: the kernel must zero the scale rows' padding itself.
  auto ds = testing::upload(
      std::vector<float>((rows / 128) * ld, std::numeric_limits<float>::quiet_NaN()));
  cuda::convert_fp4_e4m3(dm.view(), dq.as<uint8_t>(), ds.as<float>(), ld, nullptr);
  const auto q = testing::download<uint8_t>(dq, rows * cols);
  const auto s = testing::download<float>(ds, (rows / 128) * ld);
  std::vector<uint8_t> want_q;
  std::vector<float> want_s;
  convert_on_host(m, rows, cols, ld, want_q, want_s);
  for (int64_t i = 0; i < rows * cols; ++i)
    ASSERT_EQ(int(q[i]), int(want_q[i])) << "row " << i / cols << " column " << i % cols;
  for (size_t i = 0; i < s.size(); ++i)
    ASSERT_EQ(bits_of(s[i]), bits_of(want_s[i])) << "scale " << i;
  EXPECT_EQ(q[200 * cols + 7 * 32] & 0x7f, 0x7f);  // the NaN code's values are NaNs
}

// grouped_fp8_gemm.cu's kernel against the host's float64 product of the same e4m3 values (the
// activations quantised per 128 columns, the FP4 weights converted as convert_on_host does):
// three experts of 16, 144 and 272 padded rows (one, two and three row tiles of 128, the last
// ones part full, one with an empty second half), both products (gate and up stacked from w1 and
// w3; down, whose 384 columns leave the second half of its last column tile empty), a weight block
// whose codes span 20 binades. A wrong swizzle, fragment layout, scale or row gives errors of order
// 1; the tensor cores' FP8 accumulation ~1e-4.
// row_scales: GroupedExpertProduct::row_scales (each activation row under one scale, each weight
// block's scale over its whole rows, no promotion in the kernel). deep: weights whose column
// blocks differ by at most 4x, so every block of a deep product counts (the accumulation over the
// whole depth is what row scales change; every 9th row is checked there, the host's float64
// product being slow); `tolerance` bounds each output's error as a fraction of its row's RMS,
// worst_bound the worst row's relative L2 error, which the test prints.
// Both products also run with bf16 outputs (GroupedExpertProduct::out_bf16), into the slot rows
// and by out_start: each is the float32 output rounded to nearest even (the two kernels differ
// only in their stores), and within the same bound plus 2^-8 of its value.
void check_grouped_products(int64_t hidden, int64_t inter, bool row_scales, bool deep,
                            double tolerance, double worst_bound) {
  SCOPED_TRACE("hidden " + std::to_string(hidden) + " inter " + std::to_string(inter) +
               (row_scales ? ", row scales" : ", block scales"));
  const int64_t E = 3;
  const std::vector<int32_t> active = {2, 0, 1}, pad = {0, 16, 160, 432};
  const int64_t used = 3, slots = pad[used];
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<QuantizedMatrix> stored;
  stored.reserve(3 * E);
  std::vector<std::unique_ptr<cuda::DeviceMatrix> > dev;
  std::vector<WeightMatrix> views(3 * E);
  auto make = [&](int64_t rows, int64_t cols) {
    std::vector<float> v(rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        v[r * cols + c] =
            normal(rng) * std::ldexp(1.0f, int(r % 5) - (deep ? int(c / 128) % 3 : int(c / 128)));
    stored.push_back(quantize_mxfp4(v.data(), rows, cols));
    if (stored.size() == 2) stored.back().scales[3 * (cols / 32) + 2] -= 20;
    const WeightMatrix w{
        WeightType::f4_e2m1, rows, cols, stored.back().data.data(), stored.back().scales.data(),
        ScaleType::e8m0,     0};
    dev.push_back(std::make_unique<cuda::DeviceMatrix>(w));
    return dev.back()->view();
  };
  for (int64_t e = 0; e < E; ++e) {
    views[e] = make(inter, hidden);          // w1
    views[E + e] = make(hidden, inter);      // w2
    views[2 * E + e] = make(inter, hidden);  // w3
  }
  auto d_views = testing::upload(views);
  const WeightMatrix* v = d_views.as<WeightMatrix>();
  const cuda::ExpertsDevice experts{
      v, v + E, v + 2 * E, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0};
  // The host's e4m3 weights and block scales of every matrix.
  std::vector<std::vector<uint8_t> > wq(3 * E);
  std::vector<std::vector<float> > ws(3 * E);
  for (int64_t e = 0; e < E; ++e)
    for (int m = 0; m < 3; ++m) {
      const int64_t rows = m == 1 ? hidden : inter, cols = m == 1 ? inter : hidden;
      convert_on_host(stored[3 * e + m], rows, cols, aq::weight_scale_ld(cols), wq[m * E + e],
                      ws[m * E + e], row_scales);
    }

  auto run = [&](bool down) {
    const int64_t n = down ? hidden : 2 * inter, k = down ? inter : hidden, kbs = k / 128;
    // Activations: each slot row quantised per 128 columns, scales in each expert's
    // [column block][row] layout.
    std::vector<uint8_t> x(slots * k);
    std::vector<float> xs(slots * kbs), row(k), scales(kbs);
    for (int64_t a = 0; a < used; ++a)
      for (int64_t r = 0; r < pad[a + 1] - pad[a]; ++r) {
        for (int64_t c = 0; c < k; ++c) row[c] = normal(rng) * float(1 + (r + c / 128) % 3);
        if (row_scales)
          testing::quantise_row_e4m3_uniform(row.data(), k, x.data() + (pad[a] + r) * k,
                                             scales.data());
        else
          testing::quantise_row_e4m3(row.data(), k, x.data() + (pad[a] + r) * k, scales.data());
        for (int64_t kb = 0; kb < kbs; ++kb)
          xs[pad[a] * kbs + kb * (pad[a + 1] - pad[a]) + r] = scales[kb];
      }
    std::vector<int32_t> ints(pad.begin(), pad.end());
    ints.resize(2 * (used + 1));
    const int64_t tiles = cuda::grouped_expert_tiles(pad.data(), used, n, ints.data() + used + 1);
    EXPECT_EQ(tiles, (1 + 2 + 3) * ((n + 255) / 256));
    ints.insert(ints.end(), active.begin(), active.end());
    auto d_x = testing::upload(x);
    auto d_xs = testing::upload(xs);
    auto d_ints = testing::upload(ints);
    auto d_out = testing::upload(std::vector<float>(slots * n, std::nanf("")));
    cuda::GroupedExpertProduct p;
    p.x = d_x.as<uint8_t>();
    p.x_scales = d_xs.as<float>();
    p.pad = d_ints.as<int32_t>();
    p.tile_start = p.pad + used + 1;
    p.active = p.pad + 2 * (used + 1);
    p.experts = experts;
    p.down = down;
    p.used = used;
    p.n = n;
    p.k = k;
    p.tiles = tiles;
    p.out = d_out.as<float>();
    p.ld_out = n;
    cuda::DeviceBuffer scratch(cuda::grouped_expert_scratch_ints(used, n, k) * 4);
    p.block_max = scratch.as<int32_t>();
    p.row_scales = row_scales;
    cuda::grouped_expert_product(p, 5, nullptr);  // 5 blocks: each takes several tiles
    const auto out = testing::download<float>(d_out, slots * n);
    // The same product as bf16 bits.
    constexpr uint16_t kUnwritten = 0x7fc0;  // a bf16 NaN
    auto d_bf16 = testing::upload(std::vector<uint16_t>(slots * n, kUnwritten));
    cuda::GroupedExpertProduct as_bf16 = p;
    as_bf16.out = nullptr;
    as_bf16.out_bf16 = d_bf16.as<__nv_bfloat16>();
    cuda::grouped_expert_product(as_bf16, 5, nullptr);
    const auto out_bf16 = testing::download<uint16_t>(d_bf16, slots * n);
    {
      int64_t differ = 0, first = -1;
      for (int64_t i = 0; i < slots * n; ++i)
        if (out_bf16[i] != float_to_bf16(out[i])) {
          if (first < 0) first = i;
          ++differ;
        }
      EXPECT_EQ(differ, 0) << (down ? "down" : "gate/up")
                           << ": bf16 outputs other than the float32 ones rounded: first at row "
                           << first / n << " column " << first % n;
    }
    int64_t bad = 0, first_bad = -1, bad_bf16 = 0;
    double worst = 0;
    double value[256];  // each e4m3 code's
    for (int b = 0; b < 256; ++b) value[b] = testing::e4m3_value(uint8_t(b));
    for (int64_t a = 0; a < used; ++a)
      for (int64_t r = pad[a]; r < pad[a + 1]; r += deep ? 9 : 1) {
        std::vector<double> want(n, 0.0);
        double norm = 0, err = 0;
        for (int64_t c = 0; c < n; ++c) {
          const int m = down ? 1 : (c < inter ? 0 : 2);
          const int64_t wr = down ? c : c % inter;
          const auto& q = wq[m * E + active[a]];
          const auto& s = ws[m * E + active[a]];
          for (int64_t kb = 0; kb < kbs; ++kb) {
            double part = 0;
            for (int64_t i = kb * 128; i < kb * 128 + 128; ++i)
              part += value[x[r * k + i]] * value[q[wr * k + i]];
            want[c] += part * double(xs[pad[a] * kbs + kb * (pad[a + 1] - pad[a]) + r - pad[a]]) *
                       double(s[(wr / 128) * aq::weight_scale_ld(k) + kb]);
          }
          norm += want[c] * want[c];
        }
        const double rms = std::sqrt(norm / double(n));
        for (int64_t c = 0; c < n; ++c) {
          const double d = double(out[r * n + c]) - want[c];
          err += d * d;
          if (!(std::fabs(d) <= tolerance * rms)) {
            if (first_bad < 0) first_bad = r * n + c;
            ++bad;
          }
          uint32_t bits = uint32_t(out_bf16[r * n + c]) << 16;
          float got;
          std::memcpy(&got, &bits, 4);
          bad_bf16 += !(std::fabs(double(got) - want[c]) <=
                        tolerance * rms + std::ldexp(std::fabs(want[c]), -8));
        }
        worst = std::max(worst, std::sqrt(err / norm));
      }
    EXPECT_EQ(bad, 0) << (down ? "down" : "gate/up") << ": first wrong at row "
                      << first_bad / std::max<int64_t>(n, 1) << " column " << first_bad % n
                      << " of " << slots << " x " << n;
    EXPECT_LT(worst, worst_bound) << (down ? "down" : "gate/up");
    EXPECT_EQ(bad_bf16, 0) << (down ? "down" : "gate/up") << " as bf16: outputs past the bound";
    std::printf("[ grouped %s k %lld, %s ] worst row's relative L2 error %.3g\n",
                down ? "down" : "gate/up", static_cast<long long>(k),
                row_scales ? "row scales" : "block scales", worst);

    // With out_start (the down product's pair rows): each expert's first rows (10, 130 and 260
    // of its 16, 144 and 272 padded ones) into consecutive rows with the bits of its slot rows,
    // float32 and bf16 alike, every row written and no padding row: the last expert's would
    // land in the 16 rows past the last one, which keep their NaNs.
    const std::vector<int32_t> starts = {0, 10, 140, 400};
    const int64_t direct_rows = starts[used] + 16;
    auto d_starts = testing::upload(starts);
    auto d_direct = testing::upload(std::vector<float>(direct_rows * n, std::nanf("")));
    auto d_direct_bf16 = testing::upload(std::vector<uint16_t>(direct_rows * n, kUnwritten));
    p.out = d_direct.as<float>();
    p.out_start = d_starts.as<int32_t>();
    cuda::grouped_expert_product(p, 5, nullptr);
    as_bf16.out_bf16 = d_direct_bf16.as<__nv_bfloat16>();
    as_bf16.out_start = p.out_start;
    cuda::grouped_expert_product(as_bf16, 5, nullptr);
    const auto direct = testing::download<float>(d_direct, direct_rows * n);
    const auto direct_bf16 = testing::download<uint16_t>(d_direct_bf16, direct_rows * n);
    int64_t differ = 0, differ_bf16 = 0, written_past = 0;
    for (int64_t a = 0; a < used; ++a)
      for (int64_t r = 0; r < starts[a + 1] - starts[a]; ++r) {
        differ += std::memcmp(direct.data() + (starts[a] + r) * n, out.data() + (pad[a] + r) * n,
                              size_t(n) * 4) != 0;
        differ_bf16 += std::memcmp(direct_bf16.data() + (starts[a] + r) * n,
                                   out_bf16.data() + (pad[a] + r) * n, size_t(n) * 2) != 0;
      }
    for (int64_t i = starts[used] * n; i < direct_rows * n; ++i)
      written_past += !std::isnan(direct[i]) + (direct_bf16[i] != kUnwritten);
    EXPECT_EQ(differ, 0) << (down ? "down" : "gate/up") << ": rows by out_start differ";
    EXPECT_EQ(differ_bf16, 0) << (down ? "down" : "gate/up") << ": bf16 rows by out_start differ";
    EXPECT_EQ(written_past, 0) << (down ? "down" : "gate/up") << ": padding rows stored";
  };
  run(false);
  run(true);
}

TEST_F(CudaFp8Gemm, GroupedExpertProductMatchesTheHost) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  check_grouped_products(384, 256, false, false, 1e-2, kAccumulation);
}

// Row scales: the same shapes and bounds, then V4-Flash's depths (hidden 4,096 for gate/up,
// inter 2,048 for down), where the whole depth adds up in the tensor cores' accumulators; the
// printed errors are what row scales cost in accumulation.
TEST_F(CudaFp8Gemm, GroupedExpertProductWithRowScalesMatchesTheHost) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  check_grouped_products(384, 256, true, false, 1e-2, kAccumulation);
  check_grouped_products(4096, 2048, false, true, 1e-2, kAccumulation);
  check_grouped_products(4096, 2048, true, true, 5e-2, 2e-2);
}

// The launcher takes exactly one of out and out_bf16, for either product, with or without rows
// by out_start, and refuses neither or both. It checks before touching the device (and a product
// of no tiles launches nothing), so this runs without a GPU.
TEST(CudaGroupedExpertProduct, RefusesOutputsItDoesNotWrite) {
  float out = 0.0f;
  __nv_bfloat16 out_bf16[2] = {};
  const int32_t starts[2] = {0, 0};
  cuda::GroupedExpertProduct p;
  p.n = 256;
  p.k = 128;
  for (const bool down : {false, true})
    for (const int32_t* out_start : {static_cast<const int32_t*>(nullptr), starts}) {
      SCOPED_TRACE(std::string(down ? "down" : "gate/up") + (out_start ? ", out_start" : ""));
      p.down = down;
      p.out_start = out_start;
      p.out = nullptr;
      p.out_bf16 = out_bf16;
      EXPECT_NO_THROW(cuda::grouped_expert_product(p, 1, nullptr));
      p.out = &out;
      EXPECT_THROW(cuda::grouped_expert_product(p, 1, nullptr), std::invalid_argument);
      p.out_bf16 = nullptr;
      EXPECT_NO_THROW(cuda::grouped_expert_product(p, 1, nullptr));
      p.out = nullptr;
      EXPECT_THROW(cuda::grouped_expert_product(p, 1, nullptr), std::invalid_argument);
    }
}

#endif  // AGENTRT_HAVE_CUDA

}  // namespace
}  // namespace agentrt::engine
