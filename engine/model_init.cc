#include "engine/model_init.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>

#include "engine/quantize.h"
#include "engine/safetensors_writer.h"

namespace agentrt::engine {

nlohmann::json preset_config(const std::string& preset, int64_t vocab) {
  nlohmann::ordered_json c;
  const bool small = preset == "small";
  if (!small && preset != "tiny") {
    throw std::invalid_argument("unknown preset '" + preset + "' (expected tiny or small)");
  }
  c["architectures"] = {"DeepseekV4ForCausalLM"};
  c["model_type"] = "deepseek_v4";
  c["vocab_size"] = vocab;
  c["hidden_size"] = small ? 256 : 64;
  c["num_hidden_layers"] = small ? 6 : 4;
  c["num_attention_heads"] = small ? 8 : 4;
  c["num_key_value_heads"] = 1;
  c["head_dim"] = small ? 64 : 32;
  c["qk_rope_head_dim"] = small ? 16 : 8;
  c["partial_rotary_factor"] = 0.25;
  c["q_lora_rank"] = small ? 128 : 32;
  c["o_groups"] = small ? 4 : 2;
  c["o_lora_rank"] = small ? 64 : 16;
  c["sliding_window"] = small ? 128 : 32;
  c["layer_types"] =
      small ? nlohmann::ordered_json{"sliding_attention",
                                     "compressed_sparse_attention",
                                     "heavily_compressed_attention",
                                     "compressed_sparse_attention",
                                     "heavily_compressed_attention",
                                     "compressed_sparse_attention"}
            : nlohmann::ordered_json{"sliding_attention", "compressed_sparse_attention",
                                     "heavily_compressed_attention", "compressed_sparse_attention"};
  c["mlp_layer_types"] =
      small ? nlohmann::ordered_json{"hash_moe", "hash_moe", "moe", "moe", "moe", "moe"}
            : nlohmann::ordered_json{"hash_moe", "moe", "moe", "moe"};
  c["compress_rates"] = {{"compressed_sparse_attention", 4},
                         {"heavily_compressed_attention", small ? 32 : 16}};
  c["compress_rope_theta"] = 160000.0;
  c["rope_theta"] = 10000.0;
  c["rope_parameters"] = {
      {"main",
       {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}}},
      {"compress",
       {{"rope_type", "yarn"},
        {"rope_theta", 160000.0},
        {"factor", 4.0},
        {"original_max_position_embeddings", 4096},
        {"beta_fast", 32.0},
        {"beta_slow", 1.0},
        {"attention_factor", 1.0},
        {"partial_rotary_factor", 0.25}}}};
  c["hc_mult"] = small ? 4 : 2;
  c["hc_sinkhorn_iters"] = 20;
  c["hc_eps"] = 1e-6;
  c["index_n_heads"] = 12;
  c["index_head_dim"] = small ? 32 : 16;
  c["index_topk"] = small ? 16 : 8;
  c["n_routed_experts"] = 8;
  c["n_shared_experts"] = 1;
  c["num_experts_per_tok"] = 2;
  c["moe_intermediate_size"] = small ? 256 : 32;
  c["norm_topk_prob"] = true;
  c["routed_scaling_factor"] = 1.5;
  c["scoring_func"] = "sqrtsoftplus";
  c["swiglu_limit"] = 10.0;
  c["rms_norm_eps"] = 1e-6;
  c["max_position_embeddings"] = 65536;
  c["num_nextn_predict_layers"] = 0;
  c["tie_word_embeddings"] = false;
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["initializer_range"] = 0.02;
  c["bos_token_id"] = 0;
  c["eos_token_id"] = 1;
  c["dtype"] = "bfloat16";
  return c;
}

namespace {

class RandomTensors {
 public:
  RandomTensors(uint64_t seed, std::string dtype) : rng_(seed), dtype_(std::move(dtype)) {}

  // Gaussian values: mean + std * N(0, 1).
  // storage: "F32", "BF16" or "" for the model's default.
  void normal(const std::string& name, std::vector<int64_t> shape, float mean, float std,
              const std::string& storage = "") {
    const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    std::normal_distribution<float> dist(0.0f, 1.0f);
    const std::string dt = !storage.empty() ? storage : dtype_ == "f32" ? "F32" : "BF16";
    TensorToWrite t{name, dt, std::move(shape), {}};
    if (t.dtype == "F32") {
      t.bytes.resize(n * 4);
      for (int64_t i = 0; i < n; ++i) {
        const float v = mean + std * dist(rng_);
        std::memcpy(&t.bytes[i * 4], &v, 4);
      }
    } else {
      t.bytes.resize(n * 2);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = float_to_bf16(mean + std * dist(rng_));
        std::memcpy(&t.bytes[i * 2], &v, 2);
      }
    }
    tensors_.push_back(std::move(t));
  }

