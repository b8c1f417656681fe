// Workflow files (YAML).
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/workflow.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    agentrt::parse_workflow(std::string(reinterpret_cast<const char*>(data), size), "/tmp/fuzz/workflow.yaml");
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
