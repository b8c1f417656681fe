// Sliding-window + compressed attention with sinks (engine/attention.h's attend) for every
// (row, head): one block each. Its warps score the keys (one key per warp at a time, the query
// in shared memory), the block takes the softmax with the sink, then each thread sums its output
// channels over the keys. Keys are the values (shared-KV MQA).
#include <stdexcept>
#include <string>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {
namespace {

constexpr int kThreads = 256;

struct KeyList {
  const float* kv;
  const float* entries;
  const int32_t* chosen;
  int64_t first;      // first window position
  int64_t n_window;   // window keys
  int64_t n_entries;  // compressed keys
  __device__ const float* key(int64_t i, int64_t hd) const {
    if (i < n_window) return kv + (first + i) * hd;
    const int64_t e = i - n_window;
    return entries + (chosen ? int64_t(chosen[e]) : e) * hd;
  }
};

__global__ void attend_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t hd,
                              int64_t window, const float* sinks, bool use_entries,
                              const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                              float scale, float* out) {
  extern __shared__ float smem[];  // q [hd], then logits [keys]
  __shared__ float red[32];
  const int64_t t = blockIdx.y, h = blockIdx.x;
  const LayerRow row = rows[t];
  KeyList keys;
  keys.kv = row.kv;
  keys.entries = row.comp_entries;
  keys.first = row.pos - window + 1 > 0 ? row.pos - window + 1 : 0;
  keys.n_window = row.pos - keys.first + 1;
  keys.chosen = chosen ? chosen + t * topk : nullptr;
  keys.n_entries = chosen ? n_chosen[t] : use_entries ? row.visible : 0;
  const int64_t n_keys = keys.n_window + keys.n_entries;

  float* qs = smem;
  float* logits = smem + hd;
  const float* qh = q + (t * heads + h) * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qh[d];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t i = warp; i < n_keys; i += warps) {
    const float* k = keys.key(i, hd);
    float acc = 0.0f;
    for (int64_t d = lane; d < hd; d += 32) acc = fmaf(qs[d], k[d], acc);
    acc = warp_sum(acc);
    if (lane == 0) logits[i] = acc * scale;
  }
  __syncthreads();
  const float sink = sinks[h];
  float mx = sink;
  for (int64_t i = threadIdx.x; i < n_keys; i += blockDim.x) mx = fmaxf(mx, logits[i]);
  mx = block_max(mx, red);
  float denom = 0.0f;
  for (int64_t i = threadIdx.x; i < n_keys; i += blockDim.x)
    denom += (logits[i] = expf(logits[i] - mx));
  denom = block_sum(denom, red) + expf(sink - mx);  // block_sum syncs: logits are visible
  const float inv = 1.0f / denom;
  float* o = out + (t * heads + h) * hd;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n_keys; ++i) acc = fmaf(logits[i], keys.key(i, hd)[d], acc);
    o[d] = acc * inv;
  }
}

}  // namespace

void attend_rows(const float* q, const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t window, const float* sinks, bool use_entries, const int32_t* chosen,
                 const int32_t* n_chosen, int64_t topk, int64_t max_keys, float* out,
                 cudaStream_t stream) {
  if (n <= 0) return;
  const size_t shared = size_t(head_dim + max_keys) * 4;
  if (shared > 200 * 1024)
    throw std::runtime_error("cuda attention: " + std::to_string(max_keys) +
                             " keys per query exceed the shared-memory score buffer");
  if (shared > 48 * 1024)
    AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
        attend_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const dim3 grid{unsigned(heads), unsigned(n)};
  attend_kernel<<<grid, kThreads, shared, stream>>>(q, rows, heads, head_dim, window, sinks,
                                                    use_entries, chosen, n_chosen, topk,
                                                    1.0f / sqrtf(float(head_dim)), out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
