"""float64 numpy reference of the hops ops (the math of docs/OPS.md, token by token).

Slow and plain on purpose: the oracle the Python tests compare against.
"""

import numpy as np


def _f64(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def _spans(batch, tokens, cu_seqlens):
    """(row, begin, end) of each sequence."""
    if cu_seqlens is None:
        return [(n, 0, tokens) for n in range(batch)]
    cu = [int(c) for c in cu_seqlens]
    return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gdn_gating(A_log, a, b, dt_bias):
    return -np.exp(_f64(A_log)) * softplus(_f64(a) + _f64(dt_bias)), sigmoid(_f64(b))


def _gdn_sequence(q, k, v, g, beta, state, scale, use_qk_l2norm):
    """One sequence: q, k [T,H,K], v [T,HV,V], g, beta [T,HV], state [HV,K,V] (updated)."""
    groups = v.shape[1] // q.shape[1]
    q, k = np.repeat(q, groups, axis=1), np.repeat(k, groups, axis=1)
    if use_qk_l2norm:
        q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6)
        k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
    o = np.zeros(v.shape)
    for t in range(v.shape[0]):
        state *= np.exp(g[t])[:, None, None]
        u = beta[t][:, None] * (v[t] - np.einsum("hkv,hk->hv", state, k[t]))
        state += k[t][:, :, None] * u[:, None, :]
        o[t] = np.einsum("hkv,hk->hv", state, scale * q[t])
    return o


def gdn(q, k, v, g, beta, states, slots=None, cu_seqlens=None, scale=None, use_qk_l2norm=False,
        A_log=None, dt_bias=None, beta_mode=-1):
    """-> (o, states): states [S,HV,K,V] (or None: zeros, one per sequence) are read at
    slots[n] (default n; -1 skips the sequence) and returned updated. With A_log, g is the
    raw a of the fused gate; beta_mode: -1 sigmoid iff A_log, 0 as given, 1 sigmoid, 2 2*sigmoid."""
    q, k, v, g, beta = map(_f64, (q, k, v, g, beta))
    if A_log is not None:
        g = gdn_gating(A_log, g, beta, dt_bias)[0]
    mode = beta_mode if beta_mode >= 0 else int(A_log is not None)
    if mode:
        beta = mode * sigmoid(beta)
    batch, tokens, _, key_dim = q.shape
    spans = _spans(batch, tokens, cu_seqlens)
    if states is None:
        states = np.zeros((len(spans), v.shape[2], key_dim, v.shape[3]))
    states = _f64(states).copy()
    scale = key_dim ** -0.5 if scale is None else scale
    o = np.zeros(v.shape)
    for n, (row, begin, end) in enumerate(spans):
        slot = n if slots is None else int(slots[n])
        if slot < 0:
            continue
        o[row, begin:end] = _gdn_sequence(q[row, begin:end], k[row, begin:end], v[row, begin:end],
                                          g[row, begin:end], beta[row, begin:end], states[slot], scale,
                                          use_qk_l2norm)
    return o, states


def gated_rmsnorm(x, z, weight, eps=1e-6):
    x, z = _f64(x), _f64(z)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * _f64(weight) * z * sigmoid(z)


def conv1d(x, weight, bias=None, activation="silu", initial_state=None, cu_seqlens=None, state_len=None):
    """x [B,T,D] channels last -> (y, final states [N,D,state_len])."""
    x, weight = _f64(x), _f64(weight)
    batch, tokens, channels = x.shape
    width = weight.shape[1]
    spans = _spans(batch, tokens, cu_seqlens)
    state_len = width - 1 if state_len is None else state_len
    y = np.zeros(x.shape)
    finals = np.zeros((len(spans), channels, state_len))
    for n, (row, begin, end) in enumerate(spans):
        history = np.zeros((channels, 0)) if initial_state is None else _f64(initial_state[n])
        padded = np.concatenate([np.zeros((channels, max(state_len, width))), history,
                                 x[row, begin:end].T], axis=1)  # [D, time], oldest first
        start = padded.shape[1] - (end - begin)
        for t in range(end - begin):
            window = padded[:, start + t - width + 1:start + t + 1]
            y[row, begin + t] = (window * weight).sum(1) + (0 if bias is None else _f64(bias))
        finals[n] = padded[:, padded.shape[1] - state_len:]
    if activation == "silu":
        y = y * sigmoid(y)
    return y, finals


def conv1d_update(x, state, weight, bias=None, activation="silu", slots=None):
    """x [N,L,D]; state pool [S,D,SL] -> (y, new pool)."""
    x, state = _f64(x), _f64(state).copy()
    y = np.zeros(x.shape)
    for n in range(x.shape[0]):
        slot = n if slots is None else int(slots[n])
        if slot < 0:
            continue
        out, final = conv1d(x[n:n + 1], weight, bias, activation, state[slot:slot + 1],
                            state_len=state.shape[2])
        y[n], state[slot] = out[0], final[0]
    return y, state


def conv1d_seq_idx(x, weight, bias=None, activation="silu", seq_idx=None):
    """x [B,T,D] with seq_idx [B,T] (Dao's causal-conv1d): taps read only tokens of the same
    id, a token with a negative id gets y = 0."""
    x, weight, ids = _f64(x), _f64(weight), np.asarray(seq_idx)
    width = weight.shape[1]
    y = np.zeros(x.shape)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if ids[b, t] < 0:
                continue
            pre = np.zeros(x.shape[2]) if bias is None else _f64(bias).copy()
            for j in range(width):
                p = t - width + 1 + j
                if p >= 0 and ids[b, p] == ids[b, t]:
                    pre += weight[:, j] * x[b, p]
            y[b, t] = pre * sigmoid(pre) if activation == "silu" else pre
    return y


def conv1d_update_circular(x, state, weight, bias=None, activation="silu", cache_seqlens=None, slots=None):
    """x [N,L,D]; state pool [S,D,SL] of circular buffers (Dao's cache_seqlens: the W-1 inputs
    before the tokens end at column c-1, c = cache_seqlens[n] % SL; token t goes to column
    (c + t) % SL) -> (y, new pool); skipped sequences (slot -1) get y = 0."""
    x, state = _f64(x), _f64(state).copy()
    width, columns = weight.shape[1], state.shape[2]
    y = np.zeros(x.shape)
    for n in range(x.shape[0]):
        slot = n if slots is None else int(slots[n])
        if slot < 0:
            continue
        start = int(cache_seqlens[n]) % columns
        history = state[slot][:, [(start - width + 1 + i) % columns for i in range(width - 1)]]
        y[n] = conv1d(x[n:n + 1], weight, bias, activation, history[None], state_len=0)[0][0]
        for t in range(x.shape[1]):
            state[slot][:, (start + t) % columns] = x[n, t]
    return y, state
