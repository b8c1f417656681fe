// Prefill attention on Hopper's warpgroup MMA (sm_90a): attend_rows_mma_mirrored's plain-bf16
// products (split false) for heads of 512, with wgmma instead of mma.sync. That kernel runs one
// row's 64 heads on 8 warps that each reload their query fragments from shared memory for every
// tile and add up two channel slices' partial scores through shared memory; it ran at ~115
// TFLOP/s on an H100 (a 16K fp8 prefill's attention core: 29 ms for ~3.3 TFLOP). Here one block
// is one row's 64 heads on two warpgroups, with the query (bf16, 64 KB) and two 64-key tiles of
// the bf16 key mirror (64 KB each, cp.async) in shared memory in the 128-byte swizzle:
//  - scores: warpgroup w multiplies the 64 heads against keys [32 w, 32 w + 32) of the tile over
//    all 512 channels (32 wgmma of 64 x 32 x 16, both operands from shared memory), so no
//    partial scores are exchanged;
//  - softmax: the two warpgroups swap their rows' maxima through shared memory, so both scale by
//    the same running maximum, and each writes its half of P (bf16) into a 64 x 64 operand;
//  - out += P V: warpgroup w owns output channels [256 w, 256 w + 256) and multiplies all of P
//    (4 wgmma of 64 x 256 x 16) by the tile read as an N-major operand (the keys are the values).
// The next tile's copies land while this one is multiplied. Each row's sum of exponentials is
// added up across the warpgroups at the end, with the sink's term (exp(sink - max)).
//
// kLean (CudaOptions::attention_lean) computes the same values with fewer instructions a tile
// (Nsight Compute, thirtieth session: ~1,490 a warp a 64-key tile, issue slots 38% busy with two
// warps a scheduler, so the instructions themselves are the kernel's time): the descriptors made
// once and moved on by constants (each of the 32 score wgmma rebuilt both from addresses, ~13
// instructions); a tile wholly inside the window or wholly among the entries copied from
// consecutive rows (or the chosen rows) with the destinations' swizzle worked out once, where
// each copy looked its key up; the scores masked only in a row's last tile. It also asks the L2
// for the query of the row query_ahead rows on (~one wave of blocks later): a block's first
// instructions wait on its 64 KB query from DRAM with nothing else to run on the SM.
#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/attention_keys.cuh"
#include "engine/cuda/attention_query.cuh"
#include "engine/cuda/attention_wgmma.h"
#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/wgmma.cuh"

