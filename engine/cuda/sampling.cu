// Sampling on the GPU (engine/sampler.h). Greedy: the allowed token (the grammar
// bitmask, finite logits) with the largest logit, ties to the lower id, and the softmax
// normaliser z = sum over allowed tokens of exp((logit - best) * inv_t), so the host reads back
// one small struct instead of the whole vocabulary's logits. One launch: each thread reduces a
// few logits held in registers, the warps and blocks combine their (max, sum), and the last
// block to finish combines the blocks. Sampling: the
// same normaliser at the temperature, plus the allowed tokens near the best (the only ones with a
// chance to matter), collected for the host's Sampler::sample_candidates; where too many are
// that close, every allowed token sorted best first (a radix sort).
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>
#include <string>

#include "engine/cuda/cluster_barrier.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/sort_keys.h"

namespace agentrt::engine::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 256;

struct Partial {
  float best;
  int32_t token;
  int32_t allowed;
  double z;  // relative to best
};

// Partial p of every lane of the warp, combined (in every lane): the largest best (ties: the
// lower token), the counts added, each lane's z rescaled to that best by one exp and added.
// The best, the token and the count are one warp reduction each (redux.sync) where a butterfly
// of shuffles took five dependent rounds each; the exps are float (z is a sum of terms <= 1,
// kept in double, and the log-probability needs ~1e-6, not the double exp's 1e-16).
__device__ Partial warp_combine(Partial p, float inv_t) {
  constexpr unsigned kAll = 0xffffffffu;
  // Larger floats give larger keys (sort_keys.h's order, reversed); 0 is below every finite
  // float's key, and allowed logits are finite.
  const uint32_t key = p.allowed > 0 ? ~descending_bits(p.best) : 0u;
  const uint32_t top = __reduce_max_sync(kAll, key);
  const float best = top == 0u ? -INFINITY : from_descending_bits(~top);
  const uint32_t low =
      __reduce_min_sync(kAll, p.allowed > 0 && key == top ? uint32_t(p.token) : 0xffffffffu);
  const int32_t token = low == 0xffffffffu ? INT32_MAX : int32_t(low);
  const int32_t allowed = int32_t(__reduce_add_sync(kAll, uint32_t(p.allowed)));
  double z = p.allowed > 0 ? p.z * double(expf((p.best - best) * inv_t)) : 0.0;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(kAll, z, off);
  return Partial{best, token, allowed, z};
}

// The block's partials combined: every warp, then warp 0 over the warps. Valid in warp 0.
__device__ Partial block_combine(Partial p, float inv_t, Partial* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  p = warp_combine(p, inv_t);
  if (lane == 0) shared[warp] = p;
  __syncthreads();
  if (warp == 0) {
    p = lane < warps ? shared[lane] : Partial{-INFINITY, 0, 0, 0.0};
    p = warp_combine(p, inv_t);
  }
  return p;
}

// Whether token i with logit l can be chosen: finite, and allowed by the bitmask (bit i of word
// i / 32; words past mask_words allow nothing; no mask allows everything).
__device__ __forceinline__ bool allowed(float l, int64_t i, const uint32_t* mask,
                                        int64_t mask_words) {
  const int64_t wi = i >> 5;
  return isfinite(l) && (!mask || (wi < mask_words && ((mask[wi] >> (i & 31)) & 1u) != 0));
}

// One launch: each block reduces its slice of the vocabulary (every thread first holds up to
// kPerThread logits in registers: their best, then the sum of their exps against it, so the
// exps are independent of each other), writes its partial, and the last block to finish (an
// arrival counter it resets) combines the blocks' partials. Before, a pick was two kernels that
// combined element by element with two double-precision exps each (~25 us a row for 129K);
// then one launch with double exps and shuffle butterflies (11.0-11.8 us on an H100).
constexpr int kPerThread = 8;

// The token a decode step is fed from a pick: a pick that allowed nothing has none (INT32_MAX),
// so 0, a valid row of the embedding, for a step whose result the host discards when it reads
// the pick.
__device__ __forceinline__ int32_t fed_token(const MaskedPick& p) {
  return p.allowed > 0 ? p.token : 0;
}

