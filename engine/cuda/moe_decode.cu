// The routed experts of one row (batch-1 decode), streamed through shared memory. Each chosen
// expert's FP4 weights are read once: a producer warp keeps a ring of stages (weight rows and
// their block scales) in flight with bulk copies while 16 consumer warps decode and multiply the
// oldest stage. One block per SM loops over the tiles. A decode batch's rows (up to 64) share one
// launch of each kernel: each block takes a contiguous range of the rows' tasks and stages a
// row's activations when its range reaches the row (one launch per row per kernel cost a ramp
// and, for batches too large for a CUDA graph, a host launch each). In moe.cu's CUDA-core kernels
// every warp loads and then computes, so with the few warps that fit, the loads waited for the
// arithmetic; those products ran at about 1 TB/s on the H200.
//
// The FP8 products (gemv_stream.cu) run on the tensor cores; for FP4 a tensor-core version
// (nibble pairs placed as bf16 pairs, mma.sync, per-row scales every 32 columns, the warps'
// sums meeting in shared memory) measured slower on the H200 (gate/up 34 against 27 us a
// layer): decoding FP4 costs about the same either way, and the scales and cross-warp sums
// cost more than the FMAs they save. The consumers multiply in integers instead (fp4_int8.cuh):
// a table lookup turns FP4 into int8 and dp4a multiplies it by the activations staged as three
// int8 parts, 183 instructions per 64 weights against 300 for float decoding and FMAs. The up
// kernel writes its SwiGLU values as those parts, so the down kernel's blocks only copy them.
// On the H200 (Nsight Compute, one layer of the V4-Flash shapes): gate/up 27.6 -> 25.5 us,
// down 18.7 -> 14.3 us.
#include <algorithm>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp4_int8.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/route_warp.cuh"
#include "engine/cuda/stream_ring.cuh"
#include "engine/cuda/swiglu.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

using stream::kConsumerWarps;
using stream::kHeader;
using stream::kThreads;
constexpr int kUpRows = kConsumerWarps;         // per stage: one gate and one up row a warp
constexpr int64_t kUpValuesBytes = 2 * 32 * 4;  // two tasks' SwiGLU values, before int8
constexpr int kDownRows = 2 * kConsumerWarps;   // per stage: two rows a warp
constexpr int kMaxStages = 4;  // of stream::kMaxStages: deeper rings left no gain to find
constexpr WeightType kFp4 = WeightType::f4_e2m1;
// A routing producer's row of choices sits in the header after the ring's barriers: at most
// kRouteChoices (no static shared memory beside the ring sized to the opt-in limit).
constexpr int64_t kRouteSlots = 2 * stream::kMaxStages * 8;
constexpr int64_t kRouteChoices = (kHeader - kRouteSlots) / 4;
static_assert(kRouteChoices >= 8, "the header holds a row's choices");

// A block's tasks of `rows` rows (per_row each, row-major): for one row, every gridDim.x-th task
// from blockIdx.x, as always; for several a contiguous range, so a block moves to the next row
// (and stages its activations) once or twice instead of at every task.
// 32-bit: a batch has at most 64 rows of a few hundred tasks, and a 64-bit division is a
// subroutine call.
struct TaskRange {
  uint32_t begin, end, step;
};
__device__ __forceinline__ TaskRange block_tasks(int64_t rows, int64_t per_row) {
  const uint32_t total = uint32_t(rows * per_row);
  if (rows == 1) return {blockIdx.x, total, gridDim.x};
  return {blockIdx.x * total / gridDim.x, (blockIdx.x + 1) * total / gridDim.x, 1u};
}
// A range's tasks in turn (at, until end), each as its row and the row's task, stepped without
// dividing.
struct TaskCursor {
  uint32_t at, end, row, task, per_row, step;
  __device__ __forceinline__ bool more() const { return at < end; }
  __device__ __forceinline__ void next() {
    at += step;
    task += step;
    while (task >= per_row) task -= per_row, ++row;
  }
};
__device__ __forceinline__ TaskCursor task_cursor(const TaskRange& r, int64_t per_row) {
  const uint32_t p = uint32_t(per_row);
  return {r.begin, r.end, r.begin / p, r.begin % p, p, r.step};
}

