"""The compiled inference engine of any :class:`~snnfast.network.Network` description.

:func:`forward` has the signature and returns of :func:`snnfast.reference.forward` and gives
the same spikes, counters, rates and outputs bit for bit: the kernels (``ext/snn_engine.h``)
add every float32 term in the order ``docs/network.rst`` documents. Each sample runs all its
time steps through all stages inside one compiled call (OpenMP over samples, the GIL
released), so results do not depend on the thread count or the batch split.

The layers after the :class:`~snnfast.network.RateReadout` run once per batch on the rates,
as NumPy matrix products (the reference's :func:`~snnfast.reference.linear`).
"""
import threading
from contextlib import contextmanager

import numpy as np

from .._config import effective_n_threads
from ..convsnn_numpy import _serial_blas
from ..network.layers import Conv2d, Direct, Linear
from ..reference.forward import (_GOLDEN, _M64, EVAL_EPOCH, _check_weights, _mix64,
                                 linear)

__all__ = ["forward", "CompiledNetwork", "EVAL_EPOCH"]

f32 = np.float32
_POOL_KINDS = {"SumPool2d": 0, "AvgPool2d": 1, "MaxPool2d": 2}
_RESETS = {"zero": 0, "subtract": 1, "halve": 2}
_NONE = np.zeros(1, np.int32)          # the kernels' stand-in for an empty int table


def _kernels():
    try:
        from .. import _engine
    except ImportError:
        raise ImportError("snnfast.engine needs the compiled extension snnfast._engine; build "
                          "it with `python setup.py build_ext --inplace`") from None
    return _engine


# ----------------------------------------------------------------------------- stage tables
def _pools(net, indices):
    """The pools among ``indices`` as the kernels' int32 table (n, 10): kind, C, H, W, kh,
    kw, sh, sw, OH, OW (Flatten is a no-op in (C, H, W) order)."""
    rows = []
    for i in indices:
        layer = net[i]
        if type(layer).__name__ in _POOL_KINDS:
            C, H, W = net.input_shape_of(i)
            rows.append([_POOL_KINDS[type(layer).__name__], C, H, W, *layer.kernel_size,
                         *layer.stride, *net.shapes[i][1:]])
    return (np.array(rows, np.int32).reshape(-1) if rows else _NONE), len(rows)


