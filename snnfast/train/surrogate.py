"""The rate surrogate gradient of any feed-forward :class:`~snnfast.network.Network`.

The ``default`` preset's rule, generalised to any stack of stages (equations:
``docs/network.rst``, "Training any network"). Each spiking layer ``k`` is treated as

    r_k = phi_k(a_k),     a_k = s_k * post_k(L_k(e_k) + b_k),

with ``r_k`` its spikes per update, ``a_k`` its mean input current per update and ``e_k`` the
mean drive of its synaptic layer ``L_k`` per update. In a training step ``e_k`` is recomputed
densely from the recorded spikes of the forward pass:

    e_k = (1 / U_k) sum_t w_t pre_k(x_t),

``x_t`` the source's output at step ``t`` (the encoder's, or spiking layer ``k - 1``'s), ``U_k``
the layer's number of updates and ``w_t`` how many of its updates see step ``t``: 1 up to the
last update for a ``window`` drive (0 after it), the number of updates at or after ``t`` for a
``cumulative`` one. With linear post pools, ``a_k`` is exactly the mean of the currents the
LIF received. ``phi`` is the fast sigmoid of :func:`snnfast.convsnn_numpy.surrogate`.

The backward pass is the exact gradient of the *smooth network* (:func:`smooth_forward`),
in which spiking layer ``k`` outputs ``phi_k(a_k)`` and feeds the next stage
``e_{k+1} = kappa_{k+1} pre_{k+1}(r_k)``, ``kappa_{k+1} = (1 / U_{k+1}) sum_{t in updates of k}
w_t``: the source emits ``r_k`` spikes on each of its update steps. The read-out's rates are
``r_last * U_last / norm``.

Every long reduction over the batch is done in fixed chunks of samples, each by one
single-threaded BLAS call (:func:`snnfast.convsnn_numpy._serial_blas`, the chunks shared by a
thread pool, :class:`snnfast.convsnn._Par`), and the partial sums are added in chunk order:
the gradients do not depend on the thread count.
"""
from dataclasses import dataclass

import numpy as np

from ..convsnn_numpy import _serial_blas
from ..convsnn_numpy import surrogate as phi
from ..network.layers import Linear

__all__ = ["Stage", "plan", "stage_input", "stage_current", "train_forward", "smooth_forward",
           "backward", "cross_entropy_grad", "DEFAULT_CENTER", "DEFAULT_SLOPE"]

DEFAULT_CENTER = 0.45
"""Where phi' peaks: in the middle of a LIF's rate-vs-current transition (the presets')."""
DEFAULT_SLOPE = 4.0
"""phi's slope parameter k (peak slope k / 2; the presets')."""

CHUNK = 16
"""Samples per BLAS call: fixed, so that no result depends on the thread count."""


@dataclass
class Stage:
    """A spiking layer with the layers that drive it, as the backward pass needs them."""
    neuron: object             # the LIF/IF layer
    syn: object                # its Conv2d or Linear layer
    pre: list                  # [(pool/Flatten layer, its output shape)] before syn
    post: list                 # [(pool/Flatten layer, its output shape)] after syn
    syn_in: tuple              # syn's input shape
    src_shape: tuple           # the source's shape (the input, or the previous spiking layer)
    syn_out: tuple             # syn's output shape
    shape: tuple               # the neuron layer's shape
    n_updates: int
    weights_t: np.ndarray      # w_t (T,) float32: how many updates see step t
    kappa: float               # d e / d r_source (for stages after the first)
    center: float
    slope: float


def _step_weights(lif, T):
    steps = lif.update_steps(T)
    t = np.arange(T)
    if lif.drive == "cumulative":
        w = np.array([sum(1 for s in steps if s >= ti) for ti in t])
    else:
        w = (t <= steps[-1]).astype(int)
    return w.astype(np.float32)


