"""hops::gated_rmsnorm and hops::gated_rmsnorm_bwd."""

from .._frameworks import empty_like
from ..ops import norm
from ._common import check, needs_grad, refuse_traced
from ._registry import define

_forward, _backward = norm.gated_rmsnorm.__wrapped__, norm.gated_rmsnorm_bwd.__wrapped__  # without device=


def _setup_context(ctx, inputs, output):
    x, z, weight, eps = inputs
    ctx.save_for_backward(x, z, weight)
    ctx.eps = eps


def _gradients(ctx, dy):
    x, z, weight = ctx.saved_tensors
    return *gated_rmsnorm_bwd_op(x, z, weight, dy, ctx.eps), None


gated_rmsnorm_op = define("gated_rmsnorm(Tensor x, Tensor z, Tensor weight, float eps) -> Tensor",
                          lambda x, z, weight, eps: _forward(x, z, weight, eps=eps),
                          lambda x, z, weight, eps: empty_like(x),
                          backward=_gradients, setup_context=_setup_context)
gated_rmsnorm_bwd_op = define(
    "gated_rmsnorm_bwd(Tensor x, Tensor z, Tensor weight, Tensor dy, float eps) -> (Tensor, Tensor, Tensor)",
    lambda x, z, weight, dy, eps: _backward(x, z, weight, dy, eps=eps),
    lambda x, z, weight, dy, eps: norm.gated_rmsnorm_bwd_outputs(x, z, weight))


def gated_rmsnorm(x, z, weight, *, eps=1e-6):
    """hops.ops.gated_rmsnorm through hops::gated_rmsnorm: differentiable."""
    check("gated_rmsnorm", x)
    if needs_grad(x, z, weight):
        check("gated_rmsnorm_bwd", x)
    refuse_traced("gated_rmsnorm", x, z, weight, eps=eps)
    return gated_rmsnorm_op(x, z, weight, eps)


FUNCTIONS = (gated_rmsnorm,)  # what hops.torch_ops exports of this family
