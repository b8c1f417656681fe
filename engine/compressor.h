// The KV compressor of CSA and HCA layers (also the indexer's, at index_head_dim): every `rate`
// source positions pool into one compressed entry,
//   entry_w[d] = sum_slots softmax_slots(gate + ape)[d] * kv[d], then RMSNorm, then RoPE at w*rate
// (compress rope). HCA pools window w's rows. CSA ("overlap") has two series per row: entry w pools
// the first series of window w-1 (absent for w = 0) with the second series of window w, so each
// entry spans 2*rate positions with stride rate. transformers DeepseekV4HCACompressor /
// DeepseekV4CSACompressor / DeepseekV4Indexer.
#pragma once

#include <cstdint>

#include "engine/forward_weights.h"
#include "engine/kv_cache.h"
#include "engine/rope.h"

namespace agentrt::engine {

// Computes entry `w` from the raw rows in `cache` (positions up to (w+1)*rate - 1 must be there).
void compress_entry(const CompressorWeights& weights, const CompressorCache& cache, int64_t w,
                    const RopeTable& rope, float rms_eps, float* out);

// Emits every entry whose window is complete and not yet emitted.
void compress_pending(const CompressorWeights& weights, CompressorCache& cache,
                      const RopeTable& rope, float rms_eps);

}  // namespace agentrt::engine
