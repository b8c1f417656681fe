#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kThreads = 256;

// Row groups of a block-diagonal product (the grouped attention output): rows
// [g * rows, (g + 1) * rows) read x + g * x_offset. rows = 0: one group.
struct RowGroups {
  int64_t rows = 0;
  int64_t x_offset = 0;
};

// Matrices up to this size have their rows prefetched into the L2 before the wait; larger ones
// (the head: 1 GB) would evict their own prefetched rows before reading them.
constexpr int64_t kPrefetchMaxBytes = int64_t(64) << 20;

// Each group of `parts` lanes computes R consecutive rows (R rows share each activation load);
// `block` is the block's index among the blocks of this matrix.
template <int NT, int R>
__device__ __forceinline__ void gemv_block(const WeightMatrix& w, const float* __restrict__ x,
                                           int64_t x_stride, float* __restrict__ y,
                                           int64_t y_stride, int parts, RowGroups groups,
                                           int64_t block) {
  const int64_t group = (block * kThreads + threadIdx.x) / parts;
  const int64_t row0 = group * R;
  const int64_t row_bytes = w.cols * value_bytes_x2(w.type) / 2;
  if (row0 < w.rows && (int(threadIdx.x) & (parts - 1)) == 0 &&
      w.rows * row_bytes <= kPrefetchMaxBytes) {
    // The group's rows are contiguous and the weights constant: fetch them while the kernel
    // before this one finishes.
    const int64_t bytes = (row0 + R <= w.rows ? R : w.rows - row0) * row_bytes;
    const char* p = static_cast<const char*>(w.data) + row0 * row_bytes;
    if ((reinterpret_cast<uintptr_t>(p) & 15) == 0 && bytes % 16 == 0 && bytes < (int64_t(1) << 31))
      prefetch_l2(p, uint32_t(bytes));
  }
  pdl_begin();
  if (row0 >= w.rows) return;  // whole groups leave together (no shuffle partner missing)
  WeightMatrix ws[R];
  int64_t rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    ws[r] = w;
    rows[r] = row0 + r < w.rows ? row0 + r : w.rows - 1;  // past the end: recompute the last
  }
  if (groups.rows > 0) x += (row0 / groups.rows) * groups.x_offset;  // R divides groups.rows
  const float* xs[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xs[t] = x + t * x_stride;
  float acc[R][NT];
  rows_dot<NT, R>(ws, rows, xs, parts, acc);
  if ((int(threadIdx.x) & (parts - 1)) == 0)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (row0 + r < w.rows)
#pragma unroll
        for (int t = 0; t < NT; ++t) y[t * y_stride + row0 + r] = acc[r][t];
}

template <int NT, int R>
__global__ void __launch_bounds__(kThreads, 2)
    gemv_kernel(WeightMatrix w, const float* __restrict__ x, int64_t x_stride,
                float* __restrict__ y, int64_t y_stride, int parts, RowGroups groups) {
  gemv_block<NT, R>(w, x, x_stride, y, y_stride, parts, groups, blockIdx.x);
}

// Several matrices' products with the same activations in one launch: matrix m owns blocks
// [first_block[m], first_block[m + 1]).
struct ProductSet {
  WeightMatrix w[kMaxGemvProducts];
  float* y[kMaxGemvProducts];
  int64_t y_stride[kMaxGemvProducts];
  int parts[kMaxGemvProducts];
  unsigned first_block[kMaxGemvProducts + 1];
  int count;
};

template <int NT>
__global__ void __launch_bounds__(kThreads, 2)
    gemv_set_kernel(ProductSet set, const float* __restrict__ x, int64_t x_stride) {
  int m = 0;
  while (m + 1 < set.count && blockIdx.x >= set.first_block[m + 1]) ++m;
  const WeightMatrix w = set.w[m];
  gemv_block<NT, 1>(w, x, x_stride, set.y[m], set.y_stride[m], set.parts[m], {},
                    int64_t(blockIdx.x - set.first_block[m]));
}

__global__ void gemv_reference_kernel(WeightMatrix w, const float* x, int64_t n, float* y) {
  pdl_begin();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * w.rows) return;
  const int64_t t = i / w.rows, row = i % w.rows;
  double s = 0.0;
  for (int64_t c = 0; c < w.cols; ++c) s += double(decode_one(w, row, c)) * x[t * w.cols + c];
  y[t * w.rows + row] = float(s);
}

