// Reading .safetensors checkpoints: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the tensor bytes. Files are memory-mapped and tensors
// are views into the mapping (nothing is copied). Every header is checked before use: a tensor
// whose bytes do not match its dtype and shape, or whose offsets leave the file, is an error that
// names the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace agentrt::engine {

struct StoredTensor {
  std::string dtype;  // safetensors spelling: F32, BF16, F16, F8_E4M3, F8_E8M0, I8, U8, F4, ...
  std::vector<int64_t> shape;
  const char* data = nullptr;
  int64_t bytes = 0;
  std::string file;
};

// Parses one whole file image; the views point into `image`. `where` names it in errors.
std::map<std::string, StoredTensor> parse_safetensors(const char* image, size_t size,
                                                      const std::string& where);

class Mapping;

// Every tensor of a checkpoint directory: model.safetensors, or the shards that
// model.safetensors.index.json names (each must exist), or else every *.safetensors file.
// Names are stored as rename(name) so callers can fold spellings together.
class SafetensorsFiles {
 public:
  using Rename = std::string (*)(std::string);
  explicit SafetensorsFiles(const std::filesystem::path& dir, Rename rename = nullptr);
  ~SafetensorsFiles();

  const StoredTensor* find(const std::string& name) const;
  const std::map<std::string, StoredTensor>& tensors() const { return tensors_; }

 private:
  void add(const std::filesystem::path& file, Rename rename);
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::map<std::string, StoredTensor> tensors_;
};

}  // namespace agentrt::engine
