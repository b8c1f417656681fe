// Grouped products of FP4 experts for prefill-sized passes, decoding the stored weights in the
// kernel's loader (fp4_gemm.cu): no bf16 copy of the experts, no gathered or padded activations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/matmul.h"

namespace agentrt::engine::cuda {

// Rows m0 .. m0 + rows - 1 (at most kFp4GemmRows; positions in the grouped pair order) times
// output columns n0 .. n0 + kFp4GemmCols - 1 of the expert active[a].
struct Fp4GemmTile {
  int32_t a, m0, rows, n0;
};
constexpr int kFp4GemmRows = 64;
constexpr int kFp4GemmCols = 128;
constexpr int kFp4GemmDepth = 64;  // columns of K a step

// C[s][n] = sum_k A(s)[k] * W(n)[k] for every tile: W(n) is row n of expert e's lo[e] for
// n < n_split, else row n - n_split of hi[e] (gate and up as one product); A(s) is row
// a_rows[s] / a_div of a (a_rows null: row s). lo/hi are device arrays of FP4 (e2m1, e8m0 scales
// per 32) [N][K] matrices; K a multiple of kFp4GemmDepth, N (each matrix's rows) of
// kFp4GemmCols. split: A as bf16 high + low parts (float32-like), else bf16 only.
struct Fp4GemmArgs {
  const WeightMatrix* lo = nullptr;
  const WeightMatrix* hi = nullptr;
  int64_t n_split = 0;
  const int32_t* active = nullptr;
  const float* a = nullptr;
  int64_t lda = 0;
  const int32_t* a_rows = nullptr;
  int64_t a_div = 1;
  int64_t k = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  const Fp4GemmTile* tiles = nullptr;
  int64_t tile_count = 0;
  bool split = true;
};

void fp4_grouped_gemm(const Fp4GemmArgs& g, cudaStream_t stream);

// act[s][c] = weights[order[s]] * silu(min(g, limit)) * clamp(u, -limit, limit) for s in
// [0, pairs), g and u columns c and inter + c of gate_up's row s (limit 0: no clamps).
void swiglu_grouped(const float* gate_up, const int32_t* order, const float* weights, int64_t pairs,
                    int64_t inter, float limit, float* act, cudaStream_t stream);

}  // namespace agentrt::engine::cuda
