// mHC on the GPU (engine/hyper_connection.h): one block per row computes the mixing weights
// (the projection of the RMS-normed streams, sigmoid gates, row softmax + Sinkhorn on the tiny
// hc x hc matrix in shared memory), collapses the streams and normalises the block input.
#include <stdexcept>
#include <string>

#include "engine/cuda/async_copy.cuh"
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/hyper_math.cuh"
#include "engine/cuda/hyper_prefill.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/hyper_connection.h"

namespace agentrt::engine::cuda {
namespace {

constexpr int kThreads = 256;
// One block per row combines the streams: wide, so one decode row's loads go out at once.
constexpr int kPreThreads = 1024;

// transformers DeepseekV4HyperConnection: row softmax (+eps), then Sinkhorn starting with a
// column normalisation, alternating rows/columns, each with + eps in the denominator. Lane i <
// hc * hc of the first warp owns element i (hc * hc <= 32) and reads the others of its row or
// column by shuffles, in the CPU's order; the rest of the block waits at the caller's barrier.
__device__ void sinkhorn_warp(float* comb, int64_t hc, int iters, float eps) {
  const int i = int(threadIdx.x), n = int(hc * hc), r = i / int(hc), c = i % int(hc);
  const bool own = i < n;
  float v = own ? comb[i] : 0.0f;
  auto row_sum = [&](float x) {
    float s = 0.0f;
    for (int j = 0; j < hc; ++j) s += __shfl_sync(0xffffffffu, x, own ? r * int(hc) + j : 0);
    return s;
  };
  auto col_sum = [&](float x) {
    float s = 0.0f;
    for (int j = 0; j < hc; ++j) s += __shfl_sync(0xffffffffu, x, own ? j * int(hc) + c : 0);
    return s;
  };
  float mx = -INFINITY;
  for (int j = 0; j < hc; ++j)
    mx = fmaxf(mx, __shfl_sync(0xffffffffu, v, own ? r * int(hc) + j : 0));
  v = expf(v - mx);
  v = v / row_sum(v) + eps;
  v = v / (col_sum(v) + eps);
  for (int it = 1; it < iters; ++it) {
    v = v / (row_sum(v) + eps);
    v = v / (col_sum(v) + eps);
  }
  if (own) comb[i] = v;
}

// The same for hc * hc <= blockDim.x: thread i owns element i; called by the whole block.
__device__ void sinkhorn_block(float* comb, int64_t hc, int iters, float eps) {
  const int64_t i = threadIdx.x, r = i / hc, c = i % hc;
  const bool own = i < hc * hc;
  auto store = [&](float v) {
    __syncthreads();
    if (own) comb[i] = v;
    __syncthreads();
  };
  float v = 0.0f;
  if (own) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < hc; ++j) mx = fmaxf(mx, comb[r * hc + j]);
    v = expf(comb[i] - mx);
  }
  store(v);
  if (own) {
    float s = 0;
    for (int64_t j = 0; j < hc; ++j) s += comb[r * hc + j];
    v = comb[i] / s + eps;
  }
  store(v);
  auto columns = [&] {
    if (own) {
      float s = 0;
      for (int64_t j = 0; j < hc; ++j) s += comb[j * hc + c];
      v = comb[i] / (s + eps);
    }
    store(v);
  };
  auto rows = [&] {
    if (own) {
      float s = 0;
      for (int64_t j = 0; j < hc; ++j) s += comb[r * hc + j];
      v = comb[i] / (s + eps);
    }
    store(v);
  };
  columns();
  for (int it = 1; it < iters; ++it) {
    rows();
    columns();
  }
}

constexpr int kSplits = 8;          // the projection's width is split over this many blocks
constexpr int64_t kGemmRows = 256;  // from this many rows on (with a cuBLAS handle) a GEMM

