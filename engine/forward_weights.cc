#include "engine/forward_weights.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "engine/safetensors_reader.h"

namespace agentrt::engine {

namespace {

using Tensor = StoredTensor;

// Upstream name for a tensor however it was spelled (see the header).
std::string canonical_name(std::string n) {
  if (n.rfind("model.", 0) == 0) n = n.substr(6);
  if (n == "embed_tokens.weight") return "embed.weight";
  if (n == "lm_head.weight") return "head.weight";
  if (n == "hc_head.hc_fn") return "hc_head_fn";
  if (n == "hc_head.hc_base") return "hc_head_base";
  if (n == "hc_head.hc_scale") return "hc_head_scale";
  // The Hub checkpoints' name for the router's correction bias.
  const std::string bias = ".gate.e_score_correction_bias";
  if (n.ends_with(bias)) return n.substr(0, n.size() - bias.size()) + ".gate.bias";
  return n;
}

}  // namespace

namespace {

// The WeightType of a plain float safetensors dtype (F32, BF16, F16); false for any other.
bool float_type(const std::string& dtype, WeightType& type) {
  if (dtype == "F32")
    type = WeightType::f32;
  else if (dtype == "BF16")
    type = WeightType::bf16;
  else if (dtype == "F16")
    type = WeightType::f16;
  else
    return false;
  return true;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class Reader {
 public:
  explicit Reader(const SafetensorsFiles& files) : files_(files) {}

  // Every tensor of the checkpoint must have been read, except the multi-token-prediction layers
  // (`mtp.*`), which transformers ignores too.
  void check_all_used() const {
    for (const auto& [name, t] : files_.tensors())
      if (!used_.count(name) && name.rfind("mtp.", 0) != 0)
        throw std::runtime_error(t.file + ": unexpected tensor '" + name + "' for this config");
  }

  const Tensor& get(const std::string& name, std::vector<int64_t> shape) const {
    const Tensor* t = files_.find(name);
    used_.insert(name);
    if (!t) throw std::runtime_error("checkpoint: missing tensor '" + name + "'");
    if (t->shape != shape)
      throw std::runtime_error(t->file + ": tensor '" + name + "' has shape " +
                               shape_str(t->shape) + ", expected " + shape_str(shape));
    return *t;
  }

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const Tensor* packed = files_.find(name);
    if (packed && (packed->dtype == "I8" || packed->dtype == "U8" || packed->dtype == "F4"))
      return fp4_matrix(name, rows, cols);
    const Tensor& t = get(name, {rows, cols});
    WeightMatrix w;
    w.rows = rows;
    w.cols = cols;
    w.data = t.data;
    if (t.dtype == "F8_E4M3")
      fp8_scales(name, t, w);
    else if (!float_type(t.dtype, w.type))
      throw std::runtime_error(t.file + ": tensor '" + name + "' has dtype " + t.dtype +
                               "; the forward pass reads F32, BF16, F16, block-scaled F8_E4M3 or "
                               "MXFP4 (I8/U8/F4) matrices");
    return w;
  }

  // MXFP4: two E2M1 values per byte, stored as I8/U8 [rows][cols / 2] (upstream DeepSeek) or F4,
  // with one ue8m0 scale per 32 columns in `<base>.scale` [rows][cols / 32].
  WeightMatrix fp4_matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const Tensor* t = files_.find(name);
    used_.insert(name);
    if (cols % 32 != 0)
      throw std::runtime_error(t->file + ": FP4 tensor '" + name + "' has " + std::to_string(cols) +
                               " columns, not a multiple of the 32-column scale group");
    const bool shape_ok = t->shape == std::vector<int64_t>{rows, cols / 2} ||
                          (t->dtype == "F4" && t->shape == std::vector<int64_t>{rows, cols});
    if (!shape_ok || t->bytes != rows * cols / 2)
      throw std::runtime_error(t->file + ": FP4 tensor '" + name + "' has shape " +
                               shape_str(t->shape) + ", expected " + shape_str({rows, cols / 2}) +
                               " (two values per byte)");
    WeightMatrix w;
    w.type = WeightType::f4_e2m1;
    w.rows = rows;
    w.cols = cols;
    w.data = t->data;
    w.scale_type = ScaleType::e8m0;
    const std::string base = scale_base(name);
    for (const std::string& sn : {base + ".scale", name + "_scale_inv", base + ".weight_scale"}) {
      const Tensor* s = files_.find(sn);
      if (!s) continue;
      used_.insert(sn);
      const std::vector<int64_t> want = {rows, cols / 32};
      if (s->shape != want)
        throw std::runtime_error(s->file + ": scale tensor '" + sn + "' has shape " +
                                 shape_str(s->shape) + ", expected " + shape_str(want) +
                                 " (one per 32 columns)");
      if (s->dtype != "F8_E8M0" && s->dtype != "U8" && s->dtype != "I8")
        throw std::runtime_error(s->file + ": scale tensor '" + sn + "' has dtype " + s->dtype +
                                 ", expected F8_E8M0 for an FP4 weight");
      w.scale = s->data;
      return w;
    }
    throw std::runtime_error(t->file + ": FP4 tensor '" + name + "' has no scales ('" + base +
                             ".scale')");
  }

