// The Lightning Indexer of CSA layers: scores every visible compressed entry s for a query,
//   score(s) = sum_h w_h * relu(q_h . k_s) * index_head_dim^-0.5,   w_h = weights_proj(x)_h *
//   heads^-0.5
// and keeps the top index_topk. transformers DeepseekV4Indexer / DeepseekV4IndexerScorer. Ties
// (frequent: a sum of ReLUs is often exactly 0) are broken towards the lower entry index, so the
// choice is deterministic across machines.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/kv_cache.h"

namespace agentrt::engine {

// q: [heads][head_dim] (rotated), head_weights: [heads] (already scaled by heads^-0.5).
// Considers entries [0, visible) of `keys`; writes the chosen indices (ascending) to `chosen`.
void indexer_select(const float* q, const float* head_weights, int64_t heads, int64_t head_dim,
                    const RowStore& keys, int64_t visible, int64_t topk,
                    std::vector<int64_t>& chosen);

// Scores only (exposed for the tests).
void indexer_scores(const float* q, const float* head_weights, int64_t heads, int64_t head_dim,
                    const RowStore& keys, int64_t visible, float* scores);

}  // namespace agentrt::engine
