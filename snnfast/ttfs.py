"""Exact ReLU -> time-to-first-spike (TTFS) conversion and its event-driven simulation.

Mapping "B1" (identity mapping; see the documentation page "TTFS conversion"): the SNN uses
the ReLU weights unchanged; hidden neuron i of layer n has threshold
``theta_i = Delta_n/tau_c - b_i`` and fires once, at
``t_i = t_min(n) + tau_c (theta_i - V_i(t_min(n)))``, so that
``t_max(n) - t_i = ReLU(W x + b)_i`` exactly (activations up to ``Delta_n``).

Time windows (frozen model parameters, never computed from test data):
``t_min(1) = 1`` (the input window is [0, 1]; pixel x spikes at ``1 - x``),
``Delta_n = (1 + zeta) X_n`` with ``X_n`` the largest activation of hidden layer n on
the calibration (training) data, ``t_max(n) = t_min(n) + Delta_n`` and
``t_min(n+1) = t_max(n)``. The output layer returns its membrane potential at
``t_min(N)``, which equals the ReLU logits. ``tau_c = 1``: one time unit is one
activation unit.

Conventions
-----------
- Spike times of a neuron that does not fire are ``+inf`` (never ``t_max``); a spike is
  emitted only if ``t < t_max(n)`` (strict), so a pre-activation of exactly 0 is silent.
- Saturated neurons (``V(t_min) >= theta``) fire at ``t_min(n)`` and are counted; their
  activation is capped at ``Delta_n``.
- Spikes per hidden neuron = fired hidden units / hidden units, averaged over images
  (input pixels and output units excluded).
- Synaptic events = sum over delivered spikes (input pixels included) of their fan-out.

Public API: :func:`convert`, :class:`TTFSNetwork` (``simulate``, ``closed_form``,
``relu_forward``), :func:`operation_counts`, :func:`seed_v1_forward`, :func:`check_dt`,
:func:`save`, :func:`load`.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._config import effective_n_threads
from ._utils import atomic_h5, check_positive_int, h5_format, is_real_number

__all__ = ["FORMAT", "TTFSNetwork", "SimResult", "convert", "operation_counts",
           "seed_v1_forward", "scaled_bias_relu", "exactness_report", "check_dt", "save", "load"]

FORMAT = "ttfs-1"
TAU_C = 1.0


@dataclass
class SimResult:
    """Output of :meth:`TTFSNetwork.simulate` / :meth:`TTFSNetwork.closed_form`.

    Attributes
    ----------
    times : list of ndarray or None
        Per hidden layer, spike times (n_images, width); ``inf`` = no spike.
    logits : ndarray
        Output membrane potentials at ``t_min(N)`` (n_images, n_out).
    spikes : ndarray of int64
        (n_images, N): column 0 = input-pixel spikes, column n = spikes of hidden layer n.
    events : ndarray of int64
        (n_images, N): synaptic events delivered into weight layer n+1
        (spikes of its source layer x fan-out).
    saturated : ndarray of int64
        (n_images, N-1): hidden units of layer n that fired at ``t_min(n)``.
    """
    times: list
    logits: np.ndarray
    spikes: np.ndarray
    events: np.ndarray
    saturated: np.ndarray
    t_max: np.ndarray = field(repr=False)

    @property
    def predictions(self):
        return np.argmax(self.logits, axis=1)

    def activations(self):
        """Decoded hidden activations ``t_max(n) - t`` (0 where silent), float64."""
        if self.times is None:
            raise ValueError("spike times were not recorded (record_times=False)")
        return [np.where(np.isinf(t), 0.0, tm - t.astype(np.float64))
                for t, tm in zip(self.times, self.t_max)]


def check_dt(dt, latency=1.0):
    """Refuse a clock step ``dt > 0`` for which the clock-driven grid cannot be computed.

    Every spike time ``t <= latency`` is registered at ``ceil(t/dt) dt``; when
    ``latency/dt`` overflows float64 (e.g. ``dt=1e-320``) all spikes would land at ``inf``
    and be lost, a silently wrong result. A network's latency ``t_min(N)`` is at least 1,
    so ``check_dt(dt)`` alone already tells whether ``dt`` can be used with any network.

    Parameters
    ----------
    dt : float
        Clock step (>= 0; 0 = exact simulation, always accepted).
    latency : float
        The network's ``t_min(N)`` (:attr:`TTFSNetwork.latency`).

    Raises
    ------
    ValueError
        When ``latency/dt`` is not finite.
    """
    if dt > 0 and not np.isfinite(latency / dt):
        raise ValueError(f"dt={dt!r} is too small: the clock grid t/dt overflows for spike "
                         f"times up to t_min(N)={latency:g}; use dt=0 for the exact simulation")


def _check_result(result, X):
    """``result`` must be a simulation of exactly the images of ``X``."""
    if not isinstance(result, SimResult):
        raise TypeError(f"result must be a SimResult, got {type(result).__name__}")
    if len(result.logits) != len(X):
        raise ValueError(f"result holds {len(result.logits)} images but X has {len(X)}; "
                         "pass the result of simulating this X")


def _check_x(X, n_in, name="X"):
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"{name} must have shape (n, {n_in}), got {X.shape}")
    if X.dtype.kind != "f":
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if X.size and (X.min() < 0 or X.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] (map inputs into the input window first)")
    return X


class TTFSNetwork:
    """A converted TTFS network (B1 mapping) with frozen, chained time windows.

    Parameters
    ----------
    weights, biases : list of ndarray
        ReLU parameters, ``weights[n]`` of shape (n_out, n_in); stored as float64.
    x_max : array_like
        Calibration maxima ``X_n`` of the N-1 hidden layers.
    zeta : float
        Window margin, ``Delta_n = (1 + zeta) X_n`` (``Delta_n = 1`` if ``X_n = 0``).
    meta : dict, optional
        Free-form provenance (calibration set, mapping, training summary).
    """

    def __init__(self, weights, biases, x_max, zeta=0.5, meta=None):
        if len(weights) == 0 or len(weights) != len(biases):
            raise ValueError("weights and biases must be non-empty lists of equal length")
        self.weights = [np.ascontiguousarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.ascontiguousarray(b, dtype=np.float64) for b in biases]
        for n, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {n + 1}: weight {w.shape} / bias {b.shape} mismatch")
            if n and w.shape[1] != self.weights[n - 1].shape[0]:
                raise ValueError(f"layer {n + 1} input size {w.shape[1]} != layer {n} output "
                                 f"size {self.weights[n - 1].shape[0]}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {n + 1} has non-finite parameters")
        x_max = np.asarray(x_max, dtype=np.float64).reshape(-1)
        if x_max.shape != (self.depth - 1,) or not np.isfinite(x_max).all() or (x_max < 0).any():
            raise ValueError(f"x_max must hold {self.depth - 1} finite non-negative values")
        if not (np.isfinite(zeta) and zeta > -1):
            raise ValueError(f"zeta must be finite and > -1, got {zeta!r}")
        self.zeta = float(zeta)
        self.x_max = x_max
        self.deltas = np.where(x_max > 0, (1.0 + self.zeta) * x_max, 1.0)
        # t_min[n-1] = t_min(n); chaining is exact because t_max(n) *is* t_min(n+1)
        self.t_min = np.concatenate([[1.0], 1.0 + np.cumsum(self.deltas)])
        self.thresholds = [d / TAU_C - b for d, b in zip(self.deltas, self.biases[:-1])]
        self.meta = dict(meta or {})
        self._packed = {}

    # ------------------------------------------------------------------ structure
    @property
    def depth(self):
        """Number of weight layers N."""
        return len(self.weights)

    @property
    def sizes(self):
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def t_max(self):
        """t_max(n) of the hidden layers (= t_min(n+1))."""
        return self.t_min[1:]

    @property
    def latency(self):
        """t_min(N): the time at which the output potentials are read."""
        return float(self.t_min[-1])

    @property
    def fan_out(self):
        """Fan-out of each source layer (input, hidden 1..N-1)."""
        return [w.shape[0] for w in self.weights]

    @property
    def dense_macs(self):
        """Multiply-accumulates of the equivalent dense ReLU layers."""
        return [w.size for w in self.weights]

    def _pack(self, dtype):
        """Transposed weights (n_in, n_out) back to back: a spike's fan-out is contiguous."""
        if dtype not in self._packed:
            wt = np.concatenate([w.T.astype(dtype).ravel() for w in self.weights])
            w_off = np.cumsum([0] + [w.size for w in self.weights[:-1]]).astype(np.int64)
            u_off = np.cumsum([0] + [w.shape[0] for w in self.weights[:-1]]).astype(np.int64)
            theta = np.concatenate(self.thresholds + [np.zeros(self.sizes[-1])]).astype(dtype)
            bias = np.concatenate(self.biases).astype(dtype)
            self._packed[dtype] = (wt, theta, bias, w_off, u_off)
        return self._packed[dtype]

    def _qsteps(self, time_bits):
        if time_bits is None or time_bits == 0:
            return np.zeros(self.depth)
        if isinstance(time_bits, bool) or not isinstance(time_bits, (int, np.integer)) \
                or not 1 <= time_bits <= 52:
            raise ValueError(f"time_bits must be an integer in [1, 52] or None, got {time_bits!r}")
        windows = np.concatenate([[1.0], self.deltas])
        return windows / (2.0 ** int(time_bits) - 1.0)

    def _check_options(self, dt, jitter):
        for name, v in (("dt", dt), ("jitter", jitter)):
            if not is_real_number(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        check_dt(dt, self.latency)

    # ------------------------------------------------------------------ simulation
    def simulate(self, X, dtype=np.float64, dt=0.0, time_bits=None, jitter=0.0, seed=0,
                 record_times=True, n_threads=None, batch_size=None):
        """Event-driven simulation (compiled, OpenMP over images, GIL released).

        Parameters
        ----------
        X : ndarray (n, n_in)
            Input activations in [0, 1]; pixel j spikes at ``1 - X[:, j]`` if ``X > 0``.
        dtype : {numpy.float64, numpy.float32}
            Arithmetic precision (float64 is the exactness path).
        dt : float
            0 = exact. > 0: clock-driven, every spike is registered at ``ceil(t/dt) dt``
            (input pixels included); spikes pushed to ``t >= t_max`` are lost. A ``dt`` so
            small that ``t_min(N)/dt`` overflows is refused (see :func:`check_dt`).
        time_bits : int or None
            Quantise every emitted spike time to ``2**k`` levels per window
            (round-to-nearest, step ``Delta/(2**k - 1)``, x = 0 exact).
        jitter : float
            Std of Gaussian jitter added to real spikes only (clamped at ``t_min`` of the
            window; spikes pushed to ``t >= t_max`` are lost). Draws depend on
            ``(seed, image, layer, unit)`` only.
        seed : int
            In ``[0, 2**64)`` (the kernel's counter-based generator takes a uint64).
        record_times : bool
            Keep per-layer spike times (memory: n x hidden units).
        n_threads : int or None
            See :func:`snnfast.effective_n_threads`; results do not depend on it.
        batch_size : int or None
            Images per kernel call (bounds the float64 conversion copy of X), a positive
            integer; None = all images in one call.

        Returns
        -------
        SimResult
        """
        from . import _ttfs

        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        _check_x(X, self.sizes[0])
        self._check_options(dt, jitter)
        qstep = self._qsteps(time_bits)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        # validated here: range() with a negative step would skip the kernel and return
        # the np.empty outputs, and 0 used to mean "all images"
        step = (max(len(X), 1) if batch_size is None
                else check_positive_int(batch_size, "batch_size"))
        nt = effective_n_threads(n_threads)
        wt, theta, bias, w_off, u_off = self._pack(dtype)
        sizes = np.asarray(self.sizes, dtype=np.int64)
        n, n_hidden, N = len(X), int(sum(self.sizes[1:-1])), self.depth
        times = np.empty((n, n_hidden) if record_times else (1, 1), dtype)
        out = np.empty((n, self.sizes[-1]), dtype)
        spikes = np.zeros((n, N), np.int64)
        events = np.zeros((n, N), np.int64)
        sat = np.zeros((n, max(N - 1, 1)), np.int64)
        width = max(self.sizes)
        sc_acc = np.empty((nt, width), dtype)
        sc_w = np.empty((nt, width), dtype)
        sc_idx = np.empty((nt, width), np.intc)
        tmin = np.ascontiguousarray(self.t_min, dtype=np.float64)
        for s in range(0, n, step):
            sl = slice(s, min(n, s + step))
            xb = np.ascontiguousarray(X[sl], dtype=dtype)
            _ttfs.simulate(xb, wt, theta, bias, sizes, w_off, u_off, tmin, float(dt), qstep,
                           float(jitter), int(seed), times[sl] if record_times else times,
                           bool(record_times), out[sl], spikes[sl], events[sl], sat[sl],
                           sc_acc, sc_w, sc_idx, nt)
        split = np.cumsum(self.sizes[1:-1])[:-1]
        tl = np.split(times, split, axis=1) if record_times else None
        return SimResult(tl, out, spikes, events, sat[:, :N - 1], self.t_max.copy())

    def closed_form(self, X, dt=0.0, time_bits=None):
        """NumPy reference of :meth:`simulate` (float64, no jitter): same semantics,
        computed layer-wise with matrix products (``t = t_min + max(theta - A, 0)``)."""
        _check_x(X, self.sizes[0])
        self._check_options(dt, 0.0)
        qstep = self._qsteps(time_bits)
        n = len(X)
        t = 1.0 - X.astype(np.float64)
        x, cnt = self._deliver(t, 0.0, 1.0, dt, qstep[0])
        spikes, events, sats, times = [cnt], [], [], []
        for l in range(self.depth):
            w = self.weights[l]
            events.append(spikes[-1] * w.shape[0])
            a = x @ w.T
            if l == self.depth - 1:
                logits = a + self.biases[l]
                break
            g = self.thresholds[l] - a
            sats.append(np.count_nonzero(g <= 0, axis=1))
            lo, hi = self.t_min[l], self.t_min[l + 1]
            t = lo + np.maximum(g, 0.0)
            x, cnt = self._deliver(t, lo, hi, dt, qstep[l + 1])
            times.append(np.where(x > 0, hi - x, np.inf))
            spikes.append(cnt)
        as_int = (lambda cols: np.stack(cols, axis=1).astype(np.int64) if cols
                  else np.zeros((n, 0), np.int64))
        return SimResult(times, logits, as_int(spikes), as_int(events), as_int(sats),
                         self.t_max.copy())

    @staticmethod
    def _deliver(t, lo, hi, dt, qstep):
        """Spike times -> contributions ``hi - t`` (0 if silent) after clock/quantisation."""
        live = t < hi
        if dt > 0:
            t = np.ceil(t / dt) * dt
            live &= t < hi
        if qstep > 0:
            xq = np.rint((hi - t) / qstep) * qstep
            live &= xq > 0
            t = np.maximum(hi - xq, lo)
        x = np.where(live, hi - t, 0.0)
        return x, np.count_nonzero(live, axis=1)

    def relu_forward(self, X):
        """Float64 ReLU reference: (logits, list of hidden activations)."""
        _check_x(X, self.sizes[0])
        h = X.astype(np.float64)
        hidden = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w.T + b, 0.0)
            hidden.append(h)
        return h @ self.weights[-1].T + self.biases[-1], hidden

    def predict(self, X, **kwargs):
        """Class indices from the event-driven simulation."""
        return self.simulate(X, record_times=False, **kwargs).predictions


