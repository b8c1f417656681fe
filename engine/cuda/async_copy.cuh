// cp.async (sm_80+): 16-byte copies from global to shared memory that proceed while the thread
// goes on, so a block can fetch its next tile while it computes on this one.
#pragma once

namespace agentrt::engine::cuda {

__device__ __forceinline__ void cp_async_16(void* shared, const void* global) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}

// The same to a shared address (__cvta_generic_to_shared's), so a run of copies can add constant
// offsets to one address.
__device__ __forceinline__ void cp_async_16_at(unsigned shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared), "l"(global) : "memory");
}

// The same, zero-filled (nothing read) where !valid.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
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
