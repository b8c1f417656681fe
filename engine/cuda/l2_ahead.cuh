// A latency-bound kernel of the decode step (the attention, an mHC boundary) asking the L2 for
// the weights of the streamed product that follows it (L2Ahead, CudaOptions::ahead_*). While
// it runs the memory is otherwise idle: the product's blocks cannot land beside it (registers
// and shared memory), so their rings fill only as its blocks leave. What the product then finds
// in the L2 it reads faster than from memory (the head's prefetch, thirty-eighth session: 32 MB
// took it 343.2 -> 339.7 us).
#pragma once

#include <cstdint>

#include "engine/cuda/l2_ahead_layout.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {

// Worker `worker` of `workers` (the kernel's threads, numbered so that consecutive workers sit
// on different SMs: each SM's bulk-copy unit issues its own share) asks for its chunks of a.
__device__ __forceinline__ void l2_ahead(const L2Ahead& a, int64_t worker, int64_t workers) {
  int64_t first = 0;  // chunks of the sets before
  for (int i = 0; i < a.count; ++i) {
    const StreamSlices& s = a.sets[i];
    const int64_t total = ahead_chunks(s, a.part_bytes);
    // Chunks c with ahead_worker(first, c, workers) == worker.
    for (int64_t c = ((worker - first) % workers + workers) % workers; c < total; c += workers) {
      const AheadRange r = ahead_chunk(s, a.part_bytes, c);
      if (r.bytes > 0) prefetch_l2(static_cast<const char*>(s.data) + r.offset, uint32_t(r.bytes));
    }
    first += total;
  }
}

}  // namespace agentrt::engine::cuda
