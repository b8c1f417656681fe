// Prefill attention on tensor cores (attention.cu's by-row kernel does the same on CUDA cores).
// Every head shares the one key/value row (shared-KV MQA), so for one query row the 64 heads
// are the M side of a matrix product: scores [64 heads x keys] = Q [64 x head_dim] K^T, then
// out = softmax(scores) K. One block per (row, 64 heads): the query is converted to bf16 once
// into shared memory, each tile of the row's keys (window, then chosen or all compressed
// entries) is loaded and converted once for every head, and each warp owns 16 heads and a slice
// of at most 256 output channels; the warps of the same heads each take the scores' dot products
// over their own channels and add up the partial scores in shared memory. Online softmax as the
// CUDA-core kernels, starting from the sink. The next tile's keys are copied into a float32
// staging buffer (cp.async) while the block computes on this one. split = true keeps each float
// as bf16 hi + lo and takes three products per product (float32-like); split = false rounds to
// bf16 once. Prefill hands the kernels wq_b's raw output with a QueryNormRope: each head is
// RMS-normed and its RoPE channels rotated as the query is staged, and the output's rotated back
// as it is stored, so neither the query nor the output takes a pass of its own.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/attention_keys.cuh"
#include "engine/cuda/attention_query.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kBlockHeads = 64;

template <int HD, bool kSplit, int kCh>
struct TileShape {
  static constexpr int kChannels = HD < kCh ? HD : kCh;  // output channels per warp
  static constexpr int kSlices = HD / kChannels;         // warps per 16 heads
  static constexpr int kWarps = (kBlockHeads / 16) * kSlices;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kKeys = kSplit ? 16 : 32;  // keys per tile
  static constexpr int kStride = HD + 8;          // bf16 per shared row: ldmatrix conflict-free
  static constexpr int kParts = kSplit ? 2 : 1;
  static constexpr int kLoads = kKeys * (HD / 4) / kThreads;  // float4 per thread per tile
  static constexpr size_t kScoreBytes = kSlices > 1 ? size_t(kWarps) * 16 * kKeys * 4 : 0;
  static constexpr size_t kStagingBytes = size_t(kKeys) * HD * 4;  // the next tile, float32
  static constexpr size_t kShared =
      size_t(kParts) * (kBlockHeads + kKeys) * kStride * 2 + kScoreBytes + kStagingBytes;
  static_assert(kKeys * (HD / 4) % kThreads == 0);
};

// A warp's online-softmax state for its rows g and g + 8 (two of its 16 heads) and its output
// fragments over its channel slice. The sink only adds exp(sink - max) to the denominator,
// counted once per row (lane c == 0) until the quad's partial sums are added at the end.
template <int HD, bool kSplit, int kCh>
struct WarpRows {
  float m0, m1, l0, l1;
  float o[TileShape<HD, kSplit, kCh>::kChannels / 8][4];

  __device__ __forceinline__ WarpRows(const float* sinks, int64_t h_base, int h0, int g, int c) {
    m0 = sinks[h_base + h0 + g];
    m1 = sinks[h_base + h0 + g + 8];
    l0 = c == 0 ? 1.0f : 0.0f;
    l1 = l0;
#pragma unroll
    for (int n = 0; n < TileShape<HD, kSplit, kCh>::kChannels / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[n][i] = 0.0f;
  }

  // The rows' outputs: the quad's partial denominators added up, each channel divided by them.
  // unrope (not null): the output's pairs from channel `first` on rotated back by the row's
  // (cos, sin) pairs (apply_rope's inverse); ch0: the thread's first channel in the head.
  __device__ __forceinline__ void store(float* out0, int g, int c, const float2* unrope = nullptr,
                                        int first = 0, int ch0 = 0) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    float* out1 = out0 + 8 * HD;
#pragma unroll
    for (int n = 0; n < TileShape<HD, kSplit, kCh>::kChannels / 8; ++n) {
      float2 a = make_float2(o[n][0] * inv0, o[n][1] * inv0),
             b = make_float2(o[n][2] * inv1, o[n][3] * inv1);
      if (unrope && ch0 + 8 * n >= first) {
        const float2 cs = unrope[(ch0 + 8 * n - first) / 2];
        a = make_float2(a.x * cs.x + a.y * cs.y, a.y * cs.x - a.x * cs.y);
        b = make_float2(b.x * cs.x + b.y * cs.y, b.y * cs.x - b.x * cs.y);
      }
      *reinterpret_cast<float2*>(out0 + 8 * n) = a;
      *reinterpret_cast<float2*>(out1 + 8 * n) = b;
    }
  }
};

