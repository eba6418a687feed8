"""hops.ops: every op of the provider as a framework-neutral function.

Inputs are numpy arrays or torch tensors (anything with __dlpack__, strided
views included); outputs are allocated in the framework and on the device of
the op's primary input and returned. This layer only maps keywords onto the
descriptor's arguments and allocates outputs with the shapes of docs/OPS.md;
validation is the provider's (its errors arrive as hops.HopsError).

Ops the provider lists that have no wrapper here are still attributes of this
module: the generated binding itself, called with caller-allocated outputs.

Every wrapper also takes device="opencl": numpy arrays then run on the OpenCL
backend, copied in and out (hops.opencl).
"""

from ._bindings import OpBinding, library
from ._frameworks import empty, empty_like, index_array
from .errors import HopsError, unsupported
from .opencl import device_option

_ACTIVATIONS = {None: 0, False: 0, "none": 0, "identity": 0, True: 1, "silu": 1, "swish": 1}


def activation_code(activation) -> int:
    """conv1d activation name -> the ABI's code (HOPS_ACTIVATION_*)."""
    try:
        return _ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise unsupported(f"conv1d activation {activation!r}: hops implements none and silu") from None


def _dims(op: str, arg: str, x, rank: int) -> tuple[int, ...]:
    """x's shape, after checking its rank against the descriptor's symbolic shape."""
    if x is None or len(x.shape) != rank:
        spec = next(a for a in library().op(op).args if a.name == arg)
        got = "nothing" if x is None else f"shape {tuple(x.shape)}"
        raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{op}: argument '{arg}': expected {spec.shape}, got {got}")
    return tuple(x.shape)


def _sequence_count(batch: int, cu_seqlens) -> int:
    return batch if cu_seqlens is None else max(int(cu_seqlens.shape[0]) - 1, 0)


def _gdn_state_shape(n, hv, k, v, state_v_first) -> tuple[int, ...]:
    return (n, hv, v, k) if state_v_first else (n, hv, k, v)


def _gdn_outputs(op, q, v, cu_seqlens=None, output_final_state=False, state_v_first=False):
    """(o, final_state or None) as the GDN forwards allocate them (shared with hops.torch_ops' fake kernels)."""
    batch, tokens, _, key_dim = _dims(op, "q", q, 4)
    _, _, value_heads, value_dim = _dims(op, "v", v, 4)
    o = empty(q, (batch, tokens, value_heads, value_dim))
    final_state = None
    if output_final_state:
        shape = _gdn_state_shape(_sequence_count(batch, cu_seqlens), value_heads, key_dim, value_dim,
                                 state_v_first)
        final_state = empty(q, shape, "float32")
    return o, final_state


@device_option
def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None,
                  use_qk_l2norm=False, output_final_state=False, A_log=None, dt_bias=None,
                  state_v_first=False):
    """Gated DeltaNet prefill -> (o [B,T,HV,V], final_state [N,HV,K,V] f32 or None).

    With A_log and dt_bias, g and beta are the raw a and b and the gate is fused."""
    cu_seqlens = index_array(cu_seqlens, q)
    o, final_state = _gdn_outputs("gdn_chunk_fwd", q, v, cu_seqlens, output_final_state, state_v_first)
    library().op("gdn_chunk_fwd")(
        q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens, A_log=A_log,
        dt_bias=dt_bias, o=o, final_state=final_state, scale=scale or 0.0, use_qk_l2norm=use_qk_l2norm,
        state_v_first=state_v_first)
    return o, final_state


def _gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state):
    """(dq, dk, dv, dg, dbeta, dh0 or None): each gradient like its input (dh0 float32)."""
    dh0 = None if initial_state is None else empty_like(initial_state, "float32")
    return (*(empty_like(x) for x in (q, k, v, g, beta)), dh0)


@device_option
def gdn_chunk_bwd(q, k, v, g, beta, do, *, scale=None, initial_state=None, cu_seqlens=None,
                  d_final_state=None, use_qk_l2norm=False, state_v_first=False):
    """Backward of gdn_chunk_fwd (no fused gate): from do (the gradient of o) and d_final_state
    (of the final state; None: zero) -> (dq, dk, dv, dg, dbeta, dh0 or None); dh0 [N,HV,K,V]
    f32 when initial_state is given. The forward's inputs and options, as they were."""
    cu_seqlens = index_array(cu_seqlens, q)
    dq, dk, dv, dg, dbeta, dh0 = _gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state)
    library().op("gdn_chunk_bwd")(
        q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do,
        d_final_state=d_final_state, dq=dq, dk=dk, dv=dv, dg=dg, dbeta=dbeta, dh0=dh0, scale=scale or 0.0,
        use_qk_l2norm=use_qk_l2norm, state_v_first=state_v_first)
    return dq, dk, dv, dg, dbeta, dh0


@device_option
def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False):
    """Gated DeltaNet token by token on the state pool `state` [S,HV,K,V] (f32, updated in
    place; sequence n uses slot state_indices[n], -1 skips it) -> o [B,T,HV,V]."""
    o, _ = _gdn_outputs("gdn_recurrent", q, v)
    library().op("gdn_recurrent")(
        q=q, k=k, v=v, g=g, beta=beta, state=state, state_indices=index_array(state_indices, q),
        cu_seqlens=index_array(cu_seqlens, q), A_log=A_log, dt_bias=dt_bias, o=o, scale=scale or 0.0,
        use_qk_l2norm=use_qk_l2norm, state_v_first=state_v_first)
    return o


