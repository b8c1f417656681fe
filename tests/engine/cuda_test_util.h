// Shared by the GPU tests: whether they can run here, and a message saying why not.
#pragma once

#include <string>

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/device_matrix.h"
#endif

namespace agentrt::engine::testing {

// Empty when a CUDA device is usable; otherwise why the GPU tests skip.
inline std::string cuda_skip_reason() {
#ifdef AGENTRT_HAVE_CUDA
  std::string why;
  if (!cuda::device_available(&why)) return "no CUDA device: " + why;
  return {};
#else
  return "no CUDA device: the CUDA backend is not built (no nvcc at configure time)";
#endif
}

}  // namespace agentrt::engine::testing
