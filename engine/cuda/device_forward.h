// The DeepSeek-V4 forward pass on the GPU, the same steps as engine/forward.h's ForwardPass:
//   embed -> per layer (mHC collapse + norm, attention, mHC expand, mHC collapse + norm, MoE,
//   mHC expand) -> hyper-head, norm, lm_head
// over a batch of rows (a prefill chunk of one sequence, or one decode row per sequence). The
// host only builds the rows' cache pointers and the list of compressed entries to emit (both
// known from the lengths) and uploads them once per call; the one synchronisation is the read of
// the logits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/cuda/device_cache.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/indexer_gemm.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/linear.h"
#include "engine/cuda/moe_gemm.h"
#include "engine/sampler.h"

namespace agentrt::engine::cuda {

struct CudaOptions {
  GemmPrecision precision = GemmPrecision::bf16x2;
  int64_t gemv_max_rows = 16;  // up to this many rows a product streams the stored weights
  bool profile = false;        // time the stages with CUDA events (stage_ms); no graphs then
  bool graphs = true;          // replay decode steps (<= gemv_max_rows rows) as CUDA graphs
  bool side_stream = true;     // decode steps run independent products on a second stream
  // Which of them (with side_stream): the attention's KV rows and compressors beside its query
  // path, and the shared expert beside the routed experts. A captured step's graph runs on an
  // internal stream for each branch (12 in a 4-layer step), and its second kernel starts only
  // ~13 us after its first (3.6 us in a graph of one stream). On an H100 (thirty-eighth session)
  // without the attention's branch (8 streams) decode + pick was 3.3% slower, without the MoE's
  // (5 streams) 2.9%, and the second kernel still started 13-14 us in: on.
  bool side_attention = true;
  // With side_attention, in layers with compressors: the KV row and the compressor's rows and
  // entries on a second branch beside the indexer's compressor, instead of all three one after
  // another on one branch. Traced (forty-second session) the CSA layers' branch (the KV row,
  // then two appends and a compression for each compressor, then the indexer's scores and
  // top-k) reached the attention ~5 us after wq_b had ended, the HCA layers' ~5 us. On an H100
  // (3,044 GB/s; forty-second session, two calls of 5 and 8 interleaved rounds) decode + pick
  // @1K +0.2% in both (1,104.7 against 1,102.8 and 1,104.9 against 1,102.7 tok/s), and its case
  // of CudaOptions.StepSchedulingGivesTheSameLogits passes. Forty-third session (3,028 GB/s):
  // all 174 GPU tests pass with 1 the default, and five interleaved rounds gave 1 +0.3% over 0
  // (1,080.4 against 1,077.5) and 2 -0.1% (1,079.7). 0: off; 1: the second branch joins where
  // the first does (the default); 2: it joins only before the attention, so the indexer's scores
  // and top-k may run beside it.
  int split_kv_chains = 1;
  bool side_moe = true;
  // Instances of each captured step graph, launched in turn (1 or 2). Back-to-back launches of
  // one multi-stream graph: its second kernel starts ~13 us after its first (3.6 us in a graph
  // of one stream, thirty-eighth session); a second instance of the same graph is launched
  // without waiting on the first instance's resources, if that were the cause. It is not: with
  // 2 the second kernel started 11 us in and decode + pick measured 0.1-0.2% slower. 1.
  int step_graph_copies = 1;
  // Rows per device pass when prefilling: bounds the activations (~0.6 MB a row for V4-Flash
  // shapes) while giving the routed experts' GEMMs enough rows per expert to reuse each decoded
  // weight (every pass decodes the used experts again). On an H100 (twentieth session) passes
  // of 16,384 rows prefilled 16K at 15.4% of cuBLAS's peak against 14.2% with 8,192, and 64K at
  // 15.0% against 13.7%, for 38.2 GB of peak memory against 30.5 GB (V4-Flash shapes, 4 layers).
  int64_t prefill_rows = 16384;
  // Retired sequences' caches the model keeps for new sequences (the largest ones; CudaModel's
  // take_cache): a new sequence then allocates nothing on the device until it outgrows them.
  // Their device memory stays held while no sequence uses it; 0 frees each sequence's at once.
  int spare_caches = 1;
  // Prefill passes multiply FP4 experts with fp4_gemm.cu's kernel (weights decoded in its
  // loader) instead of bf16 copies and cuBLAS. Off: slower at 16K on an H200 (routed experts'
  // stages 205 ms against 176, docs/cuda_sessions.md, eleventh session).
  bool fp4_expert_gemm = false;
  // GemmPrecision::fp8: prefill's routed experts' FP8 GEMMs (one per expert and matrix) alternate
  // between this many streams (1 or 2), so small ones run side by side. Unmeasured.
  int fp8_expert_streams = 2;
  // GemmPrecision::fp8 on an sm_90 GPU: prefill passes of at most this many rows run the routed
  // experts as two grouped launches over all used experts (grouped_fp8_gemm.cu: the FP4 weights
  // turned into e4m3 in shared memory, wgmma) instead of converted copies of every used expert
  // and one cuBLASLt GEMM per expert (0: never). Every pass by default: faster at every length
  // measured on an H100 (twenty-seventh session: fp8 prefill 1K 50.5K tok/s against 22.1K, 4K
  // 89.7K against 59.2K, 8K 92.9K against 78.4K, 16K 96.6K against 91.7K).
  int64_t fp8_grouped_rows = std::numeric_limits<int64_t>::max();
  // That grouped path with one scale per activation row and each weight block's scale taken over
  // its whole rows (GroupedExpertProduct::row_scales): the kernel adds a tile's whole depth in
  // the tensor cores' accumulators, with no per-step promotion into float32 (half the kernel's
  // instructions, and the products overlap the next step's conversion), and each token's row is
  // quantised once for all its slots. Hopper's FP8 accumulation keeps fewer mantissa bits: the
  // products move 4-7e-4 (relative L2, V4-Flash depths) from the host's float64 sum of the same
  // e4m3 values, against 6e-5 with promotion, both far below e4m3's own ~3%; a random model's
  // logits stay as near the CPU's (median 0.21 against 0.23). On an H100 (thirty-first session)
  // the 16K fp8 prefill's experts' products took 30.7 ms against 37.7. On by default; false:
  // per-128-column scales and promotion.
  bool fp8_row_scales = true;
  // Prefill's routed experts run their gathers, GEMMs and scatters on a stream of the highest
  // priority, ahead of the next chunk's weight conversion (ExpertGemm's priority_stream). Off: no
  // faster on an H100 (sixteenth session, fp8 prefill 16K 72,248 tok/s without, 71,052 with;
  // with key mirrors 73,705 and 73,568).
  bool expert_priority_stream = false;
  // Prefill of one sequence's rows: the tensor-core attention and indexer convert the keys the
  // pass reaches (window KV rows, compressed and indexer entries) to bf16 once and stream bf16
  // tiles, several in flight (attend_rows_mma_mirrored, indexer_scores_mma_mirrored; the same
  // outputs, bit for bit), instead of converting each float32 tile in every block with one in
  // flight. On an H100 (sixteenth session, CUPTI kernel times of a 16K prefill) the attention
  // kernels took 50.3 ms against 62.1 under fp8 (plain bf16 products) and 92.4 against 96.6
  // under bf16x2; whole prefills moved within the run-to-run spread (fp8 16K +2.0%, bf16x2 16K
  // -1.4%, 64K +0.6%).
  bool key_mirrors = true;
  // Prefill passes on the tensor-core attention leave wq_b's output as it is and the attention
  // norms and rotates each head as it loads the query (QueryNormRope), instead of a pass of
  // norm_rope_rows over the float32 query (2 GB a layer at 16K rows). Off: that pass.
  bool query_rope_in_attention = true;
  // Output channels each warp of the prefill tensor-core attention owns (heads of 512: 256 is 8
  // warps a block with 128 accumulators each, 128 is 16 warps with 64).
  int attention_warp_channels = 256;
  // Prefill passes of one sequence under a plain-bf16 attention (every precision but bf16x2 and
  // f32), heads of 512, on an sm_90 GPU: the attention on Hopper's warpgroup MMA
  // (attend_rows_wgmma) instead of attend_rows_mma_mirrored's mma.sync kernel. Off: that kernel.
  bool wgmma_attention = true;
  // Prefill passes (256 rows or more) take mHC's post step, its projection and the sum of squares
  // in one pass over the streams (hyper_post_project), where hyper_post, a float32 GEMM and a
  // sum-of-squares kernel read them three times. Off: those three.
  bool prefill_mhc_pass = true;
  // That pass's pre step with each row's streams staged in shared memory (three blocks an SM)
  // instead of registers (two, a few spilled); the same values. H100, 16K fp8 prefill: 145.1K
  // tok/s against 143.5K (medians of three interleaved runs, thirty-second session). Off: the
  // registers' kernel.
  bool prefill_pre_staged = true;
  // GemmPrecision::fp8 prefill on the wgmma attention: the attention writes its outputs as the
  // e4m3 rows and block scales of wo_a's FP8 GEMMs (the values the quantiser would write from
  // float32 rows; the same logits). H100, 16K fp8 prefill: 151.6K tok/s against 143.5K (attn.out
  // 11.5 -> 8.0 ms). Off: float32 rows, quantised by the GEMM's own pass.
  bool attention_fp8_out = true;
  // The wgmma attention with fewer instructions a tile (attention_wgmma.cu's kLean: descriptors
  // moved on by constants, runs of consecutive key rows copied without a lookup each, masks only
  // in a row's last tile; the same values) and the L2 asked for the query of the row
  // attention_query_ahead rows on (-1: the GPU's SM count, about the blocks of one wave; 0:
  // none). H100, 16K fp8 prefill: 175.6K tok/s against 168.5K, 174.2K with no query ahead
  // (means of three interleaved rounds; attention core 18.4 -> 13.7 ms; thirty-fourth session,
  // call 2). Off: the kernel as it was.
  bool attention_lean = true;
  int attention_query_ahead = -1;
  // GemmPrecision::fp8's grouped routed experts: the gate/up product writes bf16 instead of
  // float32 for the SwiGLU pass (ExpertGemm::set_gate_up_bf16; its e4m3 quantisation follows).
  // H100, 16K fp8 prefill: 145.6K tok/s against 143.5K (SwiGLU 5.3 -> 3.5 ms). Off: float32.
  bool gate_up_bf16 = true;
  // GemmPrecision::fp8 prefill on the wgmma attention: wq_b's FP8 GEMMs write the query as bf16
  // rows (the attention rounds it to bf16 after its norm and rotation anyway). H200, 16K fp8
  // prefill: 164.3K tok/s against 162.5K (thirty-second session, call 2). Off: float32.
  bool query_bf16 = true;
  // GemmPrecision::fp8's grouped routed experts: the down product writes the pair rows as bf16
  // for the sum into each row's output (ExpertGemm::set_pair_out_bf16; the outputs carry e4m3's
  // error already). H200, 16K fp8 prefill: the routed sum 2.0 -> 1.3 ms, the whole prefill
  // within noise (162.7K tok/s against 162.5K). Off: float32.
  bool pair_out_bf16 = true;
  // The same path's SwiGLU and token quantisation with a block of 128 threads a row
  // (ExpertGemm::set_block_rows; the same bytes). H100, 16K fp8 prefill: SwiGLU 3.5 -> 1.6 ms,
  // 169.3K tok/s against 166.5K (means of three interleaved rounds, thirty-third session, call
  // 2). Off: a warp a row.
  bool fp8_block_rows = true;
  // With fp8_block_rows: each token's quantised row written straight into its slots' rows
  // (ExpertGemm::set_scatter_rows; the same bytes), no copy pass. H200, 16K fp8 prefill: 174.8K
  // tok/s against 173.7K (means of three interleaved rounds, thirty-third session, call 3; the
  // gather 1.7 -> 0.9 ms). Off: token rows, then the copy.
  bool fp8_scatter_rows = true;
  // Passes that are not CUDA graphs pack and upload the layers' metadata (each row's cache
  // views, the compressed entries to emit) after enqueueing the embedding and the first mHC
  // step, which need only the tokens, so the GPU runs those while the host packs. H200, 16K fp8
  // prefill: 175.7K tok/s against 173.7K (means of three interleaved rounds, thirty-third
  // session, call 3). Off: all of it before the first kernel.
  bool defer_layer_metadata = true;
  // GemmPrecision::fp8 prefill's shared expert: the SwiGLU writes the down product's e4m3 rows
  // and scales (swiglu_rows.h: the bytes its quantiser would write from swiglu()'s float32
  // rows) instead of float32 rows the quantiser reads back. H100, 16K fp8 prefill: 172.8K
  // tok/s against 171.2K (means of three interleaved rounds, thirty-fourth session, call 1).
  // Off: float32 rows.
  bool shared_fp8_rows = true;
  // With shared_fp8_rows: the gate and up products written as bf16 (LinearRunner's bf16_out),
  // half the bytes the SwiGLU reads; e4m3's 4 significant bits follow. Off: float32. No faster
  // on an H100 (171.9K tok/s against 172.8K without it, the same call).
  bool shared_gate_up_bf16 = false;
  // Prefill's Lightning Indexer scores under plain bf16 products (every precision but bf16x2 and
  // f32) on Hopper's warpgroup MMA (indexer_scores_wgmma) instead of mma.sync
  // (indexer_scores_mma_mirrored), where the GPU runs wgmma (CudaOptions::wgmma_attention).
  // H200, 16K fp8 prefill: the indexer 8.0 -> 4.2 ms, 167.8K tok/s against 162.5K. Off: mma.sync.
  bool indexer_wgmma = true;
  // One-row FP8 products on the tensor cores fill each stage of their ring with one tensor copy
  // (GemvMode::tensor_map) instead of a bulk copy per row. Off: no faster on an H200 (wq_b 19.3
  // against 18.6 us, wo_b 16.3 against 13.9; docs/cuda_sessions.md, eleventh session).
  bool tensor_map_copies = false;
  // Those products add up their warps' partial sums after one barrier per this many tasks
  // (GemvMode::sum_group, 1..4; the same values). 1: 4 measured no faster on an H200.
  int gemv_sum_group = 1;
  // Decode batches (2 .. gemv_max_rows rows) read each large weight once for all their rows:
  // FP8 products on the tensor-core stream kernel, 8 rows a launch, and the bf16 head as one
  // cuBLAS GEMM (GemvMode::several_rows). Off: the CUDA-core GEMV, once per 8 rows (batch 8
  // decoded 1,154 tok/s that way on an H200, 2,542 this way).
  bool batch_streams = true;
  // One-row FP8 products (or same-input sets) of at least this many bytes, in enough 16-row
  // tiles for 8 a block, run with each warp owning whole tiles (GemvMode::warp_rows_bytes,
  // gemv_warp_rows.cu): on an H200 wq_b (32,768 x 1,024) took 16.1 us that way against 19.0;
  // wo_a and wo_b, 2-4 wide tiles a block, were slower (docs/cuda_sessions.md, twelfth
  // session). 0: never.
  int64_t warp_rows_bytes = int64_t(16) << 20;
  int warp_rows_depth = 2;   // ring slots per warp, at least (GemvMode::warp_rows_depth)
  int warp_rows_splits = 1;  // column splits a tile may take (GemvMode::warp_rows_splits)
  // Rows a bulk copy for rows as wide as a stage, 2 or 8 (GemvMode::warp_rows_copy_rows): wq_b's
  // 1 KB rows went 1 -> 2 a copy in the seventeenth session (its set 27.1 -> 22.8 us in a CSA
  // layer), and traced it still streamed at ~1.85 TB/s against ~2.6 for wo_a and wo_b. With 8
  // (forty-second session, H100): wq_b alone 15.3 -> 14.0 us (bench_engine_cuda_gemv), but
  // decode + pick @1K -0.7% (seven interleaved rounds; -0.6% with warp_rows_depth 1, -0.6% in
  // three more): traced, the latency-bound kernels beside its start (the KV row's norm, the
  // compressors' appends) ran longer and wq_b no shorter. 2.
  int warp_rows_copy_rows = 2;
  // Decode attention splits each row's keys into at most this many slices, one block each
  // (attention_decode.cu; 1..16, fixed when a step's graph is captured, so sized by the cache's
  // capacity, not the keys a step has). 0: as many as the capacity calls for, up to 16. Fewer
  // were slower on an H100 (seventeenth session, decode @1K 904.0 -> 877.7 tok/s with 4, 906.8
  // -> 896.8 with 8).
  int decode_attention_splits = 0;
  // One-row decode attention: each block holds this many keys in shared memory at once (1..64;
  // 0: 16 with attention_beside_wo_a, else 32), its slices still counted as for that shape, so
  // a block whose slice has more keys than that (the CSA layers': 48 at 1K) takes them in one
  // round. wo_a's ring keeps the room it leaves a 16-key block: its blocks do not land beside
  // the attention's anyway (86 registers a thread, docs/cuda_sessions.md). Decode batches keep
  // their shape. Measured with the next two (thirty-ninth session, below).
  int decode_attention_chunk_keys = 48;
  // One-row decode attention with attention_cluster: keys each warp scores together, 2 (the
  // kernel at 112 registers, for attention_beside_wo_a) or 4 (more independent work in each
  // warp's chain of dependent steps a key).
  int decode_attention_keys_at_once = 4;
  // One-row decode attention with attention_cluster: each key row into shared memory by one
  // bulk copy (the copy engine, landing on an mbarrier) instead of 128 threads' 16-byte copies. The
  // CSA layers' attention grows ~0.4 us a key a block (traced: 12.4 / 20.5 / 35.5 us for 21 / 49 /
  // 80 keys at contexts 128 / 1K / 4K), and none of the three alone moved it much. On H100s
  // (thirty-ninth session, three or four interleaved rounds each, decode + pick @1K): 48 keys a
  // chunk +0.3%; 4 keys at once +0.3%; both +0.6%, +0.5%, +1.0% (three calls); bulk copies +1.3%;
  // all three +1.9% (1,099.9 against 1,079.0 tok/s), the CSA layers' attention 22.5 -> 18.8 us and
  // the sliding layers' 11.2 -> 9.6 traced. Fortieth session: the three together passed the GPU
  // tests (CudaOptions.DecodeAttentionShapesKeepTheLogits) and measured +0.7% (decode + pick
  // @1K, 1,089.1 -> 1,096.3 tok/s) and +2.0% without the pick, so they are the defaults.
  bool decode_attention_bulk_keys = true;
  // One-row decode attention with attention_cluster: the most key slices of a head group, as one
  // cluster: 8 (a portable cluster; 16 head groups x 8 = 128 blocks) or 16 (a non-portable
  // cluster; layers with more than 8 chunks of keys take 16 slices, 256 blocks). At 1K the CSA
  // layers' 392 keys are 49 a block in 8 slices, their attention ~19 us against ~10 for the
  // sliding layers' 16 keys a block (thirty-ninth session's traces).
  int decode_attention_cluster_slices = 8;
  // The streamed one-row products copy at most this many stages of their weights each before
  // the kernel before them has finished (GemvMode::early_stages; 0: as many as the ring holds).
  // On an H100 (seventeenth session) 1, 2 and 4 decoded within the spread of 0: the attention
  // and mHC kernels before a product ran 4-5 us faster without its copies competing, and the
  // product that much slower after them.
  int early_stages = 0;
  // The streamed one-row products (not the head), wq_b's warp-rows kernel and the routed
  // experts' streamed kernels keep at most this many bytes of weight copies asked for and not
  // yet landed, in whole stages (0: as many as the ring holds; GemvMode::in_flight_bytes). A
  // product whose blocks land only as the kernel before leaves asks for every block's whole
  // ring at once, and the memory serves those copies side by side, so each block's first stage
  // lands late.
  int64_t ring_in_flight_bytes = 0;
  // Decode-sized passes ask up to this many bytes of the first layer's query weights (the
  // products of x, then wq_b) into the L2 from a kernel beside the embedding with no dependency
  // (a root of the step's graph), for the products to find there (l2_prefetch.cu; 0: none). In a
  // replayed step the kernel after the embedding started ~11 us after it on an H100, with
  // nothing running in between.
  int64_t lead_prefetch_bytes = 0;
  // One-row decode passes ask this many bytes of the head's weights into the L2 from a kernel
  // forked during the last layer, in the order the head's blocks read them (the first bytes of
  // each block's slice; l2_prefetch.cu; 0: none). The layers read memory at about half the copy
  // bandwidth and the head at all of it, so what the head finds in the L2 should come off the
  // step. On an H100 (thirty-eighth session) 16-48 MB made decode + pick 0.2-1.4% slower: 32 MB
  // took the head 3.5 us shorter, the layers beside the prefetch ~3.5 us longer and the next
  // pick 1.6 us longer (its logits pushed out of the L2). Off.
  int64_t head_prefetch_bytes = 0;
  // Where that kernel is forked, in sublayers before the head: 1 as the last layer's MoE
  // section starts, 2 as its attention starts, 3 the MoE before that, and so on.
  int head_prefetch_from = 1;
  // The prefetched lines asked for under an evict-last policy (bulk_copy.cuh's streamed weights
  // are evict-first either way).
  bool head_prefetch_evict_last = false;
  // A captured decode step as two graphs launched one after the other: the embedding and the
  // first mHC boundary (one stream), then the rest (the side stream's branches). In a replayed
  // step of one graph on 12 internal streams the second kernel started 12.7-13.8 us after the first
  // (thirty-fifth session's traces; 2.3 us in a graph of one stream), so the second graph's
  // first kernel, the products of x, might hide that wait, at the cost of its early start.
  // Ignored with lead_prefetch_bytes (its branch would cross the split). On an H100 (thirty-sixth
  // session, five interleaved rounds) decode + pick @1K 1,057.4 tok/s against 1,063.9 without:
  // off.
  bool split_step_graph = false;
  // Replayed decode steps (captured graphs) take their metadata from a device staging buffer,
  // uploaded on a stream of its own while the step before runs; the token-feeding kernel copies
  // it into place. Between two replays the pass's stream then runs the picks and that one
  // kernel instead of the picks, the upload and the feed (the thirty-fifth session's traces:
  // the 688-byte upload took 1.2-1.4 us plus ~1.5 us of launch gap, after the pick). On an H100
  // (thirty-sixth session, four interleaved rounds) decode + pick @1K 1,035.9 tok/s against
  // 1,083.1 without: off.
  bool staged_step_metadata = false;
  // Step graphs instantiated for device launch (cudaGraphInstantiateFlagDeviceLaunch), still
  // launched from the host: another way the driver schedules a graph's branches, for the ~11 us
  // a replayed step of 12 internal streams waited after its first kernel.
  bool graph_device_launch = false;
  // A greedy one-row pick queued for a decode step fed with it (decode_ahead) runs as the first
  // node of that step's captured graph, from arguments uploaded with the step's metadata, instead
  // of as its own launch between two graphs; the feed kernel follows it in the graph. A replayed
  // step's second kernel started ~12.7 us after its first whatever the first was (thirty-fifth
  // session's traces: 7 us of hyper_grid, then 5.7 us of nothing), so the pick's 7.5 us may hide
  // there. Its arguments and grammar mask go up with the step's metadata, so the pass's stream
  // waits on no other stream before the step. Needs pick_copy_stream (the read back); ignored
  // with staged_step_metadata and with graph_device_launch (a device-launch graph may not hold
  // the event record the read back waits for). With pick_feeds_step, pick_before_step and
  // pick_mask_early (the four are the defaults since the forty-first session): on H100s with a
  // copy bandwidth of 3,028 GB/s, decode + pick @1K +0.2% alone (five interleaved rounds,
  // 1,080.8 against 1,078.6 tok/s) and +0.5% with moe_early_down (1,083.1 against 1,078.2);
  // +0.4% in the thirty-eighth session (3,046 GB/s).
  bool pick_in_step_graph = true;
  // With pick_in_step_graph: the pick's last block writes the step's token itself, so the feed
  // kernel (one more node and its launch gap before the step's first kernel) goes.
  bool pick_feeds_step = true;
  // With pick_in_step_graph: the deferred pick runs on its own right before the step's graph
  // (after the metadata upload that carries its arguments and mask) instead of inside it, so the
  // step replays the plain decode graph (no graph of its own to capture). Against the defaults
  // the pass's stream no longer waits on the copy stream's mask upload, and with
  // pick_feeds_step no feed kernel runs: graph, upload, pick, graph.
  bool pick_before_step = true;
  // With pick_in_step_graph: the deferred pick's grammar mask goes up on the copy stream as soon
  // as it is queued (as every other pick's), while the step before runs, instead of with the
  // next step's metadata. That upload is 16.9 KB with a vocabulary's mask, and on an H100 the
  // pass's stream started its next work 6-11 us after such a copy ended, against ~1.6 us after
  // the 688-byte metadata alone (thirty-eighth session's traces). With it the traced gap between
  // two replays fell from 16.6 to 4.4 us, but a graph that starts with the pick ran its layers
  // ~1 us a sublayer longer: decode + pick -0.1 to +0.4% on an H100 (with pick_before_step,
  // which runs the pick outside the graph, the +0.4%). On.
  bool pick_mask_early = true;
  // Greedy picks (pick_in_step_graph's too) as one cluster of 8 blocks that
  // combine their partials through shared memory, instead of 64 blocks meeting through the L2
  // (a fence, an arrival counter and the last block reading every partial back): the same token,
  // z summed in another order. Traced (thirty-ninth session) the pick took 7.6 us of the ~16.5 us
  // between two replayed steps. On an H100 (forty-first session, five interleaved rounds) decode
  // + pick @1K -0.6% (1,071.8 against 1,078.6 tok/s), -0.5% with the deferred pick's options:
  // 8 SMs read the logits slower than 64 blocks meet through the L2. Off.
  bool pick_cluster = false;
  // With pick_before_step (the deferred pick launched right before the step it feeds): that
  // pick takes its arguments by value and its threads copy the step's metadata up from the
  // page-locked packing buffer as it runs, instead of a 744-byte copy before it that the pick
  // then read its arguments from. Between two replayed steps (forty-second session's trace) the
  // copy took 1.2 us, 1.3 us after the step before ended, and the pick started 1.7 us after it.
  // One extra block does the copy, so its PCIe round trip overlaps the other blocks' reductions
  // (block 0's threads copying first: the gap between two replays 13.6 -> 11.5 us traced).
  // decode + pick @1K on H100s: +0.2% (forty-third session, seven interleaved rounds, the first
  // form), +0.1% (forty-fourth, five rounds, 1,106.9 against 1,105.7 tok/s). On since the
  // forty-fifth session, with every GPU test passing.
  bool pick_uploads_step = true;
  // Profiling inside captured decode steps (Nsight Compute cannot take a whole replayed step
  // here): every pass launches this stage's kernels twice, so the step's extra time is what the
  // stage costs where it stands in the graph. The second launch reads the first one's outputs,
  // so the values are wrong. One of kRepeatableStages, or empty.
  std::string repeat_stage;
  // Decode batches' mHC boundaries (hyper_fused) run as a cluster of 8 blocks per row exchanging
  // their partial sums in distributed shared memory (hyper_fused_cluster) instead of the last
  // block to arrive finishing each row alone. On an H100 (eighteenth session, three rounds
  // each) batch 8 decoded 2,567-2,621 tok/s against 2,547-2,556 (greedy pick 3,087-3,101
  // against 2,992-2,994), batch 32's pick 3,845-3,858 against 3,787-3,795; one row measured no
  // faster (decode+pick @1K 959.7-961.0 against 962.7-965.1), so a single row keeps hyper_fused.
  // 0: never; 1: batches of 2+ rows; 2: every decode pass, one row too.
  int cluster_mhc = 1;
  // Passes of 1-4 rows whose logits are all wanted run their mHC boundaries through
  // hyper_fused_grid (hyper_grid.cu): every block finishes its own channels after a barrier of
  // the row's blocks, x's norm from the streams' Gram matrix, Sinkhorn before the next
  // boundary's wait. Takes precedence over cluster_mhc for those passes. 0: never; 1: so; 2:
  // also the embedding inside the first boundary (no embed_rows launch). On an H100 (twenty-
  // second session, three rounds) 1 decoded 961.5 tok/s at 1K against 956.0 with 0, and
  // decode+pick 1,003.3 against 995.8.
  int grid_mhc = 1;
  // The grid boundaries of the layers (hyper_grid.cu's kScatter, not the head's): each warp adds
  // up its 28 sums (24 projections, 4 Gram entries) by one reduce-scatter, 31 shuffles, instead
  // of a butterfly each (~130 shuffles a warp, ~2,100 an SM: ~1 us of each boundary's critical
  // path at one shuffle a clock). The same pairs added in the same order. Off: written in the
  // forty-sixth session, not yet run on a GPU.
  bool mhc_scatter = false;
  // Decode rows (up to 64, the streamed experts' rows) are routed by the routed experts' up
  // kernel (its producer warps, before they ask for the chosen experts' weights) instead of a
  // routing kernel of their own before it: one launch and one round trip fewer on a step's path.
  // The same choices and weights (RoutingMatchesTheCpu, RoutedExpertsRoutingThemselves pass on
  // an H100). Off: slower there (twentieth session, two rounds each, decode @1K 948.4-954.8
  // tok/s against 971.8-972.0): the producer's routing delays the first weight copies more than
  // the routing launch it saves.
  bool fused_routing = false;
  // One-row decode with the grid mHC boundaries (grid_mhc) and the shared expert on its own
  // stream (side_moe): the routed experts' down kernel writes its sums to a buffer of its own
  // instead of adding them to the shared expert's output, so it no longer waits for the shared
  // expert's down product to end (its blocks land as the SMs free up), and the next boundary
  // adds the two as it reads them (the same float sum, shared + routed). Traced (thirty-ninth
  // session) the shared down product ran in the routed up kernel's tail and the routed down
  // kernel started only after it ended: 13.3 us for 25 MB after that. On H100s (forty-first
  // session, interleaved rounds) decode + pick @1K -0.3%, and -0.1 to 0.0% beside
  // moe_early_down: both down products need every SM, so the wait was not what held it. Off.
  bool moe_separate_sum = false;
  // Decode rows' routed experts (the streamed kernels, routing launched on its own): the down
  // kernel's producer copies its weights as soon as its block lands, before the up kernel has
  // ended, instead of after its wait (the routing launch wrote the choices it reads before the
  // up kernel began). On H100s with a copy bandwidth of 3,028 GB/s (forty-first session, three
  // calls, interleaved rounds) decode + pick @1K +0.2%, +0.2% and +0.3%. On.
  bool moe_early_down = true;
  // Decode rows (up to 64; FP4 routed experts on the streamed kernels, an FP8 shared expert):
  // the shared expert's products as tasks of the routed experts' two streamed kernels
  // (moe_decode.cu: its gate and up rows ahead of the routed ones in the up kernel, its down rows
  // two more stages of every down task, in float32 on the CUDA cores), so the MoE section is a
  // routing launch and two streamed kernels on one stream instead of the shared expert's three
  // launches beside them taking the SMs in turn (each streamed kernel holds every SM; the
  // shared expert's 25 MB took ~13 us of SM time a layer for ~8 at the copy bandwidth). The
  // shared expert's products in float32 instead of the tensor cores' float32-like f16 parts:
  // the logits move in their last bits. 2: only the down product folded (its gate and up stay
  // beside the routing on the side stream, the down kernel waits for their SwiGLU). H100
  // (forty-fifth session, call 1, five interleaved rounds, decode + pick @1K): 1 -0.7% (1,100.8
  // against 1,108.8 tok/s), with fused_routing -1.2%. 0: off.
  int shared_in_experts = 0;
  // One-row decode: the shared expert's streamed products take at most this many blocks and the
  // routed experts' streamed kernels the other SMs, so the two run side by side on disjoint SMs
  // (at one block an SM each, with every SM's shared memory, the shared expert's gate and up
  // held every SM while the routing ran, and the routed up kernel's blocks landed as they left:
  // twenty-second session's H100 trace). 0: both take every SM. Slower on an H100
  // (twenty-third session, three rounds each, decode+pick @1K): 16 blocks 887.5 tok/s, 32 984.0,
  // 48 990.8, against 1,038.5 with 0.
  int shared_expert_blocks = 0;
  // One-row decode: the attention kernel takes 4 heads and 16 keys a block (32 KB of shared
  // memory, 128 threads of at most 112 registers: attend_decode_lean_kernel) and the attention
  // output's wo_a a ring that leaves room for it, so wo_a's blocks may sit beside the
  // attention's and copy their first stages while it runs (at 8 heads and 32 keys a block, 64 KB
  // and 160 registers a thread took the room wo_a's block needs, and the memory idles for the
  // attention's ~16-21 us in every layer). No faster on an H100 (twenty-third session, three
  // rounds each): decode+pick @1K 1,031.6 tok/s against 1,038.1 (1,041.2 against 1,040.6 with
  // 160 registers, when a scheduler's 16,384 could not hold wo_a's warps beside it); traced,
  // wo_a still ended ~12 us after the attention. With attention_cluster (both on by default
  // since the twenty-fourth session): see there.
  bool attention_beside_wo_a = true;
  // One-row decode: the attention's key slices of a head group (8 of them, 4 heads and 32 keys
  // a block) as a thread-block cluster merging their partials in distributed shared memory
  // (DecodeAttentionShape::cluster) instead of a fence, an arrival counter and the last block
  // reading every slice back through the L2. With attention_beside_wo_a too, the cluster's blocks
  // take 16 keys at once (32 KB) and wo_a's ring leaves them room, so wo_a's blocks may land
  // beside them while they run (the cluster keeps every block to its last barrier). On an
  // H100 (twenty-third session, three rounds each) decode+pick @1K 1,040.9 tok/s against
  // 1,039.3, decode 987.0 against 989.5: no change. Traced, the sliding and HCA layers'
  // attention took 10.9-11.2 us against 16.3-16.6, the CSA layers' (48 keys a block instead of
  // 24) 20.7-21.3 as before, and wo_a ended later after it: every block now stays for the
  // cluster's last barrier, where the global merge let all but the last block of each group
  // leave early and wo_a's blocks land on those SMs. Both on (the default since the
  // twenty-fourth session): decode+pick @1K +0.6% and +0.7% against neither in two H100 calls
  // (1,041.6 against 1,035.5; 1,041.0 against 1,033.5; three rounds each); stamped, the
  // attention's blocks all leave ~2 us before the global merge's last ones did and wo_a's wait
  // ends ~4 us sooner, though most of wo_a's blocks still land only as the attention's leave.
  bool attention_cluster = true;
  // One decode row's query norm (q_norm) folded into the launch of wq_b and the indexer's wq_b
  // (gemv_warp_rows norms q_res on its way into shared memory): one launch and one round trip
  // fewer on each layer's path; layers without an indexer fold it into wq_b alone. Values
  // within float32 rounding of the separate norm (WarpRowsNormedAsRmsNormThenProduct). On an
  // H100 (twentieth session, the set only, two rounds each) decode @1K 963.9-973.8 tok/s against
  // 961.5-962.9, decode+pick 983.8-988.9 against 977.5-978.4.
  bool fused_q_norm = true;
  // A greedy choice on the device (ModelSequence::forward_and_sample; decode_batch_and_sample
  // of greedy rows with expect_same_batch) queues the next decode step, fed with the picked
  // tokens on the device, before the host reads the picks back: the GPU goes on while the host
  // returns the tokens and works out the next grammar masks. A call that feeds other tokens or
  // sequences, or another run in between, discards that step (one step of GPU time lost). On an
  // H100 (eighteenth session) with 300 us of host work a step: one row 957.5-965.0 tok/s
  // against 730.9-745.3 without, batch 8 3,057-3,061 against 2,741-2,779; with none, +1% for
  // one row and the same for batches.
  bool decode_ahead = true;
  // The picks' grammar masks go up and their results come back on a copy stream of their own,
  // so the pass's stream runs only the pick kernels between two decode steps: the masks' upload
  // overlaps the step before, and the read back overlaps the next step's metadata upload and
  // launch. On an H100 (twenty-first session, three rounds each) decode+pick @1K 1,013.0 tok/s
  // against 995.5 without it; batches the same.
  bool pick_copy_stream = true;
  // Sampling rows: up to this many allowed tokens near the best are collected on the device and
  // drawn from on the host; a row with more sorts all its allowed tokens on the device.
  int32_t near_capacity = 4096;
  // A batch whose sorted rows hold at least this many allowed tokens draws for its rows on
  // several host threads (an exp per allowed token: 0.35 ms a row of 64,640 on the dev box).
  int64_t parallel_draw_tokens = int64_t(1) << 18;
};

// The stages CudaOptions::repeat_stage accepts.
inline constexpr const char* kRepeatableStages[] = {
    "mhc",          "x_products",     "q_norm", "wq_b",      "q_rope", "indexer_wq_b",
    "indexer_rope", "indexer_scores", "top_k",  "attention", "o_rope", "wo_a",
    "wo_b",         "router",         "route",  "experts",   "shared", "head"};

// CudaOptions::pick_in_step_graph: deferred picks their decode step took, inside its graph or
// launched right before it (pick_before_step).
struct TakenPicks {
  int64_t in_graph = 0, before_step = 0;
};

struct DeviceRow {
  DeviceSequenceCache* cache;
  int64_t pos;
  int32_t token;
  bool want_logits;
  // Set: the row's token is this pick's, on the device (DeviceForward::device_pick), and `token`
  // is ignored: the step is queued behind the pick without the host waiting for it.
  const MaskedPick* picked = nullptr;
};

class DeviceForward {
 public:
  DeviceForward(ForwardConfig config, const ForwardWeights& host, const CudaOptions& options);
  ~DeviceForward();
  DeviceForward(const DeviceForward&) = delete;
  DeviceForward& operator=(const DeviceForward&) = delete;

