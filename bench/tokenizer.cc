// Tokenizer encode throughput, one thread. Prints a table row comparable with the HF
// `tokenizers` / tiktoken rows that scripts/make_tokenizer_fixtures.py --bench-text prints.
//   bench_tokenizer [--tokenizer DIR] [--text FILE | --write-text FILE] [--mb N]
#include "engine/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

// A few MB of mixed text: English prose, code, numbers, CJK, emoji, whitespace runs.
std::string mixed_text(size_t megabytes) {
  const char* samples[] = {
      "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.\n",
      "def compute(values):\n    total = 0\n    for v in values:\n        total += v * 2\n    "
      "return total\n",
      "int main(int argc, char** argv) {\n\tstd::vector<int> xs{1, 2, 3};\n\treturn "
      "xs.size();\n}\n",
      "Prices: 12.50, 1999, 3.14159, 1,000,000 and 42% of 2024-11-22T13:45:00Z.\n",
      "深度求索是一家人工智能公司，专注于大语言模型的研究。我们的模型支持工具调用。\n",
      "こんにちは、世界。カタカナとひらがなのテキストです。\n",
      "Emoji 🤖🚀✨ and flags 🇯🇵 with ZWJ 👨‍👩‍👧 sequences.\n",
      "    indented    text   with    runs   of   spaces\t\tand\ttabs\n\n\n",
      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n",
  };
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < megabytes * 1000000) text += samples[rng() % std::size(samples)];
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_dir = std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer";
  std::string text_file, write_file;
  size_t mb = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--tokenizer" && i + 1 < argc)
      tokenizer_dir = argv[++i];
    else if (arg == "--text" && i + 1 < argc)
      text_file = argv[++i];
    else if (arg == "--write-text" && i + 1 < argc)
      write_file = argv[++i];
    else if (arg == "--mb" && i + 1 < argc)
      mb = std::stoul(argv[++i]);
    else {
      std::fprintf(
          stderr,
          "usage: bench_tokenizer [--tokenizer DIR] [--text FILE | --write-text FILE] [--mb N]\n");
      return 2;
    }
  }
  std::string text;
  if (!text_file.empty()) {
    std::ifstream in(text_file, std::ios::binary);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    text = mixed_text(mb);
  }
  if (!write_file.empty()) {
    std::ofstream(write_file, std::ios::binary) << text;
    std::printf("wrote %zu bytes to %s\n", text.size(), write_file.c_str());
    return 0;
  }
  const auto tokenizer = agentrt::engine::Tokenizer::load(tokenizer_dir);
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line + "\n");

  size_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& line : lines) tokens += tokenizer->encode(line).size();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double megabytes = text.size() / 1e6;
  std::printf("| tokenizer | text | tokens | throughput |\n|---|---:|---:|---:|\n");
  std::printf("| agentrt (C++, 1 thread, per line) | %.2f MB | %zu tokens | %.2f MB/s |\n",
              megabytes, tokens, megabytes / seconds);
  return 0;
}
