// The KV compressor on the GPU (engine/compressor.h): one block per entry to emit; each thread
// pools its channels over the window's slots (softmax of gate + ape), then the block normalises
// the entry and rotates it at position w * rate.
#include <algorithm>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

// Entry w's pooled value of channel d: the softmax over the window's rows (CSA: window w - 1's
// first series too) of gate + ape, weighting the rows' kv. With R >= rate every row's gate and kv
// are loaded once, all at once, into registers (one round trip each instead of one a row, twice
// for the gate); otherwise row by row. The same operations in the same order either way.
template <int R>
__device__ __forceinline__ float pool_channel(const CompressorDevice& c, const CompressJob& job,
                                              int64_t d) {
  const int64_t rate = c.rate, w = job.w;
  const int64_t width = c.overlap ? 2 * c.dim : c.dim;
  const int64_t own = c.overlap ? c.dim : 0;
  const bool prev = c.overlap && w > 0;  // CSA: window w-1's first series joins entry w
  if (R > 0 && rate <= R) {
    float g[2 * R], kv[2 * R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (j >= rate) break;
      if (prev) {
        const int64_t p = (w - 1) * rate + j;
        g[j] = job.raw_gate[p * width + d] + c.ape[j * width + d];
        kv[j] = job.raw_kv[p * width + d];
      }
      const int64_t p = w * rate + j;
      g[R + j] = job.raw_gate[p * width + own + d] + c.ape[j * width + own + d];
      kv[R + j] = job.raw_kv[p * width + own + d];
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (prev && j < rate) mx = fmaxf(mx, g[j]);
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (j < rate) mx = fmaxf(mx, g[R + j]);
    float denom = 0.0f, acc = 0.0f;
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (prev && j < rate) {
        const float e = expf(g[j] - mx);
        denom += e;
        acc += e * kv[j];
      }
#pragma unroll
    for (int j = 0; j < R; ++j)
      if (j < rate) {
        const float e = expf(g[R + j] - mx);
        denom += e;
        acc += e * kv[R + j];
      }
    return acc / denom;
  }
  float mx = -INFINITY;
  if (prev)
    for (int64_t j = 0; j < rate; ++j)
      mx = fmaxf(mx, job.raw_gate[((w - 1) * rate + j) * width + d] + c.ape[j * width + d]);
  for (int64_t j = 0; j < rate; ++j)
    mx = fmaxf(mx, job.raw_gate[(w * rate + j) * width + own + d] + c.ape[j * width + own + d]);
  float denom = 0.0f, acc = 0.0f;
  if (prev)
    for (int64_t j = 0; j < rate; ++j) {
      const int64_t p = (w - 1) * rate + j;
      const float e = expf(job.raw_gate[p * width + d] + c.ape[j * width + d] - mx);
      denom += e;
      acc += e * job.raw_kv[p * width + d];
    }
  for (int64_t j = 0; j < rate; ++j) {
    const int64_t p = w * rate + j;
    const float e = expf(job.raw_gate[p * width + own + d] + c.ape[j * width + own + d] - mx);
    denom += e;
    acc += e * job.raw_kv[p * width + own + d];
  }
  return acc / denom;
}

// Rates up to this many rows pool from registers (V4's CSA: 4; HCA's 128 loops).
constexpr int kRegisterRate = 8;
// Up to one thread a channel: a decode step's entry is a chain of round trips per channel, and
// with 128 threads each thread walked four channels of a 512-wide entry one after another (an
// H100 traced 18 us for a CSA entry, every fourth decode step, on the attention's path).
constexpr int kMaxCompressThreads = 512;

__global__ void __launch_bounds__(kMaxCompressThreads)
    compress_kernel(CompressorDevice c, const CompressJob* jobs, const int32_t* count,
                    DeviceRope rope, float eps) {
  pdl_begin();
  if (int(blockIdx.x) >= *count) return;  // padded slots (fixed grid for graph capture)
  extern __shared__ float out[];          // [dim]
  __shared__ float red[32];
  const CompressJob job = jobs[blockIdx.x];
  const int64_t dim = c.dim, rate = c.rate, w = job.w;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    const float v = pool_channel<kRegisterRate>(c, job, d);
    out[d] = v;
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_sum(ss, red) / float(dim) + eps);
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) out[d] = out[d] * inv * c.norm[d];
  __syncthreads();
  const float fpos = float(w * rate);
  for (int64_t i = threadIdx.x; i < rope.dim / 2; i += blockDim.x) {
    const float angle = rope.inv_freq[i] * fpos;
    const float cs = float(cos(double(angle))) * rope.scaling;
    const float sn = float(sin(double(angle))) * rope.scaling;
    float* r = out + dim - rope.dim + 2 * i;
    const float a = r[0], b = r[1];
    r[0] = a * cs - b * sn;
    r[1] = b * cs + a * sn;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) job.entries[w * dim + d] = out[d];
}

}  // namespace

void compress_entries(const CompressorDevice& c, const CompressJob* jobs, const int32_t* count,
                      int64_t slots, const DeviceRope& rope, float rms_eps, cudaStream_t stream) {
  if (slots <= 0) return;
  const int64_t threads = std::min<int64_t>((c.dim + 31) / 32 * 32, kMaxCompressThreads);
  launch_pdl(compress_kernel, unsigned(slots), unsigned(threads), size_t(c.dim) * 4, stream, c,
             jobs, count, rope, rms_eps);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
