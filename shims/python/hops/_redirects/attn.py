"""Softmax attention: transformers' attention function "hops" (AttentionInterface) and the
full-attention layers of Qwen3.5 / Qwen3-Next, whose output gate runs in hops' kernel.

`attention` has the signature transformers calls attention functions with (query
[B,Hq,Tq,D], key and value [B,Hkv,Tk,D], transposed views: passed on as strided views,
GQA without repeat_kv) and refuses what hops does not compute: a mask other than the
plain causal one (padding, packed sequences, windows), dropout, softcap, position
biases, sinks, attention weights. `fallback_attention` is what the layer would have run:
the model's configured attention function (sdpa for "hops" itself), then the output
gate exactly as the layer applies it. No module here imports torch at import time."""

import sys

from .._dispatch import ops_for
from ..errors import unsupported

NAME, SWITCH = "attn", "HOPS_PATCH_ATTN"
INTERFACE = "hops"  # the name in transformers' AttentionInterface (attn_implementation="hops")
REFUSED_OPTIONS = ("softcap", "position_bias", "s_aux", "sinks")


PLAIN_CAUSAL = "_hops_plain_causal"  # set on a mask a builder made as the plain causal one


def _plain_causal(kwargs) -> bool:
    """Whether a mask builder's keyword arguments describe the plain causal mask over tokens
    without padding, packing or a window, with one query or as many queries as keys: the
    case in which transformers' sdpa skips the mask and the bottom-right causal kernel is it."""
    from transformers.masking_utils import causal_mask_function

    queries = kwargs.get("q_length")
    if queries is None and kwargs.get("cache_position") is not None:  # transformers < 5.18
        queries = kwargs["cache_position"].shape[0]
    plain = (kwargs.get("attention_mask") is None and kwargs.get("local_size") is None
             and kwargs.get("mask_function", causal_mask_function) is causal_mask_function)
    return plain and queries is not None and queries in (1, kwargs.get("kv_length"))


def mask_builder(*args, **kwargs):
    """transformers' mask builder for attention "hops": sdpa's, except that the plain causal
    mask is not built (_plain_causal). sdpa's own builder may materialize it (whenever it
    may not skip, e.g. for a compileable cache), and recognising a built mask means reading
    it back: a host sync, which a CUDA graph capture forbids."""
    from transformers.masking_utils import sdpa_mask

    return None if _plain_causal(kwargs) else sdpa_mask(*args, **kwargs)


def tagging_mask_builder(builder):
    """A model's configured mask builder (sdpa's, eager's) that tags each mask it builds as
    the plain causal one where its arguments say so (PLAIN_CAUSAL): the patched layers then
    run it on hops without reading it. transformers < 5.18 materializes that mask during a
    CUDA graph capture, where reading it is forbidden."""
    def build(*args, **kwargs):
        mask = builder(*args, **kwargs)
        if mask is not None and _plain_causal(kwargs):
            setattr(mask, PLAIN_CAUSAL, True)
        return mask

    build.__wrapped__ = builder
    return build


