"""Exact ReLU -> TTFS conversion of convolutional networks and their event-driven simulation.

The B1 identity mapping of :mod:`snnfast.ttfs` (spec ``ttfs.md`` §1.3), applied per stage
of a :class:`snnfast.cnn.CNN`: a hidden unit (conv output position and channel, or dense
unit) of stage n has the stage's ReLU weights, threshold ``theta = Delta_n - b`` (one per
output channel) and fires once, at ``t = t_min(n) + max(theta - A, 0)`` if that is before
``t_max(n)``, where ``A = sum_j W_j (t_min(n) - t_j)`` integrates its input spikes. Then
``t_max(n) - t = ReLU(conv_or_dense(x) + b)`` exactly while the activation is at most
``Delta_n``.

Per layer kind:

- convolution, any stride and zero padding: padding is a silent input (activation 0, no
  spike), which is what zero padding of a ReLU map means;
- max pooling: ``max_j x_j = max_j (t_max - t_j)`` is ``t_max - min_j t_j``, so the pooled
  unit *is* the earliest spike of its members, in the same window (no new neuron, no
  approximation); a pool whose members are all silent is silent (max of zeros is 0);
- average pooling: linear, so the mean of the members' activations ``t_max - t_j`` feeds
  the next stage's synapses directly (equivalently, synapses ``W/k``);
- batch norm: folded into the conv/dense layer before it (:func:`snnfast.cnn.fold_batch_norm`);
- flatten: only an indexing of the units.

Windows are calibrated as for the MLPs: ``t_min(1) = 1``, ``Delta_n = (1 + zeta) X_n`` with
``X_n`` the largest ReLU output of hidden stage n on the calibration (training) data,
computed in float64 in fixed chunks of :data:`CALIB_CHUNK` images (zero-padded) so that the
windows do not depend on how the data is batched on any BLAS. The output stage returns its
membrane potential at ``t_min(N)``, the ReLU logits.

Conventions as in :mod:`snnfast.ttfs`: non-spikes are ``+inf``; spikes per hidden neuron
count pre-pool hidden units that fire; synaptic events are the multiply-adds actually done
(a spike's fan-out inside the map: border units reach fewer targets).
"""
import json
from pathlib import Path

import numpy as np

from ._config import effective_n_threads
from .cnn import CNN, Pool, Stage, _forward
from .ttfs import SimResult, Windows

__all__ = ["FORMAT", "CALIB_CHUNK", "TTFSConvNet", "ConvSimResult", "convert",
           "operation_counts", "exactness_report", "save", "load"]

FORMAT = "ttfs-cnn-1"
CALIB_CHUNK = 256
_META = ["kind", "c", "h", "w", "co", "oh", "ow", "kh", "kw", "sh", "sw", "pt", "pl", "pool",
         "pkh", "pkw", "psh", "psw", "ppt", "ppl", "ph", "pw", "woff", "uoff", "toff", "doff"]


#: Simulation output (the fields of :class:`snnfast.ttfs.SimResult`): ``times`` per hidden
#: stage are pre-pool spike times (n, C, H, W) or (n, units), ``inf`` = no spike;
#: ``spikes`` column 0 = input pixels, column n = hidden stage n; ``events`` column n =
#: synaptic events (multiply-adds) into the weight layer of stage n+1.
ConvSimResult = SimResult