def _taps(size, k, s, p, out):
    """For each input row (or column) ``y``, the kernel rows ``ky`` that reach an output
    ``o`` (``o * s = y + p - ky``), as CSR tables (ptr, ky, o) of int32."""
    ptr, ks, os_ = [0], [], []
    for y in range(size):
        for ky in range(k):
            n = y + p - ky
            if n >= 0 and n % s == 0 and n // s < out:
                ks.append(ky)
                os_.append(n // s)
        ptr.append(len(ks))
    return tuple(np.array(a if a else [0], np.int32) for a in (ptr, ks, os_))


def _block_width(n_in, n_out):
    """Column block width of a Linear stage (0: no blocks): the widest multiple of 16 in
    [16, 256] whose weight slice (n_in x width float32) fits in ~3/4 of a core's L2 cache
    (32 columns if the cache size is unknown); the block order changes no sum."""
    from .._convsnn_kernels import _l2_bytes
    l2 = _l2_bytes()
    bw = 32 if l2 is None else (int(0.75 * l2) // (4 * n_in)) // 16 * 16
    bw = min(max(bw, 16), 256)
    return 0 if bw >= n_out else bw


def _stage_table(net, weights, k, neuron, chain, src_shape):
    """The kernels' description of stage ``k`` (a dict of ints, floats and arrays)."""
    syn = next(i for i in chain if net[i].kind == "synapse")
    layer, lif = net[syn], net[neuron]
    in_shape = net.input_shape_of(syn)
    w, bias = weights[f"{layer.name}.weight"], weights.get(f"{layer.name}.bias")
    pre, n_pre = _pools(net, [i for i in chain if i < syn])
    post, n_post = _pools(net, [i for i in chain if i > syn])
    d = dict(src_size=int(np.prod(src_shape)), pre=pre, n_pre=n_pre,
             n_in=int(np.prod(in_shape)), n_out=int(np.prod(net.shapes[syn])),
             post=post, n_post=n_post, n_neur=int(np.prod(net.shapes[neuron])),
             bias=bias, beta=float(lif.beta), thr=float(lif.threshold), scale=float(lif.scale),
             reset=_RESETS[lif.reset], period=lif.period, phase=lif.phase,
             cumulative=int(lif.drive == "cumulative"),
             # the reference's incremental window form can only apply to windows of <= 2
             # steps of spikes (period 2), never to the first stage's encoder output
             incremental=int(k > 0 and lif.drive == "window" and lif.period == 2 and
                             all(type(net[i]).__name__ == "Flatten"
                                 for i in chain if i < syn)))
    if isinstance(layer, Conv2d):
        O, (C, H, W), (kh, kw) = layer.out_channels, in_shape, layer.kernel_size
        OH, OW = net.shapes[syn][1:]
        d.update(conv=1, conv_shape=(O, H, W, kh, kw, OH, OW), w_stride=0, fan_out=0, block=0,
                 w=np.ascontiguousarray(w.transpose(1, 2, 3, 0)).reshape(-1))  # (C, kh, kw, O)
        ys = _taps(H, kh, layer.stride[0], layer.padding[0], OH)
        xs = _taps(W, kw, layer.stride[1], layer.padding[1], OW)
    else:
        assert isinstance(layer, Linear)
        n_out = layer.out_features
        bw = _block_width(d["n_in"], n_out) if k > 0 else 0
        if bw:       # each column block's (n_in, width) slice contiguous, one after the other
            w = np.concatenate([w[:, j:j + bw].reshape(-1) for j in range(0, n_out, bw)])
        d.update(conv=0, conv_shape=(0,) * 7, w=w.reshape(-1), w_stride=n_out, fan_out=n_out,
                 block=bw)
        ys = xs = (_NONE,) * 3
    d.update(zip(("ytap_ptr", "ytap_k", "ytap_o"), ys))
    d.update(zip(("xtap_ptr", "xtap_k", "xtap_o"), xs))
    return d


# ----------------------------------------------------------------------------- inputs
def _check_ids(sample_ids, B):
    ids = np.arange(B) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (B,) or ids.dtype.kind not in "iu" or (B and ids.min() < 0):
        raise ValueError(f"sample_ids must be {B} integers >= 0")
    return np.ascontiguousarray(ids, dtype=np.uint64)


def _noise_key(seed, epoch):
    """The Hybrid encoder's key of (seed, epoch), as the reference derives it."""
    for v, what in ((seed, "seed"), (epoch, "epoch")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
                not 0 <= int(v) < 2 ** 64:
            raise ValueError(f"{what} must be an integer in [0, 2**64), got {v!r}")
    return int(_mix64(_mix64(np.uint64((int(seed) ^ _GOLDEN) & _M64)) ^ np.uint64(int(epoch))))


def _det_table(T, n_det):
    """(min(T, n_det), 256) uint8: does pixel value u spike at deterministic step t
    (``u / 255 > 1 - t / n_det`` in float64, as the reference)."""
    u = np.arange(256, dtype=np.float64)
    rows = [u / 255.0 > 1.0 - t / float(n_det) for t in range(min(T, n_det))]
    return np.array(rows, np.uint8).reshape(-1, 256) if rows else np.zeros((1, 256), np.uint8)


def _check_images(x, shape):
    """uint8 C-contiguous images (B, C, H, W), (B, C*H*W) or (B, H, W) when C = 1, as
    (B, P)."""
    P = int(np.prod(shape))
    if x.dtype != np.uint8:
        raise ValueError(f"inputs must be uint8 images for the Hybrid encoder, got {x.dtype}")
    if not ((x.ndim == 2 and x.shape[1] == P) or x.shape[1:] == shape or
            (shape[0] == 1 and x.shape[1:] == shape[1:])):
        raise ValueError(f"inputs must have shape (N, {', '.join(map(str, shape))}) or "
                         f"(N, {P}), got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("inputs must be C-contiguous (use numpy.ascontiguousarray)")
    return x.reshape(len(x), P)


def _check_frames(x, T, shape):
    """float32 C-contiguous finite frames (B, T, C, H, W), as (B, T, P)."""
    want = (T,) + shape
    if x.ndim != 5 or x.shape[1:] != want:
        raise ValueError(f"inputs must have shape (N, {', '.join(map(str, want))}) for the "
                         f"Direct encoder, got {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"inputs must be float32 frames for the Direct encoder, got "
                         f"{x.dtype} (use inputs.astype(numpy.float32))")
    if not x.flags.c_contiguous:
        raise ValueError("inputs must be C-contiguous (use numpy.ascontiguousarray)")
    if not np.isfinite(x).all():
        raise ValueError("inputs must hold finite real numbers")
    return x.reshape(len(x), T, -1)


# ----------------------------------------------------------------------------- the engine
class CompiledNetwork:
    """A Network with its weights, validated and laid out once for the kernels.

    Parameters
    ----------
    network : Network
    weights : dict
        ``{"<layer>.weight": array, "<layer>.bias": array}`` as
        :meth:`Network.param_shapes` lists (copied to float32).

    Use :meth:`forward` for each batch; :func:`forward` builds one per call.
    """

    def __init__(self, network, weights):
        net = self.network = network
        self.weights = _check_weights(net, weights)
        self._stages, src = [], net.input_shape
        for k, (n, chain) in enumerate(net.stages()):
            self._stages.append(_stage_table(net, self.weights, k, n, chain, src))
            src = net.shapes[n]
        sizes = [d["n_neur"] for d in self._stages]
        self._rec_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        self._rec_total = int(sum(sizes))
        enc = net.encoder
        self._hybrid = not isinstance(enc, Direct)
        self._det = _det_table(enc.T, enc.n_det) if self._hybrid else None
        self._lock, self._cache = threading.Lock(), (None,)

    def forward(self, inputs, *, seed=0, epoch=EVAL_EPOCH, sample_ids=None, n_threads=None,
                record=False):
        """Inference on a batch: as :func:`forward` (without its first two arguments)."""
        net, T = self.network, self.network.T
        if not isinstance(inputs, np.ndarray):
            raise TypeError(f"inputs must be a numpy.ndarray, got {type(inputs).__name__}")
        n_threads = effective_n_threads(n_threads)
        dummy_u8, dummy_f = np.zeros((1, 1), np.uint8), np.zeros((1, 1, 1), f32)
        if self._hybrid:
            images = _check_images(inputs, net.input_shape)
            B = len(images)
            ids, key, frames = _check_ids(sample_ids, B), _noise_key(seed, epoch), dummy_f
        else:
            frames = _check_frames(inputs, T, net.input_shape)
            B = len(frames)
            images, ids, key = dummy_u8, np.zeros(1, np.uint64), 0
        P = int(np.prod(net.input_shape))
        counts = np.zeros((B, 1 + 2 * len(self._stages), T), np.int64)
        rec_in = np.empty((B, T, P), np.uint8) if record and self._hybrid else None
        rec_v = np.empty((B, self._rec_total), f32) if record else None
        with self._scratch(B, record) as (rec_spk, last, lists):
            if B:
                _kernels().run(self._stages, T, self._hybrid,
                               net.encoder.n_det if self._hybrid else 0,
                               self._det if self._hybrid else dummy_u8, key, images, ids,
                               frames, counts, last, rec_in, rec_spk, rec_v, self._rec_off,
                               *lists, n_threads)
            out = self._readout(counts, last)
        if record:
            out["input"] = (rec_in if self._hybrid else frames.copy()).reshape(
                (B, T) + net.input_shape)
            out["spikes"] = {net[n].name: rec_spk[:, :, o:o + d["n_neur"]].reshape(
                (B, T) + net.shapes[n])
                for (n, _), d, o in zip(net.stages(), self._stages, self._rec_off)}
            out["v"] = {net[n].name: rec_v[:, o:o + d["n_neur"]].reshape((B,) + net.shapes[n])
                        for (n, _), d, o in zip(net.stages(), self._stages, self._rec_off)}
        return out

    @contextmanager
    def _scratch(self, B, record):
        """(every stage's spikes (B, T, neurons), the last stage's spike counts, the row
        lists), all written whole by the kernels: kept for the next call of the same batch size
        (no page faults for fresh memory each batch) unless they are returned (``record``)
        or another thread is using them."""
        if record or not self._lock.acquire(blocking=False):
            yield self._new_scratch(B)
            return
        try:
            if self._cache[0] != B:
                self._cache = (B,) + self._new_scratch(B)
            yield self._cache[1:]
        finally:
            self._lock.release()

    def _new_scratch(self, B):
        return (np.empty((B, self.network.T, self._rec_total), np.uint8),
                np.empty((B, self._stages[-1]["n_neur"]), np.int64), self._row_lists(B))

    def _row_lists(self, B):
        """Scratch of the column-blocked Linear stages: each sample's rows (input index and
        coefficient, at most T x n_in) and where each update's start (see ext/snn_engine.h);
        np.empty, so that only the pages the rows use are touched."""
        n_in = max((d["n_in"] for d in self._stages if d["block"]), default=0)
        if not n_in:
            one = np.zeros((1, 1), np.int64)
            return np.zeros((1, 1), np.int32), np.zeros((1, 1), f32), one, one, \
                np.zeros((1, 1), np.uint8)
        T = self.network.T
        return (np.empty((B, T * n_in), np.int32), np.empty((B, T * n_in), f32),
                np.zeros((B, T), np.int64), np.zeros((B, T), np.int64),
                np.zeros((B, T), np.uint8))

    def _readout(self, counts, last):
        net, B = self.network, len(counts)
        stages = net.stages()
        names = [net[n].name for n, _ in stages]
        syns = [net[next(i for i in chain if net[i].kind == "synapse")].name
                for _, chain in stages]
        c = {"input": counts[:, 0]}
        c.update({nm: counts[:, 1 + 2 * k] for k, nm in enumerate(names)})
        c.update({nm: counts[:, 2 + 2 * k] for k, nm in enumerate(syns)})
        n_updates = {net[n].name: len(net[n].update_steps(net.T)) for n, _ in stages}
        r = net.readout_index
        norm = net.T if net[r].norm == "steps" else n_updates[names[-1]]
        rates = last.astype(f32) / f32(max(norm, 1))
        y, macs = rates, {}
        for i in range(r + 1, len(net)):
            layer = net[i]
            if isinstance(layer, Linear):
                macs[layer.name] = int(np.prod(self.weights[f"{layer.name}.weight"].shape))
                with _serial_blas():       # the same bits for any number of BLAS threads
                    y = linear(y, self.weights[f"{layer.name}.weight"],
                               self.weights.get(f"{layer.name}.bias"))
        return dict(output=y.reshape((B,) + net.output_shape), rates=rates, counts=c,
                    dense_macs=macs, n_updates=n_updates)


def forward(network, weights, inputs, *, seed=0, epoch=EVAL_EPOCH, sample_ids=None,
            n_threads=None, record=False):
    """Inference of ``network`` on a batch through the compiled engine, with exact counters.

    The same results as :func:`snnfast.reference.forward`, bit for bit.

    Parameters
    ----------
    network : Network
    weights : dict
        ``{"<layer>.weight": array, "<layer>.bias": array}`` as
        :meth:`Network.param_shapes` lists (cast to float32).
    inputs : ndarray
        Hybrid encoder: C-contiguous uint8 images (B, C, H, W), or (B, C*H*W), or (B, H, W)
        when C = 1. Direct encoder: C-contiguous finite float32 frames (B, T, C, H, W).
    seed, epoch : int in [0, 2**64)
        Keys of the Hybrid encoder's Bernoulli steps (evaluation: ``EVAL_EPOCH``).
    sample_ids : int array (B,), optional
        Each sample's id in its data set (default ``arange(B)``): keys its noise.
    n_threads : int, optional
        OpenMP threads (rule: :func:`snnfast.effective_n_threads`); results do not depend
        on it.
    record : bool
        Also return the encoder's output and every spiking layer's spikes.

    Returns
    -------
    dict
        As :func:`snnfast.reference.forward`: ``output``, ``rates``, ``counts`` (int64
        (B, T) per counter), ``dense_macs``, ``n_updates``; with ``record`` also ``input``,
        ``spikes`` and ``v`` (the membrane potentials after the last step).
    """
    return CompiledNetwork(network, weights).forward(
        inputs, seed=seed, epoch=epoch, sample_ids=sample_ids, n_threads=n_threads,
        record=record)