# ---------------------------------------------------------------------- conversion
# Rows per calibration product. Every product has exactly this many rows (the last block is
# padded with zeros): BLAS chooses its kernel, and so its summation order, by the operands'
# shape, so a shape that varied with the data set's length would move X_n in the last bit
# from one CPU or BLAS build to another.
CALIBRATION_ROWS = 256


def calibration_maxima(mlp, X_calib):
    """Largest activation of each hidden layer of ``mlp`` over ``X_calib``.

    The inputs are taken in fixed blocks of :data:`CALIBRATION_ROWS` rows starting at row 0,
    each through products of one fixed shape, so the result of a block does not depend on
    what else is in the set: the maxima of a set are the maxima over its blocks' maxima.
    """
    dtype = mlp.weights[0].dtype
    n_in = mlp.sizes[0]
    x_max = np.zeros(mlp.depth - 1)
    block = np.zeros((CALIBRATION_ROWS, n_in), dtype)
    for s in range(0, len(X_calib), CALIBRATION_ROWS):
        rows = X_calib[s:s + CALIBRATION_ROWS]
        block[:len(rows)] = rows
        block[len(rows):] = 0
        h = block
        for l, (w, b) in enumerate(zip(mlp.weights[:-1], mlp.biases[:-1])):
            h = np.maximum(h @ w.T + b, 0)
            x_max[l] = max(x_max[l], float(h[:len(rows)].max()))
    return x_max