// Partial sums of fn[o] . streams[row] and of streams[row]^2 over one of kSplits slices of the
// width: one block per (output, row, slice), so even a single decode row fills the GPU.
__global__ void hyper_project_kernel(const float* fn, const float* streams, int64_t width,
                                     int64_t outputs, float* partial) {
  __shared__ float red[32];
  const int64_t o = blockIdx.x, row = blockIdx.y, slice = blockIdx.z;
  const int64_t len = (width + kSplits - 1) / kSplits, begin = slice * len;
  const int64_t end = begin + len < width ? begin + len : width;
  // fn is a constant: its slice is fetched into the L2 while the kernel before finishes.
  const char* fslice = reinterpret_cast<const char*>(fn + o * width + begin);
  if (threadIdx.x == 0 && row == 0 && end > begin &&
      (reinterpret_cast<uintptr_t>(fslice) & 15) == 0 && ((end - begin) * 4) % 16 == 0)
    prefetch_l2(fslice, uint32_t((end - begin) * 4));
  pdl_begin();
  const float* s = streams + row * width;
  const float* f = fn + o * width;
  float ss = 0.0f, acc = 0.0f;
  if (width % 4 == 0 && len % 4 == 0) {
    for (int64_t i = begin / 4 + threadIdx.x; i < end / 4; i += blockDim.x) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(f) + i);
      const float4 b = reinterpret_cast<const float4*>(s)[i];
      acc += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      ss += b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      acc = fmaf(f[i], s[i], acc);
      ss = fmaf(s[i], s[i], ss);
    }
  }
  ss = block_sum(ss, red);
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    float* p = partial + (row * (outputs + 1)) * kSplits;
    p[o * kSplits + slice] = acc;
    if (o == 0) p[outputs * kSplits + slice] = ss;  // the row's sum of squares, per slice
  }
}

// The same partial sums for many rows: one block per row, warp w owning slice w (kSplits warps),
// so each row's streams are read once for all outputs instead of once per output.
constexpr int kRowMaxOutputs = 24;  // (2 + 4) * 4: hc = 4

__global__ void hyper_project_rows_kernel(const float* fn, const float* streams, int64_t width,
                                          int64_t outputs, float* partial) {
  pdl_begin();
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31, slice = threadIdx.x >> 5;
  const int64_t len = width / kSplits, begin = slice * len;  // width % (4 * kSplits) == 0
  const float4* s = reinterpret_cast<const float4*>(streams + row * width + begin);
  float acc[kRowMaxOutputs], ss = 0.0f;
#pragma unroll
  for (int o = 0; o < kRowMaxOutputs; ++o) acc[o] = 0.0f;
  for (int64_t i = lane; i < len / 4; i += 32) {
    const float4 b = s[i];
    ss += b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
#pragma unroll
    for (int o = 0; o < kRowMaxOutputs; ++o)
      if (o < outputs) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(fn + o * width + begin) + i);
        acc[o] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      }
  }
  float* p = partial + (row * (outputs + 1)) * kSplits;
#pragma unroll
  for (int o = 0; o < kRowMaxOutputs; ++o)
    if (o < outputs) {
      const float v = warp_sum(acc[o]);
      if (lane == 0) p[o * kSplits + slice] = v;
    }
  ss = warp_sum(ss);
  if (lane == 0) p[outputs * kSplits + slice] = ss;
}

// Each row's sum of squares into projected[row][outputs] (the GEMM path's last column).
__global__ void sum_squares_kernel(const float* streams, int64_t width, int64_t outputs,
                                   float* projected) {
  pdl_begin();
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const float* s = streams + row * width;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) ss = fmaf(s[i], s[i], ss);
  ss = block_sum(ss, red);
  if (threadIdx.x == 0) projected[row * (outputs + 1) + outputs] = ss;
}