namespace agentrt::engine::cuda {
namespace {

// The compute_90 (PTX) pass has no wgmma: the kernel is a trap there.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AGENTRT_NO_WGMMA_ATTENTION 1
#endif

constexpr int kHeads = 64;     // a block's heads: the M side of every product
constexpr int kDim = 512;      // head_dim
constexpr int kKeys = 64;      // keys a tile
constexpr int kThreads = 256;  // two warpgroups
constexpr int kStages = 2;
constexpr int kChunk = 64 * 128;                // 64 rows of one 64-channel chunk (8 KB)
constexpr int kOperand = (kDim / 64) * kChunk;  // 64 rows of 512 channels (64 KB)
// Byte offsets of the dynamic shared memory, from a 1024-byte boundary (the swizzle's period).
constexpr int kQuery = 0;
constexpr int kTiles = kQuery + kOperand;
constexpr int kProbs = kTiles + kStages * kOperand;  // P: 64 heads x 64 keys, bf16
constexpr int kSwap = kProbs + kHeads * kKeys * 2;   // float [2 warpgroups][64 heads]
constexpr int kChosen = kSwap + 2 * kHeads * 4;      // int32 [topk]: the row's chosen entries (CSA)
constexpr int kSharedBytes = kChosen + 1024;         // + room to align the base; + topk * 4 (CSA)
constexpr int kMaxShared = 227 * 1024;  // an sm_90 block's largest dynamic shared memory

#ifndef AGENTRT_NO_WGMMA_ATTENTION
constexpr int kCopies = kKeys * (kDim / 8) / kThreads;  // 16-byte copies a thread a tile

// (row, channel)'s byte in a 64-row operand of 64-channel chunks, each chunk's 128-byte rows in
// the 128-byte swizzle (16-byte piece p of row r at piece p ^ (r % 8)).
__device__ __forceinline__ int operand_byte(int row, int ch) {
  return (ch >> 6) * kChunk + row * 128 + ((((ch & 63) >> 3) ^ (row & 7)) << 4) + (ch & 7) * 2;
}
#endif

#ifndef AGENTRT_NO_WGMMA_ATTENTION
// kFp8Out's epilogue: the block's outputs (o: the warpgroup's fragment, as the float32 path
// would store them) as e4m3 codes with one power-of-two scale a head's 128 channels, the values
// and roundings of quantize_rows_e4m3 on the float32 rows. The tiles' shared memory is free by
// now (every product waited for, no copy in flight): the codes gather there, heads kCodeRow bytes
// apart (a warp's 8 heads' 2-byte stores in different banks), and leave as whole 16-byte pieces
// of the row.
constexpr int kCodeRow = kDim + 16;
__device__ __forceinline__ void store_e4m3(const float (&o)[128], uint8_t* codes, int wg, int r0,
                                           int c, int64_t h_base, int64_t row,
                                           const fp8_act_quant::RowsOut& out8) {
  namespace aq = fp8_act_quant;
  const int r1 = r0 + 8;
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // the warpgroup's two 128-channel blocks
    float a0 = 0.0f, a1 = 0.0f;
#pragma unroll
    for (int i = 16 * half; i < 16 * half + 16; ++i) {
      a0 = fmaxf(fmaxf(a0, fabsf(o[4 * i])), fabsf(o[4 * i + 1]));
      a1 = fmaxf(fmaxf(a1, fabsf(o[4 * i + 2])), fabsf(o[4 * i + 3]));
    }
    // The quad holds the block's 128 channels.
    a0 = fmaxf(a0, __shfl_xor_sync(0xffffffffu, a0, 1));
    a0 = fmaxf(a0, __shfl_xor_sync(0xffffffffu, a0, 2));
    a1 = fmaxf(a1, __shfl_xor_sync(0xffffffffu, a1, 1));
    a1 = fmaxf(a1, __shfl_xor_sync(0xffffffffu, a1, 2));
    const int e0 = aq::scale_exponent(__float_as_uint(a0)),
              e1 = aq::scale_exponent(__float_as_uint(a1));
    const float inv0 = e0 == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e0),
                inv1 = e1 == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e1);
#pragma unroll
    for (int i = 16 * half; i < 16 * half + 16; ++i) {
      const int ch = 256 * wg + 8 * i + 2 * c;
      *reinterpret_cast<uint16_t*>(codes + r0 * kCodeRow + ch) = uint16_t(__nv_cvt_float2_to_fp8x2(
          make_float2(o[4 * i] * inv0, o[4 * i + 1] * inv0), __NV_SATFINITE, __NV_E4M3));
      *reinterpret_cast<uint16_t*>(codes + r1 * kCodeRow + ch) = uint16_t(__nv_cvt_float2_to_fp8x2(
          make_float2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1), __NV_SATFINITE, __NV_E4M3));
    }
    if (c == 0) {
      const int64_t kb = (h_base + r0) * (kDim / aq::kBlock) + 2 * wg + half;
      *out8.scale(row, kb) = aq::exp2_exact(e0);
      *out8.scale(row, kb + 8 * (kDim / aq::kBlock)) = aq::exp2_exact(e1);
    }
  }
  __syncthreads();
  uint8_t* dst = out8.row(row) + h_base * kDim;
#pragma unroll
  for (int u = 0; u < kHeads * kDim / 16 / kThreads; ++u) {
    const int piece = int(threadIdx.x) + kThreads * u, h = piece / (kDim / 16),
              p = piece % (kDim / 16);
    *reinterpret_cast<uint4*>(dst + h * kDim + 16 * p) =
        *reinterpret_cast<const uint4*>(codes + h * kCodeRow + 16 * p);
  }
}
#endif