// Bytes of act (the up kernel's int8 parts) per row: k vectors of i8_plain_bytes(inter), in the
// room of k * inter floats.
__host__ __device__ inline int64_t act_row_bytes(int64_t k, int64_t inter) { return k * inter * 4; }

// Routing the up kernel's producers do themselves (streamed_experts_routed): in.logits null =
// chosen is given.
struct KernelRoute {
  RouteInputs in;
  int64_t experts;
  int32_t* chosen;  // written: [batch][k], for the down kernel
  float* weights;
};

// Copies rows [r0, r0 + rows) of an FP4 matrix and their scales into dst (data, then scales).
// Device FP4 matrices own their scale rows (DeviceMatrix: row_offset 0).
__device__ void copy_rows(const WeightMatrix& w, int64_t r0, int64_t rows, char* dst,
                          uint64_t* bar) {
  const int64_t row_bytes = w.cols / 2, scale_bytes = w.cols / 32;
  bulk_copy_to_shared(dst, static_cast<const char*>(w.data) + r0 * row_bytes,
                      uint32_t(rows * row_bytes), bar);
  bulk_copy_to_shared(dst + rows * row_bytes,
                      static_cast<const uint8_t*>(w.scale) + (w.row_offset + r0) * scale_bytes,
                      uint32_t(rows * scale_bytes), bar);
}

// The shared expert's FP8 rows (CudaOptions::shared_in_experts) on the CUDA cores, in float32:
// kSharedRows rows a stage, one a consumer warp, against activations staged by
// stream::stage_x<f8_e4m3> (times 2^60; each chunk's bytes placed into floats, exact). A lane
// takes chunks lane, lane + 32, ... of its row, each times its 128-column block's scale; the
// scales of a group of kF8Group chunks are read from global memory, the first group's before the
// stage is waited for.
constexpr int kSharedRows = kConsumerWarps;
constexpr int kF8Group = 8;  // a lane's chunks a group: one group for rows of 4,096 columns
constexpr WeightType kFp8 = WeightType::f8_e4m3;

// A lane's scales of group g of row `row`'s chunks (0 past the row's end).
__device__ __forceinline__ void f8_group_scales(const WeightMatrix& w, int64_t row, int g, int lane,
                                                float (&sc)[kF8Group]) {
  const int chunks = int(w.cols / 16);
  const int64_t base = (row / 128) * ((w.cols + 127) / 128);
#pragma unroll
  for (int i = 0; i < kF8Group; ++i) {
    const int c = lane + 32 * (g * kF8Group + i);
    sc[i] = 0.0f;
    if (c < chunks)
      sc[i] = w.scale_type == ScaleType::f32
                  ? __ldg(static_cast<const float*>(w.scale) + base + c / 8)
                  : e8m0(__ldg(static_cast<const uint8_t*>(w.scale) + base + c / 8));
  }
}

// This lane's part of row `row`'s dot product (its chunks in shared memory at `chunks_at`), not
// yet times out_scale<f8_e4m3>(); sc holds its first group's scales.
__device__ __forceinline__ float f8_lane_dot(const WeightMatrix& w, int64_t row,
                                             const uint4* chunks_at, const float4* xs, int lane,
                                             float (&sc)[kF8Group]) {
  const int chunks = int(w.cols / 16);
  float acc = 0.0f;
  for (int g = 0; g * 32 * kF8Group < chunks; ++g) {
    if (g > 0) f8_group_scales(w, row, g, lane, sc);
#pragma unroll
    for (int i = 0; i < kF8Group; ++i) {
      const int c = lane + 32 * (g * kF8Group + i);
      if (c < chunks) {
        const uint4 q[1] = {chunks_at[c]};
        float d[1];
        stream::chunk_dots<kFp8, 1>(q, xs, c, d);
        acc = fmaf(d[0], sc[i], acc);
      }
    }
  }
  return acc;
}

// The producer's q-th stage: kSharedRows FP8 rows of w from row r0 (whole rows, their scales
// read by the consumers), into the ring slot at ring + index * slot_bytes.
__device__ __forceinline__ void copy_shared_stage(const stream::Ring& bars, uint32_t q,
                                                  int in_flight, int stages, char* ring,
                                                  int64_t slot_bytes, const WeightMatrix& w,
                                                  int64_t r0) {
  stream::hold_in_flight(bars, q, in_flight, stages);
  const stream::Slot s = stream::slot_of(q, stages);
  mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
  const uint32_t bytes = uint32_t(kSharedRows * w.cols);
  mbarrier_arrive_expect(&bars.full[s.index], bytes);
  bulk_copy_to_shared(ring + s.index * slot_bytes, static_cast<const char*>(w.data) + r0 * w.cols,
                      bytes, &bars.full[s.index]);
}