// One tile of keys (ks: [parts][kKeys][kStride] bf16, the tile's first key is key `base` of
// n_keys) for a warp's 16 heads (h0) and channel slice (d0): scores over the slice (more than
// one slice: added up with the other slices' through `partial`, which takes a __syncthreads),
// the online softmax, then out += P K. Both kernels below run exactly this per tile.
template <int HD, bool kSplit, int kCh>
__device__ __forceinline__ void attend_tile(const uint16_t* qs, const uint16_t* ks, float* partial,
                                            int64_t base, int64_t n_keys, float scale, int warp,
                                            int lane, WarpRows<HD, kSplit, kCh>& st) {
  using S = TileShape<HD, kSplit, kCh>;
  constexpr int kStride = S::kStride, kKeys = S::kKeys;
  constexpr int64_t kQPlane = int64_t(kBlockHeads) * kStride, kKPlane = int64_t(kKeys) * kStride;
  const int g = lane >> 2, c = lane & 3;
  const int h0 = 16 * (warp % (kBlockHeads / 16));
  const int d0 = S::kChannels * (warp / (kBlockHeads / 16));

  // Scores of the warp's 16 heads against the tile's keys over its channel slice.
  float s[kKeys / 8][4] = {};
#pragma unroll 4
  for (int k0 = d0; k0 < d0 + S::kChannels; k0 += 16) {
    uint32_t a[S::kParts][4];
#pragma unroll
    for (int p = 0; p < S::kParts; ++p) {
      const uint16_t* qa = qs + p * kQPlane + (h0 + g) * kStride + k0 + 2 * c;
      a[p][0] = ld_bf16x2(qa);
      a[p][1] = ld_bf16x2(qa + 8 * kStride);
      a[p][2] = ld_bf16x2(qa + 8);
      a[p][3] = ld_bf16x2(qa + 8 * kStride + 8);
    }
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      const uint16_t* kb = ks + (8 * j + g) * kStride + k0 + 2 * c;
      const uint32_t b0 = ld_bf16x2(kb), b1 = ld_bf16x2(kb + 8);
      mma_bf16_16x8x16(s[j], a[0], b0, b1);
      if constexpr (kSplit) {
        mma_bf16_16x8x16(s[j], a[0], ld_bf16x2(kb + kKPlane), ld_bf16x2(kb + kKPlane + 8));
        mma_bf16_16x8x16(s[j], a[1], b0, b1);
      }
    }
  }

  if constexpr (S::kSlices > 1) {
    constexpr int kFrag = kKeys / 8 * 4 * 32;  // floats of one warp's score fragments
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[warp * kFrag + (j * 4 + i) * 32 + lane] = s[j][i];
    __syncthreads();
    const int ht = warp % (kBlockHeads / 16);
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = 0.0f;  // in slice order, so every slice gets the same scores
#pragma unroll
        for (int sl = 0; sl < S::kSlices; ++sl)
          sum += partial[(ht + sl * (kBlockHeads / 16)) * kFrag + (j * 4 + i) * 32 + lane];
        s[j][i] = sum;
      }
  }

  // Online softmax over the tile: the quad (lanes of one g) holds a row's scores.
  float mx0 = st.m0, mx1 = st.m1;
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const bool live = base + 8 * j + 2 * c + e < n_keys;
      s[j][e] = live ? s[j][e] * scale : -INFINITY;
      s[j][2 + e] = live ? s[j][2 + e] * scale : -INFINITY;
      mx0 = fmaxf(mx0, s[j][e]);
      mx1 = fmaxf(mx1, s[j][2 + e]);
    }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float corr0 = expf(st.m0 - mx0), corr1 = expf(st.m1 - mx1);
  st.m0 = mx0;
  st.m1 = mx1;
  st.l0 *= corr0;
  st.l1 *= corr1;
