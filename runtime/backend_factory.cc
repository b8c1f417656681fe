#include "runtime/backend_factory.h"

#include <stdexcept>

namespace agentrt {

std::shared_ptr<Backend> make_backend(const BackendConfig& config) {
  throw std::runtime_error("backend '" + config.kind + "' is not available in this build yet");
}

}  // namespace agentrt