// One thread's partial over logits first, first + stride, ... (< vocab), PER of them loaded at
// once (independent loads, then their best, then the sum of their exps against it).
template <int PER>
__device__ __forceinline__ Partial thread_partial(const float* logits, int64_t vocab,
                                                  const uint32_t* mask, int64_t mask_words,
                                                  float inv_t, int64_t first, int64_t stride) {
  Partial p{-INFINITY, INT32_MAX, 0, 0.0};
  for (int64_t base = first; base < vocab; base += stride * PER) {
    float l[PER];
    bool ok[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t i = base + j * stride;
      l[j] = i < vocab ? logits[i] : -INFINITY;
      ok[j] = i < vocab && allowed(l[j], i, mask, mask_words);
    }
    float best = -INFINITY;
    int32_t token = INT32_MAX, count = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j)
      if (ok[j]) {
        ++count;
        if (l[j] > best) best = l[j], token = int32_t(base + j * stride);  // ascending ids
      }
    if (count == 0) continue;
    float zf = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j)
      if (ok[j]) zf += expf((l[j] - best) * inv_t);
    const double z = zf;
    // Merge into the thread's running partial (ids grow with j and with base, so a tie keeps
    // the partial's earlier token).
    if (p.allowed == 0) {
      p = Partial{best, token, count, z};
    } else if (best > p.best) {
      p.z = p.z * double(expf((p.best - best) * inv_t)) + z;
      p.best = best, p.token = token, p.allowed += count;
    } else {
      p.z += z * double(expf((best - p.best) * inv_t));
      p.allowed += count;
    }
  }
  return p;
}

// CudaOptions::pick_uploads_step: 16-byte words one extra block (the grid's last) copies from
// page-locked host memory instead of reducing logits, before it arrives, so before the last
// block to arrive writes the fed token (which the copy may hold a stale value for). Its PCIe
// round trip so overlaps the other blocks' reductions.
struct StepCopy {
  const int4* from = nullptr;
  int4* to = nullptr;
  int64_t words = 0;
};

