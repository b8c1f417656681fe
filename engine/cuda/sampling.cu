// Sampling on the GPU (engine/sampler.h). Greedy: the allowed token (the grammar
// bitmask, finite logits) with the largest logit, ties to the lower id, and the softmax
// normaliser z = sum over allowed tokens of exp((logit - best) * inv_t), so the host reads back
// one small struct instead of the whole vocabulary's logits. One pass keeps an online
// (max, sum) per thread, blocks combine them, and one block combines the blocks. Sampling: the
// same normaliser at the temperature, plus the allowed tokens near the best (the only ones with a
// chance to matter), collected for the host's Sampler::sample_candidates; where too many are
// that close, every allowed token sorted best first (a radix sort).
#include <algorithm>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/sort_keys.h"

namespace agentrt::engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 256;

struct Partial {
  float best;
  int32_t token;
  int32_t allowed;
  double z;  // relative to best
};

__device__ Partial combine(Partial a, Partial b, float inv_t) {
  if (b.allowed == 0) return a;
  if (a.allowed == 0) return b;
  Partial o;
  o.allowed = a.allowed + b.allowed;
  if (a.best > b.best || (a.best == b.best && a.token < b.token)) {
    o.best = a.best, o.token = a.token;
  } else {
    o.best = b.best, o.token = b.token;
  }
  o.z = a.z * exp(double(a.best - o.best) * inv_t) + b.z * exp(double(b.best - o.best) * inv_t);
  return o;
}

__device__ Partial block_combine(Partial p, float inv_t, Partial* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    Partial q;
    q.best = __shfl_down_sync(0xffffffffu, p.best, off);
    q.token = __shfl_down_sync(0xffffffffu, p.token, off);
    q.allowed = __shfl_down_sync(0xffffffffu, p.allowed, off);
    q.z = __shfl_down_sync(0xffffffffu, p.z, off);
    if (lane + off < 32) p = combine(p, q, inv_t);
  }
  if (lane == 0) shared[warp] = p;
  __syncthreads();
  if (threadIdx.x == 0) {
    p = shared[0];
    for (int i = 1; i < warps; ++i) p = combine(p, shared[i], inv_t);
  }
  return p;  // valid in thread 0
}

// Whether token i with logit l can be chosen: finite, and allowed by the bitmask (bit i of word
// i / 32; words past mask_words allow nothing; no mask allows everything).
__device__ __forceinline__ bool allowed(float l, int64_t i, const uint32_t* mask,
                                        int64_t mask_words) {
  const int64_t wi = i >> 5;
  return isfinite(l) && (!mask || (wi < mask_words && ((mask[wi] >> (i & 31)) & 1u) != 0));
}

__global__ void pick_blocks(const float* logits, int64_t vocab, const uint32_t* mask,
                            int64_t mask_words, float inv_t, Partial* partials) {
  pdl_begin();
  __shared__ Partial shared[kThreads / 32];
  Partial p{-INFINITY, 0, 0, 0.0};
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float l = logits[i];
    if (!allowed(l, i, mask, mask_words)) continue;
    p = combine(p, Partial{l, int32_t(i), 1, 1.0}, inv_t);
  }
  p = block_combine(p, inv_t, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = p;
}

__global__ void pick_final(const Partial* partials, int blocks, float inv_t, MaskedPick* out) {
  pdl_begin();
  __shared__ Partial shared[kThreads / 32];
  Partial p{-INFINITY, 0, 0, 0.0};
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) p = combine(p, partials[i], inv_t);
  p = block_combine(p, inv_t, shared);
  if (threadIdx.x == 0) *out = MaskedPick{p.token, p.allowed, p.best, p.z};
}

int pick_grid(int64_t vocab) {
  const int64_t blocks = (vocab + kThreads * 8 - 1) / (kThreads * 8);
  return int(blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

// Appends every allowed token whose logit is within `delta` of the best (read from the pick) to
// ids/values (in no particular order) while there is room; count ends as the number of such
// tokens, room or not.
__global__ void collect_kernel(const float* logits, int64_t vocab, const uint32_t* mask,
                               int64_t mask_words, const MaskedPick* pick, float delta,
                               int32_t capacity, int32_t* count, int32_t* ids, float* values) {
  pdl_begin();
  const float threshold = pick->best - delta;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float l = logits[i];
    if (!(l >= threshold && allowed(l, i, mask, mask_words))) continue;
    const int32_t slot = atomicAdd(count, 1);
    if (slot < capacity) {
      ids[slot] = int32_t(i);
      values[slot] = l;
    }
  }
}

}  // namespace

void collect_near_best(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                       const MaskedPick* pick, float delta, int32_t capacity, int32_t* count,
                       int32_t* ids, float* values, cudaStream_t stream) {
  AGENTRT_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(int32_t), stream));
  launch_pdl(collect_kernel, pick_grid(vocab), kThreads, 0, stream, logits, vocab, mask, mask_words,
             pick, delta, capacity, count, ids, values);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

