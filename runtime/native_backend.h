// The embedded default: the DeepSeek-V4 engine in-process. One loaded model is shared by all
// sessions; each cache key (a session) keeps its ModelSequence, so a new turn prefills only the
// tokens after the longest common prefix with what the cache holds (truncate() rewinds the rest).
// Every sampled token goes through the grammar's bitmask: the DSML tool-call grammar built from
// the request's tools (lazy, triggered by the opener, for tool_choice auto; from the first token
// for required / a named tool), the opener masked out for tool_choice none, and the
// response_format JSON Schema for structured answers. Forced continuations (jump-forward) are
// fed through the model in one prefill.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "engine/model.h"
#include "engine/tokenizer.h"
#include "grammars/tokenizer_index.h"
#include "runtime/backend.h"
#include "runtime/decode_batcher.h"

namespace agentrt {

struct NativeBackendOptions {
  engine::LoadOptions load;
  std::filesystem::path tokenizer_dir;  // default: the model folder
  // Set (a server): every model call of every generation goes through one DecodeBatcher, so
  // concurrent generations share forward passes. Unset (CLI run/chat): direct calls.
  std::optional<DecodeBatcherOptions> batching;
};

class NativeBackend : public Backend {
 public:
  NativeBackend(const std::filesystem::path& model_dir, const NativeBackendOptions& options = {});
  std::string name() const override { return "native"; }
  GenerationResult generate(const GenerationRequest& request, const GenerationCallback& on_event,
                            const std::atomic<bool>* cancel,
                            std::string_view cache_key = {}) override;
  void release_cache(std::string_view cache_key) override;

  const engine::Tokenizer& tokenizer() const { return *tokenizer_; }
  // The prompt token ids for a request (exposed for tests and the toolcall benchmark).
  std::vector<int32_t> prompt_tokens(const GenerationRequest& request) const;
  // The batcher when batching is configured (its counters show batching happened), else null.
  const DecodeBatcher* batcher() const { return batcher_.get(); }

 private:
  struct CachedSequence {
    std::unique_ptr<engine::ModelSequence> sequence;
    std::vector<int32_t> tokens;
    std::mutex mutex;
  };
  std::shared_ptr<CachedSequence> sequence_for(std::string_view key);
  // Feeds tokens through the batcher or directly; on failure the sequence is rewound to where it
  // was, so the cached token list stays true.
  std::vector<float> feed(engine::ModelSequence& sequence, std::span<const int32_t> tokens);

  std::shared_ptr<const engine::Tokenizer> tokenizer_;
  std::shared_ptr<const engine::Model> model_;
  std::shared_ptr<const grammars::TokenizerIndex> index_;
  std::vector<uint32_t> base_mask_;  // text tokens + EOS: special and padding ids masked out
  std::mutex sessions_mutex_;
  std::map<std::string, std::shared_ptr<CachedSequence>, std::less<>> sessions_;
  std::unique_ptr<DecodeBatcher> batcher_;  // declared last: stopped before the model goes
};

// Converts BFCL / loose tool schemas to standard JSON Schema ("dict" -> object, "float" ->
// number, "tuple" -> array, "any" -> {}), as the grammar compiler needs.
// With bounds, unbounded values get limits that keep their validity (see GenerationRequest).
nlohmann::ordered_json normalize_tool_schema(const nlohmann::ordered_json& schema,
                                             const GenerationRequest::ValueBounds& bounds = {});

}  // namespace agentrt
