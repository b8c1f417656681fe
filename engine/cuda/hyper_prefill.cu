// The prefill pass's mHC post step, projection and sum of squares in one pass over the streams
// (hyper_prefill.h). A block owns one slice of kSlice channels (thread t: channel t of every
// stream) for a run of rows, so its 96 fn weights (24 outputs x 4 streams) are loaded into
// registers once and used for every row: fetching fn per row would read its 1.5 MB from the L2
// 16K times. Per row a thread applies the post step to its channel (hyper_post_kernel's fmaf
// chain, so the same bits), stores it, and accumulates its 24 products and square; the warp
// adds them with a reduce-scatter (below), and every kBatchRows rows the block adds its warps'
// partials in a fixed order into projected[row][o][slice], the layout hyper_pre_split_kernel
// reads with `splits` = the slice count.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/hyper_prefill.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kHc = 4;
constexpr int kSlice = 128;  // channels a block owns, one a thread
constexpr int kWarps = kSlice / 32;
// 96 fn registers a thread: three blocks of 128 threads (168 registers each) fill an SM.
constexpr int kBlocksPerSm = 3;
constexpr int kBatchRows = 8;  // rows whose warp partials the block adds up after one barrier
// The streams (and block output) of the rows ahead come in through a ring of kStages rows in
// shared memory, by 4-byte asynchronous copies each thread issues for its own channel and waits
// for itself (no barrier). On an H100 at 16K rows this took the kernel from 1.36 to 1.08 ms
// against loads one row ahead in registers (~7 KB in flight an SM); a ring of 4-row batches
// filled by bulk copies, one barrier a batch, measured 1.20 ms.
constexpr int kStages = 8;

// A warp's reduce-scatter of OUT outputs: kSteps halving steps over lane bits 4, 3, ... leave
// lane l with kRun consecutive outputs, kRun * turn(l) + r (turn = l's top kSteps bits), added
// over the 2^kSteps lanes sharing l's low bits (kGroups such groups per output).
template <int OUT>
struct ScatterShape {
  static constexpr int kSteps = OUT == 24 ? 3 : 2;
  static constexpr int kRun = OUT >> kSteps;
  static constexpr int kGroups = 32 >> kSteps;
  static constexpr int kFloats = kGroups * (OUT + 1);  // a warp's partials of one row
  static_assert(kRun << kSteps == OUT, "outputs: a run times a power of two");
  // The output lane `turn` accumulates in register slot i. Slot i's "digits" (i / kRun in
  // binary) are the output's XOR the lane's turn, so each step is the same code in every lane
  // (keep slots [0, h), send [h, 2h) to the partner across one lane bit, which holds the kept
  // outputs there): no per-lane selects, where the usual reduce-scatter picks halves by lane.
  __device__ static int output(int slot, int turn) {
    return kRun * ((slot / kRun) ^ turn) + slot % kRun;
  }
};

// One step: slots [0, H) keep their outputs, each plus the partner's (across lane bit MASK) slot
// i + H, which holds the same output there. A template per step, so every index is a constant
// and `a` stays in registers.
template <int OUT, int H, int MASK>
__device__ __forceinline__ void reduce_scatter_step(float (&a)[OUT], float& ss) {
#pragma unroll
  for (int i = 0; i < H; ++i) a[i] += __shfl_xor_sync(0xffffffffu, a[i + H], MASK);
  ss += __shfl_xor_sync(0xffffffffu, ss, MASK);
  if constexpr (MASK > 32 >> ScatterShape<OUT>::kSteps)
    reduce_scatter_step<OUT, H / 2, MASK / 2>(a, ss);
}

