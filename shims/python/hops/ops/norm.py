"""The gated RMSNorm family of hops.ops: gated_rmsnorm, gated_rmsnorm_bwd."""

from .._frameworks import empty_like
from ..opencl import device_option
from ._common import call

OPS = ("gated_rmsnorm", "gated_rmsnorm_bwd")


@device_option
def gated_rmsnorm(x, z, weight, *, eps=1e-6):
    """y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over the last dim, in x's dtype."""
    y = empty_like(x)
    call("gated_rmsnorm", x=x, z=z, weight=weight, y=y, eps=eps)
    return y


def gated_rmsnorm_bwd_outputs(x, z, weight):
    return empty_like(x), empty_like(z), empty_like(weight)


@device_option
def gated_rmsnorm_bwd(x, z, weight, dy, *, eps=1e-6):
    """Backward of gated_rmsnorm: dy -> (dx, dz, dweight), each like its input (dweight
    summed over the rows)."""
    dx, dz, dweight = gated_rmsnorm_bwd_outputs(x, z, weight)
    call("gated_rmsnorm_bwd", x=x, z=z, weight=weight, dy=dy, dx=dx, dz=dz, dweight=dweight, eps=eps)
    return dx, dz, dweight
