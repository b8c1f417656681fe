// Weights asked into the L2 by a kernel of its own, for a decode step's idle start: in a replayed
// step graph the first kernel (the embedding) runs at once, but the one after it started ~11 us
// later on an H100 with nothing running in between (thirty-fifth session's trace), every replay.
// A prefetch launched beside the first kernel, with no dependency, fills that time with the
// first layer's query weights, for its products to find in the L2. The step measured no faster
// with 24 or 40 MB asked for (thirty-fifth session), so CudaOptions leave it off.
// The head's first bytes asked in during the last layer (prefetch_slices_to_l2): the layers read
// memory at about half the copy bandwidth, the head at all of it, so what the head finds in the
// L2 should come off the step. On an H100 the head got shorter but the layers and the next pick
// longer, and the step slower (thirty-eighth session), so CudaOptions leave it off too.
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

// Chunk c of slice blockIdx.x's first `bytes` (or the slice's, if shorter), one thread a chunk.
// evict_last: the lines are asked for under an evict-last policy, so the streamed weights'
// evict-first lines (bulk_copy.cuh) go before them.
template <bool kEvictLast>
__global__ void __launch_bounds__(kThreads) prefetch_slices_kernel(StreamSlices s, int64_t bytes) {
  const int64_t p = blockIdx.x;
  const int64_t u0 = p * s.units / s.parts, u1 = (p + 1) * s.units / s.parts;
  const int64_t whole = (u1 - u0) * s.unit_bytes, len = bytes < whole ? bytes : whole;
  const char* base = static_cast<const char*>(s.data) + u0 * s.unit_bytes;
  for (int64_t off = int64_t(threadIdx.x) * kChunk; off < len; off += int64_t(kThreads) * kChunk) {
    const auto n = uint32_t(len - off < kChunk ? len - off : kChunk);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (kEvictLast) {
      uint64_t policy;
      asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
      asm volatile(
          "cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(base + off), "r"(n),
          "l"(policy)
          : "memory");
    } else {
      prefetch_l2(base + off, n);
    }
#endif
  }
}

}  // namespace

void prefetch_slices_to_l2(const StreamSlices& s, int64_t bytes_per_part, bool evict_last,
                           cudaStream_t stream) {
  if (s.parts <= 0 || bytes_per_part <= 0) return;
  if ((reinterpret_cast<uintptr_t>(s.data) & 15) || s.unit_bytes % 16 != 0 ||
      bytes_per_part % 16 != 0 || s.units < s.parts || s.parts > (int64_t(1) << 31) - 1)
    throw std::invalid_argument("prefetch_slices_to_l2: " + std::to_string(s.parts) +
                                " slices of " + std::to_string(s.units) + " units of " +
                                std::to_string(s.unit_bytes) + " bytes (" +
                                std::to_string(bytes_per_part) +
                                " a slice) are not 16-byte aligned and sized, or fewer units "
                                "than slices");
  if (evict_last)
    prefetch_slices_kernel<true><<<unsigned(s.parts), kThreads, 0, stream>>>(s, bytes_per_part);
  else
    prefetch_slices_kernel<false><<<unsigned(s.parts), kThreads, 0, stream>>>(s, bytes_per_part);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

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