def convert(mlp, X_calib, zeta=0.5, meta=None):
    """Convert a ReLU MLP into a :class:`TTFSNetwork` (B1 identity mapping).

    Parameters
    ----------
    mlp : snnfast.mlp.MLP
        Trained network (any float dtype; weights are used unchanged).
    X_calib : ndarray (n, n_in)
        Calibration inputs in [0, 1] — training data, never test data. ``X_n`` is the
        largest activation of hidden layer n over these inputs
        (:func:`calibration_maxima`).
    zeta : float
        ``Delta_n = (1 + zeta) X_n``.
    meta : dict, optional
        Extra provenance stored in ``net.meta``.
    """
    if len(X_calib) == 0:
        raise ValueError("X_calib must contain at least one input")
    net = TTFSNetwork(mlp.weights, mlp.biases, np.zeros(mlp.depth - 1), zeta)
    _check_x(X_calib, net.sizes[0], "X_calib")
    # the maxima only set window lengths (with margin zeta), so the network's own
    # precision is good enough here; exactness never depends on X_n
    x_max = calibration_maxima(mlp, X_calib)
    info = {"mapping": "b1", "n_calibration": int(len(X_calib))}
    info.update(meta or {})
    return TTFSNetwork(mlp.weights, mlp.biases, x_max, zeta, meta=info)