  // A weight matrix [rows][cols] scaled so activations keep their size: std 1/sqrt(cols), stored
  // as `dtype` (the default dtype, or "fp8" block-scaled / "fp4" MXFP4 with `<base>.scale`).
  void matrix(const std::string& name, int64_t rows, int64_t cols, const std::string& dtype = "") {
    const float std = 1.0f / std::sqrt(static_cast<float>(cols));
    if (dtype != "fp8" && dtype != "fp4") {
      normal(name, {rows, cols}, 0.0f, std, dtype == "f32" ? "F32" : dtype == "bf16" ? "BF16" : "");
      return;
    }
    std::normal_distribution<float> dist(0.0f, std);
    std::vector<float> v(rows * cols);
    for (float& x : v) x = dist(rng_);
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    if (dtype == "fp8") {
      QuantizedMatrix q = quantize_fp8_blocks(v.data(), rows, cols);
      tensors_.push_back({name, "F8_E4M3", {rows, cols}, std::move(q.data)});
      tensors_.push_back({base + ".scale",
                          "F8_E8M0",
                          {(rows + 127) / 128, (cols + 127) / 128},
                          std::move(q.scales)});
    } else {
      QuantizedMatrix q = quantize_mxfp4(v.data(), rows, cols);
      tensors_.push_back({name, "I8", {rows, cols / 2}, std::move(q.data)});
      tensors_.push_back({base + ".scale", "F8_E8M0", {rows, cols / 32}, std::move(q.scales)});
    }
  }

  // Hash routing table: for each token, k distinct experts.
  void tid2eid(const std::string& name, int64_t vocab, int64_t experts, int64_t k) {
    TensorToWrite t{name, "I64", {vocab, k}, std::vector<uint8_t>(vocab * k * 8)};
    std::vector<int64_t> ids(experts);
    for (int64_t v = 0; v < vocab; ++v) {
      std::iota(ids.begin(), ids.end(), 0);
      for (int64_t j = 0; j < k; ++j) {
        std::uniform_int_distribution<int64_t> pick(j, experts - 1);
        std::swap(ids[j], ids[pick(rng_)]);
        std::memcpy(&t.bytes[(v * k + j) * 8], &ids[j], 8);
      }
    }
    tensors_.push_back(std::move(t));
  }

  std::vector<TensorToWrite>& tensors() { return tensors_; }

 private:
  std::mt19937_64 rng_;
  std::string dtype_;
  std::vector<TensorToWrite> tensors_;
};

int64_t get(const nlohmann::json& c, const char* key) { return c.at(key).get<int64_t>(); }

}  // namespace

