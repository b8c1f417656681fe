#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/indexer_gemm.h"

namespace agentrt::engine::cuda {
namespace {

// scores[t][e] = sum_h w[t][h] * weight_scale * relu(products[t - r0][h][e]) * scale for each
// entry e the row sees (scale = 1/sqrt(head_dim)); products: [rows][heads][entries].
__global__ void head_sum_kernel(const float* products, int64_t entries, const float* head_weights,
                                float weight_scale, int64_t head_dim, const LayerRow* rows,
                                int64_t heads, int64_t r0, float* scores, int64_t stride) {
  const float scale = rsqrtf(float(head_dim));  // as indexer.cu
  const int64_t t = r0 + blockIdx.y;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= rows[t].visible) return;
  const float* p = products + int64_t(blockIdx.y) * heads * entries + e;
  const float* w = head_weights + t * heads;
  float acc = 0.0f;
  for (int64_t h = 0; h < heads; ++h)
    acc += w[h] * weight_scale * (fmaxf(p[h * entries], 0.0f) * scale);
  scores[t * stride + e] = acc;
}

}  // namespace

IndexerScoresGemm::IndexerScoresGemm(int64_t slice_bytes) : slice_bytes_(slice_bytes) {
  check_cublas(cublasCreate(&handle_), "cublasCreate");
}

IndexerScoresGemm::~IndexerScoresGemm() {
  if (handle_) cublasDestroy(handle_);
}

void IndexerScoresGemm::run(const float* q, const float* head_weights, float weight_scale,
                            const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                            const float* entries, int64_t max_visible, float* scores,
                            int64_t stride, cudaStream_t stream) {
  if (n <= 0 || max_visible <= 0) return;
  const int64_t per_row = heads * max_visible * 4;
  const int64_t slice = std::clamp<int64_t>(slice_bytes_ / per_row, 1, std::min<int64_t>(n, 65535));
  products_.reserve(slice * per_row);
  float* products = products_.as<float>();
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  for (int64_t r0 = 0; r0 < n; r0 += slice) {
    const int64_t m = std::min(slice, n - r0);
    // Column-major: products (max_visible x m * heads) = entries^T-view (max_visible x head_dim)
    // times q (head_dim x m * heads); row-major that is [m][heads][max_visible].
    check_cublas(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(max_visible), int(m * heads),
                             int(head_dim), &one, entries, int(head_dim), q + r0 * heads * head_dim,
                             int(head_dim), &zero, products, int(max_visible)),
                 "cublasSgemm (indexer scores)");
    const dim3 grid(unsigned((max_visible + 255) / 256), unsigned(m));
    head_sum_kernel<<<grid, 256, 0, stream>>>(products, max_visible, head_weights, weight_scale,
                                              head_dim, rows, heads, r0, scores, stride);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace agentrt::engine::cuda
