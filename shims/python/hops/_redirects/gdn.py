"""Gated DeltaNet: transformers' chunked and recurrent rules, fla's entry points."""

from .. import fla
from .._dispatch import ops_for

NAME, SWITCH = "gdn", "HOPS_PATCH_GDN"


def chunk_rule(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    return fla.chunk_gated_delta_rule(query, key, value, g, beta, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens)


def recurrent_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                   use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    if initial_state is not None and str(initial_state.dtype) == "torch.float32" and output_final_state:
        # The layer passes its cache buffer and copies the returned state back into it
        # (cache_utils: update_recurrent_state), so advancing that buffer in place gives
        # the same cache without a fresh HV*K*V*4-byte state per layer and token.
        o = ops_for(query).gdn_recurrent(query, key, value, g, beta, initial_state, cu_seqlens=cu_seqlens,
                                         use_qk_l2norm=use_qk_l2norm_in_kernel)
        return o, initial_state
    return fla.fused_recurrent_gated_delta_rule(query, key, value, g=g, beta=beta, initial_state=initial_state,
                                                output_final_state=output_final_state,
                                                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                                cu_seqlens=cu_seqlens)


# Both layouts' names: a name absent or None in the installed version is left alone.
TRANSFORMERS_FUNCTIONS = {
    "torch_chunk_gated_delta_rule": chunk_rule,
    "torch_recurrent_gated_delta_rule": recurrent_rule,
    "chunk_gated_delta_rule": chunk_rule,
    "fused_recurrent_gated_delta_rule": recurrent_rule,
}
TRANSFORMERS_METHODS = {}
FLA_ENTRY_POINTS = {
    "chunk_gated_delta_rule": (fla.chunk_gated_delta_rule, "gdn_chunk_fwd"),
    "fused_recurrent_gated_delta_rule": (fla.fused_recurrent_gated_delta_rule, "gdn_recurrent"),
}
