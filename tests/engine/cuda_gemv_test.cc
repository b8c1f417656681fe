// The GPU weight product (engine/cuda/device_matrix.h) against the CPU engine's plain matmul
// reference, for every stored dtype, decode-sized token counts, slices and odd shapes. Skips,
// saying why, where the CUDA backend is not built or no GPU is present.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

#include "engine/matmul.h"
#include "engine/quantize.h"
#include "engine/rmsnorm.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/f16_fragments.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/linear.h"
#include "engine/cuda/tensor_map.h"
#include "engine/cuda/warp_rows_layout.h"
#endif

namespace agentrt::engine {
namespace {

#ifndef AGENTRT_HAVE_CUDA
TEST(CudaGemv, MatchesTheCpuReference) {
  GTEST_SKIP() << "CUDA backend not built (no nvcc at configure time)";
}
#else

struct HostMatrix {
  std::vector<uint8_t> data, scales;
  WeightMatrix view;
};

uint16_t to_half_bits(float f, bool bf16) {
  if (bf16) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
  }
  return _cvtss_sh(f, 0);
}

HostMatrix make(WeightType type, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<float> v(rows * cols);
  for (float& x : v) x = dist(rng);
  HostMatrix m;
  switch (type) {
    case WeightType::f32:
      m.data.resize(v.size() * 4);
      std::memcpy(m.data.data(), v.data(), m.data.size());
      break;
    case WeightType::bf16:
    case WeightType::f16:
      m.data.resize(v.size() * 2);
      for (size_t i = 0; i < v.size(); ++i) {
        const uint16_t h = to_half_bits(v[i], type == WeightType::bf16);
        std::memcpy(&m.data[2 * i], &h, 2);
      }
      break;
    case WeightType::f8_e4m3: {
      QuantizedMatrix q = quantize_fp8_blocks(v.data(), rows, cols);
      m.data = std::move(q.data);
      m.scales = std::move(q.scales);
      break;
    }
    case WeightType::f4_e2m1: {
      QuantizedMatrix q = quantize_mxfp4(v.data(), rows, cols);
      m.data = std::move(q.data);
      m.scales = std::move(q.scales);
      break;
    }
  }
  m.view = {type,
            rows,
            cols,
            m.data.data(),
            m.scales.empty() ? nullptr : m.scales.data(),
            ScaleType::e8m0,
            0};
  return m;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

class CudaGemv : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  }

  // Runs the fast and the reference kernel and the CPU reference; returns the worst error.
  void check(const WeightMatrix& host, int64_t n, const std::string& what,
             bool tensor_cores = true) {
    std::mt19937 rng(n * 131 + host.rows);
    std::normal_distribution<float> dist;
    std::vector<float> x(n * host.cols), cpu(n * host.rows), fast(n * host.rows),
        slow(n * host.rows);
    for (float& v : x) v = dist(rng);
    matmul_reference(x.data(), n, host, cpu.data());
    cuda::DeviceMatrix dm(host);
    float* dx = cuda::device_floats(x.size());
    float* dy = cuda::device_floats(fast.size());
    cuda::copy_to_device(dx, x.data(), x.size() * 4);
    cuda::gemv(dm.view(), dx, n, dy, nullptr, tensor_cores);
    cuda::copy_to_host(fast.data(), dy, fast.size() * 4);
    cuda::gemv_reference(dm.view(), dx, n, dy);
    cuda::copy_to_host(slow.data(), dy, slow.size() * 4);
    cuda::free_device(dx);
    cuda::free_device(dy);
    EXPECT_LE(rel_l2(fast, cpu), 1e-5) << what << " n=" << n;
    EXPECT_LE(rel_l2(slow, cpu), 1e-6) << what << " n=" << n << " (reference kernel)";
  }
};

TEST_F(CudaGemv, EveryDtypeMatchesTheCpuReference) {
  const std::pair<WeightType, const char*> types[] = {{WeightType::f32, "f32"},
                                                      {WeightType::bf16, "bf16"},
                                                      {WeightType::f16, "f16"},
                                                      {WeightType::f8_e4m3, "fp8"},
                                                      {WeightType::f4_e2m1, "fp4"}};
  for (auto [type, name] : types)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 512}, {129, 2048}, {7, 96}}) {
      const HostMatrix m = make(type, rows, cols, rows + cols);
      for (int64_t n : {1, 3, 8, 11})
        check(m.view, n,
              std::string(name) + " " + std::to_string(rows) + "x" + std::to_string(cols));
    }
}

TEST_F(CudaGemv, UnalignedRowsTakeTheScalarPath) {
  for (auto type : {WeightType::f32, WeightType::bf16, WeightType::f8_e4m3}) {
    const HostMatrix m = make(type, 33, 100, 5);  // rows of 100 values: not 16-byte multiples
    check(m.view, 2, "odd columns");
  }
}

TEST_F(CudaGemv, RowSlicesKeepTheirScales) {
  const HostMatrix fp8 = make(WeightType::f8_e4m3, 400, 256, 6);
  check(fp8.view.slice_rows(130, 200), 2, "fp8 slice");
  const HostMatrix fp4 = make(WeightType::f4_e2m1, 64, 256, 7);
  check(fp4.view.slice_rows(10, 20), 3, "fp4 slice");
}

// Tall matrices take several rows per lane group (and a partial last group).
TEST_F(CudaGemv, TallMatricesShareActivationLoadsAcrossRows) {
  for (auto type : {WeightType::bf16, WeightType::f8_e4m3, WeightType::f4_e2m1}) {
    const HostMatrix m = make(type, 16386, 256, 9);
    for (int64_t n : {1, 2, 4, 8}) check(m.view, n, "tall");
  }
}

// One activation row and a matrix of 2 MB or more: streamed through shared memory
// (gemv_stream.cu). Rows of 1, 4 and 8 KB (one warp a row, or two and four column slices),
// enough tiles that each block's ring wraps, and a row slice with its scale offset.
TEST_F(CudaGemv, LargeMatricesStreamedThroughSharedMemory) {
  struct Case {
    WeightType type;
    int64_t rows, cols;
  };
  // FP8 with columns a multiple of 1,024 takes the tensor cores (1024x4096, 4096x8192, the
  // slice); 2048x1536 the CUDA-core consumers.
  for (const Case c : {Case{WeightType::bf16, 4096, 512}, Case{WeightType::f8_e4m3, 1024, 4096},
                       Case{WeightType::bf16, 16384, 512}, Case{WeightType::f8_e4m3, 4096, 8192},
                       Case{WeightType::f8_e4m3, 2048, 1536}}) {
    const HostMatrix m = make(c.type, c.rows, c.cols, 31);
    cuda::DeviceMatrix dm(m.view);
    EXPECT_TRUE(cuda::gemv_stream_fits(dm.view(), nullptr, 0, 0, true));  // no activations yet
    const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " streamed";
    check(m.view, 1, what);
    // Told to keep float32 (GemmPrecision::f32), FP8 takes the CUDA-core consumers.
    if (c.type == WeightType::f8_e4m3) check(m.view, 1, what + " in float32", false);
  }
  const HostMatrix fp8 = make(WeightType::f8_e4m3, 4096, 1024, 32);
  check(fp8.view.slice_rows(64, 3072), 1, "fp8 slice streamed");
}

// Rows wider than 2 KB are split over warps (bf16 rows of 4,096 columns, as the head's: 4 rows
// of 4 slices a tile); their slices add up in slice order, so repeated products are bitwise
// equal.
TEST_F(CudaGemv, SplitRowsSumInTheSameOrderEveryTime) {
  const HostMatrix m = make(WeightType::bf16, 4096, 4096, 33);
  check(m.view, 1, "bf16 4096x4096 streamed, split rows");
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> x(m.view.cols), first(m.view.rows), again(m.view.rows);
  for (float& v : x) v = dist(rng);
  cuda::DeviceMatrix dm(m.view);
  float* dx = cuda::device_floats(x.size());
  float* dy = cuda::device_floats(first.size());
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  cuda::gemv(dm.view(), dx, 1, dy);
  cuda::copy_to_host(first.data(), dy, first.size() * 4);
  for (int rep = 0; rep < 30; ++rep) {
    cuda::gemv(dm.view(), dx, 1, dy);
    cuda::copy_to_host(again.data(), dy, again.size() * 4);
    ASSERT_EQ(std::memcmp(first.data(), again.data(), first.size() * 4), 0) << "repeat " << rep;
  }
  cuda::free_device(dx);
  cuda::free_device(dy);
}