template <int NT, int R>
void launch_rows(const WeightMatrix& w, const float* x, int64_t xs, float* y, int64_t ys,
                 RowGroups groups, cudaStream_t stream) {
  const int parts = rows_dot_parts(w.type, w.cols);
  const int64_t lane_groups = (w.rows + R - 1) / R;
  const unsigned blocks = unsigned((lane_groups * parts + kThreads - 1) / kThreads);
  launch_pdl(gemv_kernel<NT, R>, blocks, kThreads, 0, stream, w, x, xs, y, ys, parts, groups);
}

// Several rows per lane group only where the matrix has rows enough to fill the GPU with them
// (the head, the query up-projection); smaller ones need every lane group they can get.
template <int NT>
void launch(const WeightMatrix& w, const float* x, int64_t xs, float* y, int64_t ys,
            RowGroups groups, cudaStream_t stream, GemvMode mode) {
  if constexpr (NT == 1)
    if (gemv_stream(w, x, y, groups.rows, groups.x_offset, stream, mode)) return;
  constexpr int kMany = NT <= 2 ? 4 : NT <= 4 ? 2 : 1;
  constexpr int kSome = NT <= 4 ? 2 : 1;
  auto fits = [&](int r) { return groups.rows == 0 || groups.rows % r == 0; };
  if (w.rows >= 16384 && fits(kMany))
    launch_rows<NT, kMany>(w, x, xs, y, ys, groups, stream);
  else if (w.rows >= 4096 && fits(kSome))
    launch_rows<NT, kSome>(w, x, xs, y, ys, groups, stream);
  else
    launch_rows<NT, 1>(w, x, xs, y, ys, groups, stream);
}

void gemv_rows(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
               int64_t y_stride, RowGroups groups, cudaStream_t stream, GemvMode mode) {
  if (n >= 2 &&
      gemv_stream_rows(w, x, x_stride, n, y, y_stride, groups.rows, groups.x_offset, stream, mode))
    return;
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t left = n - t0;
    const float* xt = x + t0 * x_stride;
    float* yt = y + t0 * y_stride;
    // Whole chunks of 8, then 4/2/1: every token set reads the matrix once.
    if (left >= 8) {
      launch<8>(w, xt, x_stride, yt, y_stride, groups, stream, mode);
      t0 += 8;
    } else if (left >= 4) {
      launch<4>(w, xt, x_stride, yt, y_stride, groups, stream, mode);
      t0 += 4;
    } else if (left >= 2) {
      launch<2>(w, xt, x_stride, yt, y_stride, groups, stream, mode);
      t0 += 2;
    } else {
      launch<1>(w, xt, x_stride, yt, y_stride, groups, stream, mode);
      t0 += 1;
    }
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

template <int NT>
void launch_set(std::span<const GemvProduct> products, const float* x, int64_t x_stride, int64_t t0,
                cudaStream_t stream) {
  ProductSet set{};
  unsigned blocks = 0;
  for (size_t i = 0; i < products.size(); ++i) {
    const GemvProduct& p = products[i];
    set.w[i] = p.w;
    set.y[i] = p.y + t0 * p.y_stride;
    set.y_stride[i] = p.y_stride;
    set.parts[i] = rows_dot_parts(p.w.type, p.w.cols);
    set.first_block[i] = blocks;
    blocks += unsigned((p.w.rows * set.parts[i] + kThreads - 1) / kThreads);
  }
  set.count = int(products.size());
  set.first_block[set.count] = blocks;
  launch_pdl(gemv_set_kernel<NT>, blocks, kThreads, 0, stream, set, x + t0 * x_stride, x_stride);
}

}  // namespace

void gemv_same_input(std::span<const GemvProduct> products, const float* x, int64_t x_stride,
                     int64_t n, void* stream_ptr, GemvMode mode) {
  if (products.empty() || n <= 0) return;
  if (products.size() > size_t(kMaxGemvProducts))
    throw std::invalid_argument("gemv_same_input: " + std::to_string(products.size()) +
                                " products, at most " + std::to_string(kMaxGemvProducts));
  for (const GemvProduct& p : products)
    if (p.w.cols != products[0].w.cols || p.w.cols > x_stride)
      throw std::invalid_argument("gemv_same_input: a matrix of " + std::to_string(p.w.cols) +
                                  " columns beside one of " + std::to_string(products[0].w.cols) +
                                  " (activation rows of " + std::to_string(x_stride) + ")");
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (mode.tensor_cores && gemv_stream_set(products, x, x_stride, n, stream, mode)) return;
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t left = n - t0;
    if (left >= 8) {
      launch_set<8>(products, x, x_stride, t0, stream);
      t0 += 8;
    } else if (left >= 4) {
      launch_set<4>(products, x, x_stride, t0, stream);
      t0 += 4;
    } else if (left >= 2) {
      launch_set<2>(products, x, x_stride, t0, stream);
      t0 += 2;
    } else {
      launch_set<1>(products, x, x_stride, t0, stream);
      t0 += 1;
    }
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

bool device_available(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why)
      *why = err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err)
                                : "no CUDA device";
    cudaGetLastError();  // clear the sticky error
    return false;
  }
  return true;
}

