#include "engine/forward_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace agentrt::engine {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": " + what);
}

template <typename T>
T required(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) fail(where, std::string("missing field '") + key + "'");
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    fail(where, std::string("field '") + key + "' has the wrong type: " + e.what());
  }
}

template <typename T>
T optional(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

RopeParams parse_rope(const json& r, double theta_fallback, int dim, const std::string& where) {
  RopeParams p;
  p.dim = dim;
  p.theta = optional<double>(r, "rope_theta", theta_fallback);
  const std::string type =
      optional<std::string>(r, "rope_type", optional<std::string>(r, "type", "default"));
  if (type == "yarn") {
    p.kind = RopeParams::Kind::yarn;
    p.factor = required<double>(r, "factor", where);
    p.original_max_position = required<double>(r, "original_max_position_embeddings", where);
    p.beta_fast = optional<double>(r, "beta_fast", 32.0);
    p.beta_slow = optional<double>(r, "beta_slow", 1.0);
    p.attention_factor = optional<double>(r, "attention_factor", 1.0);
  } else if (type != "default") {
    fail(where, "unsupported rope_type '" + type + "'");
  }
  return p;
}

AttentionKind parse_layer_type(const std::string& s, const std::string& where) {
  if (s == "sliding_attention") return AttentionKind::sliding;
  if (s == "compressed_sparse_attention") return AttentionKind::csa;
  if (s == "heavily_compressed_attention") return AttentionKind::hca;
  fail(where, "unknown layer type '" + s + "'");
}

}  // namespace

ForwardConfig ForwardConfig::from_json(const json& j, const std::string& where) {
  ForwardConfig c;
  c.vocab_size = required<int64_t>(j, "vocab_size", where);
  c.hidden = required<int64_t>(j, "hidden_size", where);
  c.heads = required<int64_t>(j, "num_attention_heads", where);
  c.head_dim = required<int64_t>(j, "head_dim", where);
  c.q_lora_rank = required<int64_t>(j, "q_lora_rank", where);
  c.o_groups = required<int64_t>(j, "o_groups", where);
  c.o_lora_rank = required<int64_t>(j, "o_lora_rank", where);
  c.sliding_window = required<int64_t>(j, "sliding_window", where);
  c.hc_mult = required<int64_t>(j, "hc_mult", where);
  c.hc_sinkhorn_iters = optional<int>(j, "hc_sinkhorn_iters", 20);
  c.hc_eps = optional<float>(j, "hc_eps", 1e-6f);
  c.rms_eps = optional<float>(j, "rms_norm_eps", 1e-6f);
  c.experts =
      optional<int64_t>(j, "n_routed_experts", optional<int64_t>(j, "num_local_experts", 0));
  c.experts_per_token = required<int64_t>(j, "num_experts_per_tok", where);
  c.moe_intermediate =
      optional<int64_t>(j, "moe_intermediate_size", optional<int64_t>(j, "intermediate_size", 0));
  c.routed_scaling = optional<float>(j, "routed_scaling_factor", 1.0f);
  c.swiglu_limit = optional<float>(j, "swiglu_limit", 0.0f);
  const std::string score = optional<std::string>(j, "scoring_func", "sqrtsoftplus");
  if (score == "sqrtsoftplus")
    c.score_func = ScoreFunc::sqrtsoftplus;
  else if (score == "softmax")
    c.score_func = ScoreFunc::softmax;
  else if (score == "sigmoid")
    c.score_func = ScoreFunc::sigmoid;
  else
    fail(where, "unknown scoring_func '" + score + "'");
  c.index_heads = optional<int64_t>(j, "index_n_heads", 0);
  c.index_head_dim = optional<int64_t>(j, "index_head_dim", 0);
  c.index_topk = optional<int64_t>(j, "index_topk", 0);
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false);
  // Real V4 checkpoints say how their routed experts are stored: "fp4" (MXFP4, V4-Flash) or "fp8"
  // (block-scaled, the Base models); the loader holds the expert tensors to it.
  std::string expert_dtype = optional<std::string>(j, "expert_dtype", "");
  if (expert_dtype.empty() && j.contains("quantization_config") &&
      j["quantization_config"].is_object())
    expert_dtype = optional<std::string>(j["quantization_config"], "expert_dtype", "");
  if (expert_dtype == "fp4")
    c.expert_dtype = ExpertDtype::fp4;
  else if (expert_dtype == "fp8")
    c.expert_dtype = ExpertDtype::fp8;
  else if (expert_dtype == "bf16" || expert_dtype == "bfloat16")
    c.expert_dtype = ExpertDtype::bf16;
  else if (!expert_dtype.empty())
    fail(where, "unknown expert_dtype '" + expert_dtype + "' (expected fp4, fp8 or bf16)");

  // Rope dim: partial_rotary_factor * head_dim, or the legacy qk_rope_head_dim.
  if (j.contains("qk_rope_head_dim") && !j["qk_rope_head_dim"].is_null()) {
    c.rope_dim = j["qk_rope_head_dim"].get<int64_t>();
  } else {
    c.rope_dim = int64_t(c.head_dim * optional<double>(j, "partial_rotary_factor", 64.0 / 512.0));
  }
  const double rope_theta = optional<double>(j, "rope_theta", 10000.0);
  const double compress_theta = optional<double>(j, "compress_rope_theta", 160000.0);
  const json empty = json::object();
  const json& rp =
      j.contains("rope_parameters") && j["rope_parameters"].is_object()
          ? j["rope_parameters"]
          : (j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"]
                                                                         : empty);
  if (rp.contains("main") && rp["main"].is_object()) {
    c.rope_main =
        parse_rope(rp["main"], rope_theta, int(c.rope_dim), where + " rope_parameters.main");
    c.rope_compress = parse_rope(rp["compress"], compress_theta, int(c.rope_dim),
                                 where + " rope_parameters.compress");
  } else {
    // Flat form: the scaling (if any) applies to the compress rope only (DeepseekV4Config).
    c.rope_main.dim = int(c.rope_dim);
    c.rope_main.theta = rope_theta;
    json flat = rp;
    flat["rope_theta"] = compress_theta;
    c.rope_compress = parse_rope(flat, compress_theta, int(c.rope_dim), where + " rope_parameters");
  }

  const int64_t n = required<int64_t>(j, "num_hidden_layers", where);
  int csa_rate = 4, hca_rate = 128;
  if (j.contains("compress_rates") && j["compress_rates"].is_object()) {
    csa_rate = optional<int>(j["compress_rates"], "compressed_sparse_attention", csa_rate);
    hca_rate = optional<int>(j["compress_rates"], "heavily_compressed_attention", hca_rate);
  }
  csa_rate = optional<int>(j, "compress_rate_csa", csa_rate);
  hca_rate = optional<int>(j, "compress_rate_hca", hca_rate);
  std::vector<AttentionKind> kinds;
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& t : j["layer_types"])
      kinds.push_back(parse_layer_type(t.get<std::string>(), where));
  } else if (j.contains("compress_ratios") && j["compress_ratios"].is_array()) {
    for (const auto& r : j["compress_ratios"]) {
      const int v = r.get<int>();
      kinds.push_back(v == 0   ? AttentionKind::sliding
                      : v == 4 ? AttentionKind::csa
                               : AttentionKind::hca);
    }
  } else {
    for (int64_t i = 0; i < n; ++i)
      kinds.push_back(i < 2 ? AttentionKind::hca
                            : (i % 2 ? AttentionKind::csa : AttentionKind::hca));
  }
  if (int64_t(kinds.size()) < n)
    fail(where, "layer_types has fewer entries than num_hidden_layers");
  std::vector<RouterKind> routers;
  if (j.contains("mlp_layer_types") && j["mlp_layer_types"].is_array()) {
    for (const auto& t : j["mlp_layer_types"]) {
      const std::string s = t.get<std::string>();
      if (s == "hash_moe")
        routers.push_back(RouterKind::hash);
      else if (s == "moe")
        routers.push_back(RouterKind::topk);
      else
        fail(where, "unknown mlp layer type '" + s + "'");
    }
  } else {
    const int64_t hash = optional<int64_t>(j, "num_hash_layers", 3);
    for (int64_t i = 0; i < n; ++i)
      routers.push_back(i < hash ? RouterKind::hash : RouterKind::topk);
  }
  if (int64_t(routers.size()) < n)
    fail(where, "mlp_layer_types has fewer entries than num_hidden_layers");
  for (int64_t i = 0; i < n; ++i) {
    ForwardLayer l;
    l.attention = kinds[i];
    l.compress_rate = kinds[i] == AttentionKind::csa   ? csa_rate
                      : kinds[i] == AttentionKind::hca ? hca_rate
                                                       : 0;
    l.router = routers[i];
    c.layers.push_back(l);
  }
  c.validate(where);
  return c;
}

