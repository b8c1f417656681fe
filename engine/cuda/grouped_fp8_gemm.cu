// grouped_fp8_gemm.h's kernel. A persistent block of three warpgroups per SM walks its tiles
// (128 of an expert's rows times 256 output columns, two 128-row blocks of the weight) in
// 128-deep steps through a ring of four shared-memory stages:
//  - warpgroup 0 (producer) copies a step's activation rows (e4m3, 128-byte swizzled rows, the
//    layout wgmma reads), both weight blocks' FP4 bytes, ue8m0 codes and largest code (from a
//    table a small kernel fills first) and the rows' scales with cp.async, as soon as the stage
//    is free; the copies themselves mark the stage full when they land (no thread waits for
//    them, so the ring's stages are all in flight);
//  - warpgroups 1 and 2 (consumers) each own one weight block: they turn the next step's FP4
//    rows into e4m3 (a byte permutation per 4 values from an 8-entry table of the scaled e2m1
//    magnitudes, fp4_e4m3.h's values) while the tensor cores multiply this step's (four wgmma
//    m64n128k32 for each 64-row half of the tile), then add each half's product into float32
//    accumulators times the row's scale and the block's; under row scales
//    (GroupedExpertProduct::row_scales) the halves' products go straight into the tile's
//    accumulators, left running while the next step converts, and the scales multiply each
//    output once at the tile's end (half the instructions a step: no promotion).
// The conversion, spread over the 256 consumer threads with no barrier between the two
// warpgroups, runs beside the tensor cores, and each converted block serves 128 rows (tiles of
// 64 rows took 9.4 ms for a 16K prefill's gate/up product, 350 TFLOP/s; a producer that
// converted, one warp a scheduler, ~360).
#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp4_e4m3.h"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/segment_search.cuh"
#include "engine/cuda/wgmma.cuh"
#include "engine/cuda/wgmma_runs.h"

namespace agentrt::engine::cuda {
namespace {

// The compute_90 (PTX) pass has no wgmma: the kernel is a trap there, its helpers left out.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AGENTRT_NO_WGMMA 1
#endif

namespace fe = fp4_e4m3;
using grouped_fp8::kDepth;
using grouped_fp8::kTileCols;
using grouped_fp8::kTileRows;

constexpr int kStages = 4;
constexpr int kThreads = 384;    // warpgroup 0 produces, 1 and 2 consume
constexpr int kBlockRows = 128;  // weight rows a consumer warpgroup owns (one block)
// Byte offsets within a stage; a starts on a 1024-byte boundary (the swizzle's period).
constexpr int kStageA = 0;
constexpr int kRawRow = 64;  // bytes a stored FP4 row takes in a stage (raw_chunk's order)
constexpr int kStageRaw = kStageA + kTileRows * kDepth;
constexpr int kStageCodes = kStageRaw + kTileCols * kRawRow;
constexpr int kStageAScale = kStageCodes + kTileCols * 4;
constexpr int kStageMaxes = kStageAScale + kTileRows * 4;  // both blocks' largest codes
constexpr int kStageBytes = (kStageMaxes + 32 + 1023) / 1024 * 1024;
constexpr int kWeightBytes = kBlockRows * kDepth;  // a block's step as e4m3
// The stages, then two e4m3 buffers per consumer warpgroup, + room to align the base.
constexpr int kSharedBytes = kStages * kStageBytes + 4 * kWeightBytes + 1024;

#ifndef AGENTRT_NO_WGMMA
constexpr int kZeroShift = 28;  // table entries 0..27: shifts 6 .. -21; 28: zeros; 29: NaNs
constexpr int kNanEntry = 29;
constexpr int kTable = 30;
constexpr int kSharedExperts = 256;  // experts whose tile and row starts the block keeps in shared

// A 128-byte row's 16-byte chunk c in the 128-byte swizzle (TMA's SWIZZLE_128B, wgmma's layout
// 1): chunk c of row r sits at chunk c ^ (r % 8).
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

// A stored FP4 row's 16-byte chunk q in a stage: rotated by the row so that 8 threads reading
// chunk q of 8 consecutive rows hit 8 different bank groups.
__device__ __forceinline__ int raw_chunk(int row, int q) {
  return row * kRawRow + ((q ^ ((row >> 1) & 3)) << 4);
}

// The barrier gets one arrival once every cp.async this thread issued so far has landed.
__device__ __forceinline__ void copies_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_address(bar))
               : "memory");
}
// A consumer warpgroup's own barrier (barrier 0 is __syncthreads): 1 or 2.
__device__ __forceinline__ void warpgroup_sync(int id) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}

