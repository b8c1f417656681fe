// Every tensor the CPU forward pass reads, as typed views into memory-mapped safetensors files
// (matrices stay in their stored dtype and are converted inside the matmul loop) plus small
// float32 copies of vectors (norms, biases, sinks). Names follow the upstream DeepSeek-V4
// checkpoint layout (`layers.N.attn.wq_a.weight`, `embed.weight`, `hc_head_fn`, ...), which is
// also what transformers' save_pretrained writes back (it may add a `model.` prefix and keep a few
// module names such as `model.embed_tokens.weight`; both spellings are accepted).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/forward_config.h"
#include "engine/matmul.h"

namespace agentrt::engine {

struct CompressorWeights {
  WeightMatrix wkv;         // [coff * dim][hidden], coff = 2 for CSA (two series), 1 for HCA
  WeightMatrix wgate;       // same shape
  std::vector<float> ape;   // position bias [rate][coff * dim]
  std::vector<float> norm;  // [dim]
  int64_t dim = 0;
  int64_t rate = 0;
  bool overlap = false;  // CSA: entry w mixes window w-1's first series with window w's second
};

struct IndexerWeights {
  CompressorWeights compressor;  // at index_head_dim
  WeightMatrix wq_b;             // [index_heads * index_head_dim][q_lora_rank]
  WeightMatrix weights_proj;     // [index_heads][hidden]
};

struct HyperWeights {
  std::vector<float> fn;     // [(2 + hc) * hc][hc * hidden]
  std::vector<float> base;   // [(2 + hc) * hc]
  std::vector<float> scale;  // [3]
};

struct AttentionWeights {
  WeightMatrix wq_a, wq_b, wkv, wo_a, wo_b;
  std::vector<float> q_norm, kv_norm, sinks;
  std::optional<CompressorWeights> compressor;
  std::optional<IndexerWeights> indexer;
};

struct ExpertWeights {
  WeightMatrix w1, w2, w3;  // gate [inter][hidden], down [hidden][inter], up [inter][hidden]
};

struct MoeWeights {
  WeightMatrix gate;             // router [experts][hidden]
  std::vector<float> bias;       // e_score_correction_bias (top-k layers; selection only)
  std::vector<int32_t> tid2eid;  // [vocab][experts_per_token] (hash layers)
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
};

struct LayerWeights {
  HyperWeights attn_hc, ffn_hc;
  std::vector<float> attn_norm, ffn_norm;
  AttentionWeights attn;
  MoeWeights moe;
};

class SafetensorsFiles;  // the mapped files, kept alive by ForwardWeights

struct ForwardWeights {
  WeightMatrix embed, head;
  std::vector<float> norm;
  std::vector<float> hc_head_fn, hc_head_base, hc_head_scale;
  std::vector<LayerWeights> layers;
  std::shared_ptr<const SafetensorsFiles> storage;

  // Loads and checks every tensor's presence, dtype and shape against the config; errors name
  // the tensor and file.
  static ForwardWeights load(const std::filesystem::path& dir, const ForwardConfig& config);
  // Total bytes of the matrices (what one decode step streams, roughly).
  int64_t matrix_bytes() const;
};

}  // namespace agentrt::engine
