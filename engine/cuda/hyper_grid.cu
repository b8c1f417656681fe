// The decode step's mHC boundary (hyper_fused: the post step of the sublayer before, the
// projection onto the mixing weights and the pre step) with every block finishing its own
// channels. hyper_fused leaves the pre step to the last block to arrive, which re-reads all the
// streams from the L2, mixes and normalises 4,096 channels alone and runs Sinkhorn: ~7 us of a
// ~11 us launch with one block working (seventeenth session's Nsight Compute). Here:
//
// - every block adds, beside its 24 partial projections, its part of the streams' Gram matrix
//   (10 sums for hc 4); the projection's RMS is its trace, and x's sum of squares is
//   pre^T G pre, so no second reduction over x is needed;
// - the blocks of a row meet at a barrier in global memory (a counter the last block resets and
//   a generation word it bumps; one row is 32 blocks, all resident at once), then each block
//   adds up the same partials in the same order, so all hold the same weights, and writes x
//   for its 128 channels from the streams it still holds in shared memory;
// - the pass's first boundary may take the embedding itself (tokens set): each block decodes
//   its channels of the rows' embeddings and writes them to every stream, so a decode step's
//   graph no longer starts with a kernel of its own for that;
// - Sinkhorn moves to the consumer: the mix keeps comb before Sinkhorn, and the next boundary's
//   spare warp runs the iterations on it before that launch's wait, while the kernel before it
//   still runs. The mix was written by a launch that finished before the kernel before this
//   one started: every kernel of the chain waits for its predecessor before it lets the next
//   one in (launch.cuh), and at least one kernel separates two boundaries.
#include <stdexcept>
#include <string>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/hyper_math.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

constexpr int kHc = 4;
constexpr int kDims = 128;                     // channels a block owns, of every stream
constexpr int kStreamThreads = kHc * kDims;    // one thread a (stream, channel)
constexpr int kThreads = kStreamThreads + 32;  // and the Sinkhorn warp
constexpr int kGram = kHc * (kHc + 1) / 2;     // G[j][k], j <= k
constexpr int kMaxSplits = 32;                 // hidden <= 4,096
constexpr int kMaxRows = 4;                    // rows a launch (all blocks resident at once)

// Index of G[j][k] (j <= k) among the kGram sums: row j's entries from k = j on.
__host__ __device__ constexpr int gram_index(int j, int k) {
  return j * kHc - j * (j - 1) / 2 + (k - j);
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The row's blocks meet: count[0] counts arrivals (the last resets it), gen[0] is bumped by
// the last one (it only ever grows, so it needs no reset), the others wait for it to move from
// the value read before they arrived. Every thread's writes before the call are visible to
// every block of the row after it.
__device__ __forceinline__ void row_barrier(unsigned* count, unsigned* gen, unsigned blocks) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned g = load_acquire(gen);  // before arriving: the bump needs this arrival
    if (atomicAdd(count, 1u) == blocks - 1) {
      *count = 0;
      __threadfence();
      atomicAdd(gen, 1u);
    } else {
      while (load_acquire(gen) == g) {
      }
    }
  }
  __syncthreads();
}

