// How long a decode step's kernel waits for the one before it once that one's last block has
// stored its outputs (docs/cuda.md, "For the next session": 2-3 us were stamped between the
// attention's last store and wo_a's release, 1.9 us before an mHC boundary). A producer grid
// (132 blocks that end ~0.1 us apart, like a streamed product's tail) lets the consumer land at
// once; the consumer (32 blocks, like an mHC boundary) is released by
//   pdl    the programmatic launch's wait (griddepcontrol.wait: the grid before has ended and
//          its writes are flushed), as every kernel of the step is now
//   flag   a spin on an arrival counter that each producer block bumps after its last store
//          (every thread fences, a barrier, one atomic add), the consumer's thread 0 reading it
//          with acquire loads, then a barrier
//   plain  no programmatic launch: the consumer is launched when the producer has ended
// Each block stamps the GPU's global timer; per repetition the table takes the producer's last
// store and the consumers' median release, and prints the medians over the repetitions.
// Measured (forty-fourth session, H100 80GB HBM3, 300 repetitions): pdl 0.77 us, flag 0.51 us,
// plain 1.79 us. The spin releases only ~0.26 us sooner, and the spin at wo_b's boundary
// (CudaOptions::spin_handoff, reverted) made decode + pick @1K 1.7% slower.
//   handoff_probe [reps]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr int kProducerBlocks = 132, kProducerThreads = 512;
constexpr int kConsumerBlocks = 32, kConsumerThreads = 544;

#define CHECK(x)                                                                      \
  do {                                                                                \
    const cudaError_t e = (x);                                                        \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// stamps[block] = when its stores were done; arrived[block] = when its arrival was added.
__global__ void producer(int* out, unsigned* count, uint64_t* stored, uint64_t* arrived,
                         int64_t spin_ns, int value, int flag) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const uint64_t t0 = global_ns();
  while (global_ns() - t0 < uint64_t(spin_ns + (blockIdx.x % 16) * 100)) {
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = value;
  if (flag) __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    stored[blockIdx.x] = global_ns();
    if (flag) {
      atomicAdd(count, 1u);
      arrived[blockIdx.x] = global_ns();
    }
  }
}

__global__ void consumer(const int* out, const unsigned* count, unsigned target, uint64_t* released,
                         int value, int flag, int* wrong) {
  if (flag) {
    if (threadIdx.x == 0)
      while (load_acquire(count) < target) {
      }
    __syncthreads();
  } else {
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
  const uint64_t t = global_ns();
  const int n = kProducerBlocks * kProducerThreads;
  const int v = __ldcg(&out[(int(blockIdx.x) * 4099 + int(threadIdx.x) * 13) % n]);
  if (v != value) atomicAdd(wrong, 1);
  if (threadIdx.x == 0) released[blockIdx.x] = t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 200;
  int* out;
  unsigned* count;
  uint64_t *stored, *arrived, *released;
  int* wrong;
  CHECK(cudaMalloc(&out, sizeof(int) * kProducerBlocks * kProducerThreads));
  CHECK(cudaMalloc(&count, sizeof(unsigned)));
  CHECK(cudaMalloc(&stored, 8 * kProducerBlocks));
  CHECK(cudaMalloc(&arrived, 8 * kProducerBlocks));
  CHECK(cudaMalloc(&released, 8 * kConsumerBlocks));
  CHECK(cudaMalloc(&wrong, sizeof(int)));
  CHECK(cudaMemset(count, 0, sizeof(unsigned)));
  CHECK(cudaMemset(wrong, 0, sizeof(int)));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::printf("%-6s %14s %14s %14s %14s\n", "mode", "release us", "first us", "last us",
              "arrive us");
  unsigned target = 0;
  int value = 1;
  for (const std::string mode : {"pdl", "flag", "plain", "pdl", "flag"}) {
    const int flag = mode == "flag";
    std::vector<double> median_release, first, last, arrive;
    for (int r = 0; r < reps; ++r, ++value) {
      producer<<<kProducerBlocks, kProducerThreads, 0, stream>>>(out, count, stored, arrived, 5000,
                                                                 value, flag);
      CHECK(cudaGetLastError());
      if (flag) target += kProducerBlocks;
      cudaLaunchAttribute attribute{};
      attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attribute.val.programmaticStreamSerializationAllowed = mode != "plain";
      cudaLaunchConfig_t config{};
      config.gridDim = kConsumerBlocks;
      config.blockDim = kConsumerThreads;
      config.stream = stream;
      config.attrs = &attribute;
      config.numAttrs = 1;
      CHECK(cudaLaunchKernelEx(&config, consumer, static_cast<const int*>(out),
                               static_cast<const unsigned*>(count), target, released, value, flag,
                               wrong));
      CHECK(cudaStreamSynchronize(stream));
      std::vector<uint64_t> s(kProducerBlocks), a(kProducerBlocks), c(kConsumerBlocks);
      CHECK(cudaMemcpy(s.data(), stored, 8 * kProducerBlocks, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(a.data(), arrived, 8 * kProducerBlocks, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(c.data(), released, 8 * kConsumerBlocks, cudaMemcpyDeviceToHost));
      const uint64_t end = *std::max_element(s.begin(), s.end());
      std::vector<double> rel;
      for (uint64_t t : c) rel.push_back((double(t) - double(end)) / 1e3);
      median_release.push_back(median(rel));
      first.push_back(*std::min_element(rel.begin(), rel.end()));
      last.push_back(*std::max_element(rel.begin(), rel.end()));
      if (flag) {
        double most = 0;
        for (int b = 0; b < kProducerBlocks; ++b) most = std::max(most, double(a[b] - s[b]) / 1e3);
        arrive.push_back(most);
      }
    }
    std::printf("%-6s %14.2f %14.2f %14.2f %14.2f\n", mode.c_str(), median(median_release),
                median(first), median(last), median(arrive));
  }
  int bad = 0;
  CHECK(cudaMemcpy(&bad, wrong, sizeof(int), cudaMemcpyDeviceToHost));
  std::printf("consumers that read a stale value: %d\n", bad);
  return bad == 0 ? 0 : 1;
}