// Bytes of the up kernel's staged activations: int8 parts for the FP4 rows and, with the shared
// expert, float32 for its FP8 rows in the same room (a block stages one or the other at a time).
__host__ __device__ inline int64_t up_x_bytes(int64_t hidden, bool shared) {
  const int64_t parts = stream::i8_bytes(hidden),
                floats = stream::x_slots<kFp8>(hidden) * int64_t(sizeof(float4));
  return shared && floats > parts ? floats : parts;
}
// Bytes of the down kernel's staged shared-expert activations (shared_inter 0: none).
__host__ __device__ inline int64_t down_shared_x_bytes(int64_t shared_inter) {
  return stream::x_slots<kFp8>(shared_inter) * int64_t(sizeof(float4));
}

// For each of the `batch` rows r: act[r][j] = SwiGLU of expert chosen[r][j]'s gate and up rows
// applied to h[r], as plain int8 parts (fp4_int8.cuh) for the down kernel. A task is 32 rows of
// one expert (one block of act's columns), in two stages of kUpRows rows of w1 and of w3; once
// both are summed, warp 0 turns the task's 32 values into int8 parts. The consumers stage a
// row's activations when their tasks reach it.
// kShared: each row's first tasks are the shared expert's (sh.w1.rows / kSharedRows of them, a
// stage of its w1 rows then one of its w3 rows, each warp's SwiGLU value to sh.act), whose
// copies the producer issues before it waits for the kernel before (weights are constants).
template <bool kShared>
__global__ void __launch_bounds__(kThreads, 1)
    stream_up_kernel(ExpertsDevice e, const int32_t* chosen, const float* h, int64_t batch,
                     int64_t hidden, int64_t inter, int64_t k, float limit, int stages,
                     int in_flight, int8_t* act, KernelRoute route, SharedExpertDevice sh) {
  extern __shared__ __align__(128) char smem[];
  uint4* xs = reinterpret_cast<uint4*>(smem + kHeader);
  const float* xscales = stream::i8_scales(xs, hidden);
  const int64_t x_bytes = up_x_bytes(hidden, kShared);
  float* values = reinterpret_cast<float*>(smem + kHeader + x_bytes);  // [2][32]
  const int64_t row_bytes = hidden / 2, scale_bytes = hidden / 32;
  const int64_t matrix_bytes = kUpRows * (row_bytes + scale_bytes);  // one matrix's part
  char* ring = smem + kHeader + x_bytes + kUpValuesBytes;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const stream::Ring bars = stream::init_ring(smem, stages);
  if (!kShared) pdl_begin();
  const int64_t shared_tasks = kShared ? sh.w1.rows / kSharedRows : 0;
  const int64_t blocks = inter / 32, tasks = shared_tasks + k * blocks;  // per row
  const TaskRange range = block_tasks(batch, tasks);
  if (warp == kConsumerWarps) {
    // kShared: a shared-expert task's two stages (w1's rows, then w3's).
    bool waited = !kShared;
    auto copy_shared = [&](uint32_t& q, int64_t task) {
      copy_shared_stage(bars, q++, in_flight, stages, ring, 2 * matrix_bytes, sh.w1,
                        task * kSharedRows);
      copy_shared_stage(bars, q++, in_flight, stages, ring, 2 * matrix_bytes, sh.w3,
                        task * kSharedRows);
    };
    if (route.in.logits) {
      // The whole warp routes each row as the block's tasks reach it (route_row_warp), the
      // block holding a row's first task writes the choices for the down kernel, and lane 0
      // issues the copies.
      int32_t* row_experts = reinterpret_cast<int32_t*>(smem + kRouteSlots);  // [k]
      uint32_t q = 0;
      int64_t routed = -1;
      for (TaskCursor c = task_cursor(range, tasks); c.more(); c.next()) {
        if (kShared && int64_t(c.task) < shared_tasks) {
          if (lane == 0) copy_shared(q, c.task);
          __syncwarp();
          continue;
        }
        if (!waited) pdl_wait(), waited = true;
        const int64_t t = c.task - shared_tasks;  // the row's routed task
        if (int64_t(c.row) != routed) {
          const RouteInputs& in = route.in;
          const WarpChoice w =
              route_row_warp(in.logits + c.row * route.experts, in.tid2eid ? in.tokens[c.row] : 0,
                             in.tid2eid, in.bias, route.experts, k, in.func, in.scaling, lane);
          if (lane < k) {
            row_experts[lane] = w.expert;
            if (t == 0) {
              route.chosen[c.row * k + lane] = w.expert;
              route.weights[c.row * k + lane] = w.weight;
            }
          }
          __syncwarp();
          routed = c.row;
        }
        if (lane == 0)
          for (int half = 0; half < 2; ++half, ++q) {
            stream::hold_in_flight(bars, q, in_flight, stages);
            const stream::Slot s = stream::slot_of(q, stages);
            mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
            const int32_t ex = row_experts[t / blocks];
            const int64_t r0 = (t % blocks) * 32 + half * kUpRows;
            char* dst = ring + s.index * 2 * matrix_bytes;
            mbarrier_arrive_expect(&bars.full[s.index], uint32_t(2 * matrix_bytes));
            copy_rows(e.w1[ex], r0, kUpRows, dst, &bars.full[s.index]);
            copy_rows(e.w3[ex], r0, kUpRows, dst + matrix_bytes, &bars.full[s.index]);
          }
        __syncwarp();  // lane 0 is done with row_experts before the next row's routing
      }
      if (!waited) pdl_wait();
      return;
    }
    if (lane != 0) return;
    uint32_t q = 0;
    for (TaskCursor c = task_cursor(range, tasks); c.more(); c.next()) {
      if (kShared && int64_t(c.task) < shared_tasks) {
        copy_shared(q, c.task);
        continue;
      }
      if (!waited) pdl_wait(), waited = true;
      for (int half = 0; half < 2; ++half, ++q) {
        stream::hold_in_flight(bars, q, in_flight, stages);
        const stream::Slot s = stream::slot_of(q, stages);
        mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
        const int64_t t = c.task - shared_tasks;  // the row's routed task
        const int32_t ex = chosen[c.row * k + t / blocks];
        const int64_t r0 = (t % blocks) * 32 + half * kUpRows;
        char* dst = ring + s.index * 2 * matrix_bytes;
        mbarrier_arrive_expect(&bars.full[s.index], uint32_t(2 * matrix_bytes));
        copy_rows(e.w1[ex], r0, kUpRows, dst, &bars.full[s.index]);
        copy_rows(e.w3[ex], r0, kUpRows, dst + matrix_bytes, &bars.full[s.index]);
      }
    }
    if (!waited) pdl_wait();
    return;
  }
  uint32_t q = 0, task = 0;    // task: this block's count (t steps by the grid, often even)
  int64_t staged = -1;         // the row whose activations xs holds
  bool staged_floats = false;  // kShared: as floats for the shared expert's rows
  // kShared: the shared expert's tasks run before the wait for the kernel before (the routing,
  // which wrote chosen): h comes from a kernel before that one, whose writes that kernel's own
  // wait made visible before it let this one in (read past the L1 all the same).
  bool waited = !kShared;
  for (TaskCursor c = task_cursor(range, tasks); c.more(); c.next(), ++task) {
    const int64_t row = c.row;
    const bool shared_task = kShared && int64_t(c.task) < shared_tasks;
    if constexpr (kShared) {
      if (!shared_task && !waited) pdl_begin(), waited = true;
      if (row != staged || shared_task != staged_floats) {
        if (staged >= 0) stream::consumers_sync();  // every warp is done with the old staging
        if (shared_task)
          stream::stage_x<kFp8, true>(h + row * hidden, hidden, reinterpret_cast<float4*>(xs));
        else
          stream::stage_x_i8(h + row * hidden, hidden, xs);
        stream::consumers_sync();
        staged = row;
        staged_floats = shared_task;
      }
      if (shared_task) {
        const int64_t r = int64_t(c.task) * kSharedRows + warp;  // this warp's row
        float gu[2];
        for (int m = 0; m < 2; ++m, ++q) {
          const WeightMatrix& w = m == 0 ? sh.w1 : sh.w3;
          float sc[kF8Group];
          f8_group_scales(w, r, 0, lane, sc);
          const stream::Slot s = stream::slot_of(q, stages);
          mbarrier_wait(&bars.full[s.index], s.parity);
          const auto* at = reinterpret_cast<const uint4*>(ring + s.index * 2 * matrix_bytes +
                                                          int64_t(warp) * hidden);
          const float part = f8_lane_dot(w, r, at, reinterpret_cast<const float4*>(xs), lane, sc);
          stream::release(bars, s);
          gu[m] = stream::warp_sum(part) * out_scale<kFp8>();
        }
        if (lane == 0) sh.act[row * sh.w1.rows + r] = swiglu_weighted(gu[0], gu[1], limit, 1.0f);
        continue;
      }
    } else if (row != staged) {
      // Every warp is past the last task's barrier, done with the old row's activations.
      stream::stage_x_i8(h + row * hidden, hidden, xs);
      stream::consumers_sync();
      staged = row;
    }
    const int64_t t = c.task - shared_tasks;        // the row's routed task
    float* task_values = values + (task & 1) * 32;  // warp 0 may still read the other task's
    for (int half = 0; half < 2; ++half, ++q) {
      const stream::Slot s = stream::slot_of(q, stages);
      mbarrier_wait(&bars.full[s.index], s.parity);
      const char* gate = ring + s.index * 2 * matrix_bytes;
      const char* up = gate + matrix_bytes;
      const uint4* rows[2] = {reinterpret_cast<const uint4*>(gate + warp * row_bytes),
                              reinterpret_cast<const uint4*>(up + warp * row_bytes)};
      const uint8_t* scales[2] = {
          reinterpret_cast<const uint8_t*>(gate + kUpRows * row_bytes + warp * scale_bytes),
          reinterpret_cast<const uint8_t*>(up + kUpRows * row_bytes + warp * scale_bytes)};
      float acc[2] = {0.0f, 0.0f};
      stream::lane_dots_i8<2>(rows, scales, int(row_bytes / 16), xs, xscales, lane, acc);
      stream::release(bars, s);
      float gv = stream::warp_sum(acc[0]), uv = stream::warp_sum(acc[1]);
      if (lane == 0) {
        if (limit > 0) {
          gv = fminf(gv, limit);
          uv = fminf(fmaxf(uv, -limit), limit);
        }
        task_values[half * kUpRows + warp] = gv / (1.0f + expf(-gv)) * uv;
      }
    }
    stream::consumers_sync();
    if (warp == 0) {
      int8_t parts[stream::kI8Parts];
      const float scale = stream::quantize_lane(task_values[lane], parts);
      int8_t* a =
          act + row * act_row_bytes(k, inter) + (t / blocks) * stream::i8_plain_bytes(inter);
      const int64_t col = (t % blocks) * 32 + lane;
#pragma unroll
      for (int p = 0; p < stream::kI8Parts; ++p) a[p * inter + col] = parts[p];
      if (lane == 0) reinterpret_cast<float*>(a + stream::kI8Parts * inter)[t % blocks] = scale;
    }
  }
  if (!waited) pdl_begin();  // a block of shared-expert tasks only still lets the next kernel in
}

