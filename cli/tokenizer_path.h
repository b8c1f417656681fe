// Where the CLI finds the tokenizer and models by default: $AGENTRT_HOME (or the build's
// models cache) /models/deepseek-v3-tokenizer.
#pragma once

#include <cstdlib>
#include <filesystem>

namespace agentrt::cli {

inline std::filesystem::path agentrt_home() {
  if (const char* env = std::getenv("AGENTRT_HOME"); env && *env) return env;
  return AGENTRT_HOME_DEFAULT;
}

inline std::filesystem::path default_tokenizer_dir() {
  return agentrt_home() / "models" / "deepseek-v3-tokenizer";
}

}  // namespace agentrt::cli
