// The Lightning Indexer's prefill scores on Hopper's warpgroup MMA (sm_90a): for each row t and
// visible entry e, sum_h w[t][h] * relu(q[t][h] . k[e]), as indexer_scores_mma_mirrored with
// split false (bf16 query and entries, float32 products, relu, weights and sums), with wgmma
// instead of mma.sync. That kernel ran at ~177 TFLOP/s on an H100 (3.1 ms a CSA layer of a 16K
// prefill); its four warps a row sum their heads through shuffles and shared memory every tile.
//
// Here the product is turned around: the entries are the M side (64 a wgmma) and a row's 64
// heads the N side, so the accumulator holds, in each thread, 16 heads of two entries, and the
// head sum is 32 fused multiply-adds in registers and two shuffles across a quad. One block is
// kRows rows and a chunk of kChunk entries, two warpgroups:
//  - the rows' queries (bf16, 16 KB a row) are the B operands, in shared memory in the 128-byte
//    swizzle, staged once a block;
//  - warpgroup w takes the chunk's 64-entry tiles w, w + 2, ..., copied (cp.async) from the bf16
//    mirror into its own ring of kStages slots, so the warpgroups never wait for each other;
//  - a tile goes into registers once (ldmatrix: the A operand of 8 k-steps, 32 registers) and is
//    multiplied against every row of the block (8 wgmma of 64 x 64 x 16 a row), the next row's
//    products issued before this row's sums (two accumulators of 32 floats).
// Rows past n are zeros and write nothing; the blocks of the last rows (the most entries) run
// first, so the longest blocks are not the stragglers of the grid.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/indexer_wgmma.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/wgmma.cuh"

