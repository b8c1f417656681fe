// The cluster barrier in its two halves (PTX barrier.cluster, sm_90): arrive releases this
// thread's writes (to its own and other blocks' shared memory), wait acquires everyone's. The
// relaxed arrive orders nothing: it only says the block has started, so a later wait tells a
// block that every other block's shared memory exists before it pushes into it.
#pragma once

namespace agentrt::engine::cuda {

__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

}  // namespace agentrt::engine::cuda