void write_random_model(const std::filesystem::path& out_dir, const ModelInitOptions& options) {
  if (options.dtype != "bf16" && options.dtype != "f32" && options.dtype != "fp8") {
    throw std::invalid_argument("model init: --dtype must be bf16, f32 or fp8, not '" +
                                options.dtype + "'");
  }
  const std::string& expert_dtype =
      options.expert_dtype.empty() ? options.dtype : options.expert_dtype;
  if (expert_dtype != "bf16" && expert_dtype != "f32" && expert_dtype != "fp8" &&
      expert_dtype != "fp4") {
    throw std::invalid_argument("model init: --expert-dtype must be bf16, f32, fp8 or fp4, not '" +
                                expert_dtype + "'");
  }
  // Matrices in the chosen dtype; fp8 keeps embedding and head in bf16, as real checkpoints do.
  const std::string linear = options.dtype == "fp8" ? "fp8" : "";
  int64_t vocab = options.vocab_size > 0 ? options.vocab_size : 129280;
  nlohmann::json c = preset_config(options.preset, vocab);
  for (const auto& [key, value] : options.config_overrides.items()) {
    if (!c.contains(key))
      throw std::invalid_argument("model init: config override '" + key +
                                  "' is not a key of the '" + options.preset + "' preset");
    c[key] = value;
  }
  const int64_t H = get(c, "hidden_size"), L = get(c, "num_hidden_layers"),
                heads = get(c, "num_attention_heads");
  const int64_t hd = get(c, "head_dim"), qr = get(c, "q_lora_rank"), og = get(c, "o_groups"),
                orank = get(c, "o_lora_rank");
  const int64_t hc = get(c, "hc_mult"), E = get(c, "n_routed_experts"),
                k = get(c, "num_experts_per_tok");
  const int64_t inter = get(c, "moe_intermediate_size"), ih = get(c, "index_n_heads"),
                ihd = get(c, "index_head_dim");
  const int64_t mix = (2 + hc) * hc;

  RandomTensors r(options.seed, options.dtype == "f32" ? "f32" : "bf16");
  r.matrix("model.embed_tokens.weight", vocab, H);
  r.matrix("head.weight", vocab, H);
  r.normal("model.norm.weight", {H}, 1.0f, 0.1f, "F32");
  r.normal("model.hc_head.hc_fn", {hc, hc * H}, 0.0f, 0.02f, "F32");
  r.normal("model.hc_head.hc_base", {hc}, 0.0f, 0.5f, "F32");
  r.normal("model.hc_head.hc_scale", {1}, 1.0f, 0.1f, "F32");
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string type = c["layer_types"][l].get<std::string>();
    for (const char* which : {"attn", "ffn"}) {
      r.normal(p + "hc_" + which + "_fn", {mix, hc * H}, 0.0f, 0.02f, "F32");
      r.normal(p + "hc_" + which + "_base", {mix}, 0.0f, 0.5f, "F32");
      r.normal(p + "hc_" + which + "_scale", {3}, 1.0f, 0.1f, "F32");
    }
    r.normal(p + "attn_norm.weight", {H}, 1.0f, 0.1f, "F32");
    r.normal(p + "ffn_norm.weight", {H}, 1.0f, 0.1f, "F32");
    r.matrix(p + "attn.wq_a.weight", qr, H, linear);
    r.normal(p + "attn.q_norm.weight", {qr}, 1.0f, 0.1f, "F32");
    r.matrix(p + "attn.wq_b.weight", heads * hd, qr, linear);
    r.matrix(p + "attn.wkv.weight", hd, H, linear);
    r.normal(p + "attn.norm.weight", {hd}, 1.0f, 0.1f, "F32");
    r.matrix(p + "attn.wo_a.weight", og * orank, heads * hd / og, linear);
    r.matrix(p + "attn.wo_b.weight", H, og * orank, linear);
    r.normal(p + "attn.attn_sink", {heads}, 0.0f, 1.0f, "F32");
    if (type != "sliding_attention") {
      const bool csa = type == "compressed_sparse_attention";
      const int64_t rate = c["compress_rates"][type].get<int64_t>();
      const int64_t coff = csa ? 2 : 1;
      r.matrix(p + "attn.compressor.wkv.weight", coff * hd, H, linear);
      r.matrix(p + "attn.compressor.wgate.weight", coff * hd, H, linear);
      r.normal(p + "attn.compressor.ape", {rate, coff * hd}, 0.0f, 0.5f, "F32");
      r.normal(p + "attn.compressor.norm.weight", {hd}, 1.0f, 0.1f, "F32");
      if (csa) {
        r.matrix(p + "attn.indexer.compressor.wkv.weight", 2 * ihd, H, linear);
        r.matrix(p + "attn.indexer.compressor.wgate.weight", 2 * ihd, H, linear);
        r.normal(p + "attn.indexer.compressor.ape", {rate, 2 * ihd}, 0.0f, 0.5f, "F32");
        r.normal(p + "attn.indexer.compressor.norm.weight", {ihd}, 1.0f, 0.1f, "F32");
        r.matrix(p + "attn.indexer.wq_b.weight", ih * ihd, qr, linear);
        r.matrix(p + "attn.indexer.weights_proj.weight", ih, H, linear);
      }
    }
    r.matrix(p + "ffn.gate.weight", E, H);
    if (c["mlp_layer_types"][l] == "hash_moe") {
      r.tid2eid(p + "ffn.gate.tid2eid", vocab, E, k);
    } else {
      r.normal(p + "ffn.gate.bias", {E}, 0.0f, 0.1f, "F32");
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = p + "ffn.experts." + std::to_string(e) + ".";
      r.matrix(ep + "w1.weight", inter, H, expert_dtype);
      r.matrix(ep + "w2.weight", H, inter, expert_dtype);
      r.matrix(ep + "w3.weight", inter, H, expert_dtype);
    }
    r.matrix(p + "ffn.shared_experts.w1.weight", inter, H, linear);
    r.matrix(p + "ffn.shared_experts.w2.weight", H, inter, linear);
    r.matrix(p + "ffn.shared_experts.w3.weight", inter, H, linear);
  }

  std::filesystem::create_directories(out_dir);
  {
    std::ofstream out(out_dir / "config.json");
    if (!out) throw std::runtime_error((out_dir / "config.json").string() + ": cannot write");
    nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(c.dump());
    if (options.dtype == "f32") cfg["dtype"] = "float32";
    if (expert_dtype == "fp4" || expert_dtype == "fp8") cfg["expert_dtype"] = expert_dtype;
    out << cfg.dump(2) << "\n";
  }
  write_safetensors(out_dir / "model.safetensors", r.tensors());
  if (!options.tokenizer_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      const auto from = options.tokenizer_dir / f;
      if (!std::filesystem::exists(from))
        throw std::runtime_error(from.string() + ": not found (--vocab-from)");
      std::filesystem::copy_file(from, out_dir / f,
                                 std::filesystem::copy_options::overwrite_existing);
    }
  }
}

}  // namespace agentrt::engine
