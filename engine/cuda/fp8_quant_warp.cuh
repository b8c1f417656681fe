// One warp quantising one 128-value block to e4m3 with its power-of-two scale (fp8_act_quant.h):
// the activations of GemmPrecision::fp8's GEMMs (fp8_gemm.cu) and of the routed experts'
// (moe_fp8.cu).
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include "engine/cuda/fp8_act_quant.h"

namespace agentrt::engine::cuda {

// The largest magnitude of the lane's 4 values (from 0: fmaxf drops NaNs).
__device__ __forceinline__ float lane_amax(float4 v) {
  return fmaxf(fmaxf(fmaxf(0.0f, fabsf(v.x)), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
}

// The scale exponent (fp8_act_quant::scale_exponent) of the warp's largest magnitude, every lane
// passing its own.
__device__ __forceinline__ int warp_scale_exponent(float amax) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  return fp8_act_quant::scale_exponent(__float_as_uint(amax));
}

// 4 values as e4m3 codes under scale exponent e (lowest column in the lowest byte).
__device__ __forceinline__ uint32_t e4m3_codes(float4 v, int e) {
  namespace aq = fp8_act_quant;
  const float inv = e == aq::kNotFinite ? 1.0f : aq::exp2_exact(-e);
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(v.x * inv, v.y * inv), __NV_SATFINITE,
                                               __NV_E4M3),
                 hi = __nv_cvt_float2_to_fp8x2(make_float2(v.z * inv, v.w * inv), __NV_SATFINITE,
                                               __NV_E4M3);
  return lo | (hi << 16);
}

// Lane's 4 values v (columns 4 lane .. 4 lane + 3 of the block) as 4 e4m3 codes, lowest column in
// the lowest byte (round to nearest even, saturating at +-448); *scale the block's scale, the
// same in every lane. From 0: fmaxf drops NaNs, so the largest magnitude is that of the block's
// numbers (as the host reference takes it); a NaN value keeps its NaN code.
__device__ __forceinline__ uint32_t quantize_block_e4m3(float4 v, float* scale) {
  const int e = warp_scale_exponent(lane_amax(v));
  *scale = fp8_act_quant::exp2_exact(e);
  return e4m3_codes(v, e);
}

}  // namespace agentrt::engine::cuda