def operation_counts(net, X, n_threads=None, result=None):
    """Exact per-layer operation counts of the event-driven simulation.

    Parameters
    ----------
    net : TTFSNetwork
    X : ndarray (n, n_in)
        Inputs in [0, 1].
    result : SimResult, optional
        Reuse an existing exact simulation of ``X`` instead of running one.

    Returns
    -------
    dict
        ``layers``: one dict per weight layer n = 1..N with ``n_in``, ``n_out``,
        ``fan_out`` (of its source neurons, = n_out), ``dense_macs`` (n_in*n_out),
        ``source_spikes_total``/``_per_image`` (spikes of layer n-1; layer 0 = pixels),
        ``synaptic_events_total``/``_per_image`` (= source spikes x fan-out, counted by
        the simulator); ``hidden``: per hidden layer ``units``, ``spikes_total``,
        ``spikes_per_image``, ``spikes_per_neuron``, ``saturated_total``; totals
        ``synaptic_events_per_image``, ``dense_macs``, ``spikes_per_hidden_neuron``,
        ``n_images``.
    """
    _check_x(X, net.sizes[0])
    if result is not None:
        _check_result(result, X)
    r = result if result is not None else net.simulate(X, record_times=False,
                                                       n_threads=n_threads)
    n = max(len(r.logits), 1)
    sizes = net.sizes
    layers = []
    for l in range(net.depth):
        layers.append({
            "layer": l + 1, "n_in": sizes[l], "n_out": sizes[l + 1], "fan_out": sizes[l + 1],
            "dense_macs": sizes[l] * sizes[l + 1],
            "source_spikes_total": int(r.spikes[:, l].sum()),
            "source_spikes_per_image": float(r.spikes[:, l].sum() / n),
            "synaptic_events_total": int(r.events[:, l].sum()),
            "synaptic_events_per_image": float(r.events[:, l].sum() / n)})
    hidden = []
    for l in range(net.depth - 1):
        tot = int(r.spikes[:, l + 1].sum())
        hidden.append({"layer": l + 1, "units": sizes[l + 1], "spikes_total": tot,
                       "spikes_per_image": tot / n, "spikes_per_neuron": tot / n / sizes[l + 1],
                       "saturated_total": int(r.saturated[:, l].sum())})
    n_hidden = sum(sizes[1:-1])
    return {
        "n_images": int(len(r.logits)), "layers": layers, "hidden": hidden,
        "input_spikes_per_image": layers[0]["source_spikes_per_image"],
        "synaptic_events_per_image": float(r.events.sum() / n),
        "dense_macs": int(sum(net.dense_macs)),
        "spikes_per_hidden_neuron": (float(r.spikes[:, 1:].sum() / n / n_hidden)
                                     if n_hidden else 0.0),
    }


