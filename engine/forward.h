// The DeepSeek-V4 CPU forward pass, top to bottom:
//   embed -> hc_mult copies of the residual stream
//   per layer: mHC collapse -> RMSNorm -> attention -> mHC expand
//              mHC collapse -> RMSNorm -> MoE       -> mHC expand
//   hyper-head collapse -> RMSNorm -> lm_head
// over a batch of rows, each a token of some sequence at the next position of that sequence's
// cache (a prefill chunk is many rows of one cache; a batched decode step is one row per cache).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/forward_config.h"
#include "engine/forward_weights.h"
#include "engine/kv_cache.h"
#include "engine/parallel.h"
#include "engine/rope.h"

namespace agentrt::engine {

struct ForwardRow {
  SequenceCache* cache;
  int64_t pos;
  int32_t token;
  bool want_logits;
};

class ForwardPass {
 public:
  ForwardPass(ForwardConfig config, ForwardWeights weights);

  const ForwardConfig& config() const { return config_; }
  const ForwardWeights& weights() const { return weights_; }
  SequenceCache new_cache() const;

  // Runs the rows, appending them to their caches (the caller bumps SequenceCache::length), and
  // writes one vocab-sized logits row per row with want_logits, in row order.
  void run(std::span<const ForwardRow> rows, float* logits, const Parallel& par) const;

 private:
  ForwardConfig config_;
  ForwardWeights weights_;
  RopeTable rope_main_;
  RopeTable rope_compress_;
};

}  // namespace agentrt::engine
