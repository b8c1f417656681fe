// CPU engine throughput on a ~100M-parameter DeepSeek-V4-shaped model with
// random bf16 weights: prefill tokens/s and decode tokens/s, next to this
// machine's measured memory read bandwidth and the decode bound it implies
// (bandwidth / weight bytes streamed per decoded token).
//
//   bench_engine_cpu [--threads N] [--prefill 256] [--decode 32] [--dtype bf16|fp8|fp8-fp4]
//                    [--vocab 16384] [--keep DIR | --model DIR]
// fp8: FP8 block-scaled matrices (embed/head bf16); fp8-fp4: the same with MXFP4 routed experts,
// the mix real V4-Flash checkpoints ship.
// --keep writes the random checkpoint there and keeps it; --model measures an existing bf16
// checkpoint instead (e.g. `agentrt model init --preset small`).
#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/forward_config.h"
#include "engine/model.h"
#include "engine/parallel.h"
#include "engine/quantize.h"

namespace fs = std::filesystem;
using agentrt::engine::AttentionKind;
using agentrt::engine::ForwardConfig;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

nlohmann::json bench_config(int64_t vocab) {
  return {{"architectures", {"DeepseekV4ForCausalLM"}},
          {"model_type", "deepseek_v4"},
          {"vocab_size", vocab},
          {"hidden_size", 1024},
          {"num_hidden_layers", 7},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 1},
          {"head_dim", 128},
          {"q_lora_rank", 256},
          {"o_groups", 2},
          {"o_lora_rank", 256},
          {"partial_rotary_factor", 0.25},
          {"sliding_window", 128},
          {"hc_mult", 4},
          {"hc_sinkhorn_iters", 20},
          {"hc_eps", 1e-6},
          {"rms_norm_eps", 1e-6},
          {"n_routed_experts", 8},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 256},
          {"routed_scaling_factor", 1.5},
          {"swiglu_limit", 10.0},
          {"scoring_func", "sqrtsoftplus"},
          {"index_n_heads", 16},
          {"index_head_dim", 64},
          {"index_topk", 64},
          {"rope_theta", 10000.0},
          {"compress_rope_theta", 160000.0},
          {"compress_rates",
           {{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", 32}}},
          {"layer_types",
           {"heavily_compressed_attention", "heavily_compressed_attention",
            "compressed_sparse_attention", "heavily_compressed_attention",
            "compressed_sparse_attention", "heavily_compressed_attention", "sliding_attention"}},
          {"mlp_layer_types", {"hash_moe", "hash_moe", "moe", "moe", "moe", "moe", "moe"}},
          {"rope_parameters",
           {{"main",
             {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}}},
            {"compress",
             {{"rope_type", "yarn"},
              {"rope_theta", 160000.0},
              {"partial_rotary_factor", 0.25},
              {"factor", 16.0},
              {"original_max_position_embeddings", 4096},
              {"beta_fast", 32.0},
              {"beta_slow", 1.0},
              {"attention_factor", 1.0}}}}},
          {"max_position_embeddings", 65536},
          {"bos_token_id", 0},
          {"eos_token_id", 1},
          {"tie_word_embeddings", false}};
}

// Every tensor of the checkpoint with its shape; vectors are float32, matrices
// bf16.
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  enum { bf16, f32_norm, f32_small, i64_experts } kind;
};

