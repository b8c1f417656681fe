// Decode attention (a few rows): the keys of each row are split over many blocks, each block
// holding one slice of them in shared memory for a group of heads, so the 64 heads of one row
// read the shared KV rows 8 times instead of 64 and the GPU has ~128 blocks at work instead of
// one per head. The query's RMSNorm and RoPE are done on the way in and the inverse RoPE on the
// way out (before, two kernels of their own around the attention). Each block leaves its heads'
// partial softmax (max, sum, weighted keys); the last block of a (row, head group) to finish
// merges the slices (or, with DecodeAttentionShape::cluster, the slices of a group are one
// thread-block cluster and merge through distributed shared memory).
#include <cooperative_groups.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/attention_keys.cuh"
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kGroupHeads = 8;  // heads per block, one warp each (DecodeAttentionShape's most)
constexpr int kChunkKeys = 64;  // keys in shared memory at once, at most: 128 KB at head_dim 512
constexpr int kMaxSplits = 16;  // key slices per row
constexpr int kPortableSplits = 8;     // key slices per row as one portable cluster
constexpr int kMaxClusterSplits = 16;  // and as one non-portable cluster
constexpr int kKeysAtOnce = 4;         // keys a warp scores together
constexpr int64_t kPartPad = 4;        // a partial: head_dim weighted-key sums, then max and sum

struct DecodeParams {
  const float* q;  // raw: before the head's RMSNorm and RoPE
  const LayerRow* rows;
  const int64_t* pos;
  DeviceRope rope;
  const float* sinks;
  const int32_t* chosen;
  const int32_t* n_chosen;
  const float2* rope_cs;  // [n][rope.dim / 2] (cos, sin), or null: computed here
  float* partials;        // [n][heads][splits][head_dim + kPartPad]
  unsigned* arrived;      // [n][heads / group]: blocks done, reset by the last one
  float* out;
  int64_t heads, hd, window, topk;
  float q_eps, scale;
  bool use_entries;
  int chunk_keys;  // keys in shared memory at once (<= kChunkKeys and the block's threads)
};

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// cos and sin (times the rope's scaling) of pair `pair` at `position`, as norm_rope.cu computes
// them.
__device__ __forceinline__ float2 rope_cos_sin(const DeviceRope& rope, int64_t pair,
                                               float position) {
  const float angle = rope.inv_freq[pair] * position;
  return make_float2(float(cos(double(angle))) * rope.scaling,
                     float(sin(double(angle))) * rope.scaling);
}

// Rotates the interleaved pairs of float4 chunk c that lie in the rope's channels; sign -1 is
// the inverse rotation. cs holds the chunk's two pairs' (cos, sin).
__device__ __forceinline__ float4 rotate(float4 v, int64_t c, int64_t first, const float2 (&cs)[2],
                                         float sign) {
  float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int p = 0; p < 2; ++p) {
    if (4 * c + 2 * p < first) continue;
    const float a = e[2 * p], b = e[2 * p + 1], s = sign * cs[p].y;
    e[2 * p] = a * cs[p].x - b * s;
    e[2 * p + 1] = b * cs[p].x + a * s;
  }
  return make_float4(e[0], e[1], e[2], e[3]);
}

// The (cos, sin) of float4 chunk c's two pairs at row t (identity outside the rope's channels,
// the last rope.dim of head_dim from `first` on).
__device__ __forceinline__ void chunk_cos_sin(const DecodeParams& p, int64_t t, int c, int nchunk,
                                              int64_t first, float position, float2 (&cs)[2]) {
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int64_t d = 4 * int64_t(c) + 2 * q;
    const int64_t pair = (d - first) / 2;
    cs[q] = !(c < nchunk && d >= first) ? make_float2(1.0f, 0.0f)
            : p.rope_cs                 ? p.rope_cs[t * (p.rope.dim / 2) + pair]
                                        : rope_cos_sin(p.rope, pair, position);
  }
}

// One warp's head over one slice of row t's keys: the online softmax's max m and sum l (slice 0
// starting from the sink) and the weighted keys in acc (lane + 32 j's float4 chunks), with the
// (cos, sin) of those chunks for the inverse rotation on the way out.
template <int J>
struct SlicePartial {
  float4 acc[J];
  float m, l;
  float2 cs[J][2];
};

