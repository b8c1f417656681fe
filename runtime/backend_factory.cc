#include "runtime/backend_factory.h"

#include <stdexcept>

#include "runtime/native_backend.h"
#include "runtime/remote_backend.h"

namespace agentrt {

std::shared_ptr<Backend> make_backend(const BackendConfig& config) {
  if (config.kind == "native") {
    NativeBackendOptions options;
    options.load.threads = config.threads;
    if (config.device == "cuda")
      options.load.device = engine::Device::cuda;
    else if (config.device != "cpu")
      throw std::invalid_argument("model.device must be cpu or cuda, not '" + config.device + "'");
    return std::make_shared<NativeBackend>(config.model_path, options);
  }
  if (config.kind == "remote") {
    RemoteBackendOptions options;
    options.base_url = config.url;
    options.model = config.model_name;
    options.api_key_env = config.api_key_env;
    options.guided_decoding = config.guided_decoding;
    return std::make_shared<RemoteBackend>(options);
  }
  throw std::invalid_argument("unknown backend '" + config.kind + "' (native or remote)");
}

}  // namespace agentrt