DeviceMatrix::DeviceMatrix(const WeightMatrix& host) : view_(host) {
  data_bytes_ = host.rows * host.cols * value_bytes_x2(host.type) / 2;
  AGENTRT_CUDA_CHECK(cudaMalloc(&data_, std::max<int64_t>(data_bytes_, 1)));
  AGENTRT_CUDA_CHECK(cudaMemcpy(data_, host.data, data_bytes_, cudaMemcpyHostToDevice));
  view_.data = data_;
  view_.row_offset = 0;
  const int64_t scale_size = host.scale_type == ScaleType::f32 ? 4 : 1;
  const char* hs = static_cast<const char*>(host.scale);
  if (host.type == WeightType::f8_e4m3) {
    // The scale rows covering this slice; the view keeps its offset within the first block.
    const int64_t cb = (host.cols + 127) / 128, first = host.row_offset / 128,
                  last = (host.row_offset + host.rows - 1) / 128;
    scale_bytes_ = (last - first + 1) * cb * scale_size;
    hs += first * cb * scale_size;
    view_.row_offset = host.row_offset % 128;
  } else if (host.type == WeightType::f4_e2m1) {
    scale_bytes_ = host.rows * (host.cols / 32);
    hs += host.row_offset * (host.cols / 32);
  }
  if (scale_bytes_ > 0) {
    AGENTRT_CUDA_CHECK(cudaMalloc(&scale_, scale_bytes_));
    AGENTRT_CUDA_CHECK(cudaMemcpy(scale_, hs, scale_bytes_, cudaMemcpyHostToDevice));
  }
  view_.scale = scale_;
}

DeviceMatrix::~DeviceMatrix() {
  cudaFree(data_);
  if (scale_) cudaFree(scale_);
}

void gemv(const WeightMatrix& w, const float* x, int64_t n, float* y, void* stream, GemvMode mode) {
  gemv_strided(w, x, w.cols, n, y, w.rows, stream, mode);
}

void gemv_strided(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                  int64_t y_stride, void* stream, GemvMode mode) {
  gemv_rows(w, x, x_stride, n, y, y_stride, {}, static_cast<cudaStream_t>(stream), mode);
}

void gemv_grouped(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride,
                  int64_t n, float* y, int64_t y_stride, void* stream, GemvMode mode) {
  if (groups <= 0 || w.rows % groups != 0 || w.cols * groups > x_stride)
    throw std::invalid_argument("gemv_grouped: " + std::to_string(w.rows) + " rows in " +
                                std::to_string(groups) + " groups of " + std::to_string(w.cols) +
                                " columns do not fit an activation row of " +
                                std::to_string(x_stride));
  gemv_rows(w, x, x_stride, n, y, y_stride, {w.rows / groups, w.cols},
            static_cast<cudaStream_t>(stream), mode);
}

void gemv_reference(const WeightMatrix& w, const float* x, int64_t n, float* y, void* stream_ptr) {
  const int64_t total = n * w.rows;
  launch_pdl(gemv_reference_kernel, unsigned((total + 127) / 128), 128, 0,
             static_cast<cudaStream_t>(stream_ptr), w, x, n, y);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

float* device_floats(int64_t count) {
  void* p = nullptr;
  AGENTRT_CUDA_CHECK(cudaMalloc(&p, std::max<int64_t>(count, 1) * 4));
  return static_cast<float*>(p);
}
void free_device(void* p) { cudaFree(p); }
void copy_to_device(void* dst, const void* src, int64_t bytes) {
  AGENTRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, int64_t bytes) {
  AGENTRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_device_to_device(void* dst, const void* src, int64_t bytes) {
  AGENTRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void zero_device(void* p, int64_t bytes) { AGENTRT_CUDA_CHECK(cudaMemset(p, 0, bytes)); }
void synchronize() { AGENTRT_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace agentrt::engine::cuda