// J: float4 chunks per lane (head_dim <= 128 * J); KA: keys a warp scores together; kBulk: each
// key row comes by one bulk copy (DecodeAttentionShape::bulk_keys). Every thread of the block
// calls it (it synchronises the block); keys_s is free again after it.
template <int J, int KA, bool kBulk = false>
__device__ __forceinline__ SlicePartial<J> attend_slice(const DecodeParams& p, int64_t t,
                                                        int64_t split, int64_t splits, int64_t h) {
  extern __shared__ float4 keys_s[];  // [chunk_keys][head_dim / 4]
  const int lane = threadIdx.x & 31;
  const int64_t hd = p.hd;
  const int nchunk = int(hd / 4), chunk_keys = p.chunk_keys;
  const int64_t first = hd - p.rope.dim;  // the rope's channels are the last rope.dim
  pdl_begin();
  const LayerRow row = p.rows[t];
  const KeyList keys = row_keys(row, t, p.window, p.use_entries, p.chosen, p.n_chosen, p.topk);
  const int64_t n_keys = keys.n_keys();
  const int64_t per = (n_keys + splits - 1) / splits;
  const int64_t k0 = min(n_keys, split * per), k1 = min(n_keys, k0 + per);
  // The chunk's key rows are looked up once (a CSA key's row is an index read from memory) so
  // the copies go out back to back; called by every thread (it synchronises the block).
  __shared__ const float4* rows_s[kChunkKeys];
  // kBulk: one bulk copy a key row (warp 0's lanes), landing on keys_bar, instead of every
  // thread's 16-byte copies.
  __shared__ uint64_t keys_bar;
  uint32_t keys_phase = 0;
  if (kBulk && threadIdx.x == 0) {
    mbarrier_init(&keys_bar, 1);
    mbarrier_init_fence();
  }
  auto fetch = [&](int64_t base, int count) {
    if (int(threadIdx.x) < count)
      rows_s[threadIdx.x] = reinterpret_cast<const float4*>(keys.key(base + threadIdx.x, hd));
    __syncthreads();
    if constexpr (kBulk) {
      if (threadIdx.x < 32) {
        if (lane == 0) mbarrier_arrive_expect(&keys_bar, uint32_t(count * hd * 4));
        __syncwarp();
        for (int i = lane; i < count; i += 32)
          bulk_copy_to_shared_kept(&keys_s[i * nchunk], rows_s[i], uint32_t(hd * 4), &keys_bar);
      }
    } else {
      for (int idx = threadIdx.x; idx < count * nchunk; idx += blockDim.x) {
        const int i = idx / nchunk, c = idx - i * nchunk;
        cp_async_16(&keys_s[idx], rows_s[i] + c);
      }
      cp_async_commit();
    }
  };
  if (k0 < k1) fetch(k0, int(min(int64_t(chunk_keys), k1 - k0)));

  // The query while the first keys arrive: RMSNorm (no weight), RoPE, times the scale.
  const float4 zero = make_float4(0, 0, 0, 0);
  const float4* qv = reinterpret_cast<const float4*>(p.q + (t * p.heads + h) * hd);
  float4 qr[J];
  SlicePartial<J> r;
  float2(&cs)[J][2] = r.cs;
  float ss = 0.0f;
  const float position = float(p.pos[t]);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    qr[j] = c < nchunk ? qv[c] : zero;
    ss += dot4(qr[j], qr[j]);
    chunk_cos_sin(p, t, c, nchunk, first, position, cs[j]);
  }
  const float inv = rsqrtf(warp_sum(ss) / float(hd) + p.q_eps);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    float4 v = make_float4(qr[j].x * inv, qr[j].y * inv, qr[j].z * inv, qr[j].w * inv);
    v = rotate(v, lane + 32 * j, first, cs[j], 1.0f);
    qr[j] = make_float4(v.x * p.scale, v.y * p.scale, v.z * p.scale, v.w * p.scale);
  }

  // The sink only adds exp(sink - max) to the denominator: slice 0 starts its softmax from it.
  float& m = r.m;
  float& l = r.l;
  m = split == 0 ? p.sinks[h] : -INFINITY, l = split == 0 ? 1.0f : 0.0f;
  float4(&acc)[J] = r.acc;