// For each of the `batch` rows: out[i] += sum_j weights[j] * (w2 of expert chosen[j] row i) .
// act[j] (kStore: out[i] = that sum). A task is kDownRows rows of the output: k stages, one per
// chosen expert, summed in registers. The consumers stage a row's k activation vectors when their
// tasks reach it. kEarly: the producer does not wait for the up kernel (only the consumers read
// what it writes), so a block that lands while the up kernel's last blocks still run has its
// ring filling by then; it reads chosen from the L2, written by a routing launch that finished
// before the up kernel let this one in (pdl_begin waits before it lets the next kernel in).
// kShared (with kStore): two more stages a task, the shared expert's w2 rows of the task's
// outputs (kSharedRows each, one a warp) against its SwiGLU values sh.act, added to the sums.
template <bool kStore, bool kEarly, bool kShared = false>
__global__ void __launch_bounds__(kThreads, 1)
    stream_down_kernel(ExpertsDevice e, const int32_t* chosen, const float* weights,
                       const int8_t* act, int64_t batch, int64_t hidden, int64_t inter, int64_t k,
                       int stages, int in_flight, float* out, SharedExpertDevice sh) {
  static_assert(!kShared || kStore, "the shared expert's sum is written, not added");
  extern __shared__ __align__(128) char smem[];
  char* xs = smem + kHeader;
  const int64_t row_bytes = inter / 2, scale_bytes = inter / 32;
  const int64_t per_expert = stream::i8_bytes(inter);
  const int64_t shared_inter = kShared ? sh.w2.cols : 0;
  // A stage: the FP4 rows' or (kShared) the shared expert's FP8 rows, whichever is larger.
  const int64_t fp4_stage = kDownRows * (row_bytes + scale_bytes),
                stage_bytes = kShared && kSharedRows * shared_inter > fp4_stage
                                  ? kSharedRows * shared_inter
                                  : fp4_stage;
  float4* shared_x = reinterpret_cast<float4*>(xs + k * per_expert);
  char* ring = xs + k * per_expert + down_shared_x_bytes(shared_inter);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const stream::Ring bars = stream::init_ring(smem, stages);
  if constexpr (!kEarly) pdl_begin();
  const int64_t tasks = hidden / kDownRows;  // per row
  const TaskRange range = block_tasks(batch, tasks);
  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    uint32_t q = 0;
    for (TaskCursor c = task_cursor(range, tasks); c.more(); c.next()) {
      for (int64_t j = 0; j < k; ++j, ++q) {
        stream::hold_in_flight(bars, q, in_flight, stages);
        const stream::Slot s = stream::slot_of(q, stages);
        mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
        mbarrier_arrive_expect(&bars.full[s.index], uint32_t(fp4_stage));
        const int32_t ex = kEarly ? __ldcg(chosen + c.row * k + j) : chosen[c.row * k + j];
        copy_rows(e.w2[ex], c.task * kDownRows, kDownRows, ring + s.index * stage_bytes,
                  &bars.full[s.index]);
      }
      if constexpr (kShared)
        for (int m = 0; m < 2; ++m, ++q)
          copy_shared_stage(bars, q, in_flight, stages, ring, stage_bytes, sh.w2,
                            int64_t(c.task) * kDownRows + m * kSharedRows);
    }
    return;
  }
  if constexpr (kEarly) pdl_begin();
  uint32_t q = 0;
  int64_t staged = -1;  // the row whose activation vectors xs holds
  for (TaskCursor c = task_cursor(range, tasks); c.more(); c.next()) {
    const int64_t row = c.row, t = c.task;
    if (row != staged) {
      if (staged >= 0) stream::consumers_sync();  // every warp is done with the old row's
      stream::stage_plain_i8(act + row * act_row_bytes(k, inter), k, inter, xs, per_expert);
      if constexpr (kShared)
        stream::stage_x<kFp8>(sh.act + row * shared_inter, shared_inter, shared_x);
      stream::consumers_sync();
      staged = row;
    }
    float acc[2] = {0.0f, 0.0f};
    for (int64_t j = 0; j < k; ++j, ++q) {
      const stream::Slot s = stream::slot_of(q, stages);
      mbarrier_wait(&bars.full[s.index], s.parity);
      const char* src = ring + s.index * stage_bytes;
      const char* sc = src + kDownRows * row_bytes;
      const uint4* rows[2] = {
          reinterpret_cast<const uint4*>(src + warp * row_bytes),
          reinterpret_cast<const uint4*>(src + (warp + kConsumerWarps) * row_bytes)};
      const uint8_t* scales[2] = {
          reinterpret_cast<const uint8_t*>(sc + warp * scale_bytes),
          reinterpret_cast<const uint8_t*>(sc + (warp + kConsumerWarps) * scale_bytes)};
      float part[2] = {0.0f, 0.0f};
      uint4* xj = reinterpret_cast<uint4*>(xs + j * per_expert);
      stream::lane_dots_i8<2>(rows, scales, int(row_bytes / 16), xj, stream::i8_scales(xj, inter),
                              lane, part);
      stream::release(bars, s);
      const float wj = __ldg(weights + row * k + j);
      acc[0] = fmaf(wj, part[0], acc[0]);
      acc[1] = fmaf(wj, part[1], acc[1]);
    }
    if constexpr (kShared)
      for (int m = 0; m < 2; ++m, ++q) {
        const int64_t r = t * kDownRows + m * kSharedRows + warp;  // this warp's output
        float sc[kF8Group];
        f8_group_scales(sh.w2, r, 0, lane, sc);
        const stream::Slot s = stream::slot_of(q, stages);
        mbarrier_wait(&bars.full[s.index], s.parity);
        const auto* at =
            reinterpret_cast<const uint4*>(ring + s.index * stage_bytes + warp * shared_inter);
        const float part = f8_lane_dot(sh.w2, r, at, shared_x, lane, sc);
        stream::release(bars, s);
        acc[m] = fmaf(part, out_scale<kFp8>(), acc[m]);
      }
    const float y0 = stream::warp_sum(acc[0]), y1 = stream::warp_sum(acc[1]);
    if (lane == 0) {
      float* o = out + row * hidden + t * kDownRows;
      if constexpr (kStore) {
        o[warp] = y0;
        o[warp + kConsumerWarps] = y1;
      } else {
        o[warp] += y0;
        o[warp + kConsumerWarps] += y1;
      }
    }
  }
}

