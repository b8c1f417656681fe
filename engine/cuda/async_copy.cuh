// cp.async (sm_80+): 16-byte copies from global to shared memory that proceed while the thread
// goes on, so a block can fetch its next tile while it computes on this one.
#pragma once

#include <cstdint>

namespace agentrt::engine::cuda {

__device__ __forceinline__ void cp_async_16(void* shared, const void* global) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}

// The same, zero-filled (nothing read) where !valid.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}

// An L2 cache policy (sm_80+) for ldg_hinted: every line it touches marked evict-first (data
// read once, streamed past what stays). volatile: with plain asm, ptxas folded the policy away
// (its loads took the default descriptor) and left a cp.async's policy register unset (an
// illegal instruction on an H100, twenty-ninth session).
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// A read-only float4 load (as __ldg) under an L2 cache policy.
__device__ __forceinline__ float4 ldg_hinted(const float4* p, uint64_t policy) {
  float4 v;
  asm("ld.global.nc.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], %5;"
      : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
      : "l"(p), "l"(policy));
  return v;
}

// 4 bytes (through the L1).
__device__ __forceinline__ void cp_async_4(void* shared, const void* global) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(global) : "memory");
}

// Ends the group of copies issued so far.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits for every copy this thread issued (a __syncthreads() then makes all threads' visible).
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight (a pipeline of
// N + 1 tiles: the oldest has landed, the N after it may still be coming).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace agentrt::engine::cuda
