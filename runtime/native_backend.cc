#include "runtime/native_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "engine/sampler.h"
#include "grammars/compiled_grammar.h"
#include "grammars/json_schema.h"
#include "grammars/matcher.h"
#include "grammars/tool_call_grammar.h"
#include "runtime/chat/encode_v4.h"

namespace agentrt {

namespace {

using ojson = nlohmann::ordered_json;

void set_bit(std::vector<uint32_t>& mask, int64_t id) { mask[id >> 5] |= 1u << (id & 31); }
void clear_bit(std::vector<uint32_t>& mask, int64_t id) { mask[id >> 5] &= ~(1u << (id & 31)); }

// Keeps a generation from ever writing `marker` (tool_choice none): a token is banned when it
// contains the marker, or when the text so far ends with a proper prefix of the marker and the
// token starts with the rest of it.
class MarkerBan {
 public:
  MarkerBan(const std::vector<std::string>& token_bytes, std::string marker)
      : marker_(std::move(marker)) {
    for (size_t i = 0; i < token_bytes.size(); ++i) {
      if (token_bytes[i].empty()) continue;
      if (token_bytes[i].find(marker_) != std::string::npos)
        always_.push_back(static_cast<int32_t>(i));
      sorted_.emplace_back(token_bytes[i], static_cast<int32_t>(i));
    }
    std::sort(sorted_.begin(), sorted_.end());
  }
  void apply(const std::string& text, std::vector<uint32_t>& mask) const {
    for (int32_t id : always_) clear_bit(mask, id);
    for (size_t k = 1; k < marker_.size(); ++k) {
      if (text.size() < k || text.compare(text.size() - k, k, marker_, 0, k) != 0) continue;
      const std::string rest = marker_.substr(k);
      for (auto it =
               std::lower_bound(sorted_.begin(), sorted_.end(), std::make_pair(rest, int32_t{-1}));
           it != sorted_.end() && it->first.compare(0, rest.size(), rest) == 0; ++it) {
        clear_bit(mask, it->second);
      }
    }
  }

