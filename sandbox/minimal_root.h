// The sandbox's filesystem view, built inside the new mount namespace: a tmpfs root holding
// read-only binds of /usr and the library folders (symlinks where the host has them), a few
// /etc files programs need, a fresh /proc, a tmpfs /tmp, a tmpfs /dev with only null, zero,
// random, urandom, the workspace read-write at its fixed path and any extra binds; then
// pivot_root into it and detach the old root.
#pragma once

#include <string>

#include "sandbox/sandbox.h"

namespace agentrt::sandbox {

// Runs in the sandbox's init process. Returns "" on success, else what failed (errno text).
std::string build_minimal_root(const SandboxConfig& config, const std::string& staging_dir,
                               bool mount_proc);

}  // namespace agentrt::sandbox
