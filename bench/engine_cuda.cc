// CUDA engine throughput on a DeepSeek-V4-Flash-shaped checkpoint (scripts/
// make_v4_flash_checkpoint.py writes one with random weights in the native precisions), next to
// the card's limits measured in the same run: device-to-device copy bandwidth and cuBLAS's bf16
// GEMM rate. Prints one table:
//   - batch-1 decode at each context (the logits row back; then decode+pick, the generation
//     loop's step: the greedy pick on the GPU, the next step queued ahead): tokens/s, the bytes a
//     decode step must read (weights of the dense parts and of the 6 + 1 active experts, lm_head,
//     the KV rows attended and the indexer keys scanned), and that traffic over the copy bandwidth;
//   - prefill of each context: tokens/s and matrix + attention TFLOP/s against the GEMM peak;
//   - batched decode (8, 32, 64 sequences at --batch-context) throughput: logits rows back, the
//     greedy pick on the GPU (each row fed its choice, the next step queued ahead), sampling;
//   - peak GPU memory.
//
//   bench_engine_cuda MODEL_DIR [--contexts 1024,16384,65536] [--steps 16]
//                     [--batches 8,32,64] [--batch-context 1024] [--precision bf16x2|bf16|f32|fp8]
//                     [--profile 1]   (GPU time per stage of a decode step, CUDA events)
//                     [--repeat-stage NAME] (launch that stage twice in every pass: the decode
//                                      step's extra time is the stage's cost inside the graph;
//                                      scripts/device_stage_costs.sh runs every stage)
//                     [--ncu-steps N] (N decode steps at the first context between
//                                      cudaProfilerStart/Stop, for ncu --profile-from-start off)
//                     [--fp4-expert-gemm 1] (prefill's FP4 experts through fp4_gemm.cu)
//                     [--fp8-expert-streams 1|2] (under --precision fp8, the streams the
//                     routed experts' FP8 GEMMs alternate between; default 2)
//                     [--fp8-grouped-rows N] (under --precision fp8, passes of at most N rows
//                     run the routed experts as two grouped wgmma launches reading the FP4
//                     weights as stored, CudaOptions::fp8_grouped_rows; default every pass, 0
//                     never: converted copies and one cuBLASLt GEMM per expert)
//                     [--fp8-row-scales 0|1] (that grouped path with one scale per activation
//                     row and per weight block's whole rows, no promotion in the kernel,
//                     CudaOptions::fp8_row_scales; default 1, 0: per-128-column scales)
//                     [--expert-priority-stream 1] (prefill's routed experts on a stream of the
//                     highest priority, CudaOptions::expert_priority_stream; no faster)
//                     [--key-mirrors 0] (prefill attention and indexer convert each float32
//                     tile of keys in every block instead of streaming bf16 keys converted
//                     once a pass, CudaOptions::key_mirrors)
//                     [--query-rope-in-attention 0] (prefill: the query's per-head norm and
//                     RoPE as a pass of their own over the float32 query instead of in the
//                     tensor-core attention's load, CudaOptions::query_rope_in_attention)
//                     [--attention-channels 128|256] (output channels a warp of the prefill
//                     tensor-core attention owns, CudaOptions::attention_warp_channels)
//                     [--wgmma-attention 0|1] (the prefill attention on warpgroup MMA where the
//                     GPU is sm_90 and the products plain bf16, CudaOptions::wgmma_attention)
//                     [--prefill-mhc-pass 0] (prefill mHC: post step, GEMM and sum of squares
//                     as three passes, not one, CudaOptions::prefill_mhc_pass)
//                     [--prefill-pre-staged 0] (prefill mHC: the pre step's streams in
//                     registers, not staged in shared memory, CudaOptions::prefill_pre_staged)
//                     [--attention-fp8-out 0] (fp8 prefill: float32 attention outputs that wo_a's
//                     GEMM quantises, not e4m3 rows from the attention,
//                     CudaOptions::attention_fp8_out)
//                     [--query-bf16 0] (fp8 prefill: wq_b's GEMMs write the query as float32 rows,
//                     not bf16, CudaOptions::query_bf16)
//                     [--pair-out-bf16 0] (fp8 prefill's grouped experts: the down product's pair
//                     rows in float32, not bf16, CudaOptions::pair_out_bf16)
//                     [--indexer-wgmma 0] (prefill's indexer scores on mma.sync, not warpgroup MMA,
//                     CudaOptions::indexer_wgmma)
//                     [--spare-caches N] (retired sequences' caches kept for new ones,
//                     CudaOptions::spare_caches; default 1, 0: each sequence allocates its own)
//                     [--gate-up-bf16 0] (fp8 prefill's grouped experts: the gate/up product in
//                     float32, not bf16, for the SwiGLU pass, CudaOptions::gate_up_bf16)
//                     [--fp8-block-rows 0] (fp8 prefill's grouped experts: the SwiGLU and token
//                     quantisation a warp a row, not a block, CudaOptions::fp8_block_rows)
//                     [--attention-lean 0] (the wgmma attention as it was, not with fewer
//                     instructions a tile, CudaOptions::attention_lean) [--attention-query-ahead
//                     N] (lean: the L2 asked for the query N rows on; -1, the default: the SM
//                     count; 0: none)
//                     [--shared-fp8-rows 0] (fp8 prefill's shared expert: float32 SwiGLU rows
//                     for the down product's quantiser, not its e4m3 rows written by the
//                     SwiGLU, CudaOptions::shared_fp8_rows)
//                     [--shared-gate-up-bf16 1] (with it: the gate and up products as bf16,
//                     CudaOptions::shared_gate_up_bf16)
//                     [--defer-metadata 0] (the layers' metadata packed and uploaded before the
//                     first kernel, not after the first ones, CudaOptions::defer_layer_metadata)
//                     [--fp8-scatter-rows 0] (with block rows: tokens' rows quantised into
//                     token rows and copied to their slots, CudaOptions::fp8_scatter_rows)
//                     [--tensor-map 1] (decode's FP8 tensor-core products: one tensor copy
//                     a stage, CudaOptions::tensor_map_copies)
//                     [--sum-group N] (those products' cross-warp sums: one barrier per N
//                     tasks, CudaOptions::gemv_sum_group)
//                     [--batch-streams 0] (decode batches' products on the CUDA-core GEMV,
//                     once per 8 rows, CudaOptions::batch_streams)
//                     [--gemv-rows N] (decode batches of up to N rows stream the stored
//                     weights and replay graphs, CudaOptions::gemv_max_rows; default 16)
//                     [--warp-rows MB] (one-row FP8 products of MB megabytes or more, 8 tiles
//                     a block or more, with each warp owning whole 16-row tiles,
//                     CudaOptions::warp_rows_bytes; default 16, 0: off)
//                     [--warp-rows-depth N] (their ring slots per warp, at least; default 2)
//                     [--warp-rows-splits N] (column splits a tile may take, each another
//                     warp's, so wide products with few tiles qualify too; default 1)
//                     [--split-chains 0|1|2] (the KV row and the compressors' chains on two
//                     branches, CudaOptions::split_kv_chains; 2: the second joins only before
//                     the attention; default 1)
//                     [--warp-rows-copy 2|8] (rows a bulk copy where rows are as wide as a
//                     stage, wq_b's; CudaOptions::warp_rows_copy_rows; default 2)
//                     [--early-stages N] (streamed one-row products copy at most N stages
//                     of weights each before the kernel before ends, CudaOptions::early_stages;
//                     default 0: as many as their ring holds)
//                     [--attention-splits N] (decode attention: at most N key slices a row,
//                     CudaOptions::decode_attention_splits; default 0, up to 16)
//                     [--attention-chunk N] (one decode row: the attention's blocks hold N
//                     keys at once, CudaOptions::decode_attention_chunk_keys; default 48;
//                     0: the shape's 16)
//                     [--attention-ka 2|4] (one decode row, cluster attention: keys a warp
//                     scores together, CudaOptions::decode_attention_keys_at_once; default 4)
//                     [--attention-bulk 0|1] (one decode row: each key row by one bulk
//                     copy, CudaOptions::decode_attention_bulk_keys; default 1)
//                     [--pick-cluster 0|1] (greedy picks on their own as one cluster of 8
//                     blocks, CudaOptions::pick_cluster; default 0)
//                     [--pick-uploads 0|1] (the pick before a step copies the step's metadata
//                     up itself, CudaOptions::pick_uploads_step; default 1)
//                     [--moe-separate-sum 0|1] (one decode row: the routed experts' sum
//                     in a buffer of its own, not waiting for the shared expert's,
//                     CudaOptions::moe_separate_sum; default 0)
//                     [--moe-early-down 0|1] (decode rows: the routed down kernel's
//                     weights copied before the up kernel ends, CudaOptions::
//                     moe_early_down; default 1)
//                     [--shared-in-experts 0|1|2] (decode rows: the shared expert's products
//                     as tasks of the routed experts' streamed kernels, 2: its down product
//                     only, CudaOptions::shared_in_experts; default 0)
//                     [--attention-slices 8|16] (one decode row, cluster attention: the
//                     most key slices of a head group, CudaOptions::
//                     decode_attention_cluster_slices; default 8)
//                     [--attention-beside 0|1] (one decode row: the attention's blocks leave
//                     room for wo_a's beside them, CudaOptions::attention_beside_wo_a;
//                     default 1)
//                     [--attention-cluster 0|1] (one decode row: each head group's key
//                     slices a cluster merging in distributed shared memory,
//                     CudaOptions::attention_cluster; default 1)
//                     [--decode-ahead 0] (decode+pick: each greedy choice queues the next
//                     step, fed with the picked token on the device, before the host reads
//                     the pick, CudaOptions::decode_ahead; default 1)
//                     [--split-graph 1] (a captured decode step as two graphs: the
//                     embedding and the first mHC boundary, then the rest,
//                     CudaOptions::split_step_graph; default 0)
//                     [--staged-meta 1] (replayed steps' metadata uploaded to a device
//                     staging on its own stream and copied into place by the feed kernel,
//                     CudaOptions::staged_step_metadata; default 0)
//                     [--graph-device-launch 1] (step graphs instantiated for device launch,
//                     CudaOptions::graph_device_launch; default 0)
//                     [--pick-in-graph 0|1] (decode+pick: the greedy pick as the first node of
//                     the next step's graph, CudaOptions::pick_in_step_graph; default 1)
//                     [--pick-feeds 0|1] (with --pick-in-graph 1: the pick writes the step's
//                     token, no feed kernel, CudaOptions::pick_feeds_step; default 1)
//                     [--pick-before 0|1] (with --pick-in-graph 1: the pick launched on its
//                     own right before the step's graph, CudaOptions::pick_before_step;
//                     default 1)
//                     [--pick-mask-early 0|1] (with --pick-in-graph 1: the pick's mask up on
//                     the copy stream when queued, CudaOptions::pick_mask_early; default 1)
//                     [--lead-prefetch MB] (decode-sized passes: up to MB of the first
//                     layer's query weights asked into the L2 beside the step's first kernel,
//                     CudaOptions::lead_prefetch_bytes; default 0: none)
//                     [--head-prefetch MB] (one-row decode: MB of the head's weights, each
//                     block's first bytes, asked into the L2 during the last layer,
//                     CudaOptions::head_prefetch_bytes; default 0: none)
//                     [--head-prefetch-from K] (forked K sublayers before the head: 1 the last
//                     MoE section, 2 the last attention, ...; default 1)
//                     [--head-prefetch-last 1] (under an evict-last policy; default 0)
//                     [--ring-in-flight KB] (streamed one-row products but the head, wq_b's
//                     warp rows and the routed experts' streamed kernels: at most KB of
//                     weight copies in flight a block, in whole stages,
//                     CudaOptions::ring_in_flight_bytes; default 0: the whole ring)
//                     [--pick-copy-stream 0|1] (the picks' masks up and results back on
//                     a copy stream of their own, CudaOptions::pick_copy_stream; default 1)
//                     [--cluster-mhc 0|1|2] (decode's mHC boundaries as a cluster of 8 blocks
//                     a row: 0 never, 1 batches of 2+ rows (default), 2 one row too,
//                     CudaOptions::cluster_mhc)
//                     [--shared-expert-blocks N] (one-row decode: the shared expert's
//                                      products on N blocks, the routed experts' on the
//                                      other SMs, CudaOptions::shared_expert_blocks; 0)
//                     [--grid-mhc 0|1|2] (passes of 1-4 rows: every mHC block finishes its
//                                      own channels after a row barrier, Sinkhorn before
//                                      the next boundary's wait; 2: the embedding inside
//                                      the first boundary too, CudaOptions::grid_mhc;
//                                      default 1)
//                     [--mhc-scatter 1] (the grid boundaries' sums by one reduce-scatter a
//                                      warp, CudaOptions::mhc_scatter; default 0)
//                     [--fused-routing 1] (decode rows: routing inside the routed experts' up
//                                      kernel instead of a kernel of its own before it,
//                                      CudaOptions::fused_routing; default 0)
//                     [--side-stream 0|1] (decode: independent products on a second stream,
//                                      CudaOptions::side_stream; default 1)
//                     [--side-attention 0|1] [--side-moe 0|1] (which of them: the KV rows
//                     beside the query path, the shared expert beside the routed experts;
//                     CudaOptions::side_attention / side_moe; default 1)
//                     [--graph-copies 2] (two instances of each step graph, launched in
//                     turn, CudaOptions::step_graph_copies; default 1)
//                     [--fused-q-norm 0|1] (one decode row: the query norm inside wq_b's
//                                      launch, CudaOptions::fused_q_norm; default 1)
//                     [--host-work-us US] (decode+pick: the host spins US microseconds after
//                     each step, as a grammar matcher's next mask would take; default 0)
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#ifndef AGENTRT_HAVE_CUDA
int main() {
  std::fprintf(stderr, "bench_engine_cuda: the CUDA backend is not built (no nvcc)\n");
  return 1;
}
#else