class TTFSConvNet(Windows):
    """A converted TTFS CNN (B1 mapping) with frozen, chained time windows.

    Parameters
    ----------
    cnn : snnfast.cnn.CNN
        The ReLU network (parameters are kept as float64 copies).
    x_max : array_like
        Calibration maxima ``X_n`` of the N-1 hidden stages.
    zeta : float
        ``Delta_n = (1 + zeta) X_n`` (``Delta_n = 1`` if ``X_n = 0``).
    meta : dict, optional
        Provenance (calibration set, source model, training summary).
    """

    def __init__(self, cnn, x_max, zeta=0.5, meta=None):
        if not isinstance(cnn, CNN):
            raise TypeError(f"cnn must be a snnfast.cnn.CNN, got {type(cnn).__name__}")
        self.cnn = cnn.astype(np.float64)
        self._set_windows(x_max, zeta, [s.bias for s in self.stages[:-1]], meta)

    # ------------------------------------------------------------------ structure
    @property
    def stages(self):
        return self.cnn.stages

    @property
    def depth(self):
        return self.cnn.depth

    @property
    def in_shape(self):
        return self.cnn.in_shape

    @property
    def hidden_units(self):
        """Pre-pool units of every hidden stage."""
        return [int(np.prod(s.out_shape(s.in_shape))) for s in self.stages[:-1]]

    @property
    def dense_macs(self):
        """Multiply-accumulates of the equivalent dense ReLU layers, per stage."""
        return [int(np.prod(s.out_shape(s.in_shape))) * int(np.prod(s.weight.shape[1:]))
                for s in self.stages]

    def _pack(self, dtype):
        """Kernel layout: channel-last maps, weights (source, tap, C_out) contiguous."""
        if dtype in self._packed:
            return self._packed[dtype]
        rows, wts, div = [], [], []
        woff = uoff = toff = doff = 0
        for i, st in enumerate(self.stages):
            c, h, w = st.in_shape if len(st.in_shape) == 3 else (st.in_shape[0], 1, 1)
            co, oh, ow = st.out_shape(st.in_shape) if st.kind == "conv" else \
                (st.weight.shape[0], 1, 1)
            if st.kind == "conv":
                _, _, kh, kw = st.weight.shape
                wt = st.weight.transpose(1, 2, 3, 0)           # (C_in, kh, kw, C_out)
                geo = [0, c, h, w, co, oh, ow, kh, kw, *st.stride, st.pad[0], st.pad[1]]
            else:
                wt = st.weight.T                                # (n_in, n_out), ONNX order
                if len(st.in_shape) == 3:                       # rows (C,H,W) -> (H,W,C)
                    wt = wt.reshape(*st.in_shape, co).transpose(1, 2, 0, 3)
                geo = [1, int(np.prod(st.in_shape)), 1, 1, co, 1, 1, 1, 1, 1, 1, 0, 0]
            p = st.pool
            if p is None:
                pg = [0, 1, 1, 1, 1, 0, 0, oh, ow]
            else:
                ph, pw = p.out_hw(oh, ow)
                pg = [1 if p.kind == "max" else 2, *p.kernel, *p.stride, p.pad[0], p.pad[1],
                      ph, pw]
                div.append(p.divisor(oh, ow).ravel())
            rows.append(geo + pg + [woff, uoff, toff, doff])
            wts.append(np.ascontiguousarray(wt).ravel())
            woff += wts[-1].size
            uoff += co
            toff += co * oh * ow if i < self.depth - 1 else 0
            doff += div[-1].size if p is not None else 0
        theta = np.concatenate(self.thresholds + [np.zeros(self.stages[-1].weight.shape[0])])
        packed = (np.concatenate(wts).astype(dtype), theta.astype(dtype),
                  np.concatenate([s.bias for s in self.stages]).astype(dtype),
                  (np.concatenate(div) if div else np.ones(1)).astype(dtype),
                  np.asarray(rows, dtype=np.int64), toff)
        self._packed[dtype] = packed
        return packed

    def _check_x(self, X, name="X"):
        """Channel-last float images (n, H, W, C) from (n, C*H*W) or (n, C, H, W) input."""
        return self.cnn.check_input(X, name)

    # ------------------------------------------------------------------ simulation
    def simulate(self, X, dtype=np.float64, record_times=True, n_threads=None,
                 batch_size=None):
        """Event-driven simulation (compiled, OpenMP over images, GIL released).

        Parameters
        ----------
        X : ndarray (n, C*H*W) or (n, C, H, W)
            Inputs in [0, 1]; pixel j spikes at ``1 - X_j`` if ``X_j > 0``.
        dtype : {numpy.float64, numpy.float32}
            Arithmetic precision (float64 is the exactness path).
        record_times : bool
            Keep the pre-pool spike times of every hidden stage (memory: n x units).
        n_threads : int or None
            See :func:`snnfast.effective_n_threads`; results do not depend on it.
        batch_size : int or None
            Images per kernel call (bounds the channel-last copy of X); None = all.

        Returns
        -------
        ConvSimResult
        """
        from . import _ttfs_conv
        from ._utils import check_positive_int

        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        xcl = self._check_x(X)
        n = len(xcl)
        step = n if batch_size is None else check_positive_int(batch_size, "batch_size")
        nt = effective_n_threads(n_threads)
        wt, theta, bias, div, meta, n_times = self._pack(dtype)
        N = self.depth
        out = np.zeros((n, self.stages[-1].weight.shape[0]), dtype)
        spikes = np.zeros((n, N), np.int64)
        events = np.zeros((n, N), np.int64)
        sat = np.zeros((n, max(N - 1, 1)), np.int64)
        times = np.empty((n, n_times) if record_times else (1, 1), dtype)
        src_len = max([int(np.prod(self.in_shape))] +
                      [int(np.prod(s.pooled_shape(s.in_shape))) for s in self.stages])
        acc_len = max(int(np.prod(s.out_shape(s.in_shape))) for s in self.stages)
        sc_src = np.empty((nt, src_len), dtype)
        sc_acc = np.empty((nt, acc_len), dtype)
        tmin = np.ascontiguousarray(self.t_min, dtype=np.float64)
        for s in range(0, max(n, 1), max(step, 1)):
            sl = slice(s, min(n, s + step))
            xb = np.ascontiguousarray(xcl[sl].reshape(sl.stop - s, -1), dtype=dtype)
            _ttfs_conv.simulate(xb, wt, theta, bias, div, meta, tmin,
                                times[sl] if record_times else times, bool(record_times),
                                out[sl], spikes[sl], events[sl], sat[sl], sc_src, sc_acc, nt)
        tl = self._split_times(times) if record_times else None
        return ConvSimResult(tl, out, spikes, events, sat[:, :N - 1], self.t_max.copy())

    def _split_times(self, times):
        """Flat channel-last times -> per hidden stage (n, C, H, W) / (n, units)."""
        out, off = [], 0
        for st in self.stages[:-1]:
            shp = st.out_shape(st.in_shape)
            size = int(np.prod(shp))
            t = times[:, off:off + size]
            if st.kind == "conv":
                t = t.reshape(len(t), shp[1], shp[2], shp[0]).transpose(0, 3, 1, 2)
            out.append(t)
            off += size
        return out

    def reference(self, X):
        """Slow, obviously-correct float64 NumPy simulation in (n, C, H, W) layout.

        Convolutions are explicit sums over kernel taps of the padded input contributions
        ``t_min(n) - t_j`` (0 for silent units), spike times ``t_min + max(theta - A, 0)``
        kept if ``< t_max``; max pooling takes the earliest member time, average pooling
        averages the member activations. Returns a :class:`ConvSimResult` (events are
        not counted here: zeros).
        """
        xcl = self._check_x(X)
        n = len(xcl)
        t = 1.0 - xcl.transpose(0, 3, 1, 2).astype(np.float64)
        v = np.where(t < 1.0, 1.0 - t, 0.0)
        spikes, sats, times = [np.count_nonzero(t < 1.0, axis=(1, 2, 3))], [], []
        for l, st in enumerate(self.stages):
            a = _ref_layer(st, v)
            if l == self.depth - 1:
                logits = a + st.bias
                break
            lo, hi = self.t_min[l], self.t_min[l + 1]
            th = self.thresholds[l].reshape((-1,) + (1,) * (a.ndim - 2))
            g = th - a
            sats.append(np.count_nonzero(g <= 0, axis=tuple(range(1, a.ndim))))
            tl = lo + np.maximum(g, 0.0)
            tl = np.where(tl < hi, tl, np.inf)
            times.append(tl)
            spikes.append(np.count_nonzero(np.isfinite(tl), axis=tuple(range(1, a.ndim))))
            v = _ref_pool(st.pool, tl, hi)
        stack = (lambda cols: np.stack(cols, axis=1).astype(np.int64) if cols
                 else np.zeros((n, 0), np.int64))
        return ConvSimResult(times, logits, stack(spikes), np.zeros((n, self.depth), np.int64),
                             stack(sats), self.t_max.copy())

    def relu_forward(self, X, chunk=500):
        """Float64 ReLU network (im2col + BLAS): (logits, hidden pre-pool ReLU outputs
        in (n, C, H, W) / (n, units) layout)."""
        xcl = self._check_x(X)
        zs, hs = [], []
        for s in range(0, len(xcl), chunk):
            z, hidden = _forward(self.stages, xcl[s:s + chunk].astype(np.float64), True)
            zs.append(z)
            hs.append([h.transpose(0, 3, 1, 2) if h.ndim == 4 else h for h in hidden])
        if not zs:
            return np.zeros((0, self.cnn.n_out)), [np.zeros((0,)) for _ in self.stages[:-1]]
        return np.concatenate(zs), [np.concatenate(c) for c in zip(*hs)]

    def predict(self, X, **kwargs):
        return self.simulate(X, record_times=False, **kwargs).predictions