  const ForwardConfig& config() const { return config_; }
  int64_t weight_bytes() const { return weights_.bytes; }
  cudaStream_t stream() const { return stream_; }

  // Runs the rows (caches reserved here; the caller bumps lengths) and writes one logits row per
  // row with want_logits into `logits` (host memory), in row order; logits = nullptr leaves them
  // on the device for near_best_rows(). Not thread-safe.
  void run(std::span<const DeviceRow> rows, float* logits);
  // After run(rows, nullptr): logits rows first_row .. first_row + dst.size() - 1 of the last run
  // into dst[i] (host memory, vocab floats each), through pinned memory in one copy (a batch's
  // rows go straight to their vectors, not through one flat buffer first).
  void read_logits(std::span<float* const> dst, int64_t first_row = 0);

  // The choice made on the device for one logits row: the greedy pick under the row's token
  // bitmask with the softmax normaliser z at inv_t, and for sampling the allowed tokens within
  // `delta` logits of the best as (logit, id); `total` is how many there are (more than the
  // capacity: cand is incomplete).
  struct NearBest {
    MaskedPick pick;
    int32_t total = 0;
    std::vector<std::pair<float, int32_t>> cand;
  };
  struct RowPick {
    float inv_t = 1.0f;
    float delta = 0.0f;  // 0: greedy, the pick only
  };
  // After run(rows, nullptr): the choice for logits rows first_row .. first_row + n - 1 (-1: the
  // last n rows) under masks[i] each (host memory; no words: every token allowed), with at most
  // `capacity` candidates per sampling row; one launch per greedy row, two per sampling row, and
  // one read back for all of them.
  std::vector<NearBest> near_best_rows(std::span<const TokenMask> masks,
                                       std::span<const RowPick> how, int32_t capacity,
                                       int64_t first_row = 0);
  // near_best_rows in two halves: queue the choices (and their read back), then wait for that
  // read back alone, so work queued in between (a decode step fed with device_pick) runs on the
  // GPU while the host waits and then goes on. collect_picks() once per enqueue_picks().
  // logits_rows, if given: pick i reads logits row logits_rows[i] (else first_row + i).
  void enqueue_picks(std::span<const TokenMask> masks, std::span<const RowPick> how,
                     int32_t capacity, int64_t first_row = 0,
                     std::span<const int64_t> logits_rows = {});
  std::vector<NearBest> collect_picks();
  // Row i's pick of the last enqueue_picks, on the device, until the next enqueue_picks.
  const MaskedPick* device_pick(int64_t i) const;
  // How many runs have been queued: a sequence that queued a step ahead checks that no other run
  // has overwritten its logits since.
  uint64_t runs() const { return runs_; }
  // CudaOptions::pick_in_step_graph: deferred picks their step took so far.
  TakenPicks taken_picks() const { return taken_picks_; }
  // After run(rows, nullptr): for each logits row rows[i] (-1: the last), the `allowed[i]` tokens
  // that masks[i] allows with finite logits, as (logit, id) best first, ties to the lower id
  // (Sampler::sample's order): one sort on the device for all the rows, one read back. The lists
  // live in this object until the next call (a batch's rows of a whole vocabulary are tens of MB
  // of host memory, allocated and faulted in again at every step before).
  using Sorted = std::vector<std::pair<float, int32_t>>;
  std::span<const Sorted> sorted_allowed(std::span<const int64_t> rows,
                                         std::span<const TokenMask> masks,
                                         std::span<const int32_t> allowed);

