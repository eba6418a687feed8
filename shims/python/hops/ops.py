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


@device_option
def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None,
                  use_qk_l2norm=False, output_final_state=False, A_log=None, dt_bias=None,
                  state_v_first=False):
    """Gated DeltaNet prefill -> (o [B,T,HV,V], final_state [N,HV,K,V] f32 or None).

    With A_log and dt_bias, g and beta are the raw a and b and the gate is fused."""
    batch, tokens, _, key_dim = _dims("gdn_chunk_fwd", "q", q, 4)
    _, _, value_heads, value_dim = _dims("gdn_chunk_fwd", "v", v, 4)
    cu_seqlens = index_array(cu_seqlens, q)
    o = empty(q, (batch, tokens, value_heads, value_dim))
    final_state = None
    if output_final_state:
        shape = _gdn_state_shape(_sequence_count(batch, cu_seqlens), value_heads, key_dim, value_dim,
                                 state_v_first)
        final_state = empty(q, shape, "float32")
    library().op("gdn_chunk_fwd")(
        q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens, A_log=A_log,
        dt_bias=dt_bias, o=o, final_state=final_state, scale=scale or 0.0, use_qk_l2norm=use_qk_l2norm,
        state_v_first=state_v_first)
    return o, final_state


@device_option
def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False):
    """Gated DeltaNet token by token on the state pool `state` [S,HV,K,V] (f32, updated in
    place; sequence n uses slot state_indices[n], -1 skips it) -> o [B,T,HV,V]."""
    batch, tokens, _, _ = _dims("gdn_recurrent", "q", q, 4)
    _, _, value_heads, value_dim = _dims("gdn_recurrent", "v", v, 4)
    o = empty(q, (batch, tokens, value_heads, value_dim))
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


@device_option
def conv1d_fwd(x, weight, bias=None, *, activation="silu", initial_state=None, cu_seqlens=None,
               output_final_state=False, state_len=None, channels_first=False):
    """Depthwise causal conv1d over x [B,T,D] ([B,D,T] if channels_first), weight [D,W]
    -> (y like x, final_state [N,D,state_len] or None).

    state_len defaults to the initial state's length, else W-1."""
    batch, _, _ = _dims("conv1d_fwd", "x", x, 3)
    channels, width = _dims("conv1d_fwd", "weight", weight, 2)
    cu_seqlens = index_array(cu_seqlens, x)
    y = empty_like(x)
    final_state = None
    if output_final_state:
        if state_len is None:
            state_len = initial_state.shape[-1] if initial_state is not None else width - 1
        final_state = empty(x, (_sequence_count(batch, cu_seqlens), channels, state_len))
    library().op("conv1d_fwd")(
        x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens, y=y,
        final_state=final_state, activation=activation_code(activation), channels_first=channels_first)
    return y, final_state


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
