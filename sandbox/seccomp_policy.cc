#include "sandbox/seccomp_policy.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>

#include <cstdint>
#include <memory>

namespace agentrt::sandbox {

std::string install_seccomp_policy() {
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(SCMP_ACT_ALLOW), seccomp_release);
  if (!ctx) return "seccomp_init failed";
  static constexpr const char* kDenied[] = {
      "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount", "umount2", "pivot_root",
      "chroot", "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
      "request_key", "unshare", "setns", "init_module", "finit_module", "delete_module", "reboot",
      "swapon", "swapoff", "syslog", "acct", "settimeofday", "clock_settime", "clock_adjtime",
      "adjtimex", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "quotactl",
      "lookup_dcookie", "iopl", "ioperm", "fanotify_init", "mount_setattr", "move_mount",
      "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "vhangup", "personality",
  };
  for (const char* name : kDenied) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0) != 0) return std::string("seccomp rule for ") + name;
  }
  const int clone3 = seccomp_syscall_resolve_name("clone3");
  if (clone3 != __NR_SCMP_ERROR) seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), clone3, 0);
  // clone with any namespace flag: no new namespaces from inside (one rule per flag; rules on
  // the same call combine with OR).
  for (const uint64_t flag : {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
                              CLONE_NEWCGROUP}) {
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)) != 0) {
      return "seccomp rule for clone flags";
    }
  }
  return seccomp_load(ctx.get()) == 0 ? "" : "seccomp_load failed";
}

}  // namespace agentrt::sandbox