TEST_F(CudaGemv, GroupedRowsReadTheirOwnColumns) {
  const int64_t groups = 4, rows = 96, cols = 128, n = 3, stride = groups * cols + 32;
  const HostMatrix m = make(WeightType::f8_e4m3, groups * rows, cols, 11);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * stride), got(n * groups * rows), want(n * groups * rows);
  for (float& v : x) v = dist(rng);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < rows; ++r)
        want[t * groups * rows + g * rows + r] =
            dot_weight_row(m.view, g * rows + r, x.data() + t * stride + g * cols);
  cuda::DeviceMatrix dm(m.view);
  float* dx = cuda::device_floats(x.size());
  float* dy = cuda::device_floats(got.size());
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  cuda::gemv_grouped(dm.view(), groups, dx, stride, n, dy, groups * rows);
  cuda::copy_to_host(got.data(), dy, got.size() * 4);
  cuda::free_device(dx);
  cuda::free_device(dy);
  EXPECT_LE(rel_l2(got, want), 1e-5);
  EXPECT_THROW(cuda::gemv_grouped(dm.view(), 5, dx, stride, n, dy, 0), std::invalid_argument);
}

// FP8 products of one activation row in one streamed launch: three matrices of 2,048 columns
// (tasks of 16 rows from each in turn) against the CPU, with stages by bulk and by tensor
// copies; a set with a bf16 member is declined.
TEST_F(CudaGemv, SameInputSetsStreamedOnTensorCores) {
  const int64_t cols = 2048;
  const HostMatrix a = make(WeightType::f8_e4m3, 1024, cols, 41),
                   b = make(WeightType::f8_e4m3, 512, cols, 42),
                   c = make(WeightType::f8_e4m3, 64, cols, 43),
                   d = make(WeightType::bf16, 1024, cols, 44);
  cuda::DeviceMatrix da(a.view), db(b.view), dc(c.view), dd(d.view);
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> x(cols);
  for (float& v : x) v = dist(rng);
  float* dx = cuda::device_floats(cols);
  cuda::copy_to_device(dx, x.data(), cols * 4);
  std::vector<float*> ys;
  std::vector<cuda::GemvProduct> set;
  for (const cuda::DeviceMatrix* m : {&da, &db, &dc}) {
    ys.push_back(cuda::device_floats(m->view().rows));
    set.push_back({m->view(), ys.back(), m->view().rows});
  }
  for (const bool map : {false, true}) {
    ASSERT_TRUE(cuda::gemv_stream_set(set, dx, cols, 1, nullptr, cuda::GemvMode(true, map)));
    for (size_t i = 0; i < set.size(); ++i) {
      const WeightMatrix& host = i == 0 ? a.view : i == 1 ? b.view : c.view;
      std::vector<float> got(host.rows), want(host.rows);
      cuda::copy_to_host(got.data(), ys[i], got.size() * 4);
      matmul_reference(x.data(), 1, host, want.data());
      EXPECT_LE(rel_l2(got, want), 1e-5) << "matrix " << i << (map ? " by tensor copies" : "");
    }
  }
  for (float* y : ys) cuda::free_device(y);
  set.push_back({dd.view(), nullptr, 1024});
  EXPECT_FALSE(cuda::gemv_stream_set(set, dx, cols, 1, nullptr));
  cuda::free_device(dx);
}

// The grouped product streamed: 4 groups of 1,024 rows (4 MB of FP8), tiles of 16 rows, so some
// blocks' tile ranges cross a group boundary and stage the next group's activations.
TEST_F(CudaGemv, GroupedRowsStreamedRestageTheirColumns) {
  const int64_t groups = 4, rows = 1024, cols = 1024, stride = groups * cols;
  const HostMatrix m = make(WeightType::f8_e4m3, groups * rows, cols, 12);
  std::mt19937 rng(4);
  std::normal_distribution<float> dist;
  std::vector<float> x(stride), got(groups * rows), want(groups * rows);
  for (float& v : x) v = dist(rng);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = 0; r < rows; ++r)
      want[g * rows + r] = dot_weight_row(m.view, g * rows + r, x.data() + g * cols);
  cuda::DeviceMatrix dm(m.view);
  float* dx = cuda::device_floats(x.size());
  float* dy = cuda::device_floats(got.size());
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  EXPECT_TRUE(cuda::gemv_stream_fits(dm.view(), dx, rows, cols, true));
  cuda::gemv_grouped(dm.view(), groups, dx, stride, 1, dy, groups * rows);
  cuda::copy_to_host(got.data(), dy, got.size() * 4);
  cuda::free_device(dx);
  cuda::free_device(dy);
  EXPECT_LE(rel_l2(got, want), 1e-5);
}

// The FP8 matrices of the tensor-core stream tests: stages of 16 rows x 2,048 columns (1024 x
// 4096, 4096 x 8192) and of 32 rows x 1,024 (4096 x 1024, a row slice of it, 4 groups of 1,024
// rows each reading its own columns).
struct StreamCase {
  int64_t rows, cols, groups;
  bool slice;
  WeightMatrix view(const HostMatrix& m) const {
    return slice ? m.view.slice_rows(64, 3072) : m.view;
  }
  std::string name(const WeightMatrix& host) const {
    return std::to_string(host.rows) + "x" + std::to_string(host.cols) + (slice ? " slice" : "") +
           (groups > 1 ? " in " + std::to_string(groups) + " groups" : "");
  }
};
constexpr StreamCase kStreamCases[] = {{1024, 4096, 1, false},
                                       {4096, 8192, 1, false},
                                       {4096, 1024, 1, false},
                                       {4096, 1024, 1, true},
                                       {4096, 1024, 4, false}};

// One activation row times a case's matrix through gemv (or gemv_grouped for its groups).
void one_row(const StreamCase& c, const cuda::DeviceMatrix& dm, const float* dx, float* dy,
             cuda::GemvMode mode) {
  const WeightMatrix& w = dm.view();
  if (c.groups > 1)
    cuda::gemv_grouped(w, c.groups, dx, w.cols * c.groups, 1, dy, w.rows, nullptr, mode);
  else
    cuda::gemv(w, dx, 1, dy, nullptr, mode);
}

// One random activation row (from `seed`) for a case's matrix, the CPU's products of it, and x
// and y on the device; run() multiplies through one_row and brings y back.
struct OneRowRun {
  std::vector<float> want;
  float* dx = nullptr;
  float* dy = nullptr;
  OneRowRun(const StreamCase& c, const WeightMatrix& host, unsigned seed) : want(host.rows) {
    const int64_t x_cols = host.cols * c.groups, group_rows = host.rows / c.groups;
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    std::vector<float> x(x_cols);
    for (float& v : x) v = dist(rng);
    for (int64_t r = 0; r < host.rows; ++r)
      want[r] = dot_weight_row(host, r, x.data() + (r / group_rows) * host.cols);
    dx = cuda::device_floats(x_cols);
    dy = cuda::device_floats(host.rows);
    cuda::copy_to_device(dx, x.data(), x_cols * 4);
  }
  ~OneRowRun() {
    cuda::free_device(dx);
    cuda::free_device(dy);
  }
  OneRowRun(const OneRowRun&) = delete;
  OneRowRun& operator=(const OneRowRun&) = delete;
  std::vector<float> run(const StreamCase& c, const cuda::DeviceMatrix& dm,
                         cuda::GemvMode mode) const {
    std::vector<float> got(want.size());
    cuda::zero_device(dy, int64_t(got.size()) * 4);
    one_row(c, dm, dx, dy, mode);
    cuda::copy_to_host(got.data(), dy, int64_t(got.size()) * 4);
    return got;
  }
};

// The FP8 tensor-core products' variants (GemvMode) add the same numbers in the same order, so
// their results are bitwise equal: stages filled by tensor copies (swizzled in shared memory,
// tensor_map.h) against padded rows of bulk copies, and the warps' partial sums added up after
// one barrier per 3 or 4 tasks against one per task, for each of kStreamCases.
// SameInputSetsStreamedOnTensorCores takes a set both ways.
TEST_F(CudaGemv, TensorCoreVariantsAgreeBitwise) {
  for (const StreamCase& c : kStreamCases) {
    const HostMatrix m = make(WeightType::f8_e4m3, c.rows, c.cols, 51);
    const WeightMatrix host = c.view(m);
    const std::string what = c.name(host);
    cuda::DeviceMatrix dm(host);
    const OneRowRun one(c, host, 7);
    const int64_t group_rows = host.rows / c.groups;
    std::vector<float> first;
    for (const cuda::GemvMode mode :
         {cuda::GemvMode(true, false, 1), cuda::GemvMode(true, true, 1),
          cuda::GemvMode(true, false, 4), cuda::GemvMode(true, true, 3)}) {
      const std::string how = what + (mode.tensor_map ? ", tensor copies" : ", bulk copies") +
                              ", sums every " + std::to_string(mode.sum_group) + " tasks";
      EXPECT_TRUE(cuda::gemv_stream_fits(dm.view(), one.dx, c.groups > 1 ? group_rows : 0,
                                         c.groups > 1 ? host.cols : 0, mode))
          << how;
      const std::vector<float> got = one.run(c, dm, mode);
      EXPECT_LE(rel_l2(got, one.want), 1e-5) << how;
      if (mode.tensor_map || mode.sum_group > 1)
        EXPECT_EQ(std::memcmp(got.data(), first.data(), host.rows * 4), 0) << how;
      else
        first = got;
    }
  }
}