#pragma unroll
  for (int j = 0; j < J; ++j) acc[j] = zero;
  for (int64_t base = k0; base < k1; base += chunk_keys) {
    const int count = int(min(int64_t(chunk_keys), k1 - base));
    if constexpr (kBulk) {
      mbarrier_wait(&keys_bar, keys_phase);
      keys_phase ^= 1u;
    } else {
      cp_async_wait_all();
      __syncthreads();
    }
    // KA keys at a time: their dot products and shuffle sums are independent chains.
    for (int i = 0; i < count; i += KA) {
      float4 kr[KA][J];
      float sc[KA];
#pragma unroll
      for (int u = 0; u < KA; ++u) {
        sc[u] = 0.0f;
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const int c = lane + 32 * j;
          kr[u][j] = c < nchunk && i + u < count ? keys_s[(i + u) * nchunk + c] : zero;
          sc[u] += dot4(qr[j], kr[u][j]);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
#pragma unroll
        for (int u = 0; u < KA; ++u) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], off);
      float top = m;
#pragma unroll
      for (int u = 0; u < KA; ++u)
        if (i + u < count) top = fmaxf(top, sc[u]);
      const float corr = expf(m - top);  // m = -inf: 0, and l and acc are still 0
      l *= corr;
#pragma unroll
      for (int j = 0; j < J; ++j)
        acc[j].x *= corr, acc[j].y *= corr, acc[j].z *= corr, acc[j].w *= corr;
      m = top;
#pragma unroll
      for (int u = 0; u < KA; ++u) {
        const float e = i + u < count ? expf(sc[u] - m) : 0.0f;
        l += e;
#pragma unroll
        for (int j = 0; j < J; ++j) {
          acc[j].x = fmaf(e, kr[u][j].x, acc[j].x);
          acc[j].y = fmaf(e, kr[u][j].y, acc[j].y);
          acc[j].z = fmaf(e, kr[u][j].z, acc[j].z);
          acc[j].w = fmaf(e, kr[u][j].w, acc[j].w);
        }
      }
    }
    __syncthreads();  // every warp is done with the chunk
    if (base + chunk_keys < k1)
      fetch(base + chunk_keys, int(min(int64_t(chunk_keys), k1 - base - chunk_keys)));
  }

  return r;
}

// attend_slice, then the slices meet in global memory: each block writes its heads' partials,
// and the last block of its (row, head group) to arrive merges them. Grid: (head groups,
// slices, rows).
template <int J, int KA>
__device__ __forceinline__ void attend_decode_block(const DecodeParams& p) {
  __shared__ bool last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = int(blockDim.x) >> 5;
  const int64_t t = blockIdx.z, split = blockIdx.y, splits = gridDim.y, group = blockIdx.x;
  const int64_t h = group * G + warp, hd = p.hd;
  const int nchunk = int(hd / 4);
  const int64_t first = hd - p.rope.dim;
  const float4 zero = make_float4(0, 0, 0, 0);
  const SlicePartial<J> r = attend_slice<J, KA>(p, t, split, splits, h);
  const float4(&acc)[J] = r.acc;
  const float2(&cs)[J][2] = r.cs;
  const float m = r.m, l = r.l;
  const int64_t stride = hd + kPartPad;
  float* part = p.partials + ((t * p.heads + h) * splits + split) * stride;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < nchunk) reinterpret_cast<float4*>(part)[c] = acc[j];
  }
  if (lane == 0) part[hd] = m, part[hd + 1] = l;
  // The last block of this (row, head group) merges the slices.
  __threadfence();
  __syncthreads();
  unsigned* arrived = p.arrived + t * gridDim.x + group;
  if (threadIdx.x == 0) last = atomicAdd(arrived, 1u) == unsigned(splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) *arrived = 0;  // ready for the next launch
  // Lane s holds slice s's max and sum (splits <= 32); every load is in flight at once.
  const float* parts = p.partials + (t * p.heads + h) * splits * stride;
  const float ms = lane < splits ? __ldcg(parts + lane * stride + hd) : -INFINITY;
  const float ls = lane < splits ? __ldcg(parts + lane * stride + hd + 1) : 0.0f;
  const float M = warp_max(ms);
  const float fs = ms == -INFINITY ? 0.0f : expf(ms - M);
  const float L = warp_sum(ls * fs);
  float4 o[J];