namespace agentrt::engine::cuda {
namespace {

// The compute_90 (PTX) pass has no wgmma: the kernel is a trap there.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AGENTRT_NO_WGMMA_INDEXER 1
#endif

constexpr int kHeads = 64;    // a row's heads: the N side of every product
constexpr int kDim = 128;     // channels: the K side (8 k-steps of 16)
constexpr int kRows = 8;      // rows a block
constexpr int kTile = 64;     // entries a tile: the M side
constexpr int kChunk = 2048;  // entries a block: each row's query is staged once for these
constexpr int kWarpgroups = 2;
constexpr int kThreads = 128 * kWarpgroups;
constexpr int kStages = 2;  // a warpgroup's ring: the next tile lands while this one is used
constexpr int kLine = 128;  // bytes of one 64-channel bf16 line of an operand
// Operands are 64-channel chunks of 128-byte lines in the 128-byte swizzle, chunks these apart:
constexpr int kTileChunk = kTile * kLine;            // a tile's 64 entries (8 KB)
constexpr int kQueryChunk = kRows * kHeads * kLine;  // every row's heads, row r's at line 64 r
// Byte offsets of the dynamic shared memory, from a 1024-byte boundary (the swizzle's period).
constexpr int kQuery = 0;
constexpr int kTiles = kQuery + (kDim / 64) * kQueryChunk;  // 128 KB of queries
// [kWarpgroups][kStages] tiles (64 KB), then the head weights (float [kRows][kHeads], scaled),
// then the rows' visible counts (int32 [kRows]).
constexpr int kWeights = kTiles + kWarpgroups * kStages * (kDim / 64) * kTileChunk;
constexpr int kVisible = kWeights + kRows * kHeads * 4;
constexpr int kSharedBytes = kVisible + kRows * 4 + 1024;  // + room to align the base
static_assert(kSharedBytes <= 227 * 1024, "more than an sm_90 block's shared memory");
static_assert(kChunk % (kWarpgroups * kTile) == 0);

#ifndef AGENTRT_NO_WGMMA_INDEXER
// (line, channel)'s byte in an operand of 64-channel chunks `chunk` bytes apart, each chunk's
// 128-byte lines in the 128-byte swizzle (16-byte piece p of line l at piece p ^ (l % 8)).
__device__ __forceinline__ int operand_byte(int line, int ch, int chunk) {
  return (ch >> 6) * chunk + line * kLine + ((((ch & 63) >> 3) ^ (line & 7)) << 4) + (ch & 7) * 2;
}

// Keeps the compiler from reading an accumulator before the wgmma_wait that completes it (its
// registers look written at the wgmma's issue).
__device__ __forceinline__ void hold_accumulator(float (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    indexer_wgmma_kernel(const float* q, const float* head_weights, float weight_scale,
                         const LayerRow* rows, int64_t n, const uint16_t* mirror,
                         int64_t mirror_entries, float* scores, int64_t stride) {
#ifndef AGENTRT_NO_WGMMA_INDEXER
  pdl_begin();
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  float* weights = reinterpret_cast<float*>(smem + kWeights);
  int32_t* visible = reinterpret_cast<int32_t*>(smem + kVisible);

  const int64_t t0 = int64_t(gridDim.y - 1 - blockIdx.y) * kRows;  // the last rows first
  int64_t visible_max = 0;
  for (int r = 0; r < kRows; ++r)
    if (t0 + r < n) visible_max = std::max<int64_t>(visible_max, rows[t0 + r].visible);
  const int64_t chunk = int64_t(blockIdx.x) * kChunk;
  if (chunk >= visible_max) return;  // the whole block: no row sees these entries
  const int64_t chunk_end = std::min<int64_t>(chunk + kChunk, visible_max);
  const int64_t tiles = (chunk_end - chunk + kTile - 1) / kTile;
  const int64_t readable = std::min(visible_max, mirror_entries);

  const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
  const int64_t wg_tiles = tiles > wg ? (tiles - wg + kWarpgroups - 1) / kWarpgroups : 0;
  uint8_t* ring = smem + kTiles + wg * kStages * (kDim / 64) * kTileChunk;
  auto slot = [&](int64_t i) { return ring + (i % kStages) * (kDim / 64) * kTileChunk; };
  // The warpgroup's tile i (the chunk's tile wg + 2 i) into its slot: 16 threads an entry, 8
  // entries at a time; entries past the last visible are zero-filled (their scores unwritten).
  auto fetch = [&](int64_t i) {
    uint8_t* dst = slot(i);
    const int64_t first = chunk + (wg + kWarpgroups * i) * kTile;
    const int p = tid & 15;
#pragma unroll
    for (int u = 0; u < kTile * (kDim / 8) / 128; ++u) {
      const int line = (tid >> 4) + 8 * u;
      const int64_t e = first + line;
      const bool live = e < readable;
      cp_async_16(dst + operand_byte(line, 8 * p, kTileChunk),
                  mirror + (live ? e * kDim + 8 * p : 0), live);
    }
    cp_async_commit();
  };
  if (wg_tiles > 0) fetch(0);  // lands while the queries are staged

  // The rows' queries as bf16 (row r's head h: line 64 r + h), their weights scaled as
  // indexer_mma.cu's, their visible counts; rows past n are zeros (and see nothing).
  {
    constexpr int kQuads = kRows * kHeads * kDim / 4, kBatch = 16;  // loads in flight a thread
    const float4* q4 = reinterpret_cast<const float4*>(q + t0 * kHeads * kDim);
#pragma unroll 1
    for (int b = 0; b < kQuads / (kThreads * kBatch); ++b) {
      float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int f = threadIdx.x + kThreads * (kBatch * b + u);
        v[u] = t0 + f / (kHeads * kDim / 4) < n ? q4[f] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int f = threadIdx.x + kThreads * (kBatch * b + u);
        *reinterpret_cast<uint2*>(smem + kQuery +
                                  operand_byte(f / (kDim / 4), 4 * (f % (kDim / 4)), kQueryChunk)) =
            make_uint2(pack_bf16(v[u].x, v[u].y), pack_bf16(v[u].z, v[u].w));
      }
    }
    const float scale = rsqrtf(float(kDim)) * weight_scale;
    for (int i = threadIdx.x; i < kRows * kHeads; i += kThreads)
      weights[i] = t0 + i / kHeads < n ? head_weights[t0 * kHeads + i] * scale : 0.0f;
    if (threadIdx.x < kRows)
      visible[threadIdx.x] = t0 + threadIdx.x < n ? rows[t0 + threadIdx.x].visible : 0;
  }
  fence_proxy_async();  // the queries, for the tensor cores
  __syncthreads();      // the last one: from here on the warpgroups go their own ways

  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const uint32_t query_at = shared_address(smem + kQuery);
  for (int64_t i = 0; i < wg_tiles; ++i) {
    cp_async_wait_all();
    // Tile i is in place for the whole warpgroup, which is done with its other slot (read into
    // registers at tile i - 1): the next tile goes there.
    named_barrier(1 + wg, 128);
    if (i + 1 < wg_tiles) fetch(i + 1);

    // The tile as A fragments: warp w's lines 16 w .. 16 w + 15, lanes 8 m .. 8 m + 7 giving
    // matrix m's lines (m & 1: the lower 8 lines, m >> 1: the upper 8 channels of the k-step).
    uint32_t a[kDim / 16][4];
    {
      const uint8_t* tile = slot(i);
      const int m = lane >> 3, line = 16 * warp + 8 * (m & 1) + (lane & 7);
#pragma unroll
      for (int k = 0; k < kDim / 16; ++k)
        ldmatrix_x4(a[k], tile + operand_byte(line, 16 * k + 8 * (m >> 1), kTileChunk));
    }
    const int64_t base = chunk + (wg + kWarpgroups * i) * kTile;

    // Row r's 64 entries x 64 heads into d.
    auto issue = [&](int r, float(&d)[32]) {
      wgmma_fence();  // the tile's registers are written; d was last read by row r - 2's sums
#pragma unroll
      for (int k = 0; k < kDim / 16; ++k)
        wgmma_bf16_64x64_rs(
            d, a[k],
            wgmma_descriptor(query_at + (k >> 2) * kQueryChunk + r * kHeads * kLine + (k & 3) * 32,
                             16, 1024),
            k > 0);
      wgmma_commit();
    };
    // Row r's scores from its completed products d: d[4 j + e] is entry line g's product with
    // head 8 j + 2 c + e, d[4 j + 2 + e] line g + 8's. Each thread sums its 16 heads of both
    // lines; the quad's lanes then add theirs, lanes c = 0 and 1 ending with lines g and g + 8.
    auto finish = [&](int r, float(&d)[32]) {
      hold_accumulator(d);
      const float* w = weights + r * kHeads + 2 * c;
      float x0 = 0.0f, x1 = 0.0f;
#pragma unroll
      for (int j = 0; j < kHeads / 8; ++j) {
        const float2 wj = *reinterpret_cast<const float2*>(w + 8 * j);
        x0 += wj.x * fmaxf(d[4 * j], 0.0f) + wj.y * fmaxf(d[4 * j + 1], 0.0f);
        x1 += wj.x * fmaxf(d[4 * j + 2], 0.0f) + wj.y * fmaxf(d[4 * j + 3], 0.0f);
      }
      const bool upper = c & 1;  // this lane keeps line g + 8's sum, its neighbour line g's
      float y = upper ? x1 : x0;
      y += __shfl_xor_sync(0xffffffffu, upper ? x0 : x1, 1);
      y += __shfl_xor_sync(0xffffffffu, y, 2);
      const int64_t e = base + 16 * warp + g + 8 * (c & 1);
      if (c < 2 && e < visible[r]) scores[(t0 + r) * stride + e] = y;
    };

    // Row r + 1's products run while row r's sums are taken.
    float acc[2][32];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      issue(r, acc[r & 1]);
      if (r > 0) {
        wgmma_wait<1>();
        finish(r - 1, acc[(r - 1) & 1]);
      }
    }
    wgmma_wait<0>();  // and the tile's registers are free for the next
    finish(kRows - 1, acc[(kRows - 1) & 1]);
  }
#else
  __trap();  // built without sm_90a: wgmma_kernels_run() keeps the host from here
#endif
}

}  // namespace

bool indexer_scores_wgmma_supported(int64_t heads, int64_t head_dim) {
  return heads == kHeads && head_dim == kDim;
}

void indexer_scores_wgmma(const float* q, const float* head_weights, float weight_scale,
                          const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                          const float* entries, int64_t max_visible, void* mirror, float* scores,
                          int64_t stride, cudaStream_t stream) {
  if (n <= 0 || max_visible <= 0) return;
  if (!indexer_scores_wgmma_supported(heads, head_dim))
    throw std::invalid_argument("cuda wgmma indexer: " + std::to_string(heads) + " heads of " +
                                std::to_string(head_dim) + " (needs " + std::to_string(kHeads) +
                                " of " + std::to_string(kDim) + ")");
  if (!mirror || !entries)
    throw std::invalid_argument("cuda wgmma indexer: no entries or no mirror for them");
  auto* keys = static_cast<uint16_t*>(mirror);
  mirror_keys(nullptr, 0, 0, entries, max_visible, head_dim, false, keys, stream);
  AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
      indexer_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  const int64_t chunks = (max_visible + kChunk - 1) / kChunk;
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t r0 = 0; r0 < n; r0 += kMaxGridY * kRows) {
    const int64_t m = std::min(kMaxGridY * kRows, n - r0);
    const dim3 grid{unsigned(chunks), unsigned((m + kRows - 1) / kRows)};
    launch_pdl(indexer_wgmma_kernel, grid, kThreads, size_t(kSharedBytes), stream,
               q + r0 * heads * head_dim, head_weights + r0 * heads, weight_scale, rows + r0, m,
               static_cast<const uint16_t*>(keys), max_visible, scores + r0 * stride, stride);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace agentrt::engine::cuda
