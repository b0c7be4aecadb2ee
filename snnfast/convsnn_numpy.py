"""Plain vectorised NumPy (float32) implementation of the Conv-SNN forward pass and training step.

This module is the benchmark baseline and the fallback backend of :class:`snnfast.ConvSNN`.
It follows the documented semantics (page "Neuron and network semantics") literally:

* input spikes from the counter-based ``mix64`` stream (thread-count independent);
* conv currents as a sum of the taps of spiking input pixels plus the bias;
* LIF layers with the configured decay, strict threshold and reset;
* the hidden layer updated on the steps ``t % hidden_period == hidden_phase`` from a
  cumulative or windowed drive accumulator.

Two FC1 strategies exist. ``exact=False`` (default, the baseline) forms the drive with one
dense sgemm over all updates; BLAS may add the rows in another order, so currents can differ
from the compiled kernels in the last bit. ``exact=True`` adds the rows of ``W1`` in the
kernels' order (step ascending, neuron ascending, or incrementally: see
:func:`fc1_incremental`) with a sequential float32 ``cumsum``; it is slow and meant for tests
that require bit-identical spikes.

The sizes (input plane, conv channels/kernel/stride, hidden width, classes) are a
:class:`snnfast._convsnn_kernels.Geometry` read from the network description: a config's
``geometry`` (its preset's), or the ``geometry`` argument (default: the default preset's).
"""
from functools import lru_cache

import numpy as np

# pure-Python parts of the kernel API (the compiled modules load lazily there)
from ._convsnn_kernels import DEFAULT_GEOMETRY, EVAL_EPOCH, det_table
from ._utils import adam_step_size

__all__ = ["mix64", "sample_keys", "input_spikes", "conv_patch_index",
           "conv_currents", "forward", "surrogate", "conv_backward", "surrogate_backward",
           "reference_backward", "smooth_forward", "softmax_xent", "Adam", "EVAL_EPOCH",
           "GOLDEN", "fc1_incremental", "fc1_rows"]

GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- random numbers
def _mix64_int(z):
    """splitmix64 finaliser on a Python int (scalar prefix of a key)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def mix64(z):
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(seed, epoch, sample_ids):
    """Per-sample key ``mix64(mix64(mix64(seed ^ GOLDEN) ^ epoch) ^ sample_id)`` (uint64)."""
    h = _mix64_int(_mix64_int(int(seed) ^ GOLDEN) ^ (int(epoch) & _M64))
    ids = np.asarray(sample_ids).astype(np.uint64)
    return mix64(np.uint64(h) ^ ids)


def input_spikes(images, sample_ids, seed, epoch, T=10, n_det=5):
    """Binary input spikes (B, T, P) uint8 of uint8 images (B, P) (P pixels)."""
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    B, P = images.shape
    s = np.zeros((B, T, P), dtype=np.uint8)
    table = det_table(T, n_det)      # shared with the kernels: one float64 rule for both
    img = images.astype(np.int32)
    for t in range(min(T, n_det)):
        s[:, t] = img >= table[t]
    if T > n_det:
        keys = sample_keys(seed, epoch, sample_ids)
        thresh = images.astype(np.uint64) << np.uint64(24)          # u8 * 2^24
        pix = np.arange(P, dtype=np.uint64)
        for t in range(n_det, T):
            h = mix64(keys[:, None] ^ ((np.uint64(t) << np.uint64(32)) | pix)[None, :])
            s[:, t] = (h >> np.uint64(40)) * np.uint64(255) < thresh
    return s


# ----------------------------------------------------------------------------- conv
def _geo(geometry):
    return DEFAULT_GEOMETRY if geometry is None else geometry


def config_geometry(cfg):
    """The sizes of a config's network: its ``geometry`` (a :class:`ConvSNNConfig`'s is its
    preset description's), else the default preset's."""
    return _geo(getattr(cfg, "geometry", None))


def conv_patch_index(geometry=None):
    """(n_pos, k*k) pixel indices of each conv patch (raster order of taps)."""
    return _patch_index(_geo(geometry)).copy()


@lru_cache(maxsize=16)
def _patch_index(g):
    ys, xs = np.meshgrid(np.arange(g.out_h), np.arange(g.out_w), indexing="ij")
    ky, kx = np.meshgrid(np.arange(g.kernel), np.arange(g.kernel), indexing="ij")
    rows = (g.stride * ys.reshape(-1, 1) + ky.reshape(1, -1))
    cols = (g.stride * xs.reshape(-1, 1) + kx.reshape(1, -1))
    out = (rows * g.width + cols).astype(np.intp)
    out.flags.writeable = False
    return out


def conv_event_table(geometry=None):
    """int64 (n_pix,): conv synaptic events of one input spike (valid output positions x
    channels)."""
    g = _geo(geometry)
    hits = np.zeros(g.n_pix, dtype=np.int64)
    np.add.at(hits, _patch_index(g).reshape(-1), 1)
    return hits * g.channels


def conv_currents(x, conv_w, conv_b, exact=False, geometry=None):
    """Conv currents (..., n_conv) of inputs x (..., n_pix): sum of taps then + bias, float32.

    For binary x, ``exact=True`` adds the taps one at a time in raster order (the contract's
    float32 order). ``exact=False`` uses one sgemm (also right for real-valued rates).
    """
    g = _geo(geometry)
    C, K, P = g.channels, g.n_taps, g.n_pos
    lead = x.shape[:-1]
    dt = np.float64 if conv_w.dtype == np.float64 else np.float32   # float64: gradient checks
    w = conv_w.reshape(C, K).astype(dt, copy=False)
    patches = x.reshape(-1, g.n_pix)[:, _patch_index(g)]           # (N, n_pos, k*k)
    if exact:
        acc = np.zeros((patches.shape[0], C, P), dtype=np.float32)
        for k in range(K):
            tap = patches[:, None, :, k].astype(bool)
            acc += np.where(tap, w[None, :, k, None], np.float32(0.0))
    else:
        acc = np.matmul(patches.astype(dt, copy=False), w.T)   # (N, n_pos, C)
        acc = acc.transpose(0, 2, 1)
    acc = acc + conv_b.astype(dt)[None, :, None]
    return np.ascontiguousarray(acc.reshape(lead + (g.n_conv,)), dtype=dt)


def _reset_(v, zf, mode, thr):
    """In-place reset where the float32 0/1 mask ``zf`` is set (exact float32 results)."""
    if mode == "zero":            # v * (1 - z): spiking v is > thr > 0, so this gives +0
        v *= np.float32(1.0) - zf
    elif mode == "subtract":      # v - thr*z equals v - thr or v exactly
        v -= thr * zf
    elif mode == "halve":         # v * (1 - 0.5 z)
        v *= np.float32(1.0) - np.float32(0.5) * zf
    else:
        raise ValueError(f"unknown reset mode {mode!r}")


def _fc1_exact(zc, W1, update_steps, cumulative, incremental=False):
    """Drive of every update, rows of W1 added sequentially in the kernels' order. (B, U, H).

    The contract's order (``_convsnn_kernels.hidden_forward``): the window's spikes, step
    then ``j`` ascending; with ``incremental``, where both windows span at most two steps and
    it takes fewer rows, the previous drive plus the rows of the neurons that spiked more
    often in this window (``j`` ascending, repeated if twice), minus those that spiked less.
    """
    B, T, n = zc.shape
    U = len(update_steps)
    out = np.zeros((B, U, W1.shape[1]), dtype=np.float32)
    for b in range(B):
        start, prev = 0, None
        acc = np.zeros(W1.shape[1], dtype=np.float32)
        for u, t in enumerate(update_steps):
            win = range(start, t + 1)
            js = np.concatenate([np.nonzero(zc[b, s])[0] for s in win])
            rows, keep = W1[js], cumulative
            if incremental and prev is not None and len(win) <= 2 and len(prev) <= 2:
                d = zc[b, win].sum(axis=0, dtype=np.int64) - zc[b, prev].sum(axis=0, dtype=np.int64)
                up = np.repeat(np.arange(n), np.maximum(d, 0))
                down = np.repeat(np.arange(n), np.maximum(-d, 0))
                if up.size + down.size < js.size:
                    rows = np.concatenate([W1[up], -W1[down]], axis=0)   # a - w == a + (-w)
                    keep = True
            if not keep:
                acc = np.zeros(W1.shape[1], dtype=np.float32)
            if len(rows):
                acc = np.cumsum(np.concatenate([acc[None, :], rows], axis=0), axis=0,
                                dtype=np.float32)[-1]
            out[b, u] = acc
            start, prev = t + 1, win
    return out


def fc1_rows(windows, update_steps, incremental):
    """Rows of W1 the compiled FC1 adds or subtracts per (sample, update): int64 (B, U).

    ``windows`` (B, U, n_conv): each neuron's conv spikes in each update's window. Directly,
    one row per spike; with ``incremental`` (see :func:`_fc1_exact`) an update whose window
    and the previous one span at most two steps takes ``sum_j |window_u - window_{u-1}|``
    rows instead, if that is fewer.
    """
    w = np.asarray(windows, dtype=np.int64)
    rows = w.sum(axis=2)
    if incremental:
        span = np.diff([-1] + list(update_steps))                 # steps per window
        for u in range(1, len(update_steps)):
            if span[u] <= 2 and span[u - 1] <= 2:
                delta = np.abs(w[:, u] - w[:, u - 1]).sum(axis=1)
                rows[:, u] = np.minimum(rows[:, u], delta)
    return rows


def fc1_incremental(drive, hidden_period):
    """Whether the compiled FC1 forms a hidden drive incrementally (a config's ``drive`` and
    ``hidden_period``).

    Only a windowed drive of a layer updated every other step or less often: with an update
    every step (the ``nir`` preset) each update's drive stays the plain sum that a NIR
    graph computes.
    """
    return drive == "window" and hidden_period > 1


def update_steps(cfg):
    """Hidden update steps of a config (a list of ints)."""
    return [t for t in range(cfg.T) if t % cfg.hidden_period == cfg.hidden_phase]


def forward(params, images, sample_ids, epoch, cfg, exact=False, record=False, matmul=None):
    """Forward pass of a batch.

    Parameters
    ----------
    params : dict of float32 arrays (canonical layouts)
    images : uint8 (B, n_pix)
    sample_ids : int (B,)
    epoch : int, the noise key's epoch (``EVAL_EPOCH`` for evaluation)
    cfg : ConvSNNConfig (or any object with the semantics fields; the sizes are its
        ``geometry``, see :func:`config_geometry`)
    exact : bool, contract-order float32 sums (slow; tests)
    record : bool, also return the spike trains
    matmul : callable(A, W1) -> A @ W1 for the FC1 drive (default ``np.matmul``)

    Returns
    -------
    dict with logits (B, classes), r_in (B, n_pix), r_c (B, n_conv), r_h (B, hidden), n_in,
    n_c, n_h (int32), a_h (B, hidden) mean hidden current per update, c_h (B, n_conv) conv
    spikes reaching the hidden layer per update, and with ``record`` s_in, z_c, z_h (uint8,
    (B,T,...)).
    """
    T = cfg.T
    g = config_geometry(cfg)
    N = g.n_conv
    seed = 42 if cfg.reseeded_noise else cfg.seed
    if cfg.reseeded_noise:
        epoch, sample_ids = 0, np.arange(len(images))
    s_in = input_spikes(images, sample_ids, seed, epoch, T, cfg.n_det)
    B = s_in.shape[0]
    Ic = conv_currents(s_in, params["conv_w"], params["conv_b"], exact=exact, geometry=g)
    steps = update_steps(cfg)
    U = len(steps)
    is_update = np.zeros(T, bool)
    is_update[steps] = True
    cumulative = cfg.drive == "cumulative"
    keep_z = exact or record
    beta_c, thr_c = np.float32(cfg.beta_c), np.float32(cfg.thr_c)
    v = np.zeros((B, N), dtype=np.float32)
    z = np.empty((B, N), dtype=bool)
    zf = np.empty((B, N), dtype=np.float32)
    n_c = np.zeros((B, N), dtype=np.float32)
    win = np.zeros((B, N), dtype=np.float32)
    counts = np.zeros((B, U, N), dtype=np.float32)    # conv spikes the accumulator adds
    zc = np.zeros((B, T, N), dtype=np.uint8) if keep_z else None
    conv_count = np.zeros((B, T), dtype=np.int64)
    fc1_adds = np.zeros((B, T), dtype=np.int64)
    u = 0
    for t in range(T):
        np.multiply(v, beta_c, out=v)
        np.add(v, Ic[:, t], out=v)
        np.greater(v, thr_c, out=z)
        zf[...] = z
        n_c += zf
        conv_count[:, t] = z.sum(axis=1)
        if keep_z:
            zc[:, t] = z
        _reset_(v, zf, cfg.reset_c, thr_c)
        if U:
            win += zf
            if is_update[t]:
                counts[:, u] = n_c if cumulative else win
                win[...] = 0
                u += 1
    windows = np.diff(counts, axis=1, prepend=0) if cumulative else counts
    incremental = fc1_incremental(cfg.drive, cfg.hidden_period)
    W1, b1 = params["W1"], params["b1"]
    H = W1.shape[1]
    fc1_adds[:, steps] = fc1_rows(windows, steps, incremental) * H
    if exact:
        acc = _fc1_exact(zc, W1, steps, cumulative, incremental)
    else:
        acc = (matmul or np.matmul)(counts.reshape(B * U, N), W1).reshape(B, U, H)
    scale = np.float32(cfg.drive_scale)
    Ih = (acc + b1) * scale
    beta_h, thr_h = np.float32(cfg.beta_h), np.float32(cfg.thr_h)
    vh = np.zeros((B, H), dtype=np.float32)
    nh = np.zeros((B, H), dtype=np.float32)
    zh_f = np.empty((B, H), dtype=np.float32)
    zh = np.zeros((B, T, H), dtype=np.uint8) if record else None
    hid_count = np.zeros((B, T), dtype=np.int64)
    for u, t in enumerate(steps):
        np.multiply(vh, beta_h, out=vh)
        np.add(vh, Ih[:, u], out=vh)
        np.greater(vh, thr_h, out=zh_f)
        nh += zh_f
        hid_count[:, t] = zh_f.sum(axis=1, dtype=np.float64).astype(np.int64)
        if record:
            zh[:, t] = zh_f
        _reset_(vh, zh_f, cfg.reset_h, thr_h)
    n_in = s_in.sum(axis=1, dtype=np.int32)
    norm_h = T if cfg.rate_norm == "T" else U
    r_c = n_c / np.float32(T)
    r_h = nh / np.float32(norm_h)
    logits = r_h @ params["W2"] + params["b2"]
    out = dict(logits=logits, r_in=n_in.astype(np.float32) / np.float32(T), r_c=r_c, r_h=r_h,
               n_in=n_in, n_c=n_c.astype(np.int32), n_h=nh.astype(np.int32),
               a_h=Ih.sum(axis=1) / np.float32(max(U, 1)),
               c_h=counts.sum(axis=1) / np.float32(max(U, 1)), n_updates=U)
    in_count = s_in.sum(axis=2, dtype=np.int64)
    out["counts"] = dict(input_spikes=in_count, conv_spikes=conv_count, hidden_spikes=hid_count,
                         conv_synaptic_events=(s_in.astype(np.int64) @ conv_event_table(g)),
                         fc1_row_adds=fc1_adds)
    if record:
        out.update(s_in=s_in, z_c=zc, z_h=zh)
    return out


# ----------------------------------------------------------------------------- gradients
def softmax_xent(logits, y):
    """Mean cross-entropy and softmax probabilities (float32)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))))
    return loss, p.astype(logits.dtype, copy=False)