  // GPU milliseconds per stage (mHC, attention, MoE, head) summed over runs, when profiling.
  const std::map<std::string, double>& stage_ms() const { return stage_ms_; }
  LinearRunner::Fp8Counts fp8_counts() const {
    LinearRunner::Fp8Counts c = linear_.fp8_counts();
    const LinearRunner::Fp8Counts e = expert_gemm_.fp8_counts();
    c.experts = e.experts;
    c.expert_fallbacks = e.expert_fallbacks;
    return c;
  }

 private:
  struct Workspace;
  void attention(size_t l, int64_t n, float* out);
  // routed_out: the routed experts' sum goes there, written, not added to out (the shared
  // expert's), and does not wait for it (CudaOptions::moe_separate_sum).
  void moe(size_t l, int64_t n, float* out, float* routed_out = nullptr);
  // layer_metadata (CudaOptions::defer_layer_metadata): run() packs and uploads the layers'
  // metadata there, called before the first attention. at_split (CudaOptions::split_step_graph):
  // called after the first mHC boundary, where run() ends one capture and begins the next.
  void enqueue(int64_t n, const std::vector<int64_t>& wanted,
               const std::function<void()>* layer_metadata = nullptr,
               const std::function<void()>* at_split = nullptr);
  // The call's metadata in pinned memory, for its upload.
  const char* pinned_metadata(const std::vector<char>& bytes);
  // A logits row the last run left on the device.
  const float* logits_row(int64_t row) const;  // -1: the last
  // A stream for work independent of what follows on stream_ until join(): the side stream
  // (after an event on stream_) or stream_ itself when not decoding.
  cudaStream_t fork();
  // CudaOptions::lead_prefetch_bytes of layer lw's query weights, in the order they are read.
  L2Ranges lead_ranges(const LayerOnDevice& lw) const;
  void join(cudaStream_t side);
  // The picks' read back on the copy stream (or stream_) once picked_ is recorded after them;
  // recorded here unless a captured step's graph records it (pick_in_step_graph).
  void read_back_picks(char* host, const char* dev, int64_t bytes, bool picked_recorded);
  // Launches a deferred pick (pick_in_step_graph) on its own, and its read back; no-op if none.
  void launch_deferred_pick();
  // CudaOptions::pick_uploads_step: launches the deferred pick (args as packed, by value: the
  // packing buffer may move) copying `bytes` of packed metadata up to `meta`; false, having
  // launched nothing, where it cannot (the copy is then the caller's).
  bool pick_uploads(PickArgs args, char* meta, size_t bytes);
  // launch_deferred_pick(), then waits for its read back: for callers about to write the pinned
  // staging its mask is uploaded from (a pick still deferred there was never collected).
  void flush_deferred_pick();
  void stage(const char* name);
  void collect_stages();
  // Runs launch(), and again where `name` is the stage to repeat (CudaOptions::repeat_stage).
  template <typename Launch>
  void repeatable(const char* name, Launch&& launch) {
    launch();
    if (repeat_stage_ == name) launch();
  }

