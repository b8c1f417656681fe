#include "sandbox/seccomp_policy.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <stdexcept>

namespace agentrt::sandbox {

namespace {

using FilterContext = std::unique_ptr<void, void (*)(scmp_filter_ctx)>;

// Builds the policy; returns "" or what failed.
std::string build_policy(FilterContext& ctx) {
  static constexpr const char* kDenied[] = {
      "ptrace",
      "process_vm_readv",
      "process_vm_writev",
      "mount",
      "umount",
      "umount2",
      "pivot_root",
      "chroot",
      "kexec_load",
      "kexec_file_load",
      "bpf",
      "perf_event_open",
      "keyctl",
      "add_key",
      "request_key",
      "unshare",
      "setns",
      "init_module",
      "finit_module",
      "delete_module",
      "reboot",
      "swapon",
      "swapoff",
      "syslog",
      "acct",
      "settimeofday",
      "clock_settime",
      "clock_adjtime",
      "adjtimex",
      "open_by_handle_at",
      "name_to_handle_at",
      "userfaultfd",
      "quotactl",
      "lookup_dcookie",
      "iopl",
      "ioperm",
      "fanotify_init",
      "mount_setattr",
      "move_mount",
      "open_tree",
      "fsopen",
      "fsconfig",
      "fsmount",
      "fspick",
      "vhangup",
      "personality",
  };
  for (const char* name : kDenied) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0) != 0)
      return std::string("seccomp rule for ") + name;
  }
  const int clone3 = seccomp_syscall_resolve_name("clone3");
  if (clone3 != __NR_SCMP_ERROR) seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), clone3, 0);
  // clone with any namespace flag: no new namespaces from inside (one rule per flag; rules on
  // the same call combine with OR).
  for (const uint64_t flag : {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                              CLONE_NEWNET, CLONE_NEWCGROUP}) {
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                         SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)) != 0) {
      return "seccomp rule for clone flags";
    }
  }
  return "";
}

}  // namespace

std::string install_seccomp_policy() {
  FilterContext ctx(seccomp_init(SCMP_ACT_ALLOW), seccomp_release);
  if (!ctx) return "seccomp_init failed";
  if (std::string e = build_policy(ctx); !e.empty()) return e;
  return seccomp_load(ctx.get()) == 0 ? "" : "seccomp_load failed";
}

std::vector<sock_filter> compile_seccomp_policy() {
  FilterContext ctx(seccomp_init(SCMP_ACT_ALLOW), seccomp_release);
  if (!ctx) throw std::runtime_error("seccomp: seccomp_init failed");
  if (std::string e = build_policy(ctx); !e.empty()) throw std::runtime_error("seccomp: " + e);
  // libseccomp 2.5 exports only to a descriptor: an anonymous memory file.
  const int fd = ::memfd_create("agentrt-seccomp", MFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error("seccomp: memfd_create failed");
  std::vector<sock_filter> program;
  const bool exported = seccomp_export_bpf(ctx.get(), fd) == 0;
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (exported && size > 0 && size % sizeof(sock_filter) == 0) {
    program.resize(static_cast<size_t>(size) / sizeof(sock_filter));
    if (::pread(fd, program.data(), static_cast<size_t>(size), 0) != size) program.clear();
  }
  ::close(fd);
  if (program.empty()) throw std::runtime_error("seccomp: exporting the BPF program failed");
  return program;
}

bool install_seccomp_program(const std::vector<sock_filter>& program) {
  sock_fprog prog{static_cast<unsigned short>(program.size()),
                  const_cast<sock_filter*>(program.data())};
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

}  // namespace agentrt::sandbox
