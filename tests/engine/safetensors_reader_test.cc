// The safetensors reader: header checks with errors naming file and tensor, sharded checkpoints
// through model.safetensors.index.json.
#include "engine/safetensors_reader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/safetensors_writer.h"

namespace agentrt::engine {
namespace {

namespace fs = std::filesystem;

std::string image(const nlohmann::json& header, size_t data_bytes) {
  const std::string h = header.dump();
  const uint64_t n = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + h + std::string(data_bytes, '\x01');
}

std::string parse_error(const std::string& img) {
  try {
    parse_safetensors(img.data(), img.size(), "f.safetensors");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(SafetensorsReader, ParsesViewsIntoTheImage) {
  const std::string img =
      image({{"__metadata__", {{"format", "pt"}}},
             {"a", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
             {"b", {{"dtype", "F4"}, {"shape", {4, 8}}, {"data_offsets", {24, 40}}}}},
            40);
  const auto t = parse_safetensors(img.data(), img.size(), "f");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.at("a").bytes, 24);
  EXPECT_EQ(t.at("a").data, img.data() + img.size() - 40);
  EXPECT_EQ(t.at("b").bytes, 16);  // F4: 32 values in 16 bytes
}

TEST(SafetensorsReader, BadHeadersAreNamed) {
  EXPECT_NE(parse_error("abc").find("too short"), std::string::npos);
  std::string huge(8, '\xff');
  EXPECT_NE(parse_error(huge).find("runs past the end"), std::string::npos);
  EXPECT_NE(
      parse_error(image({{"w", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 12}}}}}, 16))
          .find("tensor 'w' size does not match its shape"),
      std::string::npos);
  EXPECT_NE(
      parse_error(image({{"w", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}}, 8))
          .find("tensor 'w' has bad data_offsets"),
      std::string::npos);
  EXPECT_NE(
      parse_error(image({{"w", {{"dtype", "Q9"}, {"shape", {1}}, {"data_offsets", {0, 1}}}}}, 1))
          .find("unsupported dtype Q9"),
      std::string::npos);
  EXPECT_NE(parse_error(image({{"w", {{"shape", {1}}, {"data_offsets", {0, 1}}}}}, 1))
                .find("tensor 'w' has a malformed header entry"),
            std::string::npos);
  // A shape whose value count overflows 64 bits is a size mismatch, not undefined behaviour.
  EXPECT_NE(parse_error(image({{"w",
                                {{"dtype", "F32"},
                                 {"shape", {int64_t(1) << 40, int64_t(1) << 40}},
                                 {"data_offsets", {0, 4}}}}},
                              4))
                .find("size does not match"),
            std::string::npos);
}

TEST(SafetensorsReader, ShardsComeFromTheIndexAndAMissingShardIsNamed) {
  const fs::path dir = fs::temp_directory_path() / ("agentrt-st-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::vector<uint8_t> four(16, 0);
  write_safetensors(dir / "part-1.safetensors", {{"x", "F32", {4}, four}});
  write_safetensors(dir / "part-2.safetensors", {{"y", "F32", {4}, four}});
  write_safetensors(dir / "stray.safetensors", {{"z", "F32", {4}, four}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "part-1.safetensors", "y": "part-2.safetensors"}})";
  const SafetensorsFiles files(dir);
  EXPECT_NE(files.find("x"), nullptr);
  EXPECT_NE(files.find("y"), nullptr);
  EXPECT_EQ(files.find("z"), nullptr);  // not in the index: not part of the checkpoint
  fs::remove(dir / "part-2.safetensors");
  try {
    SafetensorsFiles again(dir);
    ADD_FAILURE() << "a missing shard must be an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'part-2.safetensors' is missing"),
              std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace agentrt::engine
