// GPU weight products at DeepSeek-V4-Flash shapes, the memory-bound core of batch-1 decode: for
// each stored dtype, microseconds per product, GB/s of weights (+ scales) read, and the fraction
// of the card's copy bandwidth measured in the same run (cudaMemcpy device-to-device, bytes read +
// written). Each row cycles over enough matrices to defeat the L2 cache.
//
//   bench_engine_cuda_gemv [--reps 20] [--hot 1] [--copy-probe 1] [--tensor-map 1]
//                          [--sum-group N] [--warp-rows MB] [--warp-rows-depth N]
//                          [--warp-rows-splits N] [--warp-rows-copy 2|8]
// --hot 1: one copy of each matrix, so products of matrices that fit the L2 read it from there
// (what a product costs when its weights were fetched into the L2 ahead of it).
// --tensor-map 1: FP8 tensor-core products fill their stages by tensor copies (GemvMode).
// --sum-group N: those products add up their warps' sums after one barrier per N tasks.
// --warp-rows MB: FP8 products of MB megabytes or more (in 8 or more 16-row tiles a block) with
// each warp owning whole tiles (gemv_warp_rows.cu); 0: off (the default here).
// --warp-rows-depth N: their ring slots per warp, at least (1: more warps).
// --warp-rows-splits N: column splits a tile may take (wide products with few tiles).
// --warp-rows-copy R: rows a bulk copy where rows are as wide as a stage (2 or 8).
// --copy-probe 1: instead, the streamed products' copy pipeline alone (stream_probe.h) for
// copies of 256 B to 32 KB, per 33.6 MB pass (a wo_b-sized product, cold and from the L2) and
// over 512 MiB: whether the number of copies, rather than the bytes, limits the streamed kernels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/matmul.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/stream_probe.h"
#endif

namespace {

#ifdef AGENTRT_HAVE_CUDA
using agentrt::engine::ScaleType;
using agentrt::engine::WeightMatrix;
using agentrt::engine::WeightType;
namespace cuda = agentrt::engine::cuda;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Random bytes without NaN codes (e4m3 0x7f/0xff), good for every dtype's bandwidth.
void fill(std::vector<uint8_t>& v, uint64_t seed, bool scales) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& b : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    b = scales ? uint8_t(120 + s % 8) : uint8_t(s & 0x7e);
  }
}

struct Row {
  const char* what;
  WeightType type;
  int64_t rows, cols;
};

// The copy pipeline alone (--copy-probe 1), per copy size: a 33.6 MB pass (wo_b's bytes) cold
// (16 buffers side by side) and from the L2 (one buffer), and 512 MiB passes.
void copy_probe_table(double copy_best, int reps) {
  const int64_t product = int64_t(1024) * 32768;
  const int buffers = 16;
  char* src = reinterpret_cast<char*>(cuda::device_floats(buffers * product / 4));
  cuda::zero_device(src, buffers * product);
  std::printf("%-18s %12s %7s %12s %7s %12s %7s %8s\n", "copy bytes (+pad)", "33.6MB cold", "GB/s",
              "33.6MB L2", "GB/s", "512MiB", "GB/s", "of copy");
  for (const int64_t pad : {int64_t(0), int64_t(16)})
    for (const int64_t copy : {256, 512, 1024, 2048, 4096, 8192, 32768}) {
      if (pad != 0 && copy == 32768) continue;
      const cuda::CopyProbe cold =
          cuda::stream_copy_probe(src, product, buffers, copy, pad, reps * buffers);
      const cuda::CopyProbe warm = cuda::stream_copy_probe(src, product, 1, copy, pad, reps);
      const cuda::CopyProbe large =
          cuda::stream_copy_probe(src, buffers * product, 1, copy, pad, 4);
      char what[32];
      std::snprintf(what, sizeof what, "%lld (+%lld)", (long long)copy, (long long)pad);
      std::printf("%-18s %10.1fus %7.0f %10.1fus %7.0f %10.1fus %7.0f %7.0f%%\n", what,
                  cold.us_per_pass, cold.gbps, warm.us_per_pass, warm.gbps, large.us_per_pass,
                  large.gbps, 100.0 * large.gbps / copy_best);
    }
  cuda::free_device(src);
}

#endif

}  // namespace

