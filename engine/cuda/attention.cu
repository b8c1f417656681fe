// Sliding-window + compressed attention with sinks (engine/attention.h's attend) for every
// (row, head): one block each. The fast kernel splits the keys over the block's warps; each warp
// streams its keys once (a lane holds 4..16 channels of the query and of the key in registers)
// with an online softmax, and the warps' partial (max, sum, output) are merged with the sink at
// the end. The plain kernel (attend_rows_reference) scores all keys into shared memory, takes
// the softmax, then sums each output channel over the keys. Keys are the values (shared-KV MQA).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/attention_keys.cuh"
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kThreads = 256;
// From this many rows on (prefill), attend_rows takes the by-row kernel: enough blocks to fill
// the GPU with each warp walking all of its row's keys; decode batches split the keys over warps.
constexpr int64_t kHeadsKernelRows = 256;

__global__ void attend_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t hd,
                              int64_t window, const float* sinks, bool use_entries,
                              const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                              float scale, float* out) {
  pdl_begin();
  extern __shared__ float smem[];  // q [hd], then logits [keys]
  __shared__ float red[32];
  const int64_t t = blockIdx.y, h = blockIdx.x;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys();

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

constexpr int kFastWarps = 16;

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

template <int J>  // float4 chunks per lane: head_dim <= 128 * J
__global__ void attend_fast_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t hd,
                                   int64_t window, const float* sinks, bool use_entries,
                                   const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                                   float scale, float* out) {
  pdl_begin();
  __shared__ float wm[kFastWarps], wl[kFastWarps];
  __shared__ float4 wacc[kFastWarps][32 * J];
  const int64_t t = blockIdx.y, h = blockIdx.x;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nchunk = int(hd / 4);
  const float4 zero = make_float4(0, 0, 0, 0);
  const float4* qv = reinterpret_cast<const float4*>(q + (t * heads + h) * hd);
  float4 qr[J], acc[J];
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    qr[j] = c < nchunk ? qv[c] : zero;
    acc[j] = zero;
  }
  float m = -INFINITY, l = 0.0f;
  auto load = [&](int64_t i, float4(&kr)[J]) {
    const float4* k = reinterpret_cast<const float4*>(keys.key(i, hd));
    for (int j = 0; j < J; ++j) {
      const int c = lane + 32 * j;
      kr[j] = c < nchunk ? __ldg(k + c) : zero;
    }
  };
  auto consume = [&](const float4(&kr)[J]) {
    float s = 0.0f;
    for (int j = 0; j < J; ++j) s += dot4(qr[j], kr[j]);
    s = warp_sum(s) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    for (int j = 0; j < J; ++j) {
      acc[j].x = acc[j].x * corr + p * kr[j].x;
      acc[j].y = acc[j].y * corr + p * kr[j].y;
      acc[j].z = acc[j].z * corr + p * kr[j].z;
      acc[j].w = acc[j].w * corr + p * kr[j].w;
    }
    m = m_new;
  };
  // Two keys in flight per warp: both loads are issued before either is used.
  for (int64_t i = warp; i < n_keys; i += 2 * kFastWarps) {
    float4 ka[J], kb[J];
    const bool second = i + kFastWarps < n_keys;
    load(i, ka);
    if (second) load(i + kFastWarps, kb);
    consume(ka);
    if (second) consume(kb);
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
  for (int j = 0; j < J; ++j) wacc[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  const float sink = sinks[h];
  float M = sink;
  for (int w = 0; w < kFastWarps; ++w) M = fmaxf(M, wm[w]);
  float L = expf(sink - M);
  float f[kFastWarps];
  for (int w = 0; w < kFastWarps; ++w) {
    f[w] = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - M);
    L += wl[w] * f[w];
  }
  const float inv = 1.0f / L;
  float4* o = reinterpret_cast<float4*>(out + (t * heads + h) * hd);
  for (int c = threadIdx.x; c < nchunk; c += blockDim.x) {
    float4 v = zero;
    for (int w = 0; w < kFastWarps; ++w) {
      const float4 a = wacc[w][c];
      v.x += a.x * f[w];
      v.y += a.y * f[w];
      v.z += a.z * f[w];
      v.w += a.w * f[w];
    }
    v.x *= inv;
    v.y *= inv;
    v.z *= inv;
    v.w *= inv;
    o[c] = v;
  }
}

// Many rows (prefill): one block per row and group of G heads, one warp per head. The block
// loads each tile of keys into shared memory once for its G heads (keys are shared by every
// head), and each warp runs an online softmax over the tile with its head's query in registers.
constexpr int kTileKeys = 16;