  static std::string scale_base(const std::string& name) {
    return name.size() > 7 && name.ends_with(".weight") ? name.substr(0, name.size() - 7) : name;
  }

  // FP8 weights carry one scale per 128x128 block, as `<base>.scale` (upstream DeepSeek) or
  // `<name>_scale_inv` (transformers' FP8 naming).
  void fp8_scales(const std::string& name, const Tensor& t, WeightMatrix& w) const {
    w.type = WeightType::f8_e4m3;
    const std::string base = scale_base(name);
    const std::vector<std::string> candidates = {base + ".scale", name + "_scale_inv",
                                                 base + ".weight_scale_inv"};
    for (const std::string& sn : candidates) {
      const Tensor* s = files_.find(sn);
      if (!s) continue;
      used_.insert(sn);
      const std::vector<int64_t> want = {(w.rows + 127) / 128, (w.cols + 127) / 128};
      if (s->shape != want)
        throw std::runtime_error(s->file + ": scale tensor '" + sn + "' has shape " +
                                 shape_str(s->shape) + ", expected " + shape_str(want));
      if (s->dtype == "F32")
        w.scale_type = ScaleType::f32;
      else if (s->dtype == "F8_E8M0" || s->dtype == "U8")
        w.scale_type = ScaleType::e8m0;
      else
        throw std::runtime_error(s->file + ": scale tensor '" + sn + "' has dtype " + s->dtype +
                                 ", expected F32 or F8_E8M0");
      w.scale = s->data;
      return;
    }
    throw std::runtime_error(t.file + ": FP8 tensor '" + name + "' has no block scales ('" + base +
                             ".scale')");
  }

  std::vector<float> floats(const std::string& name, std::vector<int64_t> shape) const {
    const Tensor& t = get(name, shape);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> out(n);
    WeightMatrix w;
    w.rows = 1;
    w.cols = n;
    w.data = t.data;
    if (!float_type(t.dtype, w.type))
      throw std::runtime_error(t.file + ": tensor '" + name + "' has non-float dtype " + t.dtype);
    decode_weight_row(w, 0, out.data());
    return out;
  }

  std::vector<int32_t> ints(const std::string& name, std::vector<int64_t> shape) const {
    const Tensor& t = get(name, shape);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<int32_t> out(n);
    if (t.dtype == "I64") {
      for (int64_t i = 0; i < n; ++i) {
        int64_t v;
        std::memcpy(&v, t.data + 8 * i, 8);
        out[i] = int32_t(v);
      }
    } else if (t.dtype == "I32") {
      std::memcpy(out.data(), t.data, 4 * n);
    } else {
      throw std::runtime_error(t.file + ": tensor '" + name + "' has dtype " + t.dtype +
                               ", expected I64 or I32");
    }
    return out;
  }

 private:
  const SafetensorsFiles& files_;
  mutable std::set<std::string> used_;
};

CompressorWeights load_compressor(const Reader& r, const std::string& p, int64_t dim,
                                  int64_t hidden, int64_t rate, bool overlap) {
  CompressorWeights c;
  const int64_t coff = overlap ? 2 : 1;
  c.dim = dim;
  c.rate = rate;
  c.overlap = overlap;
  c.wkv = r.matrix(p + "wkv.weight", coff * dim, hidden);
  c.wgate = r.matrix(p + "wgate.weight", coff * dim, hidden);
  c.ape = r.floats(p + "ape", {rate, coff * dim});
  c.norm = r.floats(p + "norm.weight", {dim});
  return c;
}

ExpertWeights load_expert(const Reader& r, const std::string& p, int64_t inter, int64_t hidden) {
  return {r.matrix(p + "w1.weight", inter, hidden), r.matrix(p + "w2.weight", hidden, inter),
          r.matrix(p + "w3.weight", inter, hidden)};
}

// config.json's expert_dtype must describe the routed experts actually stored.
void check_expert_dtype(const ExpertWeights& e, ExpertDtype want, const std::string& p) {
  if (want == ExpertDtype::unspecified) return;
  const WeightType expected = want == ExpertDtype::fp4   ? WeightType::f4_e2m1
                              : want == ExpertDtype::fp8 ? WeightType::f8_e4m3
                                                         : WeightType::bf16;
  const char* names[] = {"w1", "w2", "w3"};
  const WeightMatrix* ws[] = {&e.w1, &e.w2, &e.w3};
  for (int i = 0; i < 3; ++i)
    if (ws[i]->type != expected)
      throw std::runtime_error("checkpoint: config.json says expert_dtype " +
                               std::string(want == ExpertDtype::fp4   ? "fp4"
                                           : want == ExpertDtype::fp8 ? "fp8"
                                                                      : "bf16") +
                               " but tensor '" + p + names[i] + ".weight' is stored otherwise");
}

}  // namespace

