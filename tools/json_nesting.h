// Nesting of JSON values from outside (client events, request bodies, chat messages, tool-call
// arguments, tool schemas and the values checked against them), measured without recursion:
// nlohmann's dump(), copies and our own walks recurse, so a value nested thousands deep is
// rejected before any of them runs. In tools/ so that the validator (tools) and the runtime share
// it.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace agentrt {

// Deep enough for any tool schema or arguments object seen in practice (BFCL, MaskBench nest
// far less), shallow enough for the recursive code behind it.
constexpr size_t kMaxJsonNesting = 128;

// True when arrays/objects in `value` nest more than `limit` levels (a scalar is 0, [] is 1).
template <typename Json>
bool nests_deeper_than(const Json& value, size_t limit = kMaxJsonNesting) {
  std::vector<std::pair<const Json*, size_t>> pending{{&value, 1}};
  while (!pending.empty()) {
    const auto [node, depth] = pending.back();
    pending.pop_back();
    if (!node->is_structured()) continue;
    if (depth > limit) return true;
    for (const auto& child : *node) pending.emplace_back(&child, depth + 1);
  }
  return false;
}

}  // namespace agentrt