// kTwo: the sublayer's output is block_out + block_out2 (the shared and the routed experts'
// sums, each written by its own kernels: CudaOptions::moe_separate_sum).
// kScatter (CudaOptions::mhc_scatter; not the head, whose 4 projections and Gram sums take
// fewer shuffles as butterflies): each warp's 24 projections and its stream's 4 Gram sums in
// one reduce-scatter (hyper_math.cuh: 31 shuffles) instead of a butterfly each (5 per sum, ~130
// a warp). The 16 warps' ~2,100 shuffles took ~1 us of the boundary's critical path at one a
// clock an SM; the scatter adds the same pairs in the same order as the butterflies.
template <bool HEAD, bool kTwo = false, bool kScatter = false>
__global__ void __launch_bounds__(kThreads)
    hyper_grid_kernel(HyperDevice w, const float* block_out, const float* block_out2,
                      float* streams, int64_t hidden, int iters, float hc_eps, float rms_eps,
                      const float* norm, float* mix, float* x, float* partial, unsigned* arrived,
                      WeightMatrix embed, const int32_t* tokens) {
  constexpr int kOut = HEAD ? kHc : (2 + kHc) * kHc;  // projections
  constexpr int kSums = kOut + kGram;                 // and the Gram matrix
  constexpr int kWarps = kStreamThreads / 32;
  static_assert(kSums <= 64);
  __shared__ float red[kWarps][kSums];
  __shared__ float sv[kHc][kDims];  // the block's channels after the post step
  __shared__ float comb_s[kHc * kHc], post_s[kHc], pre_s[kHc], sums[kSums];
  const int64_t row = blockIdx.y, width = kHc * hidden;
  const int tid = int(threadIdx.x), lane = tid & 31, wi = tid >> 5;
  const unsigned splits = gridDim.x;
  const int k = tid / kDims, c = tid % kDims;
  const int64_t d = int64_t(blockIdx.x) * kDims + c;
  const bool spare = wi == kWarps;  // the Sinkhorn warp
  float* mix_row = mix + row * hyper_mix_width(kHc);
  // Constants are read into registers before the wait, off the path: the norm, the mixes' bases
  // and scales (warp 0 turns the sums into weights), each thread's column of fn.
  const float nv = tid < kDims ? norm[d] : 0.0f;
  const float mix_scale = wi == 0 ? w.scale[HEAD || lane < kHc ? 0 : lane < 2 * kHc ? 1 : 2] : 0.0f;
  const float mix_base = wi == 0 && lane < kOut ? w.base[lane] : 0.0f;
  float f[kOut];
  if (!spare) {
#pragma unroll
    for (int o = 0; o < kOut; ++o) f[o] = __ldg(w.fn + o * width + k * hidden + d);
  }
  if (spare) {
    if (block_out) {
#ifdef AGENTRT_PDL_EARLY_TRIGGER
      pdl_begin();  // kernels may run ahead of their predecessors: the mix is not safe before
#endif
      // The boundary before's mix (see the top of the file), comb as it left it.
      float v = lane < kHc * kHc ? __ldcg(mix_row + 2 * kHc + lane) : 0.0f;
      const float post = lane < kHc ? __ldcg(mix_row + kHc + lane) : 0.0f;
      sinkhorn_lanes<kHc>(v, lane, iters, hc_eps);
      if (lane < kHc * kHc) comb_s[lane] = v;
      if (lane < kHc) post_s[lane] = post;
      asm volatile("bar.arrive 1, %0;" ::"n"(kThreads) : "memory");
    }
    pdl_begin();
  } else {
    pdl_begin();
    float* s = streams + row * width;
    float v;
    if (block_out) {
      float old[kHc];
#pragma unroll
      for (int j = 0; j < kHc; ++j) old[j] = s[j * hidden + d];
      float y = block_out[row * hidden + d];
      if constexpr (kTwo) y += block_out2[row * hidden + d];
      asm volatile("bar.sync 1, %0;" ::"n"(kThreads) : "memory");  // comb_s, post_s
      v = post_s[k] * y;
#pragma unroll
      for (int j = 0; j < kHc; ++j) v = fmaf(comb_s[j * kHc + k], old[j], v);
    } else if (tokens) {
      v = decode_one(embed, tokens[row], d);  // the pass's first boundary: every stream a copy
    } else {
      v = s[k * hidden + d];
    }
    sv[k][c] = v;
    if constexpr (kScatter && !HEAD) {
      static_assert(kOut + kHc <= 32, "a warp's sums fit one reduce-scatter");
      asm volatile("bar.sync 2, %0;" ::"n"(kStreamThreads) : "memory");  // sv complete
      float a[32];
#pragma unroll
      for (int o = 0; o < kOut; ++o) a[o] = f[o] * v;
#pragma unroll
      for (int j = 0; j < kHc; ++j) a[kOut + j] = v * sv[j][c];  // G[k][j]
#pragma unroll
      for (int o = kOut + kHc; o < 32; ++o) a[o] = 0.0f;
      const float t = warp_reduce_scatter(a, lane);  // lane o: sum o
      if (lane < kOut) {
        red[wi][lane] = t;
      } else if (lane < kOut + kHc) {
        // As below: this warp's stream k gives the entries G[k][j] for j >= k, the others 0.
        const int j = lane - kOut;
        for (int i = 0; i <= j; ++i) red[wi][kOut + gram_index(i, j)] = i == k ? t : 0.0f;
      }
    } else {
      float a[kOut];
#pragma unroll
      for (int o = 0; o < kOut; ++o) a[o] = f[o] * v;
#pragma unroll
      for (int o = 0; o < kOut; ++o) {
        const float t = warp_sum(a[o]);
        if (lane == 0) red[wi][o] = t;
      }
      // The Gram entries of this warp's stream k: G[k][j] for j >= k, the others 0.
      asm volatile("bar.sync 2, %0;" ::"n"(kStreamThreads) : "memory");  // sv complete
#pragma unroll
      for (int j = 0; j < kHc; ++j)
#pragma unroll
        for (int i = 0; i <= j; ++i) {
          float t = 0.0f;
          if (i == k) t = warp_sum(v * sv[j][c]);
          if (lane == 0) red[wi][kOut + gram_index(i, j)] = t;
        }
    }
  }
  __syncthreads();  // every read of the old streams is done: they may be overwritten
  if ((block_out || tokens) && !spare) streams[row * width + k * hidden + d] = sv[k][c];
  float* p = partial + row * kSums * kMaxSplits;
  if (tid < kSums) {
    float t = 0.0f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) t += red[j][tid];
    p[tid * kMaxSplits + blockIdx.x] = t;
  }
  row_barrier(arrived + 2 * row, arrived + 2 * row + 1, splits);
  // Every block adds the row's partials in the same order: lane l slice l, then a butterfly.
  for (int o = wi; o < kSums; o += kThreads / 32) {
    float t = lane < int(splits) ? __ldcg(p + o * kMaxSplits + lane) : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (lane == 0) sums[o] = t;
  }
  __syncthreads();
  if (wi == 0) {
    float ss = 0.0f;  // the streams' sum of squares: the Gram matrix's trace
#pragma unroll
    for (int j = 0; j < kHc; ++j) ss += sums[kOut + gram_index(j, j)];
    const float m = (lane < kOut ? sums[lane] : 0.0f) * rsqrtf(ss / float(width) + rms_eps);
    const float weight = mix_weight<kHc>(lane, m * mix_scale + mix_base, kOut, hc_eps);
    if (lane < kHc) pre_s[lane] = weight;
    // pre and post final, comb before Sinkhorn (the next boundary's spare warp runs it).
    if (!HEAD && blockIdx.x == 0 && lane < kOut) mix_row[lane] = weight;
  }
  __syncthreads();
  if (tid < kDims) {
    float pre[kHc];
#pragma unroll
    for (int i = 0; i < kHc; ++i) pre[i] = pre_s[i];
    // x's sum of squares: pre^T G pre.
    float ss2 = 0.0f;
#pragma unroll
    for (int j = 0; j < kHc; ++j)
#pragma unroll
      for (int i = 0; i <= j; ++i)
        ss2 = fmaf((i == j ? 1.0f : 2.0f) * pre[i] * pre[j], sums[kOut + gram_index(i, j)], ss2);
    const float inv2 = rsqrtf(fmaxf(ss2, 0.0f) / float(hidden) + rms_eps);
    float xv = 0.0f;
#pragma unroll
    for (int i = 0; i < kHc; ++i) xv = fmaf(pre[i], sv[i][c], xv);
    x[row * hidden + d] = xv * inv2 * nv;
  }
}

}  // namespace