// kFp8Out: the outputs as out8's e4m3 rows (row0 + blockIdx.y) instead of float32 at out. Q: the
// query rows' type (float, or bf16 from wq_b's FP8 GEMM). kLean: above (query_ahead is read only
// there).
template <bool kFp8Out, typename Q, bool kLean>
__global__ void __launch_bounds__(kThreads, 1)
    attend_wgmma_kernel(const Q* q, const LayerRow* rows, int64_t heads, int64_t window,
                        const float* sinks, bool use_entries, const int32_t* chosen,
                        const int32_t* n_chosen, int64_t topk, float scale, QueryNormRope norm,
                        KeyMirror mirror, float* out, fp8_act_quant::RowsOut out8, int64_t row0,
                        int query_ahead) {
#ifndef AGENTRT_NO_WGMMA_ATTENTION
  pdl_begin();
  if constexpr (kLean) {
    // The query rows are written by the kernels before this one: asked for after the wait.
    if (threadIdx.x == 0 && query_ahead > 0 && blockIdx.y + int64_t(query_ahead) < gridDim.y)
      prefetch_l2(
          q + ((int64_t(blockIdx.y) + query_ahead) * heads + int64_t(blockIdx.x) * kHeads) * kDim,
          uint32_t(kHeads * kDim * sizeof(Q)));
  }
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (shared_address(smem_raw) & 1023)) & 1023);
  float* swap = reinterpret_cast<float*>(smem + kSwap);
  const uint32_t query_at = shared_address(smem + kQuery), tiles_at = shared_address(smem + kTiles),
                 probs_at = shared_address(smem + kProbs);

  const int64_t t = blockIdx.y, h_base = int64_t(blockIdx.x) * kHeads;
  const LayerRow row = rows[t];
  const KeyList keys = row_keys(row, t, window, use_entries, chosen, n_chosen, topk);
  const int64_t n_keys = keys.n_keys(), tiles = (n_keys + kKeys - 1) / kKeys;
  // The row's chosen entries, read once: the copies below look a key's row up for each of
  // their 16-byte pieces, and with a global load there (its latency before each copy) the 16K
  // fp8 prefill's attention core took 23.5 ms on an H100, against 19.4 this way (with the rows
  // looked up before the copies are issued).
  int32_t* chosen_rows = reinterpret_cast<int32_t*>(smem + kChosen);
  if (keys.chosen) {
    for (int64_t e = threadIdx.x; e < keys.n_entries; e += kThreads)
      chosen_rows[e] = keys.chosen[e];
    __syncthreads();
  }
  auto mirror_row = [&](int64_t i) -> int64_t {
    if (i < keys.n_window) return keys.first + i - mirror.kv_first;
    const int64_t e = i - keys.n_window;
    return mirror.kv_rows + (keys.chosen ? int64_t(chosen_rows[e]) : e);
  };
  // Tile j into stage j % kStages; keys past the row's last are zero-filled (scores masked).
  // A thread copies piece threadIdx.x % 64 of keys threadIdx.x / 64 + 4 u: their rows first,
  // then the copies.
  // kLean: this thread's 16 destinations are (even u) copy_even + 512 u, (odd u) copy_odd + 512 u
  // from the stage's start: key row r = threadIdx.x / 64 + 4 u has r % 8 = r0 + 4 (u % 2), so its
  // piece's swizzle is (p ^ r0) ^ 4 (u % 2).
  const int copy_row = threadIdx.x >> 6, copy_piece = threadIdx.x & 63;
  const uint32_t copy_even = (copy_piece >> 3) * kChunk + copy_row * 128 +
                             (((copy_piece & 7) ^ copy_row) << 4),
                 copy_odd = copy_even ^ (4 << 4);
  auto fetch = [&](int64_t j) {
    uint8_t* stage = smem + kTiles + (j % kStages) * kOperand;
    if constexpr (kLean) {
      const int64_t k0 = j * kKeys;
      const uint32_t stage_at = tiles_at + uint32_t(j % kStages) * kOperand;
      const uint16_t* src = nullptr;  // key row copy_row's piece when the rows are consecutive
      if (k0 + kKeys <= keys.n_window)
        src = mirror.keys + (keys.first + k0 + copy_row - mirror.kv_first) * kDim + 8 * copy_piece;
      else if (k0 >= keys.n_window && k0 + kKeys <= n_keys) {
        const int64_t e0 = k0 - keys.n_window + copy_row;
        if (keys.chosen) {
          int64_t at[kCopies];
#pragma unroll
          for (int u = 0; u < kCopies; ++u)
            at[u] = (mirror.kv_rows + chosen_rows[e0 + 4 * u]) * kDim + 8 * copy_piece;
#pragma unroll
          for (int u = 0; u < kCopies; ++u)
            cp_async_16_at(stage_at + (u & 1 ? copy_odd : copy_even) + 512 * u,
                           mirror.keys + at[u]);
          cp_async_commit();
          return;
        }
        src = mirror.keys + (mirror.kv_rows + e0) * kDim + 8 * copy_piece;
      }
      if (src) {
#pragma unroll
        for (int u = 0; u < kCopies; ++u)
          cp_async_16_at(stage_at + (u & 1 ? copy_odd : copy_even) + 512 * u, src + 4 * u * kDim);
        cp_async_commit();
        return;
      }
    }
    const int c8 = threadIdx.x & 63;
    int64_t src[kCopies];
#pragma unroll
    for (int u = 0; u < kCopies; ++u) {
      const int64_t key = j * kKeys + (threadIdx.x >> 6) + 4 * u;
      src[u] = key < n_keys ? mirror_row(key) * kDim + 8 * c8 : -1;
    }
#pragma unroll
    for (int u = 0; u < kCopies; ++u)
      cp_async_16(stage + operand_byte((threadIdx.x >> 6) + 4 * u, 8 * c8),
                  mirror.keys + (src[u] < 0 ? 0 : src[u]), src[u] >= 0);
    cp_async_commit();
  };
  if (tiles > 0) fetch(0);
  __shared__ float2 rope_cs[kDim / 2];
  stage_query_heads<kDim, kHeads, kThreads>(
      q + (t * heads + h_base) * kDim, norm, t, rope_cs, [&](int h, int c, float4 v) {
        *reinterpret_cast<uint2*>(smem + kQuery + operand_byte(h, c)) =
            make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
      });

  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int r0 = 16 * warp + g, r1 = r0 + 8;               // the thread's two heads of the block
  float m0 = sinks[h_base + r0], m1 = sinks[h_base + r1];  // running maxima, from the sinks
  float l0 = 0.0f, l1 = 0.0f;  // this thread's part of the rows' sums of exponentials
  float o[128];                // the warpgroup's 64 x 256 output fragment
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;

  for (int64_t j = 0; j < tiles; ++j) {
    cp_async_wait_all();
    fence_proxy_async();
    // Tile j (and the query) are in place for the tensor cores; both warpgroups are done with
    // tile j - 1's stage and with P.
    __syncthreads();
    if (j + 1 < tiles) fetch(j + 1);
    const uint32_t tile_at = tiles_at + uint32_t(j % kStages) * kOperand;

    // Scores of the 64 heads against this warpgroup's 32 keys.
    float s[16] = {};
    wgmma_fence();
    if constexpr (kLean) {
      // A descriptor's address field is the shared address / 16 (below 2^18 bytes: no carry).
      const uint64_t query_desc = wgmma_descriptor(query_at, 16, 1024),
                     keys_desc = wgmma_descriptor(tile_at + wg * 32 * 128, 16, 1024);
#pragma unroll
      for (int k = 0; k < kDim / 16; ++k) {
        const uint32_t at = ((k >> 2) * kChunk + (k & 3) * 32) >> 4;
        wgmma_bf16_64x32(s, query_desc + at, keys_desc + at, k > 0);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kDim / 16; ++k) {
        const uint32_t at = (k >> 2) * kChunk + (k & 3) * 32;
        wgmma_bf16_64x32(s, wgmma_descriptor(query_at + at, 16, 1024),
                         wgmma_descriptor(tile_at + at + wg * 32 * 128, 16, 1024), k > 0);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();

    // Online softmax: s[4 i + e] is head r0's score against key 8 i + 2 c + e of the half,
    // s[4 i + 2 + e] head r1's.
    const int64_t half = j * kKeys + 32 * wg;
    float mx0 = -INFINITY, mx1 = -INFINITY;
    if (!kLean || half + 32 > n_keys) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool live = half + 8 * i + 2 * c + e < n_keys;
          s[4 * i + e] = live ? s[4 * i + e] * scale : -INFINITY;
          s[4 * i + 2 + e] = live ? s[4 * i + 2 + e] * scale : -INFINITY;
          mx0 = fmaxf(mx0, s[4 * i + e]);
          mx1 = fmaxf(mx1, s[4 * i + 2 + e]);
        }
    } else {  // every key of the half is the row's: the same values, no masks
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[4 * i + e] *= scale;
          s[4 * i + 2 + e] *= scale;
          mx0 = fmaxf(mx0, s[4 * i + e]);
          mx1 = fmaxf(mx1, s[4 * i + 2 + e]);
        }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    if (c == 0) {
      swap[wg * kHeads + r0] = mx0;
      swap[wg * kHeads + r1] = mx1;
    }
    __syncthreads();
    const float n0 = fmaxf(m0, fmaxf(mx0, swap[(1 - wg) * kHeads + r0])),
                n1 = fmaxf(m1, fmaxf(mx1, swap[(1 - wg) * kHeads + r1]));
    const float corr0 = expf(m0 - n0), corr1 = expf(m1 - n1);
    m0 = n0;
    m1 = n1;
    l0 *= corr0;
    l1 *= corr1;
    uint8_t* probs = smem + kProbs;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float p0 = expf(s[4 * i] - m0), p1 = expf(s[4 * i + 1] - m0);
      const float p2 = expf(s[4 * i + 2] - m1), p3 = expf(s[4 * i + 3] - m1);
      l0 += p0 + p1;
      l1 += p2 + p3;
      // Keys 32 wg + 8 i + 2 c, + 1 of rows r0 and r1: piece 4 wg + i of each 128-byte row.
      *reinterpret_cast<uint32_t*>(probs + r0 * 128 + (((4 * wg + i) ^ (r0 & 7)) << 4) + 4 * c) =
          pack_bf16(p0, p1);
      *reinterpret_cast<uint32_t*>(probs + r1 * 128 + (((4 * wg + i) ^ (r1 & 7)) << 4) + 4 * c) =
          pack_bf16(p2, p3);
    }
    fence_proxy_async();
    __syncthreads();  // both halves of P are in place

    // out = out * corr + P V over this warpgroup's 256 channels.
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      o[4 * i] *= corr0;
      o[4 * i + 1] *= corr0;
      o[4 * i + 2] *= corr1;
      o[4 * i + 3] *= corr1;
    }
    wgmma_fence();
    if constexpr (kLean) {
      const uint64_t probs_desc = wgmma_descriptor(probs_at, 16, 1024),
                     values_desc = wgmma_descriptor(tile_at + 4 * wg * kChunk, kChunk, 1024);
#pragma unroll
      for (int k = 0; k < kKeys / 16; ++k)
        wgmma_bf16_64x256_nb(o, probs_desc + ((k * 32) >> 4), values_desc + ((k * 16 * 128) >> 4),
                             true);
    } else {
#pragma unroll
      for (int k = 0; k < kKeys / 16; ++k)
        wgmma_bf16_64x256_nb(
            o, wgmma_descriptor(probs_at + k * 32, 16, 1024),
            wgmma_descriptor(tile_at + 4 * wg * kChunk + k * 16 * 128, kChunk, 1024), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
  }

  // The rows' sums: the quad's parts, the other warpgroup's, and the sink's term.
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  __syncthreads();  // every read of the maxima is done
  if (c == 0) {
    swap[wg * kHeads + r0] = l0;
    swap[wg * kHeads + r1] = l1;
  }
  __syncthreads();
  const float inv0 = 1.0f / (l0 + swap[(1 - wg) * kHeads + r0] + expf(sinks[h_base + r0] - m0));
  const float inv1 = 1.0f / (l1 + swap[(1 - wg) * kHeads + r1] + expf(sinks[h_base + r1] - m1));
  const bool unrope = norm.pos && norm.unrope_output;
  const int first = kDim - norm.rope.dim;
  float* out0 = out + (t * heads + h_base + r0) * kDim;
  float* out1 = out0 + 8 * kDim;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int ch = 256 * wg + 8 * i + 2 * c;
    float2 a = make_float2(o[4 * i] * inv0, o[4 * i + 1] * inv0),
           b = make_float2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1);
    if (unrope && ch >= first) {  // apply_rope's inverse
      const float2 cs = rope_cs[(ch - first) / 2];
      a = make_float2(a.x * cs.x + a.y * cs.y, a.y * cs.x - a.x * cs.y);
      b = make_float2(b.x * cs.x + b.y * cs.y, b.y * cs.x - b.x * cs.y);
    }
    if constexpr (kFp8Out) {
      o[4 * i] = a.x;
      o[4 * i + 1] = a.y;
      o[4 * i + 2] = b.x;
      o[4 * i + 3] = b.y;
    } else {
      *reinterpret_cast<float2*>(out0 + ch) = a;
      *reinterpret_cast<float2*>(out1 + ch) = b;
    }
  }
  if constexpr (kFp8Out) store_e4m3(o, smem + kTiles, wg, r0, c, h_base, row0 + t, out8);
