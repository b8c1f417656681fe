#include <cuda_bf16.h>

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>

#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/linear.h"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

// twice (bf16 only): output rows of 2 * cols holding each row twice ([W W], dequantize()).
__global__ void dequantize_kernel(WeightMatrix w, void* out, bool to_bf16, bool twice) {
  const int64_t total = w.rows * w.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / w.cols, col = i % w.cols;
    const float v = decode_one(w, row, col);
    if (to_bf16) {
      auto* o = static_cast<__nv_bfloat16*>(out);
      if (twice) {
        o[row * 2 * w.cols + col] = __float2bfloat16(v);
        o[row * 2 * w.cols + w.cols + col] = __float2bfloat16(v);
      } else {
        o[i] = __float2bfloat16(v);
      }
    } else {
      static_cast<float*>(out)[i] = v;
    }
  }
}

// FP8 rows (columns a multiple of 16) one 16-byte chunk a thread: the same values as
// dequantize_kernel (the e4m3 value times its block scale, then bf16's rounding), without its
// per-value index arithmetic (a 64-bit division and the scale lookup for every value).
__global__ void dequantize_fp8_kernel(WeightMatrix w, void* out, bool to_bf16, bool twice) {
  const int64_t per_row = w.cols / 16, chunks = w.rows * per_row, cb = (w.cols + 127) / 128;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / per_row, c = i - row * per_row;
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(w.data) + i);
    const int64_t si = ((w.row_offset + row) / 128) * cb + (c * 16) / 128;
    const float scale = w.scale_type == ScaleType::f32
                            ? __ldg(static_cast<const float*>(w.scale) + si)
                            : e8m0(__ldg(static_cast<const uint8_t*>(w.scale) + si));
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
    float v[16];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float f[4];
      decode_word<WeightType::f8_e4m3>(words[j], f);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[4 * j + k] = f[k] * 0x1p120f * scale;  // placed * 2^120: exact
    }
    if (to_bf16) {
      __align__(16) __nv_bfloat16 b[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) b[k] = __float2bfloat16(v[k]);
      uint4* dst = reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(out) +
                                            (twice ? row * 2 * w.cols + c * 16 : i * 16));
      dst[0] = reinterpret_cast<const uint4*>(b)[0];
      dst[1] = reinterpret_cast<const uint4*>(b)[1];
      if (twice) {  // the row's second copy, w.cols values on (a multiple of 8: 16-byte units)
        dst[w.cols / 8] = reinterpret_cast<const uint4*>(b)[0];
        dst[w.cols / 8 + 1] = reinterpret_cast<const uint4*>(b)[1];
      }
    } else {
      float4* dst = static_cast<float4*>(out) + 4 * i;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        dst[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
    }
  }
}

// hi = bf16(x); lo = bf16(x - hi) where split; rows by blocks of threads. stack_block 0: hi and
// lo in planes of n rows of cols; else each row as [hi lo] per block of stack_block columns (rows
// of 2 * cols, LinearRunner::stage_rows). kVec4: 4 columns a thread (cols, stack_block and
// stride multiples of 4, x 16-byte aligned, hi 8-byte aligned). Before, a thread an element
// paid a 64-bit division and remainder per element, for every prefill product.
template <bool kVec4>
__global__ void rows_to_bf16(const float* x, int64_t stride, int64_t n, int64_t cols,
                             int64_t stack_block, bool split, __nv_bfloat16* hi) {
  const int64_t block = stack_block > 0 ? stack_block : cols;
  const int64_t ld = stack_block > 0 ? 2 * cols : cols;
  const int64_t lo_offset = stack_block > 0 ? stack_block : n * cols;
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x)
    for (int64_t b = 0; b * block < cols; ++b) {
      const float* xr = x + t * stride + b * block;
      __nv_bfloat16* h = hi + t * ld + b * 2 * block;  // b > 0 only when stacked
      if constexpr (kVec4) {
        for (int64_t c = threadIdx.x; c < block / 4; c += blockDim.x)
          store_bf16_parts(split, reinterpret_cast<uint16_t*>(h), lo_offset, 4 * c,
                           reinterpret_cast<const float4*>(xr)[c]);
      } else {
        for (int64_t c = threadIdx.x; c < block; c += blockDim.x) {
          const float v = xr[c];
          h[c] = __float2bfloat16(v);
          if (split) h[lo_offset + c] = __float2bfloat16(v - __bfloat162float(h[c]));
        }
      }
    }
}

