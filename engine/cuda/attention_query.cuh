// One query row's block of heads as the prefill tensor-core attention kernels take it in
// (attention_mma.cu, attention_wgmma.cu): each head's float4s handed to `put`, which stores them
// in the kernel's own layout. With norm.pos set the rows are wq_b's raw output: each head is
// RMS-normed (no weight) and its trailing rope.dim channels rotated on the way in, as
// norm_rope_rows would in place (a separate pass over the float32 query, 2 GB a layer at 16K
// rows, ~3.4 ms of a 16K prefill's layer on an H100).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "engine/cuda/float_bits.h"
#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {

// Throws where a QueryNormRope cannot apply to heads of head_dim (`who`: the kernel, for the
// message).
inline void check_query_norm(const QueryNormRope& norm, int64_t head_dim, const char* who) {
  if (norm.pos && (norm.rope.dim % 2 != 0 || norm.rope.dim > head_dim || !norm.rope.inv_freq))
    throw std::invalid_argument(std::string(who) + ": a query RoPE of " +
                                std::to_string(norm.rope.dim) + " channels for heads of " +
                                std::to_string(head_dim) + " (needs an even count, at most that)");
}

// The 4 values from 4 i of a query row: float32, or bf16 (wq_b's FP8 GEMM writing bf16 rows,
// CudaOptions::query_bf16) widened exactly.
__device__ __forceinline__ float4 query_quad(const float* q, int i) {
  return __ldg(reinterpret_cast<const float4*>(q) + i);
}
__device__ __forceinline__ float4 query_quad(const __nv_bfloat16* q, int i) {
  return bf16x4_as_float4(__ldg(reinterpret_cast<const uint2*>(q) + i));
}

// The kHeads heads of HD channels at q_rows (float or __nv_bfloat16), by the block's kThreads
// threads: put(head, channel, float4) for every 4 channels. rope_cs ([HD / 2], shared) receives
// the row's (cos, sin) pairs when norm.pos is set (one __syncthreads() inside); the caller syncs
// before reading what put stored.
template <int HD, int kHeads, int kThreads, typename T, typename Put>
__device__ __forceinline__ void stage_query_heads(const T* q_rows, const QueryNormRope& norm,
                                                  int64_t t, float2* rope_cs, Put put) {
  if (norm.pos == nullptr) {
    for (int idx = threadIdx.x; idx < kHeads * HD / 4; idx += kThreads)
      put(idx / (HD / 4), 4 * (idx % (HD / 4)), query_quad(q_rows, idx));
    return;
  }
  const int pairs = norm.rope.dim / 2, first = HD - norm.rope.dim;
  const float position = float(norm.pos[t]);
  for (int i = threadIdx.x; i < pairs; i += kThreads) {
    // transformers: float32 angle, then cos/sin (norm_rope_kernel's values).
    const float angle = norm.rope.inv_freq[i] * position;
    rope_cs[i] = make_float2(float(cos(double(angle))) * norm.rope.scaling,
                             float(sin(double(angle))) * norm.rope.scaling);
  }
  __syncthreads();
  constexpr int kPer = HD / 128;  // float4 of a head per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Unrolled so that several heads' loads are in flight at once (one latency each otherwise).
#pragma unroll 4
  for (int h = warp; h < kHeads; h += kThreads / 32) {
    const T* src = q_rows + int64_t(h) * HD;
    float4 v[kPer];
    float ss = 0.0f;
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      v[u] = query_quad(src, lane + 32 * u);
      ss = fmaf(v[u].x, v[u].x, ss);
      ss = fmaf(v[u].y, v[u].y, ss);
      ss = fmaf(v[u].z, v[u].z, ss);
      ss = fmaf(v[u].w, v[u].w, ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = rsqrtf(ss / float(HD) + norm.eps);
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int c = 4 * (lane + 32 * u);  // the float4's first channel
      float a[4] = {v[u].x * inv, v[u].y * inv, v[u].z * inv, v[u].w * inv};
#pragma unroll
      for (int e = 0; e < 4; e += 2)
        if (c + e >= first) {
          const float2 cs = rope_cs[(c + e - first) / 2];
          const float x0 = a[e], x1 = a[e + 1];
          a[e] = x0 * cs.x - x1 * cs.y;
          a[e + 1] = x1 * cs.x + x0 * cs.y;
        }
      put(h, c, make_float4(a[0], a[1], a[2], a[3]));
    }
  }
}

}  // namespace agentrt::engine::cuda
