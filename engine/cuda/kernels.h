// The small kernels of the CUDA forward pass (everything but the weight products), each the GPU
// twin of a CPU engine function named beside it. All run on `stream` and read and write device
// memory only; the tests in tests/engine/cuda_kernels_test.cc compare them with the CPU engine.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/device_matrix.h"
#include "engine/cuda/layer_rows.h"
#include "engine/forward_config.h"
#include "engine/matmul.h"

namespace agentrt::engine::cuda {

// Rope tables on the device: inv_freq [dim/2] and the attention scaling (rope.h's RopeTable).
struct DeviceRope {
  const float* inv_freq = nullptr;
  int dim = 0;
  float scaling = 1.0f;
};

// --- norm_rope.cu ---
// rms_norm_rows (engine/rmsnorm.h); weight may be null.
void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                   float* out, cudaStream_t stream);
// RopeTable::apply on the trailing rope.dim channels of each of `heads` heads of every row
// (x: [rows][heads][head_dim]), at positions pos[row] (device).
void apply_rope(float* x, int64_t rows, int64_t heads, int64_t head_dim, const int64_t* pos,
                const DeviceRope& rope, bool inverse, cudaStream_t stream);
// rms_norm_rows in place on x ([rows][heads][head_dim], one head per norm row), then apply_rope
// on the same rows, then (cache_rows not null, heads == 1) append_rows of the result to `field`:
// the same values as the three calls, in one launch. rope_cs (heads == 1): row t's (cos, sin)
// times the rope's scaling for each of its rope.dim / 2 pairs, [rows][rope.dim / 2], for
// attend_rows_decode at the same positions.
void norm_rope_rows(float* x, const float* weight, int64_t rows, int64_t heads, int64_t head_dim,
                    float eps, const int64_t* pos, const DeviceRope& rope,
                    const LayerRow* cache_rows, CacheField field, cudaStream_t stream,
                    float2* rope_cs = nullptr);
// streams[t][i] = embed[tokens[t]] for every i < hc.
void embed_rows(const WeightMatrix& embed, const int32_t* tokens, int64_t n, int64_t hc,
                float* streams, cudaStream_t stream);
// out = silu(min(g, limit)) * clamp(u, -limit, limit) (limit <= 0: no clamp), elementwise.
void swiglu(const float* gate, const float* up, int64_t count, float limit, float* out,
            cudaStream_t stream);
// Appends each row's `width` floats to its cache buffer `field` at the row's position.
void append_rows(const LayerRow* rows, CacheField field, const float* src, int64_t width, int64_t n,
                 cudaStream_t stream);

// --- hyper_connection.cu ---
// Width of one row's mixing weights: pre [hc], post [hc], comb [hc][hc].
constexpr int64_t hyper_mix_width(int64_t hc) { return 2 * hc + hc * hc; }
constexpr int64_t hyper_projected_floats(int64_t n, int64_t hc) {
  return n * ((2 + hc) * hc + 1) * 8;  // partial sums per output (+ sum of squares) per slice
}
struct HyperDevice {
  const float* fn;     // [(2 + hc) * hc][hc * hidden] (head: [hc][hc * hidden])
  const float* base;   // [(2 + hc) * hc] (head: [hc])
  const float* scale;  // [3] (head: [1])
};
// hyper_mix + hyper_collapse + rms_norm(norm) per row: x [n][hidden], mix [n][mix width].
// head = true: hyper_head (pre only; mix may be null). projected: scratch of
// hyper_projected_floats(n, hc) floats. With a cuBLAS handle, 256 rows or more take the
// projection as one float32 GEMM.
void hyper_pre(const HyperDevice& w, const float* streams, int64_t n, int64_t hc, int64_t hidden,
               int sinkhorn_iters, float hc_eps, float rms_eps, const float* norm, bool head,
               float* mix, float* x, float* projected, cudaStream_t stream,
               cublasHandle_t blas = nullptr);
// hyper_post of the sublayer before (block_out [n][hidden] with the mix its hyper_pre left in
// mix; block_out null: none) and then hyper_pre, in one launch for decode batches: streams are
// updated in place, x and (head = false) mix written. partial: hyper_fused_scratch_floats;
// arrived: n counters, zero before the first launch (each launch leaves them at zero).
bool hyper_fused_supported(int64_t n, int64_t hc, int64_t hidden);
int64_t hyper_fused_scratch_floats(int64_t n, int64_t hc, int64_t hidden);
void hyper_fused(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                 int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps, float rms_eps,
                 const float* norm, bool head, float* mix, float* x, float* partial,
                 unsigned* arrived, cudaStream_t stream);
