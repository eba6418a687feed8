"""hops for torch: the ops as torch.library custom ops (torch.ops.hops.*), with autograd
through the plugin's backward kernels and fake (meta) kernels, so that autograd and
torch.compile (fullgraph included) see one op where hops runs.

| custom op | forward | backward |
|---|---|---|
| hops::gdn_chunk | gdn_chunk_fwd -> (o, final_state) | hops::gdn_chunk_bwd (gdn_chunk_bwd) |
| hops::causal_conv1d | conv1d_fwd -> (y, final_state) | hops::causal_conv1d_bwd (conv1d_bwd) |
| hops::gated_rmsnorm | gated_rmsnorm -> y | hops::gated_rmsnorm_bwd (gated_rmsnorm_bwd) |
| hops::gdn_recurrent | gdn_recurrent, state updated in place | none (decode) |
| hops::causal_conv1d_update | conv1d_update, state updated in place | none (decode) |

The functions of this module have hops.ops' names and signatures and return the same
values; the drop-ins (hops.fla, hops.causal_conv1d) call them for torch tensors. Before
calling an op they refuse, with HopsError("HOPS_ERR_UNSUPPORTED"), what the provider
has no kernel for: a device or dtype, a conv width outside 1..4, gradients through
the fused gate (A_log) or through a decode op. Those checks read only shapes, dtypes,
devices and flags, which torch.compile resolves while tracing, so a refused call
falls back at trace time instead of failing in the compiled graph. The forwards
always compute the final state (a few MiB at most), so that each op has one fixed
output list.

This module imports torch; hops.ops and the drop-ins import it only for torch tensors,
so numpy-only users never load torch.
"""

import torch
from torch import Tensor

from . import ops
from ._bindings import library
from ._frameworks import empty_like, index_array
from .errors import HopsError, unsupported


def _support_table() -> tuple[dict, HopsError | None]:
    """(op, device type, torch dtype) -> whether the provider has the kernel, made once at import
    (traced code then only looks it up); without a provider, {} and the discovery error."""
    try:
        table = library().support_table()
    except HopsError as error:
        return {}, error
    return {(op, device, getattr(torch, dtype)): ok for (op, device, dtype), ok in table.items()}, None


_SUPPORTED, _NO_PROVIDER = _support_table()


def supports(op: str, x: Tensor) -> bool:
    """Whether the provider runs `op` with x as primary input (its device type and dtype)."""
    return _SUPPORTED.get((op, x.device.type, x.dtype), False)


def _check(op: str, x: Tensor) -> None:
    if _NO_PROVIDER is not None:
        raise HopsError(_NO_PROVIDER.status, _NO_PROVIDER.message)
    if not supports(op, x):
        raise unsupported(f"{op}: the hops provider has no kernel for {x.dtype} on {x.device.type}")


def _check_conv(op: str, x: Tensor, weight: Tensor) -> None:
    if not 1 <= weight.shape[-1] <= 4:  # the provider's limit, checked where torch.compile sees it
        raise unsupported(f"{op}: conv width {weight.shape[-1]}; hops has kernels for widths 1 to 4")
    _check(op, x)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _present(values) -> list:
    """A backward op's outputs as its Tensor[] return: the optional ones only when computed."""
    return [value for value in values if value is not None]


def _restore(values: list, present: tuple[bool, ...]) -> list:
    """_present undone: None where `present` says the output was not computed."""
    remaining = iter(values)
    return [next(remaining) if here else None for here in present]


# ---- gdn_chunk -------------------------------------------------------------------

@torch.library.custom_op("hops::gdn_chunk", mutates_args=())
def _gdn_chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None,
               cu_seqlens: Tensor | None, A_log: Tensor | None, dt_bias: Tensor | None, scale: float,
               use_qk_l2norm: bool, state_v_first: bool) -> tuple[Tensor, Tensor]:
    return ops.gdn_chunk_fwd(q, k, v, g, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                             use_qk_l2norm=use_qk_l2norm, output_final_state=True, A_log=A_log,
                             dt_bias=dt_bias, state_v_first=state_v_first)


@_gdn_chunk.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first):
    return ops._gdn_outputs("gdn_chunk_fwd", q, v, cu_seqlens, True, state_v_first)


@torch.library.custom_op("hops::gdn_chunk_bwd", mutates_args=())
def _gdn_chunk_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None,
                   cu_seqlens: Tensor | None, do: Tensor, d_final_state: Tensor | None, scale: float,
                   use_qk_l2norm: bool, state_v_first: bool) -> list[Tensor]:
    """[dq, dk, dv, dg, dbeta] and dh0 when initial_state is given."""
    return _present(ops.gdn_chunk_bwd(q, k, v, g, beta, do, scale=scale, initial_state=initial_state,
                                      cu_seqlens=cu_seqlens, d_final_state=d_final_state,
                                      use_qk_l2norm=use_qk_l2norm, state_v_first=state_v_first))