// GemvMode::early_stages (1 and 2 stages copied before the kernel before has finished) and
// in_flight_bytes (one, two and three stages asked for and not yet landed) only hold a
// producer's copies back: the same products, bit for bit, as the whole ring asked for at once,
// on the tensor-core stream kernel, the CUDA-core one and the warp-rows kernel (wq_b's shape:
// rows copied in pairs).
TEST_F(CudaGemv, HoldingCopiesBackChangesNoBits) {
  std::vector<StreamCase> cases(std::begin(kStreamCases), std::end(kStreamCases));
  cases.push_back({32768, 1024, 1, false});  // wq_b: 16 tiles a block, so warp rows take it
  struct Kernel {
    const char* name;
    bool cores;
    int64_t warp_rows;
  };
  struct Hold {
    int early;
    int64_t in_flight;
  };
  for (const StreamCase& c : cases) {
    const HostMatrix m = make(WeightType::f8_e4m3, c.rows, c.cols, 52);
    const WeightMatrix host = c.view(m);
    cuda::DeviceMatrix dm(host);
    const OneRowRun one(c, host, 9);
    for (const Kernel& k : {Kernel{"tensor-core stream", true, 0},
                            Kernel{"CUDA-core stream", false, 0}, Kernel{"warp rows", true, 1}}) {
      std::vector<float> base;
      for (const Hold& h :
           {Hold{0, 0}, Hold{1, 0}, Hold{2, 0}, Hold{0, 1}, Hold{0, 40000}, Hold{0, 80000}}) {
        const std::string how = c.name(host) + ", " + k.name + ", early stages " +
                                std::to_string(h.early) + ", " + std::to_string(h.in_flight) +
                                " bytes in flight";
        cuda::GemvMode mode(k.cores, false, 1, true, k.warp_rows, 2, 1, h.early);
        mode.in_flight_bytes = h.in_flight;
        const std::vector<float> got = one.run(c, dm, mode);
        EXPECT_LE(rel_l2(got, one.want), 1e-5) << how;
        if (base.empty())
          base = got;
        else
          EXPECT_EQ(std::memcmp(got.data(), base.data(), host.rows * 4), 0) << how;
      }
    }
  }
}

// The tensor-copied stages' layout replayed on the host (no GPU needed): the copy engine puts
// box element (byte b of 128-column chunk c, row r) at linear offset ((c * rows + r) * 128 + b)
// with the 128-byte swizzle (address bits 4-6 XOR bits 7-9, within 1,024-byte aligned atoms);
// gemv_stream_mma_kernel<MT, true> reads row r's word at columns c0 + 16 k + 4 t4 at
// (c0 / 128) * rows * 128 + r * 128 + 4 t4 + stage_unit((c0 % 128) / 16 + k, r % 8) * 16. For
// every warp, lane, tile and column step both must agree, and a warp's 32 reads must fall on 32
// distinct banks.
TEST(CudaTensorMapLayout, KernelReadsWhereTheCopyEnginePutsEachRow) {
  auto placed = [](int64_t rows, int64_t row, int64_t col) {
    const int64_t linear = ((col / 128) * rows + row) * 128 + col % 128;
    return linear ^ (((linear >> 7) & 7) << 4);
  };
  for (const auto& [tiles, stage_cols] : {std::pair<int, int64_t>{1, 2048}, {2, 1024}}) {
    const int rows = 16 * tiles;
    const int64_t warp_cols = stage_cols / 16;
    for (int warp = 0; warp < 16; ++warp) {
      const int64_t c0 = warp * warp_cols;
      for (int tile = 0; tile < tiles; ++tile)
        for (int64_t k = 0; k < warp_cols / 16; ++k)
          for (const int half : {0, 8}) {  // the fragment's rows quad_row and quad_row + 8
            std::vector<bool> bank(32, false);
            for (int lane = 0; lane < 32; ++lane) {
              const int quad_row = lane / 4, t4 = lane % 4, row = tile * 16 + quad_row + half;
              const int64_t got = (c0 / 128) * (rows * 128) + quad_row * 128 + 4 * t4 +
                                  tile * 16 * 128 + half * 128 +
                                  cuda::stage_unit(int((c0 % 128) / 16 + k), quad_row) * 16;
              ASSERT_EQ(got, placed(rows, row, c0 + 16 * k + 4 * t4))
                  << "stage " << rows << "x" << stage_cols << " warp " << warp << " lane " << lane
                  << " k " << k;
              const int b = int(got / 4 % 32);
              EXPECT_FALSE(bank[b]) << "bank conflict: warp " << warp << " k " << k;
              bank[b] = true;
            }
          }
    }
  }
}

// Products of the same n random activation rows: x on the host and the device, one output a
// matrix; check() compares them with the CPU.
struct SameInputRun {
  std::vector<float> x;
  float* dx = nullptr;
  std::vector<float*> ys;
  std::vector<cuda::GemvProduct> set;
  int64_t n;
  SameInputRun(std::initializer_list<const cuda::DeviceMatrix*> matrices, int64_t n_rows,
               int64_t cols)
      : x(n_rows * cols), n(n_rows) {
    std::mt19937 rng(n);
    std::normal_distribution<float> dist;
    for (float& v : x) v = dist(rng);
    dx = cuda::device_floats(x.size());
    cuda::copy_to_device(dx, x.data(), x.size() * 4);
    for (const cuda::DeviceMatrix* m : matrices) {
      ys.push_back(cuda::device_floats(n * m->view().rows));
      set.push_back({m->view(), ys.back(), m->view().rows});
    }
  }
  ~SameInputRun() {
    cuda::free_device(dx);
    for (float* y : ys) cuda::free_device(y);
  }
  void check(size_t i, const WeightMatrix& host) const {
    std::vector<float> got(n * host.rows), want(n * host.rows);
    cuda::copy_to_host(got.data(), ys[i], got.size() * 4);
    matmul_reference(x.data(), n, host, want.data());
    EXPECT_LE(rel_l2(got, want), 1e-5) << "matrix " << i << ", " << n << " rows";
  }
};

TEST_F(CudaGemv, ProductsOfTheSameInputInOneLaunch) {
  // Three stored types and row counts beside each other (block ranges of different sizes),
  // for 1, 3 and 11 activation rows (the 8 + 2 + 1 launches).
  const int64_t cols = 512;
  const HostMatrix a = make(WeightType::f8_e4m3, 300, cols, 21),
                   b = make(WeightType::bf16, 64, cols, 22),
                   c = make(WeightType::f4_e2m1, 1030, cols, 23);
  cuda::DeviceMatrix da(a.view), db(b.view), dc(c.view);
  for (int64_t n : {1, 3, 11}) {
    const SameInputRun run({&da, &db, &dc}, n, cols);
    cuda::gemv_same_input(run.set, run.dx, cols, n);
    for (size_t i = 0; i < run.set.size(); ++i)
      run.check(i, i == 0 ? a.view : i == 1 ? b.view : c.view);
  }
  const HostMatrix other = make(WeightType::bf16, 8, 256, 24);
  cuda::DeviceMatrix dother(other.view);
  const std::vector<cuda::GemvProduct> mixed = {{da.view(), nullptr, 300},
                                                {dother.view(), nullptr, 8}};
  EXPECT_THROW(cuda::gemv_same_input(mixed, nullptr, cols, 1), std::invalid_argument);
}

// LinearRunner::run_grouped for prefill-sized row counts (one strided batched GEMM over the
// groups, or per group for float32): rows of x wider than the groups' columns, y's rows wider than
// the groups' outputs, in every precision.
TEST_F(CudaGemv, GroupedRowsOfManyTokensReadTheirOwnColumns) {
  const int64_t groups = 4, rows = 96, cols = 128, n = 70, stride = groups * cols + 32,
                y_stride = groups * rows + 8;
  const HostMatrix m = make(WeightType::f8_e4m3, groups * rows, cols, 12);
  std::mt19937 rng(4);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * stride), want(n * y_stride, 0.0f);
  for (float& v : x) v = dist(rng);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < rows; ++r)
        want[t * y_stride + g * rows + r] =
            dot_weight_row(m.view, g * rows + r, x.data() + t * stride + g * cols);
  cuda::DeviceMatrix dm(m.view);
  float* dx = cuda::device_floats(x.size());
  float* dy = cuda::device_floats(want.size());
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  for (const auto& [precision, tolerance] :
       {std::pair{cuda::GemmPrecision::bf16x2, 1e-5}, std::pair{cuda::GemmPrecision::bf16, 1e-2},
        std::pair{cuda::GemmPrecision::f32, 1e-6}}) {
    std::vector<float> got(want.size(), 0.0f);
    cuda::copy_to_device(dy, got.data(), got.size() * 4);  // the padding columns stay zero
    cuda::LinearRunner runner(precision, 16);
    runner.run_grouped(dm.view(), groups, dx, stride, n, dy, y_stride, nullptr);
    cuda::copy_to_host(got.data(), dy, got.size() * 4);
    EXPECT_LE(rel_l2(got, want), tolerance) << int(precision);
  }
  cuda::free_device(dx);
  cuda::free_device(dy);
}