#pragma unroll
  for (int n = 0; n < S::kChannels / 8; ++n) {
    st.o[n][0] *= corr0;
    st.o[n][1] *= corr0;
    st.o[n][2] *= corr1;
    st.o[n][3] *= corr1;
  }
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      st.l0 += (s[j][e] = expf(s[j][e] - st.m0));
      st.l1 += (s[j][2 + e] = expf(s[j][2 + e] - st.m1));
    }

  // out += P K over the tile, 16 keys per step: P's A fragment is the scores' C fragments of
  // two key groups; K's B fragments come transposed out of shared memory.
  const int ld_key = (lane & 7) + 8 * ((lane >> 3) & 1), ld_col = 8 * (lane >> 4);
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    uint32_t pa[S::kParts][4];
    const float* x0 = s[2 * kk];
    const float* x1 = s[2 * kk + 1];
    if constexpr (kSplit) {
      const Bf16Parts r0 = split_bf16(x0[0], x0[1]), r1 = split_bf16(x0[2], x0[3]),
                      r2 = split_bf16(x1[0], x1[1]), r3 = split_bf16(x1[2], x1[3]);
      pa[0][0] = r0.hi, pa[0][1] = r1.hi, pa[0][2] = r2.hi, pa[0][3] = r3.hi;
      pa[1][0] = r0.lo, pa[1][1] = r1.lo, pa[1][2] = r2.lo, pa[1][3] = r3.lo;
    } else {
      pa[0][0] = pack_bf16(x0[0], x0[1]), pa[0][1] = pack_bf16(x0[2], x0[3]);
      pa[0][2] = pack_bf16(x1[0], x1[1]), pa[0][3] = pack_bf16(x1[2], x1[3]);
    }
    const uint16_t* kv = ks + (16 * kk + ld_key) * kStride + d0 + ld_col;
#pragma unroll
    for (int nn = 0; nn < S::kChannels / 16; ++nn) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, kv + 16 * nn);
      mma_bf16_16x8x16(st.o[2 * nn], pa[0], b[0], b[1]);
      mma_bf16_16x8x16(st.o[2 * nn + 1], pa[0], b[2], b[3]);
      if constexpr (kSplit) {
        uint32_t bl[4];
        ldmatrix_x4_trans(bl, kv + kKPlane + 16 * nn);
        mma_bf16_16x8x16(st.o[2 * nn], pa[0], bl[0], bl[1]);
        mma_bf16_16x8x16(st.o[2 * nn + 1], pa[0], bl[2], bl[3]);
        mma_bf16_16x8x16(st.o[2 * nn], pa[1], b[0], b[1]);
        mma_bf16_16x8x16(st.o[2 * nn + 1], pa[1], b[2], b[3]);
      }
    }
  }
}

// The block's 64 heads of query row t as bf16 parts into qs ([parts][64][kStride]), normed and
// rotated on the way in where norm.pos is set (stage_query_heads).
template <int HD, bool kSplit, int kCh>
__device__ __forceinline__ void stage_query(const float* q_rows, uint16_t* qs,
                                            const QueryNormRope& norm, int64_t t, float2* rope_cs) {
  using S = TileShape<HD, kSplit, kCh>;
  constexpr int64_t kQPlane = int64_t(kBlockHeads) * S::kStride;
  stage_query_heads<HD, kBlockHeads, S::kThreads>(
      q_rows, norm, t, rope_cs, [&](int h, int c, float4 v) {
        store_bf16_parts<kSplit>(qs, kQPlane, int64_t(h) * S::kStride + c, v);
      });
}

