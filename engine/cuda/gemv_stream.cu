// One activation row times a large bf16 or FP8 matrix (the decode step's projections and head),
// streamed through shared memory: one block per SM owns a contiguous range of row tiles, its
// producer warp keeps a ring of tiles in flight with bulk copies (stream_ring.cuh) and 16
// consumer warps multiply the oldest. The producer asks for its first tiles before the kernel
// before it has finished (weights are constants). Rows wider than 2 KB are split into column
// slices over several warps, whose sums meet in shared memory.
//
// FP8 matrices take the tensor cores instead (gemv_stream_mma_kernel): decoding an FP8 value
// for a float FMA costs about four instructions, which kept the CUDA-core consumers at 1.8 TB/s;
// two FP8 bytes become an f16 pair in one (f16_fragments.h), and one mma.sync then takes 16 rows
// x 16 columns.
#include <algorithm>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/f16_fragments.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/stream_ring.cuh"
#include "engine/cuda/tensor_map.h"
#include "engine/cuda/warp_rows_layout.h"

namespace agentrt::engine::cuda {
namespace {

using stream::kConsumerWarps;
using stream::kHeader;
using stream::kMaxStages;
using stream::kThreads;
constexpr int64_t kSums = 512;             // after the header: per stage, row sums and a count
constexpr int64_t kMaxStageBytes = 32768;  // rows per tile: as many as fit, at most one a warp
constexpr int64_t kMinBytes = int64_t(2) << 20;  // smaller matrices keep the plain kernel

struct StreamGemv {
  WeightMatrix w;
  const float* x;
  float* y;
  int64_t group_rows;  // block-diagonal groups of rows (each reading x + g * x_offset); 0: none
  int64_t x_offset;
  int64_t tiles;
  int rows_per_tile;  // R; kConsumerWarps / R warps (column slices) per row
  int stages;
  int early = 0;      // stages copied before the kernel before has finished (0: the ring's)
  int in_flight = 0;  // stages asked for and not yet landed, at most (0: the ring's)
};

struct TileShape {
  int rows = 0, slices = 0;
};

TileShape tile_shape(int64_t row_bytes) {
  TileShape s;
  s.rows = kConsumerWarps;
  while (s.rows > 1 && s.rows * row_bytes > kMaxStageBytes) s.rows /= 2;
  s.slices = kConsumerWarps / s.rows;
  return s;
}

template <WeightType T>
__global__ void __launch_bounds__(kThreads, 1) gemv_stream_kernel(StreamGemv g) {
  extern __shared__ __align__(128) char smem[];
  float* sums = reinterpret_cast<float*>(smem + kHeader);  // [kMaxStages][kConsumerWarps]
  int* done = reinterpret_cast<int*>(sums + kMaxStages * kConsumerWarps);  // [kMaxStages]
  float4* xs = reinterpret_cast<float4*>(smem + kHeader + kSums);
  const WeightMatrix& w = g.w;
  const int64_t row_bytes = w.cols * value_bytes_x2(T) / 2;
  const int R = g.rows_per_tile, S = kConsumerWarps / R;
  const int64_t tile_bytes = R * row_bytes;
  char* ring = smem + kHeader + kSums + stream::x_slots<T>(w.cols) * 16;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t t0 = int64_t(blockIdx.x) * g.tiles / gridDim.x,
                t1 = int64_t(blockIdx.x + 1) * g.tiles / gridDim.x;
  if (threadIdx.x < kMaxStages) done[threadIdx.x] = 0;
  const stream::Ring bars = stream::init_ring(smem, g.stages);
  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    uint32_t q = 0;
    for (int64_t t = t0; t < t1; ++t, ++q) {
      pdl_hold_copies(q, g.early);
      stream::hold_in_flight(bars, q, g.in_flight, g.stages);
      const stream::Slot s = stream::slot_of(q, g.stages);
      mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
      mbarrier_arrive_expect(&bars.full[s.index], uint32_t(tile_bytes));
      bulk_copy_to_shared(ring + s.index * tile_bytes,
                          static_cast<const char*>(w.data) + t * tile_bytes, uint32_t(tile_bytes),
                          &bars.full[s.index]);
    }
    return;
  }
  pdl_begin();
  const int r = warp / S, slice = warp % S;
  const int64_t chunks = row_bytes / 16, per_slice = chunks / S;
  const int64_t cb = (w.cols + 127) / 128;  // FP8 scale blocks per row
  int64_t group = -1;
  uint32_t q = 0;
  for (int64_t t = t0; t < t1; ++t, ++q) {
    const int64_t row0 = t * R, row = row0 + r;
    const int64_t gi = g.group_rows > 0 ? row0 / g.group_rows : 0;  // a tile is in one group
    if (gi != group) {
      if (group >= 0) stream::consumers_sync();  // every warp is done with the old activations
      group = gi;
      stream::stage_x<T>(g.x + gi * g.x_offset, w.cols, xs);
      stream::consumers_sync();
    }
    const stream::Slot s = stream::slot_of(q, g.stages);
    mbarrier_wait(&bars.full[s.index], s.parity);
    const uint4* rp = reinterpret_cast<const uint4*>(ring + s.index * tile_bytes + r * row_bytes);
    const int64_t scale_row = (w.row_offset + row) / 128 * cb;
    float acc = 0.0f;
    for (int64_t c = slice * per_slice + lane; c < (slice + 1) * per_slice; c += 32) {
      const uint4 qw[1] = {rp[c]};
      float d[1];
      stream::chunk_dots<T, 1>(qw, xs, c, d);
      if constexpr (T == WeightType::f8_e4m3) {
        const int64_t si = scale_row + c / 8;  // 8 chunks of 16 values per 128-column block
        const float sc = w.scale_type == ScaleType::f32
                             ? __ldg(static_cast<const float*>(w.scale) + si)
                             : e8m0(__ldg(static_cast<const uint8_t*>(w.scale) + si));
        acc = fmaf(d[0], sc * out_scale<T>(), acc);
      } else {
        acc += d[0];
      }
    }
    acc = stream::warp_sum(acc);
    if (S == 1) {
      if (lane == 0) g.y[row] = acc;
    } else {
      // The slices of a row meet in shared memory; the last warp done with the tile adds each
      // row's slices in slice order, one lane a row, so the sums do not depend on which warp
      // finished first (adding them in arrival order left the head's logits differing in their
      // last bits from run to run; one lane adding all 16 in order cost ~10% of a decode step).
      int last = 0;
      if (lane == 0) {
        sums[s.index * kConsumerWarps + warp] = acc;  // warp = r * S + slice
        __threadfence_block();
        last = atomicAdd(&done[s.index], 1) == kConsumerWarps - 1;
      }
      if (__shfl_sync(0xffffffffu, last, 0)) {
        __threadfence_block();
        if (lane < R) {
          const volatile float* row_sums = sums + s.index * kConsumerWarps + lane * S;
          float v = 0.0f;
          for (int k = 0; k < S; ++k) v += row_sums[k];
          g.y[row0 + lane] = v;
        }
        if (lane == 0) done[s.index] = 0;
      }
    }
    // After the sums: the slot's sums are reused only once every warp has released it.
    stream::release(bars, s);
  }
}

// ---- FP8 on tensor cores ----

constexpr int kMmaRows = 16;           // weight rows of a tile: the mma's M
constexpr int64_t kMmaMaxCols = 2048;  // FP8 columns of a stage (16 rows of 2 KB)
constexpr int64_t kMmaRowPad = 16;     // bytes after each staged row: rows land 4 banks apart
constexpr int kMmaMaxTiles = 2;        // 16-row tiles a stage: 2 for rows of 1,024 columns
constexpr int kMaxSumGroup = 4;        // GemvMode::sum_group
// The partial sums of two groups of `sum_group` tasks (one group is reduced while the warps
// write the next), per activation row.
constexpr int64_t mma_sums_bytes(int sum_group, int nt) {
  return 2 * sum_group * nt * stream::kRedBytes;
}
// Activation rows of one launch (NT): 1, or up to 4 or 8 (the mma's 8 columns hold 4 rows' high
// and low parts; 8 rows take two mma per weight fragment).
static_assert(kMmaMaxTiles * kMmaRows <= stream::kRedRows);
// x's B fragments (4 bytes per column and activation row) and each 128-column block's scale.
constexpr int64_t mma_x_bytes(int64_t cols, int nt) {
  return cols * 4 * nt + cols / f16_fragments::kBlockCols * 4 * nt;
}

// One or more FP8 matrices of the same width times the same activations (the decode step's
// products of the layer input, one launch): matrix m owns tasks [first_task[m],
// first_task[m + 1]).
struct MmaGemv {
  // With tensor copies (GemvMode::tensor_map): matrix m's map, whose box is one stage (rank 3)
  // or one 128-column chunk of it (rank 2); map_rank 0: one bulk copy per padded row.
  CUtensorMap maps[kMaxGemvProducts];
  int map_rank;
  WeightMatrix w[kMaxGemvProducts];
  float* y[kMaxGemvProducts];
  int64_t first_task[kMaxGemvProducts + 1];
  int64_t y_stride[kMaxGemvProducts];  // between the activation rows' outputs
  int count;
  const float* x;
  int64_t x_stride;              // between activation rows
  int tokens;                    // activation rows (<= the kernel's NT)
  int64_t group_rows, x_offset;  // as in StreamGemv (one matrix only)
  int64_t stage_cols;            // 1,024 or 2,048: each warp takes 64 or 128 of them
  int stages;
  int sum_group;  // tasks whose cross-warp sums wait for one barrier (GemvMode::sum_group)
  int early;      // stages copied before the kernel before has finished (0: the ring's)
  int in_flight;  // stages asked for and not yet landed, at most (0: the ring's)
};

// The matrix of task t (sets hold at most kMaxGemvProducts).
__device__ __forceinline__ int matrix_of(const MmaGemv& g, int64_t t) {
  int m = 0;
  while (m + 1 < g.count && t >= g.first_task[m + 1]) ++m;
  return m;
}

// x as the B fragments of f16_fragments.h's k order: per 16 columns s, activation row j < NT and
// part p (0: f16 high part, 1: low part; the mma's column 2j + p, of the second mma for j >= 4)
// and lane position t, the pairs (x[4t], x[4t+1]) and (x[4t+2], x[4t+3]) of its 128-column
// block scaled by 2^e (f16_fragments::block_exponent), and 2^-e in unscale[j * blocks + block].
// Rows j >= tokens are zeros. A warp's 32 quads of columns are one block of one row (cols is a
// multiple of 1,024), as f16_block_quad wants.
template <int NT>
__device__ void stage_x_fragments(const float* x, int64_t x_stride, int tokens, int64_t cols,
                                  uint2* xb, float* unscale) {
  namespace ff = f16_fragments;
  const int64_t quads = cols / 4, blocks = cols / ff::kBlockCols;
  for (int64_t i = threadIdx.x; i < NT * quads; i += kConsumerWarps * 32) {
    const int j = int(i / quads);
    const int64_t q = i - j * quads, s = q / 4, t = q % 4;
    const float4 v = j < tokens ? __ldg(reinterpret_cast<const float4*>(x + j * x_stride) + q)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const F16Quad f = f16_block_quad(v);
    xb[ff::stream_x_pair(s, j, 0, int(t), NT)] = make_uint2(f.p01.hi, f.p23.hi);
    xb[ff::stream_x_pair(s, j, 1, int(t), NT)] = make_uint2(f.p01.lo, f.p23.lo);
    if (threadIdx.x % 32 == 0) unscale[j * blocks + q / 32] = f.unscale;
  }
}

// Where the ring starts: after the barriers, the sums and x's fragments; tensor copies want
// their 128-byte swizzle atoms (8 lines) 1,024-byte aligned in the shared address space.
constexpr int64_t kMapAlign = 1024;
__device__ __forceinline__ char* mma_ring(char* smem, int64_t cols, int sum_group, int nt,
                                          bool aligned) {
  const int64_t fixed = kHeader + mma_sums_bytes(sum_group, nt) + mma_x_bytes(cols, nt);
  if (!aligned) return smem + fixed;
  const uint32_t base = shared_address(smem);
  return smem + ((base + fixed + kMapAlign - 1) & ~uint64_t(kMapAlign - 1)) - base;
}

// y = w x for FP8 w: a task is MT tiles of 16 rows (MT = 2 for rows of 1,024 columns, so a
// stage still holds 32 KB), its stages their column blocks of stage_cols; warp i takes columns
// [i, i + 1) * stage_cols / 16 of each stage (inside one 128-column scale block), and the
// warps' sums meet in shared memory once per task (written per task, added up after one barrier
// per g.sum_group tasks). kTma: stages come by tensor copies, laid out as [128-column
// chunk][row][128 bytes, swizzled] (tensor_map.h) instead of padded rows. NT: activation rows
// (1, 4 or 8; g.tokens of them real), each weight fragment decoded once for all of them.
template <int MT, bool kTma, int NT>
__global__ void __launch_bounds__(kThreads, 1)
    gemv_stream_mma_kernel(const __grid_constant__ MmaGemv g) {
  static_assert(NT == 1 || NT == 4 || NT == 8);
  constexpr int kTaskRows = MT * kMmaRows;
  constexpr int NB = (NT + 3) / 4;  // mma per weight fragment
  extern __shared__ __align__(128) char smem[];
  // [2 groups][sum_group][NT][warps][kRedStride]
  float* sums = reinterpret_cast<float*>(smem + kHeader);
  uint2* xb = reinterpret_cast<uint2*>(smem + kHeader + mma_sums_bytes(g.sum_group, NT));
  const int64_t cols = g.w[0].cols;  // every matrix of a set
  // [NT][cols / 128], after the fragments' cols * 4 * NT bytes
  float* x_unscale = reinterpret_cast<float*>(reinterpret_cast<char*>(xb) + cols * 4 * NT);
  const int64_t row_stride = kTma ? 128 : g.stage_cols + kMmaRowPad,
                stage_bytes = kTaskRows * (kTma ? g.stage_cols : row_stride);
  const int64_t col_tiles = cols / g.stage_cols, tasks = g.first_task[g.count];
  char* ring = mma_ring(smem, cols, g.sum_group, NT, kTma);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t t0 = int64_t(blockIdx.x) * tasks / gridDim.x,
                t1 = int64_t(blockIdx.x + 1) * tasks / gridDim.x;
  const stream::Ring bars = stream::init_ring(smem, g.stages);
  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    uint32_t q = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int m = matrix_of(g, t);
      for (int64_t ct = 0; ct < col_tiles; ++ct, ++q) {
        pdl_hold_copies(q, g.early);
        stream::hold_in_flight(bars, q, g.in_flight, g.stages);
        const stream::Slot s = stream::slot_of(q, g.stages);
        mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
        mbarrier_arrive_expect(&bars.full[s.index], uint32_t(kTaskRows * g.stage_cols));
        char* dst = ring + s.index * stage_bytes;
        if constexpr (kTma) {
          const int row0 = int((t - g.first_task[m]) * kTaskRows),
                    chunk0 = int(ct * g.stage_cols / 128);
          if (g.map_rank == 3) {
            tensor_copy_3d_to_shared(dst, &g.maps[m], 0, row0, chunk0, &bars.full[s.index]);
          } else {
            for (int c = 0; c < int(g.stage_cols / 128); ++c)
              tensor_copy_2d_to_shared(dst + c * (kTaskRows * 128), &g.maps[m], (chunk0 + c) * 128,
                                       row0, &bars.full[s.index]);
          }
        } else {
          const char* src = static_cast<const char*>(g.w[m].data) +
                            (t - g.first_task[m]) * kTaskRows * cols + ct * g.stage_cols;
          for (int r = 0; r < kTaskRows; ++r)
            bulk_copy_to_shared(dst + r * row_stride, src + r * cols, uint32_t(g.stage_cols),
                                &bars.full[s.index]);
        }
      }
    }
    return;
  }
  const int quad_row = lane / 4, t4 = lane % 4;
  // Stages are kMmaMaxCols / MT columns (mma_stage_tiles), so a warp's share is known here and
  // its k-step loop unrolls.
  constexpr int64_t warp_cols = kMmaMaxCols / MT / kConsumerWarps;  // 128 or 64
  const int64_t c0 = warp * warp_cols;
  // The block scales of stage (t, ct) for this warp's tiles, asked for one stage ahead (and the
  // first before the previous kernel has finished: scales are constants), so their round trip
  // to memory overlaps a stage's products instead of following them.
  auto load_scales = [&](int64_t t, int64_t ct, float(&sc)[MT]) {
    const int m = matrix_of(g, t);
    const WeightMatrix& w = g.w[m];
    const int64_t row0 = (t - g.first_task[m]) * kTaskRows, cb = (cols + 127) / 128;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      // A tile's 16 rows share one 128-row scale block (row_offset is a multiple of 16).
      const int64_t si =
          (w.row_offset + row0 + i * kMmaRows) / 128 * cb + (ct * g.stage_cols + c0) / 128;
      sc[i] = w.scale_type == ScaleType::f32
                  ? __ldg(static_cast<const float*>(w.scale) + si)
                  : e8m0(__ldg(static_cast<const uint8_t*>(w.scale) + si));
    }
  };
  // Every stage's scales at once where the block's stages fit a warp (lane j * MT + i holds
  // stage j's tile i), before the wait: asked for one stage ahead, each stage waited for its
  // scales' round trip to memory (~1 us under the other blocks' copies, longer than a stage's
  // products; twenty-fourth session's block stamps). Otherwise one stage ahead, as before.
  const int64_t block_stages = (t1 - t0) * col_tiles;
  const bool lane_scales = block_stages * MT <= 32;
  float lane_sc = 0.0f;
  if (lane_scales && lane < block_stages * MT) {
    const int64_t j = lane / MT;
    float sc[MT];
    load_scales(t0 + j / col_tiles, j % col_tiles, sc);
    lane_sc = sc[lane % MT];
  }
  float next_sc[MT];
  if (!lane_scales && t0 < t1) load_scales(t0, 0, next_sc);
  pdl_begin();
  int64_t group = -1;
  stream::SlotCursor ring_slot{g.stages};  // this warp's next stage
  // The group of tasks whose sums are not added up yet: `pending` of them, in slots
  // half * sum_group + 0, 1, ... (the two halves alternate, so one is read while the other fills).
  int half = 0, pending = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const int m = matrix_of(g, t);
    const int64_t row0 = (t - g.first_task[m]) * kTaskRows;
    const int64_t gi = g.group_rows > 0 ? row0 / g.group_rows : 0;
    if (gi != group) {
      if (group >= 0) stream::consumers_sync();
      group = gi;
      stage_x_fragments<NT>(g.x + gi * g.x_offset, g.x_stride, g.tokens, cols, xb, x_unscale);
      stream::consumers_sync();
    }
    float total[MT][NB][4] = {};
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      float sc[MT];
      if (lane_scales) {
        const int j = int((t - t0) * col_tiles + ct);
#pragma unroll
        for (int i = 0; i < MT; ++i) sc[i] = __shfl_sync(0xffffffffu, lane_sc, j * MT + i);
      } else {
#pragma unroll
        for (int i = 0; i < MT; ++i) sc[i] = next_sc[i];
        if (ct + 1 < col_tiles)
          load_scales(t, ct + 1, next_sc);
        else if (t + 1 < t1)
          load_scales(t + 1, 0, next_sc);
      }
      const stream::Slot s = ring_slot.next();
      mbarrier_wait(&bars.full[s.index], s.parity);
      // Row quad_row of the stage's first tile, at the warp's first column (lane's word t4).
      const char* ra = kTma ? ring + s.index * stage_bytes + (c0 / 128) * (kTaskRows * 128) +
                                  quad_row * 128 + 4 * t4
                            : ring + s.index * stage_bytes + quad_row * row_stride + c0 + 4 * t4;
      // x's fragments from this warp's first 16-column step on (stream_x_pair is linear, so
      // xf[stream_x_pair(k, ...)] is step s0 + k's).
      const uint2* xf =
          xb + f16_fragments::stream_x_pair((ct * g.stage_cols + c0) / 16, 0, 0, 0, NT);
      // Even and odd column steps accumulate apart: two independent chains of mma per tile.
      float part[2][MT][NB][4] = {};
