#include "runtime/workflow.h"

#include <gtest/gtest.h>

namespace agentrt {
namespace {

TEST(Workflow, ParsesEverySectionAndResolvesPaths) {
  const auto w = parse_workflow(R"(
model: {backend: native, path: models/tiny, threads: 2}
system: "Be brief."
tools:
  builtin: [shell, read_file]
  mcp: [{command: [python3, server.py], prefix: fs, timeout: 5}]
  network: true
sandbox: {timeout: 7, memory_mb: 128}
workspace: ./ws
limits: {max_steps: 3, max_tokens: 999, max_seconds: 60}
sampling: {temperature: 0.5, seed: 9}
tool_choice: required
steps:
  - "first"
  - prompt: "second uses {{steps.0.output}}"
    response_format: {type: json_schema, json_schema: {name: x, schema: {type: object}}}
    tool_choice: {type: function, function: {name: shell}}
output: {final: out/answer.txt, transcript: out/t.jsonl}
)",
                                "/flows/w.yaml");
  EXPECT_EQ(w.backend.model_path, "/flows/models/tiny");
  EXPECT_EQ(w.builtin_tools, (std::vector<std::string>{"shell", "read_file"}));
  ASSERT_EQ(w.mcp_servers.size(), 1u);
  EXPECT_EQ(w.mcp_servers[0].prefix, "fs");
  EXPECT_TRUE(w.options.tool_context.network);
  EXPECT_EQ(w.options.tool_context.workspace, "/flows/ws");
  EXPECT_EQ(w.options.tool_context.limits.memory_bytes, 128u << 20);
  EXPECT_EQ(w.options.limits.max_steps, 3);
  EXPECT_EQ(w.options.tool_choice.mode, ToolChoice::Mode::required);
  ASSERT_EQ(w.steps.size(), 2u);
  EXPECT_EQ(w.steps[1].tool_choice->name, "shell");
  EXPECT_EQ((*w.steps[1].response_format)["type"], "json_schema");
  EXPECT_EQ(*w.transcript, "/flows/out/t.jsonl");
  EXPECT_EQ(expand_step_prompt(w.steps[1].prompt, {"A"}), "second uses A");
}

TEST(Workflow, ErrorsNameTheFileAndKeyPath) {
  const auto expect_error = [](const std::string& yaml, const std::string& needle) {
    try {
      parse_workflow(yaml, "/f/w.yaml");
      FAIL() << "no error for: " << yaml;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("/f/w.yaml"), std::string::npos);
    }
  };
  expect_error("model: {backend: native, path: m}\nsteps: [a]\nbogus: 1", "bogus: unknown key");
  expect_error("model: {backend: carrier-pigeon}\nsteps: [a]", "model.backend");
  expect_error("model: {backend: native, path: m}\nsteps: [a]\ntools: {builtin: [teleport]}",
               "tools.builtin[0]");
  expect_error("model: {backend: native, path: m}\nsteps: []", "steps");
  expect_error("model: {backend: native, path: m}\nsteps: ['{{steps.3.output}}']",
               "steps[0].prompt");
  expect_error("model: {backend: native, path: m}\nsteps: [a]\nlimits: {max_steps: many}",
               "limits.max_steps");
  expect_error("model: [unclosed", "invalid YAML");
  // Found by fuzz_workflow: a mapping used as a key ("{{steps.0.output}}" at the start of a
  // line) threw yaml-cpp's TypedBadConversion out of parse_workflow.
  expect_error("model: {backend: native, path: m}\n{{steps.0.output}}: x\nsteps: [a]",
               "(top level): line 2: a key must be a plain string");
  expect_error("model: {backend: native, path: m}\nsteps: [{prompt: a, response_format: {[1]: x}}]",
               "steps[0].response_format: line 2: a key must be a plain string");
  // Found by fuzz_workflow (UBSan): memory_mb: 2.6e82 overflowed the conversion to bytes.
  expect_error("model: {backend: native, path: m}\nsteps: [a]\nsandbox: {memory_mb: 2.6e82}",
               "sandbox.memory_mb: must be a number from 0 to 16777216");
  expect_error("model: {backend: native, path: m}\nsteps: [a]\nsandbox: {timeout: -1}",
               "sandbox.timeout: must be a number from 0 to 604800");
  expect_error("model: {backend: native, path: m}\nsteps: [a]\nsandbox: {file_size_mb: .nan}",
               "sandbox.file_size_mb: must be a number");
}

}  // namespace
}  // namespace agentrt
