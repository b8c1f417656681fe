// Where gemv_warp_rows.cu's kernel finds things, as host-callable functions so that a test
// without a GPU (CudaWarpRowsLayout.*) can replay them: which columns each mma k slot reads,
// where the staged activations' B fragments lie, and which warp and ring slot take each stage.
//
// The kernel gives each consumer warp whole 16-row tiles (every column of its rows), so no
// partial sums cross warps. A lane loads 16 bytes of FP8 (16 columns) of each of its two rows
// per 64 columns and feeds them to four mma k-steps: k-step j takes byte 4j..4j+3 of each lane's
// 16, so its 16 k slots are the columns 16 t + 4 j + e (t: lane % 4, e: byte) of the 64.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace agentrt::engine::cuda::warp_rows {

constexpr int kTileRows = 16;       // rows of a task: the mma's M
constexpr int64_t kGroupCols = 64;  // columns of one 16-byte load per row and lane
constexpr int64_t kRowPad = 64;     // bytes after each staged row (see below)
constexpr int kMaxWarps = 16;
constexpr int kMaxSlots = 16;
constexpr int64_t kHeader = 2 * kMaxSlots * 8;    // full and empty barriers
constexpr int64_t kNormRedBytes = kMaxWarps * 4;  // the warps' sums of squares (x_norm only)

// The column (of a 64-column group) under mma k slot kk (0..15) of k-step j: slots 2t, 2t+1
// are bytes 0 and 1 of lane t's word j (e4m3_low_pair), slots 2t+8, 2t+9 bytes 2 and 3
// (e4m3_high_pair), as in f16_fragments.h.
__host__ __device__ inline int k_slot_column(int kk, int j) {
  const int t = (kk % 8) / 2, e = (kk & 1) + (kk >= 8 ? 2 : 0);
  return 16 * t + 4 * j + e;
}

// Staged activations: per 64-column group G, for half h (k-steps 2h and 2h+1), part p (0: f16
// high parts, 1: low parts; the mma's B column p) and lane position t, one 16-byte unit holding
// the B fragments (b0, b1) of k-step 2h then of 2h+1. Lanes 0..7 (p = lane / 4) read 8
// consecutive units: no bank conflicts. cols * 4 bytes in all.
__host__ __device__ inline int64_t x_unit(int64_t group, int h, int p, int t) {
  return ((group * 2 + h) * 2 + p) * 4 + t;
}

// Where the staging puts x's columns c .. c + 3 (c a multiple of 4), part p: the uint2 `sub` of
// 16-byte unit `unit`, holding (x[c], x[c + 1]) then (x[c + 2], x[c + 3]), the b0 and b1 of the
// k-step and lane position whose A words hold those columns.
struct XPlace {
  int64_t unit;
  int sub;
};
__host__ __device__ inline XPlace x_place(int64_t c, int p) {
  const int64_t group = c / kGroupCols, within = c % kGroupCols;
  const int t = int(within / 16), j = int(within % 16) / 4;
  return {x_unit(group, j / 2, p, t), j % 2};
}

// Shared memory for x's per-128-column scales (f16_fragments.h) of `groups` staged groups of x:
// a multiple of 16 bytes, as cols is of 1,024.
__host__ __device__ inline int64_t x_unscale_bytes(int groups, int64_t cols) {
  return groups * (cols / 128) * 4;
}

// Shared memory for the split sums of `tiles` tiles of `splits` splits and their counters, a
// multiple of 16 bytes; none without splits.
__host__ __device__ inline int64_t split_bytes(int64_t tiles, int splits) {
  return splits > 1 ? (tiles * splits * kTileRows * 4 + tiles * 4 + 15) / 16 * 16 : 0;
}

// Staged rows are kRowPad bytes longer than their stage_cols: rows g and g + 1 then sit 16 banks
// apart, so the 8 lanes of a 16-byte load's phase (rows g, g + 1, lanes t = 0..3) hit 32
// distinct banks.
__host__ __device__ inline int64_t row_stride(int64_t stage_cols) { return stage_cols + kRowPad; }
__host__ __device__ inline int64_t stage_bytes(int64_t stage_cols) {
  return kTileRows * row_stride(stage_cols);
}