template <bool kCopy = false>
__device__ __forceinline__ void pick_block(const float* logits, int64_t vocab, const uint32_t* mask,
                                           int64_t mask_words, float inv_t, Partial* partials,
                                           unsigned* arrived, MaskedPick* out,
                                           int32_t* feed = nullptr, StepCopy copy = {}) {
  __shared__ Partial shared[kThreads / 32];
  __shared__ bool last;
  const unsigned reducing = kCopy ? gridDim.x - 1 : gridDim.x;
  const int64_t stride = int64_t(reducing) * blockDim.x;
  Partial p{-INFINITY, INT32_MAX, 0, 0.0};
  if (!kCopy || blockIdx.x < reducing) {
    p = thread_partial<kPerThread>(logits, vocab, mask, mask_words, inv_t,
                                   int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride);
  } else {
    for (int64_t i = threadIdx.x; i < copy.words; i += blockDim.x) copy.to[i] = copy.from[i];
    __threadfence();
  }
  p = block_combine(p, inv_t, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = p;
    __threadfence();
    last = atomicAdd(arrived, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The blocks' partials come from the L2 (other blocks wrote them; L1 may hold stale lines).
  Partial q{-INFINITY, INT32_MAX, 0, 0.0};
  if (int(threadIdx.x) < int(gridDim.x)) {
    const Partial* b = partials + threadIdx.x;
    q = Partial{__ldcg(&b->best), __ldcg(&b->token), __ldcg(&b->allowed), __ldcg(&b->z)};
  }
  q = block_combine(q, inv_t, shared);
  if (threadIdx.x == 0) {
    const MaskedPick pick{q.token, q.allowed, q.best, q.z};
    *out = pick;
    if (feed) *feed = fed_token(pick);
    *arrived = 0;  // ready for the next launch
  }
}

__global__ void __launch_bounds__(kThreads)
    pick_kernel(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                float inv_t, Partial* partials, unsigned* arrived, MaskedPick* out) {
  pdl_begin();
  pick_block(logits, vocab, mask, mask_words, inv_t, partials, arrived, out);
}

// The pick as one cluster of kPickCluster blocks (CudaOptions::pick_cluster): each thread holds
// up to kClusterPerThread logits (the vocabulary's 129,280 in one round), each block pushes its
// partial into block 0's shared memory, and block 0 combines them after one cluster barrier,
// where pick_kernel's blocks went through the L2 (a fence, an arrival counter, the last block
// reading every partial back). The same token, count and best; z summed in another order.
constexpr int kPickCluster = 8;
constexpr int kClusterPickThreads = 1024;
constexpr int kClusterPerThread = 16;

__device__ __forceinline__ void pick_cluster_block(const float* logits, int64_t vocab,
                                                   const uint32_t* mask, int64_t mask_words,
                                                   float inv_t, MaskedPick* out, int32_t* feed) {
  __shared__ Partial shared[kClusterPickThreads / 32];
  __shared__ Partial blocks[kPickCluster];  // block 0's: every block's partial
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  Partial p = thread_partial<kClusterPerThread>(logits, vocab, mask, mask_words, inv_t,
                                                int64_t(blockIdx.x) * blockDim.x + threadIdx.x,
                                                int64_t(gridDim.x) * blockDim.x);
  p = block_combine(p, inv_t, shared);
  cluster_wait();  // block 0 has started: its shared memory takes the push
  if (threadIdx.x == 0) *cluster.map_shared_rank(&blocks[rank], 0) = p;
  cluster_arrive();
  if (rank != 0) return;  // block 0 alone reads, its own shared memory
  cluster_wait();
  if (threadIdx.x < 32) {
    Partial q =
        threadIdx.x < kPickCluster ? blocks[threadIdx.x] : Partial{-INFINITY, INT32_MAX, 0, 0.0};
    q = warp_combine(q, inv_t);
    if (threadIdx.x == 0) {
      const MaskedPick pick{q.token, q.allowed, q.best, q.z};
      *out = pick;
      if (feed) *feed = fed_token(pick);
    }
  }
}

__global__ void __launch_bounds__(kClusterPickThreads)
    pick_cluster_kernel(const float* logits, int64_t vocab, const uint32_t* mask,
                        int64_t mask_words, float inv_t, MaskedPick* out) {
  cluster_arrive_relaxed();  // this block has started
  pdl_begin();
  pick_cluster_block(logits, vocab, mask, mask_words, inv_t, out, nullptr);
}

__global__ void __launch_bounds__(kClusterPickThreads)
    pick_from_cluster_kernel(const PickArgs* args, int64_t vocab) {
  cluster_arrive_relaxed();
  const PickArgs a = *args;
  pick_cluster_block(a.logits, vocab, a.mask, a.mask_words, a.inv_t, a.out, a.feed);
}

// The scratch's layout (masked_pick_scratch_bytes): the blocks' partials, then the counter.
__device__ __host__ inline unsigned* arrival_counter(void* scratch) {
  return reinterpret_cast<unsigned*>(static_cast<char*>(scratch) +
                                     int64_t(sizeof(Partial)) * kMaxBlocks);
}

__global__ void __launch_bounds__(kThreads) pick_from_kernel(const PickArgs* args, int64_t vocab) {
  pdl_begin();
  const PickArgs a = *args;
  pick_block(a.logits, vocab, a.mask, a.mask_words, a.inv_t, static_cast<Partial*>(a.scratch),
             arrival_counter(a.scratch), a.out, a.feed);
}

// The pick with its arguments by value (launched outside any graph) and the step's metadata
// copied from host memory on the way (CudaOptions::pick_uploads_step).
__global__ void __launch_bounds__(kThreads)
    pick_uploading_kernel(PickArgs a, int64_t vocab, StepCopy copy) {
  pick_block<true>(a.logits, vocab, a.mask, a.mask_words, a.inv_t, static_cast<Partial*>(a.scratch),
                   arrival_counter(a.scratch), a.out, a.feed, copy);
}

int pick_grid(int64_t vocab) {
  const int64_t blocks = (vocab + kThreads * kPerThread - 1) / (kThreads * kPerThread);
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

// The blocks' partials, then the arrival counter.
int64_t masked_pick_scratch_bytes() { return int64_t(sizeof(Partial)) * kMaxBlocks + 16; }

void masked_pick(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                 float inv_t, void* scratch, MaskedPick* out, cudaStream_t stream, bool cluster) {
  if (cluster) {
    launch_pdl_cluster(pick_cluster_kernel, dim3(kPickCluster), dim3(kClusterPickThreads), 0,
                       stream, kPickCluster, logits, vocab, mask, mask_words, inv_t, out);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const int blocks = pick_grid(vocab);
  static_assert(kMaxBlocks <= kThreads, "the last block loads one partial a thread");
  launch_pdl(pick_kernel, blocks, kThreads, 0, stream, logits, vocab, mask, mask_words, inv_t,
             static_cast<Partial*>(scratch), arrival_counter(scratch), out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

bool masked_pick_uploading(const PickArgs& args, int64_t vocab, const void* from, void* to,
                           int64_t bytes, cudaStream_t stream) {
  const int blocks = pick_grid(vocab) + 1;  // and the copying block
  const auto f = reinterpret_cast<uintptr_t>(from), t = reinterpret_cast<uintptr_t>(to);
  if (bytes < 0 || bytes % 16 != 0 || f % 16 != 0 || t % 16 != 0 || blocks > kMaxBlocks)
    return false;
  pick_uploading_kernel<<<blocks, kThreads, 0, stream>>>(
      args, vocab, StepCopy{static_cast<const int4*>(from), static_cast<int4*>(to), bytes / 16});
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  return true;
}

void masked_pick_from(const PickArgs* args, int64_t vocab, cudaStream_t stream, bool cluster) {
  if (cluster) {
    launch_cluster(pick_from_cluster_kernel, dim3(kPickCluster), dim3(kClusterPickThreads), 0,
                   stream, kPickCluster, args, vocab);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  pick_from_kernel<<<pick_grid(vocab), kThreads, 0, stream>>>(args, vocab);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

__global__ void feed_picked_tokens_kernel(const PickFeed* feeds, int64_t n, int32_t* tokens) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  tokens[feeds[i].row] = fed_token(*feeds[i].pick);
}

void feed_picked_tokens(const PickFeed* feeds, int64_t n, int32_t* tokens, cudaStream_t stream) {
  if (n <= 0) return;
  feed_picked_tokens_kernel<<<unsigned((n + 63) / 64), 64, 0, stream>>>(feeds, n, tokens);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

// One block: the copy, a barrier (global writes of one block are visible to its threads after
// __syncthreads), then the feeds over the copied tokens.
__global__ void feed_staged_metadata_kernel(const char* stage, char* meta, int64_t bytes,
                                            int64_t feeds_off, int64_t n, int64_t tokens_off) {
  const int64_t words = bytes / 16;
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x)
    reinterpret_cast<int4*>(meta)[i] = reinterpret_cast<const int4*>(stage)[i];
  for (int64_t i = words * 16 + threadIdx.x; i < bytes; i += blockDim.x) meta[i] = stage[i];
  __syncthreads();
  const auto* feeds = reinterpret_cast<const PickFeed*>(stage + feeds_off);
  auto* tokens = reinterpret_cast<int32_t*>(meta + tokens_off);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    tokens[feeds[i].row] = fed_token(*feeds[i].pick);
}

void feed_staged_metadata(const char* stage, char* meta, int64_t bytes, int64_t feeds_off,
                          int64_t n, int64_t tokens_off, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(stage) % 16 || reinterpret_cast<uintptr_t>(meta) % 16)
    throw std::invalid_argument("feed_staged_metadata: buffers not 16-byte aligned");
  feed_staged_metadata_kernel<<<1, 256, 0, stream>>>(stage, meta, bytes, feeds_off, n, tokens_off);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