// Eight FP4 values as eight e4m3 bytes from the block's table (fp4_e4m3.h).
__device__ __forceinline__ uint2 fp4_to_e4m3(uint32_t w, uint2 table) {
  return fe::e4m3_of_fp4_word(w, table.x, table.y);
}

// The outputs (float32, or bf16 under GroupedExpertProduct::out_bf16) and a pair of adjacent
// columns stored there.
template <bool kBf16Out>
__device__ __forceinline__ std::conditional_t<kBf16Out, __nv_bfloat16, float>* output_of(
    const GroupedExpertProduct& p) {
  if constexpr (kBf16Out)
    return p.out_bf16;
  else
    return p.out;
}
__device__ __forceinline__ void store_pair(float* at, float x, float y) {
  *reinterpret_cast<float2*>(at) = make_float2(x, y);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* at, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(x, y);
}

// A K-major operand of 128-byte rows in the 128-byte swizzle: 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t operand(const void* p) {
  return wgmma_descriptor(shared_address(p), 16, 1024);
}

// Where tile t lies: expert a (local index), its first padded row and row count, the tile's
// first row within them and first output column.
struct Tile {
  int64_t a, first, rows, m0, n0;
};
// tile_start and pad: the block's shared copies (or p's where there are more experts).
__device__ __forceinline__ Tile tile_at(const GroupedExpertProduct& p, const int32_t* tile_start,
                                        const int32_t* pad, int64_t t) {
  Tile x;
  x.a = segment_of(tile_start, 0, p.used, int32_t(t));
  x.first = pad[x.a];
  x.rows = pad[x.a + 1] - x.first;
  const int64_t row_tiles = (x.rows + kTileRows - 1) / kTileRows, local = t - tile_start[x.a];
  x.n0 = local / row_tiles * kTileCols;
  x.m0 = local % row_tiles * kTileRows;
  return x;
}

// A block of 128 weight rows: their FP4 bytes and their ue8m0 codes.
struct BlockWeight {
  const uint8_t* data;
  const uint8_t* codes;
};
// Rows n0 .. n0 + 127 of expert a's matrix (the gate and up rows stacked for the up product).
__device__ __forceinline__ BlockWeight weight_of(const GroupedExpertProduct& p, int64_t a,
                                                 int64_t n0) {
  const int32_t ex = p.active[a];
  const WeightMatrix* w = p.down ? &p.experts.w2[ex] : &p.experts.w1[ex];
  if (!p.down && n0 >= p.n / 2) {
    w = &p.experts.w3[ex];
    n0 -= p.n / 2;
  }
  const auto* data = static_cast<const uint8_t*>(w->data);
  const auto* codes = static_cast<const uint8_t*>(w->scale);
  return {data + n0 * (p.k / 2), codes + (w->row_offset + n0) * (p.k / fe::kScaleColumns)};
}
#endif  // AGENTRT_NO_WGMMA

// p.block_max[a][nb][kb]: the largest finite ue8m0 code of weight block (nb, kb) of expert a
// (fp4_e4m3.h's block scale), for the product kernel's copies. One block of 128 threads (a row
// each) per (nb, a).
__global__ void __launch_bounds__(128)
    block_max_kernel(const __grid_constant__ GroupedExpertProduct p) {
#ifndef AGENTRT_NO_WGMMA
  __shared__ int warp_max[4];
  const int64_t a = blockIdx.y, nb = blockIdx.x, depth_steps = p.k / kDepth;
  const int t = int(threadIdx.x);
  const BlockWeight w = weight_of(p, a, nb * kBlockRows);
  const uint8_t* row = w.codes + t * (p.k / fe::kScaleColumns);
  int32_t* out = p.block_max + (a * (p.n / kBlockRows) + nb) * depth_steps;
  int all = fe::kNoCode;  // the largest over the block's whole rows
  for (int64_t kb = 0; kb < depth_steps; ++kb) {
    const int emax =
        fe::block_largest_code(__ldg(reinterpret_cast<const uint32_t*>(row) + kb), warp_max);
    if (t == 0) out[kb] = emax;
    all = max(all, emax);
    __syncthreads();  // every thread has read warp_max before the next block's
  }
  // Row scales: every depth step of the block takes the same scale.
  if (p.row_scales && t == 0)
    for (int64_t kb = 0; kb < depth_steps; ++kb) out[kb] = all;
#else
  __trap();
#endif
}

