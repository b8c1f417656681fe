#include "engine/cuda/device_forward.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

#include "engine/cuda/attention_wgmma.h"
#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/hyper_prefill.h"
#include "engine/cuda/indexer_wgmma.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/swiglu_rows.h"
#include "engine/cuda/wgmma_runs.h"

namespace agentrt::engine::cuda {

// Activations and per-call metadata, grown to the largest batch seen and reused.
struct DeviceForward::Workspace {
  DeviceBuffer streams, mix, x, y, q_res, q, kv, raw_kv, raw_gate, idx_raw_kv, idx_raw_gate, iq, iw,
      scores, chosen, n_chosen, attn, grouped, router, route_experts, route_weights, gate, up, act,
      moe_scratch, head_streams, head_x, logits, meta, layer_meta, projected, attn_partials,
      attn_arrived, hyper_partials, hyper_arrived, hyper_grid_arrived, key_mirror, idx_mirror,
      rope_cs, slice_sums, routed_y;
  // Bumped whenever a buffer moves: captured decode graphs hold the old addresses.
  uint64_t generation = 0;
  float* f(DeviceBuffer& b, int64_t count) { return static_cast<float*>(grow(b, count * 4)); }
  // grow() for buffers whose contents must start at zero (counters the kernels reset).
  void* zeroed(DeviceBuffer& b, int64_t bytes, cudaStream_t stream) {
    const uint64_t before = generation;
    void* p = grow(b, bytes);
    if (generation != before) AGENTRT_CUDA_CHECK(cudaMemsetAsync(p, 0, size_t(b.bytes()), stream));
    return p;
  }
  void* grow(DeviceBuffer& b, int64_t bytes) {
    bytes = std::max<int64_t>(bytes, 4);
    if (b.bytes() < bytes) {
      b.reserve(bytes);
      ++generation;
    }
    return b.get();
  }
  // This call's metadata (device pointers into `meta`).
  const int32_t* tokens = nullptr;
  const int64_t* pos = nullptr;
  struct LayerMeta {
    const LayerRow* rows = nullptr;
    const CompressJob* comp_jobs = nullptr;
    const CompressJob* idx_jobs = nullptr;
    const int32_t* job_counts = nullptr;  // device: [compressor, indexer]
    int64_t job_slots = 0;                // grid size of the compress kernels
    int64_t max_keys = 0, max_visible = 0;
    // The indexer entries every row reads when the rows are of one sequence, else nullptr.
    const float* shared_idx_entries = nullptr;
    // Rows of one sequence: its KV rows and compressed entries, and the positions the rows'
    // windows reach, [kv_first, kv_first + kv_rows) (attend_rows_mma_mirrored).
    const float* shared_kv = nullptr;
    const float* shared_comp_entries = nullptr;
    int64_t kv_first = 0, kv_rows = 0;
  };
  std::vector<LayerMeta> layers;
};

namespace {

// The shared memory a block may take and still share an SM with one block of `beside` bytes of
// dynamic shared memory (each block also holds the device's reserved bytes; up to 1 KB static).
int64_t shared_room_beside(int64_t beside) {
  int device = 0, per_sm = 0, reserved = 0;
  AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
  AGENTRT_CUDA_CHECK(
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  AGENTRT_CUDA_CHECK(
      cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  return int64_t(per_sm) - beside - 1024 - 2 * int64_t(reserved);
}

// A pick's slot in near_best_rows' layout: the pick, the near tokens' count at byte 24, then from
// here the near tokens' ids and values.
constexpr int64_t kPickSlotHead = 32;
// From this many rows of one sequence on, the indexer scores are a GEMM (indexer_gemm.h).
constexpr int64_t kIndexerGemmRows = 256;
// Below this many rows mHC runs as one launch per sublayer boundary (hyper_fused).
constexpr int64_t kFusedHyperRows = 256;
// Up to this many rows attention splits each row's keys over blocks (attention_decode.cu).
constexpr int64_t kDecodeAttentionRows = 16;
// From this many rows on attention runs on tensor cores (attention_mma.cu) where the shapes allow.
constexpr int64_t kMmaAttentionRows = 256;

// Host-side packing of everything uploaded per call, 16-byte aligned pieces, into `bytes`
// (cleared first; its room is kept).
struct MetaPacker {
  explicit MetaPacker(PinnedBuffer& into) : buf(into) {}
  PinnedBuffer& buf;
  size_t size = 0;
  // Room for count T's at the returned offset (16-byte aligned), valid until the next alloc.
  template <typename T>
  std::pair<size_t, T*> alloc(size_t count) {
    const size_t off = (size + 15) / 16 * 16;
    size = off + count * sizeof(T);
    char* base = buf.grow(int64_t(size), int64_t(off));
    return {off, reinterpret_cast<T*>(base + off)};
  }
  template <typename T>
  size_t add(const std::vector<T>& v) {
    auto [off, at] = alloc<T>(v.size());
    if (!v.empty()) std::memcpy(at, v.data(), v.size() * sizeof(T));
    return off;
  }
};

// The decode products' GemvMode under these options.
GemvMode gemv_mode_of(const CudaOptions& options) {
  GemvMode mode(true, options.tensor_map_copies, options.gemv_sum_group, options.batch_streams,
                options.warp_rows_bytes, options.warp_rows_depth, options.warp_rows_splits,
                options.early_stages);
  mode.in_flight_bytes = options.ring_in_flight_bytes;
  mode.warp_rows_copy_rows = options.warp_rows_copy_rows;
  return mode;
}

}  // namespace

DeviceForward::DeviceForward(ForwardConfig config, const ForwardWeights& host,
                             const CudaOptions& options)
    : config_(std::move(config)),
      weights_(WeightsOnDevice::upload(config_, host)),
      linear_(options.precision, options.gemv_max_rows, gemv_mode_of(options)),
      expert_gemm_(options.precision, 128, int64_t(1) << 30, options.fp4_expert_gemm,
                   options.fp8_expert_streams, options.expert_priority_stream,
                   options.fp8_grouped_rows, options.fp8_row_scales),
      indexer_gemm_(),
      ws_(std::make_unique<Workspace>()),
      precision_(options.precision),
      profile_(options.profile),
      graphs_(options.graphs),
      key_mirrors_(options.key_mirrors),
      query_rope_in_attention_(options.query_rope_in_attention),
      attention_warp_channels_(options.attention_warp_channels),
      wgmma_attention_(options.wgmma_attention),
      prefill_mhc_pass_(options.prefill_mhc_pass),
      defer_layer_metadata_(options.defer_layer_metadata),
      shared_fp8_rows_(options.shared_fp8_rows),
      shared_gate_up_bf16_(options.shared_gate_up_bf16),
      prefill_pre_staged_(options.prefill_pre_staged),
      attention_fp8_out_(options.attention_fp8_out),
      attention_lean_(options.attention_lean),
      attention_query_ahead_(options.attention_query_ahead),
      query_bf16_(options.query_bf16),
      indexer_wgmma_(options.indexer_wgmma),
      cluster_mhc_(options.cluster_mhc),
      grid_mhc_(options.grid_mhc),
      mhc_scatter_(options.mhc_scatter),
      fused_routing_(options.fused_routing),
      moe_separate_sum_(options.moe_separate_sum),
      moe_early_down_(options.moe_early_down),
      shared_in_experts_(options.shared_in_experts),
      pick_cluster_(options.pick_cluster),
      pick_uploads_step_(options.pick_uploads_step),
      shared_expert_blocks_(options.shared_expert_blocks),
      ring_in_flight_bytes_(options.ring_in_flight_bytes),
      lead_prefetch_bytes_(options.lead_prefetch_bytes),
      head_prefetch_bytes_(options.head_prefetch_bytes),
      head_prefetch_from_(options.head_prefetch_from),
      head_prefetch_last_(options.head_prefetch_evict_last),
      side_attention_(options.side_attention),
      split_kv_chains_(options.split_kv_chains),
      side_moe_(options.side_moe),
      step_graph_copies_(options.step_graph_copies),
      split_step_graph_(options.split_step_graph),
      graph_device_launch_(options.graph_device_launch),
      pick_in_step_graph_(options.pick_in_step_graph && options.pick_copy_stream &&
                          options.graphs && !options.staged_step_metadata &&
                          !options.graph_device_launch),
      pick_feeds_step_(options.pick_feeds_step),
      pick_before_step_(options.pick_before_step),
      pick_mask_early_(options.pick_mask_early),
      fused_q_norm_(options.fused_q_norm),
      decode_attention_splits_(options.decode_attention_splits),
      attention_chunk_keys_(options.decode_attention_chunk_keys),
      attention_keys_at_once_(options.decode_attention_keys_at_once),
      attention_bulk_keys_(options.decode_attention_bulk_keys),
      attention_cluster_slices_(options.decode_attention_cluster_slices),
      attention_beside_wo_a_(options.attention_beside_wo_a),
      attention_cluster_(options.attention_cluster),
      gemv_max_rows_(options.gemv_max_rows),
      repeat_stage_(options.repeat_stage) {
  if (decode_attention_splits_ < 0 || decode_attention_splits_ > 16)
    throw std::invalid_argument("cuda options: decode_attention_splits " +
                                std::to_string(decode_attention_splits_) + " is outside 0..16");
  if (attention_chunk_keys_ < 0 || attention_chunk_keys_ > 64)
    throw std::invalid_argument("cuda options: decode_attention_chunk_keys " +
                                std::to_string(attention_chunk_keys_) + " is outside 0..64");
  if (attention_cluster_slices_ != 8 && attention_cluster_slices_ != 16)
    throw std::invalid_argument("cuda options: decode_attention_cluster_slices " +
                                std::to_string(attention_cluster_slices_) + " is not 8 or 16");
  if (attention_keys_at_once_ != 2 && attention_keys_at_once_ != 4)
    throw std::invalid_argument("cuda options: decode_attention_keys_at_once " +
                                std::to_string(attention_keys_at_once_) + " is not 2 or 4");
  if (!repeat_stage_.empty() &&
      std::none_of(std::begin(kRepeatableStages), std::end(kRepeatableStages),
                   [&](const char* s) { return repeat_stage_ == s; })) {
    std::string known;
    for (const char* s : kRepeatableStages) known += std::string(known.empty() ? "" : ", ") + s;
    throw std::invalid_argument("cuda options: no stage \"" + repeat_stage_ +
                                "\" to repeat (stages: " + known + ")");
  }
  if (wgmma_attention_) {
    int device = 0;
    AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
    wgmma_attention_ = wgmma_kernels_run(device);
  }
  if (attention_query_ahead_ < -1)
    throw std::invalid_argument("cuda options: attention_query_ahead " +
                                std::to_string(attention_query_ahead_) +
                                " (rows; -1 for the GPU's SM count, 0 for none)");
  if (attention_query_ahead_ == -1) attention_query_ahead_ = sm_count();
  if (split_kv_chains_ < 0 || split_kv_chains_ > 2)
    throw std::invalid_argument("cuda options: split_kv_chains " +
                                std::to_string(split_kv_chains_) + " (0, 1 or 2)");
  if (options.warp_rows_copy_rows != 2 && options.warp_rows_copy_rows != 8)
    throw std::invalid_argument("cuda options: warp_rows_copy_rows " +
                                std::to_string(options.warp_rows_copy_rows) + " (2 or 8)");
  if (step_graph_copies_ < 1 || step_graph_copies_ > 2)
    throw std::invalid_argument("cuda options: step_graph_copies " +
                                std::to_string(step_graph_copies_) + " (1 or 2)");
  if (head_prefetch_bytes_ < 0 || head_prefetch_bytes_ % 16 != 0 || head_prefetch_from_ < 1)
    throw std::invalid_argument("cuda options: head_prefetch_bytes " +
                                std::to_string(head_prefetch_bytes_) + " (a multiple of 16) from " +
                                std::to_string(head_prefetch_from_) +
                                " sublayers before the head (at least 1)");
  AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  check_cublas(cublasCreate(&blas_), "cublasCreate");
  if (profile_) expert_gemm_.set_stage_marker([this](const char* name) { stage(name); });
  expert_gemm_.set_gate_up_bf16(options.gate_up_bf16);
  expert_gemm_.set_pair_out_bf16(options.pair_out_bf16);
  expert_gemm_.set_block_rows(options.fp8_block_rows);
  expert_gemm_.set_scatter_rows(options.fp8_scatter_rows);
  if (options.pick_copy_stream) {
    AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&mask_up_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&picked_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventRecord(picked_, stream_));  // no picks yet: complete
  }
  if (options.staged_step_metadata && graphs_) {
    AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&upload_, cudaStreamNonBlocking));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&staged_up_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&staged_read_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventRecord(staged_read_, stream_));  // nothing staged yet: complete
  }
  if (head_prefetch_bytes_ > 0) {
    AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&head_side_, cudaStreamNonBlocking));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&head_fork_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&head_join_, cudaEventDisableTiming));
  }
  if (options.side_stream) {
    AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming));
    if (split_kv_chains_ > 0) {
      AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&side2_, cudaStreamNonBlocking));
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&fork2_, cudaEventDisableTiming));
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&join2_, cudaEventDisableTiming));
    }
  }
}