@_gdn_chunk_bwd.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, do, d_final_state, scale, use_qk_l2norm, state_v_first):
    return _present(ops._gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state))


def _gdn_chunk_setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, cu_seqlens, A_log, _, scale, use_qk_l2norm, state_v_first = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.fused_gate = A_log is not None
    ctx.options = scale, use_qk_l2norm, state_v_first


def _gdn_chunk_backward(ctx, d_o, d_final_state):
    if ctx.fused_gate:  # gdn_chunk_fwd() refuses this; a direct torch.ops.hops caller gets told here
        raise unsupported("hops::gdn_chunk: gdn_chunk_bwd has no fused gate (A_log)")
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    grads = torch.ops.hops.gdn_chunk_bwd(q, k, v, g, beta, initial_state, cu_seqlens, d_o, d_final_state,
                                         *ctx.options)
    dq, dk, dv, dg, dbeta, dh0 = _restore(grads, (True,) * 5 + (initial_state is not None,))
    return dq, dk, dv, dg, dbeta, dh0, None, None, None, None, None, None


_gdn_chunk.register_autograd(_gdn_chunk_backward, setup_context=_gdn_chunk_setup_context)


def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None, use_qk_l2norm=False,
                  output_final_state=False, A_log=None, dt_bias=None, state_v_first=False):
    """hops.ops.gdn_chunk_fwd through hops::gdn_chunk: differentiable (not with the fused gate)."""
    _check("gdn_chunk_fwd", q)
    if _needs_grad(q, k, v, g, beta, initial_state, A_log, dt_bias):
        if A_log is not None:
            raise unsupported("gdn_chunk_fwd: no backward kernel for the fused gate (A_log)")
        _check("gdn_chunk_bwd", q)
    o, final_state = _gdn_chunk(q, k, v, g, beta, initial_state, index_array(cu_seqlens, q), A_log, dt_bias,
                                scale or 0.0, use_qk_l2norm, state_v_first)
    return o, final_state if output_final_state else None


# ---- causal_conv1d ---------------------------------------------------------------

@torch.library.custom_op("hops::causal_conv1d", mutates_args=())
def _causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None,
                   cu_seqlens: Tensor | None, activation: str, channels_first: bool,
                   state_len: int) -> tuple[Tensor, Tensor]:
    return ops.conv1d_fwd(x, weight, bias, activation=activation, initial_state=initial_state,
                          cu_seqlens=cu_seqlens, output_final_state=True, state_len=state_len,
                          channels_first=channels_first)


@_causal_conv1d.register_fake
def _(x, weight, bias, initial_state, cu_seqlens, activation, channels_first, state_len):
    return ops._conv1d_outputs(x, weight, initial_state, cu_seqlens, True, state_len)


@torch.library.custom_op("hops::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd(x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None,
                       cu_seqlens: Tensor | None, dy: Tensor, d_final_state: Tensor | None, activation: str,
                       channels_first: bool) -> list[Tensor]:
    """[dx, dweight], then dbias when bias is given, then d_initial_state when initial_state is."""
    return _present(ops.conv1d_bwd(x, weight, dy, bias=bias, activation=activation, initial_state=initial_state,
                                   cu_seqlens=cu_seqlens, d_final_state=d_final_state,
                                   channels_first=channels_first))


@_causal_conv1d_bwd.register_fake
def _(x, weight, bias, initial_state, cu_seqlens, dy, d_final_state, activation, channels_first):
    return _present(ops._conv1d_bwd_outputs(x, weight, bias, initial_state))


def _causal_conv1d_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, cu_seqlens, activation, channels_first, _ = inputs
    ctx.save_for_backward(x, weight, bias, initial_state, cu_seqlens)
    ctx.options = activation, channels_first


def _causal_conv1d_backward(ctx, dy, d_final_state):
    x, weight, bias, initial_state, cu_seqlens = ctx.saved_tensors
    grads = torch.ops.hops.causal_conv1d_bwd(x, weight, bias, initial_state, cu_seqlens, dy, d_final_state,
                                             *ctx.options)
    dx, dweight, dbias, d_initial_state = _restore(grads, (True, True, bias is not None,
                                                           initial_state is not None))
    return dx, dweight, dbias, d_initial_state, None, None, None, None


_causal_conv1d.register_autograd(_causal_conv1d_backward, setup_context=_causal_conv1d_setup_context)