__global__ void hyper_pre_kernel(HyperDevice w, const float* streams, const float* projected,
                                 int splits, int64_t hc, int64_t hidden, int iters, float hc_eps,
                                 float rms_eps, const float* norm, bool head, float* mix,
                                 float* x) {
  pdl_begin();
  __shared__ float red[32];
  __shared__ float mixes[(2 + kMaxHcMult) * kMaxHcMult];
  __shared__ float weights[2 * kMaxHcMult + kMaxHcMult * kMaxHcMult];  // pre, post, comb
  const int64_t row = blockIdx.x, width = hc * hidden;
  const float* s = streams + row * width;
  const int64_t outputs = head ? hc : (2 + hc) * hc;
  {
    const float* p = projected + row * (outputs + 1) * splits;
    float ss = 0.0f;
    for (int k = 0; k < splits; ++k) ss += p[outputs * splits + k];
    const float inv = rsqrtf(ss / float(width) + rms_eps);
    for (int64_t o = threadIdx.x; o < outputs; o += blockDim.x) {
      float v = 0.0f;
      for (int k = 0; k < splits; ++k) v += p[o * splits + k];
      mixes[o] = v * inv;
    }
  }
  __syncthreads();
  float* pre = weights;
  float* post = weights + hc;
  float* comb = weights + 2 * hc;
  for (int64_t i = threadIdx.x; i < hc; i += blockDim.x) {
    pre[i] = sigmoidf(mixes[i] * w.scale[0] + w.base[i]) + hc_eps;
    if (!head) post[i] = 2.0f * sigmoidf(mixes[hc + i] * w.scale[1] + w.base[hc + i]);
  }
  if (!head) {
    for (int64_t i = threadIdx.x; i < hc * hc; i += blockDim.x)
      comb[i] = mixes[2 * hc + i] * w.scale[2] + w.base[2 * hc + i];
    if (hc * hc <= 32) {
      __syncthreads();
      if (threadIdx.x < 32) sinkhorn_warp(comb, hc, iters, hc_eps);
    } else {
      sinkhorn_block(comb, hc, iters, hc_eps);  // synchronises the block
    }
  }
  __syncthreads();
  if (!head && mix)
    for (int64_t i = threadIdx.x; i < hyper_mix_width(hc); i += blockDim.x)
      mix[row * hyper_mix_width(hc) + i] = weights[i];

  float* xr = x + row * hidden;
  float ss2 = 0.0f;
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
    float sv[kMaxHcMult];  // every stream's load in flight at once
#pragma unroll
    for (int64_t i = 0; i < kMaxHcMult; ++i) sv[i] = i < hc ? s[i * hidden + d] : 0.0f;
    float v = 0.0f;
#pragma unroll
    for (int64_t i = 0; i < kMaxHcMult; ++i)
      if (i < hc) v = fmaf(pre[i], sv[i], v);
    xr[d] = v;
    ss2 = fmaf(v, v, ss2);
  }
  const float inv2 = rsqrtf(block_sum(ss2, red) / float(hidden) + rms_eps);
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) xr[d] = xr[d] * inv2 * norm[d];
}

// The pre step for hc = HC and hidden <= kXThreads * kXDims (the checkpoint's 4 x 4096), split
// so the Sinkhorn iterations are off the path to x: warp 0 turns the projection into the
// mixing weights and hands `pre` to the other kXThreads threads through a named barrier, then
// runs Sinkhorn and writes the mix while they combine the streams (loaded right after the wait,
// their norm weights before it) and normalise x, all in registers.
constexpr int kXThreads = 512;
constexpr int kXDims = 8;
constexpr int kSplitPreThreads = 32 + kXThreads;