// LinearRunner::run_same_input for prefill-sized row counts: x's rows converted once for every
// product (bf16x2: K-stacked, [W W] times [hi lo]), against the CPU in every precision, with a
// bf16 matrix among FP8 ones (which takes separate planes and two GEMMs for all of them).
TEST_F(CudaGemv, ProductsOfTheSameInputForManyTokens) {
  const int64_t cols = 256, n = 70;
  const HostMatrix a = make(WeightType::f8_e4m3, 160, cols, 31),
                   b = make(WeightType::f8_e4m3, 48, cols, 32),
                   c = make(WeightType::bf16, 80, cols, 33);
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * cols);
  for (float& v : x) v = dist(rng);
  float* dx = cuda::device_floats(x.size());
  cuda::copy_to_device(dx, x.data(), x.size() * 4);
  for (const bool with_bf16 : {false, true}) {
    std::vector<const HostMatrix*> set = {&a, &b};
    if (with_bf16) set.push_back(&c);
    std::vector<std::unique_ptr<cuda::DeviceMatrix> > dms;
    for (const HostMatrix* h : set) dms.push_back(std::make_unique<cuda::DeviceMatrix>(h->view));
    for (const auto& [precision, tolerance] :
         {std::pair{cuda::GemmPrecision::bf16x2, 1e-5}, std::pair{cuda::GemmPrecision::bf16, 1e-2},
          std::pair{cuda::GemmPrecision::f32, 1e-6}}) {
      std::vector<float*> ys;
      std::vector<cuda::LinearRunner::Product> products;
      for (size_t i = 0; i < set.size(); ++i) {
        ys.push_back(cuda::device_floats(n * set[i]->view.rows));
        products.push_back({dms[i]->view(), ys.back()});
      }
      cuda::LinearRunner runner(precision, 16);
      runner.run_same_input(products, dx, n, nullptr);
      for (size_t i = 0; i < set.size(); ++i) {
        const WeightMatrix& w = set[i]->view;
        std::vector<float> got(n * w.rows), want(n * w.rows);
        cuda::copy_to_host(got.data(), ys[i], got.size() * 4);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t r = 0; r < w.rows; ++r)
            want[t * w.rows + r] = dot_weight_row(w, r, x.data() + t * cols);
        EXPECT_LE(rel_l2(got, want), tolerance)
            << "product " << i << " precision " << int(precision) << " with bf16 " << with_bf16;
        cuda::free_device(ys[i]);
      }
    }
  }
  cuda::free_device(dx);
}

// Prefill's FP8 dequantisation (linear.cu's chunk kernel) against the host's decode_weight_row:
// the same floats bitwise, and their bf16 rounding; ue8m0 and float32 block scales, a row slice.
TEST_F(CudaGemv, Fp8DequantizedAsTheHostDecodes) {
  HostMatrix m = make(WeightType::f8_e4m3, 300, 384, 9);
  std::vector<float> f32_scales(m.scales.size());
  for (size_t i = 0; i < m.scales.size(); ++i)
    f32_scales[i] = std::ldexp(1.0f, int(m.scales[i]) - 127);
  WeightMatrix f32_view = m.view;
  f32_view.scale = f32_scales.data();
  f32_view.scale_type = ScaleType::f32;
  for (const auto& [host, what] : {std::pair{m.view, "ue8m0"}, std::pair{f32_view, "f32 scales"},
                                   std::pair{m.view.slice_rows(130, 150), "slice"}}) {
    cuda::DeviceMatrix dm(host);
    const int64_t count = host.rows * host.cols;
    float* d = cuda::device_floats(count);
    std::vector<float> got(count), want(count);
    std::vector<uint16_t> got_bf16(count);
    for (int64_t r = 0; r < host.rows; ++r) decode_weight_row(host, r, want.data() + r * host.cols);
    cuda::dequantize(dm.view(), d, false, nullptr);
    cuda::copy_to_host(got.data(), d, count * 4);
    cuda::dequantize(dm.view(), d, true, nullptr);
    cuda::copy_to_host(got_bf16.data(), d, count * 2);
    // Twice: rows of 2 * cols holding each row's bf16 values twice (the K-stacked GEMM's [W W]).
    std::vector<uint16_t> twice(2 * count);
    cuda::dequantize(dm.view(), d, true, nullptr, true);
    cuda::copy_to_host(twice.data(), d, count * 4);
    cuda::free_device(d);
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(got[i], want[i]) << what << " value " << i;
      ASSERT_EQ(got_bf16[i], to_half_bits(want[i], true)) << what << " value " << i;
      const int64_t r = i / host.cols, c = i % host.cols;
      ASSERT_EQ(twice[r * 2 * host.cols + c], got_bf16[i]) << what << " twice, value " << i;
      ASSERT_EQ(twice[r * 2 * host.cols + host.cols + c], got_bf16[i])
          << what << " twice, value " << i;
    }
  }
}

// Several activation rows through the FP8 tensor-core kernel (gemv_stream_rows: 8 rows a launch,
// or 4 where 8 rows' fragments leave no room for a ring; rows past the last are zeros): against
// the CPU, and each row bitwise as the same row alone (the mma's columns are independent, the
// sums added in the same order). Strided rows of x and y, each of kStreamCases (the 8,192
// columns of wo_b take 4 rows a launch).
TEST_F(CudaGemv, Fp8RowsOfABatchShareEachDecodedWeight) {
  for (const StreamCase& c : kStreamCases) {
    const HostMatrix m = make(WeightType::f8_e4m3, c.rows, c.cols, 61);
    const WeightMatrix host = c.view(m);
    cuda::DeviceMatrix dm(host);
    const int64_t x_cols = host.cols * c.groups, x_stride = x_cols + 64, y_stride = host.rows + 32,
                  group_rows = host.rows / c.groups;
    for (const int64_t n : {2, 3, 5, 8, 11, 16}) {
      const std::string what = c.name(host) + ", " + std::to_string(n) + " rows";
      std::mt19937 rng(n);
      std::normal_distribution<float> dist;
      std::vector<float> x(n * x_stride, 0.0f), want(n * y_stride, 0.0f);
      for (float& v : x) v = dist(rng);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < host.rows; ++r)
          want[t * y_stride + r] =
              dot_weight_row(host, r, x.data() + t * x_stride + (r / group_rows) * host.cols);
      float* dx = cuda::device_floats(x.size());
      float* dy = cuda::device_floats(want.size());
      float* dy1 = cuda::device_floats(host.rows);
      cuda::copy_to_device(dx, x.data(), x.size() * 4);
      cuda::zero_device(dy, want.size() * 4);
      ASSERT_TRUE(cuda::gemv_stream_rows(dm.view(), dx, x_stride, n, dy, y_stride,
                                         c.groups > 1 ? group_rows : 0,
                                         c.groups > 1 ? host.cols : 0))
          << what;
      std::vector<float> got(want.size()), alone(host.rows);
      cuda::copy_to_host(got.data(), dy, got.size() * 4);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = host.rows; r < y_stride; ++r)
          ASSERT_EQ(got[t * y_stride + r], 0.0f) << what << ": wrote past row " << t << "'s end";
      EXPECT_LE(rel_l2(got, want), 1e-5) << what;
      for (int64_t t = 0; t < n; t += 3) {
        if (c.groups > 1)
          cuda::gemv_grouped(dm.view(), c.groups, dx + t * x_stride, x_stride, 1, dy1, host.rows);
        else
          cuda::gemv(dm.view(), dx + t * x_stride, 1, dy1);
        cuda::copy_to_host(alone.data(), dy1, host.rows * 4);
        EXPECT_EQ(std::memcmp(alone.data(), got.data() + t * y_stride, host.rows * 4), 0)
            << what << ": row " << t << " differs from the same row alone";
      }
      // gemv_strided and gemv_grouped take this path themselves.
      cuda::zero_device(dy, want.size() * 4);
      if (c.groups > 1)
        cuda::gemv_grouped(dm.view(), c.groups, dx, x_stride, n, dy, y_stride);
      else
        cuda::gemv_strided(dm.view(), dx, x_stride, n, dy, y_stride);
      std::vector<float> again(want.size());
      cuda::copy_to_host(again.data(), dy, again.size() * 4);
      EXPECT_EQ(std::memcmp(again.data(), got.data(), got.size() * 4), 0) << what;
      cuda::free_device(dx);
      cuda::free_device(dy);
      cuda::free_device(dy1);
    }
  }
  // A matrix under 2 MB is not this path's.
  const HostMatrix small = make(WeightType::f8_e4m3, 512, 1024, 62);
  cuda::DeviceMatrix ds(small.view);
  float* dx = cuda::device_floats(8 * 1024);
  EXPECT_FALSE(cuda::gemv_stream_rows(ds.view(), dx, 1024, 8, nullptr, 512, 0, 0));
  cuda::free_device(dx);
}

