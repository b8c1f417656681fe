// The Lightning Indexer's prefill scores on tensor cores, fused: for each row t and visible
// entry e, sum_h w[t][h] * relu(q[t][h] . k[e]) without writing the per-head products
// (indexer_gemm.cu's cuBLAS path writes them: rows x heads x entries floats, which at 64K rows
// is most of its time). One block per 4 rows and a chunk of entries; each warp holds one row's
// 16 heads of the query as A fragments in registers for the whole chunk, each 64-entry tile is
// converted to bf16 in shared memory once for the block, and the heads are summed through warp
// shuffles and a small shared buffer. split = true: float32-like products (bf16 hi + lo, three
// products), else plain bf16 (the checkpoint's own indexer runs in FP8).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kHeads = 64, kDim = 128;
constexpr int kRowsPerBlock = 4;
constexpr int kWarps = kRowsPerBlock * (kHeads / 16);
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 64;          // entries per shared tile
constexpr int kChunkTiles = 8;     // tiles per block
constexpr int kStride = kDim + 8;  // bf16 per shared row: conflict-free fragment loads
constexpr int kLoads = kTile * (kDim / 4) / kThreads;

// Staging tile (float32), head sums, then the bf16 tile (one or two parts).
size_t shared_bytes(bool split) {
  return size_t(kTile) * kDim * 4 + size_t(kRowsPerBlock) * (kHeads / 16) * kTile * 4 +
         size_t(split ? 2 : 1) * kTile * kStride * 2;
}

// The query's A fragments of a warp's row (16 heads, 8 steps of 16 channels) and that row's
// relu weights for heads g and g + 8, scaled as indexer.cu.
template <bool kSplit>
struct RowQuery {
  static constexpr int kParts = kSplit ? 2 : 1;
  uint32_t a[kDim / 16][kParts][4];
  float w0, w1;

  __device__ __forceinline__ RowQuery(const float* q, const float* head_weights, float weight_scale,
                                      int64_t t, bool row_live, int ht, int g, int c) {
    const float* qh = q + ((row_live ? t : 0) * kHeads + 16 * ht + g) * kDim + 2 * c;
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      const float2 x[4] = {*reinterpret_cast<const float2*>(qh + 16 * kk),
                           *reinterpret_cast<const float2*>(qh + 8 * kDim + 16 * kk),
                           *reinterpret_cast<const float2*>(qh + 16 * kk + 8),
                           *reinterpret_cast<const float2*>(qh + 8 * kDim + 16 * kk + 8)};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (kSplit) {
          const Bf16Parts p = split_bf16(x[i].x, x[i].y);
          a[kk][0][i] = p.hi;
          a[kk][kParts - 1][i] = p.lo;
        } else {
          a[kk][0][i] = pack_bf16(x[i].x, x[i].y);
        }
      }
    }
    const float scale = rsqrtf(float(kDim)) * weight_scale;  // as indexer.cu
    const float* w = head_weights + (row_live ? t : 0) * kHeads + 16 * ht + g;
    w0 = row_live ? w[0] * scale : 0.0f;
    w1 = row_live ? w[8] * scale : 0.0f;
  }
};

// One bf16 tile of entries (tile: [parts][kTile][kStride], its first entry `base`): each warp's
// row against the tile's entries over its 16 heads, relu-weighted and summed over them (warp
// shuffles, then the four warps of a row through head_tile_sums after a __syncthreads), and the
// block's rows' scores of the entries they see written. Both kernels below run exactly this.
template <bool kSplit>
__device__ __forceinline__ void score_tile(const RowQuery<kSplit>& rq, const uint16_t* tile,
                                           float (*head_tile_sums)[kHeads / 16][kTile],
                                           int64_t base, const LayerRow* rows, int64_t n,
                                           int64_t t0, int rw, int ht, int g, int c, float* scores,
                                           int64_t stride) {
  constexpr int kParts = RowQuery<kSplit>::kParts;
  constexpr int64_t kPlane = int64_t(kTile) * kStride;
  float s[kTile / 8][4] = {};
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk)
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) {
      const uint16_t* kb = tile + (8 * j + g) * kStride + 16 * kk + 2 * c;
      const uint32_t b0 = ld_bf16x2(kb), b1 = ld_bf16x2(kb + 8);
      mma_bf16_16x8x16(s[j], rq.a[kk][0], b0, b1);
      if constexpr (kSplit) {
        mma_bf16_16x8x16(s[j], rq.a[kk][0], ld_bf16x2(kb + kPlane), ld_bf16x2(kb + kPlane + 8));
        mma_bf16_16x8x16(s[j], rq.a[kk][kParts - 1], b0, b1);
      }
    }
    // Sum over the warp's 16 heads: two per lane, then across the 8 lanes of one c.