template <int HD, bool kSplit, int kCh>
__global__ void __launch_bounds__(TileShape<HD, kSplit, kCh>::kThreads, 1)
    attend_mma_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t window,
                      const float* sinks, bool use_entries, const int32_t* chosen,
                      const int32_t* n_chosen, int64_t topk, float scale, QueryNormRope norm,
                      float* out) {
  using S = TileShape<HD, kSplit, kCh>;
  constexpr int kStride = S::kStride, kKeys = S::kKeys;
  constexpr int64_t kQPlane = int64_t(kBlockHeads) * kStride, kKPlane = int64_t(kKeys) * kStride;
  pdl_begin();
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* qs = smem;                        // [parts][64 heads][kStride]
  uint16_t* ks = smem + S::kParts * kQPlane;  // [parts][kKeys][kStride]
  // [warp][score fragment]: the partial scores of each channel slice, summed by every slice
  float* partial = reinterpret_cast<float*>(ks + S::kParts * kKPlane);
  // [kKeys][HD]: the next tile's keys as stored, copied in while this tile is computed on
  float* staging = partial + S::kScoreBytes / 4;

  const int64_t t = blockIdx.y, h_base = int64_t(blockIdx.x) * kBlockHeads;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys();
  auto key = [&](int64_t i) { return reinterpret_cast<const float4*>(keys.key(i, HD)); };
  __shared__ float2 rope_cs[HD / 2];
  stage_query<HD, kSplit, kCh>(q + (t * heads + h_base) * HD, qs, norm, t, rope_cs);  // 64 heads

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int h0 = 16 * (warp % (kBlockHeads / 16));            // the warp's 16 heads
  const int d0 = S::kChannels * (warp / (kBlockHeads / 16));  // and output channels
  WarpRows<HD, kSplit, kCh> st(sinks, h_base, h0, g, c);

  // Keys past the row's last are zeros (their scores are masked below).
  auto fetch = [&](int64_t base) {
#pragma unroll
    for (int u = 0; u < S::kLoads; ++u) {
      const int idx = threadIdx.x + u * S::kThreads, i = idx / (HD / 4), c4 = idx % (HD / 4);
      float4* dst = reinterpret_cast<float4*>(staging) + idx;
      if (base + i < n_keys)
        cp_async_16(dst, key(base + i) + c4);
      else
        *dst = make_float4(0, 0, 0, 0);
    }
    cp_async_commit();
  };
  if (n_keys > 0) fetch(0);

  for (int64_t base = 0; base < n_keys; base += kKeys) {
    cp_async_wait_all();
    __syncthreads();  // the staged tile and the query are stored; the previous tile is consumed
#pragma unroll
    for (int u = 0; u < S::kLoads; ++u) {
      const int idx = threadIdx.x + u * S::kThreads, i = idx / (HD / 4), c4 = idx % (HD / 4);
      store_bf16_parts<kSplit>(ks, kKPlane, int64_t(i) * kStride + 4 * c4,
                               reinterpret_cast<const float4*>(staging)[idx]);
    }
    __syncthreads();
    if (base + kKeys < n_keys) fetch(base + kKeys);  // lands while this tile is computed on
    attend_tile<HD, kSplit, kCh>(qs, ks, partial, base, n_keys, scale, warp, lane, st);
  }
  st.store(out + (t * heads + h_base + h0 + g) * HD + d0 + 2 * c, g, c,
           norm.pos && norm.unrope_output ? rope_cs : nullptr, HD - norm.rope.dim, d0 + 2 * c);
}

// ---- keys mirrored as bf16 ----
//
// The kernel above reads each tile of float32 keys into a staging buffer, converts it into the
// bf16 tile and only then asks for the next: one tile in flight, two barriers and a conversion
// per tile, and every block converts the same window and entries again. Where the rows are of
// one sequence (prefill), the keys the pass can reach (its window rows and the entries) are
// converted once (mirror_keys_kernel), and the kernel below copies bf16 tiles straight into a
// ring of kStages tiles (cp.async), kStages - 1 of them in flight while it computes on the
// oldest. Each tile then holds the same bf16 values as above and goes through the same
// attend_tile, so the outputs are the same bits.

template <int HD, bool kSplit, int kCh>
struct MirrorShape {
  using S = TileShape<HD, kSplit, kCh>;
  static constexpr int kStages = kSplit ? 2 : 3;
  static constexpr int kChunks = S::kParts * S::kKeys * (HD / 8);  // 16-byte copies a tile
  static constexpr int kCopies = kChunks / S::kThreads;            // per thread
  static constexpr size_t kShared = size_t(S::kParts) * kBlockHeads * S::kStride * 2 +
                                    size_t(kStages) * S::kParts * S::kKeys * S::kStride * 2 +
                                    S::kScoreBytes;
  static_assert(kChunks % S::kThreads == 0);
};

