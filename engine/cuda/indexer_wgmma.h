// The Lightning Indexer's prefill scores on Hopper's warpgroup MMA (indexer_wgmma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layer_rows.h"

namespace agentrt::engine::cuda {

// indexer_scores_mma_mirrored's plain bf16 products (split false) on wgmma, for 64 heads of 128:
// the same mirror (key_mirror_bytes(head_dim, 0, max_visible, false), filled here from
// `entries`), the same scores written (scores[t][e] for every e < rows[t].visible, nothing past
// it), the same roundings (query and entries to bf16, float32 products, relu, head weights and
// sums) in another order. Runs only where wgmma_kernels_run (wgmma_runs.h). Throws
// std::invalid_argument for other shapes (before touching the device).
bool indexer_scores_wgmma_supported(int64_t heads, int64_t head_dim);
void indexer_scores_wgmma(const float* q, const float* head_weights, float weight_scale,
                          const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                          const float* entries, int64_t max_visible, void* mirror, float* scores,
                          int64_t stride, cudaStream_t stream);

}  // namespace agentrt::engine::cuda
