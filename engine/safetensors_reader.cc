#include "engine/safetensors_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace agentrt::engine {

// One read-only mapping; unmapped on destruction.
class Mapping {
 public:
  explicit Mapping(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path.string() + ": cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw std::runtime_error(path.string() + ": cannot stat");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw std::runtime_error(path.string() + ": mmap failed");
      }
      data_ = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  ~Mapping() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

// Bytes per value; 0 for F4 (two values per byte) and for unknown dtypes.
int64_t dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "BF16" || d == "F16" || d == "I16" || d == "U16") return 2;
  if (d == "I64" || d == "F64" || d == "U64") return 8;
  if (d == "F8_E4M3" || d == "F8_E5M2" || d == "F8_E8M0" || d == "I8" || d == "U8" || d == "BOOL")
    return 1;
  return 0;
}

}  // namespace

std::map<std::string, StoredTensor> parse_safetensors(const char* image, size_t size,
                                                      const std::string& where) {
  if (size < 8) throw std::runtime_error(where + ": too short for a safetensors header");
  uint64_t header_len;
  std::memcpy(&header_len, image, 8);
  if (header_len > size - 8)
    throw std::runtime_error(where + ": header length " + std::to_string(header_len) +
                             " runs past the end of the file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(image + 8, image + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(where + ": invalid safetensors header: " + e.what());
  }
  if (!header.is_object())
    throw std::runtime_error(where + ": safetensors header is not an object");
  const char* base = image + 8 + header_len;
  const uint64_t data_len = size - 8 - header_len;
  std::map<std::string, StoredTensor> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string what = where + ": tensor '" + it.key() + "'";
    StoredTensor t;
    t.file = where;
    std::vector<uint64_t> offs;
    try {
      t.dtype = it.value().at("dtype").get<std::string>();
      t.shape = it.value().at("shape").get<std::vector<int64_t>>();
      offs = it.value().at("data_offsets").get<std::vector<uint64_t>>();
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(what + " has a malformed header entry: " + e.what());
    }
    if (offs.size() != 2 || offs[0] > offs[1] || offs[1] > data_len)
      throw std::runtime_error(what + " has bad data_offsets");
    const int64_t bytes = int64_t(offs[1] - offs[0]);
    // Count values without overflowing: any count past the byte length already fails.
    int64_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw std::runtime_error(what + " has a negative dimension");
      count = d == 0 || count == 0 ? 0 : (count > (bytes * 2 + 2) / d ? bytes * 2 + 3 : count * d);
    }
    const int64_t es = dtype_size(t.dtype);
    if (es == 0 && t.dtype != "F4")
      throw std::runtime_error(what + " has unsupported dtype " + t.dtype);
    // F4 packs two values per byte; writers count its shape in values or in bytes.
    const bool size_ok =
        t.dtype == "F4" ? bytes == (count + 1) / 2 || bytes == count : bytes == count * es;
    if (!size_ok) throw std::runtime_error(what + " size does not match its shape");
    t.data = base + offs[0];
    t.bytes = bytes;
    out[it.key()] = std::move(t);
  }
  return out;
}

SafetensorsFiles::SafetensorsFiles(const std::filesystem::path& dir, Rename rename) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw std::runtime_error(dir.string() + ": not a model directory");
  std::vector<fs::path> files;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(std::ifstream(index));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(index.string() + ": invalid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw std::runtime_error(index.string() + ": no weight_map object");
    std::set<std::string> shards;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        throw std::runtime_error(index.string() + ": weight_map entry '" + name +
                                 "' is not a file name");
      shards.insert(file.get<std::string>());
    }
    for (const std::string& s : shards) {
      if (s.find('/') != std::string::npos || !fs::exists(dir / s))
        throw std::runtime_error(index.string() + ": shard '" + s + "' is missing");
      files.push_back(dir / s);
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path());
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) throw std::runtime_error(dir.string() + ": no .safetensors files");
  for (const auto& f : files) add(f, rename);
}

SafetensorsFiles::~SafetensorsFiles() = default;

void SafetensorsFiles::add(const std::filesystem::path& file, Rename rename) {
  maps_.push_back(std::make_unique<Mapping>(file));
  const Mapping& m = *maps_.back();
  for (auto& [name, t] : parse_safetensors(m.data(), m.size(), file.string())) {
    const std::string key = rename ? rename(name) : name;
    if (tensors_.count(key))
      throw std::runtime_error(file.string() + ": tensor '" + name +
                               "' is stored twice in the checkpoint");
    tensors_[key] = std::move(t);
  }
}

const StoredTensor* SafetensorsFiles::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace agentrt::engine