#pragma unroll
  for (int j = 0; j < J; ++j) o[j] = zero;
#pragma unroll 4
  for (int64_t s = 0; s < splits; ++s) {
    const float f = __shfl_sync(0xffffffffu, fs, int(s));
    const float4* ps = reinterpret_cast<const float4*>(parts + s * stride);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int c = lane + 32 * j;
      if (c >= nchunk) continue;
      const float4 a = __ldcg(ps + c);
      o[j].x = fmaf(a.x, f, o[j].x);
      o[j].y = fmaf(a.y, f, o[j].y);
      o[j].z = fmaf(a.z, f, o[j].z);
      o[j].w = fmaf(a.w, f, o[j].w);
    }
  }
  const float inv_l = 1.0f / L;
  float4* out = reinterpret_cast<float4*>(p.out + (t * p.heads + h) * hd);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c >= nchunk) continue;
    const float4 v = make_float4(o[j].x * inv_l, o[j].y * inv_l, o[j].z * inv_l, o[j].w * inv_l);
    out[c] = rotate(v, c, first, cs[j], -1.0f);
  }
}

template <int J>
__global__ void __launch_bounds__(kGroupHeads * 32) attend_decode_kernel(DecodeParams p) {
  attend_decode_block<J, kKeysAtOnce>(p);
}

// head_dim 384-512 in blocks of at most 4 warps with at most 112 registers a thread (two keys
// at once instead of four): an SM's four schedulers each hold 16,384 registers, and a streamed
// product's 17 warps of 80 take up to 5 x 2,560 of one, so a warp beside them may take 3,584
// (160 registers, the other kernel's, left wo_a's blocks out; CudaOptions::attention_beside_wo_a).
__global__ void __maxnreg__(112) attend_decode_lean_kernel(DecodeParams p) {
  attend_decode_block<4, 2>(p);
}

// attend_slice, then the slices meet in distributed shared memory: the blocks of one (row, head
// group) are a thread-block cluster, one slice each (grid: slices, head groups, rows; the
// cluster along x). Each block leaves its heads' partials in its own shared memory, and after a
// cluster barrier block r merges float4 chunks [r, r + 1) * nchunk / slices of every head of
// the group from all the blocks' partials: no fence, arrival counter or reload through the L2
// on the path (the global merge's chain of round trips was a large part of the kernel's
// ~16 us alone, twenty-third session). Needs nchunk % slices == 0 and slices <= kSlices (8, a
// portable cluster, or 16). KA, kBulk: as attend_slice's.
template <int J, int KA, bool kBulk, int kSlices = kPortableSplits>
__device__ __forceinline__ void attend_cluster_block(const DecodeParams& p) {
  namespace cg = cooperative_groups;
  extern __shared__ float4 keys_s[];
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = int(blockDim.x) >> 5;
  const int64_t t = blockIdx.z, split = blockIdx.x, splits = gridDim.x, group = blockIdx.y;
  const int64_t h = group * G + warp, hd = p.hd;
  const int nchunk = int(hd / 4);
  const int64_t first = hd - p.rope.dim;
  const SlicePartial<J> r = attend_slice<J, KA, kBulk>(p, t, split, splits, h);
  // This warp's partial in this block's shared memory (attend_slice is done with keys_s).
  const int64_t stride = hd + kPartPad;
  float* mine = reinterpret_cast<float*>(keys_s);  // [G][stride]
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    if (c < nchunk) reinterpret_cast<float4*>(mine + warp * stride)[c] = r.acc[j];
  }
  if (lane == 0) mine[warp * stride + hd] = r.m, mine[warp * stride + hd + 1] = r.l;
  cluster.sync();
  // Lane s holds slice s's max and sum; every lane gets each slice's factor.
  const float* own = mine + warp * stride;
  const float ms = lane < splits ? *(cluster.map_shared_rank(own, lane) + hd) : -INFINITY;
  const float ls = lane < splits ? *(cluster.map_shared_rank(own, lane) + hd + 1) : 0.0f;
  const float M = warp_max(ms);
  const float fs = ms == -INFINITY ? 0.0f : expf(ms - M);
  const float inv_l = 1.0f / warp_sum(ls * fs);
  float f[kSlices];
