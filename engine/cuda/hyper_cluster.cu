// The decode step's mHC boundary (hyper_fused: the post step of the sublayer before, the
// projection onto the mixing weights and the pre step) as one cluster of 8 blocks per row. Each
// block owns hidden / 8 channels of all the streams, keeps them on chip from the post step to x,
// and the blocks exchange their partial sums through distributed shared memory: each block
// pushes its 25 partials (24 projections and the sum of squares) into every block of the
// cluster, a cluster barrier, and every block adds the same 8 partials in the same order, so
// all of them hold the same mixing weights; then the same for x's sum of squares. hyper_fused's
// one-block-per-128-channels kernel instead leaves the pre step to the last block to arrive:
// a global fence and counter, and that block re-reading all the streams from the L2 and mixing
// 4,096 channels alone.
#include <cooperative_groups.h>

#include <stdexcept>
#include <string>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cluster_barrier.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/hyper_math.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kClusterBlocks = 8;
constexpr int kLanesPerStream = 128;  // threads per stream in a block
constexpr int kHc = 4;
constexpr int kStreamThreads = kHc * kLanesPerStream;
// One more warp turns the cluster's sums into the mixing weights and runs Sinkhorn (its result
// is the next post step's, off the path to x), like hyper_connection.cu's split pre step.
constexpr int kClusterThreads = kStreamThreads + 32;

// P consecutive floats (16-byte aligned for 4, 8-byte for 2) as one load or store; CONSTANT
// loads (weights) go through the read-only cache.
template <bool CONSTANT, int P>
__device__ __forceinline__ void load_vec(const float* p, float (&out)[P]) {
  if constexpr (P == 4) {
    const auto* q = reinterpret_cast<const float4*>(p);
    const float4 t = CONSTANT ? __ldg(q) : *q;
    out[0] = t.x, out[1] = t.y, out[2] = t.z, out[3] = t.w;
  } else if constexpr (P == 2) {
    const auto* q = reinterpret_cast<const float2*>(p);
    const float2 t = CONSTANT ? __ldg(q) : *q;
    out[0] = t.x, out[1] = t.y;
  } else {
    out[0] = CONSTANT ? __ldg(p) : *p;
  }
}
template <int P>
__device__ __forceinline__ void store_vec(float* p, const float (&v)[P]) {
  if constexpr (P == 4)
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  else if constexpr (P == 2)
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  else
    *p = v[0];
}