#pragma unroll
      for (int64_t ks = 0; ks < warp_cols / 16; ks += 2) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t k = ks + h;
          // The B fragment of mma jb: column quad_row is row jb * 4 + quad_row / 2's part
          // quad_row % 2.
          uint2 b[NB];
#pragma unroll
          for (int jb = 0; jb < NB; ++jb) {
            const int column = jb * 8 + quad_row;
            b[jb] = column < 2 * NT
                        ? xf[f16_fragments::stream_x_pair(k, column / 2, column % 2, t4, NT)]
                        : make_uint2(0u, 0u);
          }
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            // Swizzled: the 16-byte unit u of rows quad_row and quad_row + 8 (of any tile) sits
            // at u ^ quad_row, so a fragment's 8 rows read 8 distinct units.
            const char* rm = ra + i * kMmaRows * row_stride +
                             (kTma ? stage_unit(int((c0 % 128) / 16 + k), quad_row) * 16 : 16 * k);
            const uint32_t wa = *reinterpret_cast<const uint32_t*>(rm),
                           wb = *reinterpret_cast<const uint32_t*>(rm + 8 * row_stride);
            const uint32_t a[4] = {e4m3_low_pair(wa), e4m3_low_pair(wb), e4m3_high_pair(wa),
                                   e4m3_high_pair(wb)};
