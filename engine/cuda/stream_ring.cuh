// The pieces shared by the streamed decode products (moe_decode.cu, gemv_stream.cu): one block
// per SM, a producer warp keeping a ring of stages of weight rows in flight with bulk copies
// (bulk_copy.cuh), 16 consumer warps decoding and multiplying the oldest stage against
// activations held in shared memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda::stream {

constexpr int kConsumerWarps = 16;
constexpr int kThreads = (kConsumerWarps + 1) * 32;  // the last warp is the producer
constexpr int kMaxStages = 6;
constexpr int64_t kHeader = 128;  // the stages' full and empty barriers (2 * kMaxStages * 8)

// The deepest ring (at most max_stages) whose fixed + stages * stage_bytes of shared memory fit
// the current device's opt-in limit (and cap, where cap > 0); 0 where not even two stages do.
inline int ring_stages(int64_t fixed, int64_t stage_bytes, int max_stages = kMaxStages,
                       int64_t cap = 0) {
  int device = 0, optin = 0;
  AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
  AGENTRT_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t max_shared = cap > 0 ? std::min<int64_t>(cap, optin) : optin;
  for (int stages = max_stages; stages >= 2; --stages)
    if (fixed + stages * stage_bytes <= max_shared) return stages;
  return 0;
}

// The ring's slot and phase for the q-th stage a block handles.
struct Slot {
  int index;
  uint32_t parity;
};
__device__ __forceinline__ Slot slot_of(uint32_t q, int stages) {
  return {int(q % uint32_t(stages)), (q / uint32_t(stages)) & 1u};
}

// The same sequence stepped without dividing: next() returns the current slot and moves on.
struct SlotCursor {
  int stages, index = 0;
  uint32_t parity = 0;
  __device__ __forceinline__ Slot next() {
    const Slot s{index, parity};
    if (++index == stages) index = 0, parity ^= 1u;
    return s;
  }
};

struct Ring {
  uint64_t* full;   // [stages]: the producer's copies of the stage have landed
  uint64_t* empty;  // [stages]: every consumer warp is done with the stage
};

// The barriers at the start of the dynamic shared memory, initialised by thread 0.
__device__ __forceinline__ Ring init_ring(char* smem, int stages) {
  Ring r{reinterpret_cast<uint64_t*>(smem), reinterpret_cast<uint64_t*>(smem) + kMaxStages};
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbarrier_init(&r.full[s], 1);
      mbarrier_init(&r.empty[s], kConsumerWarps);
    }
    mbarrier_init_fence();
  }
  __syncthreads();
  return r;
}

// Stages a producer keeps in flight (asked for, not yet landed) under a limit of `bytes` (0: no
// limit, the ring's): at least one stage, and 0 (no limit) where the ring holds no more.
inline int in_flight_stages(int64_t bytes, int64_t stage_bytes, int stages) {
  if (bytes <= 0 || stage_bytes <= 0) return 0;
  const int64_t n = std::max<int64_t>(1, (bytes + stage_bytes - 1) / stage_bytes);
  return n >= stages ? 0 : int(n);
}

// Before the producer asks for its q-th stage: with a limit (in_flight_stages), waits until stage
// q - limit has landed. The idea: every block asking for its whole ring at once (a product whose
// blocks land only as the kernel before leaves the SMs) may have the memory serve all their
// stages side by side, so that each block's first stage lands only near the end of that burst;
// a few stages a block in flight would still keep the memory busy. On an H100 a decode step was
// no faster with 64 or 128 KB a block (thirty-fifth session), so CudaOptions leave it off.
__device__ __forceinline__ void hold_in_flight(Ring r, uint32_t q, int limit, int stages) {
  if (limit > 0 && q >= uint32_t(limit)) {
    const Slot s = slot_of(q - uint32_t(limit), stages);
    mbarrier_wait(&r.full[s.index], s.parity);
  }
}

// A consumer warp is done with a stage (its reads of it happened before).
__device__ __forceinline__ void release(Ring r, Slot s) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) mbarrier_arrive(&r.empty[s.index]);
}

