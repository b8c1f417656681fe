#include "engine/cuda/linear.h"

#include <cuda_bf16.h>

#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed with status " +
                             std::to_string(int(s)));
}

__global__ void dequantize_kernel(WeightMatrix w, void* out, bool to_bf16) {
  const int64_t total = w.rows * w.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = decode_one(w, i / w.cols, i % w.cols);
    if (to_bf16)
      static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16(v);
    else
      static_cast<float*>(out)[i] = v;
  }
}

__global__ void rows_to_bf16(const float* x, int64_t stride, int64_t n, int64_t cols,
                             __nv_bfloat16* out) {
  const int64_t total = n * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(x[(i / cols) * stride + i % cols]);
}

unsigned grid_for(int64_t total) {
  return unsigned(std::min<int64_t>((total + 255) / 256, 65536));
}

}  // namespace

void dequantize(const WeightMatrix& w, void* out, bool to_bf16, cudaStream_t stream) {
  dequantize_kernel<<<grid_for(w.rows * w.cols), 256, 0, stream>>>(w, out, to_bf16);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

LinearRunner::LinearRunner(GemmPrecision precision, int64_t gemv_max_rows)
    : precision_(precision), gemv_max_rows_(gemv_max_rows) {
  check_cublas(cublasCreate(&handle_), "cublasCreate");
}

LinearRunner::~LinearRunner() {
  if (handle_) cublasDestroy(handle_);
}

void LinearRunner::run(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n,
                       float* y, int64_t y_stride, cudaStream_t stream) {
  if (n <= 0) return;
  if (n <= gemv_max_rows_) {
    gemv_strided(w, x, x_stride, n, y, y_stride, stream);
    return;
  }
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: C (rows x n, ld y_stride) = A^T (A: cols x rows, ld cols) * B (cols x n).
  if (precision_ == GemmPrecision::f32) {
    const float* wf = static_cast<const float*>(w.data);
    if (w.type != WeightType::f32) {
      weight_scratch_.reserve(w.rows * w.cols * 4);
      dequantize(w, weight_scratch_.get(), false, stream);
      wf = weight_scratch_.as<float>();
    }
    check_cublas(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols),
                             &one, wf, int(w.cols), x, int(x_stride), &zero, y, int(y_stride)),
                 "cublasSgemm");
    return;
  }
  const void* wb = w.data;
  if (w.type != WeightType::bf16) {
    weight_scratch_.reserve(w.rows * w.cols * 2);
    dequantize(w, weight_scratch_.get(), true, stream);
    wb = weight_scratch_.get();
  }
  act_scratch_.reserve(n * w.cols * 2);
  rows_to_bf16<<<grid_for(n * w.cols), 256, 0, stream>>>(x, x_stride, n, w.cols,
                                                         act_scratch_.as<__nv_bfloat16>());
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  check_cublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols),
                            &one, wb, CUDA_R_16BF, int(w.cols), act_scratch_.get(), CUDA_R_16BF,
                            int(w.cols), &zero, y, CUDA_R_32F, int(y_stride), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx(bf16)");
}

}  // namespace agentrt::engine::cuda