#else
  __trap();  // built without sm_90a: wgmma_kernels_run() keeps the host from here
#endif
}

// The kernel over every row, one launch per 65,535 rows.
template <typename Q, typename Kernel>
void launch_rows(Kernel kernel, const Q* q, const LayerRow* rows, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                 const int32_t* chosen, const int32_t* n_chosen, int64_t topk, float scale,
                 const QueryNormRope& norm, const KeyMirror& m, float* out,
                 const fp8_act_quant::RowsOut* out8, int64_t shared, int query_ahead,
                 cudaStream_t stream) {
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const fp8_act_quant::RowsOut no_rows;
  constexpr int64_t kMaxGridRows = 65535;
  for (int64_t r0 = 0; r0 < n; r0 += kMaxGridRows) {
    const int64_t rows_now = std::min(kMaxGridRows, n - r0);
    QueryNormRope part = norm;
    if (part.pos) part.pos += r0;
    launch_pdl(kernel, dim3(unsigned(heads / kHeads), unsigned(rows_now)), kThreads, size_t(shared),
               stream, q + r0 * heads * head_dim, rows + r0, heads, window, sinks, use_entries,
               chosen ? chosen + r0 * topk : nullptr, n_chosen ? n_chosen + r0 : nullptr, topk,
               scale, part, m, out8 ? nullptr : out + r0 * heads * head_dim, out8 ? *out8 : no_rows,
               r0, query_ahead);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

bool attend_rows_wgmma_supported(int64_t heads, int64_t head_dim) {
  return heads > 0 && heads % kHeads == 0 && head_dim == kDim;
}

void attend_rows_wgmma(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                       int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                       const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                       const float* kv, int64_t kv_first, int64_t kv_rows, const float* entries,
                       int64_t n_entries, void* mirror, float* out, cudaStream_t stream,
                       const QueryNormRope& norm, const fp8_act_quant::RowsOut* out8,
                       const __nv_bfloat16* q_bf16, bool lean, int query_ahead) {
  if (n <= 0) return;
  if (!attend_rows_wgmma_supported(heads, head_dim))
    throw std::invalid_argument("cuda wgmma attention: " + std::to_string(heads) + " heads of " +
                                std::to_string(head_dim) + " (needs a multiple of 64 heads of " +
                                std::to_string(kDim) + ")");
  check_query_norm(norm, head_dim, "cuda wgmma attention");
  if (kv_first < 0 || kv_rows < 0 || n_entries < 0 || (n_entries > 0 && !entries))
    throw std::invalid_argument("cuda wgmma attention: a key mirror of " + std::to_string(kv_rows) +
                                " KV rows from " + std::to_string(kv_first) + " and " +
                                std::to_string(n_entries) + " entries");
  const int64_t shared = kSharedBytes + (chosen ? topk * 4 : 0);
  if (shared > kMaxShared)
    throw std::invalid_argument("cuda wgmma attention: a top-k of " + std::to_string(topk) +
                                " chosen entries does not fit in shared memory");
  auto* keys = static_cast<uint16_t*>(mirror);
  mirror_keys(kv, kv_first, kv_rows, entries, n_entries, head_dim, false, keys, stream);
  const KeyMirror m{keys, kv_first, kv_rows, n_entries};
  if (out8 && (out8->cols != heads * head_dim || !out8->q))
    throw std::invalid_argument("cuda wgmma attention: e4m3 rows of " + std::to_string(out8->cols) +
                                " columns for " + std::to_string(heads) + " heads of " +
                                std::to_string(head_dim));
  const float scale = 1.0f / sqrtf(float(head_dim));
  const int ahead = lean ? std::max(query_ahead, 0) : 0;
  auto launch = [&]<typename Q, bool kLean>(const Q* query) {
    launch_rows(out8 ? attend_wgmma_kernel<true, Q, kLean> : attend_wgmma_kernel<false, Q, kLean>,
                query, rows, n, heads, head_dim, window, sinks, use_entries, chosen, n_chosen, topk,
                scale, norm, m, out, out8, shared, ahead, stream);
  };
  if (q_bf16) {
    if (lean)
      launch.operator()<__nv_bfloat16, true>(q_bf16);
    else
      launch.operator()<__nv_bfloat16, false>(q_bf16);
  } else if (lean) {
    launch.operator()<float, true>(q);
  } else {
    launch.operator()<float, false>(q);
  }
}

}  // namespace agentrt::engine::cuda
