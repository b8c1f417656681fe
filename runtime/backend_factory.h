// Builds the backend a workflow or the CLI names: the native engine with a local model (the
// embedded default) or a remote OpenAI-compatible server.
#pragma once

#include <memory>

#include "runtime/backend.h"
#include "runtime/workflow.h"

namespace agentrt {

std::shared_ptr<Backend> make_backend(const BackendConfig& config);

}  // namespace agentrt
