#include "program_cache.hpp"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>
#include <vector>

namespace hops::opencl {

namespace {

constexpr std::string_view kMagic = "HOPSCLB1";

std::string cache_key(cl_device_id device, std::string_view name, std::string_view source,
                      const std::string& options) {
  const auto platform = device_value<cl_platform_id>(device, CL_DEVICE_PLATFORM);
  return fmt::format(
      "platform: {} / {}\ndevice: {} / {}\ndriver: {}\nprogram: {}\nsource: {:016x} ({} bytes)\n"
      "options: {}\n",
      platform_string(platform, CL_PLATFORM_NAME), platform_string(platform, CL_PLATFORM_VERSION),
      device_string(device, CL_DEVICE_NAME), device_string(device, CL_DEVICE_VERSION),
      device_string(device, CL_DRIVER_VERSION), name, fnv1a(source), source.size(), options);
}

std::string build_log(cl_program program, cl_device_id device) {
  size_t size = 0;
  if (clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &size) !=
      CL_SUCCESS) {
    return "(no build log)";
  }
  std::string log(size, '\0');
  clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, size, log.data(), nullptr);
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log.empty() ? "(empty build log)" : log;
}

// ---- the file: magic, key size, key, binary size, binary ----------------------

void write_u64(std::ofstream& out, uint64_t value) {
  out.write(reinterpret_cast<const char*>(&value), sizeof value);
}

std::optional<uint64_t> read_u64(std::ifstream& in) {
  uint64_t value = 0;
  if (!in.read(reinterpret_cast<char*>(&value), sizeof value)) return std::nullopt;
  return value;
}

std::optional<std::vector<unsigned char>> load_binary(const std::filesystem::path& file,
                                                      const std::string& key) {
  std::ifstream in(file, std::ios::binary);
  std::string magic(kMagic.size(), '\0');
  if (!in.read(magic.data(), static_cast<std::streamsize>(magic.size())) || magic != kMagic) {
    return std::nullopt;
  }
  const auto key_size = read_u64(in);
  if (!key_size || *key_size != key.size()) return std::nullopt;
  std::string stored(key.size(), '\0');
  if (!in.read(stored.data(), static_cast<std::streamsize>(stored.size())) || stored != key) {
    return std::nullopt;
  }
  const auto binary_size = read_u64(in);
  if (!binary_size || *binary_size == 0 || *binary_size > (uint64_t{1} << 32)) return std::nullopt;
  std::vector<unsigned char> binary(*binary_size);
  if (!in.read(reinterpret_cast<char*>(binary.data()),
               static_cast<std::streamsize>(binary.size()))) {
    return std::nullopt;
  }
  return binary;
}

// Written to a private temporary name, then renamed: readers in other
// processes see the whole file or none. Failures only cost the next run a build.
void store_binary(const std::filesystem::path& file, const std::string& key,
                  const std::vector<unsigned char>& binary) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  const std::filesystem::path temporary =
      fmt::format("{}.{}.{}.tmp", file.string(), getpid(),
                  std::hash<std::thread::id>()(std::this_thread::get_id()));
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(kMagic.data(), static_cast<std::streamsize>(kMagic.size()));
    write_u64(out, key.size());
    out.write(key.data(), static_cast<std::streamsize>(key.size()));
    write_u64(out, binary.size());
    out.write(reinterpret_cast<const char*>(binary.data()),
              static_cast<std::streamsize>(binary.size()));
    if (!out) {
      std::filesystem::remove(temporary, ec);
      return;
    }
  }
  std::filesystem::rename(temporary, file, ec);
  if (ec) std::filesystem::remove(temporary, ec);
}

std::vector<unsigned char> program_binary(cl_program program) {
  size_t size = 0;
  check(clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, nullptr),
        "clGetProgramInfo(CL_PROGRAM_BINARY_SIZES)");
  std::vector<unsigned char> binary(size);
  unsigned char* pointer = binary.data();
  check(clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof pointer, &pointer, nullptr),
        "clGetProgramInfo(CL_PROGRAM_BINARIES)");
  return binary;
}

ProgramHandle from_binary(cl_context context, cl_device_id device,
                          const std::vector<unsigned char>& binary, const std::string& options) {
  const unsigned char* bytes = binary.data();
  const size_t size = binary.size();
  cl_int status = CL_SUCCESS, binary_status = CL_SUCCESS;
  ProgramHandle program(
      clCreateProgramWithBinary(context, 1, &device, &size, &bytes, &binary_status, &status));
  if (status != CL_SUCCESS || binary_status != CL_SUCCESS) return {};
  if (clBuildProgram(program.get(), 1, &device, options.c_str(), nullptr, nullptr) != CL_SUCCESS) {
    return {};
  }
  return program;
}

ProgramHandle from_source(cl_context context, cl_device_id device, std::string_view name,
                          std::string_view source, const std::string& options) {
  const char* text = source.data();
  const size_t length = source.size();
  cl_int status = CL_SUCCESS;
  ProgramHandle program(clCreateProgramWithSource(context, 1, &text, &length, &status));
  check(status, fmt::format("clCreateProgramWithSource({})", name));
  status = clBuildProgram(program.get(), 1, &device, options.c_str(), nullptr, nullptr);
  if (status != CL_SUCCESS) {
    fail(HOPS_ERR_BACKEND, "opencl: building {} ({}) failed: {} ({}); build log:\n{}", name,
         options, error_name(status), status, build_log(program.get(), device));
  }
  return program;
}

}  // namespace

uint64_t fnv1a(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

// The environment is read, never written, by hops.
// NOLINTBEGIN(concurrency-mt-unsafe)
std::filesystem::path cache_directory() {
  if (const char* explicit_dir = std::getenv("HOPS_OPENCL_CACHE_DIR")) return explicit_dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return std::filesystem::path(xdg) / "hops" / "opencl";
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return std::filesystem::path(home) / ".cache" / "hops" / "opencl";
  }
  return {};
}
// NOLINTEND(concurrency-mt-unsafe)

ProgramHandle build_program(cl_context context, cl_device_id device, std::string_view name,
                            std::string_view source, const std::string& options) {
  const std::filesystem::path folder = cache_directory();
  if (folder.empty()) return from_source(context, device, name, source, options);
  const std::string key = cache_key(device, name, source, options);
  const std::filesystem::path file = folder / fmt::format("{:016x}.bin", fnv1a(key));
  if (const auto binary = load_binary(file, key)) {
    if (ProgramHandle program = from_binary(context, device, *binary, options)) return program;
  }
  ProgramHandle program = from_source(context, device, name, source, options);
  store_binary(file, key, program_binary(program.get()));
  return program;
}

}  // namespace hops::opencl