def exactness_report(net, X, result=None, n_threads=None):
    """Max absolute / relative error of SNN activations against the float64 ReLU net.

    Relative error of a layer = ``max |x_SNN - x_ReLU| / max |x_ReLU|``. Hidden layers use the
    decoded activations ``t_max - t`` of the event-driven simulation, the output layer the
    potentials at ``t_min(N)``. ``single_layer`` is layer 1 (fed by the exact input).
    """
    z, hidden = net.relu_forward(X)
    if result is not None:
        _check_result(result, X)
    r = result if result is not None else net.simulate(X, n_threads=n_threads)
    rows = []
    for l, (a, h) in enumerate(zip(r.activations() + [r.logits.astype(np.float64)],
                                   hidden + [z])):
        err = float(np.abs(a - h).max()) if h.size else 0.0
        scale = float(np.abs(h).max()) if h.size else 0.0
        rows.append({"layer": l + 1, "max_abs": err, "max_rel": err / scale if scale else err,
                     "firing_set_equal": bool(np.array_equal(a > 0, h > 0))
                     if l < net.depth - 1 else None})
    return {"layers": rows, "single_layer": rows[0],
            "network_max_abs": max(row["max_abs"] for row in rows),
            "network_max_rel": max(row["max_rel"] for row in rows)}


