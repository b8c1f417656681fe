// Tool schemas and arguments both come from outside: validate any pair.
#include "tools/json_schema_validator.h"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded() || !json.is_array() || json.size() != 2) return 0;
  try {
    agentrt::tools::validate(json[0], json[1]);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
