// How a captured decode step's shape costs on the GPU, with kernels that only spin: the step's
// graph is a main chain of short programmatic (PDL) kernels with side branches beside it
// (docs/cuda.md, "For the next session"). Each kernel stamps the GPU's global timer where it
// starts (after its wait) and ends, so the table gives, per replay, when the second kernel
// started after the first and the whole span, without a tracer in the way. Shapes:
//   one   every kernel on one stream, side kernels in line (their time is added)
//   fork  side chains on a second stream (event fork and join), as the engine's step graph
//   wide  three side streams, each one kernel of the chain (a wider graph: more internal streams)
//   pdl   one stream, each side kernel right after the main kernel it runs beside, launched
//         programmatically: it lets the next kernel in at once and waits for the kernel before
//         it only at its end, so the main chain's next kernel still waits for both
//   graph_probe [replays] [layers]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "engine/cuda/launch.cuh"

namespace {

using agentrt::engine::cuda::launch_pdl;
using agentrt::engine::cuda::pdl_begin;

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// side == 0: wait for the kernel before, let the next one in, work. side == 1: let the next one
// in, work, then wait for the kernel before (so this grid ends after it).
__global__ void spin_kernel(int node, uint64_t* stamps, int64_t spin_ns, int side) {
  if (side)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  else
    pdl_begin();
  const uint64_t t0 = global_ns();
  if (blockIdx.x == 0 && threadIdx.x == 0) stamps[2 * node] = t0;
  while (int64_t(global_ns() - t0) < spin_ns) {
  }
  if (side) asm volatile("griddepcontrol.wait;" ::: "memory");
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0) stamps[2 * node + 1] = global_ns();
}

struct Shape {
  int main_blocks = 100, side_blocks = 16;
  int64_t main_ns = 8000, side_ns = 5000;
};

void launch(int node, uint64_t* stamps, int64_t ns, int blocks, int side, cudaStream_t s) {
  launch_pdl(spin_kernel, dim3(blocks), dim3(128), 0, s, node, stamps, ns, side);
}

// A layer: the first main kernel, then three main kernels beside a chain of three side kernels.
// Returns the next node's number; appends the main chain's nodes to `mains`.
int capture_layer(const std::string& kind, int node, uint64_t* st, const Shape& sh, cudaStream_t s,
                  cudaStream_t side, cudaEvent_t fork, cudaEvent_t join, const cudaStream_t* sides,
                  const cudaEvent_t* joins, std::vector<int>& mains) {
  auto main_kernel = [&] {
    mains.push_back(node);
    launch(node++, st, sh.main_ns, sh.main_blocks, 0, s);
  };
  main_kernel();
  if (kind == "one") {
    for (int i = 0; i < 3; ++i) launch(node++, st, sh.side_ns, sh.side_blocks, 0, s);
    for (int i = 0; i < 3; ++i) main_kernel();
  } else if (kind == "fork") {
    AGENTRT_CUDA_CHECK(cudaEventRecord(fork, s));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(side, fork, 0));
    for (int i = 0; i < 3; ++i) launch(node++, st, sh.side_ns, sh.side_blocks, 0, side);
    for (int i = 0; i < 3; ++i) main_kernel();
    AGENTRT_CUDA_CHECK(cudaEventRecord(join, side));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(s, join, 0));
  } else if (kind == "wide") {
    AGENTRT_CUDA_CHECK(cudaEventRecord(fork, s));
    for (int b = 0; b < 3; ++b) {
      AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(sides[b], fork, 0));
      launch(node++, st, sh.side_ns, sh.side_blocks, 0, sides[b]);
    }
    for (int i = 0; i < 3; ++i) main_kernel();
    for (int b = 0; b < 3; ++b) {
      AGENTRT_CUDA_CHECK(cudaEventRecord(joins[b], sides[b]));
      AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(s, joins[b], 0));
    }
  } else {  // pdl
    for (int i = 0; i < 3; ++i) {
      main_kernel();
      launch(node++, st, sh.side_ns, sh.side_blocks, 1, s);
    }
  }
  return node;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// The table; CUDA errors throw (AGENTRT_CUDA_CHECK).
int run(int argc, char** argv) {
  const int replays = argc > 1 ? std::atoi(argv[1]) : 200;
  const int layers = argc > 2 ? std::atoi(argv[2]) : 8;
  cudaStream_t s, side;
  AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaStream_t sides[3];
  cudaEvent_t joins[3];
  for (int b = 0; b < 3; ++b) {
    AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&sides[b], cudaStreamNonBlocking));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&joins[b], cudaEventDisableTiming));
  }
  cudaEvent_t fork, join;
  AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  const int max_nodes = layers * 7 + 8;
  uint64_t* stamps;
  AGENTRT_CUDA_CHECK(cudaMalloc(&stamps, max_nodes * 2 * sizeof(uint64_t)));
  std::vector<uint64_t> host(max_nodes * 2);
  std::printf(
      "| shape | side blocks | nodes | 2nd main kernel start (us) | any 2nd kernel start (us) | "
      "span (us) | host wall (us) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int side_blocks : {16, 64}) {
    for (const std::string kind : {"one", "fork", "wide", "pdl"}) {
      Shape sh;
      sh.side_blocks = side_blocks;
      cudaGraph_t g;
      AGENTRT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      int nodes = 0;
      std::vector<int> mains;
      // The step's first kernels (the embedding, the first mHC boundary) come before any fork.
      // The first is short (the embedding's 2 us), so a late second kernel shows.
      for (int i = 0; i < 3; ++i) {
        mains.push_back(nodes);
        launch(nodes++, stamps, i == 0 ? 1000 : sh.main_ns, sh.main_blocks, 0, s);
      }
      for (int l = 0; l < layers; ++l)
        nodes = capture_layer(kind, nodes, stamps, sh, s, side, fork, join, sides, joins, mains);
      mains.push_back(nodes);
      launch(nodes++, stamps, sh.main_ns, sh.main_blocks, 0, s);
      AGENTRT_CUDA_CHECK(cudaStreamEndCapture(s, &g));
      cudaGraphExec_t exec;
      AGENTRT_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
      std::vector<double> second, any, span, wall;
      for (int r = 0; r < replays + 10; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        AGENTRT_CUDA_CHECK(cudaGraphLaunch(exec, s));
        AGENTRT_CUDA_CHECK(cudaStreamSynchronize(s));
        const auto t1 = std::chrono::steady_clock::now();
        AGENTRT_CUDA_CHECK(
            cudaMemcpy(host.data(), stamps, nodes * 2 * sizeof(uint64_t), cudaMemcpyDeviceToHost));
        if (r < 10) continue;
        uint64_t first = host[0], last = 0;
        for (int i = 0; i < nodes; ++i) {
          first = std::min(first, host[2 * i]);
          last = std::max(last, host[2 * i + 1]);
        }
        uint64_t other = UINT64_MAX;
        for (int i = 1; i < nodes; ++i) other = std::min(other, host[2 * i]);
        second.push_back((host[2 * mains[1]] - host[0]) / 1e3);
        any.push_back((other - host[0]) / 1e3);
        span.push_back((last - first) / 1e3);
        wall.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
      std::printf("| %s | %d | %d | %.2f | %.2f | %.1f | %.1f |\n", kind.c_str(), side_blocks,
                  nodes, median(second), median(any), median(span), median(wall));
      AGENTRT_CUDA_CHECK(cudaGraphExecDestroy(exec));
      AGENTRT_CUDA_CHECK(cudaGraphDestroy(g));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "graph_probe: %s\n", e.what());
    return 1;
  }
}
