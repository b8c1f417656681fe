// The KV compressor on the GPU (engine/compressor.h): one block per entry to emit; each thread
// pools its channels over the window's slots (softmax of gate + ape), then the block normalises
// the entry and rotates it at position w * rate.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"

namespace agentrt::engine::cuda {
namespace {

__global__ void compress_kernel(CompressorDevice c, const CompressJob* jobs, const int32_t* count,
                                DeviceRope rope, float eps) {
  pdl_begin();
  if (int(blockIdx.x) >= *count) return;  // padded slots (fixed grid for graph capture)
  extern __shared__ float out[];          // [dim]
  __shared__ float red[32];
  const CompressJob job = jobs[blockIdx.x];
  const int64_t dim = c.dim, rate = c.rate, w = job.w;
  const int64_t width = c.overlap ? 2 * dim : dim;
  const int64_t own = c.overlap ? dim : 0;
  const bool prev = c.overlap && w > 0;  // CSA: window w-1's first series joins entry w
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
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
    out[d] = acc / denom;
    ss = fmaf(out[d], out[d], ss);
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
  launch_pdl(compress_kernel, unsigned(slots), 128, size_t(c.dim) * 4, stream, c, jobs, count, rope,
             rms_eps);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
