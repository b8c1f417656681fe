// The model config: the shape of a DeepSeek-V4 model as the forward passes (CPU and CUDA) need it,
// parsed from a Hugging Face config.json (transformers DeepseekV4Config field names, including
// its legacy aliases compress_ratios / compress_rate_csa / compress_rate_hca / num_hash_layers /
// qk_rope_head_dim, and the upstream expert_dtype). ModelConfig is the public name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "engine/rope.h"

namespace agentrt::engine {

enum class AttentionKind {
  sliding,
  csa,
  hca
};  // sliding only / compressed sparse / heavily compressed
enum class RouterKind { hash, topk };
enum class ScoreFunc { sqrtsoftplus, softmax, sigmoid };
// How config.json says the routed experts are stored; unspecified accepts any supported dtype.
enum class ExpertDtype { unspecified, bf16, fp8, fp4 };

struct ForwardLayer {
  AttentionKind attention = AttentionKind::sliding;
  int compress_rate = 0;  // 0 for sliding layers
  RouterKind router = RouterKind::topk;
};

struct ForwardConfig {
  int64_t vocab_size = 0;
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t rope_dim = 0;
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 0;
  int64_t hc_mult = 0;
  int hc_sinkhorn_iters = 0;
  float hc_eps = 1e-6f;
  float rms_eps = 1e-6f;
  int64_t experts = 0;
  int64_t experts_per_token = 0;
  int64_t moe_intermediate = 0;
  float routed_scaling = 1.0f;
  float swiglu_limit = 0.0f;  // <= 0: no clamp
  ScoreFunc score_func = ScoreFunc::sqrtsoftplus;
  int64_t index_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;
  bool tie_word_embeddings = false;  // lm_head reuses the embedding
  ExpertDtype expert_dtype = ExpertDtype::unspecified;
  RopeParams rope_main;
  RopeParams rope_compress;
  std::vector<ForwardLayer> layers;

  static ForwardConfig from_json(const nlohmann::json& j, const std::string& where);
  static ForwardConfig from_file(const std::filesystem::path& config_json);
  // Throws naming the first inconsistent field.
  void validate(const std::string& where) const;
};

using ModelConfig = ForwardConfig;

}  // namespace agentrt::engine