template <int J>  // float4 chunks per lane: head_dim <= 128 * J
__global__ void attend_heads_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t hd,
                                    int64_t window, const float* sinks, bool use_entries,
                                    const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                                    float scale, float* out) {
  pdl_begin();
  __shared__ float4 tile[kTileKeys][32 * J];
  const int G = int(blockDim.x) >> 5;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = blockIdx.y, h = int64_t(blockIdx.x) * G + warp;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys();
  const int nchunk = int(hd / 4);
  const float4 zero = make_float4(0, 0, 0, 0);
  const float4* qv = reinterpret_cast<const float4*>(q + (t * heads + h) * hd);
  float4 qr[J], acc[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    qr[j] = c < nchunk ? qv[c] : zero;
    qr[j].x *= scale, qr[j].y *= scale, qr[j].z *= scale, qr[j].w *= scale;
    acc[j] = zero;
  }
  // The sink only adds exp(sink - max) to the denominator: start the softmax from it.
  float m = sinks[h], l = 1.0f;
  for (int64_t base = 0; base < n_keys; base += kTileKeys) {
    const int count = int(min(int64_t(kTileKeys), n_keys - base));
    __syncthreads();  // the previous tile is consumed
    for (int idx = threadIdx.x; idx < count * nchunk; idx += blockDim.x) {
      const int i = idx / nchunk, c = idx - i * nchunk;
      tile[i][c] = __ldg(reinterpret_cast<const float4*>(keys.key(base + i, hd)) + c);
    }
    __syncthreads();
    for (int i = 0; i < count; ++i) {
      float4 kr[J];
      float s = 0.0f;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int c = lane + 32 * j;
        kr[j] = c < nchunk ? tile[i][c] : zero;
        s += dot4(qr[j], kr[j]);
      }
      s = warp_sum(s);
      if (s > m) {
        const float corr = expf(m - s);
        l *= corr;
#pragma unroll
        for (int j = 0; j < J; ++j)
          acc[j].x *= corr, acc[j].y *= corr, acc[j].z *= corr, acc[j].w *= corr;
        m = s;
      }
      const float p = expf(s - m);
      l += p;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        acc[j].x = fmaf(p, kr[j].x, acc[j].x);
        acc[j].y = fmaf(p, kr[j].y, acc[j].y);
        acc[j].z = fmaf(p, kr[j].z, acc[j].z);
        acc[j].w = fmaf(p, kr[j].w, acc[j].w);
      }
    }
  }
  const float inv = 1.0f / l;
  float4* o = reinterpret_cast<float4*>(out + (t * heads + h) * hd);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < nchunk)
      o[c] = make_float4(acc[j].x * inv, acc[j].y * inv, acc[j].z * inv, acc[j].w * inv);
  }
}

}  // namespace

void attend_rows(const float* q, const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t window, const float* sinks, bool use_entries, const int32_t* chosen,
                 const int32_t* n_chosen, int64_t topk, int64_t max_keys, float* out,
                 cudaStream_t stream) {
  if (n <= 0) return;
  if (head_dim % 4 != 0 || head_dim > 512) {
    attend_rows_reference(q, rows, n, heads, head_dim, window, sinks, use_entries, chosen, n_chosen,
                          topk, max_keys, out, stream);
    return;
  }
  if (n >= kHeadsKernelRows) {
    attend_rows_by_row(q, rows, n, heads, head_dim, window, sinks, use_entries, chosen, n_chosen,
                       topk, out, stream);
    return;
  }
  const dim3 grid{unsigned(heads), unsigned(n)};
  const float scale = 1.0f / sqrtf(float(head_dim));
  const int64_t J = (head_dim + 127) / 128;
  auto launch = [&](auto kernel) {
    launch_pdl(kernel, grid, kFastWarps * 32, 0, stream, q, rows, heads, head_dim, window, sinks,
               use_entries, chosen, n_chosen, topk, scale, out);
  };
  if (J <= 1)
    launch(attend_fast_kernel<1>);
  else if (J == 2)
    launch(attend_fast_kernel<2>);
  else
    launch(attend_fast_kernel<4>);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void attend_rows_by_row(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                        int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                        const int32_t* chosen, const int32_t* n_chosen, int64_t topk, float* out,
                        cudaStream_t stream) {
  if (n <= 0) return;
  if (head_dim % 4 != 0 || head_dim > 512)
    throw std::invalid_argument("cuda attention: head_dim " + std::to_string(head_dim) +
                                " is not a multiple of 4 up to 512");
  int G = 8;  // heads per block: the largest of 8, 4, 2, 1 dividing heads
  while (heads % G != 0) G /= 2;
  const float scale = 1.0f / sqrtf(float(head_dim));
  const int64_t J = (head_dim + 127) / 128;
  constexpr int64_t kMaxGridRows = 65535;
  for (int64_t r0 = 0; r0 < n; r0 += kMaxGridRows) {
    const int64_t m = std::min(kMaxGridRows, n - r0);
    const dim3 grid{unsigned(heads / G), unsigned(m)};
    const float* qs = q + r0 * heads * head_dim;
    float* os = out + r0 * heads * head_dim;
    const int32_t* cs = chosen ? chosen + r0 * topk : nullptr;
    const int32_t* ns = n_chosen ? n_chosen + r0 : nullptr;
    auto launch = [&](auto kernel) {
      launch_pdl(kernel, grid, unsigned(32 * G), 0, stream, qs, rows + r0, heads, head_dim, window,
                 sinks, use_entries, cs, ns, topk, scale, os);
    };
    if (J <= 1)
      launch(attend_heads_kernel<1>);
    else if (J == 2)
      launch(attend_heads_kernel<2>);
    else
      launch(attend_heads_kernel<4>);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

void attend_rows_reference(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                           int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                           const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                           int64_t max_keys, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  const size_t shared = size_t(head_dim + max_keys) * 4;
  if (shared > 200 * 1024)
    throw std::runtime_error("cuda attention: " + std::to_string(max_keys) +
                             " keys per query exceed the shared-memory score buffer");
  if (shared > 48 * 1024)
    AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
        attend_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const dim3 grid{unsigned(heads), unsigned(n)};
  launch_pdl(attend_kernel, grid, kThreads, shared, stream, q, rows, heads, head_dim, window, sinks,
             use_entries, chosen, n_chosen, topk, 1.0f / sqrtf(float(head_dim)), out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
