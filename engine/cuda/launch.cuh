// Programmatic dependent launch (sm_90): a kernel started with launch_pdl may be scheduled while
// the kernel before it in the stream is still running, so its blocks are resident and waiting
// when that one ends instead of being launched then (decode steps are chains of ~150 short
// kernels; the gaps between them were a large part of a step). Every block of such a kernel
// calls pdl_begin() before it touches memory: it waits until the previous kernel has finished
// and its writes are visible, and lets the next kernel be scheduled. Every block waits, so a
// grid never finishes before the grid before it. By default the next kernel is let in after
// the wait; built with AGENTRT_PDL_EARLY_TRIGGER it is let in before, so a chain of kernels
// becomes resident as far as shared memory and registers allow (a streamed product's blocks
// then land on each SM as the product before it leaves, and start copying their weights). On
// an H100 that measured the same (seventeenth session: decode @1K 902.3 against 908.2 tok/s,
// three rounds each), so it is off. Either way the code before pdl_begin() may only read memory
// no kernel writes (weights).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "engine/cuda/cuda_check.h"

namespace agentrt::engine::cuda {

__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#ifdef AGENTRT_PDL_EARLY_TRIGGER
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#else
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#endif
}

// For a producer about to issue its copy number `issued` (0, 1, ...) of constant weights: after
// `early` of them (none if early <= 0) it waits for the previous kernel and its writes, without
// letting the next kernel in (its block's pdl_begin() does that), so that the copies before that
// kernel ends compete with it for memory no more than `early` do (GemvMode::early_stages).
__device__ __forceinline__ void pdl_hold_copies(int64_t issued, int early) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (early > 0 && issued == early) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Waits until the previous kernel has finished and its writes are visible, without letting the
// next kernel in: for a producer that copied constant weights first and now needs what that
// kernel wrote (its block's other threads call pdl_begin()).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Asks the L2 to fetch [p, p + bytes) (16-byte aligned, a multiple of 16) without waiting for
// it: one instruction for a whole weight row. Kernels issue it for memory no kernel writes
// (weights) before pdl_begin(), so the fetch overlaps the previous kernel.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// kernel<<<grid, block, shared, stream>>>(args...), with programmatic stream serialization
// where `pdl`, its blocks in clusters of `cluster` along x where cluster > 0 (sm_90: they are
// resident together and share their shared memory).
template <typename... Params, typename... Args>
void launch_ex(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
               bool pdl, unsigned cluster, Args&&... args) {
  cudaLaunchAttribute attributes[2]{};
  unsigned count = 0;
  if (pdl) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 0) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count++].val.clusterDim = {cluster, 1, 1};
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  AGENTRT_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// launch_pdl for a kernel whose blocks work in clusters of `cluster` along x; cluster 0: no
// clusters.
template <typename... Params, typename... Args>
void launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                        cudaStream_t stream, unsigned cluster, Args&&... args) {
  launch_ex(kernel, grid, block, shared, stream, true, cluster, std::forward<Args>(args)...);
}

// In clusters without programmatic serialization (a graph's first node, or after a copy).
template <typename... Params, typename... Args>
void launch_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                    cudaStream_t stream, unsigned cluster, Args&&... args) {
  launch_ex(kernel, grid, block, shared, stream, false, cluster, std::forward<Args>(args)...);
}

// kernel<<<grid, block, shared, stream>>>(args...) with programmatic stream serialization.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                cudaStream_t stream, Args&&... args) {
  launch_pdl_cluster(kernel, grid, block, shared, stream, 0u, std::forward<Args>(args)...);
}

// Blocks of 256 threads for a grid-stride loop over `total` items, at most 65,536 of them.
inline unsigned grid_for(int64_t total) {
  return unsigned(std::min<int64_t>((total + 255) / 256, 65536));
}

}  // namespace agentrt::engine::cuda
