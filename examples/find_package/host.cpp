// A C++ host linked against an installed libhops.so (find_package(hops),
// hops::hops): it takes the API table from hops_get_api, lists the backends
// (the modules beside the installed libhops.so show up here) and checks a
// causal conv1d against its definition.
#include <hops/hops.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

namespace {

constexpr int64_t kTokens = 37, kChannels = 24, kWidth = 4;

DLTensor cpu_f32(float* data, int32_t ndim, int64_t* shape) {
  return DLTensor{data, {kDLCPU, 0}, ndim, {kDLFloat, 32, 1}, shape, nullptr, 0};
}

void check(const hops_api& api, hops_status status) {
  if (status != HOPS_OK) throw hops::Error(status, api.last_error());
}

// y[t][d] = sum_j w[d][j] * x[t - (W-1) + j][d], zeros before the first token.
float expected(const std::vector<float>& x, const std::vector<float>& w, int64_t t, int64_t d) {
  float sum = 0;
  for (int64_t j = 0; j < kWidth; ++j) {
    const int64_t source = t - (kWidth - 1) + j;
    if (source >= 0) sum += w[d * kWidth + j] * x[source * kChannels + d];
  }
  return sum;
}

}  // namespace

int main() {
  const hops_api* api = hops_get_api(HOPS_ABI_MAJOR);  // a direct call: libhops.so is linked
  if (!api) {
    std::fprintf(stderr, "find_package_host: libhops.so does not speak ABI %d\n", HOPS_ABI_MAJOR);
    return 1;
  }
  std::printf("hops %s, ABI %u.%u, %d ops\n", api->version, api->abi_major, api->abi_minor,
              api->op_count());
  for (int32_t i = 0; i < api->backend_count(); ++i) {
    const hops_backend_info* backend = api->backend_at(i);
    std::printf("backend %s: %s (%s)\n", backend->name,
                backend->available ? "available" : "unavailable", backend->detail);
  }

  std::vector<float> x(kTokens * kChannels), w(kChannels * kWidth), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.25f - 0.01f * static_cast<float>(i % 7);
  int64_t x_shape[] = {1, kTokens, kChannels}, w_shape[] = {kChannels, kWidth};
  const DLTensor tx = cpu_f32(x.data(), 3, x_shape), tw = cpu_f32(w.data(), 2, w_shape);
  const DLTensor ty = cpu_f32(y.data(), 3, x_shape);

  const hops_op_desc* op = api->find_op("conv1d_fwd");
  if (!op) throw hops::Error(HOPS_ERR_NOT_FOUND, "no conv1d_fwd");
  const auto conv1d_fwd = reinterpret_cast<hops_conv1d_fwd_fn>(op->fn);
  check(*api, conv1d_fwd(nullptr, &tx, &tw, nullptr, nullptr, nullptr, &ty, nullptr,
                         /*activation=*/0, /*channels_first=*/false));

  double worst = 0;
  for (int64_t t = 0; t < kTokens; ++t)
    for (int64_t d = 0; d < kChannels; ++d)
      worst = std::fmax(worst, std::fabs(y[t * kChannels + d] - expected(x, w, t, d)));
  std::printf("conv1d_fwd [1,%lld,%lld] width %lld: max |error| %.3g\n",
              static_cast<long long>(kTokens), static_cast<long long>(kChannels),
              static_cast<long long>(kWidth), worst);
  if (!(worst < 1e-5)) {
    std::fprintf(stderr, "find_package_host: conv1d_fwd differs from its definition\n");
    return 1;
  }
  std::printf("find_package_host: ok\n");
  return 0;
}