// The pre step's work for one row once the projection's partial sums are in p ([outputs + 1]
// [splits], the sum of squares last), by kSplitPreThreads threads (the whole block): every warp
// first adds up some of the outputs' slices (one warp adding all 25 was ~125 dependent shuffles
// on the step's critical path), then warp 0 turns the sums into the mixing weights and hands
// `pre` to the other kXThreads threads through a named barrier, then runs Sinkhorn and writes
// the mix while they combine the streams (loaded right after the wait, their norm weights
// before it) and normalise x, all in registers. wait: call pdl_begin() (a kernel of its own)
// where the inputs are first read. Loads bypass L1: in the fused kernel below, other blocks of
// the grid have just written them.
// STAGED (prefill's split kernel): the row's streams come into dynamic shared memory
// ([HC][hidden]) by cp.async, each thread copying the values it later mixes and waiting for its
// own copies, so they hold no registers while the slices are summed and the weights made.
template <int HC, bool HEAD, bool STAGED = false>
__device__ __forceinline__ void pre_from_partials(const HyperDevice& w, const float* s,
                                                  const float* p, int splits, int64_t hidden,
                                                  int iters, float hc_eps, float rms_eps,
                                                  const float* norm, float* mix_row, float* xr,
                                                  bool wait) {
  __shared__ float pre_shared[HC];
  __shared__ float red[kXThreads / 32];
  constexpr bool head = HEAD;
  constexpr int outputs = HEAD ? HC : (2 + HC) * HC;
  __shared__ float sums[outputs + 1];
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int xt = tid - 32;
  float base = 0.0f, scale = 0.0f;
  float nv[kXDims];
  if (tid < 32) {
    base = lane < outputs ? w.base[lane] : 0.0f;
    scale = w.scale[head || lane < HC ? 0 : lane < 2 * HC ? 1 : 2];  // head: one scale
  } else {
#pragma unroll
    for (int j = 0; j < kXDims; ++j) {
      const int64_t d = xt + int64_t(j) * kXThreads;
      nv[j] = d < hidden ? norm[d] : 0.0f;
    }
  }
  if (wait) pdl_begin();
  float sv[kXDims][HC];
  extern __shared__ float staged[];  // STAGED: [HC][hidden]
  if (tid >= 32) {
#pragma unroll
    for (int j = 0; j < kXDims; ++j) {
      const int64_t d = xt + int64_t(j) * kXThreads;
#pragma unroll
      for (int i = 0; i < HC; ++i) {
        if constexpr (STAGED) {
          if (d < hidden) cp_async_4(staged + i * hidden + d, s + i * hidden + d);
        } else {
          sv[j][i] = d < hidden ? __ldcg(s + i * hidden + d) : 0.0f;
        }
      }
    }
    if constexpr (STAGED) cp_async_commit();
  }
  // Output o's slices: lane k adds slices k, k + 32, ..., then the warp's butterfly (the order
  // one warp used for all of them, so the same sums).
  for (int o = warp; o <= outputs; o += kSplitPreThreads / 32) {
    float part = 0.0f;
    for (int k = lane; k < splits; k += 32) part += __ldcg(p + o * splits + k);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
    if (lane == 0) sums[o] = part;
  }
  __syncthreads();
  if (tid < 32) {
    const float v = lane < outputs ? sums[lane] : 0.0f;
    const float ss = sums[outputs];
    const float m = v * rsqrtf(ss / float(HC * hidden) + rms_eps);
    const float weight = mix_weight<HC>(lane, m * scale + base, outputs, hc_eps);
    if (lane < HC) pre_shared[lane] = weight;
    asm volatile("bar.arrive 1, %0;" ::"n"(kSplitPreThreads) : "memory");
    if (head || !mix_row) return;
    float comb = __shfl_sync(0xffffffffu, weight, (2 * HC + lane) & 31);
    sinkhorn_lanes<HC>(comb, lane, iters, hc_eps);
    if (lane < 2 * HC) mix_row[lane] = weight;
    if (lane < HC * HC) mix_row[2 * HC + lane] = comb;
    return;
  }
  asm volatile("bar.sync 1, %0;" ::"n"(kSplitPreThreads) : "memory");
  float pre[HC];
#pragma unroll
  for (int i = 0; i < HC; ++i) pre[i] = pre_shared[i];
  if constexpr (STAGED) {
    cp_async_wait_all();  // this thread's own copies: it reads only what it copied
#pragma unroll
    for (int j = 0; j < kXDims; ++j) {
      const int64_t d = xt + int64_t(j) * kXThreads;
#pragma unroll
      for (int i = 0; i < HC; ++i) sv[j][i] = d < hidden ? staged[i * hidden + d] : 0.0f;
    }
  }
  float v[kXDims], ss2 = 0.0f;
#pragma unroll
  for (int j = 0; j < kXDims; ++j) {
    v[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < HC; ++i) v[j] = fmaf(pre[i], sv[j][i], v[j]);
    ss2 = fmaf(v[j], v[j], ss2);
  }
  ss2 = warp_sum(ss2);
  if ((xt & 31) == 0) red[xt >> 5] = ss2;
  asm volatile("bar.sync 2, %0;" ::"n"(kXThreads) : "memory");
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kXThreads / 32; ++i) total += red[i];
  const float inv2 = rsqrtf(total / float(hidden) + rms_eps);
