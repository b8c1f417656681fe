// The JSON Schema `format` values we enforce, as anchored ECMAScript-subset regexes over the
// decoded string. Each is a sound subset of the RFC grammar it names (docs/grammars.md lists
// the simplifications); unknown formats are annotations and are not enforced.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace agentrt::grammars {

// The regex for a known format, or nullopt for a format we do not know.
std::optional<std::string> format_regex(std::string_view format);

// Formats that validators commonly assert but that we cannot enforce (regex, json-pointer,
// uri-template, iri, idn-*...): schemas using them do not compile rather than accept invalid
// strings.
bool is_unsupported_format(std::string_view format);

}  // namespace agentrt::grammars