// The shared memory of both kernels: fixed parts and one stage (shared_inter > 0: with the shared
// expert's rows, shared_in_experts).
struct StreamShapes {
  int64_t up_fixed, up_stage, down_fixed, down_stage;
  int up_stages, down_stages;  // 0 where the ring does not fit
};

StreamShapes stream_shapes(int64_t k, int64_t inter, int64_t hidden, int64_t shared_inter = 0,
                           bool shared_up = false) {
  // An up stage (17 bytes a column) always holds a shared-expert stage (kSharedRows * hidden).
  StreamShapes s{
      kHeader + up_x_bytes(hidden, shared_up) + kUpValuesBytes,
      2 * kUpRows * (hidden / 2 + hidden / 32),
      kHeader + k * stream::i8_bytes(inter) + down_shared_x_bytes(shared_inter),
      std::max<int64_t>(kDownRows * (inter / 2 + inter / 32), kSharedRows * shared_inter),
      0,
      0};
  s.up_stages = stream::ring_stages(s.up_fixed, s.up_stage, kMaxStages);
  s.down_stages = stream::ring_stages(s.down_fixed, s.down_stage, kMaxStages);
  return s;
}

bool shapes_tile(const ExpertsDevice& e, int64_t k, int64_t inter, int64_t hidden) {
  return e.w1_type == kFp4 && e.w2_type == kFp4 && k > 0 && hidden % kDownRows == 0 &&
         inter % 32 == 0 && hidden % 32 == 0;
}