#pragma unroll
  for (int j = 0; j < kXDims; ++j) {
    const int64_t d = xt + int64_t(j) * kXThreads;
    if (d < hidden) xr[d] = v[j] * inv2 * nv[j];
  }
}

// One block a row. Not STAGED (the default): two blocks an SM (56 registers, a few spilled):
// with its 74 registers one block of 544 threads filled the register file, so each SM had one
// row's loads in flight and waited out each row's chain of reductions and barriers alone (on an
// H100 the 16K fp8 prefill's mHC 17.1 -> 15.6 ms, thirty-first session). STAGED
// (CudaOptions::prefill_pre_staged, off: not yet run on a GPU): the row's streams come through
// shared memory (64 KB a block at V4-Flash's width), not registers, so three blocks fit an SM;
// at two blocks the kernel's spill stores waited on the stream loads (~25% of its stall
// samples, thirty-first session).
template <int HC, bool HEAD, bool STAGED>
__global__ void __launch_bounds__(kSplitPreThreads, STAGED ? 3 : 2)
    hyper_pre_split_kernel(HyperDevice w, const float* streams, const float* projected, int splits,
                           int64_t hidden, int iters, float hc_eps, float rms_eps,
                           const float* norm, float* mix, float* x) {
  const int64_t row = blockIdx.x;
  constexpr int outputs = HEAD ? HC : (2 + HC) * HC;
  pre_from_partials<HC, HEAD, STAGED>(
      w, streams + row * HC * hidden, projected + row * (outputs + 1) * splits, splits, hidden,
      iters, hc_eps, rms_eps, norm, mix ? mix + row * hyper_mix_width(HC) : nullptr,
      x + row * hidden, true);
}

// The post step of the sublayer before, the projection and the pre step in one launch (decode
// batches): block b of a row owns kFusedDims channels of every stream. It applies the post step
// to them in place (streams = post * block_out + comb^T streams, with the mix the pre step
// before left), adds their part of the projection onto the outputs and of the sum of squares,
// and the last block of the row to finish runs the pre step over all of them.
constexpr int kFusedDims = 128;

