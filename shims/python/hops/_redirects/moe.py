"""Mixture of experts: transformers' experts function "hops" (ExpertsInterface) and the
sparse MoE blocks of Qwen3.5-MoE / Qwen3-Next, whose router and experts then run on hops
(the shared expert stays the layer's dense torch MLP).

`experts` has the signature of transformers' experts functions (the experts module,
hidden_states [T,Hd], top_k_index [T,k], top_k_weights [T,k]): moe_dispatch, the grouped
SwiGLU moe_expert_mlp on the module's stacked gate_up_proj / down_proj, moe_combine. It
refuses layouts hops does not compute (no gate, biases, transposed or interleaved
weights, a post-expert norm, an activation other than silu, a custom gate, expert
parallelism). `fallback_experts` is what the module would have run: its configured
experts implementation (its own loop for "eager" and for "hops" itself).

`router_forward` is the forward of the routers (transformers' linear, then moe_route:
softmax over the experts, top-k, renormalised where the router does); the router's
hub-kernel name is ROUTER_HUB_NAME. No module here imports torch at import time."""

import functools
import inspect
from collections import Counter

from .._dispatch import ops_for
from ..errors import unsupported
from . import moe_workspace

NAME, SWITCH = "moe", "HOPS_PATCH_MOE"
INTERFACE = "hops"  # the name in transformers' ExpertsInterface (experts_implementation="hops")
ROUTER_HUB_NAME = "SoftmaxTopKRouter"  # the routers' use_kernel_forward_from_hub name (kernels' layer mapping)
_SILU = ("SiLU", "SiLUActivation")


def _refuse_layout(module) -> None:
    """HopsError for an experts module whose layout or options hops has no kernel for
    (use_experts_implementation's flags; read on the module, so torch.compile resolves them)."""
    flags = {"no gate": not getattr(module, "has_gate", True), "biases": getattr(module, "has_bias", False),
             "transposed weights": getattr(module, "is_transposed", False),
             "interleaved gate/up weights": not getattr(module, "is_concatenated", True),
             "a post-expert norm": getattr(module, "has_post_expert_norm", False),
             "expert parallelism": getattr(module, "_is_expert_parallel", False)}
    refused = [what for what, present in flags.items() if present]
    if type(getattr(module, "act_fn", None)).__name__ not in _SILU:
        refused.append(f"activation {type(getattr(module, 'act_fn', None)).__name__}")
    gate = getattr(type(module), "_apply_gate", None)
    if gate is not None and gate.__name__ != "_default_apply_gate":
        refused.append("a custom _apply_gate")
    if refused:
        raise unsupported(f"experts with {', '.join(refused)}: hops computes silu(gate) * up experts, "
                          "concatenated [E, 2I, Hd] / [E, Hd, I] weights without biases")


def experts(module, hidden_states, top_k_index, top_k_weights):
    """transformers' experts function on hops -> [T,Hd] in hidden_states' dtype: each token's
    rows to its experts (moe_dispatch), the grouped SwiGLU (moe_expert_mlp), the weighted sum
    in slot order (moe_combine). Differentiable in hidden_states, the weights and top_k_weights;
    where autograd keeps nothing, the rows and expert outputs come from moe_workspace's pool."""
    _refuse_layout(module)
    if moe_workspace.serves(hidden_states, top_k_weights, module.gate_up_proj, module.down_proj):
        return _experts_in_workspace(module, hidden_states, top_k_index, top_k_weights)
    ops = ops_for(hidden_states)
    rows, counts, row_map = ops.moe_dispatch(hidden_states, top_k_index, module.num_experts)
    out = ops.moe_expert_mlp(rows, counts, module.gate_up_proj, module.down_proj)
    return ops.moe_combine(out, row_map, top_k_weights)