// The shared expert's rows as the kernels take them: FP8 with their own scale grids, whole
// stages of kSharedRows rows inside one 128-row scale block, rows of at most 8,192 columns
// (f8_lane_dot's groups) in 16-byte chunks.
bool shared_tiles(const SharedExpertDevice& s, int64_t hidden) {
  const int64_t si = s.w1.rows;
  auto fp8 = [](const WeightMatrix& w) {
    return w.type == kFp8 && w.row_offset == 0 && w.data && w.scale;
  };
  return s.act && fp8(s.w1) && fp8(s.w3) && fp8(s.w2) && s.w3.rows == si && s.w2.cols == si &&
         s.w1.cols == hidden && s.w3.cols == hidden && s.w2.rows == hidden && si > 0 &&
         si % kSharedRows == 0 && 128 % kSharedRows == 0 && hidden % 16 == 0 && si % 16 == 0 &&
         hidden <= 8192 && si <= 8192;
}

}  // namespace

bool streamed_shared_fits(const SharedExpertDevice& s, int64_t hidden) {
  return shared_tiles(s, hidden);
}

bool streamed_experts_fit(const ExpertsDevice& e, int64_t k, int64_t inter, int64_t hidden) {
  if (!shapes_tile(e, k, inter, hidden)) return false;
  const StreamShapes s = stream_shapes(k, inter, hidden);
  return s.up_stages > 0 && s.down_stages > 0;
}