def _ref_layer(st, v):
    """Integrated potentials ``A`` of one stage from input contributions ``v`` (NCHW)."""
    if st.kind == "dense":
        return v.reshape(len(v), -1) @ st.weight.T
    co, ci, kh, kw = st.weight.shape
    (sh, sw), (pt, pl, pb, pr) = st.stride, st.pad
    vp = np.pad(v, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (vp.shape[2] - kh) // sh + 1
    ow = (vp.shape[3] - kw) // sw + 1
    a = np.zeros((len(v), co, oh, ow))
    for ky in range(kh):
        for kx in range(kw):
            tap = vp[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            a += np.einsum("oc,nchw->nohw", st.weight[:, :, ky, kx], tap)
    return a


def _ref_pool(pool, t, hi):
    """Next stage's input contributions from spike times ``t`` (NCHW or (n, units))."""
    if pool is None:
        return np.where(np.isfinite(t), hi - t, 0.0)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = pool.kernel, pool.stride, pool.pad
    oh, ow = pool.out_hw(t.shape[2], t.shape[3])
    out = np.zeros(t.shape[:2] + (oh, ow))
    for y in range(oh):
        for x in range(ow):
            y0, x0 = y * sh - pt, x * sw - pl
            win = t[:, :, max(y0, 0):y0 + kh, max(x0, 0):x0 + kw]
            if pool.kind == "max":
                first = win.min(axis=(2, 3))            # the earliest member spike
                out[:, :, y, x] = np.where(np.isfinite(first), hi - first, 0.0)
            else:
                act = np.where(np.isfinite(win), hi - win, 0.0)
                div = kh * kw if pool.include_pad else win.shape[2] * win.shape[3]
                out[:, :, y, x] = act.sum(axis=(2, 3)) / div
    return out


# ---------------------------------------------------------------------- conversion
def calibrate(cnn, X_calib):
    """``X_n``: largest ReLU output of each hidden stage over ``X_calib`` (float64).

    The forward passes always use :data:`CALIB_CHUNK` images (the last chunk zero-padded,
    padded rows ignored), so every image meets the same matrix shapes and positions
    whatever the size of ``X_calib``: the maxima cannot depend on BLAS kernel choices
    driven by the batch size.
    """
    xcl = cnn.check_input(X_calib, "X_calib")
    if len(xcl) == 0:
        raise ValueError("X_calib must contain at least one input")
    stages = cnn.astype(np.float64).stages
    x_max = np.zeros(len(stages) - 1)
    for s in range(0, len(xcl), CALIB_CHUNK):
        chunk = np.zeros((CALIB_CHUNK,) + xcl.shape[1:])
        m = min(CALIB_CHUNK, len(xcl) - s)
        chunk[:m] = xcl[s:s + m]
        _, hidden = _forward(stages, chunk, True)
        for l, h in enumerate(hidden):
            x_max[l] = max(x_max[l], float(h[:m].max()))
    return x_max


def convert(cnn, X_calib, zeta=0.5, meta=None):
    """Convert a ReLU :class:`snnfast.cnn.CNN` into a :class:`TTFSConvNet` (B1 mapping).

    Parameters
    ----------
    cnn : snnfast.cnn.CNN
    X_calib : ndarray (n, C*H*W) or (n, C, H, W)
        Calibration inputs in [0, 1] -- training data, never test data.
    zeta : float
        ``Delta_n = (1 + zeta) X_n``.
    meta : dict, optional
        Extra provenance stored in ``net.meta``.
    """
    if not isinstance(cnn, CNN):
        raise TypeError(f"cnn must be a snnfast.cnn.CNN, got {type(cnn).__name__}")
    x_max = calibrate(cnn, X_calib)
    info = {"mapping": "b1", "n_calibration": int(len(X_calib))}
    info.update(meta or {})
    return TTFSConvNet(cnn, x_max, zeta, meta=info)


def operation_counts(net, result):
    """Per-stage counts of an exact simulation ``result`` of ``net``.

    Returns
    -------
    dict
        ``layers`` (per stage: kind, dense_macs, source spikes and synaptic events per
        image), ``hidden`` (per hidden stage: units, spikes per image and per neuron,
        saturated total), totals ``synaptic_events_per_image``, ``dense_macs``,
        ``spikes_per_hidden_neuron`` (pre-pool units; pixels and outputs excluded).
    """
    n = max(len(result.logits), 1)
    macs = net.dense_macs
    layers = [{"stage": l + 1, "kind": st.kind, "dense_macs": macs[l],
               "source_spikes_per_image": float(result.spikes[:, l].sum() / n),
               "synaptic_events_per_image": float(result.events[:, l].sum() / n)}
              for l, st in enumerate(net.stages)]
    units = net.hidden_units
    hidden = [{"stage": l + 1, "units": u, "spikes_per_image": float(result.spikes[:, l + 1].sum() / n),
               "spikes_per_neuron": float(result.spikes[:, l + 1].sum() / n / u),
               "saturated_total": int(result.saturated[:, l].sum())}
              for l, u in enumerate(units)]
    return {"n_images": int(len(result.logits)), "layers": layers, "hidden": hidden,
            "input_spikes_per_image": layers[0]["source_spikes_per_image"],
            "synaptic_events_per_image": float(result.events.sum() / n),
            "dense_macs": int(sum(macs)),
            "spikes_per_hidden_neuron": (float(result.spikes[:, 1:].sum() / n / sum(units))
                                         if units else 0.0)}


def exactness_report(net, X, result, relu=None):
    """Max absolute / relative error of the simulated activations against the float64
    ReLU network (hidden stages pre-pool, then the logits), and whether the firing sets
    equal the ReLU-positive sets. ``relu`` = ``net.relu_forward(X)`` if already computed."""
    z, hidden = relu if relu is not None else net.relu_forward(X)
    rows = []
    for l, (a, h) in enumerate(zip(result.activations() + [result.logits.astype(np.float64)],
                                   hidden + [z])):
        err = float(np.abs(a - h).max()) if h.size else 0.0
        scale = float(np.abs(h).max()) if h.size else 0.0
        rows.append({"stage": l + 1, "max_abs": err, "max_rel": err / scale if scale else err,
                     "firing_set_equal": bool(np.array_equal(a > 0, h > 0))
                     if l < net.depth - 1 else None})
    return {"layers": rows, "network_max_abs": max(r["max_abs"] for r in rows),
            "network_max_rel": max(r["max_rel"] for r in rows)}


# ---------------------------------------------------------------------- storage
def save(net, path, results=None, stats=None):
    """Write ``net`` to HDF5 atomically (``snnfast_format = "ttfs-cnn-1"``).

    The layout of :func:`snnfast.ttfs.save` (root attributes, ``windows``, ``thresholds``
    ``stats``) with the attribute ``in_shape`` and, instead of ``relu``, a group
    ``stages/<i>`` per stage holding ``W``, ``b`` and the attribute ``spec`` (JSON: kind,
    stride, pad, pool).
    """
    from .ttfs import save_h5

    def write_params(f):
        f.attrs["in_shape"] = np.asarray(net.in_shape, np.int64)
        g = f.create_group("stages")
        for i, st in enumerate(net.stages, 1):
            s = g.create_group(str(i))
            s.create_dataset("W", data=st.weight)
            s.create_dataset("b", data=st.bias)
            s.attrs["spec"] = json.dumps(st.to_dict())

    return save_h5(net, path, FORMAT, write_params, results, stats)


def _stage_from(group):
    spec = json.loads(group.attrs["spec"])
    pool = spec.get("pool")
    pool = None if pool is None else Pool(pool["kind"], pool["kernel"], pool["stride"],
                                          pool["pad"], pool["include_pad"])
    return Stage(spec["kind"], group["W"][()], group["b"][()], spec["stride"], spec["pad"],
                 pool)


def load(path):
    """Read a network written by :func:`save` (ValueError naming the file when it is
    missing parts, damaged, inconsistent or not an snnfast TTFS CNN file).

    The returned network carries ``results`` and ``stats`` attributes (dicts).
    """
    from .ttfs import load_h5

    def read_net(f, depth):
        stages = [_stage_from(f["stages"][str(i)]) for i in range(1, depth + 1)]
        cnn = CNN(stages, tuple(f.attrs["in_shape"]))
        return TTFSConvNet(cnn, f["windows/x_max"][()], float(f.attrs["zeta"]),
                           meta=json.loads(f.attrs["meta"]))

    return load_h5(path, FORMAT, "TTFS CNN", read_net)
