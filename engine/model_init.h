// The model maker behind `agentrt model init`: a random-weight DeepSeek-V4 checkpoint
// (config.json in transformers' spelling + model.safetensors + the tokenizer files) that both
// our engine and transformers' DeepseekV4ForCausalLM load. Every parameter and buffer is
// randomised (norms, sinks, ape, hc base/scale, correction bias, tid2eid with distinct experts
// per token), so no code path hides behind a zero.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace agentrt::engine {

struct ModelInitOptions {
  std::string preset = "tiny";          // "tiny" (tests, demo) or "small" (~100M, benchmark)
  std::filesystem::path tokenizer_dir;  // copied into the checkpoint; sets vocab if vocab == 0
  int64_t vocab_size = 0;               // 0: 129280 (the real model's padded vocabulary)
  std::string dtype = "bf16";           // "bf16", "f32" or "fp8" (block-scaled linears)
  std::string expert_dtype;             // routed experts: "" (as dtype), "fp4" (MXFP4), "fp8", ...
  uint64_t seed = 0;
  // Config keys set over the preset's (tests that need other shapes, e.g. the GPU's 64 heads of
  // 512); each must be a key the preset has.
  nlohmann::json config_overrides = nlohmann::json::object();
};

// The config.json of a preset (transformers DeepseekV4Config spelling).
nlohmann::json preset_config(const std::string& preset, int64_t vocab_size);

// Writes config.json, model.safetensors and (if tokenizer_dir is set) tokenizer.json and
// tokenizer_config.json into out_dir, which is created. Throws naming the path on failure.
void write_random_model(const std::filesystem::path& out_dir, const ModelInitOptions& options);

}  // namespace agentrt::engine
