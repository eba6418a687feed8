"""The math of reference.py in torch, token by token, so that float64 autograd through it
gives the gradients hops' backward kernels must match (hops has no float64 kernels, so
torch.autograd.gradcheck cannot run on hops itself)."""

import torch
import torch.nn.functional as F


def _spans(batch, tokens, cu_seqlens):
    """(row, begin, end) of each sequence."""
    if cu_seqlens is None:
        return [(n, 0, tokens) for n in range(batch)]
    cu = [int(c) for c in cu_seqlens]
    return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def _l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def gdn(q, k, v, g, beta, initial_state=None, cu_seqlens=None, scale=None, use_qk_l2norm=False):
    """-> (o [B,T,HV,V], final states [N,HV,K,V]); states start at initial_state or 0."""
    groups = v.shape[2] // q.shape[2]
    q, k = q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rows = [[None] * q.shape[1] for _ in range(q.shape[0])]
    finals = []
    for n, (row, begin, end) in enumerate(_spans(q.shape[0], q.shape[1], cu_seqlens)):
        state = q.new_zeros(v.shape[2], q.shape[3], v.shape[3]) if initial_state is None else initial_state[n]
        for t in range(begin, end):
            state = g[row, t].exp()[:, None, None] * state
            u = beta[row, t][:, None] * (v[row, t] - torch.einsum("hkv,hk->hv", state, k[row, t]))
            state = state + k[row, t][:, :, None] * u[:, None, :]
            rows[row][t] = torch.einsum("hkv,hk->hv", state, scale * q[row, t])
        finals.append(state)
    empty = v.new_zeros(v.shape[2:])  # tokens of no sequence (none when the offsets cover T)
    o = torch.stack([torch.stack([x if x is not None else empty for x in row]) for row in rows])
    return o, torch.stack(finals)


def conv1d(x, weight, bias=None, activation="silu", initial_state=None, cu_seqlens=None, state_len=None):
    """x [B,T,D] channels last -> (y, final states [N,D,state_len])."""
    batch, tokens, channels = x.shape
    width = weight.shape[1]
    state_len = width - 1 if state_len is None else state_len
    rows, finals = [[] for _ in range(batch)], []
    for n, (row, begin, end) in enumerate(_spans(batch, tokens, cu_seqlens)):
        history = x.new_zeros(channels, 0) if initial_state is None else initial_state[n]
        padded = torch.cat([x.new_zeros(channels, max(state_len, width)), history, x[row, begin:end].T], dim=1)
        first = padded.shape[1] - (end - begin) - width + 1  # the first window's oldest column
        pre = sum(weight[:, j, None] * padded[:, first + j:first + j + end - begin] for j in range(width)).T
        pre = pre + (0 if bias is None else bias)
        rows[row].append(F.silu(pre) if activation == "silu" else pre)
        finals.append(padded[:, padded.shape[1] - state_len:])
    return torch.stack([torch.cat(row) for row in rows]), torch.stack(finals)


def gated_rmsnorm(x, z, weight, eps=1e-6):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight * F.silu(z)


def conv1d_seq_idx(x, weight, bias=None, activation="silu", seq_idx=None):
    """x [B,T,D] with seq_idx [B,T] (Dao's causal-conv1d): taps read only tokens of the same
    id, a token with a negative id gets y = 0."""
    width = weight.shape[1]
    columns = []
    for t in range(x.shape[1]):
        pre = x.new_zeros(x.shape[0], x.shape[2]) + (0 if bias is None else bias)
        for j in range(width):
            p = t - width + 1 + j
            if p >= 0:
                pre = pre + (seq_idx[:, p] == seq_idx[:, t])[:, None] * weight[:, j] * x[:, p]
        y = F.silu(pre) if activation == "silu" else pre
        columns.append(torch.where((seq_idx[:, t] < 0)[:, None], torch.zeros_like(y), y))
    return torch.stack(columns, dim=1)
