// Workflow files (YAML): a model/backend, a system prompt, tools, sandbox limits, a workspace,
// steps (user prompts whose outputs can feed later steps as {{steps.N.output}}, each with an
// optional response_format and tool_choice), and outputs. Parsed and validated once; errors
// name the file and key path. The format is documented in docs/workflows.md.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/agent.h"
#include "tools/mcp_client.h"

namespace agentrt {

struct BackendConfig {
  std::string kind = "native";       // native | remote
  std::filesystem::path model_path;  // native: checkpoint folder
  std::string device = "cpu";        // native: cpu | cuda
  int threads = 0;
  std::string url;         // remote: base URL of an OpenAI-compatible server
  std::string model_name;  // remote: "model" field
  std::string api_key_env = "OPENAI_API_KEY";
  std::string guided_decoding = "none";  // remote: none | vllm | sglang
};

struct WorkflowStep {
  std::string prompt;
  std::optional<nlohmann::json> response_format;
  std::optional<ToolChoice> tool_choice;
};

struct Workflow {
  std::filesystem::path file;
  BackendConfig backend;
  std::vector<std::string> builtin_tools;
  std::vector<tools::McpServerConfig> mcp_servers;
  AgentOptions options;
  std::vector<WorkflowStep> steps;
  std::optional<std::filesystem::path> final_output;
  std::optional<std::filesystem::path> transcript;
};

// Throws std::invalid_argument "FILE: key.path: what" on anything unknown or malformed.
// Relative paths resolve against the workflow file's folder.
Workflow load_workflow(const std::filesystem::path& file);
Workflow parse_workflow(const std::string& yaml_text, const std::filesystem::path& file);

// Replaces {{steps.N.output}} (0-based) with earlier outputs; an unknown reference is an error.
std::string expand_step_prompt(const std::string& prompt, const std::vector<std::string>& outputs);

struct WorkflowResult {
  std::vector<TurnResult> steps;
  bool ok = true;
};

// Runs every step in one session. Events go to on_event (with the step index).
WorkflowResult run_workflow(const Workflow& workflow, std::shared_ptr<Backend> backend,
                            const std::function<void(int step, const AgentEvent&)>& on_event);

}  // namespace agentrt