// hyper_fused as one cluster of 8 blocks per row exchanging partial sums in distributed shared
// memory (hyper_cluster.cu; sm_90): no scratch, no counters. hc 4, hidden 1,024, 2,048 or 4,096.
bool hyper_cluster_supported(int64_t n, int64_t hc, int64_t hidden);
void hyper_fused_cluster(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                         int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps,
                         float rms_eps, const float* norm, bool head, float* mix, float* x,
                         cudaStream_t stream);
// hyper_fused with every block finishing its own channels after a barrier of the row's blocks
// in global memory (hyper_grid.cu): hc 4, 1-4 rows, hidden a multiple of 128 up to 4,096. Its
// mix differs from hyper_fused's: comb is left before Sinkhorn, and the next call's block_out
// step runs the iterations on it (sinkhorn_iters: those of the boundary whose mix it reads,
// the head's call too), so a pass takes every boundary through this kernel.
// partial: hyper_grid_scratch_floats; arrived: 2 counters a row (2 * n), zero before the first
// launch, not shared with hyper_fused. embed and tokens (device, [n]) set, block_out null: the
// streams are first written with each row's embedding (embed_rows' work, hc copies). scatter:
// the blocks' sums by a reduce-scatter a warp (CudaOptions::mhc_scatter).
bool hyper_grid_supported(int64_t n, int64_t hc, int64_t hidden);
int64_t hyper_grid_scratch_floats(int64_t n, int64_t hc);
void hyper_fused_grid(const HyperDevice& w, const float* block_out, float* streams, int64_t n,
                      int64_t hc, int64_t hidden, int sinkhorn_iters, float hc_eps, float rms_eps,
                      const float* norm, bool head, float* mix, float* x, float* partial,
                      unsigned* arrived, cudaStream_t stream, const WeightMatrix* embed = nullptr,
                      const int32_t* tokens = nullptr, const float* block_out2 = nullptr,
                      bool scatter = false);
// hyper_expand per row, in place on streams [n][hc][hidden].
void hyper_post(const float* mix, const float* block_out, int64_t n, int64_t hc, int64_t hidden,
                float* streams, cudaStream_t stream);

// --- compressor.cu ---
// compress_entry for each job: softmax-gated pooling, RMSNorm, rope at w * rate.
struct CompressorDevice {
  const float* ape;   // [rate][coff * dim]
  const float* norm;  // [dim]
  int64_t dim = 0;
  int64_t rate = 0;
  bool overlap = false;
};
// jobs: `slots` entries of which the first *count (device) are real.
void compress_entries(const CompressorDevice& c, const CompressJob* jobs, const int32_t* count,
                      int64_t slots, const DeviceRope& rope, float rms_eps, cudaStream_t stream);

// --- attention.cu ---
// attend() for every (row, head): keys are the sliding window (pos - window, pos] of rows[t].kv
// plus compressed entries: chosen[t][0 .. n_chosen[t]) if chosen is set (CSA), else all
// rows[t].visible entries if use_entries (HCA). q, out: [n][heads][head_dim]. max_keys bounds
// window + entries over the rows.
void attend_rows(const float* q, const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t window, const float* sinks, bool use_entries, const int32_t* chosen,
                 const int32_t* n_chosen, int64_t topk, int64_t max_keys, float* out,
                 cudaStream_t stream);
// The kernel attend_rows takes for many rows: one block per row and group of heads, the keys
// loaded once per group (head_dim a multiple of 4, at most 512).
void attend_rows_by_row(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                        int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                        const int32_t* chosen, const int32_t* n_chosen, int64_t topk, float* out,
                        cudaStream_t stream);
// The plain kernel attend_rows is tested against (scores in shared memory, then the sum).
void attend_rows_reference(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                           int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                           const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                           int64_t max_keys, float* out, cudaStream_t stream);

