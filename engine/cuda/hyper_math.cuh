// Device helpers shared by the mHC kernels (hyper_connection.cu, hyper_cluster.cu, hyper_grid.cu):
// the gate's sigmoid, Sinkhorn on the hc x hc mixing matrix held one element per lane, and a
// warp's reduce-scatter of 32 sums.
#pragma once

#include <cuda_runtime.h>

namespace agentrt::engine::cuda {

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// Lane's mixing weight from its normalised projection m = scale * projection / rms + base:
// lanes [0, HC) pre (sigmoid + eps), [HC, 2 HC) post (2 sigmoid), [2 HC, outputs) comb before
// Sinkhorn (as is), 0 beyond.
template <int HC>
__device__ __forceinline__ float mix_weight(int lane, float m, int outputs, float hc_eps) {
  if (lane < HC) return sigmoidf(m) + hc_eps;
  if (lane < 2 * HC) return 2.0f * sigmoidf(m);
  return lane < outputs ? m : 0.0f;
}

// transformers DeepseekV4HyperConnection's comb: row softmax (+eps), then Sinkhorn starting with
// a column normalisation, alternating rows and columns, each with + eps in the denominator, on
// the element v of lane i < HC * HC (row i / HC, column i % HC), in the CPU's order. Every lane
// of the warp calls it.
template <int HC>
__device__ void sinkhorn_lanes(float& v, int lane, int iters, float eps) {
  const int r = lane / HC, c = lane % HC;
  const bool own = lane < HC * HC;
  auto row_sum = [&](float x) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < HC; ++j) s += __shfl_sync(0xffffffffu, x, own ? r * HC + j : 0);
    return s;
  };
  auto col_sum = [&](float x) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < HC; ++j) s += __shfl_sync(0xffffffffu, x, own ? j * HC + c : 0);
    return s;
  };
  float mx = -INFINITY;
#pragma unroll
  for (int j = 0; j < HC; ++j) mx = fmaxf(mx, __shfl_sync(0xffffffffu, v, own ? r * HC + j : 0));
  v = expf(v - mx);
  v = v / row_sum(v) + eps;
  v = v / (col_sum(v) + eps);
  for (int it = 1; it < iters; ++it) {
    v = v / (row_sum(v) + eps);
    v = v / (col_sum(v) + eps);
  }
}

// One step of warp_reduce_scatter: lanes with bit HALF set keep values HALF .. 2 HALF - 1 (as
// 0 .. HALF - 1), the others 0 .. HALF - 1, each added to its partner's copy.
template <int HALF>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[32], int lane) {
  const bool upper = (lane & HALF) != 0;
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const float send = upper ? v[i] : v[i + HALF];
    const float keep = upper ? v[i + HALF] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
  }
}

// Lane l ends with the warp's sum of v[l] (reduce-scatter: 16 + 8 + 4 + 2 + 1 shuffles for 32
// values, where a butterfly per value takes 5 each).
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[32], int lane) {
  reduce_scatter_step<16>(v, lane);
  reduce_scatter_step<8>(v, lane);
  reduce_scatter_step<4>(v, lane);
  reduce_scatter_step<2>(v, lane);
  reduce_scatter_step<1>(v, lane);
  return v[0];
}

}  // namespace agentrt::engine::cuda
