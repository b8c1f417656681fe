// Model output is untrusted: the streaming DSML parser must survive any bytes, split anywhere.
#include "runtime/chat/dsml_parser.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool thinking = data[0] & 1;
  const size_t step = 1 + (data[0] >> 1) % 13;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  agentrt::chat::DsmlStreamParser parser(thinking);
  for (size_t i = 0; i < text.size(); i += step) parser.feed(text.substr(i, step));
  parser.finish(data[0] & 2);
  return 0;
}