DeviceForward::~DeviceForward() {
  for (auto& [key, step] : graphs_by_shape_) {
    if (step.prologue) cudaGraphExecDestroy(step.prologue);
    if (step.spare) cudaGraphExecDestroy(step.spare);
    cudaGraphExecDestroy(step.exec);
  }
  if (blas_) cublasDestroy(blas_);
  for (cudaEvent_t e : logits_landed_)
    if (e) cudaEventDestroy(e);
  if (meta_copied_) cudaEventDestroy(meta_copied_);
  if (picks_landed_) cudaEventDestroy(picks_landed_);
  for (auto& m : marks_) cudaEventDestroy(m.second);
  if (copy_) {
    cudaStreamSynchronize(copy_);
    cudaStreamDestroy(copy_);
  }
  if (mask_up_) cudaEventDestroy(mask_up_);
  if (picked_) cudaEventDestroy(picked_);
  if (upload_) {
    cudaStreamSynchronize(upload_);
    cudaStreamDestroy(upload_);
  }
  if (staged_up_) cudaEventDestroy(staged_up_);
  if (staged_read_) cudaEventDestroy(staged_read_);
  if (side_) {
    cudaStreamSynchronize(side_);
    cudaStreamDestroy(side_);
  }
  if (side2_) {
    cudaStreamSynchronize(side2_);
    cudaStreamDestroy(side2_);
  }
  if (fork2_) cudaEventDestroy(fork2_);
  if (join2_) cudaEventDestroy(join2_);
  if (head_side_) {
    cudaStreamSynchronize(head_side_);
    cudaStreamDestroy(head_side_);
  }
  if (head_fork_) cudaEventDestroy(head_fork_);
  if (head_join_) cudaEventDestroy(head_join_);
  if (fork_) cudaEventDestroy(fork_);
  if (join_) cudaEventDestroy(join_);
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

void DeviceForward::run(std::span<const DeviceRow> rows, float* logits) {
  const ForwardConfig& c = config_;
  Workspace& w = *ws_;
  const int64_t n = int64_t(rows.size()), L = int64_t(c.layers.size());
  if (n == 0) return;
  // Profiling: the host's time before the pass's first upload (cache growth, metadata), which
  // the GPU stages' events do not see: host.reserve and host.metadata in stage_ms, in ms.
  using Clock = std::chrono::steady_clock;
  auto host_ms = [](Clock::time_point from) {
    return std::chrono::duration<double, std::milli>(Clock::now() - from).count();
  };
  const Clock::time_point host_start = Clock::now();

  // Rows of one cache must extend it in order; reserve room for them.
  std::map<DeviceSequenceCache*, int64_t> next;  // cache -> next expected position
  std::vector<DeviceSequenceCache*> order;       // distinct caches, first-seen order
  std::vector<int32_t> tokens(n);
  std::vector<int64_t> pos(n);
  std::vector<PickFeed> feeds;  // rows whose token is a pick on the device
  for (int64_t t = 0; t < n; ++t) {
    const DeviceRow& r = rows[t];
    if (!r.picked && (r.token < 0 || r.token >= c.vocab_size))
      throw std::out_of_range("cuda forward: token id " + std::to_string(r.token) +
                              " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    auto [it, fresh] = next.try_emplace(r.cache, r.cache->length);
    if (fresh) order.push_back(r.cache);
    if (r.pos != it->second)
      throw std::logic_error("cuda forward: row at position " + std::to_string(r.pos) +
                             " does not extend a cache at position " + std::to_string(it->second));
    ++it->second;
    tokens[t] = r.picked ? 0 : r.token;
    if (r.picked) feeds.push_back({r.picked, t});
    pos[t] = r.pos;
  }
  for (auto* cache : order) cache->reserve(next[cache], stream_);
  const Clock::time_point reserved = Clock::now();
  if (profile_) stage_ms_["host.reserve"] += host_ms(host_start);

  // A decode-sized batch that wants every row's logits replays a captured CUDA graph: its
  // shapes are fixed by the row count and an upper bound on the compressed entries visible
  // (from the caches' capacity), everything else travels in the metadata upload.
  std::vector<int64_t> wanted;
  for (int64_t t = 0; t < n; ++t)
    if (rows[t].want_logits) wanted.push_back(t);
  bool graph = graphs_ && !profile_ && n <= gemv_max_rows_ && int64_t(wanted.size()) == n;
  int64_t visible_bound = 0;
  for (const ForwardLayer& fl : c.layers)
    if (fl.compress_rate)
      for (auto* cache : order)
        visible_bound = std::max(visible_bound, cache->capacity() / fl.compress_rate + 1);

  // Per-layer row views and compressed entries to emit, packed straight into the page-locked
  // upload buffer (a 16K prefill's 5.4 MB were zero-filled, built in a vector and copied twice
  // before: ~1.5 ms of host time before the first upload). The last call's upload may still be
  // reading it (a call that wanted no results does not wait for its work).
  if (meta_copied_) AGENTRT_CUDA_CHECK(cudaEventSynchronize(meta_copied_));
  MetaPacker pack(pinned_meta_);
  const size_t tokens_off = pack.add(tokens), pos_off = pack.add(pos);
  struct LayerOffsets {
    size_t rows, comp, idx, counts;
  };
  std::vector<LayerOffsets> offs(L);
  w.layers.assign(L, {});
  // The layers' row views and compressed entries to emit, packed by `into`.
  auto pack_layers = [&](MetaPacker& into) {
    for (int64_t l = 0; l < L; ++l) {
      const ForwardLayer& fl = c.layers[l];
      const int64_t rate = fl.compress_rate;
      const auto [rows_off, lrows] = into.alloc<LayerRow>(size_t(n));  // every field set below
      Workspace::LayerMeta& m = w.layers[l];
      // A prefill's rows all share one cache: its pointers are looked up once per run of rows.
      const DeviceSequenceCache* cache_of_base = nullptr;
      LayerRow base;
      for (int64_t t = 0; t < n; ++t) {
        if (rows[t].cache != cache_of_base) {
          cache_of_base = rows[t].cache;
          DeviceLayerCache& lc = rows[t].cache->layer(l);
          base.kv = lc.kv.as<float>();
          base.comp_kv = lc.comp_kv.as<float>();
          base.comp_gate = lc.comp_gate.as<float>();
          base.comp_entries = lc.comp_entries.as<float>();
          base.idx_kv = lc.idx_kv.as<float>();
          base.idx_gate = lc.idx_gate.as<float>();
          base.idx_entries = lc.idx_entries.as<float>();
        }
        LayerRow& r = lrows[t];
        r = base;
        r.pos = pos[t];
        r.visible = rate ? int32_t((pos[t] + 1) / rate) : 0;
        int64_t keys = std::min(pos[t] + 1, c.sliding_window);
        if (fl.attention == AttentionKind::csa) keys += std::min<int64_t>(r.visible, c.index_topk);
        if (fl.attention == AttentionKind::hca) keys += r.visible;
        m.max_keys = std::max(m.max_keys, keys);
        m.max_visible = std::max<int64_t>(m.max_visible, r.visible);
      }
      if (order.size() == 1) {
        DeviceLayerCache& lc = order[0]->layer(l);
        m.shared_idx_entries = lc.idx_entries.as<float>();
        m.shared_kv = lc.kv.as<float>();
        m.shared_comp_entries = lc.comp_entries.as<float>();
        // One cache's rows are consecutive positions from its length on (checked above).
        m.kv_first = std::max<int64_t>(0, pos[0] - c.sliding_window + 1);
        m.kv_rows = pos[n - 1] + 1 - m.kv_first;
      }
      std::vector<CompressJob> comp, idx;
      if (rate)
        for (auto* cache : order) {
          DeviceLayerCache& lc = cache->layer(l);
          for (int64_t e = cache->length / rate; e < next[cache] / rate; ++e) {
            comp.push_back(
                {lc.comp_kv.as<float>(), lc.comp_gate.as<float>(), lc.comp_entries.as<float>(), e});
            if (fl.attention == AttentionKind::csa)
              idx.push_back(
                  {lc.idx_kv.as<float>(), lc.idx_gate.as<float>(), lc.idx_entries.as<float>(), e});
          }
        }
      const std::vector<int32_t> counts = {int32_t(comp.size()), int32_t(idx.size())};
      m.job_slots = int64_t(std::max(comp.size(), idx.size()));
      if (graph) {
        if (m.job_slots > n) graph = false;  // cannot happen with rates >= 2; stay eager if so
        m.job_slots = n;
        comp.resize(n, CompressJob{});
        idx.resize(n, CompressJob{});
      }
      offs[l].rows = rows_off;
      offs[l].comp = into.add(comp);
      offs[l].idx = into.add(idx);
      offs[l].counts = into.add(counts);
    }
  };
  // CudaOptions::defer_layer_metadata: a pass that is not a graph's packs and uploads these once
  // its first kernels are enqueued (the embedding and the first mHC step need only the tokens),
  // so the GPU runs them while the host packs (a 16K prefill's 1.1 ms of packing left the GPU
  // idle at the pass's start).
  const bool defer = defer_layer_metadata_ && !graph;
  if (!defer) pack_layers(pack);
  // A captured graph reads the layers' metadata at the offsets it was captured with, so
  // everything a graph reads sits at offsets fixed by the row count; the feeds, read before the
  // graph by their own launch, come last (a step fed from picks must not move the layers' rows).
  const size_t layout_bytes = pack.size, feeds_off = pack.add(feeds);
  // CudaOptions::pick_in_step_graph: a step fed with the deferred pick alone starts with it;
  // any other run launches it first (it reads the last run's logits).
  const bool take_pick =
      deferred_ && graph && n == 1 && feeds.size() == 1 && feeds[0].pick == deferred_->args.out;
  if (!take_pick) launch_deferred_pick();
  // CudaOptions::pick_before_step: taken, but launched after the upload rather than captured.
  const bool pick_in_graph = take_pick && !pick_before_step_;
  // Its arguments, then its mask (from the pick's staging): up with the metadata, so nothing
  // but this stream's own work comes before the step (a wait on another stream's upload right
  // before the step cost 4.4%: staged_step_metadata).
  size_t pick_off = 0, mask_off = 0;
  if (take_pick) {
    pick_off = pack.add(std::vector<PickArgs>{deferred_->args});
    if (deferred_->staged_mask) {
      const auto [off, at] = pack.alloc<uint32_t>(size_t(deferred_->args.mask_words));
      std::memcpy(at, deferred_->staged_mask, size_t(deferred_->args.mask_words) * 4);
      mask_off = off;
    }
  }
  if (graph)
    for (int64_t l = 0; l < L; ++l) {
      w.layers[l].max_visible = visible_bound;
      w.layers[l].max_keys = c.sliding_window + visible_bound;
    }
  if (profile_) stage_ms_["host.metadata"] += host_ms(reserved);
  stage("start");
  // CudaOptions::pick_uploads_step copies whole 16-byte words.
  const int64_t meta_room =
      pick_uploads_step_ ? int64_t(pack.size + 15) / 16 * 16 : int64_t(pack.size);
  char* meta = static_cast<char*>(w.grow(w.meta, meta_room));
  if (!meta_copied_)
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&meta_copied_, cudaEventDisableTiming));
  // CudaOptions::pick_feeds_step: the pick writes the step's token itself (no feed kernel).
  const bool pick_feeds = take_pick && pick_feeds_step_;
  if (take_pick && (deferred_->staged_mask || pick_feeds)) {
    // Device addresses, now that meta is known, into the packed arguments (grow() only hands
    // back the packed buffer: it holds pack.size already).
    char* packed = pinned_meta_.grow(int64_t(pack.size), int64_t(pack.size));
    auto* args = reinterpret_cast<PickArgs*>(packed + pick_off);
    if (deferred_->staged_mask) args->mask = reinterpret_cast<const uint32_t*>(meta + mask_off);
    if (pick_feeds) args->feed = reinterpret_cast<int32_t*>(meta + tokens_off) + feeds[0].row;
  }
  // The rows fed from picks get their tokens (in the uploaded metadata).
  const auto feed_tokens = [&] {
    feed_picked_tokens(reinterpret_cast<const PickFeed*>(meta + feeds_off), int64_t(feeds.size()),
                       reinterpret_cast<int32_t*>(meta + tokens_off), stream_);
  };
  // CudaOptions::pick_in_step_graph: the deferred pick (its arguments in the metadata), then the
  // feed, captured into the step's graph when `capturing`; picked_'s record is a graph node
  // there (an external record, which only a capture may ask for).
  const auto picked_and_fed = [&](bool capturing) {
    AGENTRT_CUDA_CHECK(cudaEventRecordWithFlags(
        picked_, stream_, capturing ? cudaEventRecordExternal : cudaEventRecordDefault));
    if (!pick_feeds) feed_tokens();
  };
  const auto pick_and_feed = [&](bool capturing) {
    masked_pick_from(reinterpret_cast<const PickArgs*>(meta + pick_off), config_.vocab_size,
                     stream_, pick_cluster_);
    picked_and_fed(capturing);
  };
  // The deferred pick's read back queued, and no longer deferred.
  const auto pick_taken = [&] {
    read_back_picks(deferred_->host, deferred_->dev, deferred_->bytes, true);
    deferred_.reset();
  };
  // The deferred pick launched now (not captured).
  const auto pick_now = [&] {
    pick_and_feed(false);
    pick_taken();
  };
  if (graph && upload_) {
    // CudaOptions::staged_step_metadata: up on upload_ once the last feed has read the staging
    // (while the step before still runs), then copied into place by the feed kernel.
    meta_stage_.reserve(int64_t(pack.size));
    char* stage = static_cast<char*>(meta_stage_.get());
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(upload_, staged_read_, 0));
    AGENTRT_CUDA_CHECK(
        cudaMemcpyAsync(stage, pinned_meta_.data(), pack.size, cudaMemcpyHostToDevice, upload_));
    AGENTRT_CUDA_CHECK(cudaEventRecord(meta_copied_, upload_));
    AGENTRT_CUDA_CHECK(cudaEventRecord(staged_up_, upload_));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, staged_up_, 0));
    feed_staged_metadata(stage, meta, int64_t(pack.size), int64_t(feeds_off), int64_t(feeds.size()),
                         int64_t(tokens_off), stream_);
    AGENTRT_CUDA_CHECK(cudaEventRecord(staged_read_, stream_));
  } else if (take_pick && !pick_in_graph && pick_uploads_step_ && !pick_cluster_ &&
             !deferred_->staged_mask &&
             pick_uploads(*reinterpret_cast<const PickArgs*>(pinned_meta_.data() + pick_off), meta,
                          pack.size)) {
    // CudaOptions::pick_uploads_step: the pick (its packed arguments) copied the metadata up.
    AGENTRT_CUDA_CHECK(cudaEventRecord(meta_copied_, stream_));
    picked_and_fed(false);
    pick_taken();
    ++taken_picks_.before_step;
  } else {
    AGENTRT_CUDA_CHECK(
        cudaMemcpyAsync(meta, pinned_meta_.data(), pack.size, cudaMemcpyHostToDevice, stream_));
    AGENTRT_CUDA_CHECK(cudaEventRecord(meta_copied_, stream_));
    if (take_pick && !pick_in_graph) {
      pick_now();  // cleared now: a run that throws later must not leave it to run again
      ++taken_picks_.before_step;
    }
    if (!take_pick) feed_tokens();
  }
  ++runs_;
  w.tokens = reinterpret_cast<const int32_t*>(meta + tokens_off);
  w.pos = reinterpret_cast<const int64_t*>(meta + pos_off);
  auto point_layers = [&](const char* base) {
    for (int64_t l = 0; l < L; ++l) {
      w.layers[l].rows = reinterpret_cast<const LayerRow*>(base + offs[l].rows);
      w.layers[l].comp_jobs = reinterpret_cast<const CompressJob*>(base + offs[l].comp);
      w.layers[l].idx_jobs = reinterpret_cast<const CompressJob*>(base + offs[l].idx);
      w.layers[l].job_counts = reinterpret_cast<const int32_t*>(base + offs[l].counts);
    }
  };
  if (!defer) point_layers(meta);
  // The deferred packing and upload, which enqueue() calls before the first attention; into a
  // second page-locked buffer: the first one's upload may not have run yet.
  const std::function<void()> layer_metadata = [&] {
    const Clock::time_point packing = Clock::now();
    MetaPacker layers(pinned_layer_meta_);
    pack_layers(layers);
    char* at = static_cast<char*>(w.grow(w.layer_meta, int64_t(layers.size)));
    AGENTRT_CUDA_CHECK(cudaMemcpyAsync(at, pinned_layer_meta_.data(), layers.size,
                                       cudaMemcpyHostToDevice, stream_));
    // The next call waits for this one before packing into either buffer.
    AGENTRT_CUDA_CHECK(cudaEventRecord(meta_copied_, stream_));
    point_layers(at);
    if (profile_) stage_ms_["host.metadata"] += host_ms(packing);
  };

  const int64_t m = int64_t(wanted.size());
  if (graph) {
    const std::tuple<int64_t, int64_t, bool> key{n, visible_bound, pick_in_graph};
    auto it = graphs_by_shape_.find(key);
    if (it != graphs_by_shape_.end() && it->second.generation == w.generation &&
        it->second.layout_bytes == layout_bytes) {
      CapturedStep& step = it->second;
      if (step.prologue) AGENTRT_CUDA_CHECK(cudaGraphLaunch(step.prologue, stream_));
      const bool spare = step.spare && step.spare_next;
      AGENTRT_CUDA_CHECK(cudaGraphLaunch(spare ? step.spare : step.exec, stream_));
      step.spare_next = !spare;
    } else {
      // Run eagerly (sizing every buffer), then capture the same work for the next steps.
      // Before the capture: waits on picked_ then refer to this record, not the graph's.
      if (pick_in_graph) pick_now();
      enqueue(n, wanted);
      AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      cudaGraph_t g = nullptr, g0 = nullptr;
      // CudaOptions::split_step_graph: the capture so far becomes the prologue's graph.
      const std::function<void()> split = [&] {
        AGENTRT_CUDA_CHECK(cudaStreamEndCapture(stream_, &g0));
        AGENTRT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      };
      const bool split_graph = split_step_graph_ && lead_prefetch_bytes_ == 0;
      AGENTRT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        if (pick_in_graph) pick_and_feed(true);
        enqueue(n, wanted, nullptr, split_graph ? &split : nullptr);
      } catch (...) {
        cudaStreamEndCapture(stream_, &g);
        if (g) cudaGraphDestroy(g);
        if (g0) cudaGraphDestroy(g0);
        throw;
      }
      const cudaError_t ended = cudaStreamEndCapture(stream_, &g);
      CapturedStep step;
      step.generation = w.generation;
      step.layout_bytes = layout_bytes;
      cudaError_t err = ended;
      const unsigned long long flags =
          graph_device_launch_ ? cudaGraphInstantiateFlagDeviceLaunch : 0;
      if (err == cudaSuccess && g0) err = cudaGraphInstantiate(&step.prologue, g0, flags);
      if (err == cudaSuccess) err = cudaGraphInstantiate(&step.exec, g, flags);
      if (err == cudaSuccess && step_graph_copies_ == 2)
        err = cudaGraphInstantiate(&step.spare, g, flags);
      // A device-launch graph must be uploaded before its first launch.
      if (err == cudaSuccess && graph_device_launch_ && step.prologue)
        err = cudaGraphUpload(step.prologue, stream_);
      if (err == cudaSuccess && graph_device_launch_) err = cudaGraphUpload(step.exec, stream_);
      if (err == cudaSuccess && graph_device_launch_ && step.spare)
        err = cudaGraphUpload(step.spare, stream_);
      if (g0) cudaGraphDestroy(g0);
      if (g) cudaGraphDestroy(g);
      if (err != cudaSuccess && step.prologue) cudaGraphExecDestroy(step.prologue);
      if (err != cudaSuccess && step.exec) cudaGraphExecDestroy(step.exec);
      if (err != cudaSuccess && step.spare) cudaGraphExecDestroy(step.spare);
      AGENTRT_CUDA_CHECK(err);
      if (it != graphs_by_shape_.end()) {
        if (it->second.prologue) cudaGraphExecDestroy(it->second.prologue);
        if (it->second.spare) cudaGraphExecDestroy(it->second.spare);
        cudaGraphExecDestroy(it->second.exec);
      }
      graphs_by_shape_[key] = step;
    }
    if (deferred_) pick_taken();  // taken into the replayed graph
    if (pick_in_graph) ++taken_picks_.in_graph;
  } else {
    enqueue(n, wanted, defer ? &layer_metadata : nullptr);
  }
  last_wanted_ = m;
  if (m == 0 || !logits) {
    if (m == 0 || profile_) AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    collect_stages();
    return;
  }
  std::vector<float*> dst(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) dst[size_t(i)] = logits + i * c.vocab_size;
  read_logits(dst);
  collect_stages();
}

