// Workflow files (YAML).
#include "runtime/workflow.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    agentrt::parse_workflow(std::string(reinterpret_cast<const char*>(data), size),
                            "/tmp/fuzz/workflow.yaml");
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