ForwardConfig ForwardConfig::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  json j;
  try {
    in >> j;
  } catch (const json::exception& e) {
    throw std::runtime_error(path.string() + ": invalid JSON: " + e.what());
  }
  return from_json(j, path.string());
}

void ForwardConfig::validate(const std::string& where) const {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail(where, std::string(name) + " must be positive, got " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden, "hidden_size");
  positive(heads, "num_attention_heads");
  positive(head_dim, "head_dim");
  positive(q_lora_rank, "q_lora_rank");
  positive(o_groups, "o_groups");
  positive(o_lora_rank, "o_lora_rank");
  positive(sliding_window, "sliding_window");
  positive(hc_mult, "hc_mult");
  positive(experts, "n_routed_experts");
  positive(experts_per_token, "num_experts_per_tok");
  positive(moe_intermediate, "moe_intermediate_size");
  if (rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2)
    fail(where,
         "rope dim (head_dim * partial_rotary_factor) must be even and in (0, head_dim], got " +
             std::to_string(rope_dim));
  if ((heads * head_dim) % o_groups)
    fail(where, "num_attention_heads * head_dim must be divisible by o_groups");
  if (experts_per_token > experts) fail(where, "num_experts_per_tok exceeds n_routed_experts");
  // Fixed-size scratch in the kernels (hyper_connection.h, compressor.cc).
  if (hc_mult > 16)
    fail(where, "hc_mult above 16 is not supported, got " + std::to_string(hc_mult));
  if (rope_dim > 512)
    fail(where, "rope dim above 512 is not supported, got " + std::to_string(rope_dim));
  if (hc_sinkhorn_iters < 1) fail(where, "hc_sinkhorn_iters must be >= 1");
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    if (l.attention != AttentionKind::sliding && l.compress_rate <= 0)
      fail(where, "layer " + std::to_string(i) + ": compress rate must be positive");
    if (l.attention == AttentionKind::csa) {
      positive(index_heads, "index_n_heads");
      positive(index_topk, "index_topk");
      if (index_head_dim < rope_dim)
        fail(where,
             "index_head_dim must be at least the rope dim (" + std::to_string(rope_dim) + ")");
    }
  }
  if (layers.empty()) fail(where, "num_hidden_layers must be positive");
}

}  // namespace agentrt::engine
