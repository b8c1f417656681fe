// One DeepSeek-V4 attention block over a batch of rows (each row: one token of some sequence at
// some position). Shared-KV multi-query attention: a single normed, rotated kv vector per position
// is both key and value; every query head attends over
//   - the sliding window: positions (pos - sliding_window, pos], and
//   - compressed entries: HCA all complete windows up to pos; CSA the indexer's top-k of them,
// with a per-head learnable sink logit in the softmax. The output's rope slice is rotated back
// (inverse rope at the query position) and goes through the grouped low-rank projection
// (wo_a per group, then wo_b). transformers DeepseekV4Attention.
#pragma once

#include <cstdint>
#include <span>

#include "engine/forward_config.h"
#include "engine/forward_weights.h"
#include "engine/kv_cache.h"
#include "engine/parallel.h"
#include "engine/rope.h"

namespace agentrt::engine {

struct AttentionRow {
  LayerCache* cache;
  int64_t pos;  // must equal the cache's length when the row is appended (rows in order)
};

struct AttentionContext {
  const ForwardConfig& config;
  const ForwardLayer& layer;
  const AttentionWeights& weights;
  const RopeTable& rope;           // main for sliding layers, compress for CSA / HCA
  const RopeTable& compress_rope;  // compressor and indexer
  const Parallel& par;
};

// h: [n][hidden] normed block input; out: [n][hidden].
void attention_forward(const AttentionContext& ctx, std::span<const AttentionRow> rows,
                       const float* h, float* out);

// softmax([q.k_i * scale]_i ++ [sink]) over keys, output sum_i p_i k_i (keys are the values).
void attend(const float* q, int64_t dim, float scale, float sink, const float* const* keys,
            int64_t n_keys, float* out, float* scratch);
void attend_reference(const float* q, int64_t dim, float scale, float sink,
                      const float* const* keys, int64_t n_keys, float* out);

}  // namespace agentrt::engine