// kRowScales: p.row_scales (no promotion; the accumulators span a tile's whole depth).
// kBf16Out: p.out_bf16 set (a template parameter: the float32 kernels stay the code they were).
template <bool kRowScales, bool kBf16Out>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_expert_kernel(const __grid_constant__ GroupedExpertProduct p) {
#ifndef AGENTRT_NO_WGMMA
  extern __shared__ uint8_t shared_raw[];
  __shared__ uint64_t full[kStages], empty[kStages];
  __shared__ uint2 table[kTable];
  // The tile search reads these once per tile in every warp: from shared memory, not the L2.
  __shared__ int32_t shared_tiles[kSharedExperts + 1], shared_pad[kSharedExperts + 1];
  const bool in_shared = p.used <= kSharedExperts;
  const int32_t* tile_start = in_shared ? shared_tiles : p.tile_start;
  const int32_t* pad = in_shared ? shared_pad : p.pad;
  uint8_t* stages = shared_raw + ((1024 - (shared_address(shared_raw) & 1023)) & 1023);
  uint8_t* weights = stages + kStages * kStageBytes;  // [warpgroup][2], 1024-aligned
  const int tid = int(threadIdx.x), wg = tid / 128, lane = tid % 32, warp = (tid % 128) / 32;
  const int64_t depth_steps = p.k / kDepth;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 128);  // every producer thread's copies
      mbarrier_init(&empty[s], 8);   // one lane of every consumer warp
    }
    mbarrier_init_fence();
  }
  if (tid < kTable) {
    // The e4m3 bytes of the 8 e2m1 magnitudes times 2^(6 - tid) (fp4_e4m3.h's code_factor for a
    // code tid below the block's largest), zeros past 2^-21, NaNs for NaN codes.
    uint32_t bytes[2] = {0, 0};
    for (int m = 0; m < 8; ++m) {
      const float v = tid < kZeroShift    ? fe::e2m1_value(uint32_t(m)) * fe::exp2_any(6 - tid)
                      : tid == kZeroShift ? 0.0f
                                          : __uint_as_float(0x7fc00000u);
      const uint32_t b = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
      bytes[m / 4] |= b << (8 * (m % 4));
    }
    table[tid] = make_uint2(bytes[0], bytes[1]);
  }
  if (in_shared)
    for (int64_t a = tid; a <= p.used; a += kThreads) {
      shared_tiles[a] = p.tile_start[a];
      shared_pad[a] = p.pad[a];
    }
  __syncthreads();

  if (wg == 0) {
    // Producer: few registers, the consumers take the rest. The block's 384 x 168 registers are
    // all there is to move: 128 x 56 + 256 x 224 fits them (asking the consumers for more than
    // the producer gives back waits forever: 80 + 216 hung on the H100).
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    // Step j of this block (its tiles' depth steps in turn) lives in stage j % kStages.
    const int c = tid % 8, q = tid % 4;
    const uint8_t* a_row = p.x;  // this thread's first activation row's chunk at depth 0
    int a_rows = 0;              // how many of its 8 rows (16 apart) the expert has
    const uint8_t* w_block[2] = {nullptr, nullptr};  // the two blocks' FP4 rows
    const uint8_t* w_codes[2] = {nullptr, nullptr};  // this thread's row's codes in both
    const float* a_scales = p.x_scales;
    const int32_t* maxes = p.block_max;  // thread 0 and 1: their block's largest codes
    bool scale_valid = false;
    int64_t tile_rows = 0;
    auto start_tile = [&](const Tile& t) {
      a_row = p.x + (t.first + t.m0 + tid / 8) * p.k + c * 16;
      a_rows = int(std::min<int64_t>(8, (t.rows - t.m0 - tid / 8 + 15) / 16));
      // The second block, where the matrix has no more rows, repeats the first (unused).
      const BlockWeight b0 = weight_of(p, t.a, t.n0),
                        b1 = t.n0 + kBlockRows < p.n ? weight_of(p, t.a, t.n0 + kBlockRows) : b0;
      w_block[0] = b0.data + (tid / 4) * (p.k / 2) + q * 16;
      w_block[1] = b1.data + (tid / 4) * (p.k / 2) + q * 16;
      const int64_t nb = t.n0 / kBlockRows + (tid == 1 && t.n0 + kBlockRows < p.n ? 1 : 0);
      maxes = p.block_max + (t.a * (p.n / kBlockRows) + nb) * depth_steps;
      w_codes[0] = b0.codes + tid * (p.k / fe::kScaleColumns);
      w_codes[1] = b1.codes + tid * (p.k / fe::kScaleColumns);
      scale_valid = t.m0 + 4 * tid < t.rows;  // rows come in 16s
      a_scales = p.x_scales + t.first * depth_steps + (scale_valid ? t.m0 + 4 * tid : 0);
      tile_rows = t.rows;
    };
    auto issue = [&](int64_t j, int64_t kb) {
      const int s = int(j % kStages);
      if (j >= kStages) mbarrier_wait(&empty[s], uint32_t((j / kStages - 1) & 1));
      uint8_t* st = stages + s * kStageBytes;
#pragma unroll
      for (int i = 0; i < 8; ++i)
        cp_async_16(st + kStageA + swizzled(tid / 8 + 16 * i, c),
                    a_row + (i < a_rows ? 16 * i * p.k : 0) + kb * kDepth, i < a_rows);
#pragma unroll
      for (int i = 0; i < 8; ++i)
        cp_async_16(st + kStageRaw + raw_chunk(tid / 4 + 32 * i, q),
                    w_block[i / 4] + (32 * (i % 4)) * (p.k / 2) + kb * (kDepth / 2), true);
      const int64_t code_offset = kb * (kDepth / fe::kScaleColumns);
      cp_async_4(st + kStageCodes + 4 * tid, w_codes[0] + code_offset);
      cp_async_4(st + kStageCodes + 4 * (kBlockRows + tid), w_codes[1] + code_offset);
      if (tid < kTileRows / 4)
        cp_async_16(st + kStageAScale + 16 * tid, a_scales + kb * tile_rows, scale_valid);
      if (tid < 2) cp_async_4(st + kStageMaxes + 4 * tid, maxes + kb);
      copies_arrive(&full[s]);
    };
    int64_t j = 0;
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      start_tile(tile_at(p, tile_start, pad, t));
      for (int64_t kb = 0; kb < depth_steps; ++kb, ++j) issue(j, kb);
    }
    cp_async_wait_all();  // leaves only once its copies are in
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    // Consumer warpgroup wg owns the tile's weight rows 128 (wg - 1) .. 128 wg - 1: it turns
    // them into e4m3 (its thread ct converts row ct), one step ahead, and multiplies all 128 of
    // the tile's activation rows by them, 64 at a time.
    const int b = wg - 1, ct = tid % 128;
    const int64_t steps = (p.tiles - blockIdx.x + gridDim.x - 1) / gridDim.x * depth_steps;
    uint8_t* mine = weights + 2 * b * kWeightBytes;
    auto block_max = [&](const uint8_t* st) {
      return reinterpret_cast<const int*>(st + kStageMaxes)[b];
    };
    auto convert = [&](int64_t j) {
      const int s = int(j % kStages);
      const uint8_t* st = stages + s * kStageBytes;
      mbarrier_wait(&full[s], uint32_t((j / kStages) & 1));
      const int emax = block_max(st);
      const uint32_t codes =
          *reinterpret_cast<const uint32_t*>(st + kStageCodes + 4 * (b * kBlockRows + ct));
      const uint8_t* raw = st + kStageRaw;
      const int raw_row = b * kBlockRows + ct;
      uint8_t* row = mine + (j % 2) * kWeightBytes;
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // 32 values under one code
        const uint4 v = *reinterpret_cast<const uint4*>(raw + raw_chunk(raw_row, q));
        const int code = int((codes >> (8 * q)) & 0xff);
        const uint2 tab =
            table[code == fe::kNanCode ? kNanEntry : min(max(emax - code, 0), kZeroShift)];
        const uint2 w0 = fp4_to_e4m3(v.x, tab), w1 = fp4_to_e4m3(v.y, tab),
                    w2 = fp4_to_e4m3(v.z, tab), w3 = fp4_to_e4m3(v.w, tab);
        *reinterpret_cast<uint4*>(row + swizzled(ct, 2 * q)) = make_uint4(w0.x, w0.y, w1.x, w1.y);
        *reinterpret_cast<uint4*>(row + swizzled(ct, 2 * q + 1)) =
            make_uint4(w2.x, w2.y, w3.x, w3.y);
      }
      // The tensor cores read the weights through the async proxy.
      fence_proxy_async();
    };
    if (steps > 0) {
      convert(0);
      warpgroup_sync(1 + b);
    }
    // A tile's outputs: acc[h] (the fragment: element i of the thread is row 16 warp + lane / 4
    // + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (lane % 4) + i % 2 of half h's 64 x 128) times the
    // factor of its row (f0 / f1 for half 0's rows r and r + 8, g0 / g1 for half 1's), into the
    // expert's padded slot rows or its rows of out_start, as float32 or (kBf16Out) bf16 pairs.
    auto store = [&](const Tile& tile, float(&acc)[2][64], float f0, float f1, float g0, float g1) {
      int64_t out_first = tile.first, out_rows = tile.rows;
      if (p.out_start) {
        out_first = p.out_start[tile.a];
        out_rows = p.out_start[tile.a + 1] - out_first;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r0 = tile.m0 + 64 * h + 16 * warp + lane / 4, r1 = r0 + 8;
        const float e0 = h == 0 ? f0 : g0, e1 = h == 0 ? f1 : g1;
        auto* out0 = output_of<kBf16Out>(p) + (out_first + r0) * p.ld_out + tile.n0 +
                     b * kBlockRows + 2 * (lane % 4);
        auto* out1 = out0 + 8 * p.ld_out;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          if (r0 < out_rows) store_pair(out0 + 8 * i, acc[h][4 * i] * e0, acc[h][4 * i + 1] * e0);
          if (r1 < out_rows)
            store_pair(out1 + 8 * i, acc[h][4 * i + 2] * e1, acc[h][4 * i + 3] * e1);
        }
      }
    };
    if constexpr (kRowScales) {
      // The whole depth in the accumulators: a step issues both halves' products and leaves
      // them running while it converts the next step's weights; the wait for the step before
      // (wait_group 1) frees that step's stage and the weight buffer the conversion writes.
      float acc[2][64];
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.0f;
      int held = -1;  // the stage the tensor cores may still read
      int64_t j = 0;
      for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
        const Tile tile = tile_at(p, tile_start, pad, t);
        const bool busy = tile.n0 + b * kBlockRows < p.n;  // as below: products run either way
        float f0 = 0.0f, f1 = 0.0f, g0 = 0.0f, g1 = 0.0f;
        for (int64_t kb = 0; kb < depth_steps; ++kb, ++j) {
          const int s = int(j % kStages);
          const uint8_t* st = stages + s * kStageBytes;
          const uint8_t* w = mine + (j % 2) * kWeightBytes;
          wgmma_fence();
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int kk = 0; kk < kDepth / 32; ++kk)
              wgmma_e4m3_64x128x32(acc[h], operand(st + kStageA + h * 64 * 128 + 32 * kk),
                                   operand(w + 32 * kk), kb > 0 || kk > 0);
          wgmma_commit();
          if (kb == 0) {
            // Every step of the tile has the same scales: the first step's.
            const float b_scale = fe::block_scale(block_max(st));
            const float* a_scale = reinterpret_cast<const float*>(st + kStageAScale);
            const int r = 16 * warp + lane / 4;
            f0 = a_scale[r] * b_scale, f1 = a_scale[r + 8] * b_scale;
            g0 = a_scale[64 + r] * b_scale, g1 = a_scale[64 + r + 8] * b_scale;
          }
          wgmma_wait<1>();
          if (held >= 0) {
            __syncwarp();
            if (lane == 0) mbarrier_arrive(&empty[held]);
          }
          held = s;
          if (j + 1 < steps) convert(j + 1);
          // Every thread's weights of step j + 1 are written.
          warpgroup_sync(1 + b);
        }
        wgmma_wait<0>();
        // Keeps the compiler from reading the accumulators before the wait.