// x's n rows (stride apart) of cols as bf16 at hi (and, split, their low parts), as rows_to_bf16.
void convert_rows(const float* x, int64_t stride, int64_t n, int64_t cols, int64_t stack_block,
                  bool split, __nv_bfloat16* hi, cudaStream_t stream) {
  const bool vec4 = cols % 4 == 0 && stack_block % 4 == 0 && stride % 4 == 0 &&
                    (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                    (reinterpret_cast<uintptr_t>(hi) & 7) == 0;
  const unsigned grid = unsigned(std::min<int64_t>(n, 1 << 20));
  if (vec4)
    rows_to_bf16<true><<<grid, 256, 0, stream>>>(x, stride, n, cols, stack_block, split, hi);
  else
    rows_to_bf16<false><<<grid, 256, 0, stream>>>(x, stride, n, cols, stack_block, split, hi);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

// Column-major, group g < groups: C_g (r x n at y + g r, ld y_stride) = beta C_g + A_g^T X_g, A_g:
// [r][depth] bf16 at a + g r depth, X_g: depth x n bf16 at x + g depth (ld ldx).
void gemm_groups(cublasHandle_t handle, const void* a, const void* x, int64_t ldx, int64_t r,
                 int64_t n, int64_t depth, int64_t groups, float beta, float* y, int64_t y_stride) {
  const float one = 1.0f;
  if (groups == 1) {
    check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(r), int(n), int(depth), &one, a,
                              CUDA_R_16BF, int(depth), x, CUDA_R_16BF, int(ldx), &beta, y,
                              CUDA_R_32F, int(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (bf16)");
    return;
  }
  check_cublas(
      cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(r), int(n), int(depth), &one,
                                 a, CUDA_R_16BF, int(depth), r * depth, x, CUDA_R_16BF, int(ldx),
                                 depth, &beta, y, CUDA_R_32F, int(y_stride), r, int(groups),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx (bf16, grouped rows)");
}

__global__ void split_bf16(const float* x, int64_t count, __nv_bfloat16* hi, __nv_bfloat16* lo) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    hi[i] = __float2bfloat16(x[i]);
    lo[i] = __float2bfloat16(x[i] - __bfloat162float(hi[i]));
  }
}

// y[t][r] = c[t][r] + c[n + t][r]: the stacked GEMM's high and low parts of row t of x.
__global__ void add_stacked_halves(const float* c, int64_t rows, int64_t n, float* y,
                                   int64_t y_stride) {
  const int64_t total = n * rows;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / rows, r = i - t * rows;
    y[t * y_stride + r] = c[i] + c[total + i];
  }
}

// Whether every decoded value of w is exactly a bf16.
bool exact_in_bf16(const WeightMatrix& w) {
  return w.type == WeightType::bf16 || w.type == WeightType::f4_e2m1 ||
         (w.type == WeightType::f8_e4m3 && w.scale_type == ScaleType::e8m0);
}

constexpr int64_t kStackedMinBytes = int64_t(32) << 20;
constexpr int64_t kWorkspaceBytes = int64_t(32) << 20;

}  // namespace

GemmPrecision parse_gemm_precision(const std::string& name) {
  if (name == "bf16x2") return GemmPrecision::bf16x2;
  if (name == "bf16") return GemmPrecision::bf16;
  if (name == "f32") return GemmPrecision::f32;
  if (name == "fp8") return GemmPrecision::fp8;
  throw std::invalid_argument("GEMM precision '" + name + "' is not one of bf16x2, bf16, f32, fp8");
}