# ---------------------------------------------------------------------- seed v1
def seed_v1_forward(net, X, t_out_max=15.0):
    """A per-sample renormalised conversion (an inexact variant), kept to show its drop.

    Every layer (output included), per image: ``s = max h - min h``,
    ``t_in = 1 - (h - min h)/s``, ``t_out = min((V + t_in W^T)/(alpha + sum W), 15)`` with
    ``alpha = 1 - sum_j W_ij``, ``V = 15 - b - sum_j W_ij``; ``h <- (15 - t_out) s``.
    Algebraically (min h = 0) ``h_out = ReLU(W h + s b)``: a ReLU net whose biases are
    scaled by a per-sample factor — not the ReLU net. ``s = 0`` is replaced by 1 (the
    seed divided by zero).

    Returns
    -------
    logits : ndarray (n, n_out)   (ReLU-clamped, as in the seed)
    scales : ndarray (n, N)       s_n(x) used by weight layer n
    """
    _check_x(X, net.sizes[0])
    h = X.astype(np.float64)
    scales = []
    for w, b in zip(net.weights, net.biases):
        lo = h.min(axis=1, keepdims=True)
        s = h.max(axis=1, keepdims=True) - lo
        s = np.where(s > 0, s, 1.0)
        t_in = 1.0 - (h - lo) / s
        wsum = w.sum(axis=1)
        alpha = 1.0 - wsum
        v = t_out_max - b - wsum
        t_out = np.minimum((v + t_in @ w.T) / (alpha + wsum), t_out_max)
        h = (t_out_max - t_out) * s
        scales.append(s[:, 0])
    return h, np.stack(scales, axis=1)


