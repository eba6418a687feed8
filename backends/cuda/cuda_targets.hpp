// Which GPUs a build of libhops_cuda.so runs on, from its target list
// (HOPS_CUDA_ARCHITECTURES, CMake's CUDA_ARCHITECTURES syntax: "90a",
// "80-real;86-real;89-real;90a", "80-virtual"). Read from the list rather
// than asked of the CUDA runtime, which would create a context on loading
// the module. Plain C++: tests/unit/cuda_targets_test.cpp runs without CUDA.
#pragma once

#include <string_view>

namespace hops::cuda {

// Whether `targets` hold code that a device of compute capability
// major.minor runs: a cubin of its major version and no newer minor, or PTX
// of no newer version; arch-specific ("a") code runs on its own version only.
// An entry without "-real" or "-virtual" is both a cubin and PTX.
inline bool carries_code_for(std::string_view targets, int major, int minor) {
  const int device = 10 * major + minor;
  while (!targets.empty()) {
    const size_t end = targets.find(';');
    const std::string_view entry = targets.substr(0, end);
    targets = end == std::string_view::npos ? std::string_view{} : targets.substr(end + 1);
    size_t i = 0;
    int arch = 0;
    for (; i < entry.size() && entry[i] >= '0' && entry[i] <= '9'; ++i)
      arch = 10 * arch + (entry[i] - '0');
    const bool specific = i < entry.size() && entry[i] == 'a';
    const std::string_view kind = entry.substr(i + (specific ? 1 : 0));
    const bool cubin = kind != "-virtual", ptx = kind != "-real";
    if (specific ? arch == device
                 : (cubin && arch / 10 == major && arch <= device) || (ptx && arch <= device))
      return true;
  }
  return false;
}

}  // namespace hops::cuda
