// Building the kernel programs: once per context and device in memory (see
// Runtime), and across processes through binaries cached on disk, because an
// OpenCL compiler (PoCL's LLVM, a GPU driver's) takes seconds per program.
//
// Cache folder: $HOPS_OPENCL_CACHE_DIR (empty: no disk cache), else
// $XDG_CACHE_HOME/hops/opencl, else ~/.cache/hops/opencl. A file is
// <hash>.bin, named by the hash of its key (platform, device, driver
// version, source hash, build options) and holding the key itself, so a
// hash collision or a stale file is recognised and rebuilt, never used.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "cl.hpp"

namespace hops::opencl {

// The cache folder; empty when the disk cache is off.
std::filesystem::path cache_directory();

// A built program for `device` in `context`. Build failures throw
// HOPS_ERR_BACKEND with the compiler's log.
ProgramHandle build_program(cl_context context, cl_device_id device, std::string_view name,
                            std::string_view source, const std::string& options);

// 64-bit FNV-1a: names cache files (the key inside them is checked in full).
uint64_t fnv1a(std::string_view bytes);

}  // namespace hops::opencl
