// config.json of a checkpoint.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "engine/forward_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded()) return 0;
  try {
    agentrt::engine::ForwardConfig::from_json(json, "fuzz");
  } catch (const std::exception&) {
  }
  return 0;
}
