// RMSNorm, interleaved partial RoPE, embedding gather, SwiGLU and cache appends.
#include <stdexcept>
#include <string>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

unsigned blocks_for(int64_t total, int threads) {
  return unsigned(std::min<int64_t>((total + threads - 1) / threads, 1 << 20));
}

__global__ void rms_norm_kernel(const float* x, const float* weight, int64_t dim, float eps,
                                float* out) {
  pdl_begin();
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * dim;
  float* orow = out + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    orow[i] = weight ? xr[i] * inv * weight[i] : xr[i] * inv;
}

__global__ void rope_kernel(float* x, int64_t rows, int64_t heads, int64_t head_dim,
                            const int64_t* pos, DeviceRope rope, float sign) {
  pdl_begin();
  const int64_t half = rope.dim / 2;
  const int64_t total = rows * heads * half;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pair = i % half, rh = i / half, row = rh / heads;
    // transformers: float32 angle, then cos/sin (the CPU engine rounds double cos/sin to float).
    const float angle = rope.inv_freq[pair] * float(pos[row]);
    const float c = float(cos(double(angle))) * rope.scaling;
    const float s = sign * float(sin(double(angle))) * rope.scaling;
    float* r = x + rh * head_dim + head_dim - rope.dim + 2 * pair;
    const float a = r[0], b = r[1];
    r[0] = a * c - b * s;
    r[1] = b * c + a * s;
  }
}

__global__ void embed_kernel(WeightMatrix embed, const int32_t* tokens, int64_t n, int64_t hc,
                             float* streams) {
  pdl_begin();
  const int64_t H = embed.cols, total = n * H;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / H, d = i % H;
    const float v = decode_one(embed, tokens[t], d);
    for (int64_t k = 0; k < hc; ++k) streams[(t * hc + k) * H + d] = v;
  }
}

__global__ void swiglu_kernel(const float* gate, const float* up, int64_t count, float limit,
                              float* out) {
  pdl_begin();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    float g = gate[i], u = up[i];
    if (limit > 0) {
      g = fminf(g, limit);
      u = fminf(fmaxf(u, -limit), limit);
    }
    out[i] = g / (1.0f + expf(-g)) * u;
  }
}

__device__ float* field_of(const LayerRow& r, CacheField f) {
  switch (f) {
    case CacheField::kv:
      return r.kv;
    case CacheField::comp_kv:
      return r.comp_kv;
    case CacheField::comp_gate:
      return r.comp_gate;
    case CacheField::idx_kv:
      return r.idx_kv;
    case CacheField::idx_gate:
      return r.idx_gate;
  }
  return nullptr;
}

__global__ void append_kernel(const LayerRow* rows, CacheField field, const float* src,
                              int64_t width, int64_t n) {
  pdl_begin();
  const int64_t total = n * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, d = i % width;
    field_of(rows[t], field)[rows[t].pos * width + d] = src[i];
  }
}

// rms_norm_kernel, then rope_kernel's rotation of the row's trailing rope.dim channels, then the
// cache append, for one norm row (one head) per block. The sum of squares runs in the same order
// as rms_norm_kernel's with the same block size, so the values are the same.
// rope_cs (not null, one head per row): row t's (cos, sin) of each rope pair, as rotated here.
__global__ void norm_rope_kernel(float* x, const float* weight, int64_t dim, float eps,
                                 int64_t heads, const int64_t* pos, DeviceRope rope,
                                 const LayerRow* rows, CacheField field, float2* rope_cs) {
  pdl_begin();
  __shared__ float red[32];
  float* xr = x + blockIdx.x * dim;
  const int64_t t = blockIdx.x / heads;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / float(dim) + eps);
  const int64_t first = dim - rope.dim;
  const float position = float(pos[t]);
  float* cache = rows ? field_of(rows[t], field) + rows[t].pos * dim : nullptr;
  for (int64_t i = 2 * threadIdx.x; i < dim; i += 2 * blockDim.x) {
    float a = weight ? xr[i] * inv * weight[i] : xr[i] * inv;
    float b = weight ? xr[i + 1] * inv * weight[i + 1] : xr[i + 1] * inv;
    if (i >= first) {
      const float angle = rope.inv_freq[(i - first) / 2] * position;
      const float c = float(cos(double(angle))) * rope.scaling;
      const float s = float(sin(double(angle))) * rope.scaling;
      const float ra = a * c - b * s, rb = b * c + a * s;
      a = ra, b = rb;
      if (rope_cs) rope_cs[t * (rope.dim / 2) + (i - first) / 2] = make_float2(c, s);
    }
    xr[i] = a;
    xr[i + 1] = b;
    if (cache) cache[i] = a, cache[i + 1] = b;
  }
}

}  // namespace

void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                   float* out, cudaStream_t stream) {
  if (rows <= 0) return;
  const int threads = dim >= 1024 ? 512 : dim >= 256 ? 256 : 64;
  launch_pdl(rms_norm_kernel, unsigned(rows), threads, 0, stream, x, weight, dim, eps, out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void apply_rope(float* x, int64_t rows, int64_t heads, int64_t head_dim, const int64_t* pos,
                const DeviceRope& rope, bool inverse, cudaStream_t stream) {
  const int64_t total = rows * heads * (rope.dim / 2);
  if (total <= 0) return;
  launch_pdl(rope_kernel, blocks_for(total, 256), 256, 0, stream, x, rows, heads, head_dim, pos,
             rope, inverse ? -1.0f : 1.0f);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void norm_rope_rows(float* x, const float* weight, int64_t rows, int64_t heads, int64_t head_dim,
                    float eps, const int64_t* pos, const DeviceRope& rope,
                    const LayerRow* cache_rows, CacheField field, cudaStream_t stream,
                    float2* rope_cs) {
  if (rows <= 0) return;
  if (rope_cs && heads != 1)
    throw std::invalid_argument(
        "norm_rope_rows: the rope's (cos, sin) table is for one head a row");
  if (head_dim % 2 != 0 || rope.dim % 2 != 0 || rope.dim > head_dim)
    throw std::runtime_error("norm_rope_rows: head_dim " + std::to_string(head_dim) +
                             " and rope dim " + std::to_string(rope.dim) + " must be even");
  const int threads = head_dim >= 1024 ? 512 : head_dim >= 256 ? 256 : 64;  // as rms_norm_rows
  launch_pdl(norm_rope_kernel, unsigned(rows * heads), threads, 0, stream, x, weight, head_dim, eps,
             heads, pos, rope, cache_rows, field, rope_cs);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void embed_rows(const WeightMatrix& embed, const int32_t* tokens, int64_t n, int64_t hc,
                float* streams, cudaStream_t stream) {
  launch_pdl(embed_kernel, blocks_for(n * embed.cols, 256), 256, 0, stream, embed, tokens, n, hc,
             streams);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void swiglu(const float* gate, const float* up, int64_t count, float limit, float* out,
            cudaStream_t stream) {
  if (count <= 0) return;
  launch_pdl(swiglu_kernel, blocks_for(count, 256), 256, 0, stream, gate, up, count, limit, out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void append_rows(const LayerRow* rows, CacheField field, const float* src, int64_t width, int64_t n,
                 cudaStream_t stream) {
  if (n <= 0) return;
  launch_pdl(append_kernel, blocks_for(n * width, 256), 256, 0, stream, rows, field, src, width, n);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
