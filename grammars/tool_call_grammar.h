// The grammar of DeepSeek-V4's DSML tool-call block for a list of tools, so that every call the
// model writes names a declared tool and passes schema-valid parameters. Format (DeepSeek
// encoding_dsv4.py; the markers are plain text for the V3 tokenizer):
//
//   <｜DSML｜tool_calls>
//   <｜DSML｜invoke name="NAME">
//   <｜DSML｜parameter name="P" string="true">raw text</｜DSML｜parameter>
//   <｜DSML｜parameter name="Q" string="false">JSON</｜DSML｜parameter>
//   </｜DSML｜invoke>
//   </｜DSML｜tool_calls>
//
// Calls are separated by one newline; an invoke without parameters has an empty line inside.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "grammars/grammar.h"

namespace agentrt::grammars {

inline constexpr std::string_view kDsmlToolCallsOpener = "<｜DSML｜tool_calls>";
inline constexpr std::string_view kDsmlToolCallsCloser = "</｜DSML｜tool_calls>";

struct ToolSignature {
  std::string name;
  nlohmann::ordered_json parameters;  // JSON Schema of the arguments object
};

struct ToolCallGrammarOptions {
  bool parallel_calls = true;               // several invokes in one block
  std::optional<std::string> forced_tool;   // tool_choice {"function": {"name": ...}}
  bool allow_leading_text = false;          // free text (without "<｜") before the block
};

// Throws GrammarError naming the tool and schema path for unsupported parameter schemas, an
// unknown forced tool, an empty tool list or a tool name that cannot be written in DSML.
std::string tool_calls_ebnf(std::span<const ToolSignature> tools,
                            const ToolCallGrammarOptions& options = {});
Grammar tool_calls_grammar(std::span<const ToolSignature> tools,
                           const ToolCallGrammarOptions& options = {});

}  // namespace agentrt::grammars
