// `agentrt logits` and `agentrt generate`: the engine's forward pass from the
// command line.
//
//   agentrt logits --model DIR --ids FILE [--chunks 37,1,1,...] --out FILE
//   [--threads N] [--device cpu|cuda]
//     FILE with ids: a JSON array of token ids. Output: raw little-endian
//     float32, one row of vocab_size logits per input position, in position
//     order. --chunks feeds the sequence through the cache in those chunk sizes
//     (they must sum to the number of ids).
//   agentrt generate --model DIR --prompt TEXT [--max-tokens N] [--temperature
//   T] [--seed S] [--threads N] [--device cpu|cuda]
//     --device cuda runs the forward pass on the GPU (engine/cuda, docs/cuda.md).
//     Streams the continuation of TEXT to stdout.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

namespace agentrt::cli {
namespace {

struct Flags {
  std::vector<std::pair<std::string, std::string>> values;

  Flags(const Args& args, const std::string& cmd) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      values.emplace_back(a.substr(2), args[++i]);
    }
    (void)cmd;
  }
  const std::string* find(const std::string& key) const {
    for (const auto& [k, v] : values)
      if (k == key) return &v;
    return nullptr;
  }
  std::string required(const std::string& key) const {
    const std::string* v = find(key);
    if (!v) throw std::invalid_argument("missing --" + key);
    return *v;
  }
  void only(std::initializer_list<const char*> allowed) const {
    for (const auto& [k, v] : values) {
      bool ok = false;
      for (const char* a : allowed) ok = ok || k == a;
      if (!ok) throw std::invalid_argument("unknown option --" + k);
    }
  }
};

int64_t parse_int(const std::string& s, const std::string& what) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty())
    throw std::invalid_argument(what + ": '" + s + "' is not an integer");
  return v;
}

std::vector<int64_t> parse_chunks(const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string part =
        s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const int64_t v = parse_int(part, "--chunks");
    if (v <= 0) throw std::invalid_argument("--chunks: sizes must be positive, got " + part);
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

engine::LoadOptions load_options(const Flags& f) {
  engine::LoadOptions o;
  if (const auto* t = f.find("threads")) o.threads = int(parse_int(*t, "--threads"));
  if (const auto* d = f.find("device")) {
    if (*d == "cpu")
      o.device = engine::Device::cpu;
    else if (*d == "cuda")
      o.device = engine::Device::cuda;
    else
      throw std::invalid_argument("--device must be cpu or cuda, got '" + *d + "'");
  }
  return o;
}

}  // namespace

int cmd_logits(const Args& args) {
  const Flags f(args, "logits");
  f.only({"model", "ids", "chunks", "out", "threads", "device"});
  const std::string ids_path = f.required("ids");
  std::ifstream in(ids_path);
  if (!in) throw std::runtime_error(ids_path + ": cannot open");
  std::vector<int32_t> ids;
  try {
    ids = nlohmann::json::parse(in).get<std::vector<int32_t>>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(ids_path + ": expected a JSON array of token ids: " + e.what());
  }
  if (ids.empty()) throw std::runtime_error(ids_path + ": no token ids");
  std::vector<int64_t> chunks{int64_t(ids.size())};
  if (const auto* c = f.find("chunks")) {
    chunks = parse_chunks(*c);
    int64_t sum = 0;
    for (int64_t v : chunks) sum += v;
    if (sum != int64_t(ids.size()))
      throw std::invalid_argument("--chunks sum to " + std::to_string(sum) + " but " + ids_path +
                                  " holds " + std::to_string(ids.size()) + " ids");
  }
  const std::string out_path = f.required("out");
  auto model = engine::Model::load(f.required("model"), load_options(f));
  auto seq = model->new_sequence();
  std::ofstream out(out_path, std::ios::binary);
  if (!out) throw std::runtime_error(out_path + ": cannot open for writing");
  size_t pos = 0;
  for (int64_t c : chunks) {
    const auto logits = seq->forward(std::span(ids).subspan(pos, size_t(c)),
                                     /*all_positions=*/true);
    // float32 rows; this engine only targets little-endian hosts.
    out.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * 4));
    pos += size_t(c);
  }
  if (!out.flush()) throw std::runtime_error(out_path + ": write failed");
  return 0;
}

int cmd_generate(const Args& args) {
  const Flags f(args, "generate");
  f.only(
      {"model", "prompt", "max-tokens", "temperature", "seed", "threads", "device", "tokenizer"});
  const std::filesystem::path model_dir = f.required("model");
  const std::string prompt = f.required("prompt");
  const int64_t max_tokens =
      f.find("max-tokens") ? parse_int(*f.find("max-tokens"), "--max-tokens") : 64;
  engine::SamplingParams sampling;
  if (const auto* t = f.find("temperature")) {
    try {
      sampling.temperature = std::stof(*t);
    } catch (const std::exception&) {
      throw std::invalid_argument("--temperature: '" + *t + "' is not a number");
    }
    if (!(sampling.temperature >= 0)) throw std::invalid_argument("--temperature must be >= 0");
  }
  if (const auto* s = f.find("seed")) sampling.seed = uint64_t(parse_int(*s, "--seed"));
  // The tokenizer: --tokenizer, else the model folder's tokenizer.json, else the fetched one
  // under $AGENTRT_HOME.
  std::filesystem::path tok_path;
  if (const auto* t = f.find("tokenizer"))
    tok_path = *t;
  else if (std::filesystem::exists(model_dir / "tokenizer.json"))
    tok_path = model_dir;
  else {
    const char* home = std::getenv("AGENTRT_HOME");
    tok_path = std::filesystem::path(home && *home ? home : AGENTRT_HOME_DEFAULT) /
               "models/deepseek-v3-tokenizer";
  }
  auto tokenizer = engine::Tokenizer::load(tok_path);
  auto model = engine::Model::load(model_dir, load_options(f));
  std::vector<int32_t> ids = tokenizer->encode(prompt, /*parse_special=*/true);
  ids.insert(ids.begin(), tokenizer->bos_id());
  for (int32_t id : ids)
    if (id >= model->vocab_size())
      throw std::runtime_error("token id " + std::to_string(id) + " from " + tok_path.string() +
                               " is outside the model's vocabulary (" +
                               std::to_string(model->vocab_size()) + ")");
  auto seq = model->new_sequence();
  engine::Sampler sampler(sampling);
  engine::StreamingDecoder decoder(tokenizer);
  std::vector<float> logits = seq->forward(ids);
  for (int64_t i = 0; i < max_tokens; ++i) {
    const int32_t next = sampler.sample(logits).token;
    if (next == tokenizer->eos_id()) break;
    const std::string text = decoder.push(next);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    logits = seq->forward(std::span(&next, 1));
  }
  const std::string rest = decoder.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

}  // namespace agentrt::cli