namespace {

bool launch_streamed(const ExpertsDevice& e, const int32_t* chosen, const float* weights,
                     const float* h, int64_t n, int64_t k, int64_t inter, int64_t hidden,
                     float limit, float* act, float* out, cudaStream_t stream,
                     cudaEvent_t before_sum, int max_blocks, int64_t in_flight_bytes,
                     const KernelRoute& route, bool store = false, bool early_down = false,
                     const SharedExpertDevice* shared = nullptr) {
  if (!shapes_tile(e, k, inter, hidden)) return false;
  if (shared && !shared_tiles(*shared, hidden)) return false;
  const bool shared_up = shared && shared->in_up;
  const StreamShapes s = stream_shapes(k, inter, hidden, shared ? shared->w1.rows : 0, shared_up);
  if (s.up_stages == 0 || s.down_stages == 0) return false;
  const SharedExpertDevice sh = shared ? *shared : SharedExpertDevice{};
  if (shared) store = true;  // the down kernel writes the whole sum
  const int64_t blocks = max_blocks > 0 ? max_blocks : sm_count();
  const int64_t up_shared = s.up_fixed + s.up_stages * s.up_stage,
                down_shared = s.down_fixed + s.down_stages * s.down_stage;
  auto up_kernel = shared_up ? stream_up_kernel<true> : stream_up_kernel<false>;
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(up_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(up_shared)));
  // The down kernel's producer may read chosen before its wait only where a launch before the
  // up kernel wrote it (not the up kernel's own routing).
  const bool early = early_down && !route.in.logits;
  auto down_kernel =
      shared
          ? (early ? stream_down_kernel<true, true, true> : stream_down_kernel<true, false, true>)
      : store ? (early ? stream_down_kernel<true, true> : stream_down_kernel<true, false>)
              : (early ? stream_down_kernel<false, true> : stream_down_kernel<false, false>);
  AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(down_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(down_shared)));
  // All rows in one launch of each kernel (each row's act: act_row_bytes(k, inter) bytes, the
  // room of its k * inter floats).
  auto* act_bytes = reinterpret_cast<int8_t*>(act);
  const int64_t up_tasks = n * (k * (inter / 32) + (shared_up ? sh.w1.rows / kSharedRows : 0));
  launch_pdl(up_kernel, unsigned(std::min(blocks, up_tasks)), kThreads, size_t(up_shared), stream,
             e, chosen, h, n, hidden, inter, k, limit, s.up_stages,
             stream::in_flight_stages(in_flight_bytes, s.up_stage, s.up_stages), act_bytes, route,
             sh);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  // The down products add into `out`, which the shared expert (on another stream) writes
  // (store: `out` is theirs alone), or (the shared expert's down product folded in) read its
  // SwiGLU values, which launches on another stream write.
  if (before_sum && (!store || shared))
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream, before_sum, 0));
  launch_pdl(down_kernel, unsigned(std::min(blocks, n * (hidden / kDownRows))), kThreads,
             size_t(down_shared), stream, e, chosen, weights, static_cast<const int8_t*>(act_bytes),
             n, hidden, inter, k, s.down_stages,
             stream::in_flight_stages(in_flight_bytes, s.down_stage, s.down_stages), out, sh);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  return true;
}

}  // namespace