def _visible_pattern(mask, queries: int, keys: int, causal: bool):
    """The attention a materialized mask describes: "causal" (query i sees keys j <= i + keys
    - queries), "full", or None (anything else: padding, packing, windows, and any untagged
    mask while its values cannot be read: torch.compile tracing or a CUDA graph capture)."""
    import torch

    if getattr(mask, PLAIN_CAUSAL, False) and tuple(mask.shape[-2:]) == (queries, keys):
        return "causal"
    if torch.compiler.is_compiling() or (mask.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    return _pattern_from_values(mask, queries, keys, causal)


def _pattern_from_values(mask, queries: int, keys: int, causal: bool):
    """_visible_pattern by reading the mask (a host sync for a device mask)."""
    import torch

    if mask.dim() == 2:  # flash-attention's [B, keys] padding mask
        return ("causal" if causal else "full") if mask.shape[-1] == keys and bool(mask.all()) else None
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (queries, keys):
        return None
    if mask.dtype == torch.bool:
        visible = mask
    else:  # additive: 0 where visible, the dtype's minimum (or -inf) where not
        visible = mask == 0
        if not bool(torch.where(visible, True, mask <= torch.finfo(mask.dtype).min).all()):
            return None
    lower_right = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril(keys - queries)
    if torch.equal(visible, lower_right.expand_as(visible)):
        return "causal"
    return "full" if bool(visible.all()) else None


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
              output_gate=None, **kwargs):
    """transformers' attention function on hops -> (output [B,Tq,Hq,D], None).

    output_gate [B,Tq,Hq,D] (or [B,Tq,Hq*D]): the output is multiplied by its sigmoid in
    the kernel (Qwen3.5's attn_output_gate)."""
    if dropout:
        raise unsupported(f"attention dropout {dropout}")
    refused = [name for name in REFUSED_OPTIONS if kwargs.get(name) is not None]
    if refused or kwargs.get("output_attentions"):
        raise unsupported(f"attention with {', '.join(refused) or 'output_attentions'}")
    queries, keys = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None:
        pattern = _visible_pattern(attention_mask, queries, keys, causal)
        if pattern is None:
            raise unsupported("attention mask other than the plain causal one (padding, packing, a window) "
                              "or read while compiling")
        causal = pattern == "causal"
    elif causal and 1 < queries < keys:
        # No mask with more keys than queries: transformers' sdpa path reads it as a prefill
        # into the first slots of a static cache and drops the keys past the queries.
        key, value = key[:, :, :queries], value[:, :, :queries]
    elif causal and queries > keys:
        raise unsupported("causal attention with more queries than keys")
    q = query.transpose(1, 2)
    gate = output_gate
    if gate is not None and gate.dim() == 3:
        gate = gate.unflatten(-1, (q.shape[2], q.shape[3]))
    o, _ = ops_for(q).attn_prefill(q, key.transpose(1, 2), value.transpose(1, 2), scale=scaling, causal=causal,
                                   gate=gate)
    return o, None


def fallback_attention(module, query, key, value, attention_mask, *args, output_gate=None, **kwargs):
    """What runs where hops does not: the model's configured attention function (sdpa when
    that is "hops"), then the output gate with the layer's own operations."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    configured = getattr(getattr(module, "config", None), "_attn_implementation", None)
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", sdpa_attention_forward)
    function = sdpa_attention_forward if configured in (None, INTERFACE) else \
        ALL_ATTENTION_FUNCTIONS.get_interface(configured, eager)
    output, weights = function(module, query, key, value, attention_mask, *args, **kwargs)
    if output_gate is not None:
        batch, tokens = output.shape[:2]
        gated = output.reshape(batch, tokens, -1).contiguous() * output_gate.reshape(batch, tokens, -1).sigmoid()
        output = gated.view(output.shape)
    return output, weights


def gated_attention_forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
    """The forward of Qwen3.5's and Qwen3-Next's full-attention layers (transformers 5.23 to
    5.25), with the sigmoid output gate handed to the attention function instead of applied
    after it: attention "hops" then runs it in the kernel."""
    cache = kwargs.pop("past_key_values", None) if cache is None else cache  # the deprecated name
    modeling = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)

    query_states, gate = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim * 2).chunk(2, dim=-1)
    query_states = self.q_norm(query_states.view(hidden_shape)).transpose(1, 2)
    key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

    cos, sin = position_embeddings
    query_states, key_states = modeling.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

    attn_output, attn_weights = modeling.ALL_ATTENTION_FUNCTIONS[INTERFACE](
        self, query_states, key_states, value_states, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, output_gate=gate,
        **kwargs)
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def is_gated_attention_layer(cls, module) -> bool:
    """Whether `cls` is a full-attention layer of this module with the forward that
    gated_attention_forward reproduces (the text model's, not the vision tower's)."""
    import inspect

    if not cls.__name__.endswith("Attention") or "Vision" in cls.__name__ or "forward" not in vars(cls):
        return False
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return all(hasattr(module, name) for name in ("apply_rotary_pos_emb", "ALL_ATTENTION_FUNCTIONS")) and \
        "torch.sigmoid(gate)" in source and "attention_interface(" in source


TRANSFORMERS_FUNCTIONS = {}
TRANSFORMERS_METHODS = {}  # the layers' forward is replaced by _patch_transformers (it is not a fallback point)
FLA_ENTRY_POINTS = {}