namespace {

// Sort keys: row i's index above the logit's bits, turned (sort_keys.h) so that an ascending sort
// puts rows in order and each row's logits best first. A token that is not allowed or not finite
// gets -inf, which sorts after every allowed token; zero loses its sign (the host's comparison sees
// -0 == 0). The radix sort is stable, so equal logits keep their ascending ids.
__global__ void allowed_keys_kernel(const float* logits, int64_t vocab, SortRows r, uint64_t* keys,
                                    int32_t* ids) {
  pdl_begin();
  const int64_t i = blockIdx.y;
  const float* row = logits + int64_t(r.rows[i]) * vocab;
  const int32_t words = r.words[i];
  const uint32_t* mask = words < 0 ? nullptr : r.masks + i * r.mask_stride;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < vocab;
       t += int64_t(gridDim.x) * blockDim.x) {
    const float l = row[t];
    const bool ok = allowed(l, t, mask, words < 0 ? 0 : words);
    keys[i * vocab + t] =
        (uint64_t(i) << 32) | descending_bits(ok ? (l == 0.0f ? 0.0f : l) : -INFINITY);
    ids[i * vocab + t] = int32_t(t);
  }
}

__global__ void sorted_logits_kernel(const uint64_t* keys, int64_t total, float* out) {
  pdl_begin();
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < total;
       j += int64_t(gridDim.x) * blockDim.x)
    out[j] = from_descending_bits(uint32_t(keys[j]));
}

// The key bits that vary: the logit's 32 and enough for the row index.
int sort_end_bit(int64_t count) {
  int bits = 32;
  while ((int64_t(1) << (bits - 32)) < count) ++bits;
  return bits;
}

// Scratch: keys in (the sorted logits later), keys out, ids in, ids out (each 256-byte aligned),
// then CUB's.
int64_t aligned(int64_t bytes) { return (bytes + 255) / 256 * 256; }
size_t cub_sort_bytes(int64_t items, int end_bit) {
  size_t bytes = 0;
  AGENTRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), items, 0, end_bit));
  return bytes;
}

}  // namespace

int64_t sort_allowed_scratch_bytes(int64_t vocab, int64_t count) {
  const int64_t items = vocab * count;
  return 2 * aligned(items * 8) + 2 * aligned(items * 4) +
         int64_t(cub_sort_bytes(items, sort_end_bit(count)));
}

void sort_allowed(const float* logits, int64_t vocab, const SortRows& rows, void* scratch,
                  const float** keys, const int32_t** ids, cudaStream_t stream) {
  if (rows.count <= 0) return;
  if (rows.count > 65535)
    throw std::invalid_argument("sort_allowed: " + std::to_string(rows.count) +
                                " rows, at most 65535 a call");
  const int64_t items = vocab * rows.count;
  char* p = static_cast<char*>(scratch);
  auto* keys_in = reinterpret_cast<uint64_t*>(p);
  auto* keys_out = reinterpret_cast<uint64_t*>(p + aligned(items * 8));
  auto* ids_in = reinterpret_cast<int32_t*>(p + 2 * aligned(items * 8));
  auto* ids_out = reinterpret_cast<int32_t*>(p + 2 * aligned(items * 8) + aligned(items * 4));
  char* temp = p + 2 * aligned(items * 8) + 2 * aligned(items * 4);
  launch_pdl(allowed_keys_kernel, dim3(unsigned(pick_grid(vocab)), unsigned(rows.count)),
             dim3(kThreads), 0, stream, logits, vocab, rows, keys_in, ids_in);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  const int end_bit = sort_end_bit(rows.count);
  size_t temp_bytes = cub_sort_bytes(items, end_bit);
  // Stable: equal keys keep their ascending ids.
  AGENTRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, ids_in,
                                                     ids_out, items, 0, end_bit, stream));
  // The sorted logits as floats, where the input keys were (the sort leaves its input alone).
  auto* sorted = reinterpret_cast<float*>(keys_in);
  const unsigned grid = unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, 8192));
  launch_pdl(sorted_logits_kernel, dim3(grid), dim3(kThreads), 0, stream,
             static_cast<const uint64_t*>(keys_out), items, sorted);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  *keys = sorted;
  *ids = ids_out;
}

int64_t masked_pick_scratch_bytes() { return int64_t(sizeof(Partial)) * kMaxBlocks; }

void masked_pick(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                 float inv_t, void* scratch, MaskedPick* out, cudaStream_t stream) {
  const int blocks = pick_grid(vocab);
  auto* partials = static_cast<Partial*>(scratch);
  launch_pdl(pick_blocks, blocks, kThreads, 0, stream, logits, vocab, mask, mask_words, inv_t,
             partials);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  launch_pdl(pick_final, 1, kThreads, 0, stream, partials, blocks, inv_t, out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