void DeviceForward::read_logits(std::span<float* const> dst, int64_t first_row) {
  launch_deferred_pick();
  const int64_t n = int64_t(dst.size()), V = config_.vocab_size;
  if (first_row < 0 || first_row + n > last_wanted_)
    throw std::logic_error("cuda logits: rows " + std::to_string(first_row) + " .. " +
                           std::to_string(first_row + n - 1) +
                           " asked for, but the last run left " + std::to_string(last_wanted_) +
                           " logits rows on the device");
  if (n == 0) return;
  // Through pinned memory: a pageable copy would stage through the driver's own buffer.
  const int64_t bytes = n * V * 4;
  auto* staged = reinterpret_cast<float*>(pinned_logits_.reserve(bytes));
  // In up to kLogitsPieces pieces of at least 64 KB, each with an event: the host copies a piece
  // into the rows while the copy engine brings the next (one copy, then one memcpy of the whole
  // row, left both waiting on each other: ~20 + ~25 us a row of 129K logits).
  if (!logits_landed_[0])
    for (cudaEvent_t& e : logits_landed_)
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  const int64_t values = n * V;
  const int64_t piece =
      std::max<int64_t>((values + kLogitsPieces - 1) / kLogitsPieces, int64_t(16) << 10);
  const float* from = ws_->logits.as<float>() + first_row * V;
  int pieces = 0;
  for (int64_t at = 0; at < values; at += piece, ++pieces) {
    const int64_t count = std::min(piece, values - at);
    AGENTRT_CUDA_CHECK(cudaMemcpyAsync(staged + at, from + at, size_t(count) * 4,
                                       cudaMemcpyDeviceToHost, stream_));
    AGENTRT_CUDA_CHECK(cudaEventRecord(logits_landed_[pieces], stream_));
  }
  for (int k = 0; k < pieces; ++k) {
    AGENTRT_CUDA_CHECK(cudaEventSynchronize(logits_landed_[k]));
    // The piece's values [k * piece, end) into the rows they belong to.
    const int64_t begin = int64_t(k) * piece, end = std::min(values, begin + piece);
    for (int64_t at = begin; at < end;) {
      const int64_t row = at / V, col = at % V, count = std::min(end - at, V - col);
      std::memcpy(dst[size_t(row)] + col, staged + at, size_t(count) * 4);
      at += count;
    }
  }
}

