"""Which op layer serves an array: hops.torch_ops for torch tensors (autograd,
torch.compile), hops.ops for the rest. Above both layers, so that the layers
below never import upwards; torch_ops (and torch) is imported on the first
torch tensor."""

from ._frameworks import is_torch


def ops_for(x):
    if is_torch(x):
        from . import torch_ops
        return torch_ops
    from . import ops
    return ops