#pragma unroll
            for (int jb = 0; jb < NB; ++jb) mma_f16_16x8x16(part[h][i][jb], a, b[jb].x, b[jb].y);
          }
        }
      }
      stream::release(bars, s);
      // The 128-column block of this warp's columns, and its scale for lane t4's activation rows.
      const int64_t block = (ct * g.stage_cols + c0) / f16_fragments::kBlockCols;
      float unscale[NB];
#pragma unroll
      for (int jb = 0; jb < NB; ++jb) {
        const int token = jb * 4 + t4;
        unscale[jb] =
            token < NT ? x_unscale[token * (cols / f16_fragments::kBlockCols) + block] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int jb = 0; jb < NB; ++jb) {
          const float f = sc[i] * unscale[jb];
#pragma unroll
          for (int j = 0; j < 4; ++j)
            total[i][jb][j] = fmaf(part[0][i][jb][j] + part[1][i][jb][j], f, total[i][jb][j]);
        }
    }
    // Lane (quad_row, t4) holds the mma's columns 2 t4 and 2 t4 + 1 (activation row jb * 4 + t4's
    // high and low parts) of rows quad_row and quad_row + 8 of each tile.
    float* red = sums + (half * g.sum_group + pending) * NT * stream::kRedBytes / 4;
#pragma unroll
    for (int jb = 0; jb < NB; ++jb) {
      const int token = jb * 4 + t4;
      if (token < NT)
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          float* r = red + token * stream::kRedBytes / 4 + warp * stream::kRedStride + i * kMmaRows;
          r[quad_row] = total[i][jb][0] + total[i][jb][1];
          r[quad_row + 8] = total[i][jb][2] + total[i][jb][3];
        }
    }
    if (++pending == g.sum_group || t + 1 == t1) {
      stream::consumers_sync();
      const int row = warp + (lane >> 4) * kMmaRows;  // each warp adds up rows warp, warp + 16
      for (int j = 0; j < pending; ++j) {
        const int64_t tj = t - (pending - 1 - j);
        const int mj = matrix_of(g, tj);
        for (int token = 0; token < NT; ++token) {
          const float y = stream::warps_total(sums + ((half * g.sum_group + j) * NT + token) *
                                                         stream::kRedBytes / 4);
          if ((lane & 15) == 0 && row < kTaskRows && token < g.tokens)
            g.y[mj][token * g.y_stride[mj] + (tj - g.first_task[mj]) * kTaskRows + row] = y;
        }
      }
      pending = 0;
      half ^= 1;
    }
  }
}

