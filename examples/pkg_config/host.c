/*
 * A C99 host linked against an installed libhops.so, its flags from
 * pkg-config (hops.pc): it checks gated_rmsnorm against its definition,
 * y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over rows.
 */
#include <math.h>
#include <stdio.h>

#include <hops/hops.h>

enum { ROWS = 6, COLS = 96 };

int main(void) {
  const hops_api* api = hops_get_api(HOPS_ABI_MAJOR);
  const hops_op_desc* op = api ? api->find_op("gated_rmsnorm") : NULL;
  if (!op) {
    fprintf(stderr, "pkg_config_host: libhops.so has no gated_rmsnorm for ABI %d\n",
            HOPS_ABI_MAJOR);
    return 1;
  }
  printf("hops %s, ABI %u.%u\n", api->version, api->abi_major, api->abi_minor);

  static float x[ROWS][COLS], z[ROWS][COLS], w[COLS], y[ROWS][COLS];
  for (int c = 0; c < COLS; ++c) {
    w[c] = 0.5f + 0.01f * (float)c;
    for (int r = 0; r < ROWS; ++r) {
      x[r][c] = sinf(0.3f * (float)(r * COLS + c));
      z[r][c] = cosf(0.2f * (float)(r + c));
    }
  }
  int64_t rows[2] = {ROWS, COLS}, cols[1] = {COLS};
  DLTensor tx = {x, {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, rows, NULL, 0};
  DLTensor tz = tx, ty = tx, tw = {w, {kDLCPU, 0}, 1, {kDLFloat, 32, 1}, cols, NULL, 0};
  tz.data = z;
  ty.data = y;
  const double eps = 1e-6;
  hops_status status = ((hops_gated_rmsnorm_fn)op->fn)(NULL, &tx, &tz, &tw, &ty, eps);
  if (status != HOPS_OK) {
    fprintf(stderr, "pkg_config_host: %s: %s\n", api->status_name(status), api->last_error());
    return 1;
  }

  double worst = 0;
  for (int r = 0; r < ROWS; ++r) {
    double squares = 0;
    for (int c = 0; c < COLS; ++c) squares += (double)x[r][c] * x[r][c];
    const double scale = 1 / sqrt(squares / COLS + eps);
    for (int c = 0; c < COLS; ++c) {
      const double silu = z[r][c] / (1 + exp(-(double)z[r][c]));
      worst = fmax(worst, fabs(y[r][c] - x[r][c] * scale * w[c] * silu));
    }
  }
  printf("gated_rmsnorm [%d,%d]: max |error| %.3g\n", ROWS, COLS, worst);
  if (!(worst < 1e-5)) {
    fprintf(stderr, "pkg_config_host: gated_rmsnorm differs from its definition\n");
    return 1;
  }
  printf("pkg_config_host: ok\n");
  return 0;
}