#pragma unroll
  for (int s = 0; s < kSlices; ++s) f[s] = __shfl_sync(0xffffffffu, fs, s);
  const int per = nchunk / int(splits), c0 = int(split) * per;
  const float position = float(p.pos[t]);
  float4* out = reinterpret_cast<float4*>(p.out + (t * p.heads + h) * hd);
  for (int c = c0 + lane; c < c0 + per; c += 32) {
    float4 o = make_float4(0, 0, 0, 0);
#pragma unroll
    for (int s = 0; s < kSlices; ++s) {  // unrolled: f stays in registers
      if (s >= int(splits)) break;
      const float4 a = reinterpret_cast<const float4*>(cluster.map_shared_rank(own, s))[c];
      o.x = fmaf(a.x, f[s], o.x);
      o.y = fmaf(a.y, f[s], o.y);
      o.z = fmaf(a.z, f[s], o.z);
      o.w = fmaf(a.w, f[s], o.w);
    }
    float2 cs[2];
    chunk_cos_sin(p, t, c, nchunk, first, position, cs);
    out[c] = rotate(make_float4(o.x * inv_l, o.y * inv_l, o.z * inv_l, o.w * inv_l), c, first, cs,
                    -1.0f);
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
}

// Two keys at a time in at most 112 registers, so a streamed product's warps fit beside it
// (CudaOptions::attention_beside_wo_a).
template <int J, bool kBulk, int kSlices = kPortableSplits>
__global__ void __maxnreg__(112) attend_decode_cluster_kernel(DecodeParams p) {
  attend_cluster_block<J, 2, kBulk, kSlices>(p);
}

// Four keys at a time (DecodeAttentionShape::keys_at_once): each warp's chain of dependent
// steps a key (its dot product, the shuffles summing it, the running maximum, the exponentials)
// runs for four keys side by side instead of two, with the registers that takes.
template <int J, bool kBulk, int kSlices = kPortableSplits>
__global__ void __launch_bounds__(kGroupHeads * 32)
    attend_decode_cluster_wide_kernel(DecodeParams p) {
  attend_cluster_block<J, 4, kBulk, kSlices>(p);
}

// The cluster kernel for J, the shape's keys at once and bulk copies, and clusters of at most
// kSlices blocks.
template <int J, int kSlices>
auto cluster_kernel(const DecodeAttentionShape& shape) {
  const bool wide = shape.keys_at_once >= 4;
  if (shape.bulk_keys)
    return wide ? attend_decode_cluster_wide_kernel<J, true, kSlices>
                : attend_decode_cluster_kernel<J, true, kSlices>;
  return wide ? attend_decode_cluster_wide_kernel<J, false, kSlices>
              : attend_decode_cluster_kernel<J, false, kSlices>;
}

template <int J>
auto cluster_kernel(const DecodeAttentionShape& shape, int splits) {
  return splits <= kPortableSplits ? cluster_kernel<J, kPortableSplits>(shape)
                                   : cluster_kernel<J, kMaxClusterSplits>(shape);
}

int group_heads(int64_t heads, int most) {
  int G = std::clamp(most, 1, kGroupHeads);
  while (heads % G != 0) G /= 2;
  return G;
}

bool shape_valid(const DecodeAttentionShape& s) {
  return s.heads_per_block >= 1 && s.heads_per_block <= kGroupHeads && s.chunk_keys >= 1 &&
         s.chunk_keys <= kChunkKeys;
}

}  // namespace

bool attend_decode_supported(int64_t heads, int64_t head_dim, const DeviceRope& rope) {
  return heads > 0 && head_dim % 4 == 0 && head_dim <= 512 && rope.dim % 2 == 0 &&
         rope.dim <= head_dim;
}

int attend_decode_splits(int64_t max_keys, int cap, const DecodeAttentionShape& shape) {
  const int64_t most = cap > 0 ? std::min<int64_t>(cap, kMaxSplits) : kMaxSplits;
  const int64_t chunk = std::clamp(shape.chunk_keys, 1, kChunkKeys);
  const int splits = int(std::clamp<int64_t>((max_keys + chunk - 1) / chunk, 1, most));
  // A cluster's slices divide the head's float4 chunks: more than a portable cluster's are 16.
  return shape.cluster && splits > kPortableSplits ? kMaxClusterSplits : splits;
}