// Rows [0, kv_rows) of the mirror are the cache's window rows from kv_first on, rows kv_rows +
// e its entries e; parts planes of (kv_rows + entries) * hd bf16 (split: high, then low parts).
__global__ void mirror_keys_kernel(const float* kv, int64_t kv_first, int64_t kv_rows,
                                   const float* entries, int64_t n_entries, int64_t hd, bool split,
                                   uint16_t* mirror) {
  pdl_begin();
  const int64_t quads = hd / 4, rows = kv_rows + n_entries, plane = rows * hd;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * quads; i += stride) {
    const int64_t r = i / quads, c4 = i - r * quads;
    const float* src = r < kv_rows ? kv + (kv_first + r) * hd : entries + (r - kv_rows) * hd;
    store_bf16_parts(split, mirror, plane, r * hd + 4 * c4,
                     __ldg(reinterpret_cast<const float4*>(src) + c4));
  }
}

template <int HD, bool kSplit, int kCh>
__global__ void __launch_bounds__(TileShape<HD, kSplit, kCh>::kThreads, 1)
    attend_mma_mirror_kernel(const float* q, const LayerRow* rows, int64_t heads, int64_t window,
                             const float* sinks, bool use_entries, const int32_t* chosen,
                             const int32_t* n_chosen, int64_t topk, float scale, QueryNormRope norm,
                             KeyMirror mirror, float* out) {
  using S = TileShape<HD, kSplit, kCh>;
  using M = MirrorShape<HD, kSplit, kCh>;
  constexpr int kStride = S::kStride, kKeys = S::kKeys;
  constexpr int64_t kQPlane = int64_t(kBlockHeads) * kStride, kKPlane = int64_t(kKeys) * kStride;
  constexpr int64_t kTile = S::kParts * kKPlane;  // one ring slot: [parts][kKeys][kStride]
  pdl_begin();
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* qs = smem;                          // [parts][64 heads][kStride]
  uint16_t* ring = smem + S::kParts * kQPlane;  // [kStages] tiles
  float* partial = reinterpret_cast<float*>(ring + M::kStages * kTile);

  const int64_t t = blockIdx.y, h_base = int64_t(blockIdx.x) * kBlockHeads;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys(), tiles = (n_keys + kKeys - 1) / kKeys;
  const int64_t plane = (mirror.kv_rows + mirror.entries) * HD;
  // Key i's row of the mirror.
  auto mirror_row = [&](int64_t i) {
    if (i < keys.n_window) return keys.first + i - mirror.kv_first;
    const int64_t e = i - keys.n_window;
    return mirror.kv_rows + (keys.chosen ? int64_t(keys.chosen[e]) : e);
  };
  // Tile j into ring slot j % kStages: each thread's kCopies 16-byte pieces (part, key, 8
  // channels); keys past the row's last are zeros (their scores are masked).
  // The pieces' source rows are looked up first and the copies issued after, so the lookups'
  // loads (the chosen entries) are in flight together rather than one before each copy.
  auto fetch = [&](int64_t j) {
    uint16_t* slot = ring + (j % M::kStages) * kTile;
    int64_t src[M::kCopies];
#pragma unroll
    for (int u = 0; u < M::kCopies; ++u) {
      const int idx = threadIdx.x + u * S::kThreads;
      const int p = idx / (kKeys * (HD / 8)), rest = idx % (kKeys * (HD / 8));
      const int i = rest / (HD / 8), c8 = rest % (HD / 8);
      const int64_t key = j * kKeys + i;
      src[u] = key < n_keys ? p * plane + mirror_row(key) * HD + 8 * c8 : -1;
    }
#pragma unroll
    for (int u = 0; u < M::kCopies; ++u) {
      const int idx = threadIdx.x + u * S::kThreads;
      const int p = idx / (kKeys * (HD / 8)), rest = idx % (kKeys * (HD / 8));
      const int i = rest / (HD / 8), c8 = rest % (HD / 8);
      uint16_t* dst = slot + p * kKPlane + int64_t(i) * kStride + 8 * c8;
      if (src[u] >= 0)
        cp_async_16(dst, mirror.keys + src[u]);
      else
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  };
#pragma unroll
  for (int j = 0; j < M::kStages - 1; ++j) {
    if (j < tiles) fetch(j);
    cp_async_commit();  // empty groups too: every wait below counts the same groups
  }
  __shared__ float2 rope_cs[HD / 2];
  stage_query<HD, kSplit, kCh>(q + (t * heads + h_base) * HD, qs, norm, t, rope_cs);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int h0 = 16 * (warp % (kBlockHeads / 16));
  const int d0 = S::kChannels * (warp / (kBlockHeads / 16));
  WarpRows<HD, kSplit, kCh> st(sinks, h_base, h0, g, c);
  for (int64_t j = 0; j < tiles; ++j) {
    cp_async_wait<M::kStages - 2>();  // this thread's pieces of tile j have landed
    // Every thread's pieces of tile j (and the query) are visible, and every warp is done with
    // tile j - 1, whose slot the next fetch refills.
    __syncthreads();
    if (j + M::kStages - 1 < tiles) fetch(j + M::kStages - 1);
    cp_async_commit();
    attend_tile<HD, kSplit, kCh>(qs, ring + (j % M::kStages) * kTile, partial, j * kKeys, n_keys,
                                 scale, warp, lane, st);
  }
  st.store(out + (t * heads + h_base + h0 + g) * HD + d0 + 2 * c, g, c,
           norm.pos && norm.unrope_output ? rope_cs : nullptr, HD - norm.rope.dim, d0 + 2 * c);
}

// Either kernel over n rows: grid (groups of 64 heads, rows), one launch per 65,535 rows; `keys`
// are the arguments between the query norm and the output (the mirrored kernel's mirror).
template <int HD, bool kSplit, int kCh, typename Kernel, typename... Keys>
void launch_rows(Kernel kernel, size_t shared, const float* q, const LayerRow* rows, int64_t n,
                 int64_t heads, int64_t window, const float* sinks, bool use_entries,
                 const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                 const QueryNormRope& norm, float* out, cudaStream_t stream, Keys... keys) {
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const float scale = 1.0f / sqrtf(float(HD));
  constexpr int64_t kMaxGridRows = 65535;
  for (int64_t r0 = 0; r0 < n; r0 += kMaxGridRows) {
    const int64_t m = std::min(kMaxGridRows, n - r0);
    const dim3 grid{unsigned(heads / kBlockHeads), unsigned(m)};
    QueryNormRope part = norm;
    if (part.pos) part.pos += r0;
    launch_pdl(kernel, grid, TileShape<HD, kSplit, kCh>::kThreads, shared, stream,
               q + r0 * heads * HD, rows + r0, heads, window, sinks, use_entries,
               chosen ? chosen + r0 * topk : nullptr, n_chosen ? n_chosen + r0 : nullptr, topk,
               scale, part, keys..., out + r0 * heads * HD);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

// mirror: the keys as bf16 (attend_mma_mirror_kernel); null: the float32 cache rows.
template <int HD, bool kSplit, int kCh>
void launch_attend_mma(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                       int64_t window, const float* sinks, bool use_entries, const int32_t* chosen,
                       const int32_t* n_chosen, int64_t topk, const KeyMirror* mirror,
                       const QueryNormRope& norm, float* out, cudaStream_t stream) {
  if (mirror)
    launch_rows<HD, kSplit, kCh>(
        attend_mma_mirror_kernel<HD, kSplit, kCh>, MirrorShape<HD, kSplit, kCh>::kShared, q, rows,
        n, heads, window, sinks, use_entries, chosen, n_chosen, topk, norm, out, stream, *mirror);
  else
    launch_rows<HD, kSplit, kCh>(attend_mma_kernel<HD, kSplit, kCh>,
                                 TileShape<HD, kSplit, kCh>::kShared, q, rows, n, heads, window,
                                 sinks, use_entries, chosen, n_chosen, topk, norm, out, stream);
}

template <bool kSplit>
void dispatch_head_dim(int64_t head_dim, const float* q, const LayerRow* rows, int64_t n,
                       int64_t heads, int64_t window, const float* sinks, bool use_entries,
                       const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                       const KeyMirror* mirror, const QueryNormRope& norm, int warp_channels,
                       float* out, cudaStream_t stream) {
  const bool narrow = warp_channels == 128;
  if (head_dim == 128)
    launch_attend_mma<128, kSplit, 128>(q, rows, n, heads, window, sinks, use_entries, chosen,
                                        n_chosen, topk, mirror, norm, out, stream);
  else if (head_dim == 256 && narrow)
    launch_attend_mma<256, kSplit, 128>(q, rows, n, heads, window, sinks, use_entries, chosen,
                                        n_chosen, topk, mirror, norm, out, stream);
  else if (head_dim == 256)
    launch_attend_mma<256, kSplit, 256>(q, rows, n, heads, window, sinks, use_entries, chosen,
                                        n_chosen, topk, mirror, norm, out, stream);
  else if (narrow)
    launch_attend_mma<512, kSplit, 128>(q, rows, n, heads, window, sinks, use_entries, chosen,
                                        n_chosen, topk, mirror, norm, out, stream);
  else
    launch_attend_mma<512, kSplit, 256>(q, rows, n, heads, window, sinks, use_entries, chosen,
                                        n_chosen, topk, mirror, norm, out, stream);
}

void check_shape(int64_t heads, int64_t head_dim) {
  if (!attend_rows_mma_supported(heads, head_dim))
    throw std::invalid_argument("cuda tensor-core attention: " + std::to_string(heads) +
                                " heads of " + std::to_string(head_dim) +
                                " (needs a multiple of 64 heads of 128, 256 or 512)");
}

void check_channels(int warp_channels) {
  if (warp_channels != 128 && warp_channels != 256)
    throw std::invalid_argument("cuda tensor-core attention: " + std::to_string(warp_channels) +
                                " channels a warp (128 or 256)");
}

}  // namespace

int64_t key_mirror_bytes(int64_t head_dim, int64_t kv_rows, int64_t entries, bool split) {
  return (split ? 2 : 1) * (kv_rows + entries) * head_dim * 2;
}

void mirror_keys(const float* kv, int64_t kv_first, int64_t kv_rows, const float* entries,
                 int64_t n_entries, int64_t head_dim, bool split, void* mirror,
                 cudaStream_t stream) {
  const int64_t quads = (kv_rows + n_entries) * (head_dim / 4);
  if (quads <= 0) return;
  launch_pdl(mirror_keys_kernel, unsigned(std::min<int64_t>((quads + 255) / 256, 8192)), 256, 0,
             stream, kv, kv_first, kv_rows, entries, n_entries, head_dim, split,
             static_cast<uint16_t*>(mirror));
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void attend_rows_mma_mirrored(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                              int64_t head_dim, int64_t window, const float* sinks,
                              bool use_entries, const int32_t* chosen, const int32_t* n_chosen,
                              int64_t topk, bool split, const float* kv, int64_t kv_first,
                              int64_t kv_rows, const float* entries, int64_t n_entries,
                              void* mirror, float* out, cudaStream_t stream,
                              const QueryNormRope& norm, int warp_channels) {
  if (n <= 0) return;
  check_shape(heads, head_dim);
  check_query_norm(norm, head_dim, "cuda tensor-core attention");
  check_channels(warp_channels);
  if (kv_first < 0 || kv_rows < 0 || n_entries < 0 || (n_entries > 0 && !entries))
    throw std::invalid_argument("cuda tensor-core attention: a key mirror of " +
                                std::to_string(kv_rows) + " KV rows from " +
                                std::to_string(kv_first) + " and " + std::to_string(n_entries) +
                                " entries");
  auto* keys = static_cast<uint16_t*>(mirror);
  mirror_keys(kv, kv_first, kv_rows, entries, n_entries, head_dim, split, keys, stream);
  const KeyMirror m{keys, kv_first, kv_rows, n_entries};
  (split ? dispatch_head_dim<true>
         : dispatch_head_dim<false>)(head_dim, q, rows, n, heads, window, sinks, use_entries,
                                     chosen, n_chosen, topk, &m, norm, warp_channels, out, stream);
}

bool attend_rows_mma_supported(int64_t heads, int64_t head_dim) {
  return heads > 0 && heads % kBlockHeads == 0 &&
         (head_dim == 128 || head_dim == 256 || head_dim == 512);
}

void attend_rows_mma(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                     int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                     const int32_t* chosen, const int32_t* n_chosen, int64_t topk, bool split,
                     float* out, cudaStream_t stream, const QueryNormRope& norm,
                     int warp_channels) {
  if (n <= 0) return;
  check_shape(heads, head_dim);
  check_query_norm(norm, head_dim, "cuda tensor-core attention");
  check_channels(warp_channels);
  (split ? dispatch_head_dim<true> : dispatch_head_dim<false>)(head_dim, q, rows, n, heads, window,
                                                               sinks, use_entries, chosen, n_chosen,
                                                               topk, nullptr, norm, warp_channels,
                                                               out, stream);
}

}  // namespace agentrt::engine::cuda
