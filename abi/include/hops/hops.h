/*
 * hops.h — the public C ABI of hops, the hybrid-model operator library.
 *
 * A provider is any shared object that exports exactly one symbol:
 *
 *     const hops_api* hops_get_api(uint32_t abi_major);
 *
 * Everything else is reached through the returned table. The rules:
 *  - Every struct that crosses the ABI starts with `size_t struct_size`.
 *    Structs and tables only grow at the end within a major version; a reader
 *    checks `struct_size` before touching a field that a newer minor added
 *    (HOPS_HAS_FIELD below).
 *  - Tensors cross as `const DLTensor*` (DLPack 0.6 and 1.x share the layout);
 *    NULL stands for an absent optional tensor. Outputs are allocated by the
 *    caller; the provider never frees host memory.
 *  - Every call returns a hops_status. On failure `last_error()` holds a
 *    thread-local message naming the op and the argument. A call rejected
 *    for its arguments (INVALID_ARGUMENT, UNSUPPORTED, NOT_FOUND) has
 *    written no output; after a device failure (BACKEND) outputs are lost.
 *
 * Ops are described by hops_op_desc (name, arguments, dtypes, doc) so that
 * hosts can build their bindings from the table. Each op can be called either
 * through its typed entry point `desc->fn` (signature: `hops_status fn(const
 * hops_exec*, <one parameter per argument, in order>)` with tensors as
 * `const DLTensor*`, i64 as `int64_t`, f64 as `double`, bool as `bool`) or
 * through the generic `api->call`.
 *
 * C99, self-contained apart from <dlpack/dlpack.h>.
 */
#ifndef HOPS_HOPS_H_
#define HOPS_HOPS_H_

#include <dlpack/dlpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HOPS_ABI_MAJOR 1
#define HOPS_ABI_MINOR 3

/* True when `s` (a pointer to any hops struct) is large enough to hold `field`. */
#define HOPS_HAS_FIELD(s, type, field) \
  ((s)->struct_size >= offsetof(type, field) + sizeof(((type*)0)->field))

/* ---- status ------------------------------------------------------------- */

typedef int32_t hops_status;
enum {
  HOPS_OK = 0,
  HOPS_ERR_INVALID_ARGUMENT = 1, /* wrong dtype, shape, stride, device, NULL, range, aliasing */
  HOPS_ERR_UNSUPPORTED = 2,      /* valid call that this provider/backend does not implement */
  HOPS_ERR_OUT_OF_MEMORY = 3,    /* scratch could not be allocated */
  HOPS_ERR_BACKEND = 4,          /* the device runtime reported an error */
  HOPS_ERR_NOT_FOUND = 5,        /* unknown op name or index */
  HOPS_ERR_INTERNAL = 6          /* a bug in the provider; the message says where */
};

/* ---- dtypes, as a bit mask in argument descriptors ---------------------- */

enum {
  HOPS_DTYPE_F32 = 1u << 0,
  HOPS_DTYPE_F16 = 1u << 1,
  HOPS_DTYPE_BF16 = 1u << 2,
  HOPS_DTYPE_F64 = 1u << 3,
  HOPS_DTYPE_I32 = 1u << 4,
  HOPS_DTYPE_I64 = 1u << 5
};
#define HOPS_DTYPE_FLOATS (HOPS_DTYPE_F32 | HOPS_DTYPE_F16 | HOPS_DTYPE_BF16)
#define HOPS_DTYPE_INDEX (HOPS_DTYPE_I32 | HOPS_DTYPE_I64)

/* ---- execution context -------------------------------------------------- */

/* HOPS_EXEC_DETERMINISTIC asks for bitwise reproducible results run to run
 * (and, on the CPU, for any num_threads). A provider either honours it or
 * refuses the call with HOPS_ERR_UNSUPPORTED; it never ignores it. Every
 * kernel of this library is deterministic with or without the flag (fixed
 * reduction orders, no atomics), so here it always holds. A flag bit this
 * provider does not know is rejected (HOPS_ERR_INVALID_ARGUMENT, 'exec'). */
enum {
  HOPS_EXEC_DETERMINISTIC = 1u << 0 /* bitwise reproducible results run to run */
};

/* Where and how an op runs. Passing NULL means: the device of the tensors,
 * its default stream, no flags. */
