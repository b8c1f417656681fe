// Embedding agentrt: an application registers its own tool (a callable with a JSON Schema),
// runs one agent turn on the native engine and watches the events.
//   embed_example MODEL_DIR "question"
#include <cstdio>
#include <memory>

#include "runtime/agent.h"
#include "runtime/native_backend.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR QUESTION\n", argv[0]);
    return 2;
  }
  try {
    auto backend = std::make_shared<agentrt::NativeBackend>(argv[1]);
    auto tools = std::make_shared<agentrt::tools::ToolRegistry>();
    tools->add(
        {"lookup_price", "Price of a product in euros",
         nlohmann::ordered_json::parse(
             R"({"type":"object","properties":{"product":{"type":"string","maxLength":32}},"required":["product"]})")},
        [](const nlohmann::json& args, const agentrt::tools::ToolContext&) {
          agentrt::tools::ToolResult r;
          r.content = args["product"].get<std::string>() + " costs 12.50 EUR";
          return r;
        });
    agentrt::AgentOptions options;
    options.tool_choice.mode =
        agentrt::ToolChoice::Mode::required;  // first turn must call the tool
    options.limits.max_steps = 3;
    options.max_tokens_per_step = 128;
    options.value_bounds = {24, 3, 1000};
    agentrt::Agent agent(backend, tools, options);
    auto session = agent.new_session();
    const auto result = session->send(argv[2], [](const agentrt::AgentEvent& e) {
      if (e.kind == agentrt::AgentEvent::Kind::tool_call_end)
        std::printf("[call] %s %s\n", e.name.c_str(), e.data.dump().c_str());
      if (e.kind == agentrt::AgentEvent::Kind::tool_result)
        std::printf("[result] %s\n", e.text.c_str());
    });
    std::printf("stop: %s after %d step(s)\n", std::string(agentrt::to_string(result.stop)).c_str(),
                result.steps);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
