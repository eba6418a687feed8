"""Large host outputs on huge pages (hops._host_memory): the shim's outputs of at least
HUGE_PAGE_MIN_BYTES live in a mapping of their own advised MADV_HUGEPAGE (its VmFlags
in /proc/self/smaps say "hg"), hold the op's result, go away with the last array, and
leave small outputs, non-contiguous templates and traced (fake) tensors to torch."""

import numpy as np
import pytest
import torch

import hops
from hops import _frameworks, _host_memory

needs_huge_pages = pytest.mark.skipif(not _host_memory.HUGE_PAGES,
                                      reason="transparent huge pages off (or HOPS_HUGE_PAGES=0)")


def mapping_flags(address: int) -> list[str] | None:
    """The VmFlags of the mapping of this process that holds address (None: no mapping)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                begin, end = (int(x, 16) for x in head.split("-"))
                inside = begin <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    return None


def gated_rmsnorm_reference(x, z, weight, eps=1e-6):
    x, z, weight = (t.double() for t in (x, z, weight))
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight * torch.nn.functional.silu(z)


@needs_huge_pages
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_torch_output_is_on_huge_pages_and_right(dtype):
    rows, width = 2 * _host_memory.HUGE_PAGE_MIN_BYTES // (128 * dtype.itemsize), 128
    x, z = (torch.randn(rows, width).to(dtype) for _ in range(2))
    weight = torch.rand(width).to(dtype)
    y = hops.ops.gated_rmsnorm(x, z, weight)
    assert (y.shape, y.dtype, y.device.type) == (x.shape, dtype, "cpu") and y.is_contiguous()
    assert "hg" in mapping_flags(y.data_ptr())
    expected = gated_rmsnorm_reference(x, z, weight)
    error = ((y.double() - expected).norm() / expected.norm()).item()
    assert error < (1e-6 if dtype == torch.float32 else 1e-2)


@needs_huge_pages
def test_large_numpy_output_is_on_huge_pages(rng):
    x = rng.standard_normal((_host_memory.HUGE_PAGE_MIN_BYTES // 512, 128)).astype(np.float32)
    y = hops.ops.gated_rmsnorm(x, x, np.ones(128, np.float32))
    assert isinstance(y, np.ndarray) and y.flags.c_contiguous and y.flags.writeable
    assert "hg" in mapping_flags(y.__array_interface__["data"][0])


@needs_huge_pages
def test_the_mapping_goes_with_the_last_array():
    out = _frameworks.empty(torch.empty(1), (_host_memory.HUGE_PAGE_MIN_BYTES // 4,), "float32")
    address = out.data_ptr()
    view = out[10:]
    del out
    assert mapping_flags(address) is not None  # the view keeps it
    del view
    assert mapping_flags(address) is None


def test_small_strided_and_fake_templates_keep_torchs_allocation():
    small = hops.ops.gated_rmsnorm(*(torch.randn(64, 128) for _ in range(2)), torch.ones(128))
    assert small.untyped_storage().resizable()  # torch's own allocator
    big = torch.empty(128, _host_memory.HUGE_PAGE_MIN_BYTES // 256)
    transposed = _frameworks.empty_like(big.t())
    assert transposed.stride() == big.t().stride() and transposed.untyped_storage().resizable()
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    with FakeTensorMode():
        fake = torch.empty(_host_memory.HUGE_PAGE_MIN_BYTES // 4)
        assert isinstance(_frameworks.empty_like(fake), FakeTensor)
        assert isinstance(_frameworks.empty(fake, fake.shape), FakeTensor)
