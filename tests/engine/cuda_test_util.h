// Shared by the GPU tests: whether they can run here, and a message saying why not.
#pragma once

#include <string>

#ifdef AGENTRT_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/quantize.h"
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

// x's `cols` values (a multiple of 128) as GemmPrecision::fp8 quantises activations
// (fp8_act_quant.h): each e4m3 code's value times its 128-column block's power-of-two scale.
inline std::vector<double> e4m3_block_values(const float* x, int64_t cols) {
  namespace aq = cuda::fp8_act_quant;
  std::vector<double> out(cols);
  for (int64_t kb = 0; kb < cols / aq::kBlock; ++kb) {
    const float* b = x + kb * aq::kBlock;
    float amax = 0.0f;
    for (int i = 0; i < aq::kBlock; ++i) amax = std::fmax(amax, std::fabs(b[i]));
    uint32_t bits;
    std::memcpy(&bits, &amax, 4);
    const int e = aq::scale_exponent(bits);
    const float inv = e == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e);
    for (int i = 0; i < aq::kBlock; ++i) {
      const uint8_t q = float_to_e4m3(b[i] * inv);
      const int exp = (q >> 3) & 15, man = q & 7;
      double v = exp == 15 && man == 7 ? std::nan("")
                 : exp == 0            ? std::ldexp(man / 8.0, -6)
                                       : std::ldexp(1.0 + man / 8.0, exp - 7);
      if (q & 0x80) v = -v;
      out[kb * aq::kBlock + i] = v * double(aq::exp2_exact(e));
    }
  }
  return out;
}

template <typename T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  cuda::copy_to_host(v.data(), b.get(), int64_t(count * sizeof(T)));
  return v;
}
#endif

}  // namespace agentrt::engine::testing
