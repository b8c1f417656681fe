// One row's expert routing by one warp, in registers: the streamed experts' producer warps
// (moe_decode.cu) route their rows themselves, so that a decode step has no routing launch of its
// own on its path; route_kernel (moe.cu) shares score_of. The same arithmetic as the CPU's route()
// (engine/moe.cc): scores, biased choice with ties to the lower index, weights normalised over
// the choices in choice order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/route_keys.h"
#include "engine/forward_config.h"

namespace agentrt::engine::cuda {

__device__ __forceinline__ float score_of(ScoreFunc f, float x) {
  switch (f) {
    case ScoreFunc::sqrtsoftplus:
      return sqrtf(x > 20.0f ? x : log1pf(expf(x)));  // torch softplus threshold 20
    case ScoreFunc::sigmoid:
      return 1.0f / (1.0f + expf(-x));
    case ScoreFunc::softmax:
      return x;
  }
  return x;
}

// Experts a lane holds: route_row_warp takes up to 32 * kLaneExperts.
constexpr int kLaneExperts = 8;

// Whether one warp routes a row of this shape (softmax needs the row's sum first: route_kernel's
// block path).
__host__ __device__ inline bool route_fits_warp(int64_t experts, int64_t k, ScoreFunc func) {
  return experts > 0 && experts <= 32 * kLaneExperts && k >= 1 && k <= 32 && k <= experts &&
         func != ScoreFunc::softmax;
}

// The k largest keys (lane holds experts lane + 32 j), ties to the lower expert: lane i < k
// returns the i-th. A round is one max and one min over the warp (redux), not a chain of
// shuffles.
__device__ __forceinline__ int choose_from_keys(uint32_t (&key)[kLaneExperts], int64_t k,
                                                int lane) {
  int mine = 0;
  for (int64_t i = 0; i < k; ++i) {
    uint32_t best = 0u;
    int at = 0;
#pragma unroll
    for (int j = 0; j < kLaneExperts; ++j)
      if (key[j] > best) best = key[j], at = j;  // strict: the lower j keeps a tie
    const uint32_t top = __reduce_max_sync(0xffffffffu, best);
    const uint32_t winner =
        __reduce_min_sync(0xffffffffu, best == top ? uint32_t(lane + 32 * at) : 0xffffffffu);
    if (lane == i) mine = int(winner);
    if (int(winner % 32) == lane) {
#pragma unroll
      for (int j = 0; j < kLaneExperts; ++j)
        if (j == int(winner / 32)) key[j] = 0u;
    }
  }
  return mine;
}

struct WarpChoice {
  int expert;    // lane i < k: the i-th choice
  float weight;  // its routing weight
};

// Routes one row (route_fits_warp; every lane calls it): logits [experts], the row's token for
// hash routing (tid2eid [vocab][k], else null and bias [experts]).
__device__ __forceinline__ WarpChoice route_row_warp(const float* logits, int32_t token,
                                                     const int32_t* tid2eid, const float* bias,
                                                     int64_t experts, int64_t k, ScoreFunc func,
                                                     float scaling, int lane) {
  float sc[kLaneExperts];
  uint32_t key[kLaneExperts];
#pragma unroll
  for (int j = 0; j < kLaneExperts; ++j) {
    const int64_t e = lane + 32 * j;
    sc[j] = e < experts ? score_of(func, logits[e]) : 0.0f;
    key[j] = e < experts && !tid2eid ? choice_key(sc[j] + bias[e]) : 0u;
  }
  int mine = 0;
  if (tid2eid)
    mine = lane < k ? tid2eid[int64_t(token) * k + lane] : 0;
  else
    mine = choose_from_keys(key, k, lane);
  // The choice's score from the lane holding it.
  float score = 0.0f;
#pragma unroll
  for (int j = 0; j < kLaneExperts; ++j) {
    const float v = __shfl_sync(0xffffffffu, sc[j], mine % 32);
    if (j == mine / 32) score = v;
  }
  if (lane >= k) score = 0.0f;
  // The choices' scores added in choice order, as the CPU does.
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += __shfl_sync(0xffffffffu, score, int(i));
  return {mine, score / (sum + 1e-20f) * scaling};
}

}  // namespace agentrt::engine::cuda
