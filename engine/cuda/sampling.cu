// Sampling on the GPU (engine/sampler.h). Greedy: the allowed token (the grammar
// bitmask, finite logits) with the largest logit, ties to the lower id, and the softmax
// normaliser z = sum over allowed tokens of exp((logit - best) * inv_t), so the host reads back
// one small struct instead of the whole vocabulary's logits. One pass keeps an online
// (max, sum) per thread, blocks combine them, and one block combines the blocks. Sampling: the
// same normaliser at the temperature, plus the allowed tokens near the best (the only ones with a
// chance to matter), collected for the host's Sampler::sample_candidates; where too many are
// that close, every allowed token sorted best first (a radix sort).
#include <cmath>
#include <cub/device/device_radix_sort.cuh>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

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

// Sort keys: the logit where the token is allowed and finite (zero without its sign: the host's
// comparison sees -0 == 0), otherwise -infinity, which sorts after every allowed token.
__global__ void allowed_keys_kernel(const float* logits, int64_t vocab, const uint32_t* mask,
                                    int64_t mask_words, float* keys, int32_t* ids) {
  pdl_begin();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float l = logits[i];
    keys[i] = allowed(l, i, mask, mask_words) ? (l == 0.0f ? 0.0f : l) : -INFINITY;
    ids[i] = int32_t(i);
  }
}

// Scratch: keys and ids in, keys and ids out (each vocab entries, 256-byte aligned), then CUB's.
int64_t sort_array_bytes(int64_t vocab) { return (vocab * 4 + 255) / 256 * 256; }
size_t cub_sort_bytes(int64_t vocab) {
  size_t bytes = 0;
  AGENTRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(vocab)));
  return bytes;
}

}  // namespace

int64_t sort_allowed_scratch_bytes(int64_t vocab) {
  return 4 * sort_array_bytes(vocab) + int64_t(cub_sort_bytes(vocab));
}

void sort_allowed(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                  void* scratch, const float** keys, const int32_t** ids, cudaStream_t stream) {
  char* p = static_cast<char*>(scratch);
  const int64_t a = sort_array_bytes(vocab);
  auto* keys_in = reinterpret_cast<float*>(p);
  auto* ids_in = reinterpret_cast<int32_t*>(p + a);
  auto* keys_out = reinterpret_cast<float*>(p + 2 * a);
  auto* ids_out = reinterpret_cast<int32_t*>(p + 3 * a);
  launch_pdl(allowed_keys_kernel, pick_grid(vocab), kThreads, 0, stream, logits, vocab, mask,
             mask_words, keys_in, ids_in);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  size_t temp = cub_sort_bytes(vocab);
  // The radix sort is stable: equal keys keep their ascending ids.
  AGENTRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      p + 4 * a, temp, keys_in, keys_out, ids_in, ids_out, int(vocab), 0, 32, stream));
  *keys = keys_out;
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