typedef struct hops_exec {
  size_t struct_size;
  DLDevice device;     /* must match the device of every tensor argument, except that
                          index tensors (int32/int64 only: cu_seqlens, state_indices)
                          may also be in host memory (kDLCPU, kDLCUDAHost): those are
                          read and validated on the host before any work is queued */
  void* stream;        /* cudaStream_t, cl_command_queue, or NULL (default) */
  uint64_t flags;      /* HOPS_EXEC_* */
  int32_t num_threads; /* CPU: upper bound on worker threads, 0 = all */
  /* (1.3) The ranks a collective op (moe_ep_dispatch, moe_ep_combine) runs
     across; NULL: this process alone (one rank). Other ops ignore it. */
  const struct hops_comm* comm;
} hops_exec;

/* ---- communicators (1.3) ------------------------------------------------ */

/* A communicator of an engine the host already runs: hops never creates
 * ranks or transports of its own. Every rank passes its own descriptor of the
 * same communicator. The MPI engine is the libhops_mpi.so module; NCCL is
 * opened at run time (libnccl.so.2); hops.info() and the backend list say
 * whether each is available. */
enum {
  HOPS_COMM_MPI = 1, /* handle: the address of an MPI_Comm (MPI_Comm*) */
  HOPS_COMM_NCCL = 2 /* handle: the ncclComm_t itself */
};
typedef struct hops_comm {
  size_t struct_size;
  int32_t kind; /* HOPS_COMM_* */
  int32_t rank; /* this process's rank in the communicator, 0 <= rank < size */
  int32_t size; /* the number of ranks */
  void* handle; /* the engine's own handle, as `kind` says */
} hops_comm;

/* ---- descriptors -------------------------------------------------------- */

typedef enum hops_arg_kind {
  HOPS_ARG_TENSOR_IN = 0,    /* read only */
  HOPS_ARG_TENSOR_OUT = 1,   /* written, never read */
  HOPS_ARG_TENSOR_INOUT = 2, /* read and updated in place */
  HOPS_ARG_I64 = 3,
  HOPS_ARG_F64 = 4,
  HOPS_ARG_BOOL = 5
} hops_arg_kind;

typedef struct hops_arg_desc {
  size_t struct_size;
  const char* name;    /* e.g. "q" */
  int32_t kind;        /* hops_arg_kind */
  int32_t optional;    /* tensors: 1 when NULL is accepted */
  uint32_t dtypes;     /* tensors: HOPS_DTYPE_* mask of accepted dtypes */
  int64_t default_i64; /* I64 and BOOL: the value a host should pass by default */
  double default_f64;  /* F64: likewise */
  const char* shape;   /* tensors: symbolic shape, e.g. "[B,T,H,K]" */
  const char* doc;     /* one line */
  /* 1.1: the ABI minor in which the argument was added to its op (the op's own
   * since_minor for the arguments it had from the start). Arguments added
   * after the op's first version are trailing and optional (or scalars); the
   * typed entry point `fn` takes only the first version's arguments, and
   * api->call accepts a shorter list (missing trailing arguments get their
   * defaults). Absent (struct_size too small): the op's since_minor. */
  uint32_t since_minor;
} hops_arg_desc;

typedef void (*hops_fn)(void); /* cast to the op's typed signature before calling */

typedef struct hops_op_desc {
  size_t struct_size;
  const char* name;     /* e.g. "gdn_chunk_fwd" */
  uint32_t since_major; /* ABI version in which the op appeared */
  uint32_t since_minor;
  const char* doc;           /* one line */
  int32_t num_args;          /* not counting the leading hops_exec */
  const hops_arg_desc* args; /* use hops_op_arg(op, i): the stride is args->struct_size */
  hops_fn fn;                /* typed entry point */
} hops_op_desc;

static inline const hops_arg_desc* hops_op_arg(const hops_op_desc* op, int32_t i) {
  return (const hops_arg_desc*)((const char*)op->args + (size_t)i * op->args->struct_size);
}

/* One argument of the generic call, in descriptor order. */
typedef union hops_value {
  const DLTensor* tensor;
  int64_t i64;
  double f64;
  bool boolean;
} hops_value;

/* ---- backends and memory ------------------------------------------------ */

typedef struct hops_backend_info {
  size_t struct_size;
  const char* name;    /* "cpu", "opencl", "cuda" */
  int32_t device_type; /* DLDeviceType it serves */
  int32_t available;   /* 1 when usable on this machine */
  const char* detail;  /* module path and device, or why it is unavailable */
} hops_backend_info;