#pragma unroll
  for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float x = rq.w0 * fmaxf(s[j][e], 0.0f) + rq.w1 * fmaxf(s[j][2 + e], 0.0f);
      x += __shfl_xor_sync(0xffffffffu, x, 4);
      x += __shfl_xor_sync(0xffffffffu, x, 8);
      x += __shfl_xor_sync(0xffffffffu, x, 16);
      if (g == 0) head_tile_sums[rw][ht][8 * j + 2 * c + e] = x;
    }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRowsPerBlock * kTile; idx += kThreads) {
    const int r = idx / kTile, i = idx % kTile;
    const int64_t tr = t0 + r, e = base + i;
    if (tr >= n || e >= rows[tr].visible) continue;
    float sum = 0.0f;
#pragma unroll
    for (int h = 0; h < kHeads / 16; ++h) sum += head_tile_sums[r][h][i];
    scores[tr * stride + e] = sum;
  }
}

// The block's rows' largest visible count (0 where the rows are past n).
__device__ __forceinline__ int64_t block_visible(const LayerRow* rows, int64_t n, int64_t t0) {
  int64_t visible_max = 0;
  for (int r = 0; r < kRowsPerBlock; ++r)
    if (t0 + r < n) visible_max = std::max<int64_t>(visible_max, rows[t0 + r].visible);
  return visible_max;
}

template <bool kSplit>
__global__ void __launch_bounds__(kThreads, 1)
    indexer_mma_kernel(const float* q, const float* head_weights, float weight_scale,
                       const LayerRow* rows, int64_t n, const float* entries, float* scores,
                       int64_t stride) {
  constexpr int64_t kPlane = int64_t(kTile) * kStride;
  extern __shared__ __align__(16) float shared[];
  float4* staging = reinterpret_cast<float4*>(shared);  // [kTile][kDim / 4]: the next tile
  auto head_tile_sums = reinterpret_cast<float(*)[kHeads / 16][kTile]>(shared + kTile * kDim);
  uint16_t* tile =
      reinterpret_cast<uint16_t*>(shared + kTile * kDim + kRowsPerBlock * kHeads / 16 * kTile);
  pdl_begin();
  const int64_t t0 = int64_t(blockIdx.y) * kRowsPerBlock;
  const int64_t visible_max = block_visible(rows, n, t0);
  const int64_t chunk = int64_t(blockIdx.x) * kChunkTiles * kTile;
  if (chunk >= visible_max) return;  // the whole block: no row sees these entries
  const int64_t chunk_end = std::min<int64_t>(chunk + kChunkTiles * kTile, visible_max);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int rw = warp / (kHeads / 16), ht = warp % (kHeads / 16);
  const RowQuery<kSplit> rq(q, head_weights, weight_scale, t0 + rw, t0 + rw < n, ht, g, c);

  // The next tile's entries are copied in (cp.async) while the block computes on this one;
  // entries past the last visible are zeros.
  auto fetch = [&](int64_t base) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int idx = threadIdx.x + u * kThreads, i = idx / (kDim / 4);
      if (base + i < visible_max)
        cp_async_16(staging + idx, reinterpret_cast<const float4*>(entries + (base + i) * kDim) +
                                       idx % (kDim / 4));
      else
        staging[idx] = make_float4(0, 0, 0, 0);
    }
    cp_async_commit();
  };
  fetch(chunk);
  for (int64_t base = chunk; base < chunk_end; base += kTile) {
    cp_async_wait_all();
    __syncthreads();  // the staged tile is stored; the previous tile and its sums are consumed
    float4 v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) v[u] = staging[threadIdx.x + u * kThreads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int idx = threadIdx.x + u * kThreads, i = idx / (kDim / 4), c4 = idx % (kDim / 4);
      store_bf16_parts<kSplit>(tile, kPlane, int64_t(i) * kStride + 4 * c4, v[u]);
    }
    __syncthreads();
    if (base + kTile < chunk_end) fetch(base + kTile);
    score_tile<kSplit>(rq, tile, head_tile_sums, base, rows, n, t0, rw, ht, g, c, scores, stride);
  }
}

