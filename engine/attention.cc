#include "engine/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/compressor.h"
#include "engine/indexer.h"
#include "engine/matmul.h"
#include "engine/rmsnorm.h"

namespace agentrt::engine {

void attend(const float* q, int64_t dim, float scale, float sink, const float* const* keys,
            int64_t n_keys, float* out, float* scratch) {
  float mx = sink;
  for (int64_t i = 0; i < n_keys; ++i) {
    scratch[i] = dot_f32(q, keys[i], dim) * scale;
    mx = std::max(mx, scratch[i]);
  }
  float denom = std::exp(sink - mx);
  for (int64_t i = 0; i < n_keys; ++i) denom += (scratch[i] = std::exp(scratch[i] - mx));
  const float inv = 1.0f / denom;
  std::fill(out, out + dim, 0.0f);
  for (int64_t i = 0; i < n_keys; ++i) {
    const __m256 p = _mm256_set1_ps(scratch[i] * inv);
    const float* k = keys[i];
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8)
      _mm256_storeu_ps(out + d,
                       _mm256_fmadd_ps(p, _mm256_loadu_ps(k + d), _mm256_loadu_ps(out + d)));
    for (; d < dim; ++d) out[d] += scratch[i] * inv * k[d];
  }
}

void attend_reference(const float* q, int64_t dim, float scale, float sink,
                      const float* const* keys, int64_t n_keys, float* out) {
  std::vector<double> logits(n_keys);
  double mx = sink;
  for (int64_t i = 0; i < n_keys; ++i) {
    double s = 0;
    for (int64_t d = 0; d < dim; ++d) s += double(q[d]) * keys[i][d];
    logits[i] = s * scale;
    mx = std::max(mx, logits[i]);
  }
  double denom = std::exp(sink - mx);
  for (auto& l : logits) denom += (l = std::exp(l - mx));
  for (int64_t d = 0; d < dim; ++d) {
    double acc = 0;
    for (int64_t i = 0; i < n_keys; ++i) acc += logits[i] * keys[i][d];
    out[d] = float(acc / denom);
  }
}

