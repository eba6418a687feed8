#include "nccl.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <mutex>

#include "error.hpp"

namespace hops::cuda::nccl {

namespace {

constexpr int kFirstUsable = 2700;  // 2.7.0: grouped ncclSend / ncclRecv, sends to self

std::string decode(int code) {
  // NCCL_VERSION_CODE is X*1000 + Y*100 + Z before 2.9, X*10000 + Y*100 + Z since.
  if (code >= 10000) return fmt::format("{}.{}.{}", code / 10000, code % 10000 / 100, code % 100);
  return fmt::format("{}.{}.{}", code / 1000, code % 1000 / 100, code % 100);
}

template <class Fn>
bool resolve(void* library, const char* name, Fn& fn, std::string* why) {
  fn = reinterpret_cast<Fn>(dlsym(library, name));
  if (!fn) *why = fmt::format("no symbol {}", name);
  return fn != nullptr;
}

bool load(Api& nccl, std::string* why) {
  const char* chosen = std::getenv("HOPS_NCCL_LIBRARY");
  const char* name = chosen && *chosen ? chosen : "libnccl.so.2";
  // RTLD_LOCAL: its symbols stay out of the process's namespace; a copy
  // already loaded under that soname is the one returned.
  void* library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char* error = dlerror();
    *why = fmt::format("dlopen({}): {}", name, error ? error : "failed");
    return false;
  }
  if (!resolve(library, "ncclGetVersion", nccl.get_version, why) ||
      !resolve(library, "ncclGetErrorString", nccl.error_string, why) ||
      !resolve(library, "ncclCommCount", nccl.comm_count, why) ||
      !resolve(library, "ncclCommUserRank", nccl.comm_user_rank, why) ||
      !resolve(library, "ncclCommCuDevice", nccl.comm_cu_device, why) ||
      !resolve(library, "ncclGroupStart", nccl.group_start, why) ||
      !resolve(library, "ncclGroupEnd", nccl.group_end, why) ||
      !resolve(library, "ncclSend", nccl.send, why) ||
      !resolve(library, "ncclRecv", nccl.recv, why)) {
    dlclose(library);
    return false;
  }
  if (nccl.get_version(&nccl.version) != kSuccess || nccl.version < kFirstUsable) {
    *why = fmt::format("{} is NCCL {}; hops needs 2.7 or later", name, decode(nccl.version));
    dlclose(library);
    return false;
  }
  const link_map* map = nullptr;
  nccl.path = dlinfo(library, RTLD_DI_LINKMAP, &map) == 0 && map ? map->l_name : name;
  return true;  // kept open for the process
}

}  // namespace

const Api* api(std::string* why) {
  static std::mutex mutex;
  static Api loaded;
  static bool ready = false;
  const std::scoped_lock lock(mutex);
  if (!ready) {
    Api nccl;
    std::string reason;
    ready = load(nccl, &reason);
    if (ready) loaded = nccl;
    if (!ready && why) *why = reason;
  }
  return ready ? &loaded : nullptr;
}

std::string describe() {
  std::string why;
  const Api* nccl = api(&why);
  if (!nccl) return fmt::format("NCCL not found ({}; set HOPS_NCCL_LIBRARY)", why);
  return fmt::format("NCCL {} ({}): moe_ep_dispatch / moe_ep_combine with HOPS_COMM_NCCL",
                     decode(nccl->version), nccl->path);
}

}  // namespace hops::cuda::nccl