// Rows as wide as a stage (the stage's 16 rows are one contiguous run of the matrix) are staged
// in pairs: rows 2g and 2g + 1 in one bulk copy of 2 * stage_cols bytes at g * pair_stride, so a
// stage takes 8 copies instead of 16 (copies of one 1 KB row each capped wq_b's stream,
// docs/cuda_sessions.md). The mma fragment's row g is then row 2g and its row g + 8 row 2g + 1,
// stage_cols bytes further on: 0 mod 128, so both loads keep row_stride's bank pattern (pair g
// at 16 g banks).
__host__ __device__ inline int64_t pair_stride(int64_t stage_cols) {
  return 2 * stage_cols + kRowPad;
}
static_assert(kTileRows * (1024 + kRowPad) >= kTileRows / 2 * (2 * 1024 + kRowPad),
              "paired rows fit a stage's bytes");

// More rows a bulk copy (GemvMode::warp_rows_copy_rows: 2, the pairs above, or 8): copy q holds
// the stage's rows q * copy_rows .. + copy_rows - 1, stage_cols apart, at q * copy_stride, so
// rows of consecutive copies sit 16 banks apart. A 16-byte load's phase (8 lanes) reads mma
// fragment rows g and g + 1 (g even) of one half, which must then lie in copies of different
// parity: with 8 rows a copy, fragment row g (< 8) is stage row 8 (g % 2) + g / 2 and fragment
// row g + 8 the row 4 below it; with 2, rows 2g and 2g + 1 (pair_stride's layout).
__host__ __device__ constexpr int64_t copy_stride(int copy_rows, int64_t stage_cols) {
  return copy_rows * stage_cols + kRowPad;
}
__host__ __device__ inline int staged_row(int fragment_row, int copy_rows) {
  const int g = fragment_row % 8, h = fragment_row / 8;
  return copy_rows == 8 ? 8 * (g % 2) + 4 * h + g / 2 : 2 * g + h;
}
// Where stage row `row` starts in its ring slot.
__host__ __device__ inline int64_t staged_row_offset(int row, int copy_rows, int64_t stage_cols) {
  return (row / copy_rows) * copy_stride(copy_rows, stage_cols) + (row % copy_rows) * stage_cols;
}
static_assert(kTileRows * (1024 + kRowPad) >= kTileRows / 8 * (8 * 1024 + kRowPad),
              "rows copied 8 at a time fit a stage's bytes");

// A block's stages: its tasks (16-row tiles) go round-robin to `warps` warps, warp i taking its
// tasks' stages (column slices) in order. The producer issues stage q = jj * warps + i for warp
// i's jj-th stage (jj = round * col_stages + slice), so consecutive copies feed different warps;
// with slots = k * warps, warp i's stages cycle through its own slots i, warps + i, ... and
// each slot has one consumer, taking it in order (what an mbarrier's parity wait needs).
struct Stage {
  int64_t task;  // the block's task index (0-based); >= the block's tasks: none
  int64_t slice;
  int slot;
  uint32_t parity;
};
__host__ __device__ inline Stage stage_of(int64_t jj, int warp, int warps, int slots,
                                          int64_t col_stages) {
  const int k = slots / warps;
  Stage s;
  s.task = (jj / col_stages) * warps + warp;
  s.slice = jj % col_stages;
  s.slot = int(jj % k) * warps + warp;
  s.parity = uint32_t((jj / k) & 1);
  return s;
}

// Warps and ring slots for `tasks` tasks over `grid` blocks when `max_slots` stages fit: as many
// warps as a block has tasks, up to max_slots / depth (so each warp has `depth` or more stages
// in flight), the slots a multiple of them. warps == 0: not even two stages fit.
struct Shape {
  int warps = 0, slots = 0;
};
__host__ __device__ inline Shape shape_for(int64_t tasks, int64_t grid, int max_slots,
                                           int depth = 2) {
  Shape s;
  if (max_slots > kMaxSlots) max_slots = kMaxSlots;
  if (max_slots < 2 || tasks < 1 || grid < 1) return s;
  const int64_t per_block = (tasks + grid - 1) / grid;
  int64_t w = max_slots / (depth < 1 ? 1 : depth);
  if (w < 1) w = 1;
  if (per_block < w) w = per_block;
  if (w > kMaxWarps) w = kMaxWarps;
  s.warps = int(w);
  s.slots = (max_slots / s.warps) * s.warps;
  return s;
}

}  // namespace agentrt::engine::cuda::warp_rows