bool stacked_gemm_fits(const WeightMatrix& w, int64_t n, GemmPrecision precision) {
  return n >= 2 && precision != GemmPrecision::f32 && w.type == WeightType::bf16 &&
         w.rows * w.cols * 2 >= kStackedMinBytes;
}

void dequantize(const WeightMatrix& w, void* out, bool to_bf16, cudaStream_t stream, bool twice) {
  if (twice && !to_bf16) throw std::invalid_argument("dequantize: twice is for bf16 output only");
  if (w.type == WeightType::f8_e4m3 && w.cols % 16 == 0 &&
      (reinterpret_cast<uintptr_t>(w.data) & 15) == 0 &&
      (reinterpret_cast<uintptr_t>(out) & 15) == 0) {
    dequantize_fp8_kernel<<<grid_for(w.rows * w.cols / 16), 256, 0, stream>>>(w, out, to_bf16,
                                                                              twice);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  dequantize_kernel<<<grid_for(w.rows * w.cols), 256, 0, stream>>>(w, out, to_bf16, twice);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

LinearRunner::LinearRunner(GemmPrecision precision, int64_t gemv_max_rows, GemvMode gemv_mode)
    : precision_(precision),
      gemv_max_rows_(gemv_max_rows),
      gemv_mode_(gemv_mode),
      workspace_(kWorkspaceBytes) {
  gemv_mode_.tensor_cores = precision != GemmPrecision::f32;
  if (precision == GemmPrecision::fp8) fp8_ = std::make_unique<Fp8Gemm>();
  check_cublas(cublasCreate(&handle_), "cublasCreate");
  check_cublas(cublasSetWorkspace(handle_, workspace_.get(), size_t(workspace_.bytes())),
               "cublasSetWorkspace");
}

LinearRunner::~LinearRunner() {
  if (handle_) cublasDestroy(handle_);
}

void LinearRunner::run(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                       int64_t y_stride, cudaStream_t stream) {
  if (n <= 0) return;
  if (n <= gemv_max_rows_) {
    if (gemv_mode_.several_rows && stacked_gemm_fits(w, n, precision_))
      run_stacked(w, x, x_stride, n, y, y_stride, stream);
    else
      gemv_strided(w, x, x_stride, n, y, y_stride, stream, gemv_mode_);
    return;
  }
  if (try_fp8(w, 1, x, x_stride, n, y, y_stride, stream)) return;
  if (precision_ != GemmPrecision::f32) {
    run_bf16(w, 1, x, x_stride, n, y, y_stride, stream);
    return;
  }
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: C (rows x n, ld y_stride) = A^T (A: cols x rows, ld cols) * B (cols x n).
  const float* wf = static_cast<const float*>(w.data);
  if (w.type != WeightType::f32) {
    weight_scratch_.reserve(w.rows * w.cols * 4);
    dequantize(w, weight_scratch_.get(), false, stream);
    wf = weight_scratch_.as<float>();
  }
  check_cublas(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols),
                           &one, wf, int(w.cols), x, int(x_stride), &zero, y, int(y_stride)),
               "cublasSgemm");
}

bool LinearRunner::try_fp8(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride,
                           int64_t n, float* y, int64_t y_stride, cudaStream_t stream) {
  if (!fp8_ || w.type != WeightType::f8_e4m3) return false;
  if (fp8_->run(w, groups, x, x_stride, n, y, y_stride, stream)) {
    ++fp8_counts_.fp8;
    return true;
  }
  ++(Fp8Gemm::fits(w, groups) ? fp8_counts_.fallbacks : fp8_counts_.unfit);
  return false;
}

bool LinearRunner::k_stacks(const WeightMatrix& w) const {
  return precision_ == GemmPrecision::bf16x2 && w.type != WeightType::bf16 && exact_in_bf16(w) &&
         w.cols % 16 == 0;
}