def _experts_in_workspace(module, hidden_states, top_k_index, top_k_weights):
    """experts() without autograd, its two [T*k, Hd] intermediates borrowed from the pool
    (the same kernels on the same inputs: the same y, bitwise)."""
    from .. import ops
    from ..torch_ops._common import check

    for op in ("moe_dispatch", "moe_expert_mlp", "moe_combine"):
        check(op, hidden_states)  # the torch operators' refusal (naming the dtype), before any work
    tokens, width = hidden_states.shape
    with moe_workspace.WORKSPACE.borrow(hidden_states, (tokens * top_k_index.shape[1], width), 2) as (rows, out):
        rows, counts, row_map = ops.moe_dispatch(hidden_states, top_k_index, module.num_experts, rows=rows)
        ops.moe_expert_mlp(rows, counts, module.gate_up_proj, module.down_proj, out=out)
        return ops.moe_combine(out, row_map, top_k_weights)


def _communicator(comm):
    """(rank, ranks) of an expert-parallel communicator, and the MPI communicator behind it."""
    from ..ops import moe_ep

    mpi = moe_ep.mpi_of_process_group(comm) if moe_ep.is_process_group(comm) else comm
    described = moe_ep.describe(mpi)
    return described.rank, described.size, mpi


def local_experts(module, rank: int, ranks: int):
    """This rank's (gate_up_proj, down_proj): the module's own where shard_experts left only
    E / ranks experts, else its slice of the whole stack (a view: gradients reach the whole)."""
    local = module.num_experts // ranks
    if module.num_experts % ranks:
        raise unsupported(f"expert parallelism: {module.num_experts} experts do not split over {ranks} ranks")
    stacked = module.gate_up_proj.shape[0]
    if stacked == local:
        return module.gate_up_proj, module.down_proj
    if stacked != module.num_experts:
        raise unsupported(f"expert parallelism: gate_up_proj holds {stacked} experts, expected "
                          f"{module.num_experts} or this rank's {local}")
    mine = slice(rank * local, (rank + 1) * local)
    return module.gate_up_proj[mine], module.down_proj[mine]


def expert_parallel_experts(module, hidden_states, top_k_index, top_k_weights, comm):
    """The experts over the ranks of `comm` (an mpi4py communicator or a torch.distributed
    process group of mpirun's processes): every rank routes its own tokens, moe_ep_dispatch
    sends each kept slot to the rank owning its expert (E / ranks consecutive experts each),
    that rank runs moe_expert_mlp on its experts, moe_ep_combine brings the outputs back and
    sums them with the routing weights. The rows' capacity is the worst case, the most tokens
    any rank has (one allreduce) * k * ranks. Collective: every rank calls it, in the same
    layer order."""
    _refuse_layout(module)
    rank, ranks, mpi = _communicator(comm)
    gate_up_proj, down_proj = local_experts(module, rank, ranks)
    ops = ops_for(hidden_states)
    tokens, slots = top_k_index.shape
    capacity = mpi.allreduce(tokens, op=_max()) * slots * ranks
    rows, counts, handle = ops.moe_ep_dispatch(hidden_states, top_k_index, module.num_experts, mpi, capacity)
    out = ops.moe_expert_mlp(rows, counts, gate_up_proj, down_proj)
    return ops.moe_ep_combine(out, handle, top_k_weights, mpi)


def _max():
    from mpi4py import MPI

    return MPI.MAX


def expert_parallel_forward(original, comm, counter: Counter, label: str):
    """The forward of an experts class under hops.patch(expert_parallel=comm): the experts over
    the ranks (expert_parallel_experts), counted under `label`. No fallback: the other ranks
    wait for this one, so a refusal raises."""
    @functools.wraps(original)
    def forward(self, hidden_states, top_k_index, top_k_weights):
        result = expert_parallel_experts(self, hidden_states, top_k_index, top_k_weights, comm)
        counter[label] += 1
        return result

    return forward


