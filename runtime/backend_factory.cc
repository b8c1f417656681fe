#include "runtime/backend_factory.h"

#include <stdexcept>

#include "runtime/native_backend.h"

namespace agentrt {

std::shared_ptr<Backend> make_backend(const BackendConfig& config) {
  if (config.kind == "native") {
    NativeBackendOptions options;
    options.load.threads = config.threads;
    if (config.device == "cuda") options.load.device = engine::Device::cuda;
    else if (config.device != "cpu") throw std::invalid_argument("model.device must be cpu or cuda, not '" + config.device + "'");
    return std::make_shared<NativeBackend>(config.model_path, options);
  }
  throw std::runtime_error("backend '" + config.kind + "' is not available in this build (the remote backend is not implemented yet)");
}

}  // namespace agentrt
