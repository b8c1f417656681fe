// A .safetensors file image (checkpoints come from outside): the header parser must reject bad
// input with an exception, never read outside the image.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "engine/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tensors =
        agentrt::engine::parse_safetensors(reinterpret_cast<const char*>(data), size, "fuzz");
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : tensors)
      if (t.bytes > 0) sink = sink ^ uint8_t(t.data[t.bytes - 1]);  // views stay inside
  } catch (const std::exception&) {
  }
  return 0;
}