const float* DeviceForward::logits_row(int64_t row) const {
  if (row < 0) row = last_wanted_ - 1;
  if (row < 0 || row >= last_wanted_)
    throw std::logic_error("cuda sampling: logits row " + std::to_string(row) + " of " +
                           std::to_string(last_wanted_) + " the last run left on the device");
  return ws_->logits.as<float>() + row * config_.vocab_size;
}

std::vector<DeviceForward::NearBest> DeviceForward::near_best_rows(std::span<const TokenMask> masks,
                                                                   std::span<const RowPick> how,
                                                                   int32_t capacity,
                                                                   int64_t first_row) {
  enqueue_picks(masks, how, capacity, first_row);
  return collect_picks();
}

void DeviceForward::enqueue_picks(std::span<const TokenMask> masks, std::span<const RowPick> how,
                                  int32_t capacity, int64_t first_row,
                                  std::span<const int64_t> logits_rows) {
  flush_deferred_pick();
  const int64_t n = int64_t(masks.size());
  if (int64_t(how.size()) != n)
    throw std::invalid_argument("cuda sampling: " + std::to_string(how.size()) +
                                " row choices for " + std::to_string(n) + " masks");
  if (!logits_rows.empty() && int64_t(logits_rows.size()) != n)
    throw std::invalid_argument("cuda sampling: " + std::to_string(logits_rows.size()) +
                                " logits rows for " + std::to_string(n) + " masks");
  const int64_t first = first_row < 0 ? last_wanted_ - n : first_row;
  if (logits_rows.empty() && (first < 0 || first + n > last_wanted_))
    throw std::logic_error("cuda sampling: " + std::to_string(n) + " picks from row " +
                           std::to_string(first) + " but " + std::to_string(last_wanted_) +
                           " logits rows on the device");
  queued_ = QueuedPicks{std::vector<RowPick>(how.begin(), how.end()), capacity};
  if (n == 0) {
    queued_.pending = true;
    return;
  }
  const bool any_near =
      std::any_of(how.begin(), how.end(), [](const RowPick& h) { return h.delta > 0.0f; });
  // Pinned and device layout: one slot per row (pick, count at byte 24, then ids[capacity] and
  // values[capacity] when some row samples), then every mask at a common stride (uploaded once).
  const int64_t head = kPickSlotHead, slot = head + (any_near ? int64_t(capacity) * 8 : 0);
  queued_.slot = slot;
  int64_t stride = 0;
  for (const TokenMask& m : masks)
    if (m.words) stride = std::max<int64_t>(stride, int64_t(m.num_words));
  const int64_t results = n * slot;
  char* host = pinned_mask_.reserve(results + n * stride * 4);
  queued_.host = host;
  auto* staged = reinterpret_cast<uint32_t*>(host + results);
  for (int64_t i = 0; i < n; ++i)
    if (masks[i].words) std::memcpy(staged + i * stride, masks[i].words, masks[i].num_words * 4);
  mask_.reserve(std::max<int64_t>(n * stride * 4, 4));
  // CudaOptions::pick_in_step_graph: a greedy row alone is deferred; its mask stays staged for
  // the next run to pack into the step's metadata (or launch_deferred_pick to upload).
  const bool defer = pick_in_step_graph_ && n == 1 && how[0].delta <= 0.0f;
  // CudaOptions::pick_mask_early: a deferred pick's mask goes up now all the same.
  const bool mask_up_now = !defer || pick_mask_early_;
  if (stride > 0 && mask_up_now) {
    // On the copy stream: up once the last picks are done with mask_, while the pass's stream
    // still runs the step before; the picks wait for it.
    cudaStream_t up = copy_ ? copy_ : stream_;
    if (copy_) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(copy_, picked_, 0));
    AGENTRT_CUDA_CHECK(
        cudaMemcpyAsync(mask_.get(), staged, size_t(n * stride * 4), cudaMemcpyHostToDevice, up));
    if (copy_) {
      AGENTRT_CUDA_CHECK(cudaEventRecord(mask_up_, copy_));
      AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, mask_up_, 0));
    }
  }
  if (pick_scratch_.bytes() < masked_pick_scratch_bytes()) {
    pick_scratch_.reserve(masked_pick_scratch_bytes());
    AGENTRT_CUDA_CHECK(
        cudaMemsetAsync(pick_scratch_.get(), 0, size_t(pick_scratch_.bytes()), stream_));
  }
  near_.reserve(results);
  char* dev = static_cast<char*>(near_.get());
  if (defer) {
    // The next run takes it into its step's graph if that step is fed with it. The mask's
    // device address is set where it goes up (already here under pick_mask_early).
    const bool masked = masks[0].words != nullptr;
    deferred_ = DeferredPick{PickArgs{logits_row(logits_rows.empty() ? first : logits_rows[0]),
                                      masked && mask_up_now ? mask_.as<uint32_t>() : nullptr,
                                      masked ? int64_t(masks[0].num_words) : 0, pick_scratch_.get(),
                                      reinterpret_cast<MaskedPick*>(dev), how[0].inv_t, nullptr},
                             masked && !mask_up_now ? staged : nullptr, host, dev, results};
    queued_.pending = true;
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const bool masked = masks[i].words != nullptr;
    const uint32_t* mask = masked ? mask_.as<uint32_t>() + i * stride : nullptr;
    const int64_t words = masked ? int64_t(masks[i].num_words) : 0;
    char* s = dev + i * slot;
    auto* pick = reinterpret_cast<MaskedPick*>(s);
    const float* logits = logits_row(logits_rows.empty() ? first + i : logits_rows[i]);
    masked_pick(logits, config_.vocab_size, mask, words, how[i].inv_t, pick_scratch_.get(), pick,
                stream_, pick_cluster_);
    if (how[i].delta > 0.0f)
      collect_near_best(logits, config_.vocab_size, mask, words, pick, how[i].delta, capacity,
                        reinterpret_cast<int32_t*>(s + 24), reinterpret_cast<int32_t*>(s + head),
                        reinterpret_cast<float*>(s + head + int64_t(capacity) * 4), stream_);
  }
  read_back_picks(host, dev, results, false);
  queued_.pending = true;
}

void DeviceForward::read_back_picks(char* host, const char* dev, int64_t bytes,
                                    bool picked_recorded) {
  // On the copy stream: the pass's stream goes on to the next step at once.
  cudaStream_t back = stream_;
  if (copy_) {
    if (!picked_recorded) AGENTRT_CUDA_CHECK(cudaEventRecord(picked_, stream_));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(copy_, picked_, 0));
    back = copy_;
  }
  AGENTRT_CUDA_CHECK(cudaMemcpyAsync(host, dev, size_t(bytes), cudaMemcpyDeviceToHost, back));
  if (!picks_landed_)
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&picks_landed_, cudaEventDisableTiming));
  AGENTRT_CUDA_CHECK(cudaEventRecord(picks_landed_, back));
}

bool DeviceForward::pick_uploads(PickArgs args, char* meta, size_t bytes) {
  // Whole 16-byte words: the packed buffer's room is rounded up to them (its tail is padding),
  // the device's was by run() (without moving it: the captured graphs read it where it is).
  const int64_t padded = int64_t(bytes + 15) / 16 * 16;
  if (ws_->meta.bytes() < padded) return false;
  char* host = pinned_meta_.grow(padded, int64_t(bytes));
  void* from = nullptr;
  if (cudaHostGetDevicePointer(&from, host, 0) != cudaSuccess) {
    (void)cudaGetLastError();  // not mapped: the copy of its own
    return false;
  }
  return masked_pick_uploading(args, config_.vocab_size, from, meta, padded, stream_);
}

