// The OpenCL C sources of the kernels (the .cl files beside this one),
// embedded at build time by embed_sources.cmake.
#pragma once

#include <string_view>

namespace hops::opencl::embedded {

std::string_view common_cl();  // helpers every program starts with
std::string_view gdn_cl();
std::string_view gdn_bwd_cl();
std::string_view conv1d_cl();
std::string_view conv1d_bwd_cl();
std::string_view norm_cl();

}  // namespace hops::opencl::embedded