int64_t mma_stage_cols(const WeightMatrix& w) { return std::min(w.cols, kMmaMaxCols); }
int mma_stage_tiles(const WeightMatrix& w) { return int(kMmaMaxCols / mma_stage_cols(w)); }

// Whether an FP8 matrix tiles for the tensor-core kernel (the caller checked size/alignment).
bool mma_tiles(const WeightMatrix& w, int64_t group_rows) {
  return w.type == WeightType::f8_e4m3 && w.cols % 1024 == 0 && w.cols % mma_stage_cols(w) == 0 &&
         mma_stage_tiles(w) <= kMmaMaxTiles && w.rows % (mma_stage_tiles(w) * kMmaRows) == 0 &&
         w.row_offset % kMmaRows == 0 &&
         (group_rows == 0 || group_rows % (mma_stage_tiles(w) * kMmaRows) == 0);
}

int64_t row_bytes_of(const WeightMatrix& w) { return w.cols * value_bytes_x2(w.type) / 2; }

// Which kernel takes a product and its ring: shared memory fixed + stages * stage bytes.
struct StreamPlan {
  bool mma = false;
  bool tensor_map = false;  // the mma kernel's stages by tensor copies
  int sum_group = 1;        // the mma kernel's tasks a barrier
  int stages = 0;           // 0: neither kernel fits
  int early = 0;            // GemvMode::early_stages
  int in_flight = 0;        // GemvMode::in_flight_bytes in stages
  int max_blocks = 0;       // GemvMode::max_blocks
  int64_t fixed = 0, stage = 0;
  int64_t shared() const { return fixed + stages * stage; }
};

