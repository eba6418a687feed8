"""The DLPack bridge: zero-copy in and out, strides, read-only arrays, torch tensors."""

import numpy as np
import pytest
import torch

import hops
import reference
from conftest import relative_error


def norm_inputs(rng, shape=(3, 16)):
    x, z = rng.standard_normal((2, *shape)).astype(np.float32)
    return x, z, rng.standard_normal(shape[-1]).astype(np.float32)


def test_outputs_are_written_in_place_through_strided_views(rng):
    x, z, weight = norm_inputs(rng)
    storage = np.zeros((3, 2, 16), np.float32)
    hops.library().op("gated_rmsnorm")(x=x, z=z, weight=weight, y=storage[:, 1])  # zero-copy output
    assert relative_error(storage[:, 1], reference.gated_rmsnorm(x, z, weight)) <= 1e-5
    assert not storage[:, 0].any()


def test_torch_memory_is_shared_both_ways(rng):
    x, z, weight = (torch.from_numpy(a) for a in norm_inputs(rng))
    y = torch.zeros(16, 3).t()  # a transposed output view
    hops.library().op("gated_rmsnorm")(x, z, weight, y)
    assert torch.allclose(y, torch.from_numpy(reference.gated_rmsnorm(x.numpy(), z.numpy(), weight.numpy())).float(),
                          atol=1e-5)


def test_read_only_inputs_are_borrowed_read_only_outputs_refused(rng):
    x, z, weight = norm_inputs(rng)
    x.setflags(write=False)
    y = hops.ops.gated_rmsnorm(x, z, weight)
    assert relative_error(y, reference.gated_rmsnorm(x, z, weight)) <= 1e-5
    y.setflags(write=False)
    with pytest.raises(hops.HopsError, match="'y' is written but the array is read-only"):
        hops.library().op("gated_rmsnorm")(x, z, weight, y)


def test_torch_in_torch_out_including_bfloat16_and_grad_tensors(rng):
    x, z, weight = (torch.from_numpy(a) for a in norm_inputs(rng))
    weight.requires_grad_(True)  # exported detached: the op itself has no autograd yet
    y = hops.ops.gated_rmsnorm(x.bfloat16(), z.bfloat16(), weight)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    expected = reference.gated_rmsnorm(x.bfloat16().float().numpy(), z.bfloat16().float().numpy(),
                                       weight.detach().numpy())
    assert relative_error(y.float().numpy(), expected) <= 1e-2


def test_objects_without_dlpack_are_rejected():
    with pytest.raises(TypeError, match="__dlpack__"):
        hops.ops.gated_rmsnorm([[1.0]], [[1.0]], [1.0])