// --- attention_decode.cu ---
// attend_rows for decode batches with the query's head RMSNorm (no weight, eps q_eps) and RoPE
// (at pos[t]) done on the way in and the inverse RoPE on the output: q is the raw wq_b output.
// rope_cs: the rows' (cos, sin) table from norm_rope_rows at the same positions (the KV row's
// call), read instead of computed (the same values; double-precision sin and cos in every block
// were a long part of the kernel); null: computed. Each row's keys are split into `splits` slices
// (attend_decode_splits of a bound on the keys, at most `cap` of them where cap > 0). partials:
// attend_decode_partial_floats; arrived: n * heads counters, zero before the first launch (each
// launch leaves them at zero).
// shape: heads a block (a warp each; at most 8, halved until it divides heads) and keys in
// shared memory at once (at most 64). The default takes 8 heads and 32 keys (64 KB at head_dim
// 512, 160 registers a thread); 4 and 16 leave a streamed product's block room beside each block
// (CudaOptions::attention_beside_wo_a).
struct DecodeAttentionShape {
  int heads_per_block = 8;
  int chunk_keys = 32;
  // The slices of one (row, head group) as a thread-block cluster merging their partials in
  // distributed shared memory (at most 16 slices dividing head_dim / 4, more than 8 as a
  // non-portable cluster; else the global merge).
  bool cluster = false;
  // Keys a warp scores together in the cluster kernel: 2 (at most 112 registers a thread) or 4.
  int keys_at_once = 2;
  // Each key row comes by one bulk copy (the TMA engine) instead of 16-byte copies; the cluster
  // kernel only.
  bool bulk_keys = false;
};
bool attend_decode_supported(int64_t heads, int64_t head_dim, const DeviceRope& rope);
// Key slices a row for max_keys keys (at most cap; 0: 16). A cluster's more than 8 are 16.
int attend_decode_splits(int64_t max_keys, int cap = 0, const DecodeAttentionShape& shape = {});
int64_t attend_decode_partial_floats(int64_t n, int64_t heads, int64_t head_dim, int splits);
// The dynamic shared memory of one block.
int64_t attend_decode_shared_bytes(int64_t head_dim, const DecodeAttentionShape& shape = {});
void attend_rows_decode(const float* q, const LayerRow* rows, const int64_t* pos,
                        const DeviceRope& rope, float q_eps, int64_t n, int64_t heads,
                        int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                        const int32_t* chosen, const int32_t* n_chosen, int64_t topk, int splits,
                        float* partials, unsigned* arrived, float* out, cudaStream_t stream,
                        const float2* rope_cs = nullptr, const DecodeAttentionShape& shape = {});

// --- attention_mma.cu ---
// attend_rows_by_row on tensor cores for prefill: one block per row and 64 heads (heads a
// multiple of 64, head_dim 128, 256 or 512). split: float32-like (each operand as two bf16
// parts, three products); otherwise plain bf16 products (within 2e-2 relative L2 in the test),
// float32 softmax.
bool attend_rows_mma_supported(int64_t heads, int64_t head_dim);
// warp_channels (attend_rows_mma*): output channels a warp owns, 256 or 128 (heads of 256 and
// 512: twice the warps, each with half the accumulators; 128-channel heads take 128 either way).
// norm_rope_rows' query step (one head a norm row, no weight, then RoPE at pos[row]) for the
// tensor-core attention to apply as it loads each row's query, so q is not rewritten in a pass
// of its own; pos null: q is already normed and rotated.
struct QueryNormRope {
  const int64_t* pos = nullptr;  // [n] (device)
  DeviceRope rope;
  float eps = 0.0f;
  // Also apply_rope's inverse to the output (out's rope channels rotated back), so the caller
  // needs no pass of its own over it.
  bool unrope_output = false;
};
void attend_rows_mma(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                     int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                     const int32_t* chosen, const int32_t* n_chosen, int64_t topk, bool split,
                     float* out, cudaStream_t stream, const QueryNormRope& norm = {},
                     int warp_channels = 256);

// The keys of rows of one sequence, as bf16 (attend_rows_mma_mirrored): rows [0, kv_rows) are
// the cache's KV rows from position kv_first on, rows kv_rows + e its compressed entries e <
// entries; one plane of (kv_rows + entries) * head_dim values (split: the high parts, then the low
// parts).
struct KeyMirror {
  const uint16_t* keys = nullptr;
  int64_t kv_first = 0, kv_rows = 0, entries = 0;
};
// Bytes of a mirror of kv_rows + entries keys.
int64_t key_mirror_bytes(int64_t head_dim, int64_t kv_rows, int64_t entries, bool split);
// Fills a mirror (key_mirror_bytes) from a cache's KV rows [kv_first, kv_first + kv_rows) and its
// first n_entries entries.
void mirror_keys(const float* kv, int64_t kv_first, int64_t kv_rows, const float* entries,
                 int64_t n_entries, int64_t head_dim, bool split, void* mirror,
                 cudaStream_t stream);
