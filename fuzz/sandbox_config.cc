// The sandbox configuration parser (JSON from workflows and callers).
#include <cstddef>
#include <cstdint>

#include "sandbox/sandbox.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded()) return 0;
  try {
    agentrt::sandbox::parse_config(json);
  } catch (const agentrt::sandbox::SandboxError&) {
  }
  return 0;
}
