// One activation row times large FP8 matrices on the tensor cores, each consumer warp owning
// whole 16-row tiles (GemvMode::warp_rows_bytes; layout in warp_rows_layout.h).
//
// Why: gemv_stream_mma_kernel splits each stage's columns over its 16 warps, whose partial sums
// meet in shared memory once per task. For wq_b's rows of 1,024 columns a task is one stage, so
// every 32 KB ended in a barrier and a cross-warp sum, and Nsight Compute counted more
// instructions around the mma than in them (docs/cuda_sessions.md). Here a warp multiplies
// every column of its 16 rows, keeps the sums in registers and writes its 16 outputs itself;
// the warps meet once, to stage x. The producer gives each warp its own ring slots, so a slow
// warp holds up only its own stages.
//
// On an H200 that made wq_b (16 tiles a block) 15% faster, but a warp alone on a wide tile is
// slow (its chain of loads, conversions and mma has little to overlap with): wo_b, 2 tiles a
// block, took 25.7 us against 15.5. Column splits (GemvMode::warp_rows_splits) give such tiles
// to several warps, the last of them adding the splits' sums in order.
#include <algorithm>

#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/f16_fragments.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/stream_ring.cuh"
#include "engine/cuda/warp_rows_layout.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

namespace wr = warp_rows;
constexpr int kMaxThreads = (wr::kMaxWarps + 1) * 32;

struct WarpRowsGemv {
  WeightMatrix w[kMaxGemvProducts];
  float* y[kMaxGemvProducts];
  int64_t first_task[kMaxGemvProducts + 1];  // matrix m owns tasks [first_task[m], [m + 1])
  int count;
  const float* x;
  int64_t group_rows, x_offset;  // block-diagonal groups (one matrix), as in gemv_stream
  int x_groups;                  // groups of x a block stages: 1, or 2 where its tiles cross one
  int warps, slots;              // consumer warps (the producer is warp `warps`), ring slots
  // Column splits per tile: each split is a task of its own (another warp's), and the last warp
  // done with a tile adds its splits' sums in split order. 1: a warp takes whole tiles.
  int splits;
  int max_tiles;  // tiles a block has at most (its split sums' room)
  int early;      // stages copied before the kernel before has finished (0: the ring's)
  int in_flight;  // stages asked for and not yet landed, at most (0: the ring's; < slots)
  // Set: x is RMSNormed (this weight, eps) on its way into shared memory, as rms_norm_rows
  // would first (decode's query norm folded into wq_b's launch; one group of x only).
  const float* x_norm;
  float x_norm_eps;
};

__device__ __forceinline__ int matrix_of(const WarpRowsGemv& g, int64_t t) {
  int m = 0;
  while (m + 1 < g.count && t >= g.first_task[m + 1]) ++m;
  return m;
}

// x's group gi (x + gi * x_offset) as B fragments at xs (warp_rows::x_unit): each 128-column
// block scaled by 2^e (f16_fragments::block_exponent) and split into f16 high and low parts, 2^-e
// in unscale[block]; every consumer thread takes a share. A warp's 32 quads of columns are one
// block (threads is a multiple of 32, cols of 1,024), as f16_block_quad wants. With a norm
// weight, x is first normed as rms_norm_kernel does it: x * inv * weight.
__device__ void stage_x(const float* x, int64_t cols, int threads, uint4* xs, float* unscale,
                        const float* weight = nullptr, float inv = 1.0f) {
  auto* units = reinterpret_cast<uint2*>(xs);
  for (int64_t i = threadIdx.x; i < cols / 4; i += threads) {
    float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
    if (weight) {
      const float4 w = __ldg(reinterpret_cast<const float4*>(weight) + i);
      v = make_float4(v.x * inv * w.x, v.y * inv * w.y, v.z * inv * w.z, v.w * inv * w.w);
    }
    const F16Quad f = f16_block_quad(v);
    const wr::XPlace hi = wr::x_place(4 * i, 0), lo = wr::x_place(4 * i, 1);
    units[2 * hi.unit + hi.sub] = make_uint2(f.p01.hi, f.p23.hi);
    units[2 * lo.unit + lo.sub] = make_uint2(f.p01.lo, f.p23.lo);
    if (threadIdx.x % 32 == 0) unscale[i / 32] = f.unscale;
  }
}