def surrogate(a, center, slope, deriv=True):
    """Fast-sigmoid rate surrogate phi(a) = 0.5 (1 + k x / (1 + k|x|)), x = a - center.

    With ``deriv`` return phi'(a) = 0.5 k / (1 + k|x|)^2 instead.
    """
    x = a - a.dtype.type(center)
    if deriv:
        # in place, the same operations as below: one temporary instead of five
        d = np.abs(x, out=x)
        d *= slope
        d += 1
        d *= d
        return np.divide(0.5 * slope, d, out=d)
    d = 1 + slope * np.abs(x)
    return 0.5 * (1 + slope * x / d)


_CONTROLLER = []


def _serial_blas():
    """Context limiting BLAS to one thread (results independent of the thread count)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _conv_input_grad(r_in, delta_ac, g):
    """Gradients of conv_w (C,1,k,k) and conv_b (C,) given dL/da_c (B, n_conv)."""
    B, C, P = r_in.shape[0], g.channels, g.n_pos
    patches = r_in[:, _patch_index(g)].reshape(B * P, g.n_taps)     # (B*n_pos, k*k)
    d = delta_ac.reshape(B, C, P).transpose(0, 2, 1).reshape(B * P, C)
    with _serial_blas():     # a long reduction: threaded BLAS would split it by thread count
        gw = (d.T @ patches).reshape(g.param_shapes["conv_w"])
    return gw, delta_ac.reshape(B, C, P).sum(axis=(0, 2))


def conv_backward(r_in, conv_w, conv_b, back, total, scale, center, slope, geometry=None):
    """Gradients (conv_w, conv_b) of the surrogate conv layer r_c = phi(a_c), given
    dL/dr_c = scale * back (sizes: ``geometry``, default the default preset's).

    With ``total`` None, ``back`` is dense. Otherwise ``back`` may be 0 where a conv
    neuron's k x k input patch is all zero, and ``total`` holds its full column sums: there
    a_c = b_c, so those entries add nothing to dL/dw_c, and
    dL/db_c = scale sum back (phi'(a_c) - phi'(b_c)) + scale phi'(b_c) sum back, whose first
    sum has no terms at them and whose second is ``total``'s. This lets the back product
    skip them (:func:`snnfast._convsnn_kernels.w1_adam_step`).
    """
    g = _geo(geometry)
    delta_rc = back * scale
    phi = surrogate(conv_currents(r_in, conv_w, conv_b, geometry=g), center, slope)
    gw, gb = _conv_input_grad(r_in, delta_rc * phi, g)
    if total is not None:
        phi_b = surrogate(conv_b, center, slope)
        phi -= np.repeat(phi_b, g.n_pos)
        gb = ((delta_rc * phi).reshape(len(back), len(phi_b), g.n_pos).sum(axis=(0, 2))
              + scale * phi_b * total.reshape(len(phi_b), g.n_pos).sum(axis=1))
    return gw, gb


def surrogate_backward(params, fw, dlogits, cfg, w1_step=None, conv_grad=None):
    """Rate-based surrogate gradient of all parameters (the default/nir training rule).

    Each spiking layer is treated as r = phi(a) with a its mean input current per update;
    dL/da = dL/dr * phi'(a). The conv current a_c = conv(r_in) + b_c is linear in r_in, so it is
    recomputed exactly. The hidden current a_h = s (c_h @ W1 + b1) with c_h the conv spikes per
    update that reached the hidden layer, and dc_h/dr_c = T / n_updates.

    ``w1_step(c_h, d) -> (dL/dW1 or None, back, total or None)`` lets a caller handle W1
    itself (the kernels keep it blocked and update it in the same pass; then it returns None
    and the result has no "W1"); the default uses the canonical ``params["W1"]``. ``back``
    and ``total`` are as in :func:`conv_backward`, which ``conv_grad`` (same signature; the
    kernels' version) may replace.
    """
    if conv_grad is None:
        geometry = config_geometry(cfg)

        def conv_grad(*args):
            return conv_backward(*args, geometry=geometry)
    if w1_step is None:
        def w1_step(c, d):
            return c.T @ d, d @ params["W1"].T, None
    r_in, r_h = fw["r_in"], fw["r_h"]
    s = params["W2"].dtype.type(cfg.drive_scale)
    g = {}
    g["W2"] = r_h.T @ dlogits
    g["b2"] = dlogits.sum(axis=0)
    delta_rh = dlogits @ params["W2"].T
    delta_ah = delta_rh * surrogate(fw["a_h"], cfg.surr_center_h, cfg.surr_slope_h)
    sd = s * delta_ah
    gW1, back, total = w1_step(fw["c_h"], sd)
    if gW1 is not None:
        g["W1"] = gW1
    g["b1"] = sd.sum(axis=0)
    g["conv_w"], g["conv_b"] = conv_grad(r_in, params["conv_w"], params["conv_b"], back, total,
                                         s.dtype.type(cfg.T / fw["n_updates"]),
                                         cfg.surr_center_c, cfg.surr_slope_c)
    return {k: v.astype(params["W2"].dtype, copy=False) for k, v in g.items()}


def smooth_forward(params, r_in, cfg):
    """The smooth surrogate network (phi in place of spike rates), for gradient checks.

    Returns a dict shaped like :func:`forward`'s so :func:`surrogate_backward` applies to it.
    """
    U = len(update_steps(cfg))
    a_c = conv_currents(r_in, params["conv_w"], params["conv_b"], geometry=config_geometry(cfg))
    r_c = surrogate(a_c, cfg.surr_center_c, cfg.surr_slope_c, deriv=False)
    c_h = r_c * (cfg.T / U)
    a_h = (c_h @ params["W1"] + params["b1"]) * cfg.drive_scale
    r_h = surrogate(a_h, cfg.surr_center_h, cfg.surr_slope_h, deriv=False)
    return dict(logits=r_h @ params["W2"] + params["b2"], r_in=r_in, r_c=r_c, r_h=r_h,
                a_h=a_h, c_h=c_h, n_updates=U)


def reference_backward(params, fw, probs, y, w1_outer=None):
    """Summed (not averaged) gradients of the seed preset: no spike derivative, W2 and W1 only.

    ``w1_outer(r_c, e_h)`` may produce dL/dW1 in another layout (default: canonical), or
    apply the W1 step itself and return None (then the result has no "W1").
    """
    e = probs.copy()
    e[np.arange(len(y)), y] -= 1
    g = {"W2": fw["r_h"].T @ e, "b2": e.sum(axis=0)}
    e_h = e @ params["W2"].T
    gW1 = fw["r_c"].T @ e_h if w1_outer is None else w1_outer(fw["r_c"], e_h)
    if gW1 is not None:
        g["W1"] = gW1
    return g


REFERENCE_DECAY = np.float32(0.9999)
"""The reference's multiplicative weight decay of W1 and W2 after every step."""


def reference_w1_rate(lr):
    """The reference's W1 learning rate (a tenth of W2's), as float32."""
    return np.float32(0.1) * np.float32(lr)


def reference_update(params, g, lr):
    """In-place seed-preset SGD step with the reference's 0.9999 weight decay.

    W1 is left alone when ``g`` has no "W1" (a fused kernel already stepped it).
    """
    lr = np.float32(lr)
    params["W2"] -= lr * g["W2"]
    params["b2"] -= lr * g["b2"]
    params["W2"] *= REFERENCE_DECAY
    if "W1" in g:
        params["W1"] -= reference_w1_rate(lr) * g["W1"]
        params["W1"] *= REFERENCE_DECAY


class Adam:
    """Adam in NumPy float32, the same per-element formula as the fused kernel ``adam_step``.

    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)`` with bias corrections bc1, bc2.
    """

    def __init__(self, params, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads, lr):
        self.t += 1
        b1, b2 = float(np.float32(self.beta1)), float(np.float32(self.beta2))
        step_size = adam_step_size(lr, 1.0 - b1 ** self.t)
        rbc2 = np.float32(1.0 / np.sqrt(1.0 - b2 ** self.t))
        for k, g in grads.items():
            m, v, p = self.m[k], self.v[k], params[k]
            m *= np.float32(b1)
            m += np.float32(1.0 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1.0 - b2) * (g * g)
            p -= step_size * (m / (np.sqrt(v) * rbc2 + np.float32(self.eps)))
