// The OpenCL C sources of the kernels (the .cl files beside this one),
// embedded at build time by embed_sources.cmake. A family's host code names
// its own program ("<family>.cl"); every program starts with common.cl.
#pragma once

#include <string_view>

namespace hops::opencl::embedded {

// The text of backends/opencl/<file>, empty when there is no such file.
std::string_view source(std::string_view file);

}  // namespace hops::opencl::embedded