void DeviceForward::launch_deferred_pick() {
  if (!deferred_) return;
  DeferredPick d = *deferred_;
  deferred_.reset();
  if (d.staged_mask) {
    // On the pass's stream, after every earlier pick that read mask_ (enqueue_picks' uploads on
    // the copy stream wait for those, and this pick's picked_ orders the next one after it).
    AGENTRT_CUDA_CHECK(cudaMemcpyAsync(mask_.get(), d.staged_mask, size_t(d.args.mask_words) * 4,
                                       cudaMemcpyHostToDevice, stream_));
    d.args.mask = mask_.as<uint32_t>();
  }
  masked_pick(d.args.logits, config_.vocab_size, d.args.mask, d.args.mask_words, d.args.inv_t,
              d.args.scratch, d.args.out, stream_, pick_cluster_);
  read_back_picks(d.host, d.dev, d.bytes, false);
}

void DeviceForward::flush_deferred_pick() {
  if (!deferred_) return;
  launch_deferred_pick();
  AGENTRT_CUDA_CHECK(cudaEventSynchronize(picks_landed_));
}

const MaskedPick* DeviceForward::device_pick(int64_t i) const {
  if (i < 0 || i >= int64_t(queued_.how.size()))
    throw std::logic_error("cuda sampling: pick " + std::to_string(i) + " of " +
                           std::to_string(queued_.how.size()) + " queued");
  return reinterpret_cast<const MaskedPick*>(static_cast<const char*>(near_.get()) +
                                             i * queued_.slot);
}

std::vector<DeviceForward::NearBest> DeviceForward::collect_picks() {
  launch_deferred_pick();
  if (!queued_.pending) throw std::logic_error("cuda sampling: no picks queued to collect");
  queued_.pending = false;
  const std::span<const RowPick> how = queued_.how;
  const int64_t n = int64_t(how.size()), slot = queued_.slot, head = kPickSlotHead;
  const int32_t capacity = queued_.capacity;
  std::vector<NearBest> out(static_cast<size_t>(n));
  if (n == 0) return out;
  AGENTRT_CUDA_CHECK(cudaEventSynchronize(picks_landed_));
  const char* host = queued_.host;
  for (int64_t i = 0; i < n; ++i) {
    const char* s = host + i * slot;
    NearBest& r = out[static_cast<size_t>(i)];
    std::memcpy(&r.pick, s, sizeof(MaskedPick));
    if (how[i].delta <= 0.0f) continue;
    std::memcpy(&r.total, s + 24, 4);
    const int32_t count = std::min(r.total, capacity);
    const auto* ids = reinterpret_cast<const int32_t*>(s + head);
    const auto* values = reinterpret_cast<const float*>(s + head + int64_t(capacity) * 4);
    r.cand.reserve(size_t(count));
    for (int32_t k = 0; k < count; ++k) r.cand.push_back({values[k], ids[k]});
  }
  return out;
}

std::span<const DeviceForward::Sorted> DeviceForward::sorted_allowed(
    std::span<const int64_t> rows, std::span<const TokenMask> masks,
    std::span<const int32_t> allowed) {
  flush_deferred_pick();
  const int64_t n = int64_t(rows.size()), vocab = config_.vocab_size;
  if (int64_t(masks.size()) != n || int64_t(allowed.size()) != n)
    throw std::invalid_argument("cuda sampling: " + std::to_string(n) + " rows to sort but " +
                                std::to_string(masks.size()) + " masks and " +
                                std::to_string(allowed.size()) + " counts");
  if (sorted_.size() < size_t(n)) sorted_.resize(size_t(n));
  const std::span<Sorted> out(sorted_.data(), size_t(n));
  if (n == 0) return out;
  // As in near_best_rows: a mask of no words allows nothing, no mask everything (-1 words).
  int64_t stride = 1;
  for (const TokenMask& m : masks)
    if (m.words) stride = std::max<int64_t>(stride, int64_t(m.num_words));
  std::vector<int64_t> counts(static_cast<size_t>(n));
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    counts[size_t(i)] = std::clamp<int64_t>(allowed[size_t(i)], 0, vocab);
    total += counts[size_t(i)];
  }
  // One pinned buffer: row indices, mask word counts and masks going up, then the sorted logits
  // and ids coming back (stream order keeps the upload's reads before the download's writes).
  const int64_t up = 8 * n + 4 * n * stride;
  char* host = pinned_mask_.reserve(std::max(up, 8 * total));
  auto* row_of = reinterpret_cast<int32_t*>(host);
  auto* words = row_of + n;
  auto* mask_words = reinterpret_cast<uint32_t*>(host + 8 * n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[size_t(i)] < 0 ? last_wanted_ - 1 : rows[size_t(i)];
    logits_row(r);  // throws where the last run left no such row
    row_of[i] = int32_t(r);
    const TokenMask& m = masks[size_t(i)];
    words[i] = m.words ? int32_t(m.num_words) : -1;
    if (m.words) std::memcpy(mask_words + i * stride, m.words, m.num_words * 4);
  }
  sort_mask_.reserve(up);
  AGENTRT_CUDA_CHECK(
      cudaMemcpyAsync(sort_mask_.get(), host, size_t(up), cudaMemcpyHostToDevice, stream_));
  const auto* dev = static_cast<const char*>(sort_mask_.get());
  const SortRows sort{reinterpret_cast<const int32_t*>(dev),
                      reinterpret_cast<const uint32_t*>(dev + 8 * n), stride,
                      reinterpret_cast<const int32_t*>(dev) + n, n};
  sort_scratch_.reserve(sort_allowed_scratch_bytes(vocab, n));
  const float* keys = nullptr;
  const int32_t* ids = nullptr;
  sort_allowed(ws_->logits.as<float>(), vocab, sort, sort_scratch_.get(), &keys, &ids, stream_);
  // Row i's first counts[i] entries: logits, then ids, packed one row after another.
  int64_t at = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = counts[size_t(i)];
    if (c == 0) continue;
    AGENTRT_CUDA_CHECK(cudaMemcpyAsync(host + 8 * at, keys + i * vocab, size_t(c * 4),
                                       cudaMemcpyDeviceToHost, stream_));
    AGENTRT_CUDA_CHECK(cudaMemcpyAsync(host + 8 * at + 4 * c, ids + i * vocab, size_t(c * 4),
                                       cudaMemcpyDeviceToHost, stream_));
    at += c;
  }
  AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  at = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = counts[size_t(i)];
    const auto* k = reinterpret_cast<const float*>(host + 8 * at);
    const auto* id = reinterpret_cast<const int32_t*>(host + 8 * at + 4 * c);
    Sorted& o = out[size_t(i)];
    o.resize(size_t(c));
    for (int64_t j = 0; j < c; ++j) o[size_t(j)] = {k[j], id[j]};
    at += c;
  }
  return out;
}

