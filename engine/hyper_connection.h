// Manifold-constrained hyper-connections (mHC): the residual is hc_mult parallel streams. Before a
// block they are collapsed into one input (weights `pre`); after it the block output is spread
// back (`post`) and added to the streams mixed by `comb`, a doubly-stochastic matrix from Sinkhorn
// iterations. transformers DeepseekV4HyperConnection / DeepseekV4HyperHead.
#pragma once

#include <cstdint>

#include "engine/forward_weights.h"

namespace agentrt::engine {

struct HyperMix {
  // pre, post: [hc]; comb: [hc][hc] (row j = input stream j).
  float pre[16];
  float post[16];
  float comb[16 * 16];
};

constexpr int64_t kMaxHcMult = 16;

// Computes the mixing weights of one token from its streams [hc][hidden].
void hyper_mix(const HyperWeights& w, const float* streams, int64_t hc, int64_t hidden,
               int sinkhorn_iters, float hc_eps, float rms_eps, HyperMix& out);

// The comb matrix [hc][hc] from its raw projections, in place: row softmax (+ eps), then
// Sinkhorn's alternating normalisations (hyper_mix's last step).
void hyper_sinkhorn(float* comb, int64_t hc, int sinkhorn_iters, float hc_eps);

// collapsed[d] = sum_i pre[i] * streams[i][d]
void hyper_collapse(const float* pre, const float* streams, int64_t hc, int64_t hidden,
                    float* collapsed);

// streams[k] <- post[k] * block_out + sum_j comb[j][k] * streams[j]   (in place)
void hyper_expand(const HyperMix& mix, const float* block_out, int64_t hc, int64_t hidden,
                  float* streams);

// The final collapse before the output norm (DeepseekV4HyperHead).
void hyper_head(const float* fn, const float* base, float scale, const float* streams, int64_t hc,
                int64_t hidden, float hc_eps, float rms_eps, float* out);

}  // namespace agentrt::engine
