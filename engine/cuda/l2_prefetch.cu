// Weights asked into the L2 by a kernel of its own, for a decode step's idle start: in a replayed
// step graph the first kernel (the embedding) runs at once, but the one after it started ~11 us
// later on an H100 with nothing running in between (thirty-fifth session's trace), every replay.
// A prefetch launched beside the first kernel, with no dependency, fills that time with the
// first layer's query weights, for its products to find in the L2. The step measured no faster
// with 24 or 40 MB asked for (thirty-fifth session), so CudaOptions leave it off.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int64_t kChunk = 32 << 10;  // bytes a prefetch instruction asks for
constexpr int kThreads = 32;

// Chunk c of the ranges laid end to end (each range a multiple of 16 bytes): one prefetch
// instruction a chunk, the chunks dealt out over every thread of the grid.
__global__ void __launch_bounds__(kThreads) prefetch_kernel(L2Ranges r) {
  int64_t total = 0;
  for (int i = 0; i < r.count; ++i) total += (r.bytes[i] + kChunk - 1) / kChunk;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  int i = 0;
  int64_t first = 0;  // chunks of ranges before i
  for (int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x; c < total; c += stride) {
    while (c - first >= (r.bytes[i] + kChunk - 1) / kChunk)
      first += (r.bytes[i++] + kChunk - 1) / kChunk;
    const int64_t off = (c - first) * kChunk, left = r.bytes[i] - off;
    prefetch_l2(static_cast<const char*>(r.data[i]) + off, uint32_t(left < kChunk ? left : kChunk));
  }
}

}  // namespace

void prefetch_to_l2(const L2Ranges& ranges, cudaStream_t stream) {
  int64_t total = 0;
  for (int i = 0; i < ranges.count; ++i) {
    if ((reinterpret_cast<uintptr_t>(ranges.data[i]) & 15) || ranges.bytes[i] % 16 != 0)
      throw std::invalid_argument("prefetch_to_l2: range " + std::to_string(i) + " of " +
                                  std::to_string(ranges.bytes[i]) +
                                  " bytes is not 16-byte aligned and sized");
    total += (ranges.bytes[i] + kChunk - 1) / kChunk;
  }
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>(sm_count(), (total + kThreads - 1) / kThreads);
  prefetch_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(ranges);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
