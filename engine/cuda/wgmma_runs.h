// Whether the kernels built for sm_90a (Hopper's warpgroup MMA: the grouped FP8 experts, the
// wgmma prefill attention) run on a device: exactly compute capability 9.0. Their compute_90
// (PTX) fallback is a trap, so the host checks this before choosing them.
#pragma once

#include <cuda_runtime.h>

#include "engine/cuda/cuda_check.h"

namespace agentrt::engine::cuda {

inline bool wgmma_kernels_run(int device) {
  int major = 0, minor = 0;
  AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

}  // namespace agentrt::engine::cuda