def plan(network, surrogate=None):
    """The stages of ``network`` for training.

    Parameters
    ----------
    network : Network
    surrogate : dict, optional
        ``{layer name: {"center": c, "slope": k}}`` per spiking layer (default
        :data:`DEFAULT_CENTER`, :data:`DEFAULT_SLOPE`), or ``{"center": c, "slope": k}`` for all.

    Returns
    -------
    list of :class:`Stage`
    """
    net, T = network, network.T
    surrogate = surrogate or {}
    stages, prev_steps = [], None
    for n, chain in net.stages():
        syn = next(i for i in chain if net[i].kind == "synapse")
        lif = net[n]
        w = _step_weights(lif, T)
        U = len(lif.update_steps(T))
        kappa = 0.0 if prev_steps is None else float(w[prev_steps].sum()) / U
        sur = surrogate.get(lif.name, surrogate)
        stages.append(Stage(
            neuron=lif, syn=net[syn],
            pre=[(net[i], net.shapes[i]) for i in chain if i < syn],
            post=[(net[i], net.shapes[i]) for i in chain if i > syn],
            syn_in=net.input_shape_of(syn), syn_out=net.shapes[syn], shape=net.shapes[n],
            src_shape=net.input_shape_of(chain[0]),
            n_updates=U, weights_t=w, kappa=kappa,
            center=float(sur.get("center", DEFAULT_CENTER)),
            slope=float(sur.get("slope", DEFAULT_SLOPE))))
        prev_steps = lif.update_steps(T)
    return stages


# ----------------------------------------------------------------------------- threads
class _Rows:
    """Runs ``fn(rows)`` over fixed slices of :data:`CHUNK` samples, on a thread pool
    (:class:`snnfast.convsnn._Par`) with single-threaded BLAS."""

    def __init__(self, n_threads=None):
        from .._config import effective_n_threads
        from ..convsnn import _Par
        self.par = _Par(effective_n_threads(n_threads))

    def map(self, fn, n):
        """``[fn(slice)]`` for the row slices of ``range(n)``, in order (call it with BLAS
        limited to one thread: :func:`_serial_blas`)."""
        out = {}
        self.par.run(lambda s: out.__setitem__(s.start, fn(s)), n, CHUNK)
        return [out[k] for k in sorted(out)]

    def total(self, fn, n):
        """``sum fn(slice)`` over the row slices, added in slice order."""
        parts = self.map(fn, n)
        acc = parts[0].copy()
        for p in parts[1:]:
            acc += p
        return acc


_SERIAL = None


def _rows(runner):
    global _SERIAL
    if runner is not None:
        return runner
    if _SERIAL is None:
        _SERIAL = _Rows(1)
    return _SERIAL


# ----------------------------------------------------------------------------- dense ops
def _pool_fwd(layer, x):
    """A pool or Flatten on a batch (B, ...), in ``x``'s dtype (a max pool of uint8 spikes
    stays uint8). Sums add the window in (ky, kx) order, as :func:`snnfast.reference.pool2d`."""
    name = type(layer).__name__
    if name == "Flatten":
        return x.reshape(len(x), -1)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    OH, OW = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    taps = (x[:, :, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw))
    out = next(taps).copy()
    op = np.maximum if name == "MaxPool2d" else np.add
    for tap in taps:
        op(out, tap, out=out)
    return out / out.dtype.type(kh * kw) if name == "AvgPool2d" else out


def _pool_bwd(layer, x, g):
    """Gradient w.r.t. the input ``x`` (B, *in_shape) of a pool or Flatten, given ``g``, the
    gradient of its output. A max pool routes to the first maximum in (ky, kx) order."""
    name = type(layer).__name__
    if name == "Flatten":
        return g.reshape(x.shape)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    OH, OW = g.shape[2], g.shape[3]
    gx = np.zeros(x.shape, g.dtype)

    def view(a, ky, kx):
        return a[:, :, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]
    if name == "MaxPool2d":
        best = _pool_fwd(layer, x)
        taken = np.zeros(g.shape, bool)
        for i in range(kh * kw):                  # the first tap holding the maximum
            sel = view(x, *divmod(i, kw)) == best
            sel &= ~taken
            taken |= sel
            view(gx, *divmod(i, kw))[...] += np.where(sel, g, g.dtype.type(0))
        return gx
    if name == "AvgPool2d":
        g = g / g.dtype.type(kh * kw)
    for ky in range(kh):
        for kx in range(kw):
            view(gx, ky, kx)[...] += g
    return gx


def _im2col(x, layer):
    """(B, P, kh kw C) patches of x (B, C, H, W) for a Conv2d (P = OH OW), taps in
    (ky, kx, channel) order: :func:`_weight_matrix` orders the weight so. Built channels-last,
    so that every copy moves contiguous runs of channels."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    B, C, H, W = x.shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    xp = np.zeros((B, H + 2 * ph, W + 2 * pw, C), x.dtype)
    xp[:, ph:ph + H, pw:pw + W] = x.transpose(0, 2, 3, 1)
    cols = np.empty((B, OH, OW, kh, kw, C), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, :, :, ky, kx] = xp[:, ky:ky + sh * (OH - 1) + 1:sh,
                                       kx:kx + sw * (OW - 1) + 1:sw]
    return cols.reshape(B, OH * OW, kh * kw * C)


def _weight_matrix(weight):
    """A Conv2d weight (O, C, kh, kw) as the (O, kh kw C) matrix of :func:`_im2col`'s taps."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(len(weight), -1)