  ForwardConfig config_;
  WeightsOnDevice weights_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_ = nullptr, join_ = nullptr;
  // CudaOptions::split_kv_chains's second branch.
  cudaStream_t side2_ = nullptr;
  cudaEvent_t fork2_ = nullptr, join2_ = nullptr;
  // CudaOptions::head_prefetch_bytes's branch: its stream and the events around it.
  cudaStream_t head_side_ = nullptr;
  cudaEvent_t head_fork_ = nullptr, head_join_ = nullptr;
  int64_t current_rows_ = 0;  // rows of the pass being enqueued
  LinearRunner linear_;
  ExpertGemm expert_gemm_;          // routed experts of prefill-sized passes
  IndexerScoresGemm indexer_gemm_;  // indexer scores of prefill-sized passes of one sequence
  cublasHandle_t blas_ = nullptr;   // the mHC projection of prefill-sized passes
  std::unique_ptr<Workspace> ws_;
  GemmPrecision precision_ = GemmPrecision::bf16x2;  // also of the tensor-core prefill kernels
  bool profile_ = false;
  bool graphs_ = true;
  bool key_mirrors_ = true;              // CudaOptions::key_mirrors
  bool query_rope_in_attention_ = true;  // CudaOptions::query_rope_in_attention
  int attention_warp_channels_ = 256;    // CudaOptions::attention_warp_channels
  bool wgmma_attention_ = false;         // CudaOptions::wgmma_attention, where the GPU has it
  bool prefill_mhc_pass_ = true;         // CudaOptions::prefill_mhc_pass
  bool defer_layer_metadata_ = false;    // CudaOptions::defer_layer_metadata
  bool shared_fp8_rows_ = false;         // CudaOptions::shared_fp8_rows
  bool shared_gate_up_bf16_ = false;     // CudaOptions::shared_gate_up_bf16
  bool prefill_pre_staged_ = false;      // CudaOptions::prefill_pre_staged
  bool attention_fp8_out_ = false;       // CudaOptions::attention_fp8_out
  bool attention_lean_ = false;          // CudaOptions::attention_lean
  int attention_query_ahead_ = 0;        // CudaOptions::attention_query_ahead (-1: the SMs)
  bool query_bf16_ = false;              // CudaOptions::query_bf16
  bool indexer_wgmma_ = false;           // CudaOptions::indexer_wgmma
  int cluster_mhc_ = 1;                  // CudaOptions::cluster_mhc
  int grid_mhc_ = 1;                     // CudaOptions::grid_mhc
  bool mhc_scatter_ = false;             // CudaOptions::mhc_scatter
  bool fused_routing_ = false;           // CudaOptions::fused_routing
  bool moe_separate_sum_ = false;        // CudaOptions::moe_separate_sum
  bool moe_early_down_ = true;           // CudaOptions::moe_early_down
  int shared_in_experts_ = 0;            // CudaOptions::shared_in_experts
  bool pick_cluster_ = false;            // CudaOptions::pick_cluster
  bool pick_uploads_step_ = true;        // CudaOptions::pick_uploads_step
  int shared_expert_blocks_ = 0;         // CudaOptions::shared_expert_blocks
  int64_t ring_in_flight_bytes_ = 0;     // CudaOptions::ring_in_flight_bytes
  int64_t lead_prefetch_bytes_ = 0;      // CudaOptions::lead_prefetch_bytes
  int64_t head_prefetch_bytes_ = 0;      // CudaOptions::head_prefetch_bytes
  int head_prefetch_from_ = 1;           // CudaOptions::head_prefetch_from
  bool head_prefetch_last_ = false;      // CudaOptions::head_prefetch_evict_last
  bool side_attention_ = true;           // CudaOptions::side_attention
  int split_kv_chains_ = 0;              // CudaOptions::split_kv_chains
  bool side_moe_ = true;                 // CudaOptions::side_moe
  int step_graph_copies_ = 1;            // CudaOptions::step_graph_copies
  bool split_step_graph_ = false;        // CudaOptions::split_step_graph
  bool graph_device_launch_ = false;     // CudaOptions::graph_device_launch
  bool pick_in_step_graph_ = true;       // CudaOptions::pick_in_step_graph (with copy_, graphs)
  bool pick_feeds_step_ = true;          // CudaOptions::pick_feeds_step
  bool pick_before_step_ = true;         // CudaOptions::pick_before_step
  bool pick_mask_early_ = true;          // CudaOptions::pick_mask_early
  bool fused_q_norm_ = false;            // CudaOptions::fused_q_norm
  int decode_attention_splits_ = 0;      // CudaOptions::decode_attention_splits
  int attention_chunk_keys_ = 48;        // CudaOptions::decode_attention_chunk_keys
  int attention_keys_at_once_ = 4;       // CudaOptions::decode_attention_keys_at_once
  bool attention_bulk_keys_ = true;      // CudaOptions::decode_attention_bulk_keys
  int attention_cluster_slices_ = 8;     // CudaOptions::decode_attention_cluster_slices
  bool attention_beside_wo_a_ = true;    // CudaOptions::attention_beside_wo_a
  bool attention_cluster_ = true;        // CudaOptions::attention_cluster
  int64_t gemv_max_rows_ = 16;
  std::string repeat_stage_;
  struct CapturedStep {
    cudaGraphExec_t prologue = nullptr;  // CudaOptions::split_step_graph: launched before exec
    cudaGraphExec_t exec = nullptr;
    cudaGraphExec_t spare = nullptr;  // CudaOptions::step_graph_copies 2: launched every other step
    bool spare_next = false;
    uint64_t generation = 0;  // the workspace generation it was captured with
    size_t layout_bytes = 0;  // the metadata it reads, up to the feeds (a check of its offsets)
  };
  // By rows, the visible compressed entries' bound, and whether the step starts with a pick.
  std::map<std::tuple<int64_t, int64_t, bool>, CapturedStep> graphs_by_shape_;
  std::vector<std::pair<std::string, cudaEvent_t>> marks_;
  std::map<std::string, double> stage_ms_;
  PinnedBuffer pinned_logits_;  // staging for the logits
  // One event per piece of a logits read (read_logits): the host copies each piece out of the
  // staging while the next ones are still on their way.
  static constexpr int kLogitsPieces = 8;
  cudaEvent_t logits_landed_[kLogitsPieces] = {};
  int64_t last_wanted_ = 0;  // logits rows the last run left on the device
  DeviceBuffer mask_, pick_scratch_, pick_, near_, sort_mask_, sort_scratch_;
  // The queued choices (enqueue_picks) that collect_picks reads back once picks_landed_ is done.
  struct QueuedPicks {
    std::vector<RowPick> how;
    int32_t capacity = 0;
    int64_t slot = 0;
    const char* host = nullptr;  // pinned: where the read back lands
    bool pending = false;
  } queued_;
  cudaEvent_t picks_landed_ = nullptr;
  // CudaOptions::pick_copy_stream: the masks' upload and the picks' read back, ordered against
  // the pick kernels by mask_up_ and picked_.
  cudaStream_t copy_ = nullptr;
  cudaEvent_t mask_up_ = nullptr, picked_ = nullptr;
  uint64_t runs_ = 0;
  PinnedBuffer pinned_mask_;    // staging for the mask and the pick
  std::vector<Sorted> sorted_;  // sorted_allowed's lists, their room kept between calls
  // Each call's metadata, packed here for its upload (a pageable copy returns only once the
  // driver has staged it) and kept between calls (buffers allocated afresh each call touched
  // ~6 MB of new pages for a 16K prefill: 8.9 ms of page faults before the pass's first upload,
  // thirty-first session), and the event after its copy.
  PinnedBuffer pinned_meta_;
  // CudaOptions::defer_layer_metadata: the layers' metadata's own page-locked buffer.
  PinnedBuffer pinned_layer_meta_;
  cudaEvent_t meta_copied_ = nullptr;
  // CudaOptions::staged_step_metadata: the graph passes' metadata's device staging, its upload
  // stream, and the events ordering the upload before the feed kernel that reads the staging
  // (staged_up_) and the next upload after it (staged_read_).
  DeviceBuffer meta_stage_;
  cudaStream_t upload_ = nullptr;
  cudaEvent_t staged_up_ = nullptr, staged_read_ = nullptr;
  // CudaOptions::pick_in_step_graph: a queued pick not launched yet, for the next run to take
  // into its step's graph or launch_deferred_pick() to launch alone; with where its read back
  // goes (pinned), from where (device) and how many bytes.
  struct DeferredPick {
    PickArgs args;
    const uint32_t* staged_mask = nullptr;  // its mask in pinned_mask_ (args.mask_words), if any
    char* host = nullptr;
    const char* dev = nullptr;
    int64_t bytes = 0;
  };
  std::optional<DeferredPick> deferred_;
  TakenPicks taken_picks_;
};

}  // namespace agentrt::engine::cuda