// RMSNorm's 1 / rms of x[0, cols): every consumer thread adds its squares, the warps' sums meet
// in red (one barrier of the consumers, who all return the same value).
__device__ float rms_inverse(const float* x, int64_t cols, int threads, float* red, float eps) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < cols / 4; i += threads) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
    ss = fmaf(v.x, v.x, ss);
    ss = fmaf(v.y, v.y, ss);
    ss = fmaf(v.z, v.z, ss);
    ss = fmaf(v.w, v.w, ss);
  }
  ss = stream::warp_sum(ss);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ss;
  named_barrier(1, uint32_t(threads));
  float total = 0.0f;
  for (int w = 0; w < threads / 32; ++w) total += red[w];
  return rsqrtf(total / float(cols) + eps);
}

// kStageCols: columns of a stage (16 rows of 1 or 2 KB of FP8, one bulk copy each). kCopy: rows
// a bulk copy where rows are as wide as a stage (2 or 8; warp_rows_layout.h's staged_row).
template <int64_t kStageCols, int kCopy>
__global__ void __launch_bounds__(kMaxThreads, 1)
    gemv_warp_rows_kernel(const __grid_constant__ WarpRowsGemv g) {
  constexpr int kScaleBlocks = int(kStageCols / 128);
  extern __shared__ __align__(128) char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + wr::kMaxSlots;
  const int64_t cols = g.w[0].cols, col_stages = cols / kStageCols;
  const int64_t rs = wr::row_stride(kStageCols), stage_bytes = wr::stage_bytes(kStageCols);
  // Rows as wide as a stage come kCopy a bulk copy (warp_rows_layout.h's copy_stride).
  const bool paired = cols == kStageCols;
  constexpr int64_t kCopyStride = wr::copy_stride(kCopy, kStageCols);
  uint4* xs = reinterpret_cast<uint4*>(smem + wr::kHeader);
  // [x_groups][cols / 128]: each block's 2^-e
  float* x_unscale = reinterpret_cast<float*>(smem + wr::kHeader + g.x_groups * cols * 4);
  const int64_t x_bytes = g.x_groups * cols * 4 + wr::x_unscale_bytes(g.x_groups, cols);
  float* split_sums = reinterpret_cast<float*>(smem + wr::kHeader + x_bytes);
  int* splits_done = reinterpret_cast<int*>(split_sums + g.max_tiles * g.splits * wr::kTileRows);
  float* norm_red = reinterpret_cast<float*>(smem + wr::kHeader + x_bytes +
                                             wr::split_bytes(g.max_tiles, g.splits));
  char* ring = reinterpret_cast<char*>(norm_red) + (g.x_norm ? wr::kNormRedBytes : 0);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t tasks = g.first_task[g.count];
  const int64_t t0 = int64_t(blockIdx.x) * tasks / gridDim.x,
                nt = int64_t(blockIdx.x + 1) * tasks / gridDim.x - t0;
  // Stages are scheduled over the block's nt * splits split tasks, each split_stages long.
  const int64_t split_stages = col_stages / g.splits, nv = nt * g.splits;
  if (g.splits > 1 && int(threadIdx.x) < g.max_tiles) splits_done[threadIdx.x] = 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < g.slots; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 1);
    }
    mbarrier_init_fence();
  }
  __syncthreads();
  const int64_t warp_stages = (nv + g.warps - 1) / g.warps * split_stages;  // per warp, at most
  if (warp == g.warps) {
    // The producer: weights are constants, so it starts before the kernel before this one ends.
    if (lane != 0) return;
    int64_t issued = 0;
    // The slots and phases of the last stages asked for, the oldest waited for before the next
    // (in_flight < slots, so none of them has been asked for again since).
    uint32_t asked[wr::kMaxSlots];
    for (int64_t jj = 0; jj < warp_stages; ++jj)
      for (int i = 0; i < g.warps; ++i) {
        const wr::Stage s = wr::stage_of(jj, i, g.warps, g.slots, split_stages);
        if (s.task >= nv) continue;
        pdl_hold_copies(issued, g.early);
        if (g.in_flight > 0) {
          if (issued >= g.in_flight) {
            const uint32_t a = asked[(issued - g.in_flight) % wr::kMaxSlots];
            mbarrier_wait(&full[a >> 1], a & 1u);
          }
          asked[issued % wr::kMaxSlots] = uint32_t(s.slot) << 1 | s.parity;
        }
        ++issued;
        const int64_t t = t0 + s.task / g.splits,
                      slice = (s.task % g.splits) * split_stages + s.slice;
        const int m = matrix_of(g, t);
        mbarrier_wait(&empty[s.slot], s.parity ^ 1u);
        mbarrier_arrive_expect(&full[s.slot], uint32_t(wr::kTileRows * kStageCols));
        const char* src = static_cast<const char*>(g.w[m].data) +
                          (t - g.first_task[m]) * wr::kTileRows * cols + slice * kStageCols;
        char* dst = ring + s.slot * stage_bytes;
        if (paired) {
          for (int q = 0; q < wr::kTileRows / kCopy; ++q)
            bulk_copy_to_shared(dst + q * kCopyStride, src + q * kCopy * cols,
                                uint32_t(kCopy * kStageCols), &full[s.slot]);
        } else {
          for (int r = 0; r < wr::kTileRows; ++r)
            bulk_copy_to_shared(dst + r * rs, src + r * cols, uint32_t(kStageCols), &full[s.slot]);
        }
      }
    return;
  }
  // Lane l < kScaleBlocks holds the block scale of the 128 columns l of its warp's stage jj,
  // asked for one stage ahead (the first before the previous kernel ends: scales are constants).
  auto stage_scale = [&](int64_t jj) {
    const wr::Stage s = wr::stage_of(jj, warp, g.warps, g.slots, split_stages);
    if (s.task >= nv || lane >= kScaleBlocks) return 0.0f;
    const int64_t t = t0 + s.task / g.splits, slice = (s.task % g.splits) * split_stages + s.slice;
    const int m = matrix_of(g, t);
    const WeightMatrix& w = g.w[m];
    const int64_t row0 = (t - g.first_task[m]) * wr::kTileRows;
    // A tile's 16 rows share one 128-row scale block (row_offset is a multiple of 16).
    const int64_t si =
        (w.row_offset + row0) / 128 * ((cols + 127) / 128) + slice * kScaleBlocks + lane;
    return w.scale_type == ScaleType::f32 ? __ldg(static_cast<const float*>(w.scale) + si)
                                          : e8m0(__ldg(static_cast<const uint8_t*>(w.scale) + si));
  };
  float next_scale = stage_scale(0);
  pdl_begin();
  const int64_t first_group = g.group_rows > 0 ? t0 * wr::kTileRows / g.group_rows : 0;
  const int64_t groups = g.group_rows > 0 ? g.w[0].rows / g.group_rows : 1;
  const float inv = g.x_norm ? rms_inverse(g.x, cols, g.warps * 32, norm_red, g.x_norm_eps) : 1.0f;
  for (int gi = 0; gi < g.x_groups && first_group + gi < groups; ++gi)
    stage_x(g.x + (first_group + gi) * g.x_offset, cols, g.warps * 32, xs + gi * (cols / 4),
            x_unscale + gi * (cols / 128), g.x_norm, inv);
  named_barrier(1, uint32_t(g.warps) * 32);

  const int quad_row = lane / 4, t4 = lane % 4;
  float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t jj = 0; jj < warp_stages; ++jj) {
    const wr::Stage s = wr::stage_of(jj, warp, g.warps, g.slots, split_stages);
    if (s.task >= nv) break;
    const float scale = next_scale;
    next_scale = stage_scale(jj + 1);
    const int64_t tile = s.task / g.splits, split = s.task % g.splits, t = t0 + tile;
    const int m = matrix_of(g, t);
    const int64_t row0 = (t - g.first_task[m]) * wr::kTileRows;
    const int64_t gi = g.group_rows > 0 ? row0 / g.group_rows - first_group : 0;
    const uint4* xf = xs + gi * (cols / 4);
    const float* unscale = x_unscale + gi * (cols / 128);
    // x's 64-column groups
    const int64_t group0 = (split * split_stages + s.slice) * (kStageCols / wr::kGroupCols);
    mbarrier_wait(&full[s.slot], s.parity);
    // Row quad_row of the stage at lane t4's 16 bytes of each 64 columns, and row quad_row + 8
    // (paired: the stage rows staged_row puts under those fragment rows; with 2 a copy, rows
    // 2 quad_row and 2 quad_row + 1).
    const char* ra;
    int64_t below;
    if constexpr (kCopy == 2) {
      ra = ring + s.slot * stage_bytes + quad_row * (paired ? kCopyStride : rs) + 16 * t4;
      below = paired ? kStageCols : 8 * rs;
    } else {
      const int64_t own =
          paired ? wr::staged_row_offset(wr::staged_row(quad_row, kCopy), kCopy, kStageCols)
                 : quad_row * rs;
      ra = ring + s.slot * stage_bytes + own + 16 * t4;
      below =
          paired
              ? wr::staged_row_offset(wr::staged_row(quad_row + 8, kCopy), kCopy, kStageCols) - own
              : 8 * rs;
    }
#pragma unroll 2
    for (int b = 0; b < kScaleBlocks; ++b) {
      // Four k-steps per 64 columns, each its own accumulator chain.
      float part[4][4] = {};
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t group = 2 * b + half;
        const uint4 wa = *reinterpret_cast<const uint4*>(ra + group * wr::kGroupCols),
                    wb = *reinterpret_cast<const uint4*>(ra + below + group * wr::kGroupCols);
        // Only the mma's B columns 0 and 1 (x's high and low parts) are not zero.
        uint4 x01 = make_uint4(0u, 0u, 0u, 0u), x23 = x01;
        if (quad_row < 2) {
          x01 = xf[wr::x_unit(group0 + group, 0, quad_row, t4)];
          x23 = xf[wr::x_unit(group0 + group, 1, quad_row, t4)];
        }
        const uint32_t ka[4] = {wa.x, wa.y, wa.z, wa.w}, kb[4] = {wb.x, wb.y, wb.z, wb.w};
        const uint32_t b0[4] = {x01.x, x01.z, x23.x, x23.z}, b1[4] = {x01.y, x01.w, x23.y, x23.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t a[4] = {e4m3_low_pair(ka[j]), e4m3_low_pair(kb[j]), e4m3_high_pair(ka[j]),
                                 e4m3_high_pair(kb[j])};
          mma_f16_16x8x16(part[j], a, b0[j], b1[j]);
        }
      }
      // The weights' block scale times x's 2^-e for these 128 columns (group0 is even).
      const float f = __shfl_sync(0xffffffffu, scale, b) * unscale[group0 / 2 + b];
#pragma unroll
      for (int v = 0; v < 4; ++v)
        total[v] = fmaf((part[0][v] + part[1][v]) + (part[2][v] + part[3][v]), f, total[v]);
    }
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty[s.slot]);
    if (s.slice + 1 == split_stages) {
      // Lane (quad_row, 0) holds B columns 0 and 1 (the high and low parts' products) of rows
      // quad_row and quad_row + 8 (paired: the stage rows staged_row puts there).
      int row_a, row_b;
      if constexpr (kCopy == 2) {
        row_a = paired ? 2 * quad_row : quad_row, row_b = paired ? row_a + 1 : quad_row + 8;
      } else {
        row_a = paired ? wr::staged_row(quad_row, kCopy) : quad_row;
        row_b = paired ? wr::staged_row(quad_row + 8, kCopy) : quad_row + 8;
      }
      if (g.splits == 1) {
        if (t4 == 0) {
          float* y = g.y[m] + row0;
          y[row_a] = total[0] + total[1];
          y[row_b] = total[2] + total[3];
        }
      } else {
        // The tile's splits meet in shared memory; the last warp done adds them in split order,
        // so the sums do not depend on which warp finished first.
        float* sums = split_sums + tile * g.splits * wr::kTileRows;
        if (t4 == 0) {
          sums[split * wr::kTileRows + row_a] = total[0] + total[1];
          sums[split * wr::kTileRows + row_b] = total[2] + total[3];
        }
        __threadfence_block();
        __syncwarp();
        int last = 0;
        if (lane == 0) last = atomicAdd(&splits_done[tile], 1) == g.splits - 1;
        if (__shfl_sync(0xffffffffu, last, 0)) {
          __threadfence_block();
          if (lane < wr::kTileRows) {
            const volatile float* v = sums + lane;
            float y = 0.0f;
            for (int k = 0; k < g.splits; ++k) y += v[k * wr::kTileRows];
            g.y[m][row0 + lane] = y;
          }
        }
      }
#pragma unroll
      for (int v = 0; v < 4; ++v) total[v] = 0.0f;
    }
  }
}

}  // namespace