// attend_rows_mma for rows whose keys all come from one cache (kv: its KV rows, entries: its
// compressed entries, as in every row's LayerRow): the reachable keys (every row's window within
// [kv_first, kv_first + kv_rows), its entries below `entries`) are converted to bf16 once into
// `mirror` (key_mirror_bytes), and each block copies bf16 tiles straight from it, several in
// flight. The same outputs, bit for bit, as attend_rows_mma.
void attend_rows_mma_mirrored(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                              int64_t head_dim, int64_t window, const float* sinks,
                              bool use_entries, const int32_t* chosen, const int32_t* n_chosen,
                              int64_t topk, bool split, const float* kv, int64_t kv_first,
                              int64_t kv_rows, const float* entries, int64_t n_entries,
                              void* mirror, float* out, cudaStream_t stream,
                              const QueryNormRope& norm = {}, int warp_channels = 256);

// --- indexer.cu ---
// indexer_scores (engine/indexer.h) per row over its visible entries: scores [n][stride].
// head_weights are the raw weights_proj outputs; weight_scale (1/sqrt(heads)) multiplies them.
// Rows with at most `unscored` visible entries get no scores: select_topk takes all of them
// without reading any (pass the top-k; a decode step's rows learn their counts on the device).
void indexer_scores(const float* q, const float* head_weights, float weight_scale,
                    const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                    int64_t max_visible, float* scores, int64_t stride, cudaStream_t stream,
                    int64_t unscored = 0);
// indexer_select: the topk best of each row's visible scores (ties: lower index first), in
// ascending index order; all visible entries when they are at most topk.
void select_topk(const float* scores, int64_t stride, const LayerRow* rows, int64_t n, int64_t topk,
                 int32_t* chosen, int32_t* n_chosen, cudaStream_t stream);

// --- indexer_mma.cu ---
// indexer_scores for prefill rows that all read `entries` ([max_visible][head_dim]), fused on
// tensor cores (64 heads of 128). split: float32-like products; otherwise plain bf16.
bool indexer_scores_mma_supported(int64_t heads, int64_t head_dim);
void indexer_scores_mma(const float* q, const float* head_weights, float weight_scale,
                        const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                        const float* entries, int64_t max_visible, bool split, float* scores,
                        int64_t stride, cudaStream_t stream);
// The same scores, bit for bit, with the entries converted to bf16 once into `mirror`
// (key_mirror_bytes(head_dim, 0, max_visible, split)) and bf16 tiles streamed from there, several
// in flight (attend_rows_mma_mirrored's scheme).
void indexer_scores_mma_mirrored(const float* q, const float* head_weights, float weight_scale,
                                 const LayerRow* rows, int64_t n, int64_t heads, int64_t head_dim,
                                 const float* entries, int64_t max_visible, bool split,
                                 void* mirror, float* scores, int64_t stride, cudaStream_t stream);

// --- l2_prefetch.cu ---
// Up to kMaxL2Ranges device ranges (16-byte aligned, sizes multiples of 16) asked into the L2
// by one launch on `stream`, without waiting for them to land (CudaOptions::lead_prefetch).
constexpr int kMaxL2Ranges = 8;
struct L2Ranges {
  const void* data[kMaxL2Ranges] = {};
  int64_t bytes[kMaxL2Ranges] = {};
  int count = 0;
};
void prefetch_to_l2(const L2Ranges& ranges, cudaStream_t stream);
// The first bytes_per_part of each slice of `slices` (gemv_stream_slices: what the head's
// blocks read first) asked into the L2 by one launch without waiting
// (CudaOptions::head_prefetch_bytes). evict_last marks the lines to be kept over the streamed
// weights' evict-first ones.
void prefetch_slices_to_l2(const StreamSlices& slices, int64_t bytes_per_part, bool evict_last,
                           cudaStream_t stream);

