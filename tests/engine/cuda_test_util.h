// Shared by the GPU tests: whether they can run here, and a message saying why not.
#pragma once

#include <string>

#ifdef AGENTRT_HAVE_CUDA
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cuda/device_buffer.h"
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

#ifdef AGENTRT_HAVE_CUDA
// A host vector copied into a new device buffer (at least 4 bytes), and back.
template <typename T>
cuda::DeviceBuffer upload(const std::vector<T>& v) {
  cuda::DeviceBuffer b(std::max<int64_t>(int64_t(v.size() * sizeof(T)), 4));
  cuda::copy_to_device(b.get(), v.data(), int64_t(v.size() * sizeof(T)));
  return b;
}

template <typename T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  cuda::copy_to_host(v.data(), b.get(), int64_t(count * sizeof(T)));
  return v;
}
#endif

}  // namespace agentrt::engine::testing
