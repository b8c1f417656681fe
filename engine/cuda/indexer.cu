// The Lightning Indexer on the GPU (engine/indexer.h): per row, scores of its visible compressed
// entries (sum over heads of weight * relu(q . k) / sqrt(dim)), then an exact top-k by radix
// select on the score bits (8 bits per pass) — ties broken towards the lower index, as the CPU's
// partial_sort comparator does — written out in ascending index order.
#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kScoreWarps = 8;
constexpr int kEntriesPerBlock = 64;
constexpr int kSelectThreads = 1024;

__global__ void scores_kernel(const float* q, const float* head_weights, float weight_scale,
                              const LayerRow* rows, int64_t heads, int64_t hd, float* scores,
                              int64_t stride) {
  pdl_begin();
  extern __shared__ float smem[];  // q [heads][hd + 1], keys [warps][hd]
  const int64_t t = blockIdx.y;
  const LayerRow row = rows[t];
  const int64_t e0 = int64_t(blockIdx.x) * kEntriesPerBlock;
  if (e0 >= row.visible) return;
  const int64_t qs_stride = hd + 1;  // padding: lanes read different heads' rows
  float* qs = smem;
  float* kbuf = smem + heads * qs_stride;
  for (int64_t i = threadIdx.x; i < heads * hd; i += blockDim.x)
    qs[(i / hd) * qs_stride + i % hd] = q[t * heads * hd + i];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* k = kbuf + warp * hd;
  const float scale = rsqrtf(float(hd));
  const float* w = head_weights + t * heads;
  const int64_t e1 = min(e0 + kEntriesPerBlock, int64_t(row.visible));
  for (int64_t e = e0 + warp; e < e1; e += kScoreWarps) {
    const float* src = row.idx_entries + e * hd;
    for (int64_t d = lane; d < hd; d += 32) k[d] = src[d];
    __syncwarp();
    float acc = 0.0f;
    for (int64_t h = lane; h < heads; h += 32) {
      const float* qh = qs + h * qs_stride;
      float dot = 0.0f;
      for (int64_t d = 0; d < hd; ++d) dot = fmaf(qh[d], k[d], dot);
      acc += w[h] * weight_scale * (fmaxf(dot, 0.0f) * scale);
    }
    acc = warp_sum(acc);
    if (lane == 0) scores[t * stride + e] = acc;
    __syncwarp();
  }
}

// The same scores with one warp per (row, entry), for head_dim 128 and at most 64 heads (the
// checkpoint's shape): lane l holds dims [4l, 4l + 4) of the entry and every head's partial dot
// over them, read straight from q (L1); a transposing butterfly then leaves lane l the full dots
// of heads 2l and 2l + 1. Decode has one row and few entries (256 at 1K context), so the
// per-block kernel above ran on 4 blocks with a 128-long serial dot per head.
constexpr int kWarpScoreHeads = 64;
constexpr int kWarpScoreDim = 128;
constexpr int kWarpScoreWarps = 8;

// One step of the reduce-scatter over the warp: of the C values each lane holds, the lanes with
// bit m set keep the upper half and send the lower half to their partner (lane ^ m), which does
// the opposite; after the step with C = 64 / 2^s, lane bit (4 - s) says which half it holds.
template <int C>
__device__ __forceinline__ void halve_heads(float (&d)[kWarpScoreHeads], int lane) {
  constexpr int m = C / 4;  // 16, 8, 4, 2, 1 for C = 64 .. 4
  const bool upper = (lane & m) != 0;
#pragma unroll
  for (int i = 0; i < C / 2; ++i) {
    const float send = upper ? d[i] : d[i + C / 2];
    const float keep = upper ? d[i + C / 2] : d[i];
    d[i] = keep + __shfl_xor_sync(0xffffffffu, send, m);
  }
}

__device__ __forceinline__ void score_entry(const float* q, const float* head_weights,
                                            float weight_scale, const LayerRow& row, int64_t t,
                                            int64_t e, int64_t heads, int lane, float* scores,
                                            int64_t stride) {
  const float4 k = reinterpret_cast<const float4*>(row.idx_entries + e * kWarpScoreDim)[lane];
  const float4* qt = reinterpret_cast<const float4*>(q + t * heads * kWarpScoreDim) + lane;
  float d[kWarpScoreHeads];
#pragma unroll
  for (int h = 0; h < kWarpScoreHeads; ++h) {
    d[h] = 0.0f;
    if (h < heads) {
      const float4 a = __ldg(qt + h * (kWarpScoreDim / 4));
      d[h] = a.x * k.x + a.y * k.y + a.z * k.z + a.w * k.w;
    }
  }
  halve_heads<kWarpScoreHeads>(d, lane);
  halve_heads<kWarpScoreHeads / 2>(d, lane);
  halve_heads<kWarpScoreHeads / 4>(d, lane);
  halve_heads<kWarpScoreHeads / 8>(d, lane);
  halve_heads<kWarpScoreHeads / 16>(d, lane);
  const float scale = rsqrtf(float(kWarpScoreDim));
  const float* w = head_weights + t * heads;
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int h = 2 * lane + j;
    if (h < heads) acc += w[h] * weight_scale * (fmaxf(d[j], 0.0f) * scale);
  }
  acc = warp_sum(acc);
  if (lane == 0) scores[t * stride + e] = acc;
}