// --- sampling.cu ---
// The greedy choice among allowed tokens (mask bit set, or no mask; logit finite): the largest
// logit (ties: lower id), and z = sum over allowed of exp((logit - best) * inv_t). allowed = 0:
// nothing allowed (token and z meaningless). scratch: masked_pick_scratch_bytes(), zero before
// the first call (each call leaves it so; calls sharing a scratch run one after another).
struct MaskedPick {
  int32_t token;
  int32_t allowed;
  float best;
  double z;
};
static_assert(sizeof(MaskedPick) <= 24, "device_forward.cc lays results out after 24 bytes");
int64_t masked_pick_scratch_bytes();
// After masked_pick into `pick` (device): the allowed tokens with logit >= pick->best - delta,
// in no order, the first `capacity` into ids/values; *count = how many there are in all.
void collect_near_best(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                       const MaskedPick* pick, float delta, int32_t capacity, int32_t* count,
                       int32_t* ids, float* values, cudaStream_t stream);
// cluster: one cluster of 8 blocks combining through shared memory (CudaOptions::pick_cluster;
// scratch unused): the same token, count and best, z summed in another order.
void masked_pick(const float* logits, int64_t vocab, const uint32_t* mask, int64_t mask_words,
                 float inv_t, void* scratch, MaskedPick* out, cudaStream_t stream,
                 bool cluster = false);
// masked_pick's arguments in device memory (CudaOptions::pick_in_step_graph: a captured step's
// first node picks the token the step is fed with, from arguments uploaded with its metadata).
struct PickArgs {
  const float* logits;
  const uint32_t* mask;
  int64_t mask_words;
  void* scratch;
  MaskedPick* out;
  float inv_t;
  // CudaOptions::pick_feeds_step: where the pick's last block also writes the picked token (0
  // when it allowed nothing, as feed_picked_tokens); nullptr: nowhere.
  int32_t* feed;
};
// masked_pick reading its arguments from `args` (device memory) when it runs; the same results.
// cluster: as masked_pick's.
void masked_pick_from(const PickArgs* args, int64_t vocab, cudaStream_t stream,
                      bool cluster = false);
// masked_pick_from with the arguments by value, and a block more that copies `bytes` (a
// multiple of 16) from `from` (page-locked host memory, as the device addresses it) to `to`
// (device memory; both 16-byte aligned) before the last block writes args.feed, which may lie
// inside them: a decode step's metadata goes up with the pick that feeds it, without a copy of
// its own before the pick (CudaOptions::pick_uploads_step). Launches nothing and returns false
// where the words are not aligned or the vocabulary takes every block the pick may have.
bool masked_pick_uploading(const PickArgs& args, int64_t vocab, const void* from, void* to,
                           int64_t bytes, cudaStream_t stream);
// A decode step's row fed from a pick on the device (DeviceRow::picked).
struct PickFeed {
  const MaskedPick* pick;
  int64_t row;
};
// tokens[feeds[i].row] = feeds[i].pick's token (0 where the mask allowed nothing) for i < n, one
// launch (feeds in device memory): the step is queued before the host has read the picks back.
void feed_picked_tokens(const PickFeed* feeds, int64_t n, int32_t* tokens, cudaStream_t stream);
// CudaOptions::staged_step_metadata: copies `bytes` of a pass's metadata from `stage` to `meta`
// (device buffers, 16-byte aligned), then feeds the picks as feed_picked_tokens does, with the
// feeds at stage + feeds_off (n of them) and the tokens at meta + tokens_off; one launch.
void feed_staged_metadata(const char* stage, char* meta, int64_t bytes, int64_t feeds_off,
                          int64_t n, int64_t tokens_off, cudaStream_t stream);
// Logits rows sorted on the device, for sampling rows with too many tokens near the best to
// collect (instead of each whole row sorted on the host). Row i of a sort is logits row rows[i]
// (device array) under the bitmask masks + i * mask_stride of words[i] words (-1: no mask, every
// token allowed; 0: nothing allowed).
struct SortRows {
  const int32_t* rows = nullptr;
  const uint32_t* masks = nullptr;
  int64_t mask_stride = 0;
  const int32_t* words = nullptr;
  int64_t count = 0;
};
// Every allowed token with a finite logit of each row, best first (ties: lower id first, -0 as
// 0), as the host Sampler orders its candidates: row i's first `allowed` (from masked_pick)
// entries at keys + i * vocab and ids + i * vocab, which sort_allowed points into scratch
// (sort_allowed_scratch_bytes(vocab, rows.count) bytes). One radix sort for all the rows (the
// row index above each key's 32 bits).
int64_t sort_allowed_scratch_bytes(int64_t vocab, int64_t count);
void sort_allowed(const float* logits, int64_t vocab, const SortRows& rows, void* scratch,
                  const float** keys, const int32_t** ids, cudaStream_t stream);