// ---- entries mirrored as bf16 (indexer_scores_mma_mirrored) ----
//
// As attention_mma.cu's mirror: the entries are converted to bf16 once (mirror_keys), and each
// block copies bf16 tiles straight into a ring of kMirrorStages (cp.async), two in flight while
// it computes on the oldest, one barrier a tile besides score_tile's; the tiles hold the same
// values, so the scores are the same bits.
constexpr int kMirrorStages = 3;
size_t mirror_shared_bytes(bool split) {
  return size_t(kRowsPerBlock) * (kHeads / 16) * kTile * 4 +
         size_t(kMirrorStages) * (split ? 2 : 1) * kTile * kStride * 2;
}

template <bool kSplit>
__global__ void __launch_bounds__(kThreads, 1)
    indexer_mma_mirror_kernel(const float* q, const float* head_weights, float weight_scale,
                              const LayerRow* rows, int64_t n, const uint16_t* mirror,
                              int64_t mirror_entries, float* scores, int64_t stride) {
  constexpr int kParts = RowQuery<kSplit>::kParts;
  constexpr int64_t kPlane = int64_t(kTile) * kStride, kSlot = kParts * kPlane;
  constexpr int kCopies = kParts * kTile * (kDim / 8) / kThreads;  // 16-byte copies a thread
  static_assert(kParts * kTile * (kDim / 8) % kThreads == 0);
  extern __shared__ __align__(16) float shared[];
  auto head_tile_sums = reinterpret_cast<float(*)[kHeads / 16][kTile]>(shared);
  uint16_t* ring = reinterpret_cast<uint16_t*>(shared + kRowsPerBlock * kHeads / 16 * kTile);
  pdl_begin();
  const int64_t t0 = int64_t(blockIdx.y) * kRowsPerBlock;
  const int64_t visible_max = block_visible(rows, n, t0);
  const int64_t chunk = int64_t(blockIdx.x) * kChunkTiles * kTile;
  if (chunk >= visible_max) return;
  const int64_t chunk_end = std::min<int64_t>(chunk + kChunkTiles * kTile, visible_max);
  const int64_t tiles = (chunk_end - chunk + kTile - 1) / kTile;
  const int64_t plane = mirror_entries * kDim;

  // Tile j of the chunk into slot j % kMirrorStages; entries past the last visible are zeros.
  auto fetch = [&](int64_t j) {
    uint16_t* slot = ring + (j % kMirrorStages) * kSlot;
#pragma unroll
    for (int u = 0; u < kCopies; ++u) {
      const int idx = threadIdx.x + u * kThreads;
      const int p = idx / (kTile * (kDim / 8)), rest = idx % (kTile * (kDim / 8));
      const int i = rest / (kDim / 8), c8 = rest % (kDim / 8);
      uint16_t* dst = slot + p * kPlane + int64_t(i) * kStride + 8 * c8;
      const int64_t e = chunk + j * kTile + i;
      if (e < visible_max)
        cp_async_16(dst, mirror + p * plane + e * kDim + 8 * c8);
      else
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  };
#pragma unroll
  for (int j = 0; j < kMirrorStages - 1; ++j) {
    if (j < tiles) fetch(j);
    cp_async_commit();
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int rw = warp / (kHeads / 16), ht = warp % (kHeads / 16);
  const RowQuery<kSplit> rq(q, head_weights, weight_scale, t0 + rw, t0 + rw < n, ht, g, c);
  for (int64_t j = 0; j < tiles; ++j) {
    cp_async_wait<kMirrorStages - 2>();
    // Every thread's pieces of tile j are visible; every warp is done with tile j - 1 (its slot
    // is refilled below) and the rows' sums of tile j - 1 are written.
    __syncthreads();
    if (j + kMirrorStages - 1 < tiles) fetch(j + kMirrorStages - 1);
    cp_async_commit();
    score_tile<kSplit>(rq, ring + (j % kMirrorStages) * kSlot, head_tile_sums, chunk + j * kTile,
                       rows, n, t0, rw, ht, g, c, scores, stride);
  }
}

void check_shape(int64_t heads, int64_t head_dim) {
  if (!indexer_scores_mma_supported(heads, head_dim))
    throw std::invalid_argument("cuda tensor-core indexer: " + std::to_string(heads) +
                                " heads of " + std::to_string(head_dim) + " (needs 64 of 128)");
}

// Either kernel over every row: grid (chunks of entries, blocks of kRowsPerBlock rows), one
// launch per 65,535 blocks of rows; `keys` are the kernel's arguments for the entries.
template <typename Kernel, typename... Keys>
void launch_rows(Kernel kernel, size_t shared, const float* q, const float* head_weights,
                 float weight_scale, const LayerRow* rows, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t max_visible, float* scores, int64_t stride,
                 cudaStream_t stream, Keys... keys) {
  const int64_t chunks = (max_visible + kChunkTiles * kTile - 1) / (kChunkTiles * kTile);
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t r0 = 0; r0 < n; r0 += kMaxGridY * kRowsPerBlock) {
    const int64_t m = std::min(kMaxGridY * kRowsPerBlock, n - r0);
    const dim3 grid{unsigned(chunks), unsigned((m + kRowsPerBlock - 1) / kRowsPerBlock)};
    launch_pdl(kernel, grid, kThreads, shared, stream, q + r0 * heads * head_dim,
               head_weights + r0 * heads, weight_scale, rows + r0, m, keys..., scores + r0 * stride,
               stride);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

bool indexer_scores_mma_supported(int64_t heads, int64_t head_dim) {
  return heads == kHeads && head_dim == kDim;
}

void indexer_scores_mma(const float* q, const float* head_weights, float weight_scale,
                        const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                        const float* entries, int64_t max_visible, bool split, float* scores,
                        int64_t stride, cudaStream_t stream) {
  if (n <= 0 || max_visible <= 0) return;
  check_shape(heads, head_dim);
  launch_rows(split ? indexer_mma_kernel<true> : indexer_mma_kernel<false>, shared_bytes(split), q,
              head_weights, weight_scale, rows, n, heads, head_dim, max_visible, scores, stride,
              stream, entries);
}

void indexer_scores_mma_mirrored(const float* q, const float* head_weights, float weight_scale,
                                 const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                                 const float* entries, int64_t max_visible, bool split,
                                 void* mirror, float* scores, int64_t stride, cudaStream_t stream) {
  if (n <= 0 || max_visible <= 0) return;
  check_shape(heads, head_dim);
  auto* keys = static_cast<uint16_t*>(mirror);
  mirror_keys(nullptr, 0, 0, entries, max_visible, head_dim, split, keys, stream);
  launch_rows(split ? indexer_mma_mirror_kernel<true> : indexer_mma_mirror_kernel<false>,
              mirror_shared_bytes(split), q, head_weights, weight_scale, rows, n, heads, head_dim,
              max_visible, scores, stride, stream, static_cast<const uint16_t*>(keys), max_visible);
}

}  // namespace agentrt::engine::cuda