def shard_experts(model, comm) -> int:
    """Keep only this rank's E / ranks experts in every experts module of `model` (their
    gate_up_proj and down_proj become the rank's slice, the rest freed); returns how many
    modules were sharded. For hops.patch(expert_parallel=comm), which also runs unsharded
    modules (each rank then reads its slice)."""
    import torch

    rank, ranks, _ = _communicator(comm)
    sharded = 0
    for module in model.modules():
        if not (type(module).__name__.endswith("Experts") and hasattr(module, "gate_up_proj")):
            continue
        gate_up_proj, down_proj = local_experts(module, rank, ranks)
        if gate_up_proj is not module.gate_up_proj:
            module.gate_up_proj = torch.nn.Parameter(gate_up_proj.detach().clone(), module.gate_up_proj.requires_grad)
            module.down_proj = torch.nn.Parameter(down_proj.detach().clone(), module.down_proj.requires_grad)
            sharded += 1
    return sharded


def fallback_experts(module, hidden_states, top_k_index, top_k_weights):
    """What runs where hops does not: the module's configured experts implementation; its
    own loop (transformers' "eager") where that is "eager" or "hops" itself."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    configured = getattr(getattr(module, "config", None), "_experts_implementation", None)
    if configured in (None, "eager", INTERFACE) or configured not in ALL_EXPERTS_FUNCTIONS:
        return inspect.unwrap(type(module).forward)(module, hidden_states, top_k_index, top_k_weights)
    return ALL_EXPERTS_FUNCTIONS[configured](module, hidden_states, top_k_index, top_k_weights)


def experts_forward(original):
    """The forward of an experts class while patched: the experts function "hops" (counted
    there; its fallback is the configured implementation). It carries `original`'s name and
    signature, and `original` as __wrapped__, beneath which lies the module's own loop."""
    @functools.wraps(original)
    def forward(self, hidden_states, top_k_index, top_k_weights):
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        return ALL_EXPERTS_FUNCTIONS[INTERFACE](self, hidden_states, top_k_index, top_k_weights)

    return forward


def is_experts_class(cls) -> bool:
    """Whether `cls` is an experts module whose forward dispatches through the ExpertsInterface
    (transformers' use_experts_implementation)."""
    code = getattr(vars(cls).get("forward"), "__code__", None)  # the wrapper's own (getsource unwraps it)
    return cls.__name__.endswith("Experts") and code is not None and "get_interface" in code.co_names


def router_forward(self, hidden_states):
    """The top-k softmax router on hops -> (router_logits, routing weights in the logits'
    dtype, expert ids int64), as transformers' Qwen3.5-MoE / Qwen3-Next routers return them:
    their linear, then moe_route (renormalised unless the router's norm_topk_prob is off)."""
    import torch.nn.functional as F

    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    weights, ids = ops_for(router_logits).moe_route(router_logits, self.top_k,
                                                    normalize=getattr(self, "norm_topk_prob", True),
                                                    weights_dtype=router_logits.dtype)
    return router_logits, weights, ids


def fallback_router(self, hidden_states):
    """The router's own forward (the class's, beneath a hops redirect)."""
    forward = type(self).forward
    return getattr(forward, "__hops_original__", forward)(self, hidden_states)


def is_router_class(cls) -> bool:
    """Whether `cls` is a router whose forward router_forward reproduces: softmax over the
    experts, then top-k of the probabilities (not a sigmoid or biased router)."""
    source = _source(vars(cls).get("forward"))
    return cls.__name__.endswith("TopKRouter") and "softmax(router_logits" in source and "topk(router_probs" in source


def router_layer(forward):
    """An nn.Module class with `forward` and nothing else, as the kernels package accepts
    for a layer name (stateless, the router's forward signature)."""
    import torch

    return type("HopsSoftmaxTopKRouter", (torch.nn.Module,),
                {"forward": forward, "can_torch_compile": True, "has_backward": True, "__module__": __name__})


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


TRANSFORMERS_FUNCTIONS = {}
TRANSFORMERS_METHODS = {}  # the routers and experts are patched by _patch_transformers (with their checks)
FLA_ENTRY_POINTS = {}