bool streamed_experts(const ExpertsDevice& e, const int32_t* chosen, const float* weights,
                      const float* h, int64_t n, int64_t k, int64_t inter, int64_t hidden,
                      float limit, float* act, float* out, cudaStream_t stream,
                      cudaEvent_t before_sum, int max_blocks, int64_t in_flight_bytes, bool store,
                      bool early_down, const SharedExpertDevice* shared) {
  return launch_streamed(e, chosen, weights, h, n, k, inter, hidden, limit, act, out, stream,
                         before_sum, max_blocks, in_flight_bytes, KernelRoute{}, store, early_down,
                         shared);
}

bool streamed_experts_routed(const RouteInputs& route, int64_t experts, int32_t* chosen,
                             float* weights, const ExpertsDevice& e, const float* h, int64_t n,
                             int64_t k, int64_t inter, int64_t hidden, float limit, float* act,
                             float* out, cudaStream_t stream, cudaEvent_t before_sum,
                             int max_blocks, int64_t in_flight_bytes,
                             const SharedExpertDevice* shared) {
  if (!route.logits || !route_fits_warp(experts, k, route.func) || k > kRouteChoices ||
      (route.tid2eid ? !route.tokens : !route.bias))
    return false;
  return launch_streamed(e, chosen, weights, h, n, k, inter, hidden, limit, act, out, stream,
                         before_sum, max_blocks, in_flight_bytes,
                         KernelRoute{route, experts, chosen, weights}, false, false, shared);
}

}  // namespace agentrt::engine::cuda