// A set of FP8 products of the same rows (the products of x, the shared expert's gate and up)
// for several rows: the same kernel, 8 (or 4) rows a launch, against the CPU.
TEST_F(CudaGemv, SameInputSetsOfSeveralRowsStreamedOnTensorCores) {
  const int64_t cols = 4096;
  const HostMatrix a = make(WeightType::f8_e4m3, 1024, cols, 71),
                   b = make(WeightType::f8_e4m3, 512, cols, 72);
  cuda::DeviceMatrix da(a.view), db(b.view);
  for (const int64_t n : {3, 8, 13}) {
    const SameInputRun run({&da, &db}, n, cols);
    ASSERT_TRUE(cuda::gemv_stream_set(run.set, run.dx, cols, n, nullptr)) << n << " rows";
    for (size_t i = 0; i < run.set.size(); ++i) run.check(i, i == 0 ? a.view : b.view);
  }
}

// A bf16 matrix of 32 MB or more (the head) times 2-16 rows: one cuBLAS GEMM with x's high and
// low bf16 parts stacked (LinearRunner::run_stacked), eagerly and replayed from a captured graph
// (as a decode step runs it), against the CPU; strided rows of x and y.
TEST_F(CudaGemv, LargeBf16MatricesOfAFewRowsInOneGemm) {
  const int64_t rows = 8192, cols = 2048, x_stride = cols + 16, y_stride = rows + 8;
  const HostMatrix m = make(WeightType::bf16, rows, cols, 81);
  EXPECT_TRUE(cuda::stacked_gemm_fits(m.view, 2, cuda::GemmPrecision::bf16x2));
  EXPECT_FALSE(cuda::stacked_gemm_fits(m.view, 1, cuda::GemmPrecision::bf16x2));
  EXPECT_FALSE(cuda::stacked_gemm_fits(m.view, 2, cuda::GemmPrecision::f32));
  EXPECT_FALSE(cuda::stacked_gemm_fits(m.view.slice_rows(0, 4096), 2, cuda::GemmPrecision::bf16));
  cuda::DeviceMatrix dm(m.view);
  cuda::LinearRunner runner(cuda::GemmPrecision::bf16x2, 16);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  for (const int64_t n : {2, 5, 16}) {
    std::mt19937 rng(n);
    std::normal_distribution<float> dist;
    std::vector<float> x(n * x_stride), want(n * y_stride, 0.0f);
    for (float& v : x) v = dist(rng);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < rows; ++r)
        want[t * y_stride + r] = dot_weight_row(m.view, r, x.data() + t * x_stride);
    float* dx = cuda::device_floats(x.size());
    float* dy = cuda::device_floats(want.size());
    cuda::copy_to_device(dx, x.data(), x.size() * 4);
    for (const bool graph : {false, true}) {
      cuda::zero_device(dy, want.size() * 4);
      if (graph) {
        cudaGraph_t g = nullptr;
        cudaGraphExec_t exec = nullptr;
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        runner.run(dm.view(), dx, x_stride, n, dy, y_stride, stream);
        ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess) << n << " rows";
        ASSERT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
        ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(g);
      } else {
        runner.run(dm.view(), dx, x_stride, n, dy, y_stride, stream);
      }
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      std::vector<float> got(want.size());
      cuda::copy_to_host(got.data(), dy, got.size() * 4);
      EXPECT_LE(rel_l2(got, want), 1e-5) << n << " rows" << (graph ? ", graph" : "");
    }
    cuda::free_device(dx);
    cuda::free_device(dy);
  }
  cudaStreamDestroy(stream);
}

// gemv_warp_rows (each warp multiplying whole 16-row tiles) against the CPU for kStreamCases and
// wq_b's 32,768 x 1,024 (16 tiles a block over 6 warps), directly and through gemv / gemv_grouped
// with GemvMode::warp_rows_bytes, stages of 1,024 and of 2,048 columns (where the width allows),
// one or two ring slots per warp; through gemv, the same values where it takes this kernel.
TEST_F(CudaGemv, WholeTilesPerWarpMatchTheCpu) {
  std::vector<StreamCase> cases(std::begin(kStreamCases), std::end(kStreamCases));
  cases.push_back({32768, 1024, 1, false});
  const cuda::GemvMode mode(true, false, 1, true, 1);
  for (const StreamCase& c : cases) {
    const HostMatrix m = make(WeightType::f8_e4m3, c.rows, c.cols, 81);
    const WeightMatrix host = c.view(m);
    const std::string what = c.name(host);
    cuda::DeviceMatrix dm(host);
    const int64_t x_cols = host.cols * c.groups, group_rows = host.rows / c.groups;
    std::mt19937 rng(9);
    std::normal_distribution<float> dist;
    std::vector<float> x(x_cols), want(host.rows), got(host.rows), again(host.rows);
    for (float& v : x) v = dist(rng);
    for (int64_t r = 0; r < host.rows; ++r)
      want[r] = dot_weight_row(host, r, x.data() + (r / group_rows) * host.cols);
    float* dx = cuda::device_floats(x_cols);
    float* dy = cuda::device_floats(host.rows);
    cuda::copy_to_device(dx, x.data(), x_cols * 4);
    const cuda::GemvProduct one{dm.view(), dy, host.rows};
    for (const int64_t stage_cols : {1024, 2048})
      for (const int depth : {1, 2})
        for (const int splits : {1, 8}) {
          const std::string how = what + ", stages of " + std::to_string(stage_cols) + ", depth " +
                                  std::to_string(depth) + ", splits up to " +
                                  std::to_string(splits);
          auto run = [&](std::vector<float>& out, int copy_rows) {
            cuda::zero_device(dy, host.rows * 4);
            ASSERT_TRUE(cuda::gemv_warp_rows(std::span<const cuda::GemvProduct>(&one, 1), dx,
                                             c.groups > 1 ? group_rows : 0,
                                             c.groups > 1 ? host.cols : 0, nullptr, stage_cols,
                                             depth, splits, 0, nullptr, 0.0f, 0, copy_rows))
                << how;
            cuda::copy_to_host(out.data(), dy, host.rows * 4);
          };
          run(got, 2);
          EXPECT_LE(rel_l2(got, want), 1e-5) << how;
          if (splits > 1) {  // the splits add up in a fixed order: the same bits again
            std::vector<float> twice(host.rows);
            run(twice, 2);
            EXPECT_EQ(std::memcmp(twice.data(), got.data(), host.rows * 4), 0) << how;
          }
          // Rows copied 8 at a time (where rows are as wide as a stage): the same products from
          // other places in shared memory, so the same bits.
          std::vector<float> eight(host.rows);
          run(eight, 8);
          EXPECT_EQ(std::memcmp(eight.data(), got.data(), host.rows * 4), 0)
              << how << ", 8 rows a copy";
        }
    cuda::zero_device(dy, host.rows * 4);
    one_row(c, dm, dx, dy, mode);
    cuda::copy_to_host(again.data(), dy, host.rows * 4);
    EXPECT_LE(rel_l2(again, want), 1e-5) << what << " through gemv";
    // wq_b's shape (16 tiles a block on up to 256 SMs) is the one gemv gives this kernel.
    if (c.rows == 32768) {
      EXPECT_EQ(std::memcmp(again.data(), got.data(), host.rows * 4), 0) << what;
    }
    cuda::free_device(dx);
    cuda::free_device(dy);
  }
}

// Same-input sets (row counts of 64 to 1,024, so tiles of different matrices share blocks), and
// the shapes the kernel refuses: widths not a multiple of 1,024, bf16, rows not a multiple of 16.
TEST_F(CudaGemv, WholeTilesPerWarpForSetsAndRefusals) {
  const int64_t cols = 2048;
  const HostMatrix a = make(WeightType::f8_e4m3, 1024, cols, 82),
                   b = make(WeightType::f8_e4m3, 512, cols, 83),
                   c = make(WeightType::f8_e4m3, 64, cols, 84);
  cuda::DeviceMatrix da(a.view), db(b.view), dc(c.view);
  for (const int64_t stage_cols : {1024, 2048}) {
    const SameInputRun run({&da, &db, &dc}, 1, cols);
    ASSERT_TRUE(cuda::gemv_warp_rows(run.set, run.dx, 0, 0, nullptr, stage_cols));
    for (size_t i = 0; i < run.set.size(); ++i)
      run.check(i, i == 0 ? a.view : i == 1 ? b.view : c.view);
  }
  const SameInputRun through({&da, &db, &dc}, 1, cols);
  ASSERT_TRUE(cuda::gemv_stream_set(through.set, through.dx, cols, 1, nullptr,
                                    cuda::GemvMode(true, false, 1, true, 1)));
  for (size_t i = 0; i < through.set.size(); ++i)
    through.check(i, i == 0 ? a.view : i == 1 ? b.view : c.view);

  const HostMatrix narrow = make(WeightType::f8_e4m3, 1024, 1536, 85),
                   half = make(WeightType::bf16, 1024, 2048, 86),
                   odd = make(WeightType::f8_e4m3, 1032, 1024, 87);
  for (const HostMatrix* h : {&narrow, &half, &odd}) {
    cuda::DeviceMatrix d(h->view);
    const SameInputRun r({&d}, 1, h->view.cols);
    EXPECT_FALSE(cuda::gemv_warp_rows(r.set, r.dx, 0, 0)) << h->view.rows << "x" << h->view.cols;
  }
}