__device__ __forceinline__ void consumers_sync() { named_barrier(1, kConsumerWarps * 32); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Partial sums of up to 32 rows from each consumer warp, in shared memory as
// [kConsumerWarps][kRedStride] (the odd stride keeps a column's reads on distinct banks).
constexpr int kRedRows = 2 * kConsumerWarps;
constexpr int kRedStride = kRedRows + 1;
constexpr int64_t kRedBytes = int64_t(kConsumerWarps) * kRedStride * 4;

// The total over the consumer warps of rows `warp` (in lane 0) and `warp` + 16 (in lane 16):
// every consumer warp adds up two rows, with 16 lanes each.
__device__ __forceinline__ float warps_total(const float* red) {
  const int lane = int(threadIdx.x) & 31, row = (int(threadIdx.x) >> 5) + (lane >> 4) * 16;
  float v = red[(lane & 15) * kRedStride + row];
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Activations in shared memory, times x_scale<T>() (weight_decode.cuh), laid out so that the
// lanes reading float4 p of chunks 32 g .. 32 g + 31 (a 16-byte chunk of stored weights holds
// chunk_values<T>() values, that many / 4 float4 of activations) read consecutive addresses.
template <WeightType T>
__host__ __device__ constexpr int x_quads() {
  return chunk_values<T>() / 4;
}
template <WeightType T>
__host__ __device__ inline int64_t x_slots(int64_t cols) {  // float4s
  return (cols / chunk_values<T>() + 31) / 32 * 32 * x_quads<T>();
}
template <WeightType T>
__device__ __forceinline__ int64_t x_slot(int64_t chunk, int p) {
  return ((chunk / 32) * x_quads<T>() + p) * 32 + chunk % 32;
}

// Consumer threads copy x[0, cols) (cols a multiple of chunk_values<T>()) into xs. kL2: loads
// that skip the L1 (for a kernel reading x before its programmatic wait: x comes from an earlier
// kernel, and no line of it may be an old one cached on this SM).
template <WeightType T, bool kL2 = false>
__device__ void stage_x(const float* x, int64_t cols, float4* xs) {
  constexpr float s = x_scale<T>();
  for (int64_t i = threadIdx.x; i < cols / 4; i += kConsumerWarps * 32) {
    const float4 v = kL2 ? __ldcg(reinterpret_cast<const float4*>(x) + i)
                         : __ldg(reinterpret_cast<const float4*>(x) + i);
    xs[x_slot<T>(i / x_quads<T>(), int(i % x_quads<T>()))] =
        make_float4(v.x * s, v.y * s, v.z * s, v.w * s);
  }
}

// The dot products of M stored 16-byte chunks (rows at the same columns) with their staged
// activations, each loaded once for all M (unscaled: FP8/FP4 sums still carry their placement
// factor and want the block scale times out_scale<T>()). One partial sum per 32-bit word keeps
// the FMA chains short.
template <WeightType T, int M>
__device__ __forceinline__ void chunk_dots(const uint4 (&q)[M], const float4* xs, int64_t chunk,
                                           float (&out)[M]) {
  constexpr int W = word_values<T>();
  float s[M][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float xv[W > 4 ? W : 4];
#pragma unroll
    for (int p = 0; p < (W + 3) / 4; ++p) {
      const float4 a = xs[x_slot<T>(chunk, (j * W) / 4 + p)];
      xv[4 * p] = a.x, xv[4 * p + 1] = a.y, xv[4 * p + 2] = a.z, xv[4 * p + 3] = a.w;
    }
    const int off = W < 4 ? (j * W) % 4 : 0;  // bf16: two words share a float4
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v[W];
      decode_word<T>(j == 0 ? q[m].x : j == 1 ? q[m].y : j == 2 ? q[m].z : q[m].w, v);
      float t = 0.0f;
#pragma unroll
      for (int i = 0; i < W; ++i) t = fmaf(v[i], xv[off + i], t);
      s[m][j] = t;
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) out[m] = (s[m][0] + s[m][1]) + (s[m][2] + s[m][3]);
}

}  // namespace agentrt::engine::cuda::stream
