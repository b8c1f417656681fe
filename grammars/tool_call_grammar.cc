#include "grammars/tool_call_grammar.h"

#include <vector>

#include "grammars/json_schema_compiler.h"
#include "grammars/schema_strings.h"

namespace agentrt::grammars {
namespace {

const std::string kDsml = "｜DSML｜";

std::string join_alternatives(const std::vector<std::string>& alts) {
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

struct Parameter {
  std::string rule;  // the whole <parameter ...>value</parameter> line, without the newline
  bool required = false;
};

// Rules for one tool's invoke element; returns the invoke rule name.
std::string invoke_rule(const ToolSignature& tool, size_t index, std::string& rules) {
  const std::string prefix = "t" + std::to_string(index) + "-";
  auto fail = [&](const std::string& what) {
    throw GrammarError("tool '" + tool.name + "': " + what);
  };
  if (tool.name.empty() || tool.name.find_first_of("\"<>\n") != std::string::npos) {
    fail("the name cannot be written in a DSML invoke tag");
  }
  JsonSchemaOptions options;
  options.allow_additional_by_default = false;
  options.approximate = true;
  const nlohmann::ordered_json& params = tool.parameters;
  nlohmann::ordered_json properties = nlohmann::ordered_json::object();
  std::vector<std::string> required;
  if (!params.is_null()) {
    if (!params.is_object()) fail("parameters must be a JSON Schema object");
    if (params.contains("type") && params["type"] != "object") fail("parameters must have \"type\": \"object\"");
    for (const auto& [k, v] : params.items()) {
      static const std::vector<std::string> allowed = {
          "type", "properties", "required", "additionalProperties", "description", "title",
          "$schema", "$defs", "definitions", "$comment"};
      if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
        fail("/" + k + ": unsupported keyword '" + k + "' at the parameters level");
      }
    }
    if (params.contains("additionalProperties") && params["additionalProperties"] != false) {
      fail("/additionalProperties: undeclared parameters are not supported in DSML calls");
    }
    if (params.contains("properties")) properties = params["properties"];
    if (params.contains("required")) required = params["required"].get<std::vector<std::string>>();
  }
  for (const auto& r : required) {
    if (!properties.contains(r)) fail("/required: required parameter '" + r + "' is not in properties");
  }
  JsonSchemaCompiler compiler(params.is_null() ? nlohmann::ordered_json::object() : params, options, prefix);
  std::vector<Parameter> parameters;
  for (const auto& [name, schema] : properties.items()) {
    if (name.find_first_of("\"<>\n") != std::string::npos) fail("parameter name '" + name + "' cannot be written in DSML");
    const std::string path = "/properties/" + pointer_token(name);
    const bool req = std::find(required.begin(), required.end(), name) != required.end();
    const std::string open = "<" + kDsml + "parameter name=\"" + name + "\" string=\"";
    const std::string close = "</" + kDsml + "parameter>";
    std::string body;
    try {
      if (auto raw = compiler.compile_raw_string(schema, path)) {
        body = ebnf_literal(open + "true\">") + (raw->empty() ? "" : " " + *raw) + " " + ebnf_literal(close);
      } else if (auto json = compiler.compile(schema, path)) {
        body = ebnf_literal(open + "false\">") + " " + *json + " " + ebnf_literal(close);
      }
    } catch (const GrammarError& e) {
      fail(e.what());
    }
    if (body.empty()) {
      if (req) fail(path + ": no value satisfies the schema of required parameter '" + name + "'");
      continue;
    }
    const std::string rule = prefix + "p" + std::to_string(parameters.size());
    rules += rule + " ::= " + body + "\n";
    parameters.push_back({rule, req});
  }
  rules += compiler.rules_text();
  // Parameters in `properties` order, each followed by a newline; with none written the
  // invoke holds one empty line, as DeepSeek's encoder writes it.
  std::string args;
  bool any_required = false;
  for (const auto& p : parameters) any_required = any_required || p.required;
  auto items_from = [&](size_t first) {
    std::string out;
    for (size_t i = first; i < parameters.size(); ++i) {
      std::string item = parameters[i].rule + " \"\\n\"";
      out += (out.empty() ? "" : " ") + (parameters[i].required ? item : "(" + item + ")?");
    }
    return out;
  };
  if (parameters.empty()) {
    args = "\"\\n\"";
  } else if (any_required) {
    args = items_from(0);
  } else {
    std::vector<std::string> alts = {"\"\\n\""};
    for (size_t j = 0; j < parameters.size(); ++j) {
      std::string rest = items_from(j + 1);
      alts.push_back(parameters[j].rule + " \"\\n\"" + (rest.empty() ? "" : " " + rest));
    }
    args = join_alternatives(alts);
  }
  const std::string name = prefix + "invoke";
  rules += name + " ::= " + ebnf_literal("<" + kDsml + "invoke name=\"" + tool.name + "\">\n") +
           " " + args + " " + ebnf_literal("</" + kDsml + "invoke>") + "\n";
  return name;
}

}  // namespace

std::string tool_calls_ebnf(std::span<const ToolSignature> tools,
                            const ToolCallGrammarOptions& options) {
  if (tools.empty()) throw GrammarError("tool-call grammar: the tool list is empty");
  std::string rules;
  std::vector<std::string> invokes;
  bool forced_found = false;
  for (size_t i = 0; i < tools.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (tools[j].name == tools[i].name) throw GrammarError("tool '" + tools[i].name + "' is declared twice");
    }
    if (options.forced_tool && *options.forced_tool != tools[i].name) continue;
    forced_found = true;
    invokes.push_back(invoke_rule(tools[i], i, rules));
  }
  if (options.forced_tool && !forced_found) {
    throw GrammarError("tool-call grammar: forced tool '" + *options.forced_tool + "' is not among the tools");
  }
  const std::string invoke = join_alternatives(invokes);
  std::string calls = options.parallel_calls ? invoke + " (\"\\n\" " + invoke + ")*" : invoke;
  std::string root = "root ::= ";
  if (options.allow_leading_text) {
    // Text without "<｜", so that the opener is where the block starts.
    root += "([^<] | \"<\"+ [^<｜])* \"<\"* ";
  }
  root += ebnf_literal(std::string(kDsmlToolCallsOpener) + "\n") + " " + calls + " " +
          ebnf_literal("\n" + std::string(kDsmlToolCallsCloser)) + "\n";
  return root + rules;
}

Grammar tool_calls_grammar(std::span<const ToolSignature> tools,
                           const ToolCallGrammarOptions& options) {
  return Grammar::from_ebnf(tool_calls_ebnf(tools, options), "root");
}

}  // namespace agentrt::grammars