// decode's query norm folded into wq_b's launch (gemv_warp_rows_normed, CudaOptions::
// fused_q_norm) against rms_norm_rows then the same product: within float32 rounding (only the
// order of the sum of squares differs), and against the CPU's rms_norm then products. wq_b's and
// the indexer's wq_b's shapes; the grouped form is refused.
TEST_F(CudaGemv, WarpRowsNormedAsRmsNormThenProduct) {
  const int64_t cols = 1024;
  const HostMatrix a = make(WeightType::f8_e4m3, 32768, cols, 91),
                   b = make(WeightType::f8_e4m3, 8192, cols, 92);
  cuda::DeviceMatrix da(a.view), db(b.view);
  std::mt19937 rng(4);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> weight(cols);
  for (float& v : weight) v = 1.0f + 0.1f * dist(rng);
  float* dw = cuda::device_floats(cols);
  cuda::copy_to_device(dw, weight.data(), cols * 4);
  const float eps = 1e-6f;
  const cuda::GemvMode mode(true, false, 1, true, 16 << 20);
  const SameInputRun fused({&da, &db}, 1, cols), apart({&da, &db}, 1, cols);
  ASSERT_TRUE(cuda::gemv_warp_rows_normed(fused.set, fused.dx, dw, eps, nullptr, mode));
  cuda::rms_norm_rows(apart.dx, dw, 1, cols, eps, apart.dx, nullptr);
  ASSERT_TRUE(cuda::gemv_stream_set(apart.set, apart.dx, cols, 1, nullptr, mode));
  std::vector<float> normed(cols);
  rms_norm(fused.x.data(), weight.data(), cols, eps, normed.data());
  for (size_t i = 0; i < 2; ++i) {
    const WeightMatrix& host = i == 0 ? a.view : b.view;
    std::vector<float> got(host.rows), ref(host.rows), want(host.rows);
    cuda::copy_to_host(got.data(), fused.ys[i], host.rows * 4);
    cuda::copy_to_host(ref.data(), apart.ys[i], host.rows * 4);
    matmul_reference(normed.data(), 1, host, want.data());
    EXPECT_LE(rel_l2(got, ref), 1e-6) << "matrix " << i << " against the separate norm";
    EXPECT_LE(rel_l2(got, want), 1e-5) << "matrix " << i << " against the CPU";
  }
  // The x staged for block-diagonal groups (wo_a) takes no norm.
  const cuda::GemvProduct one{da.view(), fused.ys[0], 32768};
  EXPECT_FALSE(cuda::gemv_warp_rows(std::span<const cuda::GemvProduct>(&one, 1), fused.dx, 4096,
                                    256, nullptr, 1024, 2, 1, 0, dw, eps));
  cuda::free_device(dw);
}

// Every e4m3 byte but NaN (each row a different rotation of them, unit block scales) through the
// FP8 tensor-core products: the streamed kernel (one, 4 and 8 activation rows) and the warp-rows
// kernel, against the CPU. Random weights quantised from a normal distribution leave the
// subnormals and the largest exponents rare.
TEST_F(CudaGemv, Fp8ProductsDecodeEveryByte) {
  auto every_byte = [](int64_t rows, int64_t cols) {
    HostMatrix m;
    m.data.resize(rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const uint8_t b = uint8_t((c + 37 * r) % 256);
        m.data[r * cols + c] = (b & 0x7f) == 0x7f ? uint8_t(b - 1) : b;  // no NaN
      }
    m.scales.assign(((rows + 127) / 128) * ((cols + 127) / 128), 127);  // ue8m0 1.0
    m.view = {WeightType::f8_e4m3, rows, cols, m.data.data(), m.scales.data(), ScaleType::e8m0, 0};
    return m;
  };
  const HostMatrix streamed = every_byte(1024, 4096);
  for (int64_t n : {1, 4, 8}) check(streamed.view, n, "every byte, streamed");
  const HostMatrix tall = every_byte(8192, 1024);
  cuda::DeviceMatrix dt(tall.view);
  const SameInputRun run({&dt}, 1, 1024);
  ASSERT_TRUE(cuda::gemv_stream_set(run.set, run.dx, 1024, 1, nullptr,
                                    cuda::GemvMode(true, false, 1, true, 16 << 20)));
  run.check(0, tall.view);
}

// gemv_warp_rows' layout replayed on the host (no GPU needed): over a 64-column group's four
// k-steps the mma k slots read every column once; the staged activations' units hold, for each
// lane position and part, the columns its A words hold in the k slots b0 and b1 feed; and the
// stage schedule gives every (tile, column slice) of a block once, each ring slot to one warp in
// order, each warp its tiles' slices in order.
// Rows as wide as a stage, staged 2 or 8 rows a bulk copy (warp_rows_layout.h): the fragment
// rows take every stage row once, the copies fit the stage's bytes, and each 16-byte load's
// phase (8 lanes: fragment rows g and g + 1 of one half, g even, 16 bytes t of a 64-byte
// group) hits 32 distinct banks.
TEST(CudaWarpRowsLayout, RowsCopiedTogetherKeepTheBanksApart) {
  namespace wr = cuda::warp_rows;
  for (const int copy_rows : {2, 8})
    for (const int64_t stage_cols : {int64_t(1024), int64_t(2048)}) {
      const std::string what =
          std::to_string(copy_rows) + " rows a copy, stages of " + std::to_string(stage_cols);
      std::vector<int> seen(wr::kTileRows, 0);
      for (int r = 0; r < wr::kTileRows; ++r) ++seen[size_t(wr::staged_row(r, copy_rows))];
      for (int r = 0; r < wr::kTileRows; ++r) EXPECT_EQ(seen[size_t(r)], 1) << what;
      EXPECT_LE(wr::kTileRows / copy_rows * wr::copy_stride(copy_rows, stage_cols),
                wr::stage_bytes(stage_cols))
          << what;
      for (int half = 0; half < 2; ++half)
        for (int g = 0; g < 8; g += 2)
          for (int64_t group = 0; group < 3; ++group) {
            std::vector<int> banks(32, 0);
            for (int q = 0; q < 2; ++q)
              for (int t = 0; t < 4; ++t) {
                const int64_t at =
                    wr::staged_row_offset(wr::staged_row(g + q + 8 * half, copy_rows), copy_rows,
                                          stage_cols) +
                    group * wr::kGroupCols + 16 * t;
                for (int b = 0; b < 4; ++b) ++banks[size_t((at / 4 + b) % 32)];
              }
            for (int b = 0; b < 32; ++b)
              EXPECT_EQ(banks[size_t(b)], 1) << what << ", rows " << g << ", bank " << b;
          }
    }
  // 2 rows a copy is pair_stride's layout.
  EXPECT_EQ(wr::copy_stride(2, 1024), wr::pair_stride(1024));
  EXPECT_EQ(wr::staged_row_offset(wr::staged_row(3, 2), 2, 1024), 3 * wr::pair_stride(1024));
  EXPECT_EQ(wr::staged_row_offset(wr::staged_row(11, 2), 2, 1024),
            3 * wr::pair_stride(1024) + 1024);
}