template <int HC, bool HEAD>
__global__ void __launch_bounds__(kSplitPreThreads)
    hyper_fused_kernel(HyperDevice w, const float* block_out, float* streams, int64_t hidden,
                       int iters, float hc_eps, float rms_eps, const float* norm, float* mix,
                       float* x, float* partial, unsigned* arrived) {
  constexpr int kOutputs = HEAD ? HC : (2 + HC) * HC;
  static_assert(HC * kFusedDims == kXThreads);
  __shared__ float red[kXThreads / 32][kOutputs + 1];
  __shared__ bool last;
  const int64_t row = blockIdx.y, width = HC * hidden;
  const int tid = int(threadIdx.x), lane = tid & 31, wi = tid >> 5, splits = int(gridDim.x);
  const int k = tid / kFusedDims;
  const int64_t d = int64_t(blockIdx.x) * kFusedDims + tid % kFusedDims, i = k * hidden + d;
  // fn is a constant: the block's columns are fetched into the L2 while the kernel before runs.
  if (tid < kOutputs * HC)
    prefetch_l2(w.fn + (tid / HC) * width + (tid % HC) * hidden + blockIdx.x * kFusedDims,
                kFusedDims * 4);
  pdl_begin();
  float* s = streams + row * width;
  float v = 0.0f;
  if (tid < kXThreads) {
    if (block_out) {
      const float* m = mix + row * hyper_mix_width(HC);
      float old[HC];
#pragma unroll
      for (int j = 0; j < HC; ++j) old[j] = s[j * hidden + d];
      v = m[HC + k] * block_out[row * hidden + d];
#pragma unroll
      for (int j = 0; j < HC; ++j) v = fmaf(m[2 * HC + j * HC + k], old[j], v);
    } else {
      v = s[i];
    }
    float a[kOutputs];
#pragma unroll
    for (int o = 0; o < kOutputs; ++o) a[o] = __ldg(w.fn + o * width + i) * v;
#pragma unroll
    for (int o = 0; o < kOutputs; ++o) {
      const float t = warp_sum(a[o]);
      if (lane == 0) red[wi][o] = t;
    }
    const float ss = warp_sum(v * v);
    if (lane == 0) red[wi][kOutputs] = ss;
  }
  __syncthreads();  // every read of the old streams is done: they may be overwritten
  if (block_out && tid < kXThreads) s[i] = v;
  if (tid <= kOutputs) {
    float t = 0.0f;
#pragma unroll
    for (int j = 0; j < kXThreads / 32; ++j) t += red[j][tid];
    partial[(row * (kOutputs + 1) + tid) * splits + blockIdx.x] = t;
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(arrived + row, 1u) == unsigned(splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (tid == 0) arrived[row] = 0;  // ready for the next launch
  pre_from_partials<HC, HEAD>(
      w, s, partial + row * (kOutputs + 1) * splits, splits, hidden, iters, hc_eps, rms_eps, norm,
      HEAD ? nullptr : mix + row * hyper_mix_width(HC), x + row * hidden, false);
}

// HC > 0: hc known at compile time (V4's 4), so the old streams stay in registers; 0: any hc up
// to kMaxHcMult, through a local array. The same fmaf chain either way.
template <int HC>
__global__ void hyper_post_kernel(const float* mix, const float* block_out, int64_t hc_arg,
                                  int64_t hidden, float* streams) {
  pdl_begin();
  const int64_t hc = HC > 0 ? HC : hc_arg;
  const int64_t row = blockIdx.y;
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= hidden) return;
  const float* m = mix + row * hyper_mix_width(hc);
  const float* post = m + hc;
  const float* comb = m + 2 * hc;
  float* s = streams + row * hc * hidden;
  float old[HC > 0 ? HC : kMaxHcMult];
#pragma unroll
  for (int64_t j = 0; j < hc; ++j) old[j] = s[j * hidden + d];
  const float y = block_out[row * hidden + d];
#pragma unroll
  for (int64_t k = 0; k < hc; ++k) {
    float v = post[k] * y;
#pragma unroll
    for (int64_t j = 0; j < hc; ++j) v = fmaf(comb[j * hc + k], old[j], v);
    s[k * hidden + d] = v;
  }
}

}  // namespace

void hyper_pre(const HyperDevice& w, const float* streams, int64_t n, int64_t hc, int64_t hidden,
               int sinkhorn_iters, float hc_eps, float rms_eps, const float* norm, bool head,
               float* mix, float* x, float* projected, cudaStream_t stream, cublasHandle_t blas) {
  if (n <= 0) return;
  const int64_t outputs = head ? hc : (2 + hc) * hc;
  const int64_t width = hc * hidden;
  // Many rows: one float32 GEMM (every row against all outputs; a kernel per row would read the
  // whole fn, 1.5 MB at V4-Flash's width, from the L2 once per row) and the sums of squares.
  // Decode batches keep the per-output blocks: one block per row would leave the GPU idle.
  int splits = kSplits;
  if (blas && n >= kGemmRows) {
    splits = 1;  // projected: [n][outputs + 1]
    check_cublas(cublasSetStream(blas, stream), "cublasSetStream");
    const float one = 1.0f, zero = 0.0f;
    check_cublas(
        cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(outputs), int(n), int(width), &one, w.fn,
                    int(width), streams, int(width), &zero, projected, int(outputs + 1)),
        "cublasSgemm (mHC projection)");
    launch_pdl(sum_squares_kernel, unsigned(n), kThreads, 0, stream, streams, width, outputs,
               projected);
  } else if (n >= 256 && outputs <= kRowMaxOutputs && width % (4 * kSplits) == 0) {
    launch_pdl(hyper_project_rows_kernel, unsigned(n), 32 * kSplits, 0, stream, w.fn, streams,
               width, outputs, projected);
  } else {
    launch_pdl(hyper_project_kernel, dim3{unsigned(outputs), unsigned(n), unsigned(kSplits)},
               kThreads, 0, stream, w.fn, streams, width, outputs, projected);
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  hyper_pre_projected(w, streams, projected, splits, n, hc, hidden, sinkhorn_iters, hc_eps, rms_eps,
                      norm, head, mix, x, stream);
}

