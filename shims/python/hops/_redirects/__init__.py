"""What hops.patch redirects, one file per op family: each family module has NAME
(its name in reports and switches), SWITCH (the environment variable that turns it
off), TRANSFORMERS_FUNCTIONS (modeling-module globals -> hops implementations with
their signatures), TRANSFORMERS_METHODS (class-name suffix -> {method: implementation})
and FLA_ENTRY_POINTS (fla.ops.gated_delta_rule name -> (drop-in, op its verifier asks)).
No module here imports torch: torch tensors reach hops.torch_ops through _dispatch."""

from . import attn, conv, gdn, moe, norm

FAMILIES = (gdn, conv, norm, attn, moe)  # one line per family
