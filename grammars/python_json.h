// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it (separators
// ", " and ": ", keys in insertion order, non-ASCII kept raw). DeepSeek's prompt encoder
// serialises tool schemas and non-string arguments this way, and our prompts must match it
// byte for byte (runtime/chat); MaskBench's instances are tokenized from this text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace agentrt::grammars {

std::string python_json_dumps(const nlohmann::ordered_json& value);

// JSON string literal of `text`, Python-style (\" \\ \n \r \t \b \f, other controls \u00XX).
std::string python_json_string(std::string_view text);

}  // namespace agentrt::grammars