int64_t attend_decode_shared_bytes(int64_t head_dim, const DecodeAttentionShape& shape) {
  return int64_t(std::clamp(shape.chunk_keys, 1, kChunkKeys)) * head_dim * 4;
}

int64_t attend_decode_partial_floats(int64_t n, int64_t heads, int64_t head_dim, int splits) {
  return n * heads * splits * (head_dim + kPartPad);
}

void attend_rows_decode(const float* q, const LayerRow* rows, const int64_t* pos,
                        const DeviceRope& rope, float q_eps, int64_t n, int64_t heads,
                        int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                        const int32_t* chosen, const int32_t* n_chosen, int64_t topk, int splits,
                        float* partials, unsigned* arrived, float* out, cudaStream_t stream,
                        const float2* rope_cs, const DecodeAttentionShape& shape) {
  if (n <= 0) return;
  if (!attend_decode_supported(heads, head_dim, rope) || splits < 1 || splits > kMaxSplits ||
      n > 65535 || !shape_valid(shape))
    throw std::invalid_argument("cuda decode attention: " + std::to_string(heads) + " heads of " +
                                std::to_string(head_dim) + " with rope dim " +
                                std::to_string(rope.dim) + " in " + std::to_string(splits) +
                                " slices, " + std::to_string(shape.heads_per_block) +
                                " heads a block and " + std::to_string(shape.chunk_keys) +
                                " keys a chunk is not supported");
  DecodeParams p;
  p.q = q;
  p.rows = rows;
  p.pos = pos;
  p.rope = rope;
  p.sinks = sinks;
  p.chosen = chosen;
  p.n_chosen = n_chosen;
  p.rope_cs = rope_cs;
  p.partials = partials;
  p.arrived = arrived;
  p.out = out;
  p.heads = heads;
  p.hd = head_dim;
  p.window = window;
  p.topk = topk;
  p.q_eps = q_eps;
  p.scale = 1.0f / sqrtf(float(head_dim));
  p.use_entries = use_entries;
  p.chunk_keys = shape.chunk_keys;
  const int G = group_heads(heads, shape.heads_per_block);
  // A chunk's key rows are looked up one a thread of the block's 32 G.
  if (shape.chunk_keys > 32 * G)
    throw std::invalid_argument("cuda decode attention: " + std::to_string(shape.chunk_keys) +
                                " keys a chunk for blocks of " + std::to_string(G) + " heads (" +
                                std::to_string(32 * G) + " threads) is not supported");
  const dim3 grid{unsigned(heads / G), unsigned(splits), unsigned(n)};
  const size_t shared = size_t(attend_decode_shared_bytes(head_dim, shape));
  auto launch = [&](auto kernel) {
    AGENTRT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    // Blocks meant to sit beside a streamed product's want the SM's whole carveout as shared
    // memory (an SM changes its carveout only when idle; a smaller one leaves the product out).
    AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                            shape.heads_per_block < kGroupHeads
                                                ? int(cudaSharedmemCarveoutMaxShared)
                                                : int(cudaSharedmemCarveoutDefault)));
    launch_pdl(kernel, grid, unsigned(32 * G), shared, stream, p);
  };
  const int64_t J = (head_dim + 127) / 128;
  if (shape.cluster && splits <= kMaxClusterSplits && (head_dim / 4) % splits == 0) {
    const size_t room =
        std::max(shared, size_t(G) * size_t(head_dim + kPartPad) * sizeof(float));  // partials
    auto kernel = J <= 1   ? cluster_kernel<1>(shape, splits)
                  : J == 2 ? cluster_kernel<2>(shape, splits)
                           : cluster_kernel<4>(shape, splits);
    AGENTRT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(room)));
    if (splits > kPortableSplits)
      AGENTRT_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    launch_pdl_cluster(kernel, dim3(unsigned(splits), unsigned(heads / G), unsigned(n)),
                       dim3(unsigned(32 * G)), room, stream, unsigned(splits), p);
  } else if (J <= 1)
    launch(attend_decode_kernel<1>);
  else if (J == 2)
    launch(attend_decode_kernel<2>);
  else if (G <= 4)
    launch(attend_decode_lean_kernel);
  else
    launch(attend_decode_kernel<4>);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