// P consecutive channels per stream and thread: hidden = kClusterBlocks * kLanesPerStream * P.
template <bool HEAD, int P>
__global__ void __launch_bounds__(kClusterThreads)
    hyper_cluster_kernel(HyperDevice w, const float* block_out, float* streams, int64_t hidden,
                         int iters, float hc_eps, float rms_eps, const float* norm, float* mix,
                         float* x) {
  constexpr int HC = kHc;
  constexpr int kOut = HEAD ? HC : (2 + HC) * HC;  // projections
  constexpr int kSums = kOut + 1;                  // and the sum of squares
  constexpr int kChunk = kLanesPerStream * P;      // channels a block owns
  constexpr int kWarps = kStreamThreads / 32;      // warps holding stream channels
  static_assert(kSums <= 32 && kChunk <= kStreamThreads && kWarps <= 32);
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  __shared__ float warp_part[kWarps][32];
  __shared__ float block_part[kClusterBlocks][kSums];  // every block's, pushed by each
  __shared__ float ss_part[kClusterBlocks];            // the same for x's sum of squares
  __shared__ float sv[HC][kChunk];  // the block's channels of the streams, after the post step
  __shared__ float pre_s[HC];
  __shared__ float red[kWarps];
  const int64_t row = blockIdx.y, width = HC * hidden;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const bool mixer = warp == kWarps;  // the weights' warp
  const int k = tid / kLanesPerStream, c = tid % kLanesPerStream;
  const int64_t first = int64_t(rank) * kChunk;  // the block's channels: first .. first + kChunk
  // The other blocks of the cluster may not have started yet: nothing is pushed into them
  // before this phase's wait.
  cluster_arrive_relaxed();
  // fn is a constant: the block's columns are fetched into the L2 while the kernel before runs.
  if (tid < kOut * HC)
    prefetch_l2(w.fn + (tid / HC) * width + (tid % HC) * hidden + first, kChunk * 4);
  const float nv = tid < kChunk ? norm[first + tid] : 0.0f;
  pdl_begin();
  float* s = streams + row * width;
  if (!mixer) {
    // The thread's P consecutive channels, each stream row read as one vector.
    const int64_t d = first + int64_t(P) * c;
    float v[P];
    if (block_out) {
      // The post step, as hyper_post_kernel: post * block_out + comb^T streams.
      const float* m = mix + row * hyper_mix_width(HC);
      float old[HC][P], y[P];
#pragma unroll
      for (int j = 0; j < HC; ++j) load_vec<false>(s + j * hidden + d, old[j]);
      load_vec<false>(block_out + row * hidden + d, y);
      const float post = m[HC + k];
      float comb[HC];
#pragma unroll
      for (int j = 0; j < HC; ++j) comb[j] = m[2 * HC + j * HC + k];
#pragma unroll
      for (int p = 0; p < P; ++p) {
        v[p] = post * y[p];
#pragma unroll
        for (int j = 0; j < HC; ++j) v[p] = fmaf(comb[j], old[j][p], v[p]);
      }
    } else {
      load_vec<false>(s + k * hidden + d, v);
    }
#pragma unroll
    for (int p = 0; p < P; ++p) sv[k][P * c + p] = v[p];
    // This thread's share of the projections and of the sum of squares, then the warp's.
    float a[32];
#pragma unroll
    for (int o = 0; o < 32; ++o) a[o] = 0.0f;
    // Every load first, so they are in flight together (in L2 since the prefetch above).
    float f[kOut][P];
#pragma unroll
    for (int o = 0; o < kOut; ++o) load_vec<true>(w.fn + o * width + k * hidden + d, f[o]);
#pragma unroll
    for (int o = 0; o < kOut; ++o)
#pragma unroll
      for (int p = 0; p < P; ++p) a[o] = fmaf(f[o][p], v[p], a[o]);
#pragma unroll
    for (int p = 0; p < P; ++p) a[kOut] = fmaf(v[p], v[p], a[kOut]);
    warp_part[warp][lane] = warp_reduce_scatter(a, lane);
  }
  // Every read of this row's old streams and mix in this block is done.
  __syncthreads();
  if (block_out && !mixer) {
    float v[P];
#pragma unroll
    for (int p = 0; p < P; ++p) v[p] = sv[k][P * c + p];
    store_vec(s + k * hidden + first + int64_t(P) * c, v);
  }
  cluster_wait();  // every block has started
  // The block's partials, pushed into every block of the cluster.
  for (int o = warp; o < kSums; o += kWarps + 1) {
    float t = lane < kWarps ? warp_part[lane][o] : 0.0f;
    t = warp_sum(t);
    if (lane < kClusterBlocks) *cluster.map_shared_rank(&block_part[rank][o], lane) = t;
  }
  cluster_arrive();
  cluster_wait();
  if (mixer) {
    // Every block adds the cluster's partials in rank order: the same weights in each.
    float t = 0.0f;
    if (lane < kSums)
#pragma unroll
      for (int r = 0; r < kClusterBlocks; ++r) t += block_part[r][lane];
    const float ss = __shfl_sync(0xffffffffu, t, kOut);
    const float m = t * rsqrtf(ss / float(HC * hidden) + rms_eps);
    const float scale = w.scale[HEAD || lane < HC ? 0 : lane < 2 * HC ? 1 : 2];
    const float base = lane < kOut ? w.base[lane] : 0.0f;
    const float weight = mix_weight<HC>(lane, m * scale + base, kOut, hc_eps);
    if (lane < HC) pre_s[lane] = weight;
    asm volatile("bar.arrive 1, %0;" ::"n"(kClusterThreads) : "memory");
    cluster_arrive();  // x's sum of squares: this warp pushes none and reads none
    if (HEAD || rank != 0) return;
    // The mix for the next post step (every block has read this row's mix before the barrier
    // above), while the other warps make x.
    float comb = __shfl_sync(0xffffffffu, weight, (2 * HC + lane) & 31);
    sinkhorn_lanes<HC>(comb, lane, iters, hc_eps);
    float* mix_row = mix + row * hyper_mix_width(HC);
    if (lane < 2 * HC) mix_row[lane] = weight;
    if (lane < HC * HC) mix_row[2 * HC + lane] = comb;
    return;
  }
  asm volatile("bar.sync 1, %0;" ::"n"(kClusterThreads) : "memory");
  // x for the block's channels: the streams mixed by pre, then its sum of squares.
  float xv = 0.0f;
  if (tid < kChunk) {
#pragma unroll
    for (int i = 0; i < HC; ++i) xv = fmaf(pre_s[i], sv[i][tid], xv);
  }
  const float ss2 = warp_sum(xv * xv);
  if (lane == 0) red[warp] = ss2;
  asm volatile("bar.sync 2, %0;" ::"n"(kStreamThreads) : "memory");
  if (warp == 0) {
    float t = lane < kWarps ? red[lane] : 0.0f;
    t = warp_sum(t);
    if (lane < kClusterBlocks) *cluster.map_shared_rank(&ss_part[rank], lane) = t;
  }
  cluster_arrive();
  cluster_wait();
  float total = 0.0f;
#pragma unroll
  for (int r = 0; r < kClusterBlocks; ++r) total += ss_part[r];
  const float inv2 = rsqrtf(total / float(hidden) + rms_eps);
  if (tid < kChunk) x[row * hidden + first + tid] = xv * inv2 * nv;
}