std::vector<Spec> tensor_specs(const ForwardConfig& c) {
  std::vector<Spec> s;
  const int64_t H = c.hidden, hc = c.hc_mult, mix = (2 + hc) * hc;
  s.push_back({"embed.weight", {c.vocab_size, H}, Spec::bf16});
  s.push_back({"head.weight", {c.vocab_size, H}, Spec::bf16});
  s.push_back({"norm.weight", {H}, Spec::f32_norm});
  s.push_back({"hc_head_fn", {hc, hc * H}, Spec::f32_small});
  s.push_back({"hc_head_base", {hc}, Spec::f32_small});
  s.push_back({"hc_head_scale", {1}, Spec::f32_norm});
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    for (const char* hcn : {"hc_attn_", "hc_ffn_"}) {
      s.push_back({p + hcn + "fn", {mix, hc * H}, Spec::f32_small});
      s.push_back({p + hcn + "base", {mix}, Spec::f32_small});
      s.push_back({p + hcn + "scale", {3}, Spec::f32_norm});
    }
    s.push_back({p + "attn_norm.weight", {H}, Spec::f32_norm});
    s.push_back({p + "ffn_norm.weight", {H}, Spec::f32_norm});
    const std::string a = p + "attn.";
    s.push_back({a + "wq_a.weight", {c.q_lora_rank, H}, Spec::bf16});
    s.push_back({a + "q_norm.weight", {c.q_lora_rank}, Spec::f32_norm});
    s.push_back({a + "wq_b.weight", {c.heads * c.head_dim, c.q_lora_rank}, Spec::bf16});
    s.push_back({a + "wkv.weight", {c.head_dim, H}, Spec::bf16});
    s.push_back({a + "norm.weight", {c.head_dim}, Spec::f32_norm});
    s.push_back({a + "wo_a.weight",
                 {c.o_groups * c.o_lora_rank, c.heads * c.head_dim / c.o_groups},
                 Spec::bf16});
    s.push_back({a + "wo_b.weight", {H, c.o_groups * c.o_lora_rank}, Spec::bf16});
    s.push_back({a + "attn_sink", {c.heads}, Spec::f32_small});
    const auto& l = c.layers[i];
    if (l.attention != AttentionKind::sliding) {
      const bool csa = l.attention == AttentionKind::csa;
      auto comp = [&](const std::string& cp, int64_t dim, bool overlap) {
        const int64_t w = (overlap ? 2 : 1) * dim;
        s.push_back({cp + "wkv.weight", {w, H}, Spec::bf16});
        s.push_back({cp + "wgate.weight", {w, H}, Spec::bf16});
        s.push_back({cp + "ape", {l.compress_rate, w}, Spec::f32_small});
        s.push_back({cp + "norm.weight", {dim}, Spec::f32_norm});
      };
      comp(a + "compressor.", c.head_dim, csa);
      if (csa) {
        comp(a + "indexer.compressor.", c.index_head_dim, true);
        s.push_back({a + "indexer.wq_b.weight",
                     {c.index_heads * c.index_head_dim, c.q_lora_rank},
                     Spec::bf16});
        s.push_back({a + "indexer.weights_proj.weight", {c.index_heads, H}, Spec::bf16});
      }
    }
    const std::string f = p + "ffn.";
    s.push_back({f + "gate.weight", {c.experts, H}, Spec::bf16});
    if (l.router == agentrt::engine::RouterKind::hash)
      s.push_back({f + "gate.tid2eid", {c.vocab_size, c.experts_per_token}, Spec::i64_experts});
    else
      s.push_back({f + "gate.bias", {c.experts}, Spec::f32_small});
    auto expert = [&](const std::string& ep) {
      s.push_back({ep + "w1.weight", {c.moe_intermediate, H}, Spec::bf16});
      s.push_back({ep + "w2.weight", {H, c.moe_intermediate}, Spec::bf16});
      s.push_back({ep + "w3.weight", {c.moe_intermediate, H}, Spec::bf16});
    };
    for (int64_t e = 0; e < c.experts; ++e) expert(f + "experts." + std::to_string(e) + ".");
    expert(f + "shared_experts.");
  }
  return s;
}

uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

