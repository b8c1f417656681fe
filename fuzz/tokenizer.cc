// Arbitrary bytes through the tokenizer (AGENTRT_TOKENIZER names a tokenizer.json folder):
// encode must not crash and decode(encode(x)) == x.
#include "engine/tokenizer.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::shared_ptr<const agentrt::engine::Tokenizer> tokenizer = [] {
    const char* dir = std::getenv("AGENTRT_TOKENIZER");
    return dir ? agentrt::engine::Tokenizer::load(dir) : nullptr;
  }();
  if (!tokenizer) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto ids = tokenizer->encode(text, size > 0 && (data[0] & 1));
  if (tokenizer->decode(ids) != text) std::abort();
  return 0;
}