// --- moe.cu ---
struct ExpertsDevice {
  const WeightMatrix* w1;  // [experts] device arrays of device views
  const WeightMatrix* w2;
  const WeightMatrix* w3;
  // The stored types of every expert's gate/up and down weights (sizes the GEMV blocks).
  WeightType w1_type = WeightType::f32;
  WeightType w2_type = WeightType::f32;
  ScaleType scale_type = ScaleType::f32;  // of FP8 experts' block scales
};
class ExpertGemm;  // moe_gemm.h
// route(): logits [n][experts] -> experts [n][k], weights [n][k]. tid2eid set: hash routing.
void route_rows(const float* logits, const int32_t* tokens, const int32_t* tid2eid,
                const float* bias, int64_t n, int64_t experts, int64_t k, ScoreFunc score,
                float routed_scaling, int32_t* chosen, float* weights, cudaStream_t stream);
// The routed experts of n rows, each row's chosen experts' FP4 weights streamed through shared
// memory on their own (moe_decode.cu; an expert two rows share is read twice; all rows in one
// launch of each kernel, a block's range of tasks running from row to row): act, n * k *
// inter floats of scratch, carries the SwiGLU values between the two kernels (as int8 parts,
// fp4_int8.cuh); `out` [n][hidden] gets the weighted sums added once before_sum (if set) has
// fired. Returns false, having launched nothing, where the weights' type and shapes do not allow
// it (fit() says so beforehand); max_blocks > 0 caps the grid (tests use it to make each block
// loop over its ring); in_flight_bytes > 0 caps each block's weight copies in flight
// (CudaOptions::ring_in_flight_bytes). store: `out` gets the sums written, not added, and
// before_sum is not waited for (routed_experts' store). early_down: the down kernel's producer
// copies its weights before the up kernel has ended (chosen must come from an earlier launch).
// shared (CudaOptions::shared_in_experts): the shared expert's FP8 products as tasks of the same
// two kernels, so that the MoE section is two launches that hold the SMs in turn instead of five
// (gate/up, SwiGLU, down beside the routed up and down) taking turns: its gate and up rows as
// tasks of the up kernel ahead of the routed ones (their SwiGLU values written to shared->act,
// [n][w1.rows] floats), its down rows as two more stages of each down task; `out` gets the
// whole sum written (store). in_up false: only the down product is folded in; act holds the
// SwiGLU values once before_sum fires (launches of the caller's), which the down kernel waits
// for (with in_up, before_sum is not waited for). Returns false, having launched nothing, where
// the shared expert's shapes do not fit (streamed_shared_fits).
struct SharedExpertDevice {
  // FP8 e4m3, device views: w1 and w3 [inter][hidden], w2 [hidden][inter].
  WeightMatrix w1, w3, w2;
  float* act = nullptr;  // [n][inter] scratch
  bool in_up = true;     // the gate and up rows as tasks of the up kernel
};
bool streamed_shared_fits(const SharedExpertDevice& s, int64_t hidden);
bool streamed_experts_fit(const ExpertsDevice& e, int64_t k, int64_t inter, int64_t hidden);
bool streamed_experts(const ExpertsDevice& e, const int32_t* chosen, const float* weights,
                      const float* h, int64_t n, int64_t k, int64_t inter, int64_t hidden,
                      float limit, float* act, float* out, cudaStream_t stream,
                      cudaEvent_t before_sum, int max_blocks = 0, int64_t in_flight_bytes = 0,
                      bool store = false, bool early_down = false,
                      const SharedExpertDevice* shared = nullptr);

