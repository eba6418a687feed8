"""hops for torch: the ops as torch.library operators (torch.ops.hops.*), with autograd
through the plugin's backward kernels and fake (meta) kernels, so that autograd and
torch.compile (fullgraph included) see one op where hops runs.

| op | forward | backward |
|---|---|---|
| hops::gdn_chunk | gdn_chunk_fwd -> (o, final_state) | hops::gdn_chunk_bwd (gdn_chunk_bwd) |
| hops::causal_conv1d | conv1d_fwd -> (y, final_state) | hops::causal_conv1d_bwd (conv1d_bwd) |
| hops::gated_rmsnorm | gated_rmsnorm -> y | hops::gated_rmsnorm_bwd (gated_rmsnorm_bwd) |
| hops::gdn_recurrent | gdn_recurrent, state updated in place | none (decode) |
| hops::gdn_recurrent_fn | gdn_recurrent on a copy of the state -> (o, final_state) | hops::gdn_chunk_bwd (gdn_chunk_bwd: the same recurrence) |
| hops::causal_conv1d_update | conv1d_update, state updated in place | none (decode) |
| hops::attn_prefill | attn_prefill -> (o, lse) | hops::attn_prefill_bwd (attn_prefill_bwd) |
| hops::attn_decode | attn_decode -> o | none (decode) |
| hops::kv_cache_write | kv_cache_write, caches written in place | none |
| hops::moe_route | moe_route -> (topk_weights, topk_ids) | none (weights from torch where logits need grad) |
| hops::moe_dispatch | moe_dispatch -> (rows, counts, row_map) | hops::moe_dispatch_bwd (moe_dispatch_bwd) |
| hops::moe_expert_mlp | moe_expert_mlp -> out | hops::moe_expert_mlp_bwd (moe_expert_mlp_bwd) |
| hops::moe_combine | moe_combine -> y | hops::moe_combine_bwd (moe_combine_bwd) |
| hops::moe_ep_dispatch | moe_ep_dispatch -> (rows, counts, row_map, send_counts, recv_counts) | hops::moe_ep_combine (unit weights) |
| hops::moe_ep_combine | moe_ep_combine -> y | hops::moe_ep_dispatch (one slot per token), hops::moe_ep_combine for the weights |

The functions of this module have hops.ops' names and signatures and return the same
values; the drop-ins (hops.fla, hops.causal_conv1d) call them for torch tensors. Before
calling an op they refuse, with HopsError("HOPS_ERR_UNSUPPORTED"), what the provider
has no kernel for: a device or dtype, a conv width outside 1..4, gradients through
a decode op that updates its state in place; and while torch.compile traces, what
the provider says it would refuse for the call's shapes (supports_call, ABI 1.1).
Those checks read only shapes, dtypes, devices and flags, which torch.compile
resolves while tracing, so a refused call falls back at trace time instead of
failing in the compiled graph. The forwards always compute the final state (a few
MiB at most), so that each op has one fixed output list. Gradients through the fused
gate (A_log, dt_bias) or a beta_mode flow through the same gate computed by torch
(gdn.gates_in_torch), since the backward kernels take g and beta as they are.

Each op family registers its ops in its own file (gdn.py, conv1d.py, norm.py, attn.py,
moe.py, moe_ep.py); FAMILIES lists them. This module imports torch; hops.ops and the drop-ins import it
only for torch tensors, so numpy-only users never load torch.
"""

from . import attn, conv1d, gdn, moe, moe_ep, norm
from ._common import supports

FAMILIES = (gdn, conv1d, norm, attn, moe, moe_ep)  # one line per family: a module registering its ops, FUNCTIONS its wrappers

for _family in FAMILIES:
    globals().update({_function.__name__: _function for _function in _family.FUNCTIONS})
del _family

__all__ = ["supports", *(function.__name__ for family in FAMILIES for function in family.FUNCTIONS)]
