// Runs the agentrt binary with arguments and stdin, capturing stdout and the exit code.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace agentrt::testing {

struct CliResult {
  int exit_code;
  std::string out;
};

inline CliResult run_cli(const std::string& args, const std::string& input = "",
                         bool merge_stderr = false) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto in_path = dir / ("agentrt_cli_in_" + std::to_string(::getpid()));
  std::ofstream(in_path, std::ios::binary) << input;
  const std::string cmd = std::string(AGENTRT_CLI) + " " + args + " < " + in_path.string() +
                          (merge_stderr ? " 2>&1" : " 2>/dev/null");
  CliResult result{-1, ""};
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) result.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::filesystem::remove(in_path);
  return result;
}

}  // namespace agentrt::testing