bool gemv_warp_rows(std::span<const GemvProduct> products, const float* x, int64_t group_rows,
                    int64_t x_offset, void* stream, int64_t stage_cols, int depth, int max_splits,
                    int early_stages, const float* x_norm, float x_norm_eps,
                    int64_t in_flight_bytes, int copy_rows) {
  if (products.empty() || products.size() > size_t(kMaxGemvProducts) ||
      (reinterpret_cast<uintptr_t>(x) & 15) ||
      (x_norm && (group_rows > 0 || (reinterpret_cast<uintptr_t>(x_norm) & 15))))
    return false;
  if (group_rows > 0 && (products.size() != 1 || group_rows % wr::kTileRows != 0 ||
                         x_offset % 4 != 0 || products[0].w.rows % group_rows != 0))
    return false;
  WarpRowsGemv g{};
  const int64_t cols = products[0].w.cols;
  if (stage_cols != 1024 && stage_cols != 2048) return false;
  if (copy_rows != 2 && copy_rows != 8) return false;
  if (cols % stage_cols != 0) stage_cols = 1024;
  for (size_t i = 0; i < products.size(); ++i) {
    const WeightMatrix& w = products[i].w;
    if (w.type != WeightType::f8_e4m3 || w.cols != cols || cols % stage_cols != 0 ||
        w.rows % wr::kTileRows != 0 || w.row_offset % wr::kTileRows != 0 || w.scale == nullptr ||
        (reinterpret_cast<uintptr_t>(w.data) & 15))
      return false;
    g.w[i] = w;
    g.y[i] = products[i].y;
    g.first_task[i + 1] = g.first_task[i] + w.rows / wr::kTileRows;
  }
  g.count = int(products.size());
  g.early = early_stages;
  g.x_norm = x_norm;
  g.x_norm_eps = x_norm_eps;
  g.x = x;
  g.group_rows = group_rows;
  g.x_offset = x_offset;
  const int64_t tasks = g.first_task[g.count];
  const int64_t grid = std::min<int64_t>(sm_count(), tasks);
  // A block's tiles span at most two groups when they are no more rows than a group.
  g.x_groups = 1;
  if (group_rows > 0) {
    if ((tasks + grid - 1) / grid * wr::kTileRows > group_rows) return false;
    g.x_groups = 2;
  }
  // Split tiles until a block has 8 tasks or more (or max_splits).
  g.max_tiles = int((tasks + grid - 1) / grid);
  g.splits = 1;
  while (g.splits * 2 <= max_splits && (cols / stage_cols) % (g.splits * 2) == 0 &&
         g.max_tiles * g.splits < 8)
    g.splits *= 2;
  const int64_t fixed = wr::kHeader + g.x_groups * cols * 4 +
                        wr::x_unscale_bytes(g.x_groups, cols) +
                        wr::split_bytes(g.max_tiles, g.splits) + (x_norm ? wr::kNormRedBytes : 0);
  const wr::Shape shape =
      wr::shape_for(tasks * g.splits, grid,
                    stream::ring_stages(fixed, wr::stage_bytes(stage_cols), wr::kMaxSlots), depth);
  if (shape.warps == 0) return false;
  g.warps = shape.warps;
  g.slots = shape.slots;
  g.in_flight = stream::in_flight_stages(in_flight_bytes, wr::stage_bytes(stage_cols), g.slots);
  const int64_t shared = fixed + shape.slots * wr::stage_bytes(stage_cols);
  const auto kernel =
      copy_rows == 8
          ? (stage_cols == 2048 ? gemv_warp_rows_kernel<2048, 8> : gemv_warp_rows_kernel<1024, 8>)
          : (stage_cols == 2048 ? gemv_warp_rows_kernel<2048, 2> : gemv_warp_rows_kernel<1024, 2>);
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  launch_pdl(kernel, unsigned(grid), unsigned((shape.warps + 1) * 32), size_t(shared),
             static_cast<cudaStream_t>(stream), g);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  return true;
}

}  // namespace agentrt::engine::cuda
