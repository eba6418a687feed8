"""Defining the torch.ops.hops.* operators with little Python on the eager path.

torch.library.custom_op wraps a kernel in several Python layers (an autograd
kernel, a backend kernel, alias checks: ~10 us a call). Here each op is defined
on a torch.library.Library directly: the kernel is registered for every backend
(CompositeExplicitAutograd) and a lean Autograd kernel decides, per call:

- inputs that require grad: an autograd.Function whose backward is the op's;
- plain eager tensors (torch.Tensor or nn.Parameter, no dispatch mode active: no
  fake or functional tensors, no tracing): the kernel itself, with the version
  counters of mutated arguments bumped, as ADInplaceOrView would;
- anything else (torch.compile, opcheck, modes, subclasses): the op again, below
  autograd (AutoDispatchBelowAutograd), through the dispatcher as usual.

(An Autograd kernel that takes the dispatch keyset costs twice as much per call.)

Fake kernels serve torch.compile; mutated arguments get an ADInplaceOrView kernel.
"""

import torch

LIBRARY = torch.library.Library("hops", "DEF")  # noqa: TOR901 (hops owns the namespace)

_C = torch._C
_AFTER_INPLACE_OR_VIEW = _C._after_ADInplaceOrView_keyset
_PLAIN = {torch.Tensor, torch.nn.Parameter}
_modes = _C._len_torch_dispatch_stack
_below_autograd = _C._AutoDispatchBelowAutograd
_grad_enabled = _C.is_grad_enabled
_increment_version = torch.autograd.graph.increment_version


def define(schema: str, kernel, fake, *, mutated: tuple[int, ...] = (), backward=None, setup_context=None):
    """Define hops::<schema> running `kernel`; `fake` allocates its outputs for torch.compile;
    `mutated` are the indices of the arguments written in place; `backward(ctx, *grads)` and
    `setup_context(ctx, inputs, output)` make it differentiable (none: it has no gradient)."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema, tags=(torch.Tag.pt2_compliant_tag,))
    LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"hops::{name}", fake, lib=LIBRARY)
    op = getattr(torch.ops.hops, name).default
    types = [str(arg.type) for arg in op._schema.arguments]
    if any("Tensor" in kind and kind not in ("Tensor", "Optional[Tensor]") for kind in types):
        raise TypeError(f"hops::{name}: the Autograd kernel below reads Tensor and Tensor? arguments only")
    tensors = tuple(i for i, kind in enumerate(types) if "Tensor" in kind)
    # The dispatcher leaves out trailing arguments the caller left at their schema defaults
    # (arguments added later, docs/ABI.md): the Autograd kernel puts them back, so that
    # backward and setup_context see every input; `kernel` and `fake` give them defaults too.
    defaults = tuple(arg.default_value for arg in op._schema.arguments)
    returns_list = op._schema.returns[0].type.kind() == "ListType" if op._schema.returns else False

    def forward(ctx, *args):
        with _below_autograd():
            output = op(*args)
        if setup_context is not None:
            setup_context(ctx, args, output)
        return tuple(output) if returns_list else output

    def no_backward(ctx, *grads):
        raise RuntimeError(f"hops::{name} has no backward")

    differentiable = type(f"hops_{name}", (torch.autograd.Function,),
                          {"forward": staticmethod(forward), "backward": staticmethod(backward or no_backward)})

    def autograd_kernel(*args):
        if len(args) < len(defaults):
            args = (*args, *defaults[len(args):])
        # One pass over the tensors for both questions (torch's _any_requires_grad alone
        # costs as much: it parses its arguments as a Python signature).
        grad, plain = _grad_enabled(), not _modes()
        for index in tensors:
            tensor = args[index]
            if tensor is not None:
                if grad and tensor.requires_grad:
                    output = differentiable.apply(*args)
                    return list(output) if returns_list else output
                if type(tensor) not in _PLAIN:
                    plain = False
        if plain:  # plain eager tensors
            for index in mutated:
                _increment_version(args[index])
            return kernel(*args)
        with _below_autograd():
            return op(*args)

    LIBRARY.impl(name, autograd_kernel, "Autograd")
    if mutated:
        def inplace_or_view_kernel(keyset, *args):
            for index in mutated:
                _increment_version(args[index])
            return op.redispatch(keyset & _AFTER_INPLACE_OR_VIEW, *args)

        LIBRARY.impl(name, inplace_or_view_kernel, "ADInplaceOrView", with_keyset=True)
    return op
