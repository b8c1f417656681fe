#include "engine/cuda/device_weights.h"

#include "engine/rope.h"

namespace agentrt::engine::cuda {
namespace {

struct Uploader {
  int64_t bytes = 0;

  DeviceMatrixPtr matrix(const WeightMatrix& w) {
    auto m = std::make_unique<DeviceMatrix>(w);
    bytes += m->device_bytes();
    return m;
  }
  template <typename T>
  DeviceBuffer vec(const std::vector<T>& v) {
    DeviceBuffer b(int64_t(v.size() * sizeof(T)));
    if (!v.empty())
      AGENTRT_CUDA_CHECK(
          cudaMemcpy(b.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    bytes += b.bytes();
    return b;
  }
  HyperOnDevice hyper(const HyperWeights& h) { return {vec(h.fn), vec(h.base), vec(h.scale)}; }
  ExpertOnDevice expert(const ExpertWeights& e) {
    return {matrix(e.w1), matrix(e.w2), matrix(e.w3)};
  }
  CompressorOnDevice compressor(const CompressorWeights& c) {
    CompressorOnDevice out{matrix(c.wkv), matrix(c.wgate), vec(c.ape), vec(c.norm), {}};
    out.view = {out.ape.as<float>(), out.norm.as<float>(), c.dim, c.rate, c.overlap};
    return out;
  }
  std::pair<DeviceBuffer, DeviceRope> rope(const RopeParams& p) {
    const RopeTable table(p);
    DeviceBuffer freq = vec(table.inv_freq());
    // RopeTable's scaling: YaRN's attention factor (V4 pins it to 1), else 1.
    const float scaling = p.kind == RopeParams::Kind::yarn ? float(p.attention_factor) : 1.0f;
    DeviceRope r{freq.as<float>(), table.dim(), scaling};
    return {std::move(freq), r};
  }
};

}  // namespace

WeightsOnDevice WeightsOnDevice::upload(const ForwardConfig& c, const ForwardWeights& w) {
  Uploader up;
  WeightsOnDevice out;
  out.embed = up.matrix(w.embed);
  if (w.head.data == w.embed.data) {
    out.head = out.embed->view();
  } else {
    out.head_own = up.matrix(w.head);
    out.head = out.head_own->view();
  }
  out.norm = up.vec(w.norm);
  out.hc_head_fn = up.vec(w.hc_head_fn);
  out.hc_head_base = up.vec(w.hc_head_base);
  out.hc_head_scale = up.vec(w.hc_head_scale);
  for (const LayerWeights& lw : w.layers) {
    LayerOnDevice l;
    l.attn_hc = up.hyper(lw.attn_hc);
    l.ffn_hc = up.hyper(lw.ffn_hc);
    l.attn_norm = up.vec(lw.attn_norm);
    l.ffn_norm = up.vec(lw.ffn_norm);
    const AttentionWeights& a = lw.attn;
    l.wq_a = up.matrix(a.wq_a);
    l.wq_b = up.matrix(a.wq_b);
    l.wkv = up.matrix(a.wkv);
    l.wo_a = up.matrix(a.wo_a);
    l.wo_b = up.matrix(a.wo_b);
    l.q_norm = up.vec(a.q_norm);
    l.kv_norm = up.vec(a.kv_norm);
    l.sinks = up.vec(a.sinks);
    if (a.compressor) l.compressor = up.compressor(*a.compressor);
    if (a.indexer)
      l.indexer = IndexerOnDevice{up.compressor(a.indexer->compressor), up.matrix(a.indexer->wq_b),
                                  up.matrix(a.indexer->weights_proj)};
    const MoeWeights& m = lw.moe;
    l.gate = up.matrix(m.gate);
    l.bias = up.vec(m.bias);
    l.tid2eid = up.vec(m.tid2eid);
    std::vector<WeightMatrix> views(3 * m.experts.size());
    for (size_t e = 0; e < m.experts.size(); ++e) {
      l.experts.push_back(up.expert(m.experts[e]));
      views[e] = l.experts.back().w1->view();
      views[m.experts.size() + e] = l.experts.back().w2->view();
      views[2 * m.experts.size() + e] = l.experts.back().w3->view();
    }
    l.expert_views = up.vec(views);
    const WeightMatrix* v = l.expert_views.as<WeightMatrix>();
    l.experts_view = {v,
                      v + m.experts.size(),
                      v + 2 * m.experts.size(),
                      views.empty() ? WeightType::f32 : views.front().type,
                      views.empty() ? WeightType::f32 : views[m.experts.size()].type,
                      views.empty() ? ScaleType::f32 : views.front().scale_type};
    l.shared = up.expert(m.shared);
    out.layers.push_back(std::move(l));
  }
  auto [mf, mr] = up.rope(c.rope_main);
  auto [cf, cr] = up.rope(c.rope_compress);
  out.rope_main_freq = std::move(mf);
  out.rope_main = mr;
  out.rope_compress_freq = std::move(cf);
  out.rope_compress = cr;
  out.bytes = up.bytes;
  return out;
}

}  // namespace agentrt::engine::cuda
