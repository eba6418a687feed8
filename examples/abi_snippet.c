/* The hops ABI in one page: load a provider, find an op, call it, report errors. */
#include <dlfcn.h>
#include <hops/hops.h>
#include <stdio.h>

int main(int argc, char** argv) {
  void* lib = dlopen(argc > 1 ? argv[1] : "libhops.so", RTLD_NOW | RTLD_LOCAL);
  hops_get_api_fn get_api = lib ? (hops_get_api_fn)dlsym(lib, "hops_get_api") : NULL;
  const hops_api* api = get_api ? get_api(HOPS_ABI_MAJOR) : NULL;
  const hops_op_desc* op = api ? api->find_op("gated_rmsnorm") : NULL;
  if (!op) {
    fprintf(stderr, "no hops provider with gated_rmsnorm\n");
    return 1;
  }

  /* y = x * rsqrt(mean(x^2) + eps) * weight * silu(z), over rows of 64 */
  float x[4][64], z[4][64], w[64], y[4][64];
  for (int i = 0; i < 64; ++i) {
    w[i] = 1.0f;
    for (int r = 0; r < 4; ++r) {
      x[r][i] = (float)(i - 32 * r);
      z[r][i] = 1.0f;
    }
  }
  int64_t rows[2] = {4, 64}, cols[1] = {64};
  DLTensor tx = {x, {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, rows, NULL, 0}; /* strides NULL: compact */
  DLTensor tw = {w, {kDLCPU, 0}, 1, {kDLFloat, 32, 1}, cols, NULL, 0};
  DLTensor tz = tx, ty = tx;
  tz.data = z;
  ty.data = y; /* outputs are allocated by the caller */

  hops_gated_rmsnorm_fn gated_rmsnorm = (hops_gated_rmsnorm_fn)op->fn;
  hops_status status = gated_rmsnorm(NULL, &tx, &tz, &tw, &ty, 1e-6); /* NULL exec: defaults */
  if (status != HOPS_OK) {
    fprintf(stderr, "%s: %s\n", api->status_name(status), api->last_error());
    return 1;
  }
  printf("y[1][0..2] = %g %g %g\n", y[1][0], y[1][1], y[1][2]);
  dlclose(lib);
  return 0;
}