/* Optional host allocator for scratch memory (e.g. the framework's caching
 * allocator), used for every device from the call after set_allocator on:
 *  - CPU: scratch blocks come from alloc (stream NULL) and stay in the
 *    plugin's pool for reuse; they go back through free when the allocator
 *    is replaced or the library unloads.
 *  - CUDA: each call's scratch comes from alloc (device, bytes, the call's
 *    stream) and goes back through free on the same stream as soon as the
 *    call's work is queued, so the plugin holds no device memory between
 *    calls. alloc/free must be stream-ordered (memory freed on a stream may
 *    be reused only by work queued after it on that stream), as
 *    cudaMallocAsync/cudaFreeAsync and torch's caching allocator are.
 *  - OpenCL: not used; the module's own buffer pool serves scratch (a cl_mem
 *    is not a pointer, and its blocks are recycled by event completion).
 * The allocator in force when a call begins serves that whole call; a
 * block always returns to the allocator that made it, so ctx must stay
 * valid until the calls that used it have finished. alloc returns NULL
 * for out of memory (the call fails with HOPS_ERR_OUT_OF_MEMORY). Without
 * an allocator each device keeps its own pool, so that steady-state calls
 * allocate nothing. */
typedef struct hops_allocator {
  size_t struct_size;
  void* ctx;
  void* (*alloc)(void* ctx, DLDevice device, size_t bytes, void* stream);
  void (*free)(void* ctx, DLDevice device, void* ptr, size_t bytes, void* stream);
} hops_allocator;

/* ---- the table ---------------------------------------------------------- */

typedef struct hops_api {
  size_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;
  const char* version; /* provider version string, e.g. "0.1.0" */

  /* Thread-local message of the last failed call on this thread ("" if none). */
  const char* (*last_error)(void);
  const char* (*status_name)(hops_status status);

  int32_t (*op_count)(void);
  const hops_op_desc* (*op_at)(int32_t index);      /* NULL when out of range */
  const hops_op_desc* (*find_op)(const char* name); /* NULL when unknown */
  /* 1 when `op` runs on `device` with primary input dtype `dtype`, else 0. */
  int32_t (*supports)(const char* op, DLDevice device, DLDataType dtype);

  /* Generic entry: args[i] matches hops_op_arg(op, i). num_args may be
   * smaller than op->num_args (a host built against an older minor): the
   * missing trailing arguments get their defaults (NULL tensors, the
   * descriptor's default_* scalars); a missing required tensor is
   * HOPS_ERR_INVALID_ARGUMENT naming it. */
  hops_status (*call)(const hops_op_desc* op, const hops_exec* exec, const hops_value* args,
                      int32_t num_args);

  int32_t (*backend_count)(void);
  const hops_backend_info* (*backend_at)(int32_t index);

  /* NULL restores the built-in per-device pools. */
  hops_status (*set_allocator)(const hops_allocator* allocator);

  /* 1.1: whether `call` would run these arguments, without running anything or
   * touching any buffer: validates them exactly as `call` does, then asks the
   * backends of the device whether a kernel takes these shapes, strides and
   * alignments. HOPS_OK, HOPS_ERR_INVALID_ARGUMENT, or HOPS_ERR_UNSUPPORTED with
   * every backend's reason in last_error(). Check HOPS_HAS_FIELD(api, hops_api,
   * supports_call) first. */
  hops_status (*supports_call)(const hops_op_desc* op, const hops_exec* exec,
                               const hops_value* args, int32_t num_args);
} hops_api;

/* The one exported symbol. NULL when abi_major is not one this provider speaks. */
const hops_api* hops_get_api(uint32_t abi_major);
typedef const hops_api* (*hops_get_api_fn)(uint32_t abi_major);

/* ---- typed signatures of the ops (see docs/OPS.md for the math) ---------- */

typedef hops_status (*hops_gdn_chunk_fwd_fn)(
    const hops_exec* exec, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* g, const DLTensor* beta, const DLTensor* initial_state,
    const DLTensor* cu_seqlens, const DLTensor* A_log, const DLTensor* dt_bias, const DLTensor* o,
    const DLTensor* final_state, double scale, bool use_qk_l2norm, bool state_v_first);

typedef hops_status (*hops_gdn_recurrent_fn)(const hops_exec* exec, const DLTensor* q,
                                             const DLTensor* k, const DLTensor* v,
                                             const DLTensor* g, const DLTensor* beta,
                                             const DLTensor* state, const DLTensor* state_indices,
                                             const DLTensor* cu_seqlens, const DLTensor* A_log,
                                             const DLTensor* dt_bias, const DLTensor* o,
                                             double scale, bool use_qk_l2norm, bool state_v_first);

