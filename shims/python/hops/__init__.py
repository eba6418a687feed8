"""hops: Qwen3.5 / Qwen3-Next hybrid-model operators through one C ABI.

    import hops
    print(hops.info())                    # which provider was loaded, and how it was found
    o, state = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, output_final_state=True)
    report = hops.patch()                 # transformers Qwen3-Next / Qwen3.5 (and fla) run on hops
    hops.unpatch()

Public layers: hops.ops (framework-neutral, every op of the provider), hops.torch_ops
(torch operators torch.ops.hops.* with autograd and torch.compile support;
`from hops import torch_ops`; numpy-only users never import torch), hops.fla,
hops.causal_conv1d and hops.flash_attn (drop-in namesakes of those packages' functions),
hops.patch (host patching). The modules are layered bottom to top without cycles
(docs/PYTHON.md, Layers; tests/python/test_layers.py checks it).
"""

from . import causal_conv1d, fla, flash_attn, ops
from ._bindings import ProviderInfo, library
from ._redirects.moe import shard_experts
from ._redirects.moe_workspace import release as release_moe_workspace
from .errors import HopsError
from .patch import PatchReport, patch, patch_model, unpatch

__version__ = "0.1.0"
__all__ = ["HopsError", "PatchReport", "ProviderInfo", "causal_conv1d", "fla", "flash_attn", "info", "ops", "patch",
           "patch_model", "release_moe_workspace", "shard_experts", "unpatch"]


def info() -> ProviderInfo:
    """The loaded provider: path, how discovery found it, version, ABI, backends and ops."""
    return library().info()