// Writes config.json + model.safetensors with random, sensibly scaled values; returns params.
int64_t write_random_checkpoint(const fs::path& dir, nlohmann::json cj, bool fp8,
                                bool fp4_experts) {
  fs::create_directories(dir);
  if (fp4_experts) cj["expert_dtype"] = "fp4";
  std::ofstream(dir / "config.json") << cj.dump(1);
  const ForwardConfig c = ForwardConfig::from_json(cj, "bench config");
  const auto specs = tensor_specs(c);
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  nlohmann::json header = nlohmann::json::object();
  std::vector<std::vector<char>> blobs;
  uint64_t offset = 0;
  int64_t params = 0;
  for (const Spec& sp : specs) {
    int64_t n = 1;
    for (int64_t d : sp.shape) n *= d;
    params += n;
    std::vector<char> blob;
    const float scale = sp.shape.size() == 2 ? 1.0f / std::sqrt(float(sp.shape[1])) : 0.5f;
    const char* dtype = "F32";
    const bool quantise =
        fp8 && sp.kind == Spec::bf16 && sp.name != "embed.weight" && sp.name != "head.weight";
    const bool as_fp4 = quantise && fp4_experts && sp.name.find(".experts.") != std::string::npos;
    if (quantise) {
      // FP8 e4m3 with one ue8m0 scale per 128x128 block, or MXFP4 experts (DeepSeek's layouts).
      const int64_t rows = sp.shape[0], cols = sp.shape[1];
      std::vector<float> w(n);
      for (auto& v : w) v = normal(rng) * scale;
      agentrt::engine::QuantizedMatrix q =
          as_fp4 ? agentrt::engine::quantize_mxfp4(w.data(), rows, cols)
                 : agentrt::engine::quantize_fp8_blocks(w.data(), rows, cols);
      dtype = as_fp4 ? "I8" : "F8_E4M3";
      blob.assign(q.data.begin(), q.data.end());
      const std::vector<int64_t> sshape =
          as_fp4 ? std::vector<int64_t>{rows, cols / 32}
                 : std::vector<int64_t>{(rows + 127) / 128, (cols + 127) / 128};
      std::vector<char> sblob(q.scales.begin(), q.scales.end());
      const std::string sname = sp.name.substr(0, sp.name.size() - 7) + ".scale";
      header[sname] = {{"dtype", "F8_E8M0"},
                       {"shape", sshape},
                       {"data_offsets", {offset, offset + sblob.size()}}};
      offset += sblob.size();
      blobs.push_back(std::move(sblob));
    } else if (sp.kind == Spec::bf16) {
      dtype = "BF16";
      blob.resize(n * 2);
      auto* p = reinterpret_cast<uint16_t*>(blob.data());
      for (int64_t i = 0; i < n; ++i) p[i] = to_bf16(normal(rng) * scale);
    } else if (sp.kind == Spec::i64_experts) {
      dtype = "I64";
      blob.resize(n * 8);
      auto* p = reinterpret_cast<int64_t*>(blob.data());
      const int64_t k = sp.shape[1];
      for (int64_t r = 0; r < sp.shape[0]; ++r)
        for (int64_t j = 0; j < k; ++j)
          p[r * k + j] = (r + j * 3) % c.experts;  // distinct for k <= experts/3
    } else {
      blob.resize(n * 4);
      auto* p = reinterpret_cast<float*>(blob.data());
      for (int64_t i = 0; i < n; ++i)
        p[i] = sp.kind == Spec::f32_norm ? 1.0f + 0.1f * normal(rng) : normal(rng) * scale;
    }
    const std::vector<int64_t> shape =
        as_fp4 ? std::vector<int64_t>{sp.shape[0], sp.shape[1] / 2} : sp.shape;
    header[sp.name] = {
        {"dtype", dtype}, {"shape", shape}, {"data_offsets", {offset, offset + blob.size()}}};
    offset += blob.size();
    blobs.push_back(std::move(blob));
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h += ' ';
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  const uint64_t hl = h.size();
  out.write(reinterpret_cast<const char*>(&hl), 8);
  out.write(h.data(), std::streamsize(h.size()));
  for (const auto& b : blobs) out.write(b.data(), std::streamsize(b.size()));
  return params;
}

// Read bandwidth: every thread sums its share of a buffer far larger than the
// caches.
double read_bandwidth_gbs(int threads) {
  const size_t bytes = size_t(1) << 30, n = bytes / 4;
  std::vector<float> buf(n, 1.0f);
  agentrt::engine::WorkerPool pool(threads);
  double best = 0;
  std::vector<float> sums(threads * 16);
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = now();
    pool.for_range(threads, [&](int64_t b, int64_t e) {
      for (int64_t part = b; part < e; ++part) {
        const size_t lo = n / threads * part,
                     hi = part + 1 == threads ? n : n / threads * (part + 1);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = lo;
        for (; i + 32 <= hi; i += 32) {
          a0 = _mm256_add_ps(a0, _mm256_loadu_ps(&buf[i]));
          a1 = _mm256_add_ps(a1, _mm256_loadu_ps(&buf[i + 8]));
          a2 = _mm256_add_ps(a2, _mm256_loadu_ps(&buf[i + 16]));
          a3 = _mm256_add_ps(a3, _mm256_loadu_ps(&buf[i + 24]));
        }
        float out[8];
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        sums[part * 16] = out[0];
      }
    });
    best = std::max(best, double(bytes) / (now() - t0) / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  int prefill = 256, decode = 32;
  std::string keep, dtype = "bf16";
  int64_t vocab = 16384;
  std::string model_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads")
      threads = std::stoi(argv[i + 1]);
    else if (a == "--prefill")
      prefill = std::stoi(argv[i + 1]);
    else if (a == "--decode")
      decode = std::stoi(argv[i + 1]);
    else if (a == "--keep")
      keep = argv[i + 1];
    else if (a == "--model")
      model_dir = argv[i + 1];
    else if (a == "--vocab")
      vocab = std::stoll(argv[i + 1]);
    else if (a == "--dtype")
      dtype = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (dtype != "bf16" && dtype != "fp8" && dtype != "fp8-fp4") {
    std::fprintf(stderr, "--dtype must be bf16, fp8 or fp8-fp4\n");
    return 2;
  }
  const bool fp8 = dtype != "bf16", fp4_experts = dtype == "fp8-fp4";
  // --model: an existing bf16 checkpoint (e.g. `agentrt model init --preset small`); otherwise
  // a random one written here.
  const bool own = model_dir.empty();
  const fs::path dir = !own           ? fs::path(model_dir)
                       : keep.empty() ? fs::temp_directory_path() /
                                            ("agentrt-bench-engine-" + std::to_string(::getpid()))
                                      : fs::path(keep);
  const nlohmann::json cj = bench_config(vocab);
  const ForwardConfig c = own ? ForwardConfig::from_json(cj, "bench config")
                              : ForwardConfig::from_file(dir / "config.json");
  int64_t params = 0;
  if (own) {
    params = write_random_checkpoint(dir, cj, fp8, fp4_experts);
  } else {
    for (const auto& sp : tensor_specs(c)) {
      int64_t n = 1;
      for (int64_t d : sp.shape) n *= d;
      params += n;
    }
  }

  // Bytes one decode step streams: every non-expert matrix (and its scales), k routed experts
  // + the shared one per layer, lm_head, one embedding row.
  const auto specs = tensor_specs(c);
  int64_t streamed = 0;
  for (const auto& sp : specs) {
    int64_t n = 1;
    for (int64_t d : sp.shape) n *= d;
    const bool q = fp8 && sp.kind == Spec::bf16 && sp.name != "head.weight";
    const int64_t b = q ? n + ((sp.shape[0] + 127) / 128) * ((sp.shape[1] + 127) / 128)
                      : sp.kind == Spec::bf16        ? 2 * n
                      : sp.kind == Spec::i64_experts ? 0
                                                     : 4 * n;
    if (sp.name.find(".experts.") != std::string::npos) continue;
    if (sp.name == "embed.weight") continue;
    streamed += b;
  }
  // Routed experts: bf16 2 bytes/value, FP8 1 (+ block scales), MXFP4 0.5 + 1/32 scale byte.
  const double expert_bytes = fp4_experts ? 0.5 + 1.0 / 32 : fp8 ? 1.0 + 1.0 / 16384 : 2.0;
  streamed += int64_t(double(c.layers.size()) * c.experts_per_token * 3 * c.moe_intermediate *
                      c.hidden * expert_bytes);
  streamed += c.hidden * 2;

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(2, int32_t(c.vocab_size) - 1);
  std::vector<int32_t> prompt(prefill);
  for (auto& t : prompt) t = tok(rng);

  std::printf(
      "DeepSeek-V4-shaped model: %.1fM parameters (%s matrices), %zu layers, hidden %lld, "
      "%lld experts (top %lld), vocab %lld; %.1f MB of weights streamed per decoded token\n",
      params / 1e6,
      fp4_experts ? "fp8 e4m3 block-scaled, MXFP4 routed experts; embed/head bf16"
      : fp8       ? "fp8 e4m3 block-scaled; embed/head bf16"
                  : "bf16",
      c.layers.size(), (long long)c.hidden, (long long)c.experts, (long long)c.experts_per_token,
      (long long)c.vocab_size, streamed / 1e6);
  std::printf("best of 3 runs each; prefill of %d tokens, %d decode steps after it\n", prefill,
              decode);
  std::printf("%7s %12s %14s %12s %16s %14s\n", "threads", "read GB/s", "decode bound",
              "decode tok/s", "decode x4 tok/s", "prefill tok/s");
  std::vector<int> counts = {1};
  if (threads > 1) counts.push_back(threads);
  for (int nt : counts) {
    auto model = agentrt::engine::Model::load(dir, {agentrt::engine::Device::cpu, nt});
    double prefill_best = 0, decode_best = 0, batch_best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      auto seq = model->new_sequence();
      double t0 = now();
      auto logits = seq->forward(prompt);
      prefill_best = std::max(prefill_best, prefill / (now() - t0));
      int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      t0 = now();
      for (int i = 0; i < decode; ++i) {
        auto l = seq->forward(std::span<const int32_t>(&next, 1));
        next = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
      }
      decode_best = std::max(decode_best, decode / (now() - t0));
      // Batched decode: 4 sequences advanced together (weights read once per step).
      std::vector<std::unique_ptr<agentrt::engine::ModelSequence>> seqs;
      std::vector<agentrt::engine::ModelSequence*> ptrs;
      for (int i = 0; i < 4; ++i) {
        seqs.push_back(model->new_sequence());
        seqs.back()->forward(std::span<const int32_t>(prompt.data(), std::min(prefill, 64)));
        ptrs.push_back(seqs.back().get());
      }
      const std::vector<int32_t> batch_tokens(4, 5);
      const int steps = std::max(1, decode / 2);
      t0 = now();
      for (int i = 0; i < steps; ++i) model->decode_batch(ptrs, batch_tokens);
      batch_best = std::max(batch_best, 4.0 * steps / (now() - t0));
    }
    const double bw = read_bandwidth_gbs(nt);
    std::printf("%7d %12.1f %14.1f %12.1f %16.1f %14.1f\n", nt, bw, bw * 1e9 / double(streamed),
                decode_best, batch_best, prefill_best);
  }
  if (own && keep.empty()) fs::remove_all(dir);
  return 0;
}
