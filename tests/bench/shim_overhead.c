/*
 * shim_overhead: the C side of tests/bench/bench_shim_overhead.py. Times
 * gated_rmsnorm on [1, 8] float32 host tensors through the typed entry
 * (op->fn) and through the generic api->call, each in blocks of calls, and
 * prints one line per entry: "<entry> <median ns per call over the blocks>".
 *
 * usage: shim_overhead path/to/libhops.so [calls per block] [blocks]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <hops/hops.h>

enum { ROWS = 1, COLS = 8, MAX_BLOCKS = 1000 };

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return 1e9 * (double)t.tv_sec + (double)t.tv_nsec;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static DLTensor tensor(float* data, int32_t ndim, int64_t* shape) {
  DLTensor t = {data, {kDLCPU, 0}, ndim, {kDLFloat, 32, 1}, shape, NULL, 0};
  return t;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s libhops.so [calls per block] [blocks]\n", argv[0]);
    return 2;
  }
  const long calls = argc > 2 ? atol(argv[2]) : 2000;
  int blocks = argc > 3 ? atoi(argv[3]) : 31;
  if (blocks > MAX_BLOCKS) blocks = MAX_BLOCKS;
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    fprintf(stderr, "shim_overhead: %s\n", dlerror());
    return 1;
  }
  hops_get_api_fn get_api = (hops_get_api_fn)dlsym(library, "hops_get_api");
  const hops_api* api = get_api ? get_api(HOPS_ABI_MAJOR) : NULL;
  const hops_op_desc* op = api ? api->find_op("gated_rmsnorm") : NULL;
  if (!op) {
    fprintf(stderr, "shim_overhead: no hops provider with gated_rmsnorm in %s\n", argv[1]);
    return 1;
  }
  float x[ROWS * COLS], z[ROWS * COLS], weight[COLS], y[ROWS * COLS];
  for (int i = 0; i < ROWS * COLS; ++i) {
    x[i] = 0.1f * (float)(i + 1);
    z[i] = 0.05f * (float)(i - 3);
  }
  for (int i = 0; i < COLS; ++i) weight[i] = 1.0f + 0.01f * (float)i;
  int64_t rows_shape[2] = {ROWS, COLS}, weight_shape[1] = {COLS};
  DLTensor tx = tensor(x, 2, rows_shape), tz = tensor(z, 2, rows_shape);
  DLTensor tw = tensor(weight, 1, weight_shape), ty = tensor(y, 2, rows_shape);
  const hops_gated_rmsnorm_fn typed = (hops_gated_rmsnorm_fn)op->fn;
  hops_value args[5];
  args[0].tensor = &tx;
  args[1].tensor = &tz;
  args[2].tensor = &tw;
  args[3].tensor = &ty;
  args[4].f64 = 1e-6;

  static double per_call[2][MAX_BLOCKS];
  for (int b = -1; b < blocks; ++b) { /* block -1 warms up */
    for (int entry = 0; entry < 2; ++entry) {
      const double start = now_ns();
      for (long i = 0; i < calls; ++i) {
        const hops_status status =
            entry == 0 ? typed(NULL, &tx, &tz, &tw, &ty, 1e-6) : api->call(op, NULL, args, 5);
        if (status != HOPS_OK) {
          fprintf(stderr, "shim_overhead: %s\n", api->last_error());
          return 1;
        }
      }
      if (b >= 0) per_call[entry][b] = (now_ns() - start) / (double)calls;
    }
  }
  const char* names[2] = {"typed", "generic"};
  for (int entry = 0; entry < 2; ++entry) {
    qsort(per_call[entry], (size_t)blocks, sizeof(double), by_value);
    printf("%s %.1f\n", names[entry], per_call[entry][blocks / 2]);
  }
  dlclose(library);
  return 0;
}