void attention_forward(const AttentionContext& ctx, std::span<const AttentionRow> rows,
                       const float* h, float* out) {
  const ForwardConfig& c = ctx.config;
  const AttentionWeights& w = ctx.weights;
  const Parallel& par = ctx.par;
  const int64_t n = int64_t(rows.size()), hd = c.head_dim, heads = c.heads;
  const int64_t half = c.rope_dim / 2;

  // Queries: low-rank q (its normed residual also feeds the indexer), per-head unweighted norm.
  std::vector<float> q_res(n * c.q_lora_rank), q(n * heads * hd), kv(n * hd);
  matmul(h, n, w.wq_a, q_res.data(), par);
  rms_norm_rows(q_res.data(), w.q_norm.data(), n, c.q_lora_rank, c.rms_eps, q_res.data());
  matmul(q_res.data(), n, w.wq_b, q.data(), par);
  matmul(h, n, w.wkv, kv.data(), par);

  std::vector<float> cos(n * half), sin(n * half), ccos(n * half), csin(n * half);
  for (int64_t t = 0; t < n; ++t) {
    ctx.rope.angles(rows[t].pos, cos.data() + t * half, sin.data() + t * half);
    ctx.compress_rope.angles(rows[t].pos, ccos.data() + t * half, csin.data() + t * half);
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t hh = 0; hh < heads; ++hh) {
      float* qh = q.data() + (t * heads + hh) * hd;
      rms_norm(qh, nullptr, hd, c.rms_eps, qh);
      ctx.rope.apply(qh, hd, cos.data() + t * half, sin.data() + t * half);
    }
    float* k = kv.data() + t * hd;
    rms_norm(k, w.kv_norm.data(), hd, c.rms_eps, k);
    ctx.rope.apply(k, hd, cos.data() + t * half, sin.data() + t * half);
  }

  // Append this batch's rows to the caches (sliding K=V and raw compressor projections), then
  // emit every compressed entry whose window is now complete.
  const CompressorWeights* comp = w.compressor ? &*w.compressor : nullptr;
  const IndexerWeights* ix = w.indexer ? &*w.indexer : nullptr;
  auto append_raw = [&](const CompressorWeights& cw, CompressorCache LayerCache::*member) {
    const int64_t width = cw.wkv.rows;
    std::vector<float> rkv(n * width), rgate(n * width);
    matmul(h, n, cw.wkv, rkv.data(), par);
    matmul(h, n, cw.wgate, rgate.data(), par);
    for (int64_t t = 0; t < n; ++t) {
      CompressorCache& cc = rows[t].cache->*member;
      std::copy_n(rkv.data() + t * width, width, cc.raw_kv.append());
      std::copy_n(rgate.data() + t * width, width, cc.raw_gate.append());
    }
  };
  for (int64_t t = 0; t < n; ++t) {
    LayerCache& lc = *rows[t].cache;
    if (lc.kv.rows() != rows[t].pos)
      throw std::logic_error("attention: row at position " + std::to_string(rows[t].pos) +
                             " does not extend a cache of length " + std::to_string(lc.kv.rows()));
    std::copy_n(kv.data() + t * hd, hd, lc.kv.append());
  }
  if (comp) append_raw(*comp, &LayerCache::compressor);
  if (ix) append_raw(ix->compressor, &LayerCache::indexer);
  for (int64_t t = 0; t < n; ++t) {
    if (t > 0 && rows[t].cache == rows[t - 1].cache) continue;  // emitted once per cache
    LayerCache& lc = *rows[t].cache;
    if (comp) compress_pending(*comp, lc.compressor, ctx.compress_rope, c.rms_eps);
    if (ix) compress_pending(ix->compressor, lc.indexer, ctx.compress_rope, c.rms_eps);
  }

  // Indexer queries and head weights.
  std::vector<float> iq, iw;
  const int64_t ih = c.index_heads, ihd = c.index_head_dim;
  if (ix) {
    iq.resize(n * ih * ihd);
    iw.resize(n * ih);
    matmul(q_res.data(), n, ix->wq_b, iq.data(), par);
    matmul(h, n, ix->weights_proj, iw.data(), par);
    const float ws = 1.0f / std::sqrt(float(ih));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t hh = 0; hh < ih; ++hh)
        ctx.compress_rope.apply(iq.data() + (t * ih + hh) * ihd, ihd, ccos.data() + t * half,
                                csin.data() + t * half);
      for (int64_t hh = 0; hh < ih; ++hh) iw[t * ih + hh] *= ws;
    }
  }

  // Core attention, one task per row; heads share the row's key list.
  std::vector<float> attn(n * heads * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  par.for_range(n, [&](int64_t b, int64_t e) {
    std::vector<const float*> keys;
    std::vector<int64_t> chosen;
    std::vector<float> scratch;
    for (int64_t t = b; t < e; ++t) {
      const LayerCache& lc = *rows[t].cache;
      const int64_t pos = rows[t].pos;
      keys.clear();
      for (int64_t p = std::max<int64_t>(0, pos - c.sliding_window + 1); p <= pos; ++p)
        keys.push_back(lc.kv.row(p));
      if (comp) {
        // Entry w covers positions [w*rate, (w+1)*rate): visible once that window is complete.
        const int64_t visible = std::min((pos + 1) / comp->rate, lc.compressor.entries.rows());
        if (ix) {
          const int64_t ivisible = std::min(visible, lc.indexer.entries.rows());
          indexer_select(iq.data() + t * ih * ihd, iw.data() + t * ih, ih, ihd, lc.indexer.entries,
                         ivisible, c.index_topk, chosen);
          for (int64_t s : chosen) keys.push_back(lc.compressor.entries.row(s));
        } else {
          for (int64_t s = 0; s < visible; ++s) keys.push_back(lc.compressor.entries.row(s));
        }
      }
      scratch.resize(keys.size());
      for (int64_t hh = 0; hh < heads; ++hh) {
        float* o = attn.data() + (t * heads + hh) * hd;
        attend(q.data() + (t * heads + hh) * hd, hd, scale, w.sinks[hh], keys.data(),
               int64_t(keys.size()), o, scratch.data());
        ctx.rope.apply(o, hd, cos.data() + t * half, sin.data() + t * half, /*inverse=*/true);
      }
    }
  });

  // Grouped low-rank output projection: group g's heads -> o_lora_rank, then all groups -> hidden.
  const int64_t group_in = heads * hd / c.o_groups, r = c.o_lora_rank;
  std::vector<float> grouped(n * c.o_groups * r), gin(n * group_in), gout(n * r);
  for (int64_t g = 0; g < c.o_groups; ++g) {
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(attn.data() + t * heads * hd + g * group_in, group_in, gin.data() + t * group_in);
    matmul(gin.data(), n, w.wo_a.slice_rows(g * r, r), gout.data(), par);
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(gout.data() + t * r, r, grouped.data() + t * c.o_groups * r + g * r);
  }
  matmul(grouped.data(), n, w.wo_b, out, par);
}

}  // namespace agentrt::engine