__global__ void scores_warp_kernel(const float* q, const float* head_weights, float weight_scale,
                                   const LayerRow* rows, int64_t heads, float* scores,
                                   int64_t stride) {
  pdl_begin();
  const int lane = int(threadIdx.x & 31);
  const int64_t t = blockIdx.y;
  const LayerRow row = rows[t];
  for (int64_t e = int64_t(blockIdx.x) * kWarpScoreWarps + (threadIdx.x >> 5); e < row.visible;
       e += int64_t(gridDim.x) * kWarpScoreWarps)
    score_entry(q, head_weights, weight_scale, row, t, e, heads, lane, scores, stride);
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ int block_count(int v, int* shared) {
  return int(block_sum(float(v), reinterpret_cast<float*>(shared)));  // counts < 2^24: exact
}

__global__ void select_kernel(const float* scores, int64_t stride, const LayerRow* rows,
                              int64_t topk, int32_t* chosen, int32_t* n_chosen) {
  pdl_begin();
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int red[32];
  __shared__ int running[2];
  const int64_t t = blockIdx.x;
  const int64_t visible = rows[t].visible;
  int32_t* out = chosen + t * topk;
  if (visible <= topk) {
    for (int64_t i = threadIdx.x; i < visible; i += blockDim.x) out[i] = int32_t(i);
    if (threadIdx.x == 0) n_chosen[t] = int32_t(visible);
    return;
  }
  const float* s = scores + t * stride;
  // T = the topk-th largest key, one 8-bit digit per pass: a histogram of the digit among the
  // keys that share the digits found so far, then the bin where the wanted rank falls.
  __shared__ int hist[256];
  __shared__ uint32_t found[2];  // prefix, wanted rank within it (1 = largest)
  uint32_t prefix = 0;
  int want = int(topk);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const uint32_t high = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
    for (int64_t i = threadIdx.x; i < visible; i += blockDim.x) {
      const uint32_t key = order_key(s[i]);
      if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, d = 255;
      for (; d > 0 && above + hist[d] < want; --d) above += hist[d];
      found[0] = prefix | (uint32_t(d) << shift);
      found[1] = uint32_t(want - above);
    }
    __syncthreads();
    prefix = found[0];
    want = int(found[1]);
  }
  const uint32_t T = prefix;
  int gt = 0;
  for (int64_t i = threadIdx.x; i < visible; i += blockDim.x) gt += order_key(s[i]) > T;
  const int need = int(topk) - block_count(gt, red);  // ties at T to take, lowest index first
  if (threadIdx.x == 0) running[0] = running[1] = 0;  // ties seen, outputs written
  __syncthreads();
  for (int64_t base = 0; base < visible; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const uint32_t key = i < visible ? order_key(s[i]) : 0;
    const int is_gt = i < visible && key > T;
    const int is_eq = i < visible && key == T;
    int tie_before, ties;
    Scan(scan_tmp).ExclusiveSum(is_eq, tie_before, ties);
    __syncthreads();
    const int take = is_gt || (is_eq && running[0] + tie_before < need);
    int out_before, taken;
    Scan(scan_tmp).ExclusiveSum(take, out_before, taken);
    if (take) out[running[1] + out_before] = int32_t(i);
    __syncthreads();
    if (threadIdx.x == 0) {
      running[0] += ties;
      running[1] += taken;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) n_chosen[t] = int32_t(topk);
}

}  // namespace

void indexer_scores(const float* q, const float* head_weights, float weight_scale,
                    const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                    int64_t max_visible, float* scores, int64_t stride, cudaStream_t stream) {
  if (n <= 0 || max_visible <= 0) return;
  if (head_dim == kWarpScoreDim && heads <= kWarpScoreHeads) {
    // Graph-captured decode sizes max_visible by the cache's capacity, far above what the rows
    // see: a bounded grid whose warps stride over the entries.
    const int64_t blocks = std::min<int64_t>((max_visible + kWarpScoreWarps - 1) / kWarpScoreWarps,
                                             std::max<int64_t>(1, 1024 / n));
    const dim3 grid{unsigned(blocks), unsigned(n)};
    launch_pdl(scores_warp_kernel, grid, kWarpScoreWarps * 32, 0, stream, q, head_weights,
               weight_scale, rows, heads, scores, stride);
    return;
  }
  const size_t shared = size_t(heads * (head_dim + 1) + kScoreWarps * head_dim) * 4;
  if (shared > 48 * 1024)
    AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
        scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const dim3 grid(unsigned((max_visible + kEntriesPerBlock - 1) / kEntriesPerBlock), unsigned(n));
  launch_pdl(scores_kernel, grid, kScoreWarps * 32, shared, stream, q, head_weights, weight_scale,
             rows, heads, head_dim, scores, stride);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void select_topk(const float* scores, int64_t stride, const LayerRow* rows, int64_t n, int64_t topk,
                 int32_t* chosen, int32_t* n_chosen, cudaStream_t stream) {
  if (n <= 0) return;
  launch_pdl(select_kernel, unsigned(n), kSelectThreads, 0, stream, scores, stride, rows, topk,
             chosen, n_chosen);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
