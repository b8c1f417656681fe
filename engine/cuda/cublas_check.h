// Turns a failed cuBLAS call into an exception naming the call and the status.
#pragma once

#include <cublas_v2.h>

#include <stdexcept>
#include <string>

namespace agentrt::engine::cuda {

inline void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed with status " +
                             std::to_string(int(s)));
}

}  // namespace agentrt::engine::cuda
