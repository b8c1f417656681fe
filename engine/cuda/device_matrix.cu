#include <algorithm>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <int NT>
__global__ void gemv_kernel(WeightMatrix w, const float* __restrict__ x, int64_t x_stride,
                            float* __restrict__ y, int64_t y_stride) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= w.rows) return;
  const float* xs[NT];
  for (int t = 0; t < NT; ++t) xs[t] = x + t * x_stride;
  float acc[NT];
  warp_row_dot<NT>(w, row, xs, acc);
  if (lane == 0)
    for (int t = 0; t < NT; ++t) y[t * y_stride + row] = acc[t];
}

__global__ void gemv_reference_kernel(WeightMatrix w, const float* x, int64_t n, float* y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * w.rows) return;
  const int64_t t = i / w.rows, row = i % w.rows;
  double s = 0.0;
  for (int64_t c = 0; c < w.cols; ++c) s += double(decode_one(w, row, c)) * x[t * w.cols + c];
  y[t * w.rows + row] = float(s);
}

template <int NT>
void launch(const WeightMatrix& w, const float* x, int64_t xs, float* y, int64_t ys,
            cudaStream_t stream) {
  const unsigned blocks = unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  gemv_kernel<NT><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, x, xs, y, ys);
}

}  // namespace

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

void gemv(const WeightMatrix& w, const float* x, int64_t n, float* y, void* stream) {
  gemv_strided(w, x, w.cols, n, y, w.rows, stream);
}

void gemv_strided(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                  int64_t y_stride, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t left = n - t0;
    const float* xt = x + t0 * x_stride;
    float* yt = y + t0 * y_stride;
    // Whole chunks of 8, then 4/2/1: every token set reads the matrix once.
    if (left >= 8) {
      launch<8>(w, xt, x_stride, yt, y_stride, stream);
      t0 += 8;
    } else if (left >= 4) {
      launch<4>(w, xt, x_stride, yt, y_stride, stream);
      t0 += 4;
    } else if (left >= 2) {
      launch<2>(w, xt, x_stride, yt, y_stride, stream);
      t0 += 2;
    } else {
      launch<1>(w, xt, x_stride, yt, y_stride, stream);
      t0 += 1;
    }
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void gemv_reference(const WeightMatrix& w, const float* x, int64_t n, float* y, void* stream_ptr) {
  const int64_t total = n * w.rows;
  gemv_reference_kernel<<<unsigned((total + 127) / 128), 128, 0,
                          static_cast<cudaStream_t>(stream_ptr)>>>(w, x, n, y);
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