 private:
  std::string marker_;
  std::vector<int32_t> always_;
  std::vector<std::pair<std::string, int32_t>> sorted_;
};

ojson normalize(const ojson& s, const GenerationRequest::ValueBounds& b = {}) {
  if (s.is_array()) {
    ojson out = ojson::array();
    for (const auto& v : s) out.push_back(normalize(v, b));
    return out;
  }
  if (!s.is_object()) return s;
  ojson out = ojson::object();
  for (const auto& [k, v] : s.items()) {
    if (k == "type" && v.is_string()) {
      const std::string t = v.get<std::string>();
      if (t == "any" || t.empty()) continue;  // unconstrained
      if (t == "HashMap")
        out[k] = "object";  // BFCL's Java container types
      else if (t == "ArrayList" || t == "Array")
        out[k] = "array";
      else if (t == "dict")
        out[k] = "object";
      else if (t == "float" || t == "double")
        out[k] = "number";
      else if (t == "tuple")
        out[k] = "array";
      else if (t == "String" || t == "char")
        out[k] = "string";
      else if (t == "Boolean")
        out[k] = "boolean";
      else if (t == "long")
        out[k] = "integer";
      else
        out[k] = t;
    } else if (k == "properties" && v.is_object()) {
      ojson props = ojson::object();
      for (const auto& [pk, pv] : v.items()) props[pk] = normalize(pv, b);
      out[k] = props;
    } else if (k == "optional") {
      continue;  // BFCL annotation; optionality is what `required` says
    } else if (k == "default" || k == "examples") {
      continue;  // annotations; a generated value need not equal them
    } else if (k == "description" || k == "title") {
      out[k] = v;
    } else {
      out[k] = normalize(v, b);
    }
  }
  // Required names that `properties` does not describe are still allowed (JSON Schema's default
  // additionalProperties): declare them, or a grammar that closes objects could never write them.
  if (out.contains("required") && out["required"].is_array()) {
    if (!out.contains("properties") || !out["properties"].is_object())
      out["properties"] = ojson::object();
    for (const auto& name : out["required"]) {
      if (name.is_string() && !out["properties"].contains(name.get<std::string>()))
        out["properties"][name.get<std::string>()] = normalize(ojson::object(), b);
    }
  }
  // Bounded mode writes an unconstrained value ("any", Java container types) as a short string:
  // any value is valid there, and a string ends.
  if (b.max_string_chars > 0 && !out.contains("type")) {
    bool shaped = false;
    for (const char* kw :
         {"anyOf", "oneOf", "allOf", "enum", "const", "$ref", "properties", "items", "not"})
      shaped = shaped || out.contains(kw);
    if (!shaped) out["type"] = "string";
  }
  const std::string type =
      out.contains("type") && out["type"].is_string() ? out["type"].get<std::string>() : "";
  const bool closed = out.contains("enum") || out.contains("const");
  if (!closed && type == "string" && b.max_string_chars > 0 && !out.contains("maxLength") &&
      !out.contains("format") && !out.contains("pattern")) {
    out["maxLength"] = b.max_string_chars;
  }
  if (!closed && type == "array" && b.max_array_items > 0 && !out.contains("maxItems"))
    out["maxItems"] = b.max_array_items;
  // Bounded mode writes unbounded numbers as bounded integers: still valid numbers, and they end.
  if (!closed && type == "number" && b.max_abs_integer > 0 && !out.contains("minimum") &&
      !out.contains("maximum") && !out.contains("exclusiveMinimum") &&
      !out.contains("exclusiveMaximum") && !out.contains("multipleOf")) {
    out["type"] = "integer";
  }
  if (!closed && (type == "integer" || out.value("type", "") == "integer") &&
      b.max_abs_integer > 0) {
    // Bound the open side only, relative to the closed one, so the range never becomes empty.
    const bool has_min = out.contains("minimum") || out.contains("exclusiveMinimum");
    const bool has_max = out.contains("maximum") || out.contains("exclusiveMaximum");
    const auto bound = [&](const char* a, const char* b2) {
      return out.contains(a) ? out[a].get<double>() : out[b2].get<double>();
    };
    if (!has_min && !has_max) {
      out["minimum"] = -b.max_abs_integer;
      out["maximum"] = b.max_abs_integer;
    } else if (has_min && !has_max) {
      out["maximum"] =
          static_cast<int64_t>(std::ceil(bound("minimum", "exclusiveMinimum"))) + b.max_abs_integer;
    } else if (!has_min && has_max) {
      out["minimum"] = static_cast<int64_t>(std::floor(bound("maximum", "exclusiveMaximum"))) -
                       b.max_abs_integer;
    }
  }
  return out;
}

}  // namespace

nlohmann::ordered_json normalize_tool_schema(const nlohmann::ordered_json& schema,
                                             const GenerationRequest::ValueBounds& bounds) {
  // The parameters themselves are always an object, whatever the bounds do to untyped values.
  ojson out = normalize(schema, bounds);
  if (out.is_object() && (!schema.contains("type") || out.value("type", "") == "string")) {
    out["type"] = "object";
    out.erase("maxLength");
  }
  return out;
}

NativeBackend::NativeBackend(const std::filesystem::path& model_dir,
                             const NativeBackendOptions& options) {
  std::filesystem::path tok_dir = options.tokenizer_dir.empty() ? model_dir : options.tokenizer_dir;
  if (!std::filesystem::exists(tok_dir / "tokenizer.json")) {
    throw std::runtime_error(tok_dir.string() +
                             ": no tokenizer.json (pass the tokenizer folder, or make the model "
                             "with agentrt model init --vocab-from)");
  }
  tokenizer_ = engine::Tokenizer::load(tok_dir);
  model_ = engine::Model::load(model_dir, options.load);
  const int32_t vocab = std::max(model_->vocab_size(), tokenizer_->vocab_size());
  if (model_->vocab_size() < tokenizer_->vocab_size()) {
    throw std::runtime_error(
        model_dir.string() + ": the model's vocabulary (" + std::to_string(model_->vocab_size()) +
        ") is smaller than the tokenizer's (" + std::to_string(tokenizer_->vocab_size()) + ")");
  }
  grammars::Vocabulary v;
  v.token_bytes.assign(vocab, std::string());
  base_mask_.assign((vocab + 31) / 32, 0);
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    if (id == tokenizer_->eos_id()) continue;
    if (tokenizer_->is_added(id)) {
      v.special_tokens.push_back(id);
      continue;
    }
    v.token_bytes[id] = tokenizer_->token_bytes()[id];
    if (!v.token_bytes[id].empty()) set_bit(base_mask_, id);
  }
  v.stop_tokens = {tokenizer_->eos_id()};
  set_bit(base_mask_, tokenizer_->eos_id());
  index_ = grammars::TokenizerIndex::build(std::move(v));
  if (options.batching) batcher_ = std::make_unique<DecodeBatcher>(model_, *options.batching);
}