void DeviceForward::enqueue(int64_t n, const std::vector<int64_t>& wanted,
                            const std::function<void()>* layer_metadata,
                            const std::function<void()>* at_split) {
  current_rows_ = n;
  const ForwardConfig& c = config_;
  Workspace& w = *ws_;
  const int64_t H = c.hidden, hc = c.hc_mult, L = int64_t(c.layers.size());
  float* streams = w.f(w.streams, n * hc * H);
  float* mix = w.f(w.mix, n * hyper_mix_width(hc));
  float* x = w.f(w.x, n * H);
  float* y = w.f(w.y, n * H);
  float* projected = w.f(w.projected, hyper_projected_floats(n, hc));
  // Decode batches take each sublayer's mHC post step, the next projection and pre step in one
  // launch (hyper_fused); `pending` is the block output whose post step is still due.
  const bool fused = n < kFusedHyperRows && hyper_fused_supported(n, hc, H);
  // ... with every block finishing its own channels (CudaOptions::grid_mhc): its mix is not
  // hyper_post's, so only where the head takes every row through it too ...
  const bool grid = fused && grid_mhc_ > 0 && (wanted.empty() || int64_t(wanted.size()) == n) &&
                    hyper_grid_supported(n, hc, H);
  // ... whose first boundary may take the embedding itself.
  const WeightMatrix embed = weights_.embed->view();
  const bool embed_in_grid = grid && grid_mhc_ >= 2 && embed.cols == H;
  // CudaOptions::lead_prefetch_bytes: forked before anything else is enqueued, so in a captured
  // step the prefetch has no dependency and runs beside the first kernel.
  // The side stream is joined back by the first layer's own forks (the attention's KV rows).
  if (lead_prefetch_bytes_ > 0 && n <= gemv_max_rows_ && L > 0)
    if (const cudaStream_t lead = fork(); lead != stream_)
      prefetch_to_l2(lead_ranges(weights_.layers[0]), lead);
  if (!embed_in_grid) embed_rows(embed, w.tokens, n, hc, streams, stream_);
  float* fused_partial =
      fused ? w.f(w.hyper_partials,
                  std::max(hyper_fused_scratch_floats(n, hc, H), hyper_grid_scratch_floats(n, hc)))
            : nullptr;
  auto* fused_arrived =
      fused ? static_cast<unsigned*>(w.zeroed(w.hyper_arrived, n * 4, stream_)) : nullptr;
  auto* grid_arrived =
      grid ? static_cast<unsigned*>(w.zeroed(w.hyper_grid_arrived, n * 8, stream_)) : nullptr;
  // ... or as a cluster of blocks a row (CudaOptions::cluster_mhc: 1 for batches, 2 always).
  const bool cluster = fused && !grid && cluster_mhc_ > 0 && (n >= 2 || cluster_mhc_ >= 2) &&
                       hyper_cluster_supported(n, hc, H);
  const float* pending = nullptr;
  // The routed experts' own sum, added to pending by the next boundary (moe_separate_sum: one
  // row through the grid boundaries only, which take a second output).
  const float* pending_routed = nullptr;
  float* routed_y =
      grid && n == 1 && moe_separate_sum_ && side_moe_ && !fused_routing_ && !shared_in_experts_
          ? w.f(w.routed_y, n * H)
          : nullptr;
  bool embedded = false;  // the streams hold the embeddings (embed_in_grid: after boundary 0)
  // Prefill passes: the post step, projection and sum of squares in one pass over the streams
  // (CudaOptions::prefill_mhc_pass).
  const bool one_pass =
      !fused && prefill_mhc_pass_ && n >= kFusedHyperRows && hyper_post_project_supported(n, hc, H);
  auto hyper = [&](const HyperDevice& hw, int64_t rows, float* in, int iters, const float* norm,
                   bool head, float* xo) {
    repeatable("mhc", [&] {
      const bool whole = fused && rows == n && in == streams;
      if (whole && grid) {
        // Its Sinkhorn is the mix's it reads (the head's own iters are 0).
        const bool first = embed_in_grid && !embedded;
        hyper_fused_grid(hw, pending, streams, n, hc, H, c.hc_sinkhorn_iters, c.hc_eps, c.rms_eps,
                         norm, head, mix, xo, fused_partial, grid_arrived, stream_,
                         first ? &embed : nullptr, first ? w.tokens : nullptr, pending_routed,
                         mhc_scatter_);
        embedded = true;
      } else if (pending_routed) {
        throw std::logic_error(
            "cuda forward: a separate routed sum reached a boundary that is "
            "not the grid step's");
      } else if (whole && cluster) {
        hyper_fused_cluster(hw, pending, streams, n, hc, H, iters, c.hc_eps, c.rms_eps, norm, head,
                            mix, xo, stream_);
      } else if (whole) {
        hyper_fused(hw, pending, streams, n, hc, H, iters, c.hc_eps, c.rms_eps, norm, head, mix, xo,
                    fused_partial, fused_arrived, stream_);
      } else if (one_pass && rows >= kFusedHyperRows &&
                 (!pending || (in == streams && rows == n))) {
        float* sums = w.f(w.slice_sums, hyper_post_project_floats(rows, hc, H));
        hyper_post_project(hw, mix, pending, in, rows, hc, H, head, sums, stream_);
        hyper_pre_projected(hw, in, sums, hyper_post_project_splits(H), rows, hc, H, iters,
                            c.hc_eps, c.rms_eps, norm, head, head ? nullptr : mix, xo, stream_,
                            prefill_pre_staged_);
      } else {
        if (pending) hyper_post(mix, pending, n, hc, H, streams, stream_);
        hyper_pre(hw, in, rows, hc, H, iters, c.hc_eps, c.rms_eps, norm, head, head ? nullptr : mix,
                  xo, projected, stream_, blas_);
      }
    });
    pending = nullptr;
    pending_routed = nullptr;
  };
  // CudaOptions::head_prefetch_bytes: one row's head slices asked into the L2 on a branch of
  // its own, forked head_prefetch_from sublayers before the head and joined after it (so the
  // head's own launch keeps its programmatic edge).
  const int64_t m = int64_t(wanted.size());
  const bool head_prefetch =
      head_prefetch_bytes_ > 0 && !profile_ && n == 1 && m == 1 && n <= gemv_max_rows_;
  bool head_forked = false;
  auto fork_head_prefetch = [&](int64_t sublayers_left) {
    if (!head_prefetch || head_forked || sublayers_left > head_prefetch_from_) return;
    StreamSlices s = gemv_stream_slices(weights_.head, w.f(w.head_x, m * H), linear_.gemv_mode());
    if (s.parts == 0) {
      // Another kernel takes the head: its first bytes, as one slice.
      const int64_t bytes = weights_.head.bytes() / 16 * 16;
      if (bytes == 0) return;
      s = StreamSlices{weights_.head.data, 1, 1, bytes};
    }
    const int64_t per_part = head_prefetch_bytes_ / s.parts / 16 * 16;
    if (per_part == 0) return;
    AGENTRT_CUDA_CHECK(cudaEventRecord(head_fork_, stream_));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(head_side_, head_fork_, 0));
    prefetch_slices_to_l2(s, per_part, head_prefetch_last_, head_side_);
    AGENTRT_CUDA_CHECK(cudaEventRecord(head_join_, head_side_));
    head_forked = true;
  };
  for (int64_t l = 0; l < L; ++l) {
    const LayerOnDevice& lw = weights_.layers[l];
    // Not across a split step graph's first part (its branch would cross the split).
    fork_head_prefetch(l == 0 && at_split ? INT64_MAX : 2 * (L - l));
    hyper(lw.attn_hc.view(), n, streams, c.hc_sinkhorn_iters, lw.attn_norm.as<float>(), false, x);
    stage("mHC");
    if (l == 0 && at_split) (*at_split)();
    if (l == 0 && layer_metadata) (*layer_metadata)();  // deferred by run() until now
    attention(size_t(l), n, y);
    pending = y;
    stage("attn.out");
    fork_head_prefetch(2 * (L - l) - 1);
    hyper(lw.ffn_hc.view(), n, streams, c.hc_sinkhorn_iters, lw.ffn_norm.as<float>(), false, x);
    stage("mHC");
    moe(size_t(l), n, y, routed_y);
    pending = y;
    pending_routed = routed_y;
    stage("moe.routed");
  }
  if (m == 0) return;  // the last post step only feeds the head
  float* head_in = streams;
  if (m < n) {
    // The head reads only the wanted rows' streams: the post step on those rows alone where
    // they are few (a prefill wanting its last row: all 16K rows' post step was a whole pass
    // over the streams, ~1 ms on an H100, for one row), else on all rows at once.
    if (m * 8 <= n)
      for (const int64_t t : wanted)
        hyper_post(mix + t * hyper_mix_width(hc), pending + t * H, 1, hc, H, streams + t * hc * H,
                   stream_);
    else
      hyper_post(mix, pending, n, hc, H, streams, stream_);
    pending = nullptr;
    float* hs = w.f(w.head_streams, m * hc * H);
    for (int64_t i = 0; i < m; ++i)
      AGENTRT_CUDA_CHECK(cudaMemcpyAsync(hs + i * hc * H, streams + wanted[i] * hc * H, hc * H * 4,
                                         cudaMemcpyDeviceToDevice, stream_));
    head_in = hs;
  }
  float* hx = w.f(w.head_x, m * H);
  hyper(weights_.head_hyper(), m, head_in, 0, weights_.norm.as<float>(), true, hx);
  stage("mHC");
  float* out = w.f(w.logits, m * c.vocab_size);
  repeatable("head", [&] { linear_.run(weights_.head, hx, m, out, stream_); });
  if (head_forked) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, head_join_, 0));
  stage("head");
}

L2Ranges DeviceForward::lead_ranges(const LayerOnDevice& lw) const {
  // The first layer's query weights in the order its products read them: the products of x,
  // then wq_b and the indexer's (device_forward's attention), up to lead_prefetch_bytes_.
  std::vector<const DeviceMatrixPtr*> order = {&lw.wq_a, &lw.wkv};
  if (lw.compressor) order.insert(order.end(), {&lw.compressor->wkv, &lw.compressor->wgate});
  if (lw.indexer)
    order.insert(order.end(), {&lw.indexer->compressor.wkv, &lw.indexer->compressor.wgate,
                               &lw.indexer->weights_proj});
  order.push_back(&lw.wq_b);
  if (lw.indexer) order.push_back(&lw.indexer->wq_b);
  L2Ranges r;
  int64_t left = lead_prefetch_bytes_;
  for (const DeviceMatrixPtr* m : order) {
    if (r.count == kMaxL2Ranges || left < 16) break;
    const WeightMatrix v = (*m)->view();
    if (reinterpret_cast<uintptr_t>(v.data) % 16 != 0) continue;
    const int64_t bytes = std::min(v.bytes(), left) / 16 * 16;
    r.data[r.count] = v.data;
    r.bytes[r.count++] = bytes;
    left -= bytes;
  }
  return r;
}

// Decode-sized passes run independent work on a side stream (captured into the same graph as
// parallel branches): small products alone cannot fill the GPU. Prefill-sized passes stay on one
// stream, as their cuBLAS products share the LinearRunner's scratch.
cudaStream_t DeviceForward::fork() {
  // Profiling times stages in stream order, so it keeps everything on one stream.
  if (!side_ || profile_ || current_rows_ > gemv_max_rows_) return stream_;
  AGENTRT_CUDA_CHECK(cudaEventRecord(fork_, stream_));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(side_, fork_, 0));
  return side_;
}

void DeviceForward::join(cudaStream_t side) {
  if (side == stream_) return;
  AGENTRT_CUDA_CHECK(cudaEventRecord(join_, side));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, join_, 0));
}

void DeviceForward::stage(const char* name) {
  if (!profile_) return;
  cudaEvent_t e;
  AGENTRT_CUDA_CHECK(cudaEventCreate(&e));
  AGENTRT_CUDA_CHECK(cudaEventRecord(e, stream_));
  marks_.push_back({name, e});
}

void DeviceForward::collect_stages() {
  if (!profile_ || marks_.empty()) return;
  for (size_t i = 1; i < marks_.size(); ++i) {
    float ms = 0;
    cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second);
    stage_ms_[marks_[i].first] += ms;
  }
  for (auto& m : marks_) cudaEventDestroy(m.second);
  marks_.clear();
}