def _col2im(cols, layer, in_shape):
    """The adjoint of :func:`_im2col`: (B, P, kh kw C) -> (B, C, H, W), taps added in
    (ky, kx) order."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    C, H, W = in_shape
    B = len(cols)
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    c = cols.reshape(B, OH, OW, kh, kw, C)
    out = np.zeros((B, H + 2 * ph, W + 2 * pw, C), cols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            out[:, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw] += \
                c[:, :, :, ky, kx]
    return out[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)


def _syn_forward(st, weight, bias, e, rows, cache=None):
    """``L(e) + b`` (B, *syn_out) of the drives ``e`` (B, n_in); a Conv2d's patches are kept
    in ``cache["cols"]`` (a list, one array per chunk of samples) for the backward pass."""
    B = len(e)
    dt = np.result_type(e, weight)
    if isinstance(st.syn, Linear):
        out = np.empty((B, weight.shape[1]), dt)

        def f(s):
            out[s] = e[s] @ weight
        rows.map(f, B)
    else:
        O = weight.shape[0]
        wm = _weight_matrix(weight).astype(dt, copy=False)
        x = e.reshape((B,) + st.syn_in)
        out = np.empty((B, O) + st.syn_out[1:], dt)

        def f(s):
            cols = _im2col(x[s], st.syn)                       # (b, P, K)
            b, P, K = cols.shape
            out[s] = (cols.reshape(b * P, K) @ wm.T).reshape(b, P, O).transpose(0, 2, 1) \
                .reshape((b,) + st.syn_out)
            return cols
        cols = rows.map(f, B)
        if cache is not None:
            cache["cols"] = cols
    if bias is not None:
        out += bias.reshape((-1,) + (1,) * (out.ndim - 2))
    return out.reshape((B,) + st.syn_out)


def _syn_backward(st, weight, e, dz, rows, need_input, cols=None):
    """(dL/dW, dL/db, dL/de or None) of ``z = L(e) + b`` given ``dz`` (B, *syn_out); ``cols``:
    a Conv2d's patches from :func:`_syn_forward`'s cache."""
    B = len(e)
    if isinstance(st.syn, Linear):
        d = dz.reshape(B, -1)
        gw = rows.total(lambda s: e[s].T @ d[s], B)
        gb = rows.total(lambda s: d[s].sum(axis=0), B)
        if not need_input:
            return gw, gb, None
        de = np.empty(e.shape, d.dtype)

        def f(s):
            de[s] = d[s] @ weight.T
        rows.map(f, B)
        return gw, gb, de
    O = weight.shape[0]
    wm = _weight_matrix(weight).astype(dz.dtype, copy=False)
    x = e.reshape((B,) + st.syn_in)
    d = dz.reshape(B, O, -1)
    de = np.empty(x.shape, d.dtype) if need_input else None

    def f(s):
        c = _im2col(x[s], st.syn) if cols is None else cols[s.start // CHUNK]   # (b, P, K)
        b, P, K = c.shape
        ds = np.ascontiguousarray(d[s].transpose(0, 2, 1)).reshape(b * P, O)
        gw = ds.T @ c.reshape(b * P, K)
        if need_input:
            de[s] = _col2im((ds @ wm).reshape(b, P, K), st.syn, st.syn_in)
        return gw
    gw = rows.total(f, B)
    gw = gw.reshape(O, *weight.shape[2:], weight.shape[1]).transpose(0, 3, 1, 2)
    gb = rows.total(lambda s: d[s].sum(axis=(0, 2)), B)
    return gw, gb, None if de is None else de.reshape(B, -1)


# ----------------------------------------------------------------------------- forward
def stage_input(st, src):
    """``e = (1/U) sum_t w_t pre(x_t)`` (B, n_in) float32 of a source's outputs ``src``
    (B, T, *shape): spikes (uint8) or frames (float32)."""
    B, T = src.shape[:2]
    x = src.reshape((B * T,) + src.shape[2:])
    pre = list(st.pre)
    # a max pool acts on each step's values (on uint8 spikes as they are: cheap), the linear
    # pools and Flatten commute with the sum over the steps, which is done first then
    while pre and type(pre[0][0]).__name__ in ("MaxPool2d", "Flatten"):
        x = _pool_fwd(pre.pop(0)[0], x)
    x = _weighted_steps(x.reshape(B, T, -1), st.weights_t)
    x = x.reshape((B,) + (st.syn_in if not pre else _shape_before(st, pre)))
    for ly, _ in pre:
        x = _pool_fwd(ly, x)
    return x.reshape(B, -1) * np.float32(1.0 / st.n_updates)


def _shape_before(st, pre):
    """The input shape of the first of the remaining pre layers ``pre``."""
    i = [ly for ly, _ in st.pre].index(pre[0][0])
    return st.pre[i - 1][1] if i else st.src_shape


def stage_current(st, weights, e, rows=None):
    """(a, cache) of a stage: ``a = s * post(L(e) + b)`` (B, *shape), and what the backward
    pass reuses: ``cache["post"]``, the inputs of the post layers (for a max pool), and
    ``cache["cols"]``, a Conv2d's patches. Call it with BLAS limited to one thread
    (:func:`_serial_blas`) for results independent of the thread count."""
    rows = _rows(rows)
    cache = {"post": []}
    z = _syn_forward(st, weights[f"{st.syn.name}.weight"], weights.get(f"{st.syn.name}.bias"),
                     e, rows, cache)
    for ly, _ in st.post:
        cache["post"].append(z)
        z = _pool_fwd(ly, z)
    a = z.reshape((len(e),) + st.shape) * z.dtype.type(st.neuron.scale)
    return a, cache


def _readout_factor(network, stages):
    r = network.readout_index
    norm = network.T if network[r].norm == "steps" else stages[-1].n_updates
    return stages[-1].n_updates / max(norm, 1)


def _head(network, weights, rates):
    """The layers after the RateReadout on ``rates``: (output, their inputs)."""
    y, ins = rates, []
    for i in range(network.readout_index + 1, len(network)):
        ly = network[i]
        ins.append(y)
        if isinstance(ly, Linear):
            y = y @ weights[f"{ly.name}.weight"]
            b = weights.get(f"{ly.name}.bias")
            y = y if b is None else y + b
        else:
            y = y.reshape(len(y), -1)
    return y, ins


def train_forward(network, stages, weights, record, rows=None):
    """What :func:`backward` needs, from a recorded forward pass of the spiking network.

    Parameters
    ----------
    network : Network
    stages : list of Stage (:func:`plan`)
    weights : dict of float32 arrays
    record : dict
        :func:`snnfast.engine.forward` (or the reference's) output with ``record=True``.

    Returns
    -------
    dict: ``e``, ``a``, ``cache`` (see :func:`stage_current`) per stage, ``r`` (each spiking layer's spikes per update,
    float32), ``rates`` and ``head`` (the inputs of the layers after the read-out) and
    ``output`` (the logits of the recorded forward pass).
    """
    with _serial_blas():
        return _train_forward(network, stages, weights, record, _rows(rows))


def _train_forward(network, stages, weights, record, rows):
    fw = {"e": [], "a": [], "cache": [], "r": []}
    src = record["input"]
    for st in stages:
        spikes = record["spikes"][st.neuron.name]
        _add_stage(fw, st, weights, stage_input(st, src), rows,
                   _counts(spikes) * np.float32(1.0 / st.n_updates))
        src = spikes
    fw["rates"] = record["rates"]
    fw["output"], fw["head"] = _head(network, weights, record["rates"])
    return fw


def _add_stage(fw, st, weights, e, rows, r):
    """Append a stage's drive, current, cache and output rate (``r``; None: the smooth
    network's ``phi(a)``) to ``fw``."""
    a, cache = stage_current(st, weights, e, rows)
    for key, v in (("e", e), ("a", a), ("cache", cache),
                   ("r", phi(a, st.center, st.slope, deriv=False) if r is None else r)):
        fw[key].append(v)


def _weighted_steps(x, w):
    """``sum_t w[t] x[:, t]`` (B, P) float32 of (B, T, P) spikes or frames, without a float
    copy of ``x`` (spike counts are summed as integers: exact)."""
    B, T, P = x.shape
    if x.dtype == np.uint8 and np.all(w == w[0]):
        n = np.add.reduce(x, axis=1, dtype=np.uint16 if T < 256 else np.int64)
        return n.astype(np.float32) * np.float32(w[0])
    out = np.zeros((B, P), np.float32)
    for t in range(T):
        if w[t]:
            out += x[:, t] * np.float32(w[t])
    return out


def _counts(spikes):
    """Spike counts over the steps of (B, T, *shape) uint8 spikes, float32 (B, *shape)."""
    B, T = spikes.shape[:2]
    c = _weighted_steps(spikes.reshape(B, T, -1), np.ones(T, np.float32))
    return c.reshape((B,) + spikes.shape[2:])


def smooth_forward(network, stages, weights, e0, rows=None):
    """The smooth network (``phi`` in place of spike rates) from the first stage's drive
    ``e0`` (B, n_in): the function whose exact gradient :func:`backward` computes."""
    with _serial_blas():
        return _smooth_forward(network, stages, weights, e0, _rows(rows))


def _smooth_forward(network, stages, weights, e0, rows):
    fw = {"e": [], "a": [], "cache": [], "r": []}
    e = e0
    for k, st in enumerate(stages):
        if k:
            x = fw["r"][-1]
            for ly, _ in st.pre:
                x = _pool_fwd(ly, x)
            e = x.reshape(len(x), -1) * x.dtype.type(st.kappa)
        _add_stage(fw, st, weights, e, rows, None)
    last = fw["r"][-1]
    fw["rates"] = last.reshape(len(last), -1) * last.dtype.type(
        _readout_factor(network, stages))
    fw["output"], fw["head"] = _head(network, weights, fw["rates"])
    return fw


# ----------------------------------------------------------------------------- backward
def cross_entropy_grad(logits, y):
    """(mean cross-entropy, #correct, dL/dlogits) of integer labels ``y``."""
    from ..convsnn_numpy import softmax_xent
    loss, p = softmax_xent(logits, y)
    correct = int((logits.argmax(axis=1) == y).sum())
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    d *= d.dtype.type(1.0 / len(y))
    return loss, correct, d


def _head_backward(network, weights, fw, g, grads):
    """Gradients of the layers after the read-out; returns dL/drates."""
    for i in reversed(range(network.readout_index + 1, len(network))):
        ly, x = network[i], fw["head"][i - network.readout_index - 1]
        if isinstance(ly, Linear):
            w = weights[f"{ly.name}.weight"]
            grads[f"{ly.name}.weight"] = x.T @ g
            if f"{ly.name}.bias" in weights:
                grads[f"{ly.name}.bias"] = g.sum(axis=0)
            g = g @ w.T
        else:
            g = g.reshape(x.shape)
    return g


def backward(network, stages, weights, fw, dout, rows=None):
    """Gradients of every array of ``weights`` given ``dout`` = dL/d(output).

    Parameters
    ----------
    network : Network
    stages : list of Stage (:func:`plan`)
    weights : dict of arrays (float32 in training; float64 in gradient checks)
    fw : dict
        :func:`train_forward` (training) or :func:`smooth_forward` (checks).
    dout : array (B, *output_shape)
    rows : optional thread runner (``_Rows``); default single-threaded.

    Returns
    -------
    dict of arrays, one per key of ``weights``, in their dtype.
    """
    with _serial_blas():
        return _backward(network, stages, weights, fw, dout, _rows(rows))


def _backward(network, stages, weights, fw, dout, rows):
    grads = {}
    g = _head_backward(network, weights, fw, dout.reshape(len(dout), -1), grads)
    last = stages[-1]
    g = g.reshape((len(g),) + last.shape) * g.dtype.type(_readout_factor(network, stages))
    for k in reversed(range(len(stages))):
        st = stages[k]
        d = g * phi(fw["a"][k].astype(g.dtype, copy=False), st.center, st.slope)
        d = d * d.dtype.type(st.neuron.scale)
        for (ly, shape), x in zip(reversed(st.post), reversed(fw["cache"][k]["post"])):
            d = _pool_bwd(ly, x, d.reshape((len(d),) + shape))
        w = weights[f"{st.syn.name}.weight"]
        gw, gb, de = _syn_backward(st, w, fw["e"][k].astype(d.dtype, copy=False),
                                   d.reshape((len(d),) + st.syn_out), rows, k > 0,
                                   fw["cache"][k].get("cols"))
        grads[f"{st.syn.name}.weight"] = gw.reshape(w.shape)
        if f"{st.syn.name}.bias" in weights:
            grads[f"{st.syn.name}.bias"] = gb
        if k:
            g = de * de.dtype.type(st.kappa)
            src = fw["r"][k - 1]
            xs = [src]
            for ly, _ in st.pre[:-1]:
                xs.append(_pool_fwd(ly, xs[-1]))
            for (ly, shape), x in zip(reversed(st.pre), reversed(xs)):
                g = _pool_bwd(ly, x, g.reshape((len(g),) + shape))
            g = g.reshape((len(g),) + stages[k - 1].shape)
    return {k: grads[k].astype(weights[k].dtype, copy=False) for k in weights}