def scaled_bias_relu(net, X, scales):
    """ReLU net with ``b(n) <- s_n(x) b(n)`` and a ReLU on the logits (the v1 identity).

    ``scales`` has shape (n, N): one factor per image and weight layer, as returned by
    :func:`seed_v1_forward`.
    """
    _check_x(X, net.sizes[0])
    scales = np.asarray(scales, dtype=np.float64)
    if scales.shape != (len(X), net.depth):
        raise ValueError(f"scales must have shape ({len(X)}, {net.depth}) (images x weight "
                         f"layers), got {scales.shape}")
    h = X.astype(np.float64)
    for l, (w, b) in enumerate(zip(net.weights, net.biases)):
        h = np.maximum(h @ w.T + scales[:, l:l + 1] * b, 0.0)
    return h


# ---------------------------------------------------------------------- storage
def save(net, path, results=None, stats=None):
    """Write ``net`` (and optional results/statistics) to HDF5 atomically.

    ``stats`` maps names to arrays (e.g. per-layer spike statistics); ``results`` is any
    JSON-serialisable dict. Layout: root attributes ``snnfast_format`` ("ttfs-1"),
    ``zeta``, ``tau_c``, ``depth``, ``meta``/``results`` (JSON); groups ``relu``
    (``W1..``, ``b1..``), ``windows`` (``t_min``, ``t_max``, ``delta``, ``x_max``),
    ``thresholds`` (``theta1..``), ``stats``.
    """
    from . import __version__
    path = Path(path)
    with atomic_h5(path) as f:
        f.attrs["snnfast_format"] = FORMAT
        f.attrs["snnfast_version"] = __version__
        f.attrs["zeta"] = net.zeta
        f.attrs["tau_c"] = TAU_C
        f.attrs["depth"] = net.depth
        f.attrs["meta"] = json.dumps(net.meta)
        f.attrs["results"] = json.dumps(results or {})
        g = f.create_group("relu")
        for l, (w, b) in enumerate(zip(net.weights, net.biases), 1):
            g.create_dataset(f"W{l}", data=w)
            g.create_dataset(f"b{l}", data=b)
        g = f.create_group("windows")
        for name, v in (("t_min", net.t_min), ("t_max", net.t_max),
                        ("delta", net.deltas), ("x_max", net.x_max)):
            g.create_dataset(name, data=v)
        g = f.create_group("thresholds")
        for l, th in enumerate(net.thresholds, 1):
            g.create_dataset(f"theta{l}", data=th)
        g = f.create_group("stats")
        for k, v in (stats or {}).items():
            g.create_dataset(k, data=np.asarray(v))
    return path


def load(path):
    """Read a network written by :func:`save`; raises ValueError naming the file if it
    is missing parts, truncated, inconsistent or not an snnfast TTFS file.

    The returned network carries ``results`` and ``stats`` attributes (dicts).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        with f:
            fmt = h5_format(f)
            if fmt != FORMAT:
                raise ValueError(f"{path}: not an snnfast TTFS file (snnfast_format={fmt!r}, "
                                 f"expected {FORMAT!r})")
            depth = int(f.attrs["depth"])
            weights = [f["relu"][f"W{l}"][()] for l in range(1, depth + 1)]
            biases = [f["relu"][f"b{l}"][()] for l in range(1, depth + 1)]
            net = TTFSNetwork(weights, biases, f["windows/x_max"][()], float(f.attrs["zeta"]),
                              meta=json.loads(f.attrs["meta"]))
            stored = {k: f["windows"][k][()] for k in ("t_min", "t_max", "delta")}
            thetas = [f["thresholds"][f"theta{l}"][()] for l in range(1, depth)]
            results = json.loads(f.attrs["results"])
            stats = {k: v[()] for k, v in f["stats"].items()}
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: inconsistent TTFS network ({exc})") from None
    except (KeyError, OSError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged or incomplete TTFS file ({exc})") from None
    for k, v in (("t_min", net.t_min), ("t_max", net.t_max), ("delta", net.deltas)):
        if not np.array_equal(stored[k], v):
            raise ValueError(f"{path}: stored windows/{k} do not match the calibration")
    if len(thetas) != net.depth - 1 or not all(
            np.array_equal(a, b) for a, b in zip(thetas, net.thresholds)):
        raise ValueError(f"{path}: stored thresholds do not match Delta_n - b_n")
    net.results, net.stats = results, stats
    return net