void DeviceForward::attention(size_t l, int64_t n, float* out) {
  const ForwardConfig& c = config_;
  const ForwardLayer& fl = c.layers[l];
  const LayerOnDevice& lw = weights_.layers[l];
  Workspace& w = *ws_;
  const Workspace::LayerMeta& m = w.layers[l];
  const int64_t hd = c.head_dim, heads = c.heads;
  const float* x = w.x.as<float>();
  const DeviceRope& rope =
      fl.attention == AttentionKind::sliding ? weights_.rope_main : weights_.rope_compress;
  // Decode batches norm and rotate the query inside the attention kernel.
  const bool decode_attention =
      n <= kDecodeAttentionRows && attend_decode_supported(heads, hd, rope);
  // The tensor-core prefill kernels' precision: bf16 high + low parts, or plain bf16.
  const bool split = precision_ == GemmPrecision::bf16x2;

  float* q_res = w.f(w.q_res, n * c.q_lora_rank);
  float* q = w.f(w.q, n * heads * hd);
  float* kv = w.f(w.kv, n * hd);
  const int64_t ih = c.index_heads, ihd = c.index_head_dim;
  float* iq = lw.indexer ? w.f(w.iq, n * ih * ihd) : nullptr;
  float* iw = lw.indexer ? w.f(w.iw, n * ih) : nullptr;

  // Every product of x in one go (one launch while decoding: each alone is too small to fill
  // the GPU); then the KV row, the compressors' cache rows and entries run on the side stream
  // beside the query path (its norm, wq_b, the indexer's query): decode steps are a chain of
  // short kernels, so two shorter chains are faster.
  std::vector<LinearRunner::Product> from_x = {{lw.wq_a->view(), q_res}, {lw.wkv->view(), kv}};
  struct RawRows {
    float* kv = nullptr;
    float* gate = nullptr;
    int64_t width = 0;
  };
  auto raw_rows = [&](const CompressorOnDevice& comp, DeviceBuffer& kv_buf,
                      DeviceBuffer& gate_buf) {
    RawRows r{nullptr, nullptr, comp.wkv->view().rows};
    r.kv = w.f(kv_buf, n * r.width);
    r.gate = w.f(gate_buf, n * r.width);
    from_x.push_back({comp.wkv->view(), r.kv});
    from_x.push_back({comp.wgate->view(), r.gate});
    return r;
  };
  RawRows comp_raw, idx_raw;
  if (lw.compressor) comp_raw = raw_rows(*lw.compressor, w.raw_kv, w.raw_gate);
  if (lw.indexer) {
    idx_raw = raw_rows(lw.indexer->compressor, w.idx_raw_kv, w.idx_raw_gate);
    from_x.push_back({lw.indexer->weights_proj->view(), iw});
  }
  repeatable("x_products", [&] { linear_.run_same_input(from_x, x, n, stream_); });
  stage("attn.x_products");

  // Decode: the KV row's rope (cos, sin) go to a table the attention reads, so it does not
  // compute the same double-precision sin and cos again.
  float2* rope_cs =
      decode_attention ? static_cast<float2*>(w.grow(w.rope_cs, n * (rope.dim / 2) * 8)) : nullptr;
  const cudaStream_t cs = side_attention_ ? fork() : stream_;
  // CudaOptions::split_kv_chains: the indexer's compressor (or, without one, the compressor) on
  // the first branch, the KV row and the other compressor on a second.
  cudaStream_t cs2 = cs;
  if (split_kv_chains_ > 0 && side2_ && cs != stream_ && (lw.compressor || lw.indexer)) {
    AGENTRT_CUDA_CHECK(cudaEventRecord(fork2_, stream_));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(side2_, fork2_, 0));
    cs2 = side2_;
  }
  auto compress = [&](const CompressorOnDevice& comp, const RawRows& r, CacheField kv_field,
                      CacheField gate_field, const CompressJob* jobs, const int32_t* count,
                      cudaStream_t on) {
    append_rows(m.rows, kv_field, r.kv, r.width, n, on);
    append_rows(m.rows, gate_field, r.gate, r.width, n, on);
    compress_entries(comp.view, jobs, count, m.job_slots, weights_.rope_compress, c.rms_eps, on);
  };
  // One branch: the KV row, the compressor, the indexer's compressor, in that order. Split: the
  // KV row and (beside an indexer) the compressor on the second.
  norm_rope_rows(kv, lw.kv_norm.as<float>(), n, 1, hd, c.rms_eps, w.pos, rope, m.rows,
                 CacheField::kv, cs2, rope_cs);
  if (lw.compressor)
    compress(*lw.compressor, comp_raw, CacheField::comp_kv, CacheField::comp_gate, m.comp_jobs,
             m.job_counts, lw.indexer ? cs2 : cs);
  if (lw.indexer)
    compress(lw.indexer->compressor, idx_raw, CacheField::idx_kv, CacheField::idx_gate, m.idx_jobs,
             m.job_counts + 1, cs);
  stage("attn.kv_rows");  // the KV row and the compressors' rows and entries (profiling: inline)

  // wq_b and the indexer's wq_b read the same normed q_res: one launch for both on the tensor
  // cores (and, for prefill, x converted once). float32 keeps two, each on its streamed kernel.
  // Under CudaOptions::fused_q_norm one row's set norms q_res on its way in instead.
  const bool q_set = lw.indexer && precision_ != GemmPrecision::f32;
  // Without the indexer's product wq_b alone takes the norm the same way (one row, tensor cores).
  const bool norm_in_wq_b = fused_q_norm_ && n == 1 && precision_ != GemmPrecision::f32;
  if (!norm_in_wq_b)
    repeatable("q_norm", [&] {
      rms_norm_rows(q_res, lw.q_norm.as<float>(), n, c.q_lora_rank, c.rms_eps, q_res, stream_);
    });
  // Prefill on the tensor-core attention: the attention norms and rotates the query as it loads
  // it (CudaOptions::query_rope_in_attention).
  const bool mma_attention = !decode_attention && n >= kMmaAttentionRows &&
                             precision_ != GemmPrecision::f32 &&
                             attend_rows_mma_supported(heads, hd);
  const bool rope_in_attention = mma_attention && query_rope_in_attention_;
  const bool wgmma = mma_attention && key_mirrors_ && m.shared_kv && !split && wgmma_attention_ &&
                     attend_rows_wgmma_supported(heads, hd);
  // wq_b's FP8 GEMMs write the query as bf16 rows that the wgmma attention reads
  // (CudaOptions::query_bf16): it rounds them to bf16 after its norm and rotation anyway, and
  // float32 rows are 2 GB a layer at 16K rows, written and read back.
  const bool q_bf16 = query_bf16_ && wgmma && rope_in_attention &&
                      linear_.fp8_writes_bf16(lw.wq_b->view(), n, q, stream_);
  repeatable("wq_b", [&] {
    LinearRunner::Product set[2] = {{lw.wq_b->view(), q, q_bf16}};
    if (q_set) set[1] = {lw.indexer->wq_b->view(), iq};
    const std::span<const LinearRunner::Product> products(set, q_set ? 2 : 1);
    if (norm_in_wq_b)
      linear_.run_same_input_normed(products, q_res, lw.q_norm.as<float>(), c.rms_eps, n, stream_);
    else if (q_set || q_bf16)
      linear_.run_same_input(products, q_res, n, stream_);
    else
      linear_.run(lw.wq_b->view(), q_res, n, q, stream_);
  });
  repeatable("q_rope", [&] {
    if (!decode_attention && !rope_in_attention)
      norm_rope_rows(q, nullptr, n, heads, hd, c.rms_eps, w.pos, rope, nullptr, CacheField::kv,
                     stream_);
  });
  if (lw.indexer) {
    repeatable("indexer_wq_b", [&] {
      if (!q_set) linear_.run(lw.indexer->wq_b->view(), q_res, n, iq, stream_);
    });
    repeatable("indexer_rope",
               [&] { apply_rope(iq, n, ih, ihd, w.pos, weights_.rope_compress, false, stream_); });
  }
  stage("attn.qkv");
  join(cs);
  // The second branch (CudaOptions::split_kv_chains) holds the KV row and the main compressor's
  // entries: the indexer reads neither, the attention both.
  auto join_second = [&] {
    if (cs2 == cs) return;
    AGENTRT_CUDA_CHECK(cudaEventRecord(join2_, cs2));
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, join2_, 0));
  };
  if (split_kv_chains_ < 2) join_second();
  stage("attn.compress");

  const int32_t* chosen = nullptr;
  const int32_t* n_chosen = nullptr;
  if (lw.indexer) {
    const int64_t stride = std::max<int64_t>(m.max_visible, 1);
    float* scores = w.f(w.scores, n * stride);
    w.grow(w.chosen, n * c.index_topk * 4);
    w.grow(w.n_chosen, n * 4);
    // Prefill of one sequence: tensor cores unless float32 is asked for.
    const bool mma = precision_ != GemmPrecision::f32 && indexer_scores_mma_supported(ih, ihd);
    // Rows that see at most top-k entries take them all (select_topk) and need no scores (the CPU
    // engine's indexer_select computes none either): no launch when no row sees more (short
    // prefills; decode steps whose cache holds no more), else decode's kernel skips those rows.
    repeatable("indexer_scores", [&] {
      if (m.max_visible <= c.index_topk) return;
      if (n >= kIndexerGemmRows && m.shared_idx_entries && mma && key_mirrors_) {
        void* mirror = w.grow(w.idx_mirror, key_mirror_bytes(ihd, 0, m.max_visible, split));
        // On Hopper's warpgroup MMA where plain bf16 products are asked for
        // (CudaOptions::indexer_wgmma; wgmma_attention_ only where the GPU runs wgmma).
        if (!split && indexer_wgmma_ && wgmma_attention_ && indexer_scores_wgmma_supported(ih, ihd))
          indexer_scores_wgmma(iq, iw, 1.0f / std::sqrt(float(ih)), m.rows, n, ih, ihd,
                               m.shared_idx_entries, m.max_visible, mirror, scores, stride,
                               stream_);
        else
          indexer_scores_mma_mirrored(iq, iw, 1.0f / std::sqrt(float(ih)), m.rows, n, ih, ihd,
                                      m.shared_idx_entries, m.max_visible, split, mirror, scores,
                                      stride, stream_);
      } else if (n >= kIndexerGemmRows && m.shared_idx_entries && mma)
        indexer_scores_mma(iq, iw, 1.0f / std::sqrt(float(ih)), m.rows, n, ih, ihd,
                           m.shared_idx_entries, m.max_visible, split, scores, stride, stream_);
      else if (n >= kIndexerGemmRows && m.shared_idx_entries)
        indexer_gemm_.run(iq, iw, 1.0f / std::sqrt(float(ih)), m.rows, n, ih, ihd,
                          m.shared_idx_entries, m.max_visible, scores, stride, stream_);
      else
        indexer_scores(iq, iw, 1.0f / std::sqrt(float(ih)), m.rows, n, ih, ihd, m.max_visible,
                       scores, stride, stream_, c.index_topk);
    });
    repeatable("top_k", [&] {
      select_topk(scores, stride, m.rows, n, c.index_topk, w.chosen.as<int32_t>(),
                  w.n_chosen.as<int32_t>(), stream_);
    });
    chosen = w.chosen.as<int32_t>();
    n_chosen = w.n_chosen.as<int32_t>();
  }

  if (split_kv_chains_ >= 2) join_second();
  stage("attn.indexer");
  // Grouped low-rank output projection: group g's heads -> o_lora_rank, then all -> hidden.
  const int64_t group_in = heads * hd / c.o_groups, r = c.o_lora_rank;
  float* grouped = w.f(w.grouped, n * c.o_groups * r);
  const WeightMatrix wo_a = lw.wo_a->view();
  const bool wo_a_fits = wo_a.cols == group_in && wo_a.rows == c.o_groups * r;
  std::optional<fp8_act_quant::RowsOut>
      attn8;  // wo_a's input as e4m3, where the attention writes it
  float* attn = w.f(w.attn, n * heads * hd);
  int64_t wo_a_room = 0;  // wo_a's shared memory a block, where it runs beside the attention
  if (decode_attention) {
    DecodeAttentionShape shape;
    int cap = decode_attention_splits_;
    if (n == 1 && (attention_cluster_ || attention_beside_wo_a_)) {
      // 16 head groups x 8 slices: 128 blocks, as 8 groups x 16; with the cluster, each
      // group's slices one cluster. Beside wo_a (with or without the cluster) a block holds 16
      // keys at once (32 KB) and wo_a's ring leaves it room.
      shape = {4, attention_beside_wo_a_ ? 16 : 32, attention_cluster_};
      const int most = attention_cluster_ ? attention_cluster_slices_ : 8;
      cap = cap > 0 ? std::min(cap, most) : most;
      if (attention_beside_wo_a_)
        wo_a_room = shared_room_beside(attend_decode_shared_bytes(hd, shape));
    }
    const int splits = attend_decode_splits(m.max_keys, cap, shape);
    // One row: the same slices, copied in fewer chunks (decode_attention_chunk_keys), scored
    // more keys at once and copied a row at a time (decode_attention_keys_at_once, _bulk_keys).
    // Decode batches keep their shape.
    if (n == 1) {
      if (attention_chunk_keys_ > 0) shape.chunk_keys = attention_chunk_keys_;
      shape.keys_at_once = attention_keys_at_once_;
      shape.bulk_keys = attention_bulk_keys_;
    }
    float* partials = w.f(w.attn_partials, attend_decode_partial_floats(n, heads, hd, splits));
    auto* arrived = static_cast<unsigned*>(w.zeroed(w.attn_arrived, n * heads * 4, stream_));
    repeatable("attention", [&] {
      attend_rows_decode(q, m.rows, w.pos, rope, c.rms_eps, n, heads, hd, c.sliding_window,
                         lw.sinks.as<float>(), fl.attention == AttentionKind::hca, chosen, n_chosen,
                         c.index_topk, splits, partials, arrived, attn, stream_, rope_cs, shape);
    });
  } else {
    QueryNormRope query_norm;
    if (rope_in_attention) query_norm = {w.pos, rope, c.rms_eps, true};
    // wo_a's FP8 GEMMs read the attention's outputs as e4m3 rows it writes itself
    // (CudaOptions::attention_fp8_out): 2 GB of float32 rows a layer at 16K neither written nor
    // read back by the quantiser. Its outputs are then final (the query rotated inside it).
    if (wgmma && rope_in_attention && attention_fp8_out_ && wo_a_fits)
      attn8 = linear_.fp8_rows_room(wo_a, c.o_groups, n, grouped, c.o_groups * r, stream_);
    repeatable("attention", [&] {
      if (mma_attention && key_mirrors_ && m.shared_kv) {
        // Chosen (CSA) and visible (HCA) entries are below the rows' largest visible count.
        const int64_t entries = fl.compress_rate ? m.max_visible : 0;
        void* mirror = w.grow(w.key_mirror, key_mirror_bytes(hd, m.kv_rows, entries, split));
        if (wgmma)
          attend_rows_wgmma(q, m.rows, n, heads, hd, c.sliding_window, lw.sinks.as<float>(),
                            fl.attention == AttentionKind::hca, chosen, n_chosen, c.index_topk,
                            m.shared_kv, m.kv_first, m.kv_rows, m.shared_comp_entries, entries,
                            mirror, attn, stream_, query_norm, attn8 ? &*attn8 : nullptr,
                            q_bf16 ? reinterpret_cast<const __nv_bfloat16*>(q) : nullptr,
                            attention_lean_, attention_query_ahead_);
        else
          attend_rows_mma_mirrored(q, m.rows, n, heads, hd, c.sliding_window, lw.sinks.as<float>(),
                                   fl.attention == AttentionKind::hca, chosen, n_chosen,
                                   c.index_topk, split, m.shared_kv, m.kv_first, m.kv_rows,
                                   m.shared_comp_entries, entries, mirror, attn, stream_,
                                   query_norm, attention_warp_channels_);
      } else if (mma_attention)
        attend_rows_mma(q, m.rows, n, heads, hd, c.sliding_window, lw.sinks.as<float>(),
                        fl.attention == AttentionKind::hca, chosen, n_chosen, c.index_topk, split,
                        attn, stream_, query_norm, attention_warp_channels_);
      else
        attend_rows(q, m.rows, n, heads, hd, c.sliding_window, lw.sinks.as<float>(),
                    fl.attention == AttentionKind::hca, chosen, n_chosen, c.index_topk, m.max_keys,
                    attn, stream_);
    });
    repeatable("o_rope", [&] {
      if (!rope_in_attention) apply_rope(attn, n, heads, hd, w.pos, rope, true, stream_);
    });
  }
  stage("attn.core");

  if (!wo_a_fits)
    throw std::runtime_error("attention output: wo_a is " + std::to_string(wo_a.rows) + " x " +
                             std::to_string(wo_a.cols) + ", expected " +
                             std::to_string(c.o_groups * r) + " x " + std::to_string(group_in));
  repeatable("wo_a", [&] {
    linear_.set_max_shared(wo_a_room);
    if (attn8)
      linear_.run_grouped_quantised(wo_a, c.o_groups, *attn8, n, grouped, c.o_groups * r, stream_);
    else
      linear_.run_grouped(wo_a, c.o_groups, attn, heads * hd, n, grouped, c.o_groups * r, stream_);
    linear_.set_max_shared(0);
  });
  repeatable("wo_b", [&] { linear_.run(lw.wo_b->view(), grouped, n, out, stream_); });
}