def conv1d_fwd(x, weight, bias=None, *, activation="silu", initial_state=None, cu_seqlens=None,
               output_final_state=False, state_len=None, channels_first=False):
    """hops.ops.conv1d_fwd through hops::causal_conv1d: differentiable."""
    activation = "silu" if ops.activation_code(activation) else "none"
    _check_conv("conv1d_fwd", x, weight)
    if _needs_grad(x, weight, bias, initial_state):
        _check("conv1d_bwd", x)
    y, final_state = _causal_conv1d(x, weight, bias, initial_state, index_array(cu_seqlens, x), activation,
                                    channels_first, ops._conv1d_state_len(weight, initial_state, state_len))
    return y, final_state if output_final_state else None


# ---- gated_rmsnorm ---------------------------------------------------------------

@torch.library.custom_op("hops::gated_rmsnorm", mutates_args=())
def _gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    return ops.gated_rmsnorm(x, z, weight, eps=eps)


@_gated_rmsnorm.register_fake
def _(x, z, weight, eps):
    return empty_like(x)


@torch.library.custom_op("hops::gated_rmsnorm_bwd", mutates_args=())
def _gated_rmsnorm_bwd(x: Tensor, z: Tensor, weight: Tensor, dy: Tensor,
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return ops.gated_rmsnorm_bwd(x, z, weight, dy, eps=eps)


@_gated_rmsnorm_bwd.register_fake
def _(x, z, weight, dy, eps):
    return ops._gated_rmsnorm_bwd_outputs(x, z, weight)


def _gated_rmsnorm_setup_context(ctx, inputs, output):
    x, z, weight, eps = inputs
    ctx.save_for_backward(x, z, weight)
    ctx.eps = eps


def _gated_rmsnorm_backward(ctx, dy):
    x, z, weight = ctx.saved_tensors
    return *torch.ops.hops.gated_rmsnorm_bwd(x, z, weight, dy, ctx.eps), None


_gated_rmsnorm.register_autograd(_gated_rmsnorm_backward, setup_context=_gated_rmsnorm_setup_context)


def gated_rmsnorm(x, z, weight, *, eps=1e-6):
    """hops.ops.gated_rmsnorm through hops::gated_rmsnorm: differentiable."""
    _check("gated_rmsnorm", x)
    if _needs_grad(x, z, weight):
        _check("gated_rmsnorm_bwd", x)
    return _gated_rmsnorm(x, z, weight, eps)


# ---- decode: in place on a state pool, no backward ----------------------------------

def _refuse_gradients(op: str, *tensors) -> None:
    if _needs_grad(*tensors):
        raise unsupported(f"{op}: no backward kernel (decode op)")


@torch.library.custom_op("hops::gdn_recurrent", mutates_args=("state",))
def _gdn_recurrent(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                   state_indices: Tensor | None, cu_seqlens: Tensor | None, A_log: Tensor | None,
                   dt_bias: Tensor | None, scale: float, use_qk_l2norm: bool, state_v_first: bool) -> Tensor:
    return ops.gdn_recurrent(q, k, v, g, beta, state, state_indices=state_indices, cu_seqlens=cu_seqlens,
                             scale=scale, use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias,
                             state_v_first=state_v_first)


@_gdn_recurrent.register_fake
def _(q, k, v, g, beta, state, state_indices, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first):
    return ops._gdn_outputs("gdn_recurrent", q, v)[0]


def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False):
    """hops.ops.gdn_recurrent through hops::gdn_recurrent (state updated in place)."""
    _check("gdn_recurrent", q)
    _refuse_gradients("gdn_recurrent", q, k, v, g, beta, state, A_log, dt_bias)
    return _gdn_recurrent(q, k, v, g, beta, state, index_array(state_indices, q), index_array(cu_seqlens, q),
                          A_log, dt_bias, scale or 0.0, use_qk_l2norm, state_v_first)


@torch.library.custom_op("hops::causal_conv1d_update", mutates_args=("state",))
def _causal_conv1d_update(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None,
                          state_indices: Tensor | None, activation: str) -> Tensor:
    return ops.conv1d_update(x, state, weight, bias, activation=activation, state_indices=state_indices)


@_causal_conv1d_update.register_fake
def _(x, state, weight, bias, state_indices, activation):
    return empty_like(x)


def conv1d_update(x, state, weight, bias=None, *, activation="silu", state_indices=None):
    """hops.ops.conv1d_update through hops::causal_conv1d_update (state updated in place)."""
    activation = "silu" if ops.activation_code(activation) else "none"
    _check_conv("conv1d_update", x, weight)
    _refuse_gradients("conv1d_update", x, state, weight, bias)
    return _causal_conv1d_update(x, state, weight, bias, index_array(state_indices, x), activation)