// HIDDEN > 0: hidden known at compile time (the checkpoint's 4,096), so the streams' offsets
// are immediates; 0: any multiple of kSlice.
template <bool HEAD, int HIDDEN>
__global__ void __launch_bounds__(kSlice, kBlocksPerSm)
    hyper_post_project_kernel(const float* fn, const float* mix, const float* block_out,
                              float* streams, int64_t n, int64_t hidden_arg, int64_t rows_per_block,
                              float* projected) {
  constexpr int kOut = HEAD ? kHc : (2 + kHc) * kHc;
  constexpr int kMixed = kHc + kHc * kHc;   // a row's post and comb
  constexpr int kRow = (kHc + 1) * kSlice;  // a ring slot: the streams' and block_out's values
  using Shape = ScatterShape<kOut>;
  // Double buffered, so one barrier a batch: the block adds batch b's partials while its warps
  // go on to batch b + 1, and batch b + 2 comes after the barrier ending b + 1.
  __shared__ float parts[2][kBatchRows][kWarps][Shape::kFloats];
  __shared__ __align__(16) float mixed[2][kBatchRows][kMixed];
  __shared__ float ring[kStages * kRow];
  const int64_t hidden = HIDDEN > 0 ? HIDDEN : hidden_arg;
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const int splits = int(gridDim.x), slice = int(blockIdx.x);
  const int turn = lane >> (5 - Shape::kSteps), group = lane & (Shape::kGroups - 1);
  const int64_t width = kHc * hidden, d = int64_t(slice) * kSlice + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < n ? r0 + rows_per_block : n;
  float f[kOut][kHc];
#pragma unroll
  for (int i = 0; i < kOut; ++i)
#pragma unroll
    for (int k = 0; k < kHc; ++k)
      f[i][k] = __ldg(fn + Shape::output(i, turn) * width + k * hidden + d);
  pdl_begin();
  if (r0 >= r1) return;
  const bool post = block_out != nullptr;
  // This thread's channel of the row being fetched, of the row being stored, and its ring
  // column, each advanced a row at a time.
  const float* from = streams + r0 * width + d;
  const float* y_from = post ? block_out + r0 * hidden + d : nullptr;
  float* to = streams + r0 * width + d;
  float* const column = ring + threadIdx.x;
  // The next row's values into ring slot `slot` (none past r1), as one group of copies either
  // way, so the groups count rows.
  int64_t fetched = r0;
  auto fetch = [&](unsigned slot) {
    if (fetched < r1) {
      float* r = column + slot * kRow;
#pragma unroll
      for (int k = 0; k < kHc; ++k) cp_async_4(r + k * kSlice, from + k * hidden);
      if (post) cp_async_4(r + kHc * kSlice, y_from);
    }
    cp_async_commit();
    ++fetched;
    from += width;
    if (post) y_from += hidden;
  };
  // The batch's post and comb weights (every thread reads all of them) into shared memory.
  auto stage_mix = [&](int buf, int64_t first) {
    if (!post) return;
    for (int t = int(threadIdx.x); t < kBatchRows * kMixed; t += kSlice) {
      const int64_t row = first + t / kMixed;
      if (row < r1)
        mixed[buf][t / kMixed][t % kMixed] = mix[row * hyper_mix_width(kHc) + kHc + t % kMixed];
    }
  };
  for (unsigned i = 0; i + 1 < kStages; ++i) fetch(i);
  stage_mix(0, r0);
  __syncthreads();
  int buf = 0;
  unsigned at = 0;  // rows done
  for (int64_t first = r0; first < r1; first += kBatchRows, buf ^= 1) {
    const int rows = r1 - first < kBatchRows ? int(r1 - first) : kBatchRows;
    stage_mix(buf ^ 1, first + kBatchRows);
    for (int j = 0; j < rows; ++j, ++at) {
      // Into the slot the row before read (its values long used), then wait for this row's.
      fetch((at + kStages - 1) % kStages);
      cp_async_wait<kStages - 1>();
      const float* r = column + (at % kStages) * kRow;
      float cur[kHc + 1];
#pragma unroll
      for (int k = 0; k <= kHc; ++k) cur[k] = r[k * kSlice];
      float v[kHc];
      if (post) {
        // hyper_post_kernel<4>: v_k = post_k y, then + comb[i][k] old_i for i in order.
        const float4* m = reinterpret_cast<const float4*>(mixed[buf][j]);
        const float4 p = m[0];
        const float pk[kHc] = {p.x, p.y, p.z, p.w};
        float comb[kHc][kHc];
#pragma unroll
        for (int i = 0; i < kHc; ++i) {
          const float4 c = m[1 + i];
          comb[i][0] = c.x, comb[i][1] = c.y, comb[i][2] = c.z, comb[i][3] = c.w;
        }
#pragma unroll
        for (int k = 0; k < kHc; ++k) {
          v[k] = pk[k] * cur[kHc];
#pragma unroll
          for (int i = 0; i < kHc; ++i) v[k] = fmaf(comb[i][k], cur[i], v[k]);
          to[k * hidden] = v[k];
        }
      } else {
#pragma unroll
        for (int k = 0; k < kHc; ++k) v[k] = cur[k];
      }
      to += width;
      float a[kOut], ss = v[0] * v[0];
#pragma unroll
      for (int k = 1; k < kHc; ++k) ss = fmaf(v[k], v[k], ss);
#pragma unroll
      for (int i = 0; i < kOut; ++i) {
        a[i] = f[i][0] * v[0];
#pragma unroll
        for (int k = 1; k < kHc; ++k) a[i] = fmaf(f[i][k], v[k], a[i]);
      }
      reduce_scatter_step<kOut, kOut / 2, 16>(a, ss);
      float* part = parts[buf][j][warp];
#pragma unroll
      for (int i = 0; i < Shape::kRun; ++i) part[group * kOut + Shape::kRun * turn + i] = a[i];
      if (turn == 0) part[Shape::kGroups * kOut + group] = ss;
    }
    __syncthreads();
    // Output o of the batch's row j: its warps' and groups' partials in a fixed order.
    for (int t = int(threadIdx.x); t < rows * (kOut + 1); t += kSlice) {
      const int j = t / (kOut + 1), o = t % (kOut + 1);
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w)
#pragma unroll
        for (int g = 0; g < Shape::kGroups; ++g)
          sum += parts[buf][j][w][o < kOut ? g * kOut + o : Shape::kGroups * kOut + g];
      projected[((first + j) * (kOut + 1) + o) * splits + slice] = sum;
    }
  }
}

}  // namespace

