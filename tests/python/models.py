"""Tiny random-weight Qwen3.5, Qwen3-Next and Qwen3.5-MoE models built from configs: 4
layers (3 linear attention : 1 full attention, the real pattern), HV = 2H in the
linear layers, conv width 4; Qwen3-Next and Qwen3.5-MoE with a sparse MoE block in
every layer (MOE_MODULES; experts of width 32 and a shared expert); torch_function, transformers' own torch code beneath
a module global's wrappers; and torch_route, the unpatched reference path."""

from contextlib import contextmanager

import torch

from hops import _patch_transformers

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"], max_position_embeddings=512,
            initializer_range=0.1)  # spread-out logits: greedy decoding has no near ties
MODULES = {"qwen3_5": "transformers.models.qwen3_5.modeling_qwen3_5",
           "qwen3_next": "transformers.models.qwen3_next.modeling_qwen3_next"}
# The models with a mixture of experts (Qwen3.5-MoE: 16 experts, top 4; Qwen3-Next: 4, top 2).
MOE_MODULES = {"qwen3_5_moe": "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
               "qwen3_next": MODULES["qwen3_next"]}
QWEN3_5_MOE = dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=32, shared_expert_intermediate_size=32)


def build(name: str, dtype=torch.float32, **overrides):
    import transformers
    torch.manual_seed(0)
    options = TINY | overrides
    if name == "qwen3_5":
        config = transformers.Qwen3_5TextConfig(**options)
        model = transformers.Qwen3_5ForCausalLM(config)
    elif name == "qwen3_5_moe":  # its config has no dense MLP width
        options.pop("intermediate_size")
        config = transformers.Qwen3_5MoeTextConfig(**QWEN3_5_MOE | options)
        model = transformers.Qwen3_5MoeForCausalLM(config)
    else:
        config = transformers.Qwen3NextConfig(**options, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                              shared_expert_intermediate_size=32)
        model = transformers.Qwen3NextForCausalLM(config)
    return model.to(dtype).eval()


def greedy(model, prompt, tokens=32):
    return model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)


def torch_function(module, name: str):
    """transformers' own torch implementation behind the module global `name`, found
    the way hops.patch() finds it; a wrapper it cannot see through fails here, naming it."""
    function = _patch_transformers.own_function(module, name)
    if function is None:
        raise LookupError(f"{module.__name__}.{name}: transformers' own function not found beneath its "
                          f"{type(vars(module).get(name)).__qualname__} wrapper (hops._patch_transformers._held_by)")
    return function


@contextmanager
def torch_route(module):
    """Run transformers' torch code even where its decorators route to FLA or causal-conv1d
    (importable on a CPU machine, but their Triton/CUDA kernels cannot run there)."""
    routed = {name: vars(module)[name] for name in _patch_transformers.FUNCTIONS if callable(vars(module).get(name))}
    for name in routed:
        setattr(module, name, torch_function(module, name))
    try:
        yield
    finally:
        for name, function in routed.items():
            setattr(module, name, function)
