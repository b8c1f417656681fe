// Confinement of tool paths to the workspace: relative paths only, no `..` component, and the
// real location (symlinks followed) must stay inside the workspace.
#pragma once

#include <filesystem>
#include <string>

namespace agentrt::tools {

// Throws std::invalid_argument saying why the path is refused. for_write allows a path whose
// last component does not exist yet (its parent must).
std::filesystem::path confine_path(const std::filesystem::path& workspace, const std::string& path,
                                   bool for_write = false);

}  // namespace agentrt::tools