#pragma unroll
        for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(acc[0][i]), "+f"(acc[1][i])::"memory");
        __syncwarp();
        if (lane == 0) mbarrier_arrive(&empty[held]);
        held = -1;
        if (busy) store(tile, acc, f0, f1, g0, g1);
      }
      return;
    }
    float acc[2][64], part[64];
    // The step's product of one 64-row half into part (asynchronous: wait before reading it).
    auto multiply = [&](const uint8_t* st, const uint8_t* w, int h) {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kDepth / 32; ++kk)
        wgmma_e4m3_64x128x32(part, operand(st + kStageA + h * 64 * 128 + 32 * kk),
                             operand(w + 32 * kk), kk > 0);
      wgmma_commit();
    };
    auto product_done = [&]() {
      wgmma_wait<0>();
      // Keeps the compiler from reading the products before the wait.
#pragma unroll
      for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(part[i])::"memory");
    };
    int64_t j = 0;
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      const Tile tile = tile_at(p, tile_start, pad, t);
      // Warpgroup-uniform: whether its block exists, and the tile's second half any rows.
      // Whether the warpgroup's block exists (the matrix has rows there). The products run
      // either way: a wgmma under a branch the compiler cannot prove uniform is serialised
      // (ptxas C7518: each waits for the one before), which cost more than the products of
      // an empty block or an empty second half (zero rows, their results never stored).
      const bool busy = tile.n0 + b * kBlockRows < p.n;
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.0f;
      for (int64_t kb = 0; kb < depth_steps; ++kb, ++j) {
        const int s = int(j % kStages);
        const uint8_t* st = stages + s * kStageBytes;
        const uint8_t* w = mine + (j % 2) * kWeightBytes;
        multiply(st, w, 0);
        if (j + 1 < steps) convert(j + 1);
        const float b_scale = fe::block_scale(block_max(st));
        const float* a_scale = reinterpret_cast<const float*>(st + kStageAScale);
        const int r = 16 * warp + lane / 4;
        const float f0 = a_scale[r] * b_scale, f1 = a_scale[r + 8] * b_scale,
                    g0 = a_scale[64 + r] * b_scale, g1 = a_scale[64 + r + 8] * b_scale;
        product_done();
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[0][i] = fmaf(part[i], (i & 2) ? f1 : f0, acc[0][i]);
        multiply(st, w, 1);
        product_done();
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[1][i] = fmaf(part[i], (i & 2) ? g1 : g0, acc[1][i]);
        // The stage's activations and scales are read: give it back.
        __syncwarp();
        if (lane == 0) mbarrier_arrive(&empty[s]);
        // Every thread's weights of step j + 1 are written (and the products of step j, which
        // read the other buffer, done).
        warpgroup_sync(1 + b);
      }
      if (busy) store(tile, acc, 1.0f, 1.0f, 1.0f, 1.0f);
    }
  }