// What route_rows reads, for the kernels that route rows themselves.
struct RouteInputs {
  const float* logits = nullptr;     // [n][experts]
  const int32_t* tokens = nullptr;   // [n], for hash routing
  const int32_t* tid2eid = nullptr;  // hash routing: [vocab][k]; null: top-k of the biased scores
  const float* bias = nullptr;       // [experts]
  ScoreFunc func = ScoreFunc::sqrtsoftplus;
  float scaling = 1.0f;
};
// streamed_experts whose up kernel's producer warps route their rows themselves (route_warp.cuh:
// the same choices and weights as route_rows, written to chosen and weights [n][k] for the down
// kernel), so a decode step has no routing launch on its path. Returns false, having launched
// nothing, where streamed_experts would, one warp does not route such a row (route_fits_warp) or
// a row takes more than 8 experts.
bool streamed_experts_routed(const RouteInputs& route, int64_t experts, int32_t* chosen,
                             float* weights, const ExpertsDevice& e, const float* h, int64_t n,
                             int64_t k, int64_t inter, int64_t hidden, float limit, float* act,
                             float* out, cudaStream_t stream, cudaEvent_t before_sum,
                             int max_blocks = 0, int64_t in_flight_bytes = 0,
                             const SharedExpertDevice* shared = nullptr);

// routed_experts' grouping of P (row, expert) pairs (chosen: each pair's expert) for tests:
// order[P] the pairs stably sorted by expert, slot[P] each pair's place in it, the used experts
// in active[] with their segments' starts in seg_start[] (one more at the end), their count in
// *n_active. hist: group_expert_pairs_hist_ints(P, experts) ints of scratch. one_block: the one-
// block kernel (decode batches') whatever P, else many pairs take the multi-block kernels.
void group_expert_pairs(const int32_t* chosen, int64_t P, int64_t experts, int32_t* order,
                        int32_t* slot, int32_t* active, int32_t* seg_start, int32_t* n_active,
                        int32_t* hist, bool one_block, cudaStream_t stream);
int64_t group_expert_pairs_hist_ints(int64_t P, int64_t experts);

// Groups the n*k (row, expert) pairs by expert and runs each used expert once over its rows
// (through `gemm`, on tensor cores, where it applies); the sum into `out` waits for
// `before_sum` when set (another stream writing `out` first). Up to 64 rows take streamed_experts
// where it fits:
// out[t] += sum_j weights[t][j] * expert_{chosen[t][j]}(h[t]). scratch: see moe_scratch_bytes.
// store: out[t] = that sum instead (out is the routed experts' own; before_sum ignored).
int64_t moe_scratch_bytes(int64_t n, int64_t k, int64_t experts, int64_t inter, int64_t hidden);
void routed_experts(const ExpertsDevice& e, const int32_t* chosen, const float* weights,
                    const float* h, int64_t n, int64_t k, int64_t experts, int64_t inter,
                    int64_t hidden, float limit, void* scratch, float* out, cudaStream_t stream,
                    ExpertGemm* gemm = nullptr, cudaEvent_t before_sum = nullptr,
                    int max_blocks = 0, int64_t in_flight_bytes = 0, bool store = false,
                    bool early_down = false);
// route_rows into chosen and weights [n][k], then routed_experts; where the streamed kernels
// take the rows, the routing runs inside them (streamed_experts_routed).
void route_and_run_experts(const RouteInputs& route, int32_t* chosen, float* weights,
                           const ExpertsDevice& e, const float* h, int64_t n, int64_t k,
                           int64_t experts, int64_t inter, int64_t hidden, float limit,
                           void* scratch, float* out, cudaStream_t stream, ExpertGemm* gemm,
                           cudaEvent_t before_sum, int64_t in_flight_bytes = 0);
bool experts_with_shared_fit(const ExpertsDevice& e, const SharedExpertDevice& shared, int64_t n,
                             int64_t k, int64_t inter, int64_t hidden);
// Decode rows (up to 64) through the streamed kernels with the shared expert folded in
// (streamed_experts' shared): routed by a route_rows launch first or, with fused, inside the up
// kernel (where a warp routes such rows); `out` gets the whole MoE output written, the down
// kernel waiting for before_down where set (shared.in_up false: the SwiGLU values). Returns
// false, having launched nothing, where the streamed kernels do not take the rows or the shared
// expert (experts_with_shared_fit says so beforehand; the caller then runs both apart).
bool experts_with_shared(const RouteInputs& route, bool fused, int32_t* chosen, float* weights,
                         const ExpertsDevice& e, const SharedExpertDevice& shared, const float* h,
                         int64_t n, int64_t k, int64_t experts, int64_t inter, int64_t hidden,
                         float limit, void* scratch, float* out, cudaStream_t stream,
                         cudaEvent_t before_down, int64_t in_flight_bytes, bool early_down);

}  // namespace agentrt::engine::cuda
