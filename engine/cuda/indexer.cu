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
                              int64_t stride, int64_t unscored) {
  pdl_begin();
  extern __shared__ float smem[];  // q [heads][hd + 1], keys [warps][hd]
  const int64_t t = blockIdx.y;
  const LayerRow row = rows[t];
  const int64_t e0 = int64_t(blockIdx.x) * kEntriesPerBlock;
  if (e0 >= row.visible || row.visible <= unscored) return;
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
                                   int64_t stride, int64_t unscored) {
  pdl_begin();
  const int lane = int(threadIdx.x & 31);
  const int64_t t = blockIdx.y;
  const LayerRow row = rows[t];
  if (row.visible <= unscored) return;
  for (int64_t e = int64_t(blockIdx.x) * kWarpScoreWarps + (threadIdx.x >> 5); e < row.visible;
       e += int64_t(gridDim.x) * kWarpScoreWarps)
    score_entry(q, head_weights, weight_scale, row, t, e, heads, lane, scores, stride);
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Warp 0 finds the bin of hist (256 bins, highest digit first) where the wanted rank falls: lane l
// holds bins 255 - 8l .. 248 - 8l, a warp scan gives the counts above each lane's bins, and the
// lane whose bins hold the rank walks them. The same bin and rank as walking all 256 bins from the
// top in one thread (which, for a 16K-entry row, took a few microseconds a pass).
__device__ void find_bin(const int* hist, int shift, uint32_t prefix, int want, uint32_t* found) {
  const int lane = int(threadIdx.x);
  int c[8], mine = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) mine += (c[j] = hist[255 - 8 * lane - j]);
  int upto = mine;  // inclusive: bins of lanes 0..lane
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int o = __shfl_up_sync(0xffffffffu, upto, off);
    if (lane >= off) upto += o;
  }
  const int above0 = upto - mine;
  const unsigned hit = __ballot_sync(0xffffffffu, above0 < want && want <= upto);
  if (hit == 0) {  // counts short of the rank (cannot happen): bin 0, as the one-thread walk
    if (lane == 31) {
      found[0] = prefix;
      found[1] = uint32_t(want - (upto - c[7]));
    }
    return;
  }
  if (lane != __ffs(hit) - 1) return;
  int above = above0, d = 255 - 8 * lane;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (above + c[j] >= want) {
      d = 255 - 8 * lane - j;
      break;
    }
    above += c[j];
  }
  found[0] = prefix | (uint32_t(d) << shift);
  found[1] = uint32_t(want - above);
}

__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const float* scores, int64_t stride, const LayerRow* rows, int64_t topk,
                  int32_t* chosen, int32_t* n_chosen) {
  pdl_begin();
  using Scan = cub::BlockScan<long long, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
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
    if (threadIdx.x < 32) find_bin(hist, shift, prefix, want, found);
    __syncthreads();
    prefix = found[0];
    want = int(found[1]);
  }
  const uint32_t T = prefix;
  // Each thread takes a contiguous run of entries: it counts its keys above T and equal to T,
  // one block scan of both counts (packed: each < 2^31) gives every run its place in the output
  // and its ties before it, and each run writes its chosen entries in index order. The ties at T
  // taken are the lowest-indexed ones, `need` of them. (Before: a block-wide step per 1,024
  // entries, two scans and three barriers each.)
  const int64_t per = (visible + kSelectThreads - 1) / kSelectThreads;
  const int64_t r0 = min(visible, int64_t(threadIdx.x) * per), r1 = min(visible, r0 + per);
  long long gt = 0, eq = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const uint32_t key = order_key(s[i]);
    gt += key > T;
    eq += key == T;
  }
  long long before, total;
  Scan(scan_tmp).ExclusiveSum(gt | (eq << 32), before, total);
  const long long need = topk - (total & 0xffffffffll);  // ties at T to take
  const long long gt_before = before & 0xffffffffll, eq_before = before >> 32;
  long long at = gt_before + min(eq_before, need), ties = eq_before;
  for (int64_t i = r0; i < r1; ++i) {
    const uint32_t key = order_key(s[i]);
    if (key > T || (key == T && ties++ < need)) out[at++] = int32_t(i);
  }
  if (threadIdx.x == 0) n_chosen[t] = int32_t(topk);
}

}  // namespace

void indexer_scores(const float* q, const float* head_weights, float weight_scale,
                    const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                    int64_t max_visible, float* scores, int64_t stride, cudaStream_t stream,
                    int64_t unscored) {
  if (n <= 0 || max_visible <= unscored) return;
  if (head_dim == kWarpScoreDim && heads <= kWarpScoreHeads) {
    // Graph-captured decode sizes max_visible by the cache's capacity, far above what the rows
    // see: a bounded grid whose warps stride over the entries.
    const int64_t blocks = std::min<int64_t>((max_visible + kWarpScoreWarps - 1) / kWarpScoreWarps,
                                             std::max<int64_t>(1, 1024 / n));
    const dim3 grid{unsigned(blocks), unsigned(n)};
    launch_pdl(scores_warp_kernel, grid, kWarpScoreWarps * 32, 0, stream, q, head_weights,
               weight_scale, rows, heads, scores, stride, unscored);
    return;
  }
  const size_t shared = size_t(heads * (head_dim + 1) + kScoreWarps * head_dim) * 4;
  if (shared > 48 * 1024)
    AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
        scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const dim3 grid(unsigned((max_visible + kEntriesPerBlock - 1) / kEntriesPerBlock), unsigned(n));
  launch_pdl(scores_kernel, grid, kScoreWarps * 32, shared, stream, q, head_weights, weight_scale,
             rows, heads, head_dim, scores, stride, unscored);
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
