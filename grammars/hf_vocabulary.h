// Reads the vocabulary of a Hugging Face byte-level BPE tokenizer.json (DeepSeek, Llama-3,
// GPT-2 style) into a Vocabulary, without the engine: the grammar tools and benchmarks need only
// each token's bytes, not the tokenizer itself.
#pragma once

#include <string>
#include <vector>

#include "grammars/tokenizer_index.h"

namespace agentrt::grammars {

// Added tokens marked "special" become special tokens; those named in `stop_token_names` (when
// present) become stop tokens instead. Throws std::runtime_error naming the file on bad input.
Vocabulary load_hf_vocabulary(const std::string& tokenizer_json_path,
                              const std::vector<std::string>& stop_token_names = {
                                  "<｜end▁of▁sentence｜>", "</s>", "<|endoftext|>", "<|eot_id|>",
                                  "<|end_of_text|>"});

// The byte string a byte-level BPE vocabulary entry stands for (GPT-2's bytes_to_unicode
// inverted); throws on a character outside that alphabet.
std::string byte_level_decode(const std::string& token);

}  // namespace agentrt::grammars