ForwardWeights ForwardWeights::load(const std::filesystem::path& dir, const ForwardConfig& c) {
  auto files = std::make_shared<const SafetensorsFiles>(dir, canonical_name);
  Reader r(*files);
  ForwardWeights w;
  w.storage = files;
  const int64_t H = c.hidden, hc = c.hc_mult, mix = (2 + hc) * hc;
  w.embed = r.matrix("embed.weight", c.vocab_size, H);
  w.head = c.tie_word_embeddings ? w.embed : r.matrix("head.weight", c.vocab_size, H);
  w.norm = r.floats("norm.weight", {H});
  w.hc_head_fn = r.floats("hc_head_fn", {hc, hc * H});
  w.hc_head_base = r.floats("hc_head_base", {hc});
  w.hc_head_scale = r.floats("hc_head_scale", {1});
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const ForwardLayer& lc = c.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights l;
    for (auto [hw, name] : {std::pair{&l.attn_hc, "hc_attn_"}, std::pair{&l.ffn_hc, "hc_ffn_"}}) {
      hw->fn = r.floats(p + name + "fn", {mix, hc * H});
      hw->base = r.floats(p + name + "base", {mix});
      hw->scale = r.floats(p + name + "scale", {3});
    }
    l.attn_norm = r.floats(p + "attn_norm.weight", {H});
    l.ffn_norm = r.floats(p + "ffn_norm.weight", {H});
    AttentionWeights& a = l.attn;
    const std::string ap = p + "attn.";
    a.wq_a = r.matrix(ap + "wq_a.weight", c.q_lora_rank, H);
    a.q_norm = r.floats(ap + "q_norm.weight", {c.q_lora_rank});
    a.wq_b = r.matrix(ap + "wq_b.weight", c.heads * c.head_dim, c.q_lora_rank);
    a.wkv = r.matrix(ap + "wkv.weight", c.head_dim, H);
    a.kv_norm = r.floats(ap + "norm.weight", {c.head_dim});
    a.wo_a =
        r.matrix(ap + "wo_a.weight", c.o_groups * c.o_lora_rank, c.heads * c.head_dim / c.o_groups);
    a.wo_b = r.matrix(ap + "wo_b.weight", H, c.o_groups * c.o_lora_rank);
    a.sinks = r.floats(ap + "attn_sink", {c.heads});
    if (lc.attention != AttentionKind::sliding) {
      const bool csa = lc.attention == AttentionKind::csa;
      a.compressor = load_compressor(r, ap + "compressor.", c.head_dim, H, lc.compress_rate, csa);
      if (csa) {
        IndexerWeights ix;
        ix.compressor = load_compressor(r, ap + "indexer.compressor.", c.index_head_dim, H,
                                        lc.compress_rate, true);
        ix.wq_b =
            r.matrix(ap + "indexer.wq_b.weight", c.index_heads * c.index_head_dim, c.q_lora_rank);
        ix.weights_proj = r.matrix(ap + "indexer.weights_proj.weight", c.index_heads, H);
        a.indexer = std::move(ix);
      }
    }
    MoeWeights& m = l.moe;
    const std::string fp = p + "ffn.";
    m.gate = r.matrix(fp + "gate.weight", c.experts, H);
    if (lc.router == RouterKind::hash) {
      m.tid2eid = r.ints(fp + "gate.tid2eid", {c.vocab_size, c.experts_per_token});
      for (int32_t e : m.tid2eid)
        if (e < 0 || e >= c.experts)
          throw std::runtime_error("checkpoint: tensor '" + fp + "gate.tid2eid' holds expert id " +
                                   std::to_string(e) + " outside [0, " + std::to_string(c.experts) +
                                   ")");
    } else {
      m.bias = r.floats(fp + "gate.bias", {c.experts});
    }
    for (int64_t e = 0; e < c.experts; ++e) {
      const std::string ep = fp + "experts." + std::to_string(e) + ".";
      m.experts.push_back(load_expert(r, ep, c.moe_intermediate, H));
      check_expert_dtype(m.experts.back(), c.expert_dtype, ep);
    }
    m.shared = load_expert(r, fp + "shared_experts.", c.moe_intermediate, H);
    w.layers.push_back(std::move(l));
  }
  r.check_all_used();
  return w;
}

int64_t ForwardWeights::matrix_bytes() const {
  int64_t b = embed.bytes() / embed.rows + head.bytes();  // one embedding row per token
  for (const auto& l : layers) {
    const auto& a = l.attn;
    b += a.wq_a.bytes() + a.wq_b.bytes() + a.wkv.bytes() + a.wo_a.bytes() + a.wo_b.bytes();
    if (a.compressor) b += a.compressor->wkv.bytes() + a.compressor->wgate.bytes();
    if (a.indexer)
      b += a.indexer->compressor.wkv.bytes() + a.indexer->compressor.wgate.bytes() +
           a.indexer->wq_b.bytes() + a.indexer->weights_proj.bytes();
    b += l.moe.gate.bytes() + l.moe.shared.w1.bytes() + l.moe.shared.w2.bytes() +
         l.moe.shared.w3.bytes();
  }
  return b;
}

}  // namespace agentrt::engine
