// Bulk asynchronous copies (sm_90's TMA engine, one-dimensional form) into shared memory, and
// the mbarriers that say when they have landed. One thread asks for kilobytes with one
// instruction and the block goes on computing: a producer can keep a ring of stages in flight
// while the other warps consume the oldest, whatever the occupancy.
#pragma once

#include <cstdint>

namespace agentrt::engine::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A barrier that completes its phase once `arrivals` threads have arrived (and every byte an
// expect_tx announced has landed).
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(arrivals)
               : "memory");
}

// Makes the initialised barriers visible to the copy engine (before the block's first sync).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` still to land on this barrier.
__device__ __forceinline__ void mbarrier_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}

// Waits until the phase of the given parity has completed. A fresh barrier is in phase 0, so
// waiting on parity 1 returns at once (the producer's first pass over its empty slots).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t a = shared_address(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(a), "r"(parity)
        : "memory");
  } while (!done);
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared
// memory; their arrival counts against `bar`'s announced bytes. Every caller streams weights,
// each byte read once a decode step (~2 GB against the L2's 50 MB), so the copies ask the L2 to
// evict their lines first: what the latency-bound kernels between the products read (the KV
// cache, activations, scales) then stays in the L2 instead of being pushed out by them.
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, uint32_t bytes,
                                                    uint64_t* bar) {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], "
      "[%1], %2, [%3], %4;" ::"r"(shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar)), "l"(policy)
      : "memory");
}

// The same without the evict-first hint, for data read again soon (the decode attention's keys:
// the KV cache rows and compressed entries every step reads).
__device__ __forceinline__ void bulk_copy_to_shared_kept(void* dst, const void* src, uint32_t bytes,
                                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar))
      : "memory");
}

// Tensor copies (tensor_map.h): the box of the tensor map `map` (a __grid_constant__ kernel
// parameter's address) at the given coordinates, innermost first, into shared memory at `dst`;
// its bytes count against `bar`'s announced bytes.
__device__ __forceinline__ void tensor_copy_2d_to_shared(void* dst, const void* map, int c0, int c1,
                                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(shared_address(bar))
      : "memory");
}
__device__ __forceinline__ void tensor_copy_3d_to_shared(void* dst, const void* map, int c0, int c1,
                                                         int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4}], [%5];" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(shared_address(bar))
      : "memory");
}

// Synchronises the first `threads` threads of the block (whole warps) on named barrier `id`
// (1..15; 0 is __syncthreads), leaving the other warps free.
__device__ __forceinline__ void named_barrier(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace agentrt::engine::cuda