void LinearRunner::run_bf16(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride,
                            int64_t n, float* y, int64_t y_stride, cudaStream_t stream) {
  const BfRows rows = stage_rows(x, x_stride, n, groups * w.cols, k_stacks(w) ? w.cols : 0, stream);
  gemm_bf16(w, groups, rows, n, y, y_stride, stream);
}

LinearRunner::BfRows LinearRunner::stage_rows(const float* x, int64_t x_stride, int64_t n,
                                              int64_t cols, int64_t stack_block,
                                              cudaStream_t stream) {
  const bool split_x = precision_ == GemmPrecision::bf16x2;
  const int64_t xcount = n * cols;
  act_scratch_.reserve(xcount * (split_x ? 4 : 2));
  auto* xh = act_scratch_.as<__nv_bfloat16>();
  if (split_x && stack_block > 0) {
    convert_rows(x, x_stride, n, cols, stack_block, true, xh, stream);
    return {xh, xh + stack_block, 2 * cols, stack_block};
  }
  convert_rows(x, x_stride, n, cols, 0, split_x, xh, stream);
  return {xh, split_x ? xh + xcount : nullptr, cols, 0};
}

void LinearRunner::gemm_bf16(const WeightMatrix& w, int64_t groups, const BfRows& x, int64_t n,
                             float* y, int64_t y_stride, cudaStream_t stream) {
  if (x.stack_block > 0) {
    gemm_k_stacked(w, groups, x, n, y, y_stride, stream);
    return;
  }
  const bool split_w = x.lo && !exact_in_bf16(w);
  const int64_t wcount = w.rows * w.cols;
  const void* wb = w.data;
  const void* wl = nullptr;
  if (w.type != WeightType::bf16) {
    weight_scratch_.reserve(wcount * (split_w ? 8 : 2));
    auto* hi = weight_scratch_.as<__nv_bfloat16>();
    if (split_w) {
      float* full = reinterpret_cast<float*>(hi + 2 * wcount);
      dequantize(w, full, false, stream);
      split_bf16<<<grid_for(wcount), 256, 0, stream>>>(full, wcount, hi, hi + wcount);
      wl = hi + wcount;
    } else {
      dequantize(w, hi, true, stream);
    }
    wb = hi;
  }
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const int64_t r = w.rows / groups;
  gemm_groups(handle_, wb, x.hi, x.ld, r, n, w.cols, groups, 0.0f, y, y_stride);
  if (x.lo) gemm_groups(handle_, wb, x.lo, x.ld, r, n, w.cols, groups, 1.0f, y, y_stride);
  if (wl) gemm_groups(handle_, wl, x.hi, x.ld, r, n, w.cols, groups, 1.0f, y, y_stride);
}

// bf16x2 as one GEMM over twice the depth: [W W] (each row dequantised twice) times x's rows
// staged as [hi lo] per block of w.cols, so the high and low parts' products add up inside the
// GEMM. Two GEMMs, the second adding into y (beta 1), read and wrote the float32 output twice:
// for wq_b at 8,192 rows that is 1 GB more each way.
void LinearRunner::gemm_k_stacked(const WeightMatrix& w, int64_t groups, const BfRows& x, int64_t n,
                                  float* y, int64_t y_stride, cudaStream_t stream) {
  if (x.stack_block != w.cols)
    throw std::logic_error("gemm_k_stacked: x staged in blocks of " +
                           std::to_string(x.stack_block) + " columns for a matrix of " +
                           std::to_string(w.cols));
  const int64_t depth = 2 * w.cols;
  weight_scratch_.reserve(w.rows * depth * 2);
  auto* ww = weight_scratch_.as<__nv_bfloat16>();
  dequantize(w, ww, true, stream, /*twice=*/true);
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  gemm_groups(handle_, ww, x.hi, x.ld, w.rows / groups, n, depth, groups, 0.0f, y, y_stride);
}