bool hyper_grid_supported(int64_t n, int64_t hc, int64_t hidden) {
  return hc == kHc && n > 0 && n <= kMaxRows && hidden % kDims == 0 && hidden / kDims <= kMaxSplits;
}

int64_t hyper_grid_scratch_floats(int64_t n, int64_t hc) {
  return n * ((2 + hc) * hc + hc * (hc + 1) / 2) * kMaxSplits;
}

void hyper_fused_grid(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                      int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps, float rms_eps,
                      const float* norm, bool head, float* mix, float* x, float* partial,
                      unsigned* arrived, cudaStream_t stream, const WeightMatrix* embed,
                      const int32_t* tokens, const float* block_out2, bool scatter) {
  if (!hyper_grid_supported(n, hc, hidden))
    throw std::invalid_argument(
        "cuda mHC: the grid step needs hc 4, 1-" + std::to_string(kMaxRows) +
        " rows and hidden a multiple of " + std::to_string(kDims) + " up to " +
        std::to_string(kDims * kMaxSplits) + " (hc " + std::to_string(hc) + ", rows " +
        std::to_string(n) + ", hidden " + std::to_string(hidden) + ")");
  const dim3 grid{unsigned(hidden / kDims), unsigned(n)};
  // The row barrier needs every block of the launch resident at once.
  const int sms = sm_count();
  int per_sm = 0;
  if (block_out2 && !block_out)
    throw std::invalid_argument("cuda mHC: the grid step's second sublayer output needs a first");
  auto kernel = head ? (block_out2 ? hyper_grid_kernel<true, true> : hyper_grid_kernel<true>)
                : !scatter
                    ? (block_out2 ? hyper_grid_kernel<false, true> : hyper_grid_kernel<false>)
                : block_out2 ? hyper_grid_kernel<false, true, true>
                             : hyper_grid_kernel<false, false, true>;
  AGENTRT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  if (int64_t(sms) * per_sm < int64_t(grid.x) * grid.y)
    throw std::invalid_argument("cuda mHC: the grid step's " + std::to_string(grid.x * grid.y) +
                                " blocks do not fit on the GPU at once (" + std::to_string(sms) +
                                " SMs x " + std::to_string(per_sm) + ")");
  if (embed && (block_out || !tokens || embed->cols != hidden))
    throw std::invalid_argument("cuda mHC: the grid step takes the embedding (" +
                                std::to_string(embed->cols) + " columns) only as the first " +
                                "boundary's streams, with tokens, for hidden " +
                                std::to_string(hidden));
  launch_pdl(kernel, grid, kThreads, 0, stream, w, block_out, block_out2, streams, hidden,
             sinkhorn_iters, hc_eps, rms_eps, norm, mix, x, partial, arrived,
             embed ? *embed : WeightMatrix{}, embed ? tokens : nullptr);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