std::vector<float> NativeBackend::feed(engine::ModelSequence& sequence,
                                       std::span<const int32_t> tokens) {
  if (!batcher_) return sequence.forward(tokens);
  const int64_t before = sequence.length();
  try {
    return batcher_->forward(sequence, tokens);
  } catch (...) {
    // A chunked prefill may have fed part of the tokens before the failure.
    if (sequence.length() > before) sequence.truncate(before);
    throw;
  }
}

std::shared_ptr<NativeBackend::CachedSequence> NativeBackend::sequence_for(std::string_view key) {
  if (key.empty()) {
    auto fresh = std::make_shared<CachedSequence>();
    fresh->sequence = model_->new_sequence();
    return fresh;
  }
  std::lock_guard lock(sessions_mutex_);
  auto it = sessions_.find(key);
  if (it == sessions_.end()) {
    auto fresh = std::make_shared<CachedSequence>();
    fresh->sequence = model_->new_sequence();
    it = sessions_.emplace(std::string(key), fresh).first;
  }
  return it->second;
}

void NativeBackend::release_cache(std::string_view key) {
  std::lock_guard lock(sessions_mutex_);
  if (auto it = sessions_.find(key); it != sessions_.end()) sessions_.erase(it);
}

std::vector<int32_t> NativeBackend::prompt_tokens(const GenerationRequest& request) const {
  // Message text is marked so that only the template's own markers become control tokens: a
  // user who writes "<｜Assistant｜>" gets those characters, not the token.
  chat::EncodeOptions encoding = request.encoding;
  encoding.mark_message_text = true;
  const std::string prompt =
      chat::encode_v4(request.messages, request.tools, encoding, request.response_format);
  std::vector<int32_t> ids;
  for (const auto& segment : chat::split_marked_prompt(prompt)) {
    const auto part = tokenizer_->encode(segment.text, /*parse_special=*/!segment.message_text);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

GenerationResult NativeBackend::generate(const GenerationRequest& request,
                                         const GenerationCallback& on_event,
                                         const std::atomic<bool>* cancel,
                                         std::string_view cache_key) {
  const auto start = std::chrono::steady_clock::now();
  GenerationResult result;
  const std::vector<int32_t> prompt = prompt_tokens(request);
  if (prompt.empty()) throw std::invalid_argument("empty prompt");
  const bool thinking = request.encoding.thinking == chat::ThinkingMode::thinking;

  // The constraint for this request.
  const bool has_tools = request.tools.is_array() && !request.tools.empty() &&
                         request.tool_choice.mode != ToolChoice::Mode::none;
  std::unique_ptr<grammars::GrammarMatcher> matcher;
  std::unique_ptr<MarkerBan> ban;
  if (request.constrained) {
    if (has_tools) {
      std::vector<grammars::ToolSignature> signatures;
      for (const auto& tool : request.tools) {
        const ojson& fn = tool.contains("function") ? tool["function"] : tool;
        signatures.push_back(
            {fn.at("name").get<std::string>(),
             normalize_tool_schema(fn.value("parameters", ojson{{"type", "object"}}),
                                   request.value_bounds)});
      }
      grammars::ToolCallGrammarOptions options;
      options.parallel_calls = request.parallel_tool_calls;
      if (request.tool_choice.mode == ToolChoice::Mode::named)
        options.forced_tool = request.tool_choice.name;
      const auto compiled =
          grammars::compile(grammars::tool_calls_grammar(signatures, options), index_);
      const bool lazy = request.tool_choice.mode == ToolChoice::Mode::automatic || thinking;
      if (lazy) {
        grammars::TriggerOptions trigger;
        trigger.trigger_strings = {std::string(grammars::kDsmlToolCallsOpener)};
        matcher = std::make_unique<grammars::GrammarMatcher>(compiled, trigger);
      } else {
        matcher = std::make_unique<grammars::GrammarMatcher>(compiled);
      }
    } else if (request.response_format) {
      const auto& rf = *request.response_format;
      const std::string type = rf.value("type", "");
      nlohmann::json schema;
      if (type == "json_schema")
        schema = rf.at("json_schema").value("schema", nlohmann::json::object());
      else if (type == "json_object")
        schema = {{"type", "object"}};
      if (!schema.is_null()) {
        const auto compiled = grammars::compile(
            grammars::grammar_from_json_schema(ojson::parse(schema.dump())), index_);
        matcher = std::make_unique<grammars::GrammarMatcher>(compiled);
      }
    }
    if (request.tool_choice.mode == ToolChoice::Mode::none || !has_tools) {
      ban = std::make_unique<MarkerBan>(index_->vocabulary().token_bytes,
                                        std::string(grammars::kDsmlToolCallsOpener));
    }
  }

  auto cached = sequence_for(cache_key);
  std::lock_guard lock(cached->mutex);
  std::optional<DecodeBatcher::Activity> activity;
  if (batcher_) activity.emplace(*batcher_);
  // Reuse the longest common prefix of what the cache holds; always recompute the last token.
  size_t common = 0;
  while (common < cached->tokens.size() && common < prompt.size() &&
         cached->tokens[common] == prompt[common])
    ++common;
  if (common == prompt.size()) --common;
  cached->sequence->truncate(static_cast<int64_t>(common));
  cached->tokens.resize(common);
  result.usage.prompt_tokens = static_cast<int64_t>(prompt.size());
  result.usage.cached_prompt_tokens = static_cast<int64_t>(common);

  engine::Sampler sampler(request.sampling);
  // Tokens not yet fed: the prompt's uncached rest, then each step's choice. A step feeds them
  // and samples from the last position; without the batcher the sequence does both at once, so
  // a GPU sequence picks greedy tokens on the device and returns only the token.
  std::vector<int32_t> pending(prompt.begin() + static_cast<std::ptrdiff_t>(common), prompt.end());
  const auto step = [&](engine::TokenMask tm) -> engine::Sampler::Sample {
    engine::ModelSequence& seq = *cached->sequence;
    const int64_t before = seq.length();
    const auto fed_ok = [&] {
      cached->tokens.insert(cached->tokens.end(), pending.begin(), pending.end());
      pending.clear();
    };
    try {
      if (batcher_) {
        // One token: chosen in the batched pass (on the GPU for a CUDA model); a prompt or
        // jump-forward prefill: its last row sampled here.
        if (pending.size() == 1) {
          const auto s = batcher_->forward_and_sample(seq, pending, sampler, tm);
          fed_ok();
          return s;
        }
        const std::vector<float> logits = feed(seq, pending);
        fed_ok();
        return sampler.sample(logits, tm);
      }
      const auto s = seq.forward_and_sample(pending, sampler, tm);
      fed_ok();
      return s;
    } catch (const std::invalid_argument& e) {
      // Only "the mask allows no token" may reach the caller as invalid_argument.
      if (seq.length() == before) throw std::runtime_error(std::string("model: ") + e.what());
      if (!pending.empty()) fed_ok();  // fed, then the mask allowed nothing
      throw;
    }
  };
  engine::StreamingDecoder decoder(tokenizer_);
  chat::DsmlStreamParser parser(thinking);
  std::string text;  // generated so far (for the marker ban)
  std::vector<uint32_t> mask(base_mask_.size());
  const auto forward_events = [&](const std::vector<chat::ParseEvent>& events) {
    if (on_event)
      for (const auto& e : events) on_event(e);
  };
  const auto emit_token_text = [&](int32_t id) {
    const std::string piece = decoder.push(id);
    text += piece;
    forward_events(parser.feed(piece));
  };
  bool hit_max = false, stopped = false;
  int produced = 0;
  while (!stopped) {
    if (cancel && cancel->load()) {
      result.finish = FinishReason::cancelled;
      break;
    }
    if (produced >= request.max_tokens) {
      hit_max = true;
      break;
    }
    if (matcher) {
      matcher->fill_next_token_bitmask(mask.data());
      for (size_t w = 0; w < mask.size(); ++w) mask[w] &= base_mask_[w];
    } else {
      mask = base_mask_;
    }
    if (ban && !(matcher && matcher->triggered())) ban->apply(text, mask);
    engine::Sampler::Sample s;
    try {
      s = step({mask.data(), mask.size()});
    } catch (const std::invalid_argument&) {
      result.finish = FinishReason::error;
      result.error = "the grammar allows no token here (a grammar bug); generation stopped";
      break;
    }
    ++produced;
    if (s.token == tokenizer_->eos_id()) break;
    if (matcher && !matcher->accept_token(s.token)) {
      result.finish = FinishReason::error;
      result.error =
          "the grammar rejected a token its own mask allowed (id " + std::to_string(s.token) + ")";
      break;
    }
    std::vector<int32_t> fed = {s.token};
    // Jump-forward: bytes the grammar forces go through the model in one prefill. The sampled
    // token and the forced bytes are re-tokenised together (the token may merge with what
    // follows), rolling the matcher back over the sampled token to accept the canonical ids.
    if (matcher && matcher->triggered()) {
      const std::string forced = matcher->find_jump_forward_bytes();
      if (!forced.empty()) {
        const std::vector<int32_t> canonical =
            tokenizer_->encode(tokenizer_->token_bytes()[s.token] + forced);
        matcher->rollback(1);
        std::vector<int32_t> accepted;
        for (int32_t id : canonical) {
          if (produced + static_cast<int>(accepted.size()) > request.max_tokens ||
              !matcher->accept_token(id))
            break;
          accepted.push_back(id);
        }
        if (accepted.empty()) {
          matcher->accept_token(s.token);  // re-tokenising bought nothing: keep the sample
        } else {
          fed = accepted;
          produced += static_cast<int>(accepted.size()) - 1;
        }
      }
      if (matcher->is_terminated()) stopped = true;
    }
    for (int32_t id : fed) emit_token_text(id);
    pending = fed;
  }
  {
    const std::string rest = decoder.flush();
    forward_events(parser.feed(rest));
  }
  auto final = parser.finish(hit_max);
  forward_events(parser.take_final_events());
  result.message.role = chat::Message::Role::assistant;
  result.message.content = final.content;
  result.message.reasoning_content = final.reasoning_content;
  result.message.tool_calls = final.tool_calls;
  result.usage.completion_tokens = produced;
  if (result.finish != FinishReason::error && result.finish != FinishReason::cancelled) {
    if (!final.error.empty() && final.tool_calls.empty()) {
      result.finish = hit_max ? FinishReason::length : FinishReason::error;
      result.error = final.error;
    } else if (!final.tool_calls.empty()) {
      result.finish = FinishReason::tool_calls;
    } else {
      result.finish = hit_max ? FinishReason::length : FinishReason::stop;
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace agentrt