void LinearRunner::run_stacked(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n,
                               float* y, int64_t y_stride, cudaStream_t stream) {
  const bool split = precision_ == GemmPrecision::bf16x2;
  const int64_t columns = split ? 2 * n : n;
  act_scratch_.reserve(columns * w.cols * 2);
  auto* xh = act_scratch_.as<__nv_bfloat16>();
  // The low parts follow the high ones: x's rows as 2n columns of one operand.
  convert_rows(x, x_stride, n, w.cols, 0, split, xh, stream);
  float* c = y;
  int64_t ldc = y_stride;
  if (split) {
    stacked_out_.reserve(columns * w.rows * 4);
    c = stacked_out_.as<float>();
    ldc = w.rows;
  }
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  check_cublas(
      cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(columns), int(w.cols), &one,
                   w.data, CUDA_R_16BF, int(w.cols), xh, CUDA_R_16BF, int(w.cols), &zero, c,
                   CUDA_R_32F, int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx (stacked rows)");
  if (split) {
    add_stacked_halves<<<grid_for(n * w.rows), 256, 0, stream>>>(c, w.rows, n, y, y_stride);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

namespace {

[[noreturn]] void refuse_bf16_out(const WeightMatrix& w, int64_t n) {
  throw std::logic_error("LinearRunner: bf16 output asked of a " + std::to_string(w.rows) + " x " +
                         std::to_string(w.cols) + " product of " + std::to_string(n) +
                         " rows that fp8_writes_bf16 did not offer");
}

}  // namespace

bool LinearRunner::fp8_writes_bf16(const WeightMatrix& w, int64_t n, const void* y,
                                   cudaStream_t stream) {
  if (!fp8_ || n <= gemv_max_rows_ || !Fp8Gemm::fits(w)) return false;
  return fp8_->accepts(w, 1, Fp8Gemm::staged(fp8_->room(n, w.cols, stream), n), y, w.rows, true);
}

void LinearRunner::run_same_input(std::span<const Product> products, const float* x, int64_t n,
                                  cudaStream_t stream) {
  if (n <= 0 || products.empty()) return;
  bool same_cols = true, bf16_out = false;
  for (const Product& p : products) {
    same_cols = same_cols && p.w.cols == products[0].w.cols;
    bf16_out = bf16_out || p.bf16_out;
  }
  if (bf16_out && !(n > gemv_max_rows_ && fp8_ && same_cols)) refuse_bf16_out(products[0].w, n);
  if (n > gemv_max_rows_ && fp8_ && same_cols) {
    // x quantised once for every product that takes an FP8 GEMM; the others as run() takes them.
    const int64_t cols = products[0].w.cols;
    bool any = false;
    for (const Product& p : products) any = any || Fp8Gemm::fits(p.w);
    const Fp8Gemm::Staged staged = any ? fp8_->stage(x, cols, n, cols, stream) : Fp8Gemm::Staged{};
    std::optional<BfRows> rows;  // x as bf16 once, for the products that take no FP8 GEMM
    for (const Product& p : products) {
      if (Fp8Gemm::fits(p.w) &&
          fp8_->multiply(p.w, 1, staged, static_cast<void*>(p.y), p.w.rows, stream, p.bf16_out)) {
        ++fp8_counts_.fp8;
        continue;
      }
      if (p.bf16_out) refuse_bf16_out(p.w, n);
      if (p.w.type == WeightType::f8_e4m3)
        ++(Fp8Gemm::fits(p.w) ? fp8_counts_.fallbacks : fp8_counts_.unfit);
      if (!rows) rows = stage_rows(x, cols, n, cols, 0, stream);
      gemm_bf16(p.w, 1, *rows, n, p.y, p.w.rows, stream);
    }
    return;
  }
  if (n > gemv_max_rows_ && precision_ != GemmPrecision::f32 && same_cols) {
    // x's rows converted once for every product (each converted them again); K-stacked where
    // every product takes that path.
    bool stacked = true;
    for (const Product& p : products) stacked = stacked && k_stacks(p.w);
    const int64_t cols = products[0].w.cols;
    const BfRows rows = stage_rows(x, cols, n, cols, stacked ? cols : 0, stream);
    for (const Product& p : products) gemm_bf16(p.w, 1, rows, n, p.y, p.w.rows, stream);
    return;
  }
  if (n > gemv_max_rows_ || products.size() > size_t(kMaxGemvProducts) || !same_cols) {
    for (const Product& p : products) run(p.w, x, n, p.y, stream);
    return;
  }
  GemvProduct set[kMaxGemvProducts];
  for (size_t i = 0; i < products.size(); ++i)
    set[i] = {products[i].w, products[i].y, products[i].w.rows};
  gemv_same_input(std::span<const GemvProduct>(set, products.size()), x, products[0].w.cols, n,
                  stream, gemv_mode_);
}

void LinearRunner::run_same_input_normed(std::span<const Product> products, float* x,
                                         const float* weight, float eps, int64_t n,
                                         cudaStream_t stream) {
  if (n <= 0 || products.empty()) return;
  if (n == 1 && products.size() <= size_t(kMaxGemvProducts)) {
    GemvProduct set[kMaxGemvProducts];
    for (size_t i = 0; i < products.size(); ++i)
      set[i] = {products[i].w, products[i].y, products[i].w.rows};
    if (gemv_warp_rows_normed(std::span<const GemvProduct>(set, products.size()), x, weight, eps,
                              stream, gemv_mode_))
      return;
  }
  rms_norm_rows(x, weight, n, products[0].w.cols, eps, x, stream);
  if (products.size() == 1)
    run(products[0].w, x, n, products[0].y, stream);  // the kernel run() would take
  else
    run_same_input(products, x, n, stream);
}

void LinearRunner::run_grouped(const WeightMatrix& w, int64_t groups, const float* x,
                               int64_t x_stride, int64_t n, float* y, int64_t y_stride,
                               cudaStream_t stream) {
  if (n <= 0) return;
  if (n <= gemv_max_rows_) {
    gemv_grouped(w, groups, x, x_stride, n, y, y_stride, stream, gemv_mode_);
    return;
  }
  if (try_fp8(w, groups, x, x_stride, n, y, y_stride, stream)) return;
  if (precision_ != GemmPrecision::f32) {
    // One strided batched GEMM per term over the groups: the whole matrix dequantised once and
    // the whole rows of x converted once.
    run_bf16(w, groups, x, x_stride, n, y, y_stride, stream);
    return;
  }
  const int64_t r = w.rows / groups;
  for (int64_t g = 0; g < groups; ++g)
    run(w.slice_rows(g * r, r), x + g * w.cols, x_stride, n, y + g * r, y_stride, stream);
}

std::optional<fp8_act_quant::RowsOut> LinearRunner::fp8_rows_room(const WeightMatrix& w,
                                                                  int64_t groups, int64_t n,
                                                                  const float* y, int64_t y_stride,
                                                                  cudaStream_t stream) {
  if (!fp8_ || n <= gemv_max_rows_ || !Fp8Gemm::fits(w, groups)) return std::nullopt;
  const fp8_act_quant::RowsOut rows = fp8_->room(n, groups * w.cols, stream);
  if (!fp8_->accepts(w, groups, Fp8Gemm::staged(rows, n), y, y_stride)) return std::nullopt;
  return rows;
}

void LinearRunner::run_grouped_quantised(const WeightMatrix& w, int64_t groups,
                                         const fp8_act_quant::RowsOut& rows, int64_t n, float* y,
                                         int64_t y_stride, cudaStream_t stream) {
  if (!fp8_ || !fp8_->multiply(w, groups, Fp8Gemm::staged(rows, n), y, y_stride, stream))
    throw std::logic_error("LinearRunner::run_grouped_quantised: a " + std::to_string(w.rows) +
                           " x " + std::to_string(w.cols) + " product of " + std::to_string(n) +
                           " rows that fp8_rows_room did not offer FP8 GEMMs for");
  ++fp8_counts_.fp8;
}

}  // namespace agentrt::engine::cuda
