// The CUDA Model entry point. The GPU kernels landed so far are the weight products
// (device_matrix.h); the forward pass itself is not ported yet, so loading on Device::cuda says
// so plainly instead of silently running on the CPU.
#include <stdexcept>

#include "engine/cuda/device_matrix.h"
#include "engine/model.h"

namespace agentrt::engine {

std::shared_ptr<const Model> load_cuda_model(const std::filesystem::path& dir, const LoadOptions&) {
  std::string why;
  if (!cuda::device_available(&why))
    throw std::runtime_error("Model::load(" + dir.string() + ", cuda): " + why);
  throw std::runtime_error("Model::load(" + dir.string() +
                           ", cuda): the CUDA forward pass is not implemented yet (only the "
                           "weight-product kernels are); use --device cpu");
}

}  // namespace agentrt::engine
