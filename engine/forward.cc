#include "engine/forward.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/attention.h"
#include "engine/hyper_connection.h"
#include "engine/matmul.h"
#include "engine/moe.h"
#include "engine/rmsnorm.h"

namespace agentrt::engine {

ForwardPass::ForwardPass(ForwardConfig config, ForwardWeights weights)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      rope_main_(config_.rope_main),
      rope_compress_(config_.rope_compress) {}

SequenceCache ForwardPass::new_cache() const {
  SequenceCache cache;
  for (const ForwardLayer& l : config_.layers) {
    LayerCache lc;
    lc.kv.width = config_.head_dim;
    if (l.attention != AttentionKind::sliding) {
      const int64_t coff = l.attention == AttentionKind::csa ? 2 : 1;
      lc.compressor.rate = l.compress_rate;
      lc.compressor.raw_kv.width = lc.compressor.raw_gate.width = coff * config_.head_dim;
      lc.compressor.entries.width = config_.head_dim;
    }
    if (l.attention == AttentionKind::csa) {
      lc.indexer.rate = l.compress_rate;
      lc.indexer.raw_kv.width = lc.indexer.raw_gate.width = 2 * config_.index_head_dim;
      lc.indexer.entries.width = config_.index_head_dim;
    }
    cache.layers.push_back(std::move(lc));
  }
  return cache;
}

void ForwardPass::run(std::span<const ForwardRow> rows, float* logits, const Parallel& par) const {
  const ForwardConfig& c = config_;
  const ForwardWeights& w = weights_;
  const int64_t n = int64_t(rows.size()), H = c.hidden, hc = c.hc_mult;
  std::vector<int32_t> tokens(n);
  for (int64_t t = 0; t < n; ++t) {
    tokens[t] = rows[t].token;
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw std::out_of_range("forward: token id " + std::to_string(tokens[t]) +
                              " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  }

  // Residual streams [n][hc][H], all starting as the embedding.
  std::vector<float> streams(n * hc * H);
  for (int64_t t = 0; t < n; ++t) {
    float* s = streams.data() + t * hc * H;
    decode_weight_row(w.embed, tokens[t], s);
    for (int64_t i = 1; i < hc; ++i) std::copy_n(s, H, s + i * H);
  }

  std::vector<HyperMix> mix(n);
  std::vector<float> x(n * H), y(n * H);
  std::vector<AttentionRow> arows(n);
  // Collapses every row's streams with its `pre` weights and normalises: the block input.
  auto collapse = [&](const HyperWeights& hw, const std::vector<float>& norm) {
    par.for_range(n, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const float* s = streams.data() + t * hc * H;
        hyper_mix(hw, s, hc, H, c.hc_sinkhorn_iters, c.hc_eps, c.rms_eps, mix[t]);
        hyper_collapse(mix[t].pre, s, hc, H, x.data() + t * H);
        rms_norm(x.data() + t * H, norm.data(), H, c.rms_eps, x.data() + t * H);
      }
    });
  };
  auto expand = [&] {
    for (int64_t t = 0; t < n; ++t)
      hyper_expand(mix[t], y.data() + t * H, hc, H, streams.data() + t * hc * H);
  };

  for (size_t l = 0; l < c.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const ForwardLayer& lc = c.layers[l];
    collapse(lw.attn_hc, lw.attn_norm);
    for (int64_t t = 0; t < n; ++t) arows[t] = {&rows[t].cache->layers[l], rows[t].pos};
    const RopeTable& rope = lc.attention == AttentionKind::sliding ? rope_main_ : rope_compress_;
    AttentionContext ctx{c, lc, lw.attn, rope, rope_compress_, par};
    attention_forward(ctx, arows, x.data(), y.data());
    expand();
    collapse(lw.ffn_hc, lw.ffn_norm);
    moe_forward(c, lc, lw.moe, x.data(), tokens, y.data(), par);
    expand();
  }

  std::vector<float> final_rows;
  for (int64_t t = 0; t < n; ++t) {
    if (!rows[t].want_logits) continue;
    final_rows.resize(final_rows.size() + H);
    float* out = final_rows.data() + final_rows.size() - H;
    hyper_head(w.hc_head_fn.data(), w.hc_head_base.data(), w.hc_head_scale[0],
               streams.data() + t * hc * H, hc, H, c.hc_eps, c.rms_eps, out);
    rms_norm(out, w.norm.data(), H, c.rms_eps, out);
  }
  const int64_t m = int64_t(final_rows.size()) / H;
  if (m) matmul(final_rows.data(), m, w.head, logits, par);
}

}  // namespace agentrt::engine
