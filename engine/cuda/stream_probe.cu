#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/stream_probe.h"
#include "engine/cuda/stream_ring.cuh"

namespace agentrt::engine::cuda {
namespace {

using stream::kConsumerWarps;
using stream::kHeader;
using stream::kThreads;
constexpr int64_t kStageBytes = 32768;  // the streamed kernels' stage size

struct ProbeArgs {
  const char* src;
  int64_t stages_total;  // 32 KB stages in the buffer
  int64_t copy_bytes, row_pad;
  int stages;  // ring depth
  float* sink;
};

__global__ void __launch_bounds__(kThreads, 1) copy_probe_kernel(ProbeArgs a) {
  extern __shared__ __align__(128) char smem[];
  const int64_t copies = kStageBytes / a.copy_bytes, stride = a.copy_bytes + a.row_pad;
  const int64_t stage_bytes = copies * stride;
  char* ring = smem + kHeader;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t t0 = int64_t(blockIdx.x) * a.stages_total / gridDim.x,
                t1 = int64_t(blockIdx.x + 1) * a.stages_total / gridDim.x;
  const stream::Ring bars = stream::init_ring(smem, a.stages);
  // As in the streamed kernels, the producer starts before the previous kernel has finished.
  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    stream::SlotCursor slot{a.stages};
    for (int64_t t = t0; t < t1; ++t) {
      const stream::Slot s = slot.next();
      mbarrier_wait(&bars.empty[s.index], s.parity ^ 1u);
      mbarrier_arrive_expect(&bars.full[s.index], uint32_t(kStageBytes));
      const char* src = a.src + t * kStageBytes;
      char* dst = ring + s.index * stage_bytes;
      for (int64_t c = 0; c < copies; ++c)
        bulk_copy_to_shared(dst + c * stride, src + c * a.copy_bytes, uint32_t(a.copy_bytes),
                            &bars.full[s.index]);
    }
    return;
  }
  pdl_begin();
  // Each consumer lane reads one word of every stage, so the stage is really waited for.
  stream::SlotCursor slot{a.stages};
  uint32_t acc = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const stream::Slot s = slot.next();
    mbarrier_wait(&bars.full[s.index], s.parity);
    acc ^= *reinterpret_cast<const uint32_t*>(ring + s.index * stage_bytes +
                                              (int64_t(threadIdx.x) * 64) % stage_bytes);
    stream::release(bars, s);
  }
  if (acc == 0x9E3779B9u) a.sink[threadIdx.x] = 1.0f;  // keeps the reads
}

}  // namespace

CopyProbe stream_copy_probe(const void* src, int64_t bytes, int buffers, int64_t copy_bytes,
                            int64_t row_pad, int passes) {
  if (bytes <= 0 || bytes % kStageBytes != 0 || buffers < 1 || passes < 1 || copy_bytes < 256 ||
      copy_bytes > kStageBytes || (copy_bytes & (copy_bytes - 1)) != 0 || row_pad < 0 ||
      row_pad % 16 != 0)
    throw std::invalid_argument("stream_copy_probe: bytes " + std::to_string(bytes) +
                                " (a multiple of 32 KB), copy_bytes " + std::to_string(copy_bytes) +
                                " (a power of two, 256..32768), row_pad " +
                                std::to_string(row_pad) + " (a multiple of 16)");
  const int64_t stage_bytes = (kStageBytes / copy_bytes) * (copy_bytes + row_pad);
  const int stages = stream::ring_stages(kHeader, stage_bytes);
  if (stages == 0) throw std::invalid_argument("stream_copy_probe: stages do not fit");
  const int64_t shared = kHeader + stages * stage_bytes;
  AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
      copy_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  float* sink = nullptr;
  AGENTRT_CUDA_CHECK(cudaMalloc(&sink, kThreads * sizeof(float)));
  ProbeArgs a{
      static_cast<const char*>(src), bytes / kStageBytes, copy_bytes, row_pad, stages, sink};
  const unsigned grid = unsigned(sm_count());
  cudaEvent_t start, stop;
  AGENTRT_CUDA_CHECK(cudaEventCreate(&start));
  AGENTRT_CUDA_CHECK(cudaEventCreate(&stop));
  for (int warm = 0; warm < 2; ++warm)
    launch_pdl(copy_probe_kernel, grid, kThreads, size_t(shared), nullptr, a);
  AGENTRT_CUDA_CHECK(cudaEventRecord(start));
  for (int p = 0; p < passes; ++p) {
    a.src = static_cast<const char*>(src) + (p % buffers) * bytes;
    launch_pdl(copy_probe_kernel, grid, kThreads, size_t(shared), nullptr, a);
  }
  AGENTRT_CUDA_CHECK(cudaEventRecord(stop));
  AGENTRT_CUDA_CHECK(cudaEventSynchronize(stop));
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  float ms = 0;
  AGENTRT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  AGENTRT_CUDA_CHECK(cudaEventDestroy(start));
  AGENTRT_CUDA_CHECK(cudaEventDestroy(stop));
  AGENTRT_CUDA_CHECK(cudaFree(sink));
  CopyProbe r;
  r.us_per_pass = 1e3 * ms / passes;
  r.gbps = double(bytes) / (r.us_per_pass * 1e-6) / 1e9;
  return r;
}

}  // namespace agentrt::engine::cuda
