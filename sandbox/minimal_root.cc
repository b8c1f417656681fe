#include "sandbox/minimal_root.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

namespace agentrt::sandbox {

namespace {

namespace fs = std::filesystem;

std::string err(const std::string& what) { return what + ": " + std::strerror(errno); }

// Flags a read-only remount of a bind must keep (the kernel refuses to drop locked ones).
unsigned long locked_flags(const std::string& path) {
  struct statvfs s;
  if (::statvfs(path.c_str(), &s) != 0) return 0;
  unsigned long f = 0;
  if (s.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (s.f_flag & ST_NODEV) f |= MS_NODEV;
  if (s.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (s.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (s.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

std::string bind_path(const std::string& host, const std::string& target, bool writable) {
  std::error_code ec;
  if (fs::is_directory(host, ec)) {
    fs::create_directories(target, ec);
  } else {
    fs::create_directories(fs::path(target).parent_path(), ec);
    std::ofstream(target).close();
  }
  if (::mount(host.c_str(), target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0)
    return err("bind " + host);
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | locked_flags(host);
  if (!writable) flags |= MS_RDONLY;
  if (::mount(nullptr, target.c_str(), nullptr, flags, nullptr) != 0)
    return err("remount " + target);
  return "";
}

}  // namespace

std::string build_minimal_root(const SandboxConfig& config, const std::string& root,
                               bool mount_proc) {
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return err("make / private");
  if (::mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m") != 0)
    return err("tmpfs root");
  std::error_code ec;
  for (const char* dir : {"usr", "lib", "lib32", "lib64", "bin", "sbin"}) {
    const fs::path host = fs::path("/") / dir;
    if (fs::is_symlink(host, ec)) {
      fs::create_symlink(fs::read_symlink(host, ec), fs::path(root) / dir, ec);
    } else if (fs::is_directory(host, ec)) {
      if (auto e = bind_path(host, root + "/" + dir, false); !e.empty()) return e;
    }
  }
  fs::create_directories(root + "/etc", ec);
  // /etc/ssl/certs but not /etc/ssl: /etc/ssl/private holds host keys.
  for (const char* file :
       {"/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
        "/etc/localtime", "/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates",
        "/etc/python3", "/etc/mime.types"}) {
    if (!fs::exists(file, ec)) continue;
    if (auto e = bind_path(file, root + file, false); !e.empty()) return e;
  }
  // A passwd that knows only the sandbox user; the host's is not visible.
  std::ofstream(root + "/etc/passwd")
      << "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:" << config.workspace_inside
      << ":/bin/sh\n";
  std::ofstream(root + "/etc/group") << "root:x:0:\nsandbox:x:1000:\n";
  std::ofstream(root + "/etc/hosts") << "127.0.0.1 localhost sandbox\n";

  fs::create_directories(root + "/dev", ec);
  if (::mount("tmpfs", (root + "/dev").c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC,
              "mode=0755,size=64k") != 0)
    return err("tmpfs /dev");
  for (const char* dev : {"null", "zero", "random", "urandom"}) {
    const std::string target = root + "/dev/" + dev;
    std::ofstream(target).close();
    if (::mount((std::string("/dev/") + dev).c_str(), target.c_str(), nullptr, MS_BIND, nullptr) !=
        0)
      return err(std::string("bind /dev/") + dev);
  }
  fs::create_symlink("/proc/self/fd", root + "/dev/fd", ec);
  fs::create_directories(root + "/tmp", ec);
  if (::mount("tmpfs", (root + "/tmp").c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              "mode=1777,size=256m") != 0)
    return err("tmpfs /tmp");
  if (!config.workspace.empty()) {
    if (auto e = bind_path(config.workspace.string(), root + config.workspace_inside, true);
        !e.empty())
      return e;
  }
  for (const auto& b : config.binds) {
    if (auto e = bind_path(b.host.string(), root + b.inside.string(), b.writable); !e.empty())
      return e;
  }
  fs::create_directories(root + "/proc", ec);
  if (mount_proc && ::mount("proc", (root + "/proc").c_str(), "proc",
                            MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    return err("mount /proc");
  }
  fs::create_directories(root + "/.oldroot", ec);
  if (::syscall(SYS_pivot_root, root.c_str(), (root + "/.oldroot").c_str()) != 0)
    return err("pivot_root");
  if (::chdir("/") != 0) return err("chdir /");
  if (::umount2("/.oldroot", MNT_DETACH) != 0) return err("detach old root");
  ::rmdir("/.oldroot");
  // The root itself read-only: only the workspace, /tmp and explicit rw binds are writable.
  if (::mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) != 0) {
    return err("remount / read-only");
  }
  return "";
}

}  // namespace agentrt::sandbox