template <bool HEAD>
void launch_cluster(int P, dim3 grid, cudaStream_t stream, const HyperDevice& w,
                    const float* block_out, float* streams, int64_t hidden, int iters, float hc_eps,
                    float rms_eps, const float* norm, float* mix, float* x) {
  auto go = [&](auto kernel) {
    launch_pdl_cluster(kernel, grid, kClusterThreads, 0, stream, kClusterBlocks, w, block_out,
                       streams, hidden, iters, hc_eps, rms_eps, norm, mix, x);
  };
  if (P == 1)
    go(hyper_cluster_kernel<HEAD, 1>);
  else if (P == 2)
    go(hyper_cluster_kernel<HEAD, 2>);
  else
    go(hyper_cluster_kernel<HEAD, 4>);
}

}  // namespace

bool hyper_cluster_supported(int64_t n, int64_t hc, int64_t hidden) {
  const int64_t per = int64_t(kClusterBlocks) * kLanesPerStream;
  if (hc != kHc || n <= 0 || n > 65535 || hidden % per != 0) return false;
  const int64_t P = hidden / per;
  return P == 1 || P == 2 || P == 4;
}

void hyper_fused_cluster(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                         int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps,
                         float rms_eps, const float* norm, bool head, float* mix, float* x,
                         cudaStream_t stream) {
  if (!hyper_cluster_supported(n, hc, hidden))
    throw std::invalid_argument(
        "cuda mHC: the cluster step needs hc 4 and hidden 1,024, 2,048 "
        "or 4,096 (hc " +
        std::to_string(hc) + ", hidden " + std::to_string(hidden) + ")");
  const int P = int(hidden / (int64_t(kClusterBlocks) * kLanesPerStream));
  const dim3 grid{unsigned(kClusterBlocks), unsigned(n)};
  if (head)
    launch_cluster<true>(P, grid, stream, w, block_out, streams, hidden, sinkhorn_iters, hc_eps,
                         rms_eps, norm, mix, x);
  else
    launch_cluster<false>(P, grid, stream, w, block_out, streams, hidden, sinkhorn_iters, hc_eps,
                          rms_eps, norm, mix, x);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
