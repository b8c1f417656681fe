// mHC for prefill passes (thousands of rows): the post step of the sublayer before, the
// projection onto the mixing weights and the sum of squares as one pass over the streams
// (hyper_post_project), then the pre step on those sums (hyper_pre_projected). hyper_post then
// hyper_pre read the streams three times (post step, GEMM, sum of squares); this reads them once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {

// hc 4 and hidden a multiple of the slice width (128 channels); any n > 0.
bool hyper_post_project_supported(int64_t n, int64_t hc, int64_t hidden);
// How many channel slices the projection's partial sums come in (`splits` below).
int hyper_post_project_splits(int64_t hidden);
// Floats of `projected` scratch: [n][(2 + hc) * hc + 1][splits] (enough for the head too).
int64_t hyper_post_project_floats(int64_t n, int64_t hc, int64_t hidden);

// With block_out [n][hidden] (mix: the [n][hyper_mix_width] that hyper_pre left): hyper_post
// in place on streams [n][hc][hidden], bit for bit. Then (block_out null: only this) each row's
// partial sums per slice of channels of fn[o] . streams (o < outputs: (2 + hc) * hc, head: hc)
// and of streams^2, into projected[row][o][slice] and projected[row][outputs][slice].
void hyper_post_project(const HyperDevice& w, const float* mix, const float* block_out,
                        float* streams, int64_t n, int64_t hc, int64_t hidden, bool head,
                        float* projected, cudaStream_t stream);

// hyper_pre's work after the projection (hyper_connection.cu): the mixing weights from the
// `splits` partial sums per output in projected (added in slice order), x [n][hidden] and
// (head = false) mix. staged: the row's streams through shared memory, three blocks an SM
// (CudaOptions::prefill_pre_staged; the same values).
void hyper_pre_projected(const HyperDevice& w, const float* streams, const float* projected,
                         int splits, int64_t n, int64_t hc, int64_t hidden, int sinkhorn_iters,
                         float hc_eps, float rms_eps, const float* norm, bool head, float* mix,
                         float* x, cudaStream_t stream, bool staged = false);

}  // namespace agentrt::engine::cuda
