#include "tools/workspace_paths.h"

#include <stdexcept>

namespace agentrt::tools {

namespace fs = std::filesystem;

fs::path confine_path(const fs::path& workspace, const std::string& path, bool for_write) {
  if (workspace.empty()) throw std::invalid_argument("no workspace is configured");
  if (path.find('\0') != std::string::npos) throw std::invalid_argument("path contains a NUL byte");
  const fs::path p(path.empty() ? "." : path);
  if (p.is_absolute())
    throw std::invalid_argument("absolute paths are refused ('" + path +
                                "'); use a path relative to the workspace");
  for (const auto& part : p) {
    if (part == "..") throw std::invalid_argument("'..' is refused in paths ('" + path + "')");
  }
  const fs::path root = fs::canonical(workspace);
  const fs::path joined = root / p;
  std::error_code ec;
  fs::path real;
  if (fs::exists(joined, ec) || fs::is_symlink(joined, ec)) {
    real = fs::weakly_canonical(joined, ec);
  } else if (for_write) {
    real = fs::weakly_canonical(joined.parent_path(), ec) / joined.filename();
  } else {
    throw std::invalid_argument("'" + path + "' does not exist");
  }
  const auto rel = real.lexically_relative(root);
  if (rel.empty() || *rel.begin() == "..")
    throw std::invalid_argument("'" + path + "' leads outside the workspace (symlink?)");
  return real;
}

}  // namespace agentrt::tools