#else
  __trap();  // built without sm_90a: grouped_expert_product_runs() keeps the host from here
#endif
}

}  // namespace

int64_t grouped_expert_tiles(const int32_t* pad, int64_t used, int64_t n, int32_t* starts) {
  starts[0] = 0;
  for (int64_t a = 0; a < used; ++a) {
    const int64_t rows = pad[a + 1] - pad[a];
    starts[a + 1] =
        starts[a] + int32_t((rows + kTileRows - 1) / kTileRows * ((n + kTileCols - 1) / kTileCols));
  }
  return starts[used];
}

bool grouped_expert_product_runs(int device) { return wgmma_kernels_run(device); }

int64_t grouped_expert_scratch_ints(int64_t used, int64_t n, int64_t k) {
  return used * (n / kBlockRows) * (k / kDepth);
}

bool grouped_expert_product_fits(int64_t n, int64_t k) {
  return n > 0 && k > 0 && n % kBlockRows == 0 && k % kDepth == 0;
}

void grouped_expert_product(const GroupedExpertProduct& p, int blocks, cudaStream_t stream) {
  if (!grouped_expert_product_fits(p.n, p.k) || (!p.down && p.n % (2 * kBlockRows) != 0))
    throw std::invalid_argument("grouped_expert_product: n " + std::to_string(p.n) + " and k " +
                                std::to_string(p.k) + " must be multiples of 128" +
                                (p.down ? "" : " (n of 256: gate and up stacked)"));
  const bool bf16 = p.out_bf16 != nullptr;
  if (bf16 == (p.out != nullptr))
    throw std::invalid_argument(
        "grouped_expert_product: exactly one of out (float32) and out_bf16 must be set");
  if (p.tiles <= 0) return;
  if (p.block_max == nullptr)
    throw std::invalid_argument("grouped_expert_product: no block_max scratch");
  block_max_kernel<<<dim3(unsigned(p.n / kBlockRows), unsigned(p.used)), 128, 0, stream>>>(p);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  auto kernel =
      p.row_scales
          ? (bf16 ? grouped_expert_kernel<true, true> : grouped_expert_kernel<true, false>)
          : (bf16 ? grouped_expert_kernel<false, true> : grouped_expert_kernel<false, false>);
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  const int grid = int(std::min<int64_t>(std::max(blocks, 1), p.tiles));
  kernel<<<grid, kThreads, kSharedBytes, stream>>>(p);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