bool hyper_post_project_supported(int64_t n, int64_t hc, int64_t hidden) {
  return n > 0 && hc == kHc && hidden > 0 && hidden % kSlice == 0;
}

int hyper_post_project_splits(int64_t hidden) { return int(hidden / kSlice); }

int64_t hyper_post_project_floats(int64_t n, int64_t hc, int64_t hidden) {
  return n * ((2 + hc) * hc + 1) * hyper_post_project_splits(hidden);
}

void hyper_post_project(const HyperDevice& w, const float* mix, const float* block_out,
                        float* streams, int64_t n, int64_t hc, int64_t hidden, bool head,
                        float* projected, cudaStream_t stream) {
  if (!hyper_post_project_supported(n, hc, hidden))
    throw std::invalid_argument("cuda mHC: the prefill post step and projection need hc " +
                                std::to_string(kHc) + " and hidden a multiple of " +
                                std::to_string(kSlice) + " (rows " + std::to_string(n) + ", hc " +
                                std::to_string(hc) + ", hidden " + std::to_string(hidden) + ")");
  // The checkpoint's width with its offsets compiled in; any other through the general kernel.
  constexpr int kCheckpointHidden = 4096;
  auto kernel =
      hidden == kCheckpointHidden
          ? (head ? hyper_post_project_kernel<true, kCheckpointHidden>
                  : hyper_post_project_kernel<false, kCheckpointHidden>)
          : (head ? hyper_post_project_kernel<true, 0> : hyper_post_project_kernel<false, 0>);
  // As many blocks as fit on the GPU at once, each loading its fn slice once for its rows.
  int per_sm = 0;
  AGENTRT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSlice, 0));
  const int64_t slices = hyper_post_project_splits(hidden);
  const int64_t fit = std::max<int64_t>(1, int64_t(sm_count()) * std::max(per_sm, 1) / slices);
  const int64_t per = (n + fit - 1) / fit;
  const int64_t rows_per_block = (per + kBatchRows - 1) / kBatchRows * kBatchRows;
  const int64_t groups = (n + rows_per_block - 1) / rows_per_block;
  launch_pdl(kernel, dim3{unsigned(slices), unsigned(groups)}, kSlice, 0, stream, w.fn, mix,
             block_out, streams, n, hidden, rows_per_block, projected);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
