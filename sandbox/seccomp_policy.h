// The seccomp-bpf policy (docs/sandbox.md): default allow, with a deny list of system calls a
// tool never needs and an escape would: ptrace, mount/umount/pivot_root, kexec, bpf,
// perf_event_open, keyctl, unshare/setns and clone with namespace flags, module loading,
// reboot, swap, clock setting, process_vm_*, userfaultfd, open_by_handle_at, ...
// Denied calls fail with EPERM (clone3 with ENOSYS so libc falls back to clone, which is
// filtered by flags).
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

namespace agentrt::sandbox {

// Loads the filter into the calling thread (after PR_SET_NO_NEW_PRIVS). Returns "" on
// success or what failed.
std::string install_seccomp_policy();

// The same policy compiled to BPF in the parent, so the sandboxed child only makes one prctl
// (no libseccomp work, no allocation, after fork). Throws std::runtime_error saying what failed.
std::vector<sock_filter> compile_seccomp_policy();
// Loads a compiled program into the calling thread (after PR_SET_NO_NEW_PRIVS).
bool install_seccomp_program(const std::vector<sock_filter>& program);

}  // namespace agentrt::sandbox
