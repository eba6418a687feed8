/*
 * c_host: a plain C99 host of hops, at the size of one Qwen3.5-35B-A3B GDN
 * layer. It prefills 2048 tokens with gdn_chunk_fwd, decodes 16 more with
 * gdn_recurrent (one call per token, as an engine does), and checks that this
 * equals one gdn_chunk_fwd over all 2064 tokens: the invariant an engine
 * relies on when it hands a sequence from prefill to decode.
 *
 * usage: c_host [path/to/libhops.so]   (default: $HOPS_LIBRARY)
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <hops/hops.h>

enum { H = 16, HV = 32, K = 128, V = 128, PREFILL = 2048, DECODE = 16, TOKENS = PREFILL + DECODE };

static const double kTolerance = 1e-3; /* fp32, chunked vs token by token */

static void die(const char* message, const char* detail) {
  fprintf(stderr, "c_host: %s: %s\n", message, detail);
  exit(1);
}

static void check(const hops_api* api, hops_status status, const char* what) {
  if (status != HOPS_OK) {
    fprintf(stderr, "c_host: %s failed: %s: %s\n", what, api->status_name(status),
            api->last_error());
    exit(1);
  }
}

static double seconds(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* Uniform in [lo, hi) from xorshift64*, so every platform sees the same inputs. */
static float uniform(float lo, float hi) {
  static uint64_t state = 0x9E3779B97F4A7C15u;
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return lo + (hi - lo) * (float)((state * 0x2545F4914F6CDD1Du) >> 40) * 0x1p-24f;
}

static float* alloc_floats(size_t count) {
  float* data = malloc(count * sizeof *data);
  if (!data) die("out of memory", "malloc");
  return data;
}

static float* random_floats(size_t count, float lo, float hi) {
  float* data = alloc_floats(count);
  for (size_t i = 0; i < count; ++i) data[i] = uniform(lo, hi);
  return data;
}

/* A compact f32 host tensor starting `offset` elements into `base`. */
static DLTensor f32_tensor(float* base, size_t offset, int ndim, int64_t* shape) {
  DLTensor t = {base, {kDLCPU, 0}, ndim, {kDLFloat, 32, 1}, shape, NULL, offset * sizeof(float)};
  return t;
}

/* GDN inputs for every token of the run, generated once. */
typedef struct {
  float *q, *k, *v, *g, *beta;
} gdn_inputs;

/* Tokens [first, first + count) of the inputs, as [1,count,...] views into the
 * same buffers (DLPack's byte_offset), so no call copies its inputs. */
typedef struct {
  int64_t qk_shape[4], v_shape[4], gate_shape[3];
  DLTensor q, k, v, g, beta;
} token_range;

static void token_range_init(token_range* r, const gdn_inputs* in, size_t first, int64_t count) {
  r->qk_shape[0] = r->v_shape[0] = r->gate_shape[0] = 1;
  r->qk_shape[1] = r->v_shape[1] = r->gate_shape[1] = count;
  r->qk_shape[2] = H;
  r->qk_shape[3] = K;
  r->v_shape[2] = r->gate_shape[2] = HV;
  r->v_shape[3] = V;
  r->q = f32_tensor(in->q, first * H * K, 4, r->qk_shape);
  r->k = f32_tensor(in->k, first * H * K, 4, r->qk_shape);
  r->v = f32_tensor(in->v, first * HV * V, 4, r->v_shape);
  r->g = f32_tensor(in->g, first * HV, 3, r->gate_shape);
  r->beta = f32_tensor(in->beta, first * HV, 3, r->gate_shape);
}

/* Largest |a[i] - b[i]|; NaN if either holds a NaN. */
static double max_abs_diff(const float* a, const float* b, size_t count) {
  double worst = 0.0;
  for (size_t i = 0; i < count; ++i) {
    const double d = fabs((double)a[i] - (double)b[i]);
    if (isnan(d)) return d;
    if (d > worst) worst = d;
  }
  return worst;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : getenv("HOPS_LIBRARY");
  if (!path) die("usage", "c_host path/to/libhops.so (or set HOPS_LIBRARY)");
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!library) die("cannot load the provider", dlerror());
  /* POSIX guarantees that a dlsym result converts to a function pointer. */
  hops_get_api_fn get_api = (hops_get_api_fn)dlsym(library, "hops_get_api");
  if (!get_api) die(path, "does not export hops_get_api");
  const hops_api* api = get_api(HOPS_ABI_MAJOR);
  if (!api) die(path, "does not speak hops ABI 1");
  if (!HOPS_HAS_FIELD(api, hops_api, find_op)) die(path, "hops_api table too small");
  printf("provider %s: version %s, ABI %u.%u\n", path, api->version, (unsigned)api->abi_major,
         (unsigned)api->abi_minor);

  const hops_op_desc* chunk_desc = api->find_op("gdn_chunk_fwd");
  const hops_op_desc* recurrent_desc = api->find_op("gdn_recurrent");
  if (!chunk_desc || !recurrent_desc) die(path, "lacks gdn_chunk_fwd or gdn_recurrent");
  const hops_gdn_chunk_fwd_fn chunk_fwd = (hops_gdn_chunk_fwd_fn)chunk_desc->fn;
  const hops_gdn_recurrent_fn recurrent = (hops_gdn_recurrent_fn)recurrent_desc->fn;

  /* Unit-range q, k (l2-normalised in the kernel) and v; a decay exp(g) in
   * [0.90, 0.99] per token and a write strength beta in [0.1, 0.9], as the
   * gating of a trained layer produces. */
  gdn_inputs in;
  in.q = random_floats((size_t)TOKENS * H * K, -1.0f, 1.0f);
  in.k = random_floats((size_t)TOKENS * H * K, -1.0f, 1.0f);
  in.v = random_floats((size_t)TOKENS * HV * V, -1.0f, 1.0f);
  in.g = random_floats((size_t)TOKENS * HV, -0.1f, -0.01f);
  in.beta = random_floats((size_t)TOKENS * HV, 0.1f, 0.9f);
  const size_t state_size = (size_t)HV * K * V;
  float* o_prefill = alloc_floats((size_t)PREFILL * HV * V);
  float* o_decode = alloc_floats((size_t)DECODE * HV * V);
  float* o_full = alloc_floats((size_t)TOKENS * HV * V);
  float* state = alloc_floats(state_size); /* the decode pool: S = 1 slot */
  float* final_full = alloc_floats(state_size);
  int64_t state_shape[4] = {1, HV, K, V};
  /* Designated: members a later ABI appends (1.3's comm) start zeroed. */
  const hops_exec exec = {.struct_size = sizeof(hops_exec), .device = {kDLCPU, 0}};
  const double scale = 0.0; /* K^-1/2 */

  /* Prefill writes its final state straight into the decode pool slot. */
  token_range prefill;
  token_range_init(&prefill, &in, 0, PREFILL);
  DLTensor prefill_out = f32_tensor(o_prefill, 0, 4, prefill.v_shape);
  DLTensor pool = f32_tensor(state, 0, 4, state_shape);
  double start = seconds();
  check(api,
        chunk_fwd(&exec, &prefill.q, &prefill.k, &prefill.v, &prefill.g, &prefill.beta, NULL, NULL,
                  NULL, NULL, &prefill_out, &pool, scale, true, false),
        "gdn_chunk_fwd (prefill)");
  const double prefill_seconds = seconds() - start;

  start = seconds();
  for (int t = 0; t < DECODE; ++t) {
    token_range step;
    token_range_init(&step, &in, (size_t)PREFILL + (size_t)t, 1);
    DLTensor step_out = f32_tensor(o_decode, (size_t)t * HV * V, 4, step.v_shape);
    check(api,
          recurrent(&exec, &step.q, &step.k, &step.v, &step.g, &step.beta, &pool, NULL, NULL, NULL,
                    NULL, &step_out, scale, true, false),
          "gdn_recurrent (decode)");
  }
  const double decode_seconds = seconds() - start;

  token_range full;
  token_range_init(&full, &in, 0, TOKENS);
  DLTensor full_out = f32_tensor(o_full, 0, 4, full.v_shape);
  DLTensor full_state = f32_tensor(final_full, 0, 4, state_shape);
  check(api,
        chunk_fwd(&exec, &full.q, &full.k, &full.v, &full.g, &full.beta, NULL, NULL, NULL, NULL,
                  &full_out, &full_state, scale, true, false),
        "gdn_chunk_fwd (all tokens)");

  const double prefill_error = max_abs_diff(o_prefill, o_full, (size_t)PREFILL * HV * V);
  const double output_error =
      max_abs_diff(o_decode, o_full + (size_t)PREFILL * HV * V, (size_t)DECODE * HV * V);
  const double state_error = max_abs_diff(state, final_full, state_size);
  printf("prefill: %d tokens in %.1f ms, %.0f tokens/s\n", PREFILL, 1e3 * prefill_seconds,
         PREFILL / prefill_seconds);
  printf("decode:  %d tokens in %.2f ms, %.0f tokens/s\n", DECODE, 1e3 * decode_seconds,
         DECODE / decode_seconds);
  printf(
      "max |error| vs one call over %d tokens: prefill outputs %.3g, decode outputs %.3g, "
      "final state %.3g\n",
      TOKENS, prefill_error, output_error, state_error);

  free(in.q);
  free(in.k);
  free(in.v);
  free(in.g);
  free(in.beta);
  free(o_prefill);
  free(o_decode);
  free(o_full);
  free(state);
  free(final_full);
  dlclose(library);

  const int ok =
      prefill_error <= kTolerance && output_error <= kTolerance && state_error <= kTolerance;
  if (!ok) fprintf(stderr, "c_host: FAILED: error above %g\n", kTolerance);
  return ok ? 0 : 1;
}