TEST(CudaWarpRowsLayout, FragmentsAndScheduleCoverEveryStageOnce) {
  namespace wr = cuda::warp_rows;
  std::vector<int> seen(64, 0);
  for (int j = 0; j < 4; ++j)
    for (int kk = 0; kk < 16; ++kk) ++seen[wr::k_slot_column(kk, j)];
  for (int c = 0; c < 64; ++c) EXPECT_EQ(seen[c], 1) << "column " << c;
  for (int64_t g = 0; g < 3; ++g)
    for (int j = 0; j < 4; ++j)
      for (int t = 0; t < 4; ++t)
        for (int p = 0; p < 2; ++p) {
          // b0 = (x[c], x[c + 1]) feeds slots 2t, 2t + 1; b1 = (x[c + 2], x[c + 3]) 2t + 8, 2t + 9.
          const int64_t c = g * 64 + wr::k_slot_column(2 * t, j);
          EXPECT_EQ(wr::k_slot_column(2 * t + 1, j), c % 64 + 1);
          EXPECT_EQ(wr::k_slot_column(2 * t + 8, j), c % 64 + 2);
          EXPECT_EQ(wr::k_slot_column(2 * t + 9, j), c % 64 + 3);
          for (int kk = 0; kk < 16; ++kk) {  // each lane's word in f16_fragments.h's order
            EXPECT_EQ(wr::k_slot_column(kk, j) % 4, cuda::f16_fragments::k_column(kk) % 4);
            EXPECT_EQ(wr::k_slot_column(kk, j) / 16, cuda::f16_fragments::k_column(kk) / 4);
          }
          const wr::XPlace at = wr::x_place(c, p);
          EXPECT_EQ(at.unit, wr::x_unit(g, j / 2, p, t));
          EXPECT_EQ(at.sub, j % 2);
        }
  struct Case {
    int64_t tasks, grid, col_stages;
    int max_slots;
  };
  for (const Case& c : {Case{2048, 132, 1, 13}, Case{256, 132, 8, 12}, Case{512, 132, 4, 11},
                        Case{3, 1, 2, 16}, Case{100, 7, 3, 5}, Case{9, 2, 1, 2}})
    for (const int depth : {1, 2}) {
      const wr::Shape shape = wr::shape_for(c.tasks, c.grid, c.max_slots, depth);
      ASSERT_GT(shape.warps, 0);
      ASSERT_EQ(shape.slots % shape.warps, 0);
      ASSERT_LE(shape.slots, c.max_slots);
      for (int64_t block = 0; block < c.grid; ++block) {
        const int64_t nt = (block + 1) * c.tasks / c.grid - block * c.tasks / c.grid;
        std::vector<int> covered(nt * c.col_stages, 0);
        std::vector<int> slot_warp(shape.slots, -1);
        std::vector<uint32_t> slot_uses(shape.slots, 0);
        const int64_t warp_stages = (nt + shape.warps - 1) / shape.warps * c.col_stages;
        for (int64_t jj = 0; jj < warp_stages; ++jj)
          for (int i = 0; i < shape.warps; ++i) {
            const wr::Stage s = wr::stage_of(jj, i, shape.warps, shape.slots, c.col_stages);
            if (s.task >= nt) continue;
            ASSERT_EQ(s.task % shape.warps, i);
            ASSERT_EQ(s.slice, jj % c.col_stages);
            ++covered[s.task * c.col_stages + s.slice];
            if (slot_warp[s.slot] < 0) slot_warp[s.slot] = i;
            ASSERT_EQ(slot_warp[s.slot], i) << "slot " << s.slot << " shared by warps";
            ASSERT_EQ(s.parity, slot_uses[s.slot]++ & 1u) << "slot " << s.slot << " out of order";
          }
        for (int v : covered) ASSERT_EQ(v, 1);
      }
    }
}

// f16_fragments.h's activation scaling: each 128-column block's largest magnitude lands in
// [2^14, 2^15) (f16 high parts stay finite, low parts of the larger values normal), exactly as a
// power of two; zero and tiny blocks take the largest exponent, non-finite ones none. And the
// k order: lane position t's word holds columns 4t .. 4t + 3, low pair first.
TEST(CudaF16Fragments, BlockExponentKeepsPartsInF16Range) {
  namespace ff = cuda::f16_fragments;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int p = -149; p <= 127; ++p)
    for (int i = 0; i < 4; ++i) {
      const float amax = std::ldexp(i == 0 ? 1.0f : mantissa(rng), p);
      const int e = ff::block_exponent(amax);
      ASSERT_GE(e, -126) << amax;
      ASSERT_LE(e, 126) << amax;
      EXPECT_EQ(ff::power_of_two(e), std::ldexp(1.0f, e));
      EXPECT_EQ(ff::power_of_two(-e), std::ldexp(1.0f, -e));
      const double scaled = double(amax) * std::ldexp(1.0, e);
      if (p >= -112) {
        EXPECT_GE(scaled, 16384.0) << amax;
        EXPECT_LT(scaled, 32768.0) << amax;
      } else {
        EXPECT_EQ(e, 126) << amax;
      }
    }
  EXPECT_EQ(ff::block_exponent(0.0f), 126);
  EXPECT_EQ(ff::block_exponent(std::numeric_limits<float>::max()), -113);
  EXPECT_EQ(ff::block_exponent(std::numeric_limits<float>::infinity()), 0);
  EXPECT_EQ(ff::block_exponent(std::numeric_limits<float>::quiet_NaN()), 0);
  std::vector<int> seen(16, 0);
  for (int kk = 0; kk < 16; ++kk) ++seen[ff::k_column(kk)];
  for (int c = 0; c < 16; ++c) EXPECT_EQ(seen[c], 1) << "column " << c;
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(ff::k_column(2 * t), 4 * t);
    EXPECT_EQ(ff::k_column(2 * t + 1), 4 * t + 1);
    EXPECT_EQ(ff::k_column(2 * t + 8), 4 * t + 2);
    EXPECT_EQ(ff::k_column(2 * t + 9), 4 * t + 3);
  }
}

// e4m3 as OCP FP8 defines it (bias 7, subnormals, no infinities); the NaN codes are not used.
float e4m3_value(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  const float mag = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
  return (b & 0x80) ? -mag : mag;
}
float f16_rounded(float v) { return _cvtsh_ss(_cvtss_sh(v, 0)); }
uint32_t f16_pair(float lo, float hi) {
  return uint32_t(_cvtss_sh(lo, 0)) | (uint32_t(_cvtss_sh(hi, 0)) << 16);
}
float f16_half(uint32_t pair, int which) { return _cvtsh_ss(uint16_t(pair >> (16 * which))); }

// One 16-row tile of gemv_warp_rows.cu replayed on the host, step by step as the kernel takes it:
// x staged as stage_x stages it (each 128-column block scaled by 2^block_exponent, split into f16
// high and low parts, put at warp_rows::x_place), each lane's A fragments built from its 16-byte
// loads of rows g and g + 8 (bytes 0, 1 the low pair, 2, 3 the high pair), its B fragments read
// from the staged units, the mma's sums by PTX's m16n8k16 fragment layout, then the weights'
// block scale times the block's 2^-e. The 16 outputs match the float64 products to float32
// accuracy although the activations span 60 binades.
TEST(CudaF16Fragments, WarpRowsTileReplayMatchesTheProduct) {
  namespace wr = cuda::warp_rows;
  namespace ff = cuda::f16_fragments;
  constexpr int64_t kCols = 256;  // two 128-column blocks
  std::mt19937 rng(11);
  std::vector<uint8_t> w(16 * kCols);
  for (uint8_t& b : w) do
      b = uint8_t(rng());
    while ((b & 0x7f) == 0x7f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> binade(-20, 20);
  std::vector<float> x(kCols);
  for (int64_t c = 0; c < kCols; ++c)
    x[c] = std::ldexp(normal(rng), binade(rng) + (c >= 128 ? 20 : 0));
  const float weight_scale[2] = {0.125f, 4.0f};  // the FP8 block scale of each 128 columns

  // stage_x: units[2 * unit + sub] = (b0, b1) of one part; unscale per block.
  std::vector<std::array<uint32_t, 2> > units(kCols / 2);
  float unscale[kCols / 128];
  float amax_of[kCols / 128];
  for (int64_t blk = 0; blk < kCols / 128; ++blk) {
    float amax = 0.0f;
    for (int64_t c = blk * 128; c < blk * 128 + 128; ++c) amax = std::max(amax, std::fabs(x[c]));
    amax_of[blk] = amax;
    const int e = ff::block_exponent(amax);
    const float up = ff::power_of_two(e);
    unscale[blk] = ff::power_of_two(-e);
    for (int64_t c = blk * 128; c < blk * 128 + 128; c += 4) {
      float hi[4], lo[4];
      for (int i = 0; i < 4; ++i) {
        hi[i] = f16_rounded(x[c + i] * up);
        lo[i] = f16_rounded(x[c + i] * up - hi[i]);
      }
      const wr::XPlace ph = wr::x_place(c, 0), pl = wr::x_place(c, 1);
      units[2 * ph.unit + ph.sub] = {f16_pair(hi[0], hi[1]), f16_pair(hi[2], hi[3])};
      units[2 * pl.unit + pl.sub] = {f16_pair(lo[0], lo[1]), f16_pair(lo[2], lo[3])};
    }
  }

  float total[16][8] = {};  // D of the tile: rows x the mma's 8 columns
  for (int b = 0; b < int(kCols / 128); ++b) {
    float part[4][16][8] = {};  // per k-step j
    for (int half = 0; half < 2; ++half) {
      const int64_t group = 2 * b + half;
      for (int j = 0; j < 4; ++j) {
        float a[16][16] = {}, bm[16][8] = {};
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          auto word = [&](int row) {  // word j of the lane's 16 bytes of `row` in this group
            uint32_t v;
            std::memcpy(&v, &w[row * kCols + group * wr::kGroupCols + 16 * t + 4 * j], 4);
            return v;
          };
          auto pair = [](uint32_t v, int first) {  // bytes first, first + 1 as two values
            return std::array<float, 2>{e4m3_value(uint8_t(v >> (8 * first))),
                                        e4m3_value(uint8_t(v >> (8 * first + 8)))};
          };
          const uint32_t wa = word(g), wb = word(g + 8);
          // a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, +9], a3 = A[g+8][2t+8, +9]
          const std::array<float, 2> a0 = pair(wa, 0), a1 = pair(wb, 0), a2 = pair(wa, 2),
                                     a3 = pair(wb, 2);
          for (int e = 0; e < 2; ++e) {
            a[g][2 * t + e] = a0[e];
            a[g + 8][2 * t + e] = a1[e];
            a[g][2 * t + 8 + e] = a2[e];
            a[g + 8][2 * t + 8 + e] = a3[e];
          }
          // b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]; only columns 0 and 1 (quad_row < 2).
          if (g < 2) {
            const std::array<uint32_t, 2> u01a = units[2 * wr::x_unit(group, 0, g, t)],
                                          u01b = units[2 * wr::x_unit(group, 0, g, t) + 1],
                                          u23a = units[2 * wr::x_unit(group, 1, g, t)],
                                          u23b = units[2 * wr::x_unit(group, 1, g, t) + 1];
            const uint32_t b0[4] = {u01a[0], u01b[0], u23a[0], u23b[0]},
                           b1[4] = {u01a[1], u01b[1], u23a[1], u23b[1]};
            for (int e = 0; e < 2; ++e) {
              bm[2 * t + e][g] = f16_half(b0[j], e);
              bm[2 * t + 8 + e][g] = f16_half(b1[j], e);
            }
          }
        }
        for (int r = 0; r < 16; ++r)
          for (int n = 0; n < 8; ++n)
            for (int k = 0; k < 16; ++k) part[j][r][n] += a[r][k] * bm[k][n];
      }
    }
    const float f = weight_scale[b] * unscale[b];
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n)
        total[r][n] = std::fma((part[0][r][n] + part[1][r][n]) + (part[2][r][n] + part[3][r][n]), f,
                               total[r][n]);
  }
  for (int r = 0; r < 16; ++r) {
    double want = 0.0, bound = 0.0;
    for (int64_t c = 0; c < kCols; ++c) {
      const double wv = double(e4m3_value(w[r * kCols + c])) * weight_scale[c / 128];
      want += wv * x[c];
      bound += std::fabs(wv) * amax_of[c / 128];
    }
    const double got = double(total[r][0]) + double(total[r][1]);  // high + low parts' columns
    EXPECT_NEAR(got, want, 1e-6 * bound) << "row " << r;
    for (int n = 2; n < 8; ++n) EXPECT_EQ(total[r][n], 0.0f);
  }
}