#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>
#include <sstream>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/cuda_model.h"
#include "engine/forward_weights.h"

namespace {

using namespace agentrt::engine;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The host's own work between decode steps (a grammar matcher's next mask, the detokenizer):
// a spin of --host-work-us, which a step queued ahead hides.
void spin_us(double us) {
  for (const double until = now() + us * 1e-6; now() < until;) {
  }
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

// Device-to-device copy: bytes read + bytes written per second.
double copy_bandwidth() {
  const size_t bytes = size_t(2) << 30;
  void *a = nullptr, *b = nullptr;
  AGENTRT_CUDA_CHECK(cudaMalloc(&a, bytes));
  AGENTRT_CUDA_CHECK(cudaMalloc(&b, bytes));
  AGENTRT_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 2; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  const int reps = 10;
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) * reps / (ms / 1e3);
}

// cuBLAS bf16 GEMM (fp32 accumulate) on 8192^3: FLOP/s.
double gemm_peak() {
  const int n = 8192;
  void *a, *b, *c;
  AGENTRT_CUDA_CHECK(cudaMalloc(&a, size_t(n) * n * 2));
  AGENTRT_CUDA_CHECK(cudaMalloc(&b, size_t(n) * n * 2));
  AGENTRT_CUDA_CHECK(cudaMalloc(&c, size_t(n) * n * 2));
  cudaMemset(a, 0x3c, size_t(n) * n * 2);  // small finite bf16 values
  cudaMemset(b, 0x3c, size_t(n) * n * 2);
  cublasHandle_t h;
  cublasCreate(&h);
  const float one = 1, zero = 0;
  auto run = [&] {
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n,
                 &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  for (int i = 0; i < 3; ++i) run();
  cudaDeviceSynchronize();
  const int reps = 10;
  const double t0 = now();
  for (int i = 0; i < reps; ++i) run();
  cudaDeviceSynchronize();
  const double dt = now() - t0;
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * double(n) * n * n * reps / dt;
}

// cuBLASLt's block-scaled FP8 GEMM (GemmPrecision::fp8's, through cuda::Fp8Gemm: e4m3 weights
// with 128 x 128 block scales times activations quantised per 128 columns) on 8192^3: FLOP/s,
// or 0 where cuBLASLt has no algorithm for it. The activations' quantisation is timed with it.
double fp8_gemm_peak() {
  const int64_t n = 8192;
  void *w, *x, *scales, *y;
  AGENTRT_CUDA_CHECK(cudaMalloc(&w, size_t(n) * n));
  AGENTRT_CUDA_CHECK(cudaMalloc(&x, size_t(n) * n * 4));
  AGENTRT_CUDA_CHECK(cudaMalloc(&y, size_t(n) * n * 4));
  AGENTRT_CUDA_CHECK(cudaMalloc(&scales, size_t(n / 128) * (n / 128) * 4));
  cudaMemset(w, 0x38, size_t(n) * n);                         // e4m3 1.0
  cudaMemset(x, 0x3f, size_t(n) * n * 4);                     // ~0.75 as float32
  cudaMemset(scales, 0x3c, size_t(n / 128) * (n / 128) * 4);  // small positive float32
  WeightMatrix wm;
  wm.type = WeightType::f8_e4m3;
  wm.rows = n;
  wm.cols = n;
  wm.data = w;
  wm.scale = scales;
  wm.scale_type = ScaleType::f32;
  double flops = 0;
  {
    cuda::Fp8Gemm gemm;
    auto run = [&] {
      return gemm.run(wm, 1, static_cast<const float*>(x), n, n, static_cast<float*>(y), n,
                      nullptr);
    };
    if (run()) {
      for (int i = 0; i < 2; ++i) run();
      cudaDeviceSynchronize();
      const int reps = 10;
      const double t0 = now();
      for (int i = 0; i < reps; ++i) run();
      cudaDeviceSynchronize();
      flops = 2.0 * double(n) * n * n * reps / (now() - t0);
    }
  }
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  cudaFree(scales);
  return flops;
}

int64_t stored_bytes(const WeightMatrix& w) {
  int64_t scales = 0;
  if (w.type == WeightType::f8_e4m3)
    scales =
        ((w.rows + 127) / 128) * ((w.cols + 127) / 128) * (w.scale_type == ScaleType::f32 ? 4 : 1);
  if (w.type == WeightType::f4_e2m1) scales = w.rows * (w.cols / 32);
  return w.bytes() + scales;
}

struct Costs {
  double weight_bytes = 0;  // per decode token: dense + active experts + lm_head
  double matrix_flops = 0;  // per token, excluding lm_head
};

Costs weight_costs(const ForwardConfig& c, const ForwardWeights& w) {
  Costs k;
  auto add = [&](const WeightMatrix& m) {
    k.weight_bytes += double(stored_bytes(m));
    k.matrix_flops += 2.0 * double(m.rows) * double(m.cols);
  };
  k.weight_bytes += double(w.embed.row_bytes());
  for (const LayerWeights& l : w.layers) {
    const AttentionWeights& a = l.attn;
    for (const WeightMatrix* m : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b}) add(*m);
    if (a.compressor) {
      add(a.compressor->wkv);
      add(a.compressor->wgate);
    }
    if (a.indexer) {
      add(a.indexer->compressor.wkv);
      add(a.indexer->compressor.wgate);
      add(a.indexer->wq_b);
      add(a.indexer->weights_proj);
    }
    add(l.moe.gate);
    for (const WeightMatrix* m : {&l.moe.shared.w1, &l.moe.shared.w2, &l.moe.shared.w3}) add(*m);
    for (int64_t e = 0; e < c.experts_per_token; ++e)
      for (const WeightMatrix* m :
           {&l.moe.experts[e].w1, &l.moe.experts[e].w2, &l.moe.experts[e].w3})
        add(*m);
    k.weight_bytes += 4.0 * double(l.attn_hc.fn.size() + l.ffn_hc.fn.size());
  }
  k.weight_bytes += double(stored_bytes(w.head)) + 4.0 * double(w.hc_head_fn.size());
  return k;
}

