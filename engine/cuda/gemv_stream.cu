// One activation row times a large bf16 or FP8 matrix (the decode step's projections and head),
// streamed through shared memory: one block per SM owns a contiguous range of row tiles, its
// producer warp keeps a ring of tiles in flight with bulk copies (stream_ring.cuh) and 16
// consumer warps multiply the oldest. The producer asks for its first tiles before the kernel
// before it has finished (weights are constants). Rows wider than 2 KB are split into column
// slices over several warps, whose sums meet in shared memory.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/stream_ring.cuh"

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
  if (threadIdx.x < kMaxStages * kConsumerWarps) sums[threadIdx.x] = 0.0f;
  if (threadIdx.x < kMaxStages) done[threadIdx.x] = 0;
  const stream::Ring bars = stream::init_ring(smem, g.stages);
  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    uint32_t q = 0;
    for (int64_t t = t0; t < t1; ++t, ++q) {
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
    } else if (lane == 0) {
      // The slices of a row meet in shared memory; the last warp done with the tile writes it.
      atomicAdd(&sums[s.index * kConsumerWarps + r], acc);
      __threadfence_block();
      if (atomicAdd(&done[s.index], 1) == kConsumerWarps - 1) {
        __threadfence_block();
        for (int i = 0; i < R; ++i) {
          g.y[row0 + i] = sums[s.index * kConsumerWarps + i];
          sums[s.index * kConsumerWarps + i] = 0.0f;
        }
        done[s.index] = 0;
      }
    }
    // After the sums: the slot's sums are reused only once every warp has released it.
    stream::release(bars, s);
  }
}

int64_t row_bytes_of(const WeightMatrix& w) { return w.cols * value_bytes_x2(w.type) / 2; }

int64_t shared_bytes(const WeightMatrix& w, int stages) {
  const int64_t x = w.type == WeightType::bf16 ? stream::x_slots<WeightType::bf16>(w.cols)
                                               : stream::x_slots<WeightType::f8_e4m3>(w.cols);
  return kHeader + kSums + x * 16 + stages * tile_shape(row_bytes_of(w)).rows * row_bytes_of(w);
}

int max_shared_bytes() {
  int device = 0, bytes = 0;
  AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
  AGENTRT_CUDA_CHECK(
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

// The deepest ring that fits (0: not even two stages).
int ring_stages(const WeightMatrix& w) {
  const int64_t max = max_shared_bytes();
  for (int stages = kMaxStages; stages >= 2; --stages)
    if (shared_bytes(w, stages) <= max) return stages;
  return 0;
}

}  // namespace

bool gemv_stream_fits(const WeightMatrix& w, const float* x, int64_t group_rows, int64_t x_offset) {
  if (w.type != WeightType::bf16 && w.type != WeightType::f8_e4m3) return false;
  const int64_t row_bytes = row_bytes_of(w);
  if (w.rows * row_bytes < kMinBytes || row_bytes % 16 != 0) return false;
  if ((reinterpret_cast<uintptr_t>(w.data) & 15) || (reinterpret_cast<uintptr_t>(x) & 15) ||
      x_offset % 4 != 0)
    return false;
  const TileShape t = tile_shape(row_bytes);
  if (w.rows % t.rows != 0 || (row_bytes / 16) % t.slices != 0) return false;
  if (group_rows > 0 && group_rows % t.rows != 0) return false;
  return ring_stages(w) > 0;
}

void gemv_stream(const WeightMatrix& w, const float* x, float* y, int64_t group_rows,
                 int64_t x_offset, void* stream) {
  if (!gemv_stream_fits(w, x, group_rows, x_offset))
    throw std::invalid_argument("gemv_stream: a " + std::to_string(w.rows) + " x " +
                                std::to_string(w.cols) + " matrix it does not cover");
  StreamGemv g{w, x, y, group_rows, x_offset, 0, tile_shape(row_bytes_of(w)).rows, ring_stages(w)};
  g.tiles = w.rows / g.rows_per_tile;
  int device = 0, sms = 0;
  AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
  AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const unsigned blocks = unsigned(std::min<int64_t>(sms, g.tiles));
  const size_t shared = size_t(shared_bytes(w, g.stages));
  auto kernel = w.type == WeightType::bf16 ? gemv_stream_kernel<WeightType::bf16>
                                           : gemv_stream_kernel<WeightType::f8_e4m3>;
  AGENTRT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  launch_pdl(kernel, blocks, kThreads, shared, static_cast<cudaStream_t>(stream), g);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