void hyper_pre_projected(const HyperDevice& w, const float* streams, const float* projected,
                         int splits, int64_t n, int64_t hc, int64_t hidden, int sinkhorn_iters,
                         float hc_eps, float rms_eps, const float* norm, bool head, float* mix,
                         float* x, cudaStream_t stream, bool staged) {
  if (n <= 0) return;
  if (hc == 4 && hidden <= int64_t(kXThreads) * kXDims) {
    if (staged) {
      auto kernel =
          head ? hyper_pre_split_kernel<4, true, true> : hyper_pre_split_kernel<4, false, true>;
      const size_t bytes = size_t(4 * hidden) * sizeof(float);
      AGENTRT_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
      launch_pdl(kernel, unsigned(n), kSplitPreThreads, bytes, stream, w, streams, projected,
                 splits, hidden, sinkhorn_iters, hc_eps, rms_eps, norm, mix, x);
    } else {
      launch_pdl(
          head ? hyper_pre_split_kernel<4, true, false> : hyper_pre_split_kernel<4, false, false>,
          unsigned(n), kSplitPreThreads, 0, stream, w, streams, projected, splits, hidden,
          sinkhorn_iters, hc_eps, rms_eps, norm, mix, x);
    }
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  launch_pdl(hyper_pre_kernel, unsigned(n), kPreThreads, 0, stream, w, streams, projected, splits,
             hc, hidden, sinkhorn_iters, hc_eps, rms_eps, norm, head, mix, x);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

bool hyper_fused_supported(int64_t n, int64_t hc, int64_t hidden) {
  return hc == 4 && n > 0 && n <= 65535 && hidden % kFusedDims == 0 &&
         hidden <= int64_t(kXThreads) * kXDims;
}

int64_t hyper_fused_scratch_floats(int64_t n, int64_t hc, int64_t hidden) {
  return n * ((2 + hc) * hc + 1) * (hidden / kFusedDims);
}

void hyper_fused(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                 int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps, float rms_eps,
                 const float* norm, bool head, float* mix, float* x, float* partial,
                 unsigned* arrived, cudaStream_t stream) {
  if (!hyper_fused_supported(n, hc, hidden))
    throw std::invalid_argument("cuda mHC: the fused step needs hc 4 and hidden a multiple of " +
                                std::to_string(kFusedDims) + " up to " +
                                std::to_string(kXThreads * kXDims) + " (hc " + std::to_string(hc) +
                                ", hidden " + std::to_string(hidden) + ")");
  const dim3 grid{unsigned(hidden / kFusedDims), unsigned(n)};
  if (head)
    launch_pdl(hyper_fused_kernel<4, true>, grid, kSplitPreThreads, 0, stream, w, block_out,
               streams, hidden, sinkhorn_iters, hc_eps, rms_eps, norm, mix, x, partial, arrived);
  else
    launch_pdl(hyper_fused_kernel<4, false>, grid, kSplitPreThreads, 0, stream, w, block_out,
               streams, hidden, sinkhorn_iters, hc_eps, rms_eps, norm, mix, x, partial, arrived);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void hyper_post(const float* mix, const float* block_out, int64_t n, int64_t hc, int64_t hidden,
                float* streams, cudaStream_t stream) {
  if (n <= 0) return;
  const dim3 grid(unsigned((hidden + 255) / 256), unsigned(n));
  launch_pdl(hc == 4 ? hyper_post_kernel<4> : hyper_post_kernel<0>, grid, 256, 0, stream, mix,
             block_out, hc, hidden, streams);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