void DeviceForward::moe(size_t l, int64_t n, float* out, float* routed_out) {
  const ForwardConfig& c = config_;
  const ForwardLayer& fl = c.layers[l];
  const LayerOnDevice& lw = weights_.layers[l];
  Workspace& w = *ws_;
  const float* x = w.x.as<float>();
  const int64_t E = c.experts, k = c.experts_per_token, H = c.hidden;

  // The router's product on the pass's stream, and what the routing reads.
  auto run_router = [&] {
    float* router = w.f(w.router, n * E);
    repeatable("router", [&] { linear_.run(lw.gate->view(), x, n, router, stream_); });
    w.grow(w.route_experts, n * k * 4);
    RouteInputs r;
    r.logits = router;
    r.tokens = w.tokens;
    r.tid2eid = fl.router == RouterKind::hash ? lw.tid2eid.as<int32_t>() : nullptr;
    r.bias = lw.bias.as<float>();
    r.func = c.score_func;
    r.scaling = c.routed_scaling;
    return r;
  };
  // Decode rows route inside the streamed experts' kernel (CudaOptions::fused_routing), which
  // takes routing's launch off the step's path; --repeat-stage route keeps it apart to measure.
  const bool fuse = fused_routing_ && repeat_stage_ != "route";
  const int64_t si = lw.shared.w1->view().rows;
  // CudaOptions::shared_in_experts: the shared expert's products (1: all three; 2: the down
  // product, its gate and up staying beside the routing) as tasks of the routed experts'
  // streamed kernels, which write `out`; a routed_out of its own does not apply.
  SharedExpertDevice folded{lw.shared.w1->view(), lw.shared.w3->view(), lw.shared.w2->view(),
                            w.f(w.act, n * si)};
  folded.in_up = shared_in_experts_ == 1;
  if (shared_in_experts_ > 0 && !routed_out &&
      experts_with_shared_fit(lw.experts_view, folded, n, k, c.moe_intermediate, H)) {
    cudaEvent_t before_down = nullptr;  // 2: the shared SwiGLU's values are in folded.act
    if (!folded.in_up) {
      const cudaStream_t ss = side_moe_ ? fork() : stream_;
      float* g = w.f(w.gate, n * si);
      float* u = w.f(w.up, n * si);
      repeatable("shared", [&] {
        const LinearRunner::Product gate_up[] = {{folded.w1, g, false}, {folded.w3, u, false}};
        linear_.run_same_input(gate_up, x, n, ss);
        swiglu(g, u, n * si, c.swiglu_limit, folded.act, ss);
      });
      if (ss != stream_) {
        AGENTRT_CUDA_CHECK(cudaEventRecord(join_, ss));
        before_down = join_;
      }
      stage("moe.shared");
    }
    const RouteInputs route = run_router();
    stage("moe.router");
    w.grow(w.moe_scratch, moe_scratch_bytes(n, k, E, c.moe_intermediate, H));
    float* rweights = w.f(w.route_weights, n * k);
    repeatable("experts", [&] {
      if (!experts_with_shared(route, fuse, w.route_experts.as<int32_t>(), rweights,
                               lw.experts_view, folded, x, n, k, E, c.moe_intermediate, H,
                               c.swiglu_limit, w.moe_scratch.get(), out, stream_, before_down,
                               ring_in_flight_bytes_, moe_early_down_))
        throw std::logic_error("cuda moe: the folded shared expert's kernels refused their rows");
    });
    return;
  }

  // The shared expert runs beside the routing and the routed products; the routed sum waits for
  // it before adding to `out`, which the shared expert writes.
  const cudaStream_t ss = side_moe_ ? fork() : stream_;
  // One row: the shared expert and the routed experts on disjoint SMs (shared_expert_blocks).
  int routed_blocks = 0;
  if (shared_expert_blocks_ > 0 && n == 1 && ss != stream_) {
    const int sms = sm_count();
    if (shared_expert_blocks_ < sms) routed_blocks = sms - shared_expert_blocks_;
  }
  float* g = w.f(w.gate, n * si);
  float* u = w.f(w.up, n * si);
  float* a = w.f(w.act, n * si);
  const WeightMatrix w1 = lw.shared.w1->view(), w2 = lw.shared.w2->view(),
                     w3 = lw.shared.w3->view();
  repeatable("shared", [&] {
    if (routed_blocks > 0) linear_.set_max_blocks(shared_expert_blocks_);
    // CudaOptions::shared_fp8_rows: the SwiGLU writes w2's e4m3 rows (the room is asked for
    // once before the gate/up products, whose input staging it would share, to know it is
    // there), from bf16 gate and up rows where their FP8 GEMMs write bf16.
    const bool rows8 = shared_fp8_rows_ && linear_.fp8_rows_room(w2, 1, n, out, H, ss);
    const bool bf16 = rows8 && shared_gate_up_bf16_ && linear_.fp8_writes_bf16(w1, n, g, ss) &&
                      linear_.fp8_writes_bf16(w3, n, u, ss);
    const LinearRunner::Product gate_up[] = {{w1, g, bf16}, {w3, u, bf16}};
    linear_.run_same_input(gate_up, x, n, ss);
    if (rows8) {
      const auto room = linear_.fp8_rows_room(w2, 1, n, out, H, ss);
      if (!room) throw std::logic_error("cuda shared expert: w2's FP8 rows went away");
      if (bf16)
        swiglu_quantize_rows(reinterpret_cast<const __nv_bfloat16*>(g),
                             reinterpret_cast<const __nv_bfloat16*>(u), n, si, c.swiglu_limit,
                             *room, ss);
      else
        swiglu_quantize_rows(g, u, n, si, c.swiglu_limit, *room, ss);
      linear_.run_grouped_quantised(w2, 1, *room, n, out, H, ss);
    } else {
      swiglu(g, u, n * si, c.swiglu_limit, a, ss);
      linear_.run(w2, a, n, out, ss);
    }
    linear_.set_max_blocks(0);
  });

  if (ss != stream_) AGENTRT_CUDA_CHECK(cudaEventRecord(join_, ss));
  stage("moe.shared");
  const RouteInputs route = run_router();
  float* rweights = w.f(w.route_weights, n * k);
  if (!fuse)
    repeatable("route", [&] {
      route_rows(route.logits, route.tokens, route.tid2eid, route.bias, n, E, k, c.score_func,
                 c.routed_scaling, w.route_experts.as<int32_t>(), rweights, stream_);
    });

  stage("moe.router");
  w.grow(w.moe_scratch, moe_scratch_bytes(n, k, E, c.moe_intermediate, H));
  repeatable("experts", [&] {
    if (fuse && routed_out)
      throw std::logic_error("cuda moe: fused routing adds into the shared expert's output");
    if (fuse)
      route_and_run_experts(route, w.route_experts.as<int32_t>(), rweights, lw.experts_view, x, n,
                            k, E, c.moe_intermediate, H, c.swiglu_limit, w.moe_scratch.get(), out,
                            stream_, &expert_gemm_, ss != stream_ ? join_ : nullptr,
                            ring_in_flight_bytes_);
    else
      routed_experts(lw.experts_view, w.route_experts.as<int32_t>(), rweights, x, n, k, E,
                     c.moe_intermediate, H, c.swiglu_limit, w.moe_scratch.get(),
                     routed_out ? routed_out : out, stream_, &expert_gemm_,
                     ss != stream_ ? join_ : nullptr, routed_blocks, ring_in_flight_bytes_,
                     routed_out != nullptr, moe_early_down_);
  });
  if (ss != stream_) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream_, join_, 0));
}

}  // namespace agentrt::engine::cuda