@device_option
def gdn_gating(A_log, a, b, dt_bias, *, softplus_beta=1.0, softplus_threshold=20.0):
    """The Qwen3.5 gate -> (g, beta) in a's shape: g = -exp(A_log) softplus(a + dt_bias) in
    float32 (log decays are summed over long sequences), beta = sigmoid(b) in b's dtype."""
    g = empty_like(a, "float32")
    beta = empty_like(b)
    library().op("gdn_gating")(A_log=A_log, a=a, b=b, dt_bias=dt_bias, g=g, beta=beta,
                               softplus_beta=softplus_beta, softplus_threshold=softplus_threshold)
    return g, beta


@device_option
def gated_rmsnorm(x, z, weight, *, eps=1e-6):
    """y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over the last dim, in x's dtype."""
    y = empty_like(x)
    library().op("gated_rmsnorm")(x=x, z=z, weight=weight, y=y, eps=eps)
    return y


def _gated_rmsnorm_bwd_outputs(x, z, weight):
    return empty_like(x), empty_like(z), empty_like(weight)


@device_option
def gated_rmsnorm_bwd(x, z, weight, dy, *, eps=1e-6):
    """Backward of gated_rmsnorm: dy -> (dx, dz, dweight), each like its input (dweight
    summed over the rows)."""
    dx, dz, dweight = _gated_rmsnorm_bwd_outputs(x, z, weight)
    library().op("gated_rmsnorm_bwd")(x=x, z=z, weight=weight, dy=dy, dx=dx, dz=dz, dweight=dweight, eps=eps)
    return dx, dz, dweight


def _conv1d_state_len(weight, initial_state, state_len):
    """conv1d_fwd's final-state length: as asked, else the initial state's, else W-1."""
    if state_len is not None:
        return state_len
    return initial_state.shape[-1] if initial_state is not None else weight.shape[-1] - 1


def _conv1d_outputs(x, weight, initial_state, cu_seqlens, output_final_state, state_len):
    """(y, final_state or None) as conv1d_fwd allocates them (shared with hops.torch_ops' fake kernels)."""
    batch, _, _ = _dims("conv1d_fwd", "x", x, 3)
    channels, _ = _dims("conv1d_fwd", "weight", weight, 2)
    y = empty_like(x)
    final_state = None
    if output_final_state:
        final_state = empty(x, (_sequence_count(batch, cu_seqlens), channels,
                                _conv1d_state_len(weight, initial_state, state_len)))
    return y, final_state


@device_option
def conv1d_fwd(x, weight, bias=None, *, activation="silu", initial_state=None, cu_seqlens=None,
               output_final_state=False, state_len=None, channels_first=False):
    """Depthwise causal conv1d over x [B,T,D] ([B,D,T] if channels_first), weight [D,W]
    -> (y like x, final_state [N,D,state_len] or None).

    state_len defaults to the initial state's length, else W-1."""
    cu_seqlens = index_array(cu_seqlens, x)
    y, final_state = _conv1d_outputs(x, weight, initial_state, cu_seqlens, output_final_state, state_len)
    library().op("conv1d_fwd")(
        x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens, y=y,
        final_state=final_state, activation=activation_code(activation), channels_first=channels_first)
    return y, final_state


def _conv1d_bwd_outputs(x, weight, bias, initial_state):
    """(dx, dweight, dbias or None, d_initial_state or None), each like its input."""
    return (empty_like(x), empty_like(weight), None if bias is None else empty_like(bias),
            None if initial_state is None else empty_like(initial_state))


@device_option
def conv1d_bwd(x, weight, dy, *, bias=None, activation="silu", initial_state=None, cu_seqlens=None,
               d_final_state=None, channels_first=False):
    """Backward of conv1d_fwd: from dy (the gradient of y) and d_final_state (of the final
    state, its length L1; None: no gradient) -> (dx, dweight, dbias or None, d_initial_state
    or None), each like its input. The forward's inputs and options, as they were."""
    cu_seqlens = index_array(cu_seqlens, x)
    dx, dweight, dbias, d_initial_state = _conv1d_bwd_outputs(x, weight, bias, initial_state)
    library().op("conv1d_bwd")(
        x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens, dy=dy,
        d_final_state=d_final_state, dx=dx, dweight=dweight, dbias=dbias, d_initial_state=d_initial_state,
        activation=activation_code(activation), channels_first=channels_first)
    return dx, dweight, dbias, d_initial_state


@device_option
def conv1d_update(x, state, weight, bias=None, *, activation="silu", state_indices=None):
    """Causal conv1d decode: x [N,D] or [N,L,D], state pool [S,D,state_len] updated in place
    (sequence n uses slot state_indices[n], -1 skips it) -> y like x."""
    y = empty_like(x)
    library().op("conv1d_update")(
        x=x, state=state, weight=weight, bias=bias, state_indices=index_array(state_indices, x), y=y,
        activation=activation_code(activation))
    return y


def __getattr__(name: str) -> OpBinding:
    """Ops without a wrapper: the generated binding (outputs passed by the caller)."""
    if name.startswith("_") or name not in library().ops:
        raise AttributeError(f"module 'hops.ops' has no attribute '{name}'")
    return library().ops[name]


def __dir__() -> list[str]:
    try:
        provided = set(library().ops)
    except HopsError:  # no provider: list what this module defines
        provided = set()
    return sorted(set(globals()) | provided)