// Cache bytes a decode step at position `pos` reads, and its attention + indexer FLOPs.
void attention_costs(const ForwardConfig& c, int64_t pos, double* bytes, double* flops) {
  *bytes = 0;
  *flops = 0;
  for (const ForwardLayer& l : c.layers) {
    double keys = double(std::min<int64_t>(pos + 1, c.sliding_window));
    const int64_t visible = l.compress_rate ? (pos + 1) / l.compress_rate : 0;
    if (l.attention == AttentionKind::csa) {
      keys += double(std::min<int64_t>(visible, c.index_topk));
      if (visible > c.index_topk) {  // indexer scan; up to top-k entries are all taken unscored
        *bytes += double(visible) * double(c.index_head_dim) * 4;
        *flops += 2.0 * double(visible) * double(c.index_heads * c.index_head_dim);
      }
    } else if (l.attention == AttentionKind::hca) {
      keys += double(visible);
    }
    *bytes += keys * double(c.head_dim) * 4;
    *flops += 4.0 * keys * double(c.heads * c.head_dim);
  }
}

struct Memory {
  size_t peak = 0;
  void sample() {
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    peak = std::max(peak, total - free);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_engine_cuda MODEL_DIR [options]\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines survive a timeout kill
  const std::string dir = argv[1];
  std::vector<int64_t> contexts = {1024, 16384, 65536}, batches = {8, 32, 64};
  int64_t steps = 16, batch_context = 1024, ncu_steps = 0;
  double host_work_us = 0;  // --host-work-us: host time per step of the decode+pick loop
  cuda::CudaOptions options;
  std::string precision = "bf16x2";
  // --pick-feeds / --pick-before given: the warning below is said only where asked for (both
  // are on by default, so --pick-in-graph 0 alone turns them off).
  bool pick_options_given = false;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--contexts")
      contexts = parse_list(v);
    else if (k == "--batches")
      batches = parse_list(v);
    else if (k == "--steps")
      steps = std::stoll(v);
    else if (k == "--host-work-us")
      host_work_us = std::stod(v);
    else if (k == "--batch-context")
      batch_context = std::stoll(v);
    else if (k == "--precision")
      precision = v;
    else if (k == "--ncu-steps")
      ncu_steps = std::stoll(v);
    else if (k == "--prefill-rows")
      options.prefill_rows = std::stoll(v);
    else if (k == "--profile")
      options.profile = v == "1";
    else if (k == "--repeat-stage")
      options.repeat_stage = v;
    else if (k == "--fp4-expert-gemm")
      options.fp4_expert_gemm = v == "1";
    else if (k == "--fp8-expert-streams")
      options.fp8_expert_streams = std::stoi(v);
    else if (k == "--fp8-grouped-rows")
      options.fp8_grouped_rows = std::stoll(v);
    else if (k == "--fp8-row-scales")
      options.fp8_row_scales = v == "1";
    else if (k == "--expert-priority-stream")
      options.expert_priority_stream = v == "1";
    else if (k == "--key-mirrors")
      options.key_mirrors = v == "1";
    else if (k == "--query-rope-in-attention")
      options.query_rope_in_attention = v == "1";
    else if (k == "--attention-channels")
      options.attention_warp_channels = std::stoi(v);
    else if (k == "--wgmma-attention")
      options.wgmma_attention = std::stoi(v) != 0;
    else if (k == "--prefill-mhc-pass")
      options.prefill_mhc_pass = v == "1";
    else if (k == "--prefill-pre-staged")
      options.prefill_pre_staged = v == "1";
    else if (k == "--attention-fp8-out")
      options.attention_fp8_out = v == "1";
    else if (k == "--query-bf16")
      options.query_bf16 = v == "1";
    else if (k == "--pair-out-bf16")
      options.pair_out_bf16 = v == "1";
    else if (k == "--indexer-wgmma")
      options.indexer_wgmma = v == "1";
    else if (k == "--spare-caches")
      options.spare_caches = std::stoi(v);
    else if (k == "--gate-up-bf16")
      options.gate_up_bf16 = v == "1";
    else if (k == "--fp8-block-rows")
      options.fp8_block_rows = v == "1";
    else if (k == "--attention-lean")
      options.attention_lean = v == "1";
    else if (k == "--attention-query-ahead")
      options.attention_query_ahead = std::stoi(v);
    else if (k == "--shared-fp8-rows")
      options.shared_fp8_rows = v == "1";
    else if (k == "--shared-gate-up-bf16")
      options.shared_gate_up_bf16 = v == "1";
    else if (k == "--defer-metadata")
      options.defer_layer_metadata = v == "1";
    else if (k == "--fp8-scatter-rows")
      options.fp8_scatter_rows = v == "1";
    else if (k == "--tensor-map")
      options.tensor_map_copies = v == "1";
    else if (k == "--sum-group")
      options.gemv_sum_group = std::stoi(v);
    else if (k == "--batch-streams")
      options.batch_streams = v == "1";
    else if (k == "--gemv-rows")
      options.gemv_max_rows = std::stoll(v);
    else if (k == "--warp-rows")
      options.warp_rows_bytes = int64_t(std::stod(v) * (1 << 20));
    else if (k == "--warp-rows-depth")
      options.warp_rows_depth = std::stoi(v);
    else if (k == "--warp-rows-splits")
      options.warp_rows_splits = std::stoi(v);
    else if (k == "--split-chains")
      options.split_kv_chains = std::stoi(v);
    else if (k == "--warp-rows-copy")
      options.warp_rows_copy_rows = std::stoi(v);
    else if (k == "--early-stages")
      options.early_stages = std::stoi(v);
    else if (k == "--attention-splits")
      options.decode_attention_splits = std::stoi(v);
    else if (k == "--attention-chunk")
      options.decode_attention_chunk_keys = std::stoi(v);
    else if (k == "--attention-ka")
      options.decode_attention_keys_at_once = std::stoi(v);
    else if (k == "--attention-bulk")
      options.decode_attention_bulk_keys = v == "1";
    else if (k == "--pick-cluster")
      options.pick_cluster = v == "1";
    else if (k == "--pick-uploads")
      options.pick_uploads_step = v == "1";
    else if (k == "--moe-separate-sum")
      options.moe_separate_sum = v == "1";
    else if (k == "--moe-early-down")
      options.moe_early_down = v == "1";
    else if (k == "--shared-in-experts")
      options.shared_in_experts = std::stoi(v);
    else if (k == "--attention-slices")
      options.decode_attention_cluster_slices = std::stoi(v);
    else if (k == "--attention-beside")
      options.attention_beside_wo_a = v == "1";
    else if (k == "--attention-cluster")
      options.attention_cluster = v == "1";
    else if (k == "--cluster-mhc")
      options.cluster_mhc = std::stoi(v);
    else if (k == "--shared-expert-blocks")
      options.shared_expert_blocks = std::stoi(v);
    else if (k == "--grid-mhc")
      options.grid_mhc = std::stoi(v);
    else if (k == "--mhc-scatter")
      options.mhc_scatter = v == "1";
    else if (k == "--fused-routing")
      options.fused_routing = v == "1";
    else if (k == "--side-stream")
      options.side_stream = v == "1";
    else if (k == "--side-attention")
      options.side_attention = v == "1";
    else if (k == "--side-moe")
      options.side_moe = v == "1";
    else if (k == "--graph-copies")
      options.step_graph_copies = std::stoi(v);
    else if (k == "--fused-q-norm")
      options.fused_q_norm = v == "1";
    else if (k == "--decode-ahead")
      options.decode_ahead = v == "1";
    else if (k == "--split-graph")
      options.split_step_graph = v == "1";
    else if (k == "--staged-meta")
      options.staged_step_metadata = v == "1";
    else if (k == "--graph-device-launch")
      options.graph_device_launch = v == "1";
    else if (k == "--pick-in-graph")
      options.pick_in_step_graph = v == "1";
    else if (k == "--pick-feeds")
      options.pick_feeds_step = v == "1", pick_options_given = true;
    else if (k == "--pick-before")
      options.pick_before_step = v == "1", pick_options_given = true;
    else if (k == "--pick-mask-early")
      options.pick_mask_early = v == "1";
    else if (k == "--lead-prefetch")
      options.lead_prefetch_bytes = int64_t(std::stoll(v)) << 20;
    else if (k == "--head-prefetch")
      options.head_prefetch_bytes = int64_t(std::stod(v) * double(1 << 20)) / 16 * 16;
    else if (k == "--head-prefetch-from")
      options.head_prefetch_from = std::stoi(v);
    else if (k == "--head-prefetch-last")
      options.head_prefetch_evict_last = v == "1";
    else if (k == "--ring-in-flight")
      options.ring_in_flight_bytes = int64_t(std::stoll(v)) << 10;
    else if (k == "--pick-copy-stream")
      options.pick_copy_stream = v == "1";
    else {
      std::fprintf(stderr, "bench_engine_cuda: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (pick_options_given && (options.pick_feeds_step || options.pick_before_step) &&
      !options.pick_in_step_graph)
    std::fprintf(stderr,
                 "bench_engine_cuda: --pick-feeds and --pick-before do nothing without "
                 "--pick-in-graph 1\n");
  try {
    options.precision = cuda::parse_gemm_precision(precision);
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    Memory mem;
    mem.sample();
    const size_t baseline = mem.peak;
    const double bw = copy_bandwidth();
    const double peak = gemm_peak();
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    std::printf(
        "measured: copy bandwidth %.0f GB/s (read + write), cuBLAS bf16 GEMM %.0f TFLOP/s\n",
        bw / 1e9, peak / 1e12);
    // Under fp8 the products' peak is the FP8 GEMM's: each prefill row also says its share of it.
    const double fp8_peak = options.precision == cuda::GemmPrecision::fp8 ? fp8_gemm_peak() : 0.0;
    if (options.precision == cuda::GemmPrecision::fp8)
      std::printf("measured: cuBLASLt block-scaled FP8 GEMM %.0f TFLOP/s%s\n", fp8_peak / 1e12,
                  fp8_peak > 0 ? " (activations' quantisation included)" : " (no algorithm)");

    const ForwardConfig config = ForwardConfig::from_file(dir + "/config.json");
    const ForwardWeights host = ForwardWeights::load(dir, config);
    const Costs costs = weight_costs(config, host);
    double t0 = now();
    auto model = load_cuda_model(dir, {Device::cuda}, options);
    std::printf(
        "model: %zu layers, hidden %lld, %lld experts (%lld active), load %.1f s, "
        "prefill GEMMs %s, passes of %lld rows\n",
        config.layers.size(), (long long)config.hidden, (long long)config.experts,
        (long long)config.experts_per_token, now() - t0, precision.c_str(),
        (long long)options.prefill_rows);
    mem.sample();

    std::mt19937 rng(1);
    auto random_ids = [&](int64_t n) {
      std::vector<int32_t> ids(n);
      for (auto& t : ids) t = int32_t(rng() % uint32_t(config.vocab_size));
      return ids;
    };

    {
      // Unmeasured warm-up prefills, one per pass length the measured prefills run (a context
      // runs passes of prefill_rows and one remainder): cuBLAS loads each GEMM kernel on its
      // first use (lazy module loading, milliseconds each), and a new pass length picks new ones.
      std::set<int64_t> lengths;
      for (int64_t ctx : contexts) {
        lengths.insert(std::min(ctx, options.prefill_rows));
        if (ctx > options.prefill_rows && ctx % options.prefill_rows != 0)
          lengths.insert(ctx % options.prefill_rows);
      }
      t0 = now();
      for (int64_t len : lengths) model->new_sequence()->forward(random_ids(len));
      std::printf("warm-up prefills (%zu pass lengths): %.1f s\n", lengths.size(), now() - t0);
    }

    std::printf("\n%-28s %12s %12s %14s %12s\n", "measurement", "tokens/s", "TFLOP/s",
                "bytes/token", "of bound");
    for (int64_t ctx : contexts) {
      auto seq = model->new_sequence();
      const auto ids = random_ids(ctx);
      const auto before_prefill = cuda_stage_ms(*model);
      t0 = now();
      seq->forward(ids);
      const double prefill_s = now() - t0;
      mem.sample();
      if (options.profile) {
        std::printf("  GPU ms of the prefill:");
        for (const auto& [name, ms] : cuda_stage_ms(*model)) {
          const auto it = before_prefill.find(name);
          std::printf(" %s %.1f", name.c_str(),
                      ms - (it == before_prefill.end() ? 0.0 : it->second));
        }
        std::printf(" (wall %.1f)\n", prefill_s * 1e3);
      }
      double flops = 0;
      for (int64_t p = 0; p < ctx; p += std::max<int64_t>(1, ctx / 64)) {
        double b, f;
        attention_costs(config, p, &b, &f);
        flops += (f + costs.matrix_flops) * double(std::max<int64_t>(1, ctx / 64));
      }
      const double prefill_tflops = flops / prefill_s / 1e12;
      std::printf("%-28s %12.0f %12.1f %14s %11.1f%%\n", ("prefill " + std::to_string(ctx)).c_str(),
                  double(ctx) / prefill_s, prefill_tflops, "",
                  100.0 * prefill_tflops * 1e12 / peak);
      if (fp8_peak > 0)
        std::printf("  (%.1f%% of the FP8 GEMM peak)\n", 100.0 * prefill_tflops * 1e12 / fp8_peak);
      for (int i = 0; i < 2; ++i) seq->forward(random_ids(1));
      const auto before = cuda_stage_ms(*model);
      t0 = now();
      for (int64_t i = 0; i < steps; ++i) seq->forward(random_ids(1));
      const double dt = (now() - t0) / double(steps);
      if (options.profile) {
        std::printf("  GPU ms per decode step:");
        for (const auto& [name, ms] : cuda_stage_ms(*model)) {
          const auto it = before.find(name);
          std::printf(" %s %.3f", name.c_str(),
                      (ms - (it == before.end() ? 0.0 : it->second)) / double(steps));
        }
        std::printf(" (wall %.3f)\n", dt * 1e3);
      }
      if (ncu_steps > 0 && ctx == contexts.front()) {
        AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
        cudaProfilerStart();
        for (int64_t i = 0; i < ncu_steps; ++i) seq->forward(random_ids(1));
        AGENTRT_CUDA_CHECK(cudaDeviceSynchronize());
        cudaProfilerStop();
      }
      double cache_bytes, f;
      attention_costs(config, ctx + 2 + steps / 2, &cache_bytes, &f);
      const double bytes = costs.weight_bytes + cache_bytes;
      std::printf("%-28s %12.1f %12s %12.0f MB %11.1f%%\n",
                  ("decode @ " + std::to_string(ctx)).c_str(), 1.0 / dt, "", bytes / 1e6,
                  100.0 * bytes / dt / bw);
      {
        // The generation loop's step: decode + greedy pick under a grammar mask on the GPU
        // (only the token comes back), against decode + the whole logits row to the host. Each
        // choice queues the next step on the device first (CudaOptions::decode_ahead), which
        // this loop then feeds.
        std::vector<uint32_t> mask(size_t((config.vocab_size + 31) / 32), 0x5555'5555u);
        Sampler greedy(SamplingParams{.temperature = 0.0f});
        int32_t next = random_ids(1)[0];
        // Unmeasured, as the decode's: the loop's first step has none queued ahead, and a
        // step graph of its own (CudaOptions::pick_in_step_graph) is captured here.
        for (int i = 0; i < 2; ++i)
          next = seq->forward_and_sample({&next, 1}, greedy, {mask.data(), mask.size()}).token;
        t0 = now();
        for (int64_t i = 0; i < steps; ++i) {
          next = seq->forward_and_sample({&next, 1}, greedy, {mask.data(), mask.size()}).token;
          spin_us(host_work_us);
        }
        const double dts = (now() - t0) / double(steps);
        std::printf("%-28s %12.1f %12s %12.0f MB %11.1f%%\n",
                    ("decode+pick @ " + std::to_string(ctx)).c_str(), 1.0 / dts, "", bytes / 1e6,
                    100.0 * bytes / dts / bw);
        if (options.pick_in_step_graph) {
          const cuda::TakenPicks taken = cuda_taken_picks(*model);
          std::printf("  picks taken by their steps so far: %lld in graphs, %lld before them\n",
                      (long long)taken.in_graph, (long long)taken.before_step);
        }
      }
      mem.sample();
    }

    if (!batches.empty()) {
      const int64_t bmax = *std::max_element(batches.begin(), batches.end());
      std::vector<std::unique_ptr<ModelSequence> > seqs;
      t0 = now();
      for (int64_t b = 0; b < bmax; ++b) {
        seqs.push_back(model->new_sequence());
        seqs.back()->forward(random_ids(batch_context));
      }
      const double fill = now() - t0;
      std::printf(
          "%-28s %12.0f\n",
          ("prefill " + std::to_string(bmax) + " x " + std::to_string(batch_context)).c_str(),
          double(bmax * batch_context) / fill);
      for (int64_t b : batches) {
        std::vector<ModelSequence*> ptrs;
        for (int64_t i = 0; i < b; ++i) ptrs.push_back(seqs[i].get());
        model->decode_batch(ptrs, random_ids(b));
        const int64_t bsteps = std::max<int64_t>(4, steps / 2);
        const auto before = cuda_stage_ms(*model);
        t0 = now();
        for (int64_t i = 0; i < bsteps; ++i) model->decode_batch(ptrs, random_ids(b));
        const double dt = (now() - t0) / double(bsteps);
        if (options.profile) {
          std::printf("  GPU ms per batch-%lld step:", static_cast<long long>(b));
          for (const auto& [name, ms] : cuda_stage_ms(*model)) {
            const auto it = before.find(name);
            std::printf(" %s %.3f", name.c_str(),
                        (ms - (it == before.end() ? 0.0 : it->second)) / double(bsteps));
          }
          std::printf(" (wall %.3f)\n", dt * 1e3);
        }
        std::printf(
            "%-28s %12.1f %12s %14s %12s   (%.1f steps/s)\n",
            ("decode batch " + std::to_string(b) + " @ " + std::to_string(batch_context)).c_str(),
            double(b) / dt, "", "", "", 1.0 / dt);
        {
          // The serving step: every row's greedy pick under a grammar mask on the GPU (only the
          // tokens come back) instead of every logits row, each row fed its choice, the next
          // step queued ahead (expect_same_batch; CudaOptions::decode_ahead), --host-work-us
          // of host time after each step.
          std::vector<Sampler> greedy;
          for (int64_t i = 0; i < b; ++i) greedy.emplace_back(SamplingParams{.temperature = 0.0f});
          std::vector<Sampler*> sp;
          for (auto& g : greedy) sp.push_back(&g);
          std::vector<uint32_t> mask(size_t((config.vocab_size + 31) / 32), 0x5555'5555u);
          const std::vector<TokenMask> masks(size_t(b), TokenMask{mask.data(), mask.size()});
          std::vector<int32_t> fed = random_ids(b);
          t0 = now();
          for (int64_t i = 0; i < bsteps; ++i) {
            const auto choices =
                model->decode_batch_and_sample(ptrs, fed, sp, masks, {.expect_same_batch = true});
            for (int64_t j = 0; j < b; ++j)
              if (!choices[size_t(j)].error) fed[size_t(j)] = choices[size_t(j)].sample.token;
            spin_us(host_work_us);
          }
          const double dtp = (now() - t0) / double(bsteps);
          std::printf("%-28s %12.1f %12s %14s %12s   (%.1f steps/s)\n",
                      ("decode+pick batch " + std::to_string(b)).c_str(), double(b) / dtp, "", "",
                      "", 1.0 / dtp);
          // The same at temperature 0.7: every row draws among the allowed tokens near its best.
          std::vector<Sampler> warm;
          for (int64_t i = 0; i < b; ++i)
            warm.emplace_back(SamplingParams{.temperature = 0.7f, .seed = uint64_t(i + 1)});
          std::vector<Sampler*> wp;
          for (auto& g : warm) wp.push_back(&g);
          t0 = now();
          for (int64_t i = 0; i < bsteps; ++i)
            model->decode_batch_and_sample(ptrs, random_ids(b), wp, masks);
          const double dtw = (now() - t0) / double(bsteps);
          std::printf("%-28s %12.1f %12s %14s %12s   (%.1f steps/s)\n",
                      ("decode+sample batch " + std::to_string(b)).c_str(), double(b) / dtw, "", "",
                      "", 1.0 / dtw);
        }
        mem.sample();
      }
    }
    if (options.precision == cuda::GemmPrecision::fp8) {
      const auto counts = cuda_fp8_counts(*model);
      std::printf(
          "\nFP8 GEMMs: %lld products; %lld refused by cuBLASLt and %lld of shapes they do "
          "not take ran as bf16\n",
          (long long)counts.fp8, (long long)counts.fallbacks, (long long)counts.unfit);
      std::printf("FP8 routed experts: %lld passes, %lld fell back to bf16\n",
                  (long long)counts.experts, (long long)counts.expert_fallbacks);
      for (const std::string& shape : counts.refused)
        std::printf("  refused by cuBLASLt: %s\n", shape.c_str());
    }
    std::printf("\npeak GPU memory in use: %.1f GB (%.1f GB before loading)\n", mem.peak / 1e9,
                baseline / 1e9);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}

#endif
