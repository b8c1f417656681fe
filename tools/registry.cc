#include "tools/registry.h"

#include <chrono>
#include <stdexcept>

#include "tools/json_schema_validator.h"

namespace agentrt::tools {

void ToolRegistry::add(ToolSpec spec, ToolFunction fn) {
  if (spec.name.empty()) throw std::invalid_argument("tool without a name");
  if (!spec.parameters.is_object())
    throw std::invalid_argument("tool '" + spec.name +
                                "': parameters must be a JSON Schema object");
  std::lock_guard lock(mutex_);
  for (const auto& e : entries_) {
    if (e->spec.name == spec.name)
      throw std::invalid_argument("tool '" + spec.name + "' is already registered");
  }
  entries_.push_back(std::make_shared<const Entry>(Entry{std::move(spec), std::move(fn)}));
}

bool ToolRegistry::contains(std::string_view name) const { return find(name) != nullptr; }

const ToolSpec* ToolRegistry::find(std::string_view name) const {
  std::lock_guard lock(mutex_);
  for (const auto& e : entries_) {
    if (e->spec.name == name) return &e->spec;
  }
  return nullptr;
}

std::vector<ToolSpec> ToolRegistry::specs() const {
  std::lock_guard lock(mutex_);
  std::vector<ToolSpec> out;
  for (const auto& e : entries_) out.push_back(e->spec);
  return out;
}

nlohmann::ordered_json ToolRegistry::openai_tools() const {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& s : specs()) out.push_back(s.to_openai());
  return out;
}

std::shared_ptr<ToolRegistry> ToolRegistry::extended() const {
  auto copy = std::make_shared<ToolRegistry>();
  std::lock_guard lock(mutex_);
  copy->entries_ = entries_;
  return copy;
}

ToolResult ToolRegistry::call(std::string_view name, const nlohmann::json& arguments,
                              const ToolContext& context) const {
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<const Entry> entry;
  {
    std::lock_guard lock(mutex_);
    for (const auto& e : entries_) {
      if (e->spec.name == name) entry = e;
    }
  }
  ToolResult result;
  if (!entry) {
    result = ToolResult::error("not_found", "unknown tool '" + std::string(name) + "'");
  } else if (context.cancel && context.cancel->load()) {
    result = ToolResult::error("cancelled", "cancelled before it ran");
  } else {
    try {
      const auto errors = validate(nlohmann::json::parse(entry->spec.parameters.dump()), arguments);
      if (!errors.empty()) {
        result = ToolResult::error(
            "validation", "invalid arguments for '" + std::string(name) + "': " + describe(errors));
      } else {
        result = entry->fn(arguments, context);
      }
    } catch (const std::exception& e) {
      result = ToolResult::error("execution", std::string(name) + " failed: " + e.what());
    }
  }
  bool cut = false;
  result.content = cap_text(std::move(result.content), context.result_cap, &cut);
  result.truncated = result.truncated || cut;
  result.duration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace agentrt::tools