typedef hops_status (*hops_gdn_gating_fn)(const hops_exec* exec, const DLTensor* A_log,
                                          const DLTensor* a, const DLTensor* b,
                                          const DLTensor* dt_bias, const DLTensor* g,
                                          const DLTensor* beta, double softplus_beta,
                                          double softplus_threshold);

typedef hops_status (*hops_gated_rmsnorm_fn)(const hops_exec* exec, const DLTensor* x,
                                             const DLTensor* z, const DLTensor* weight,
                                             const DLTensor* y, double eps);

typedef hops_status (*hops_conv1d_fwd_fn)(const hops_exec* exec, const DLTensor* x,
                                          const DLTensor* weight, const DLTensor* bias,
                                          const DLTensor* initial_state, const DLTensor* cu_seqlens,
                                          const DLTensor* y, const DLTensor* final_state,
                                          int64_t activation, bool channels_first);

typedef hops_status (*hops_conv1d_update_fn)(const hops_exec* exec, const DLTensor* x,
                                             const DLTensor* state, const DLTensor* weight,
                                             const DLTensor* bias, const DLTensor* state_indices,
                                             const DLTensor* y, int64_t activation);

/* Backward of gated_rmsnorm: dx, dz (dtype of x) and dweight (dtype of weight,
 * summed over all rows) from dy. */
typedef hops_status (*hops_gated_rmsnorm_bwd_fn)(const hops_exec* exec, const DLTensor* x,
                                                 const DLTensor* z, const DLTensor* weight,
                                                 const DLTensor* dy, const DLTensor* dx,
                                                 const DLTensor* dz, const DLTensor* dweight,
                                                 double eps);

/* Backward of conv1d_fwd: recomputes the activation from x; d_final_state is
 * the gradient that flowed into the forward's final state. */
typedef hops_status (*hops_conv1d_bwd_fn)(const hops_exec* exec, const DLTensor* x,
                                          const DLTensor* weight, const DLTensor* bias,
                                          const DLTensor* initial_state, const DLTensor* cu_seqlens,
                                          const DLTensor* dy, const DLTensor* d_final_state,
                                          const DLTensor* dx, const DLTensor* dweight,
                                          const DLTensor* dbias, const DLTensor* d_initial_state,
                                          int64_t activation, bool channels_first);

/* Backward of gdn_chunk_fwd (without fused gating): from d_o (the descriptor's
 * "do", the gradient of o) and d_final_state, the gradients dq, dk (of the
 * un-normalised q, k with use_qk_l2norm), dv, dg, dbeta and dh0 (only with
 * initial_state). */
typedef hops_status (*hops_gdn_chunk_bwd_fn)(
    const hops_exec* exec, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* g, const DLTensor* beta, const DLTensor* initial_state,
    const DLTensor* cu_seqlens, const DLTensor* d_o, const DLTensor* d_final_state,
    const DLTensor* dq, const DLTensor* dk, const DLTensor* dv, const DLTensor* dg,
    const DLTensor* dbeta, const DLTensor* dh0, double scale, bool use_qk_l2norm,
    bool state_v_first);

/* Attention (ABI 1.2). attn_prefill: o (and lse, f32 [B,Hq,Tq], when given)
 * from q [B,Tq,Hq,D], k, v [B,Tk,Hkv,D], an optional output gate and varlen
 * offsets (cu_seqlens_q and cu_seqlens_k together, B == 1); scale 0 means
 * D^-1/2; causal aligns bottom-right. */
typedef hops_status (*hops_attn_prefill_fn)(const hops_exec* exec, const DLTensor* q,
                                            const DLTensor* k, const DLTensor* v,
                                            const DLTensor* gate, const DLTensor* cu_seqlens_q,
                                            const DLTensor* cu_seqlens_k, const DLTensor* o,
                                            const DLTensor* lse, double scale, bool causal);

/* Backward of attn_prefill from its (gated) output o, lse and d_o (the
 * descriptor's "do"): dq, dk, dv, and dgate (only with gate). */
typedef hops_status (*hops_attn_prefill_bwd_fn)(
    const hops_exec* exec, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* gate, const DLTensor* o, const DLTensor* lse, const DLTensor* d_o,
    const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k, const DLTensor* dq,
    const DLTensor* dk, const DLTensor* dv, const DLTensor* dgate, double scale, bool causal);

/* Decode: q [N,L,Hq,D] against a paged cache [num_blocks,block_size,Hkv,D]
 * through block_table [N,max_blocks] and seq_lens [N] (the L new tokens
 * included, causal among them). */