// GemvMode::in_flight_bytes as stages of plan p. Not for a matrix the size of the head: it
// streams for hundreds of microseconds, so its first stages' wait is noise there, and fewer
// copies in flight could only cost it bandwidth.
constexpr int64_t kInFlightMaxBytes = int64_t(256) << 20;
int in_flight_of(const WeightMatrix& w, GemvMode mode, const StreamPlan& p) {
  if (w.bytes() >= kInFlightMaxBytes) return 0;
  return stream::in_flight_stages(mode.in_flight_bytes, p.stage, p.stages);
}

// nt: activation rows a launch (1, 4 or 8); tensor copies only for one.
StreamPlan mma_plan(const WeightMatrix& w, int64_t group_rows, GemvMode mode, int nt = 1) {
  StreamPlan p;
  if (!mma_tiles(w, group_rows)) return p;
  p.mma = true;
  p.tensor_map = mode.tensor_map && nt == 1;
  p.sum_group = std::clamp(mode.sum_group, 1, kMaxSumGroup);
  p.early = mode.early_stages;
  p.max_blocks = mode.max_blocks;
  const bool tensor_map = p.tensor_map;
  // Tensor copies: unpadded stages, and room to align the ring (mma_ring).
  p.fixed = kHeader + mma_sums_bytes(p.sum_group, nt) + mma_x_bytes(w.cols, nt) +
            (tensor_map ? kMapAlign : 0);
  p.stage = mma_stage_tiles(w) * kMmaRows * (mma_stage_cols(w) + (tensor_map ? 0 : kMmaRowPad));
  p.stages = stream::ring_stages(p.fixed, p.stage, stream::kMaxStages, mode.max_shared);
  p.in_flight = in_flight_of(w, mode, p);
  return p;
}

