// Which bytes an L2Ahead (device_matrix.h) asks for, chunk by chunk, as host-callable functions
// so that a test without a GPU (CudaL2Ahead.*) can replay them: chunk c of a set is chunk
// c / parts of part c % parts (every part's first chunk before any part's second), covering the
// first part_bytes of each part (all of a shorter part) once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/device_matrix.h"

namespace agentrt::engine::cuda {

constexpr int64_t kAheadChunk = 32 << 10;  // bytes a prefetch instruction asks for

// Chunks of set s (some past a short part's end: empty).
__host__ __device__ inline int64_t ahead_chunks(const StreamSlices& s, int64_t part_bytes) {
  if (s.parts <= 0 || part_bytes <= 0) return 0;
  const int64_t widest = (s.units + s.parts - 1) / s.parts * s.unit_bytes;
  const int64_t most = part_bytes < widest ? part_bytes : widest;
  return (most + kAheadChunk - 1) / kAheadChunk * s.parts;
}

// Chunk c's first byte's offset from s.data and its length (0: none).
struct AheadRange {
  int64_t offset = 0, bytes = 0;
};
__host__ __device__ inline AheadRange ahead_chunk(const StreamSlices& s, int64_t part_bytes,
                                                  int64_t c) {
  const int64_t p = c % s.parts, off = c / s.parts * kAheadChunk;
  const int64_t u0 = p * s.units / s.parts, u1 = (p + 1) * s.units / s.parts;
  const int64_t whole = (u1 - u0) * s.unit_bytes, len = part_bytes < whole ? part_bytes : whole;
  if (off >= len) return {};
  return {u0 * s.unit_bytes + off, len - off < kAheadChunk ? len - off : kAheadChunk};
}

// The worker that asks for chunk c of set i: set i's chunk 0 goes to the worker after set
// i - 1's last. first_chunk: the chunks of the sets before i.
__host__ __device__ inline int64_t ahead_worker(int64_t first_chunk, int64_t c, int64_t workers) {
  return (first_chunk + c) % workers;
}

}  // namespace agentrt::engine::cuda
