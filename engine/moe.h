// The DeepSeek-V4 feed-forward block: routed experts plus one shared expert, all SwiGLU with the
// swiglu_limit clamps (gate clamped above at +limit, up clamped to [-limit, limit]).
// Router scores are sqrtsoftplus (or softmax / sigmoid) of the gate logits. Hash layers take the
// experts from tid2eid[token]; top-k layers pick the k best of score + correction bias (the bias
// selects only; ties go to the lower expert index). The chosen scores are normalised to sum 1 and
// scaled by routed_scaling_factor. transformers DeepseekV4SparseMoeBlock.
#pragma once

#include <cstdint>
#include <span>

#include "engine/forward_config.h"
#include "engine/forward_weights.h"
#include "engine/parallel.h"

namespace agentrt::engine {

struct Routing {
  std::vector<int32_t> experts;  // [n][k]
  std::vector<float> weights;    // [n][k]
};

// h: [n][hidden]; tokens: the input ids (hash routing).
Routing route(const ForwardConfig& c, const ForwardLayer& layer, const MoeWeights& w,
              const float* h, std::span<const int32_t> tokens, const Parallel& par);

// out: [n][hidden] = routed + shared.
void moe_forward(const ForwardConfig& c, const ForwardLayer& layer, const MoeWeights& w,
                 const float* h, std::span<const int32_t> tokens, float* out, const Parallel& par);

// down(silu(clamp(gate x)) * clamp(up x)) for n rows.
void swiglu_expert(const ExpertWeights& e, float limit, const float* x, int64_t n, float* out,
                   const Parallel& par);

}  // namespace agentrt::engine