// Whether w and x suit the streamed kernels at all: bf16 or FP8 of 2 MB or more in 16-byte
// rows, the matrix and the activations (x, each group's x + g * x_offset) 16-byte aligned.
bool streamable(const WeightMatrix& w, const float* x, int64_t x_offset) {
  if (w.type != WeightType::bf16 && w.type != WeightType::f8_e4m3) return false;
  const int64_t row_bytes = row_bytes_of(w);
  return w.rows * row_bytes >= kMinBytes && row_bytes % 16 == 0 &&
         (reinterpret_cast<uintptr_t>(w.data) & 15) == 0 &&
         (reinterpret_cast<uintptr_t>(x) & 15) == 0 && x_offset % 4 == 0;
}

StreamPlan plan(const WeightMatrix& w, const float* x, int64_t group_rows, int64_t x_offset,
                GemvMode mode) {
  if (!streamable(w, x, x_offset)) return {};
  const int64_t row_bytes = row_bytes_of(w);
  if (mode.tensor_cores)
    if (const StreamPlan p = mma_plan(w, group_rows, mode); p.stages > 0) return p;
  const TileShape t = tile_shape(row_bytes);
  if (w.rows % t.rows != 0 || (row_bytes / 16) % t.slices != 0) return {};
  if (group_rows > 0 && group_rows % t.rows != 0) return {};
  StreamPlan p;
  const int64_t x_slots = w.type == WeightType::bf16 ? stream::x_slots<WeightType::bf16>(w.cols)
                                                     : stream::x_slots<WeightType::f8_e4m3>(w.cols);
  p.fixed = kHeader + kSums + x_slots * 16;
  p.stage = t.rows * row_bytes;
  p.stages = stream::ring_stages(p.fixed, p.stage, stream::kMaxStages, mode.max_shared);
  p.max_blocks = mode.max_blocks;
  p.in_flight = in_flight_of(w, mode, p);
  return p;
}