// One 16-row tile of gemv_stream_mma_kernel replayed on the host for 1, 4 and 8 activation rows
// a launch (some of them past the real rows): x staged as stage_x_fragments stages it (each row's
// 128-column blocks scaled and split into f16 parts at f16_fragments::stream_x_pair), each lane's
// A fragments from its 32-bit word of rows g and g + 8 per 16 columns (low pair, high pair), the B
// fragments of mma jb from column 8 jb + g (row n / 2, part n % 2), PTX's fragment layout, and
// each lane's rows' 2^-e with the weights' block scale. Every real row's 16 outputs match the
// float64 products; rows past the real ones come out zero.
TEST(CudaF16Fragments, StreamTileReplayMatchesTheProducts) {
  namespace ff = cuda::f16_fragments;
  constexpr int64_t kCols = 256, kBlocks = kCols / 128, kSteps = kCols / 16;
  std::mt19937 rng(13);
  std::vector<uint8_t> w(16 * kCols);
  for (uint8_t& b : w) do
      b = uint8_t(rng());
    while ((b & 0x7f) == 0x7f);
  const float weight_scale[kBlocks] = {2.0f, 0.0625f};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> binade(-15, 15);
  for (const auto& [nt, tokens] :
       {std::pair{1, 1}, std::pair{4, 3}, std::pair{8, 8}, std::pair{8, 5}}) {
    std::vector<float> x(nt * kCols, 0.0f);
    for (int j = 0; j < tokens; ++j)
      for (int64_t c = 0; c < kCols; ++c)
        x[j * kCols + c] = std::ldexp(normal(rng), binade(rng) + 3 * j);
    // stage_x_fragments
    std::vector<std::array<uint32_t, 2> > xb(kSteps * nt * 2 * 4);
    std::vector<float> unscale(nt * kBlocks), amax_of(nt * kBlocks, 0.0f);
    for (int j = 0; j < nt; ++j)
      for (int64_t blk = 0; blk < kBlocks; ++blk) {
        float amax = 0.0f;
        for (int64_t c = blk * 128; c < blk * 128 + 128; ++c)
          amax = std::max(amax, std::fabs(x[j * kCols + c]));
        amax_of[j * kBlocks + blk] = amax;
        const int e = ff::block_exponent(amax);
        unscale[j * kBlocks + blk] = ff::power_of_two(-e);
        for (int64_t q = blk * 32; q < blk * 32 + 32; ++q) {
          float hi[4], lo[4];
          for (int i = 0; i < 4; ++i) {
            const float v = x[j * kCols + 4 * q + i] * ff::power_of_two(e);
            hi[i] = f16_rounded(v);
            lo[i] = f16_rounded(v - hi[i]);
          }
          xb[ff::stream_x_pair(q / 4, j, 0, int(q % 4), nt)] = {f16_pair(hi[0], hi[1]),
                                                                f16_pair(hi[2], hi[3])};
          xb[ff::stream_x_pair(q / 4, j, 1, int(q % 4), nt)] = {f16_pair(lo[0], lo[1]),
                                                                f16_pair(lo[2], lo[3])};
        }
      }
    const int nb = (nt + 3) / 4;
    std::vector<float> total(nb * 16 * 8, 0.0f);  // [jb][row][mma column]
    for (int64_t blk = 0; blk < kBlocks; ++blk)
      for (int jb = 0; jb < nb; ++jb) {
        float d[16][8] = {};
        for (int64_t s = blk * 8; s < blk * 8 + 8; ++s) {
          float a[16][16] = {}, bm[16][8] = {};
          for (int lane = 0; lane < 32; ++lane) {
            const int g = lane / 4, t = lane % 4;
            auto value = [&](int row, int e) {
              return e4m3_value(w[row * kCols + 16 * s + 4 * t + e]);
            };
            for (int e = 0; e < 2; ++e) {
              a[g][2 * t + e] = value(g, e);  // a0: low pair of row g's word
              a[g + 8][2 * t + e] = value(g + 8, e);
              a[g][2 * t + 8 + e] = value(g, 2 + e);  // a2: its high pair
              a[g + 8][2 * t + 8 + e] = value(g + 8, 2 + e);
            }
            const int column = jb * 8 + g;
            if (column < 2 * nt) {
              const std::array<uint32_t, 2> b =
                  xb[ff::stream_x_pair(s, column / 2, column % 2, t, nt)];
              for (int e = 0; e < 2; ++e) {
                bm[2 * t + e][g] = f16_half(b[0], e);
                bm[2 * t + 8 + e][g] = f16_half(b[1], e);
              }
            }
          }
          for (int r = 0; r < 16; ++r)
            for (int n = 0; n < 8; ++n)
              for (int k = 0; k < 16; ++k) d[r][n] += a[r][k] * bm[k][n];
        }
        for (int r = 0; r < 16; ++r)
          for (int n = 0; n < 8; ++n) {
            const int token = jb * 4 + n / 2;  // lane t's columns 2t, 2t + 1: row jb * 4 + t
            const float f = token < nt ? weight_scale[blk] * unscale[token * kBlocks + blk] : 0.0f;
            float& acc = total[(jb * 16 + r) * 8 + n];
            acc = std::fma(d[r][n], f, acc);
          }
      }
    for (int j = 0; j < nt; ++j)
      for (int r = 0; r < 16; ++r) {
        const int jb = j / 4, t = j % 4;
        const double got =
            double(total[(jb * 16 + r) * 8 + 2 * t]) + double(total[(jb * 16 + r) * 8 + 2 * t + 1]);
        double want = 0.0, bound = 0.0;
        for (int64_t c = 0; c < kCols; ++c) {
          const double wv = double(e4m3_value(w[r * kCols + c])) * weight_scale[c / 128];
          want += wv * x[j * kCols + c];
          bound += std::fabs(wv) * amax_of[j * kBlocks + c / 128];
        }
        if (j >= tokens) {
          EXPECT_EQ(got, 0.0) << "nt " << nt << " row " << j;
        } else {
          EXPECT_NEAR(got, want, 1e-6 * bound) << "nt " << nt << " row " << j << " output " << r;
        }
      }
  }
}

#endif  // AGENTRT_HAVE_CUDA

}  // namespace
}  // namespace agentrt::engine