int main(int argc, char** argv) {
#ifndef AGENTRT_HAVE_CUDA
  (void)argc;
  (void)argv;
  std::fprintf(stderr, "bench_engine_cuda_gemv: built without CUDA\n");
  return 2;
#else
  int reps = 20;
  bool hot = false, probe = false, tensor_map = false;
  int sum_group = 1;
  int64_t warp_rows = 0;
  int warp_depth = 2, warp_splits = 1, warp_copy = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--reps") reps = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--hot") hot = std::stoi(argv[i + 1]) != 0;
    if (std::string(argv[i]) == "--copy-probe") probe = std::stoi(argv[i + 1]) != 0;
    if (std::string(argv[i]) == "--tensor-map") tensor_map = std::stoi(argv[i + 1]) != 0;
    if (std::string(argv[i]) == "--sum-group") sum_group = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--warp-rows")
      warp_rows = int64_t(std::stod(argv[i + 1]) * (1 << 20));
    if (std::string(argv[i]) == "--warp-rows-depth") warp_depth = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--warp-rows-splits") warp_splits = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--warp-rows-copy") warp_copy = std::stoi(argv[i + 1]);
  }
  std::string why;
  if (!cuda::device_available(&why)) {
    std::fprintf(stderr, "bench_engine_cuda_gemv: %s\n", why.c_str());
    return 2;
  }
  // Copy bandwidth: 1 GiB device to device.
  const int64_t copy_bytes = int64_t(1) << 30;
  float* a = cuda::device_floats(copy_bytes / 4);
  float* b = cuda::device_floats(copy_bytes / 4);
  double copy_best = 0;
  for (int r = 0; r < 5; ++r) {
    cuda::synchronize();
    const double t0 = now();
    cuda::copy_device_to_device(b, a, copy_bytes);
    cuda::synchronize();
    copy_best = std::max(copy_best, 2.0 * copy_bytes / (now() - t0) / 1e9);
  }
  cuda::free_device(a);
  cuda::free_device(b);
  std::printf("copy bandwidth (device to device, read + written): %.0f GB/s\n", copy_best);
  if (probe) {
    copy_probe_table(copy_best, reps);
    return 0;
  }
  if (hot) std::printf("one copy of each matrix: those that fit the L2 are read from it\n");
  std::printf("%-34s %6s %6s %10s %9s %8s\n", "matrix (V4-Flash shape)", "dtype", "tokens",
              "us/product", "GB/s", "of copy");

  const Row table[] = {
      {"attn.wq_b 32768x1024", WeightType::f8_e4m3, 32768, 1024},
      {"attn.wo_b 4096x8192", WeightType::f8_e4m3, 4096, 8192},
      {"attn.wq_a 1024x4096", WeightType::f8_e4m3, 1024, 4096},
      {"attn.wo_a 8192x4096", WeightType::f8_e4m3, 8192, 4096},
      {"shared w2 4096x2048", WeightType::f8_e4m3, 4096, 2048},
      {"indexer wq_b 8192x1024", WeightType::f8_e4m3, 8192, 1024},
      {"expert w1/w3 2048x4096", WeightType::f4_e2m1, 2048, 4096},
      {"expert w2 4096x2048", WeightType::f4_e2m1, 4096, 2048},
      {"expert w1 2048x4096 as fp8", WeightType::f8_e4m3, 2048, 4096},
      {"expert w1 2048x4096 as bf16", WeightType::bf16, 2048, 4096},
      {"lm_head 129280x4096", WeightType::bf16, 129280, 4096},
  };
  for (const Row& row : table) {
    const WeightMatrix shape{row.type, row.rows, row.cols, nullptr, nullptr, ScaleType::e8m0, 0};
    const int64_t bytes = shape.bytes();
    // Enough copies to exceed the L2 (50-60 MB) several times over.
    const int copies = hot ? 1 : int(std::clamp<int64_t>((int64_t(512) << 20) / bytes, 1, 64));
    std::vector<uint8_t> data(bytes), scales;
    if (row.type == WeightType::f8_e4m3)
      scales.resize(((row.rows + 127) / 128) * ((row.cols + 127) / 128));
    if (row.type == WeightType::f4_e2m1) scales.resize(row.rows * row.cols / 32);
    fill(data, 1, false);
    fill(scales, 2, true);
    WeightMatrix host = shape;
    host.data = data.data();
    host.scale = scales.empty() ? nullptr : scales.data();
    std::vector<std::unique_ptr<cuda::DeviceMatrix> > mats;
    for (int c = 0; c < copies; ++c) mats.push_back(std::make_unique<cuda::DeviceMatrix>(host));
    const int64_t read = bytes + int64_t(scales.size());
    for (int64_t n : {1, 8}) {
      float* x = cuda::device_floats(n * row.cols);
      float* y = cuda::device_floats(n * row.rows);
      cuda::zero_device(x, n * row.cols * 4);
      cuda::GemvMode mode(true, tensor_map, sum_group, true, warp_rows, warp_depth, warp_splits);
      mode.warp_rows_copy_rows = warp_copy;
      for (auto& m : mats) cuda::gemv(m->view(), x, n, y, nullptr, mode);  // warm up
      cuda::synchronize();
      const double t0 = now();
      for (int r = 0; r < reps; ++r)
        for (auto& m : mats) cuda::gemv(m->view(), x, n, y, nullptr, mode);
      cuda::synchronize();
      const double per = (now() - t0) / (double(reps) * copies);
      const double gbs = read / per / 1e9;
      std::printf("%-34s %6s %6lld %10.1f %9.0f %7.0f%%\n", row.what,
                  row.type == WeightType::f4_e2m1   ? "fp4"
                  : row.type == WeightType::f8_e4m3 ? "fp8"
                                                    : "bf16",
                  (long long)n, per * 1e6, gbs, 100.0 * gbs / copy_best);
      cuda::free_device(x);
      cuda::free_device(y);
    }
  }
  return 0;
#endif
}