template <typename Kernel, typename Args>
void launch_streamed(Kernel kernel, int64_t tasks, int64_t shared, int max_blocks,
                     cudaStream_t stream, const Args& args) {
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  const int64_t blocks = max_blocks > 0 ? max_blocks : sm_count();
  launch_pdl(kernel, unsigned(std::min<int64_t>(blocks, tasks)), kThreads, size_t(shared), stream,
             args);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

// `tokens` activation rows (x_stride apart) on the kernel for nt of them; output row j of
// product i at products[i].y + j * products[i].y_stride.
void launch_mma(std::span<const GemvProduct> products, const float* x, int64_t x_stride, int tokens,
                int nt, int64_t group_rows, int64_t x_offset, const StreamPlan& p,
                cudaStream_t stream) {
  MmaGemv g{};
  const WeightMatrix& w0 = products[0].w;
  const int tiles = mma_stage_tiles(w0);
  for (size_t i = 0; i < products.size(); ++i) {
    g.w[i] = products[i].w;
    g.y[i] = products[i].y;
    g.y_stride[i] = products[i].y_stride;
    g.first_task[i + 1] = g.first_task[i] + products[i].w.rows / (tiles * kMmaRows);
    if (p.tensor_map) {
      // Host-side encoding only (no device work), so also inside a graph capture.
      const StageTensorMap m =
          stage_tensor_map(products[i].w.data, products[i].w.rows, products[i].w.cols,
                           tiles * kMmaRows, int(mma_stage_cols(w0)));
      g.maps[i] = m.map;
      g.map_rank = i == 0 ? m.rank : std::min(g.map_rank, m.rank);
    }
  }
  g.count = int(products.size());
  g.x = x;
  g.x_stride = x_stride;
  g.tokens = tokens;
  g.group_rows = group_rows;
  g.x_offset = x_offset;
  g.stage_cols = mma_stage_cols(w0);
  g.stages = p.stages;
  g.sum_group = p.sum_group;
  g.early = p.early;
  g.in_flight = p.in_flight;
  auto kernel =
      tiles == 1 ? gemv_stream_mma_kernel<1, false, 1> : gemv_stream_mma_kernel<2, false, 1>;
  if (nt == 8)
    kernel = tiles == 1 ? gemv_stream_mma_kernel<1, false, 8> : gemv_stream_mma_kernel<2, false, 8>;
  else if (nt == 4)
    kernel = tiles == 1 ? gemv_stream_mma_kernel<1, false, 4> : gemv_stream_mma_kernel<2, false, 4>;
  else if (p.tensor_map)
    kernel = tiles == 1 ? gemv_stream_mma_kernel<1, true, 1> : gemv_stream_mma_kernel<2, true, 1>;
  launch_streamed(kernel, g.first_task[g.count], p.shared(), p.max_blocks, stream, g);
}

// n activation rows in launches of up to 8 (or 4 where 8 rows' fragments leave no room for a
// ring: the 8,192 columns of wo_b), each decoding the weights once for all of its rows. False,
// having launched nothing, where not even 4 fit.
bool launch_mma_rows(std::span<const GemvProduct> products, const float* x, int64_t x_stride,
                     int64_t n, int64_t group_rows, int64_t x_offset, GemvMode mode,
                     cudaStream_t stream) {
  const StreamPlan p4 = mma_plan(products[0].w, group_rows, mode, 4),
                   p8 = n > 4 ? mma_plan(products[0].w, group_rows, mode, 8) : StreamPlan{};
  if (p4.stages == 0) return false;
  GemvProduct at[kMaxGemvProducts];  // the products' outputs from row t0 on
  std::copy(products.begin(), products.end(), at);
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t left = n - t0;
    const int nt = left > 4 && p8.stages > 0 ? 8 : 4;
    const int tokens = int(std::min<int64_t>(left, nt));
    for (size_t i = 0; i < products.size(); ++i)
      at[i].y = products[i].y + t0 * products[i].y_stride;
    launch_mma(std::span<const GemvProduct>(at, products.size()), x + t0 * x_stride, x_stride,
               tokens, nt, group_rows, x_offset, nt == 8 ? p8 : p4, stream);
    t0 += tokens;
  }
  return true;
}

// Whether gemv_warp_rows takes a one-row product of `bytes` in `rows` rows: where its blocks
// get 8 or more 16-row tiles. On an H200 wq_b (32,768 x 1,024, 16 tiles a block) took 16.1 us
// that way against 19.0 here; wo_b (4,096 x 8,192, 2 a block) 25.7 against 15.5 and wo_a
// (8,192 x 4,096, 4) 20.1 against 15.1: a few warps multiplying wide tiles alone are slower
// than 16 sharing each stage. With column splits (GemvMode::warp_rows_splits) the tasks are
// splits of tiles: a tile of a matrix `cols` wide takes up to cols / 1,024 of them.
bool warp_rows_pay(const GemvMode& mode, int64_t bytes, int64_t rows, int64_t cols) {
  const int64_t splits =
      std::clamp<int64_t>(std::min<int64_t>(mode.warp_rows_splits, cols / 1024), 1, 16);
  return mode.warp_rows_bytes > 0 && bytes >= mode.warp_rows_bytes &&
         rows / warp_rows::kTileRows * splits >= 8 * int64_t(sm_count());
}
// Stages of 2,048 columns for whole tiles, of 1,024 (twice the ring slots) where tiles split.
int64_t warp_rows_stage_cols(const GemvMode& mode) {
  return mode.warp_rows_splits > 1 ? 1024 : 2048;
}

}  // namespace

namespace {

// A same-input set the tensor-core stream kernels take (every matrix FP8 of a width they tile,
// the same width, 2 MB or more in all): its bytes and rows, or bytes 0 where not.
struct SetShape {
  int64_t bytes = 0, rows = 0;
};
SetShape stream_set_shape(std::span<const GemvProduct> products, const float* x) {
  if (products.empty() || products.size() > size_t(kMaxGemvProducts) ||
      (reinterpret_cast<uintptr_t>(x) & 15))
    return {};
  SetShape shape;
  for (const GemvProduct& p : products) {
    const WeightMatrix& w = p.w;
    if (w.cols != products[0].w.cols || !mma_tiles(w, 0) ||
        (reinterpret_cast<uintptr_t>(w.data) & 15))
      return {};
    shape.bytes += w.rows * w.cols;
    shape.rows += w.rows;
  }
  return shape.bytes >= kMinBytes ? shape : SetShape{};
}

}  // namespace

