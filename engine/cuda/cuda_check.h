// Turns a failed CUDA runtime call into an exception naming the call, the file and the line.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace agentrt::engine::cuda {

inline void check(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                             " failed: " + cudaGetErrorString(err));
}

// The current device's SM count (a streamed kernel's grid is at most one block per SM).
inline int sm_count() {
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice", __FILE__, __LINE__);
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)", __FILE__, __LINE__);
  return sms;
}

}  // namespace agentrt::engine::cuda

#define AGENTRT_CUDA_CHECK(call) ::agentrt::engine::cuda::check((call), #call, __FILE__, __LINE__)