typedef hops_status (*hops_attn_decode_fn)(const hops_exec* exec, const DLTensor* q,
                                           const DLTensor* k_cache, const DLTensor* v_cache,
                                           const DLTensor* block_table, const DLTensor* seq_lens,
                                           const DLTensor* o, double scale);

/* Writes k, v [T,Hkv,D] into the paged caches in place at slot_mapping [T]
 * (slot = block * block_size + offset; -1 skips the row). */
typedef hops_status (*hops_kv_cache_write_fn)(const hops_exec* exec, const DLTensor* k,
                                              const DLTensor* v, const DLTensor* k_cache,
                                              const DLTensor* v_cache,
                                              const DLTensor* slot_mapping);

/* Mixture of experts (ABI 1.2). moe_route: topk_weights, topk_ids [T,k] from
 * logits [T,E]; scoring 0 softmax, 1 sigmoid. */
typedef hops_status (*hops_moe_route_fn)(const hops_exec* exec, const DLTensor* logits,
                                         const DLTensor* topk_weights, const DLTensor* topk_ids,
                                         bool normalize, int64_t scoring);

/* moe_dispatch: rows [T*k,Hd] grouped by expert, counts [E], row_map [T,k]. */
typedef hops_status (*hops_moe_dispatch_fn)(const hops_exec* exec, const DLTensor* x,
                                            const DLTensor* topk_ids, const DLTensor* rows,
                                            const DLTensor* counts, const DLTensor* row_map);

/* moe_expert_mlp: out [R,Hd] from rows grouped by expert, counts [E],
 * gate_up_proj [E,2I,Hd] and down_proj [E,Hd,I]. */
typedef hops_status (*hops_moe_expert_mlp_fn)(const hops_exec* exec, const DLTensor* rows,
                                              const DLTensor* counts, const DLTensor* gate_up_proj,
                                              const DLTensor* down_proj, const DLTensor* out);

/* moe_combine: y [T,Hd] = sum_j topk_weights[t,j] rows[row_map[t,j]]. */
typedef hops_status (*hops_moe_combine_fn)(const hops_exec* exec, const DLTensor* rows,
                                           const DLTensor* row_map, const DLTensor* topk_weights,
                                           const DLTensor* y);

typedef hops_status (*hops_moe_dispatch_bwd_fn)(const hops_exec* exec, const DLTensor* d_rows,
                                                const DLTensor* row_map, const DLTensor* dx);

typedef hops_status (*hops_moe_expert_mlp_bwd_fn)(
    const hops_exec* exec, const DLTensor* rows, const DLTensor* counts,
    const DLTensor* gate_up_proj, const DLTensor* down_proj, const DLTensor* d_out,
    const DLTensor* d_rows, const DLTensor* d_gate_up_proj, const DLTensor* d_down_proj);

typedef hops_status (*hops_moe_combine_bwd_fn)(const hops_exec* exec, const DLTensor* rows,
                                               const DLTensor* row_map,
                                               const DLTensor* topk_weights, const DLTensor* dy,
                                               const DLTensor* d_rows,
                                               const DLTensor* d_topk_weights);

/* Expert parallelism over the ranks of exec->comm (W ranks, each owning
 * El = E / W consecutive experts). moe_ep_dispatch: each kept slot's token
 * row goes to the rank owning its expert; rows [C,Hd] receives them grouped by
 * local expert, then by source rank, token and slot; counts [El];
 * row_map [T,k], send_counts [E] and recv_counts [W,El] are combine's handle. */
typedef hops_status (*hops_moe_ep_dispatch_fn)(const hops_exec* exec, const DLTensor* x,
                                               const DLTensor* topk_ids, const DLTensor* rows,
                                               const DLTensor* counts, const DLTensor* row_map,
                                               const DLTensor* send_counts,
                                               const DLTensor* recv_counts);

/* moe_ep_combine: the expert outputs [C,Hd] go back to their tokens' ranks;
 * y [T,Hd] = sum_j topk_weights[t,j] * (slot j's output), in slot order. */
typedef hops_status (*hops_moe_ep_combine_fn)(const hops_exec* exec, const DLTensor* expert_out,
                                              const DLTensor* row_map, const DLTensor* topk_weights,
                                              const DLTensor* send_counts,
                                              const DLTensor* recv_counts, const DLTensor* y);

/* conv1d activation codes */
enum { HOPS_ACTIVATION_NONE = 0, HOPS_ACTIVATION_SILU = 1 };

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* HOPS_HOPS_H_ */