bool gemv_stream_set(std::span<const GemvProduct> products, const float* x, int64_t x_stride,
                     int64_t n, void* stream, GemvMode mode) {
  if (n < 1 || (n > 1 && (x_stride % 4 != 0 || !mode.several_rows))) return false;
  const SetShape shape = stream_set_shape(products, x);
  if (shape.bytes == 0) return false;
  if (n > 1) return launch_mma_rows(products, x, x_stride, n, 0, 0, mode, cudaStream_t(stream));
  if (warp_rows_pay(mode, shape.bytes, shape.rows, products[0].w.cols) &&
      gemv_warp_rows(products, x, 0, 0, stream, warp_rows_stage_cols(mode), mode.warp_rows_depth,
                     mode.warp_rows_splits, mode.early_stages, nullptr, 0.0f, mode.in_flight_bytes,
                     mode.warp_rows_copy_rows))
    return true;
  const StreamPlan p = mma_plan(products[0].w, 0, mode);
  if (p.stages == 0) return false;
  launch_mma(products, x, x_stride, 1, 1, 0, 0, p, static_cast<cudaStream_t>(stream));
  return true;
}

bool gemv_warp_rows_normed(std::span<const GemvProduct> products, const float* x,
                           const float* weight, float eps, void* stream, GemvMode mode) {
  if (!mode.tensor_cores) return false;
  const SetShape shape = stream_set_shape(products, x);
  return shape.bytes > 0 && warp_rows_pay(mode, shape.bytes, shape.rows, products[0].w.cols) &&
         gemv_warp_rows(products, x, 0, 0, stream, warp_rows_stage_cols(mode), mode.warp_rows_depth,
                        mode.warp_rows_splits, mode.early_stages, weight, eps, mode.in_flight_bytes,
                        mode.warp_rows_copy_rows);
}

bool gemv_stream_rows(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                      int64_t y_stride, int64_t group_rows, int64_t x_offset, void* stream,
                      GemvMode mode) {
  if (n < 2 || !mode.tensor_cores || !mode.several_rows || w.type != WeightType::f8_e4m3 ||
      x_stride % 4 != 0 || !streamable(w, x, x_offset))
    return false;
  const GemvProduct one{w, y, y_stride};
  return launch_mma_rows(std::span<const GemvProduct>(&one, 1), x, x_stride, n, group_rows,
                         x_offset, mode, static_cast<cudaStream_t>(stream));
}

bool gemv_stream_fits(const WeightMatrix& w, const float* x, int64_t group_rows, int64_t x_offset,
                      GemvMode mode) {
  return plan(w, x, group_rows, x_offset, mode).stages > 0;
}

StreamSlices gemv_stream_slices(const WeightMatrix& w, const float* x, GemvMode mode) {
  const StreamPlan p = plan(w, x, 0, 0, mode);
  if (p.stages == 0 || p.mma) return {};
  const int64_t rows = tile_shape(row_bytes_of(w)).rows, tiles = w.rows / rows;
  const int64_t blocks = p.max_blocks > 0 ? p.max_blocks : sm_count();
  return {w.data, std::min(blocks, tiles), tiles, rows * row_bytes_of(w)};  // launch_streamed's
}

bool gemv_stream(const WeightMatrix& w, const float* x, float* y, int64_t group_rows,
                 int64_t x_offset, void* stream_ptr, GemvMode mode) {
  const StreamPlan p = plan(w, x, group_rows, x_offset, mode);
  if (p.stages == 0) return false;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.mma) {
    const GemvProduct one{w, y, w.rows};
    if (warp_rows_pay(mode, w.bytes(), w.rows, w.cols) &&
        gemv_warp_rows(std::span<const GemvProduct>(&one, 1), x, group_rows, x_offset, stream,
                       warp_rows_stage_cols(mode), mode.warp_rows_depth, mode.warp_rows_splits,
                       mode.early_stages, nullptr, 0.0f, mode.in_flight_bytes,
                       mode.warp_rows_copy_rows))
      return true;
    launch_mma(std::span<const GemvProduct>(&one, 1), x, w.cols, 1, 1, group_rows, x_offset, p,
               stream);
    return true;
  }
  StreamGemv g{w, x, y, group_rows, x_offset, 0, tile_shape(row_bytes_of(w)).rows, p.stages};
  g.tiles = w.rows / g.rows_per_tile;
  g.early = mode.early_stages;
  g.in_flight = p.in_flight;
  launch_streamed(w.type == WeightType::bf16 ? gemv_stream_kernel<WeightType::bf16>
                                             : gemv_stream_kernel<WeightType::f8_e4m3>,
                  g.tiles, p.shared(), p.max_blocks, stream, g);
  return true;
}

}  // namespace agentrt::engine::cuda
