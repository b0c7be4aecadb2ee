"""Validating Python API over the Conv-SNN compute kernels (the only entry point the model uses).

The semantics are those of the documentation page "Neuron and network semantics": a
convolution (one input plane, ``C`` channels, ``k x k`` kernel, stride ``s``) driven by
rate-coded input spikes, a LIF conv layer, a spike-driven FC1 into a LIF hidden layer, all in
float32 with an exact order of additions so that the compiled kernels reproduce the NumPy
oracle (``tests/_convsnn_oracle.py``) bit for bit.

Sizes
-----
The kernels take their sizes as arguments: a :class:`Geometry` read from a network
description (:meth:`Geometry.from_network`) that has the pattern they implement, conv ->
LIF -> flatten -> linear -> LIF -> rate read-out -> linear, within their family (checked
there, with a one-line error naming the layer and field otherwise). The functions'
``geometry`` argument defaults to the default preset's (:data:`DEFAULT_GEOMETRY`, read from
``snnfast/network/presets/default.toml``); where the arrays carry a size (``W1b``, the spike
lists) it is read from them.

Layouts
-------
- images: ``uint8 (B, H*W)``, row-major ``H x W``.
- conv neuron index ``j = c*npos + y*OW + x`` (C order of ``(C, OH, OW)``, ``npos = OH*OW``).
- ``W1`` canonical ``(n_conv, n_hid)``; the kernels use a private *blocked* copy
  ``W1b = to_blocked(W1)`` of shape ``(n_hid // bw, n_conv, bw)`` (``W1b[k, j, i] ==
  W1[j, k*bw+i]``) so that one block of columns stays in the L2 cache while every sample's
  spikes are added. The block width ``bw`` is read back from ``W1b.shape[2]``.

Threads
-------
Every kernel releases the GIL and runs OpenMP over samples (conv, and the conv on rates of
:func:`conv_rate_backward` and :func:`conv_patch_active`), (block, sample) pairs
(FC1 + hidden LIF) or tiles of W1 rows (the fused training steps :func:`w1_adam_step` and
:func:`w1_sgd_step`). Each output element is computed by exactly one thread in a fixed order,
so results are bit-identical for any ``n_threads`` (rule: :func:`snnfast.effective_n_threads`).

Random numbers
--------------
Counter-based (splitmix64 finaliser ``mix64``), keyed by ``(seed, epoch, sample_id, step,
pixel)``; see :func:`uniform24`. The same image with the same ``sample_id`` gets the same
input spikes in any batch position or composition, for any thread count.

Example
-------
>>> geo = Geometry.from_network(load_preset("default")[0])   # the preset's sizes
>>> W1b = to_blocked(W1)                                   # once, after every W1 change
>>> conv = conv_forward(images, ids, seed, epoch, conv_w, conv_b, T=10, n_det=5,
...                     geometry=geo)
>>> hid = hidden_forward(conv, W1b, b1, reset="subtract", period=2, phase=1,
...                      drive="window", scale=1.0)
>>> r_h = hid.n_h / np.float32(hid.n_updates)              # then logits = r_h @ W2 + b2
>>> cnt = conv.drive_counts(2, 1, "window")                # sum_u acc_u == cnt @ W1

Errors
------
Wrong dtype/shape/contiguity, out-of-range scalars, NaN/inf weights or corrupted spike lists
raise ``ValueError`` (``TypeError`` for non-arrays): never a crash, never a silent result.
Spike indices are checked before any W1 row is read through them.
"""
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from ._config import effective_n_threads
from ._utils import (_aligned_empty, adam_step_size, aligned_copy, aligned_zeros, check_array,
                     check_disjoint)

__all__ = [
    "Geometry", "DEFAULT_GEOMETRY", "PATTERN", "N_PIX", "N_CONV", "N_HID",
    "SUPPORTED_BLOCK_WIDTHS", "BLOCK_WIDTH", "choose_block_width", "EVAL_EPOCH",
    "ConvResult", "HiddenResult", "det_table", "update_steps", "conv_event_table",
    "uniform24", "to_blocked", "from_blocked", "conv_forward", "hidden_forward", "adam_step",
    "adam_step_many", "w1_adam_step", "w1_sgd_step", "conv_rate_backward",
    "conv_patch_active", "ema_step",
]

EVAL_EPOCH = 2**32 - 1
"""Epoch key used for evaluation so that evaluation noise is fixed."""
SUPPORTED_BLOCK_WIDTHS = (16, 32, 64, 128, 256)
_U64 = 2**64
KiB, MiB = 2**10, 2**20
_RESETS_C = {"zero": 0}
_RESETS_H = {"halve": 0, "subtract": 1, "zero": 2}
_DRIVES = {"cumulative": 0, "window": 1}


# --------------------------------------------------------------------------- sizes
# The tuned kernels' pattern: these layer types in this order (conv -> LIF -> flatten ->
# linear -> LIF -> rate read-out -> linear); general networks run through snnfast.engine.
PATTERN = ("Conv2d", "LIF", "Flatten", "Linear", "LIF", "RateReadout", "Linear")


@dataclass(frozen=True)
class Geometry:
    """The sizes of the network the tuned kernels run, read from its description.

    Parameters
    ----------
    height, width : int
        The input plane (one channel).
    channels, kernel, stride : int
        Conv output channels, square kernel size and stride (no padding).
    hidden, classes : int
        Hidden LIF neurons (FC1's outputs) and read-out classes (FC2's outputs).

    Raises
    ------
    ValueError
        For sizes outside the kernels' family, naming the field: ``channels`` a multiple
        of 8 (the channels of a position are 8-float vectors), ``out_h * out_w`` a multiple
        of 8 (the conv LIF works on groups of 8 positions), ``hidden`` a multiple of 16
        (the narrowest W1 block), at most 65 536 input pixels, conv neurons and conv
        weights (16-bit indices), a kernel no larger than the input that reaches at most
        255 positions from one pixel.
    """
    height: int
    width: int
    channels: int
    kernel: int
    stride: int
    hidden: int
    classes: int

    def __post_init__(self):
        for name in ("height", "width", "channels", "kernel", "stride", "hidden", "classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"geometry: {name} must be an integer >= 1, got {v!r}")
        if self.kernel > min(self.height, self.width):
            raise ValueError(f"geometry: kernel {self.kernel} is larger than the input "
                             f"{self.height}x{self.width}")
        if self.channels % 8:
            raise ValueError(f"geometry: channels must be a multiple of 8 for the tuned "
                             f"kernels, got {self.channels}")
        if self.n_pos % 8:
            raise ValueError(f"geometry: the conv output ({self.out_h}x{self.out_w}) must have "
                             f"a multiple of 8 positions for the tuned kernels")
        if self.hidden % SUPPORTED_BLOCK_WIDTHS[0]:
            raise ValueError(f"geometry: hidden must be a multiple of "
                             f"{SUPPORTED_BLOCK_WIDTHS[0]} for the tuned kernels, got "
                             f"{self.hidden}")
        if self.n_pix > 2**16 or self.n_conv > 2**16:
            raise ValueError(f"geometry: at most 65536 input pixels and conv neurons (16-bit "
                             f"spike indices), got {self.n_pix} and {self.n_conv}")
        if self.channels * self.n_taps > 2**16:
            raise ValueError(f"geometry: at most 65536 conv weights (channels x kernel^2, "
                             f"16-bit tap offsets), got {self.channels * self.n_taps}")
        if self.max_fanout > 255:
            raise ValueError(f"geometry: kernel {self.kernel} with stride {self.stride} "
                             f"reaches {self.max_fanout} positions from one pixel; the tuned "
                             f"kernels allow 255")

    @property
    def out_h(self):
        return (self.height - self.kernel) // self.stride + 1

    @property
    def out_w(self):
        return (self.width - self.kernel) // self.stride + 1

    @property
    def image_shape(self):
        """``(height, width)`` of one input image."""
        return (self.height, self.width)

    @property
    def conv_shape(self):
        """``(channels, out_h, out_w)`` of the conv layer's neurons."""
        return (self.channels, self.out_h, self.out_w)

    @property
    def n_pix(self):
        return self.height * self.width

    @property
    def n_pos(self):
        """Conv output positions per channel."""
        return self.out_h * self.out_w

    @property
    def n_conv(self):
        """Conv neurons (FC1's inputs)."""
        return self.channels * self.n_pos

    @property
    def n_taps(self):
        return self.kernel * self.kernel

    @property
    def max_fanout(self):
        """The most output positions one input pixel reaches: ceil(k / s) squared."""
        return (-(-self.kernel // self.stride)) ** 2

    @property
    def param_shapes(self):
        """The six canonical arrays' shapes (``conv_w`` is ``(C, 1, k, k)``)."""
        k = self.kernel
        return {"conv_w": (self.channels, 1, k, k), "conv_b": (self.channels,),
                "W1": (self.n_conv, self.hidden), "b1": (self.hidden,),
                "W2": (self.hidden, self.classes), "b2": (self.classes,)}

    @classmethod
    def from_network(cls, net):
        """The geometry of a :class:`snnfast.network.Network` that has the tuned kernels'
        pattern (:data:`PATTERN`: one input channel, a conv without padding with a square
        kernel and stride, biases everywhere); ValueError naming the layer and field
        otherwise."""
        types = tuple(type(ly).__name__ for ly in net)
        if types != PATTERN:
            raise ValueError(f"network {net.name or ''}: the tuned kernels run only "
                             f"{' -> '.join(PATTERN)}, got {' -> '.join(types)} (general "
                             f"networks run through snnfast.engine)")
        conv, fc1, fc2 = net.layers[0], net.layers[3], net.layers[6]
        where = f"layer {conv.name!r} (Conv2d)"
        if net.input_shape[0] != 1:
            raise ValueError(f"{where}: the tuned kernels take one input channel, got "
                             f"{net.input_shape[0]}")
        for field, ok in (("kernel_size", conv.kernel_size[0] == conv.kernel_size[1]),
                          ("stride", conv.stride[0] == conv.stride[1]),
                          ("padding", conv.padding == (0, 0))):
            if not ok:
                raise ValueError(f"{where}: {field} {getattr(conv, field)} is not supported "
                                 f"by the tuned kernels (square kernel and stride, no padding)")
        for ly in (conv, fc1, fc2):
            if not ly.bias:
                raise ValueError(f"layer {ly.name!r} ({type(ly).__name__}): bias must be true "
                                 f"for the tuned kernels")
        try:
            return cls(height=net.input_shape[1], width=net.input_shape[2],
                       channels=conv.out_channels, kernel=conv.kernel_size[0],
                       stride=conv.stride[0], hidden=fc1.out_features,
                       classes=fc2.out_features)
        except ValueError as exc:
            raise ValueError(f"network {net.name or ''}: {exc}") from None


def _preset_geometry():
    from .network import load_preset
    return Geometry.from_network(load_preset("default")[0])


DEFAULT_GEOMETRY = _preset_geometry()
"""The default preset's sizes (its file is their one source)."""
# Back-compatible names of the default preset's sizes (read from its description)
N_PIX, N_CONV, N_HID = DEFAULT_GEOMETRY.n_pix, DEFAULT_GEOMETRY.n_conv, DEFAULT_GEOMETRY.hidden
N_POS = DEFAULT_GEOMETRY.n_pos


def _geo(geometry):
    """The geometry argument of a kernel function (None: the default preset's)."""
    if geometry is None:
        return DEFAULT_GEOMETRY
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    return geometry


def _l2_bytes():
    """Per-core L2 size from sysfs (bytes), or None if it cannot be read."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as fh:
            raw = fh.read().strip().upper()
    except OSError:
        return None
    mult = {"K": KiB, "M": MiB}.get(raw[-1:], 1)
    try:
        return int(raw.rstrip("KM")) * mult
    except ValueError:
        return None


def _vector_width():
    """Floats per SIMD register in the compiled FC1 kernel (8 if it cannot be asked)."""
    try:
        from . import _convsnn_fc
        return int(_convsnn_fc.vector_width())
    except ImportError:  # kernels not built yet: the NumPy paths still import this module
        return 8


@lru_cache(maxsize=16)
def choose_block_width(n_conv, n_hid):
    """Widest supported block (dividing ``n_hid``) that fits both the L2 cache and the
    register file, for a W1 of ``n_conv`` rows and ``n_hid`` columns.

    L2: the W1 slice of one block (n_conv x bw float32) must fit in ~3/4 of the per-core L2,
    so it stays hot while all samples stream through it. Registers: the kernel keeps the
    bw-wide accumulator tiles of 4 samples (bw <= 4 vectors) or 2 samples in vector
    registers, at most 16 of them: bw <= 8 vectors (64 columns with AVX2, 128 with AVX-512).
    Without sysfs information 32 is used.
    ``SNNFAST_BLOCK_WIDTH`` overrides (benchmarking).
    """
    import os
    raw = os.environ.get("SNNFAST_BLOCK_WIDTH", "").strip()
    if raw:
        bw = int(raw)
        if bw not in SUPPORTED_BLOCK_WIDTHS:
            raise ValueError(f"SNNFAST_BLOCK_WIDTH={bw} not in {SUPPORTED_BLOCK_WIDTHS}")
        if n_hid % bw:
            raise ValueError(f"SNNFAST_BLOCK_WIDTH={bw} does not divide the hidden width "
                             f"{n_hid}")
        return bw
    fits = [bw for bw in SUPPORTED_BLOCK_WIDTHS if n_hid % bw == 0]
    l2 = _l2_bytes()
    if l2 is None:
        return 32 if 32 in fits else fits[0]
    cap = 8 * _vector_width()
    best = fits[0]
    for bw in fits:
        # leave room for the spike lists, the tile state and the other hyper-thread
        if n_conv * bw * 4 <= 0.75 * l2 and bw <= cap:
            best = bw
    return best


BLOCK_WIDTH = choose_block_width(N_CONV, N_HID)
"""Default hidden columns per W1 block of the default preset (from the L2 size; env
``SNNFAST_BLOCK_WIDTH``)."""


# --------------------------------------------------------------------------- results
@dataclass
class ConvResult:
    """Output of :func:`conv_forward` for a batch of B images and T steps.

    Attributes
    ----------
    spk_idx : uint16 (B, T, n_conv)
        Conv spike indices per sample and step; only ``spk_idx[b, t, :spk_cnt[b, t]]`` is
        valid (ascending ``j``); the rest is uninitialised memory.
    spk_cnt : int32 (B, T)
        Number of conv spikes per sample and step.
    n_in : int32 (B, n_pix)
        Input spikes per pixel (summed over steps).
    n_c : int32 (B, n_conv)
        Conv spikes per neuron (summed over steps).
    in_count : int64 (B, T)
        Input spikes per sample and step.
    conv_events : int64 (B, T)
        Conv synaptic events: sum over input spikes of (valid output positions) x channels.
    input_spikes : uint8 (B, T, n_pix) or None
        The input spikes, if ``record_input=True``.
    T : int
        Number of time steps.
    """
    spk_idx: np.ndarray
    spk_cnt: np.ndarray
    n_in: np.ndarray
    n_c: np.ndarray
    in_count: np.ndarray
    conv_events: np.ndarray
    input_spikes: Optional[np.ndarray]
    T: int

    @property
    def batch_size(self):
        return self.spk_cnt.shape[0]

    @property
    def n_conv(self):
        """Conv neurons (the length of a step's spike list)."""
        return self.spk_idx.shape[2]

    def conv_spikes(self, n_threads=None):
        """Dense conv spikes ``uint8 (B, T, n_conv)`` rebuilt from the index lists."""
        from . import _convsnn_conv
        self._check_lists()
        B, T = self.spk_cnt.shape
        out = np.zeros((B, T, self.n_conv), np.uint8)
        if _convsnn_conv.dense_spikes_into(self.spk_idx, self.spk_cnt, out, _threads(n_threads)):
            raise ValueError(f"spk_idx holds indices >= {self.n_conv} in its valid part")
        return out

    def weighted_counts(self, weights, n_threads=None):
        """``int32 (B, n_conv)``: sum over steps of ``weights[t]`` x (neuron j spiked at t).

        ``weights`` is an int32 ``(T,)`` array (exact integer arithmetic).
        """
        from . import _convsnn_conv
        self._check_lists()
        B, T = self.spk_cnt.shape
        check_array(weights, "weights", np.int32, shape=(T,))
        out = np.zeros((B, self.n_conv), np.int32)
        if _convsnn_conv.weighted_counts_into(self.spk_idx, self.spk_cnt, weights, out,
                                             _threads(n_threads)):
            raise ValueError(f"spk_idx holds indices >= {self.n_conv} in its valid part")
        return out

    def drive_counts(self, period, phase, drive, n_threads=None):
        """``int32 (B, n_conv)``: how often each conv neuron's W1 row is in the drive accumulator,
        summed over the hidden updates, so ``sum_u acc_u = drive_counts @ W1`` (the FC1 part of
        the summed hidden drive, what a gradient w.r.t. W1 needs).

        'cumulative': a spike at step t counts once per update at or after t; 'window': once
        if some update follows it (at or after t), else 0.
        """
        steps = update_steps(self.T, period, phase)
        _check_choice(drive, "drive", _DRIVES)
        w = np.zeros(self.T, np.int32)
        for t in range(self.T):
            after = sum(1 for u in steps if u >= t)
            w[t] = after if drive == "cumulative" else min(after, 1)
        return self.weighted_counts(w, n_threads)

    def _check_lists(self):
        B, T = self.spk_cnt.shape
        check_array(self.spk_idx, "spk_idx", np.uint16, shape=(B, T, None))
        check_array(self.spk_cnt, "spk_cnt", np.int32, shape=(B, T))
        if B and (self.spk_cnt.min() < 0 or self.spk_cnt.max() > self.n_conv):
            raise ValueError(f"spk_cnt out of range [0, {self.n_conv}]")

    def step_counters(self):
        """Per-step totals over the batch: dict of int64 (T,) arrays."""
        return {"input_spikes": self.in_count.sum(0),
                "conv_spikes": self.spk_cnt.sum(0, dtype=np.int64),
                "conv_synaptic_events": self.conv_events.sum(0)}

    def sample_counters(self):
        """Per-sample totals over the steps: dict of int64 (B,) arrays."""
        return {"input_spikes": self.in_count.sum(1),
                "conv_spikes": self.spk_cnt.sum(1, dtype=np.int64),
                "conv_synaptic_events": self.conv_events.sum(1)}


@dataclass
class HiddenResult:
    """Output of :func:`hidden_forward`.

    Attributes
    ----------
    n_h : int32 (B, n_hid)
        Hidden spikes per neuron (summed over hidden updates).
    ih_sum : float32 (B, n_hid)
        Sum over hidden updates (in step order, from 0.0) of the drive
        ``I_h = (acc + b1) * scale`` (what a rate surrogate gradient needs).
    hid_count : int64 (B, T)
        Hidden spikes per sample and step (0 on steps without a hidden update).
    fc1_adds : int64 (B, T)
        FC1 row operations per sample at each update step, x n_hid: the rows the kernel added
        (one per conv spike since the previous update) or, for an incremental update, added
        and subtracted; counted at the update step that does them.
    update_steps : tuple of int
        The steps with a hidden update (``t % period == phase``).
    spikes : uint8 (B, T, n_hid) or None
        Hidden spikes, if ``record=True`` (all zero on non-update steps).
    """
    n_h: np.ndarray
    ih_sum: np.ndarray
    hid_count: np.ndarray
    fc1_adds: np.ndarray
    update_steps: Tuple[int, ...]
    spikes: Optional[np.ndarray]

    @property
    def n_updates(self):
        return len(self.update_steps)

    def step_counters(self):
        """Per-step totals over the batch: dict of int64 (T,) arrays."""
        return {"hidden_spikes": self.hid_count.sum(0), "fc1_row_adds": self.fc1_adds.sum(0)}

    def sample_counters(self):
        """Per-sample totals over the steps: dict of int64 (B,) arrays."""
        return {"hidden_spikes": self.hid_count.sum(1), "fc1_row_adds": self.fc1_adds.sum(1)}


# --------------------------------------------------------------------------- validation
def _check_int(value, name, lo, hi):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} out of range [{lo}, {hi}]")
    return value


def _check_float(value, name, lo=-np.inf, hi=np.inf):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                        np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    f32 = np.float32(value)
    v = float(f32)              # math on a Python float: numpy scalar calls cost microseconds
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name}={value!r} must be finite and in [{lo}, {hi}] (as float32)")
    return f32


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {sorted(choices)}")
    return choices[value]


def _threads(n_threads):
    return effective_n_threads(n_threads)


# --------------------------------------------------------------------------- helpers
def det_table(T, n_det):
    """Deterministic-phase thresholds, one int32 per step.

    For ``t < n_det`` the entry is the smallest ``u8`` with ``u8/255.0 > 1.0 - t/n_det``
    (evaluated in float64 exactly like the reference), or 256 if no pixel spikes (t=0).
    For ``t >= n_det`` (stochastic phase) the entry is -1.
    """
    T = _check_int(T, "T", 1, 10_000)
    n_det = _check_int(n_det, "n_det", 0, 10_000)
    return _det_table(T, n_det).copy()


@lru_cache(maxsize=32)
def _det_table(T, n_det):
    out = np.full(T, -1, np.int32)
    for t in range(min(T, n_det)):
        thr = 1.0 - t / float(n_det)
        out[t] = next((u for u in range(256) if u / 255.0 > thr), 256)
    out.flags.writeable = False
    return out


def update_steps(T, period, phase):
    """Steps ``t < T`` with a hidden update: ``t % period == phase``."""
    T = _check_int(T, "T", 1, 10_000)
    period = _check_int(period, "period", 1, 10_000)
    phase = _check_int(phase, "phase", 0, period - 1)
    return tuple(t for t in range(T) if t % period == phase)


def conv_event_table(geometry=None):
    """int64 (n_pix,): conv synaptic events caused by one input spike at each pixel.

    Number of valid output positions the kernel places over the pixel, x channels.
    """
    return _conv_event_table(_geo(geometry)).copy()


@lru_cache(maxsize=16)
def _conv_event_table(g):
    def n_out(r, n):  # outputs y with s*y <= r <= s*y + k - 1, 0 <= y < n
        return sum(1 for y in range(n) if 0 <= r - g.stride * y < g.kernel)
    rows = np.array([n_out(r, g.out_h) for r in range(g.height)], np.int64)
    cols = np.array([n_out(c, g.out_w) for c in range(g.width)], np.int64)
    out = (rows[:, None] * cols[None, :] * g.channels).reshape(g.n_pix)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=16)
def _conv_tables(g):
    """The conv kernel's tap tables of a geometry (built once, read-only)."""
    from . import _convsnn_conv
    tables = _convsnn_conv.conv_tables(g.height, g.width, g.channels, g.kernel, g.stride)
    for a in tables:
        a.flags.writeable = False
    return tables


def uniform24(seed, epoch, sample_ids, step, pixels):
    """The kernels' counter-based uniforms ``u24`` (0 .. 2^24-1) for one step (for tests).

    Parameters
    ----------
    seed, epoch : int in [0, 2^64)
    sample_ids : int64 (B,)
    step : int
    pixels : int64 (P,)

    Returns
    -------
    uint32 (B, P)
    """
    from . import _convsnn_conv
    seed = _check_int(seed, "seed", 0, _U64 - 1)
    epoch = _check_int(epoch, "epoch", 0, _U64 - 1)
    step = _check_int(step, "step", 0, 2**31 - 1)
    check_array(sample_ids, "sample_ids", np.int64, ndim=1)
    check_array(pixels, "pixels", np.int64, ndim=1)
    if (sample_ids < 0).any() or (pixels < 0).any() or (pixels >= 2**32).any():
        raise ValueError("sample_ids must be >= 0 and pixels in [0, 2^32)")
    out = np.empty((sample_ids.shape[0], pixels.shape[0]), np.uint32)
    _convsnn_conv.uniform24_into(np.uint64(seed), np.uint64(epoch), sample_ids, step, pixels, out)
    return out


def to_blocked(W1, block_width=None):
    """Canonical ``W1 (n_conv, n_hid)`` -> blocked ``(n_hid//bw, n_conv, bw)`` float32 (page
    aligned).

    ``W1b[k, j, i] == W1[j, k*bw + i]``. ``block_width`` defaults to
    :func:`choose_block_width` of W1's shape (:data:`BLOCK_WIDTH` for the default preset).
    """
    check_array(W1, "W1", np.float32, ndim=2, contiguous=False)
    n_conv, n_hid = W1.shape
    if block_width is None:
        bw = choose_block_width(n_conv, n_hid)
    else:
        bw = _check_int(block_width, "block_width", 1, max(n_hid, 1))
    if bw not in SUPPORTED_BLOCK_WIDTHS or n_hid % bw:
        raise ValueError(f"block_width={bw} must be in {SUPPORTED_BLOCK_WIDTHS} and divide "
                         f"W1's {n_hid} columns")
    # page-aligned: every row starts a cache line and line pairs never straddle two rows
    out = _aligned_empty((n_hid // bw, n_conv, bw), align=4096)
    out[...] = W1.reshape(n_conv, n_hid // bw, bw).transpose(1, 0, 2)
    return out


def from_blocked(W1b):
    """Blocked ``(n_hid//bw, n_conv, bw)`` -> canonical ``W1 (n_conv, n_hid)`` (a new array)."""
    _check_blocked(W1b, "W1b", contiguous=False)
    nblk, n_conv, bw = W1b.shape
    return np.ascontiguousarray(W1b.transpose(1, 0, 2).reshape(n_conv, nblk * bw))


def _check_blocked(W1b, name, contiguous=True, finite=False, n_conv=None):
    """Validate a blocked W1 (of ``n_conv`` rows if given); return its block width."""
    check_array(W1b, name, np.float32, ndim=3, contiguous=contiguous, finite=finite)
    nblk, rows, bw = W1b.shape
    if (bw not in SUPPORTED_BLOCK_WIDTHS or nblk < 1 or rows < 1
            or (n_conv is not None and rows != n_conv)):
        want = "n_conv" if n_conv is None else n_conv
        raise ValueError(f"{name} must have shape (n_hid//bw, {want}, bw) with bw in "
                         f"{SUPPORTED_BLOCK_WIDTHS}, got {W1b.shape}")
    return bw


# --------------------------------------------------------------------------- kernels
def conv_forward(images, sample_ids, seed, epoch, conv_w, conv_b, *, T=10, n_det=5,
                 beta=0.9, thr=0.8, reset="zero", n_threads=None, record_input=False,
                 conv_method="scatter", geometry=None):
    """Input encoding + conv (C x k x k, stride s) + conv LIF for all T steps.

    Parameters
    ----------
    images : uint8 (B, n_pix), C-contiguous
    sample_ids : int64 (B,)
        Index of each image in its data set (keys the input noise), >= 0.
    seed, epoch : int in [0, 2^64)
        Noise keys (evaluation: ``epoch=EVAL_EPOCH``).
    conv_w : float32 (C, k*k) or (C, 1, k, k), C-contiguous, finite
    conv_b : float32 (C,), finite
    T : int
        Number of steps.
    n_det : int
        Steps ``t < n_det`` use the deterministic rule (:func:`det_table`), the rest
        Bernoulli: spike iff ``u24 * 255 < u8 * 2^24``.
    beta, thr : float
        Conv LIF decay and threshold (float32; ``v = beta*v + I``; spike iff ``v > thr``).
    reset : {'zero'}
        Conv reset (only 'zero' is defined by the contract).
    n_threads : int or None
    record_input : bool
        Also return the dense input spikes.
    conv_method : {'scatter', 'gather'}
        Event-driven scatter of each input spike's taps (default, measured faster) or a
        dense gather over output positions (inputs at most 32 pixels wide, kernels of at
        most 32 taps); both give identical bits.
    geometry : Geometry or None
        The sizes (None: :data:`DEFAULT_GEOMETRY`).

    Returns
    -------
    ConvResult
    """
    from . import _convsnn_conv
    g = _geo(geometry)
    check_array(images, "images", np.uint8, shape=(None, g.n_pix))
    B = images.shape[0]
    check_array(sample_ids, "sample_ids", np.int64, shape=(B,))
    if B and sample_ids.min() < 0:
        raise ValueError("sample_ids must be >= 0")
    seed = _check_int(seed, "seed", 0, _U64 - 1)
    epoch = _check_int(epoch, "epoch", 0, _U64 - 1)
    check_array(conv_w, "conv_w", np.float32, finite=True)
    shapes = ((g.channels, g.n_taps), g.param_shapes["conv_w"])
    if conv_w.shape not in shapes:
        raise ValueError(f"conv_w must have shape {shapes[0]} or {shapes[1]}, got "
                         f"{conv_w.shape}")
    check_array(conv_b, "conv_b", np.float32, shape=(g.channels,), finite=True)
    T = _check_int(T, "T", 1, 10_000)
    n_det = _check_int(n_det, "n_det", 0, 10_000)
    beta = _check_float(beta, "beta")
    thr = _check_float(thr, "thr")
    _check_choice(reset, "reset", _RESETS_C)
    gather = _check_choice(conv_method, "conv_method", {"scatter": False, "gather": True})
    if gather and (g.width > 32 or g.n_taps > 32):
        raise ValueError("conv_method='gather' needs inputs at most 32 pixels wide and "
                         "kernels of at most 32 taps")
    nt = _threads(n_threads)

    det = _det_table(T, n_det)  # cached, read-only use
    # every element of these is written by the kernel (by the thread that owns its sample)
    spk_idx = np.empty((B, T, g.n_conv), np.uint16)
    spk_cnt = np.empty((B, T), np.int32)
    n_in = np.empty((B, g.n_pix), np.int32)
    n_c = np.empty((B, g.n_conv), np.int32)
    in_count = np.empty((B, T), np.int64)
    conv_events = np.empty((B, T), np.int64)
    rec = np.zeros((B, T, g.n_pix) if record_input else (0, 0, 0), np.uint8)
    if B:
        # taps transposed to (k*k, C): one input spike adds a C-channel vector per position
        wT = np.ascontiguousarray(conv_w.reshape(g.channels, g.n_taps).T)
        _convsnn_conv.conv_forward_into(
            images, sample_ids, np.uint64(seed), np.uint64(epoch), wT, conv_b, det, n_det,
            beta, thr, _conv_event_table(g), spk_idx, spk_cnt, n_in, n_c, in_count,
            conv_events, rec, bool(record_input), nt, g.height, g.width, g.kernel, g.stride,
            *_conv_tables(g), gather)
    return ConvResult(spk_idx, spk_cnt, n_in, n_c, in_count, conv_events,
                      rec if record_input else None, T)


def hidden_forward(conv, W1b, b1, *, beta=0.9, thr=0.8, reset="subtract", period=2, phase=1,
                   drive="window", scale=1.0, incremental=False, n_threads=None, record=False):
    """Spike-driven FC1 + hidden LIF, from the conv spikes of :func:`conv_forward`.

    At each update step (``t % period == phase``) the rows ``W1[j]`` of all conv spikes since
    the previous update (step ascending, ``j`` ascending) are added to the drive accumulator
    ``acc`` (cleared before every update's rows for ``drive='window'``, never for
    ``'cumulative'``); then ``I = (acc + b1) * scale``, ``v = beta*v + I``, spike iff
    ``v > thr``, and reset ('halve': ``v *= 0.5``, 'subtract': ``v -= thr``, 'zero': ``v = 0``,
    where spiking).

    With ``incremental`` (window drive only) an update may instead be formed from the
    previous drive: when this update's window and the previous one span at most two steps
    each, let d_j be how often conv neuron ``j`` spiked in this window minus in the previous
    one (-2..2); ``acc`` then keeps its value, the rows of the neurons with d_j > 0 are added
    (j ascending, a row twice in a row where d_j = 2) and those with d_j < 0 subtracted
    (likewise), provided these rows are fewer than the window's spikes; otherwise the update
    is formed as above. The drive is the same sum; only its float32 rounding differs. On
    MNIST with the default preset this takes a third fewer rows: a neuron that spikes in
    both of two consecutive windows costs nothing.

    Parameters
    ----------
    conv : ConvResult
    W1b : float32 (n_hid//bw, n_conv, bw), C-contiguous, finite (from :func:`to_blocked`);
        non-finite values raise ValueError (detected inside the kernel at no extra pass)
    b1 : float32 (n_hid,), finite
    beta, thr, scale : float
    reset : {'halve', 'subtract', 'zero'}
    period, phase : int
        ``period >= 1``, ``0 <= phase < period``.
    drive : {'cumulative', 'window'}
    incremental : bool
        Incremental window updates (see above); requires ``drive='window'``.
    n_threads : int or None
    record : bool
        Also return the dense hidden spikes (B, T, n_hid).

    Returns
    -------
    HiddenResult
    """
    from . import _convsnn_fc
    if not isinstance(conv, ConvResult):
        raise TypeError(f"conv must be a ConvResult, got {type(conv).__name__}")
    B, T = conv.spk_cnt.shape
    check_array(conv.spk_idx, "conv.spk_idx", np.uint16, shape=(B, T, None))
    check_array(conv.spk_cnt, "conv.spk_cnt", np.int32, shape=(B, T))  # range: in the kernel
    n_conv = conv.n_conv
    # finiteness: checked by the kernel, see below
    bw = _check_blocked(W1b, "W1b", n_conv=n_conv)
    n_hid = W1b.shape[0] * bw
    check_array(b1, "b1", np.float32, shape=(n_hid,), finite=True)
    beta = _check_float(beta, "beta")
    thr = _check_float(thr, "thr")
    scale = _check_float(scale, "scale")
    reset_code = _check_choice(reset, "reset", _RESETS_H)
    drive_code = _check_choice(drive, "drive", _DRIVES)
    if not isinstance(incremental, (bool, np.bool_)):
        raise TypeError(f"incremental must be a bool, got {type(incremental).__name__}")
    if incremental and drive != "window":
        raise ValueError("incremental updates need drive='window'")
    steps = update_steps(T, period, phase)
    nt = _threads(n_threads)

    run = bool(B and steps)
    alloc = np.empty if run else np.zeros     # the kernel writes these in full
    n_h = alloc((B, n_hid), np.int32)
    ih_sum = alloc((B, n_hid), np.float32)
    hid_count = alloc((B, T), np.int64)
    fc1_adds = alloc((B, T), np.int64)
    rec = np.zeros((B, T, n_hid) if record else (0, 0, 0), np.uint8)
    if run:
        part = np.zeros((n_hid // bw, B, T), np.int32)
        is_update = np.zeros(T, np.uint8)
        is_update[list(steps)] = 1
        n_bad, n_nonfinite = _convsnn_fc.hidden_forward_into(
            conv.spk_idx, conv.spk_cnt, W1b, b1, is_update, beta, thr, scale, reset_code,
            drive_code + bool(incremental), n_h, ih_sum, part, hid_count, fc1_adds, rec,
            bool(record), nt)
        if n_bad:
            # checked by the kernel before any W1 row is read through an index
            raise ValueError(f"conv.spk_cnt out of range [0, {n_conv}] or conv.spk_idx "
                             f"holding indices >= {n_conv} in its valid part ({n_bad} found)")
        if n_nonfinite:
            # checked inside the kernel (fused with its first pass over each block: a
            # separate np.isfinite pass over 9 MB would cost ~0.5 ms per call)
            raise ValueError(f"W1b contains NaN or infinite values ({n_nonfinite} block(s))")
    return HiddenResult(n_h, ih_sum, hid_count, fc1_adds, steps, rec if record else None)


def adam_step(param, grad, m, v, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step,
              n_threads=None, check_finite=True):
    """One fused Adam update, in place on ``param``, ``m`` and ``v`` (float32).

    Per element, in float32 (``bc1 = 1 - beta1**step``, ``bc2 = 1 - beta2**step`` computed
    in float64 and rounded to float32, as ``step_size = lr / bc1`` and ``rbc2 = 1/sqrt(bc2)``)::

        m = beta1*m + (1-beta1)*g
        v = beta2*v + (1-beta2)*(g*g)
        param = param - step_size * (m / (sqrt(v)*rbc2 + eps))

    Parameters
    ----------
    param, grad, m, v : float32 arrays of one shape, C-contiguous (e.g. blocked W1 and its
        blocked gradient); ``grad`` must be finite.
    lr, beta1, beta2, eps : float
    step : int
        1-based step count (for the bias corrections).
    n_threads : int or None
    check_finite : bool
        Check ``grad`` for NaN/inf *before* updating (ValueError, nothing changed). This is
        a separate pass (~0.2 ms for W1's 2.4 M floats); with ``False`` the kernel still
        counts non-finite gradients during the update and raises ValueError afterwards
        (then the affected entries of ``param``, ``m``, ``v`` are already non-finite).
    """
    adam_step_many([param], [grad], [m], [v], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                   step=step, n_threads=n_threads, check_finite=check_finite)


def adam_step_many(params, grads, ms, vs, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step,
                   n_threads=None, check_finite=True):
    """:func:`adam_step` on several arrays at once (lists of equal length), e.g. all the small
    parameters of a model: validated together, the constants computed once. With
    ``check_finite`` a non-finite gradient anywhere raises before any array is changed.
    """
    from . import _adam
    consts = _adam_constants(lr, beta1, beta2, eps, step)
    # the arrays are validated in the extension (see ext/_adam.pyx for why)
    n_bad = _adam.adam_step_many_into(list(params), list(grads), list(ms), list(vs), *consts,
                                      _threads(n_threads), bool(check_finite))
    if n_bad:
        raise ValueError(f"grad contained {n_bad} NaN or infinite values; the matching "
                         "entries of param, m and v are now non-finite")


def _adam_constants(lr, beta1, beta2, eps, step):
    """Validated float32 ``(b1, 1-b1, b2, 1-b2, step_size, rbc2, eps)`` of one Adam step."""
    lr = _check_float(lr, "lr", 0.0)
    b1 = float(_check_float(beta1, "beta1", 0.0, 1.0))
    b2 = float(_check_float(beta2, "beta2", 0.0, 1.0))
    if b1 >= 1.0 or b2 >= 1.0:
        raise ValueError("beta1 and beta2 must be < 1")
    eps = _check_float(eps, "eps", 0.0)
    step = _check_int(step, "step", 1, 2**62)
    bc1 = 1.0 - float(np.float64(b1)) ** step
    bc2 = 1.0 - float(np.float64(b2)) ** step
    if bc1 <= 0.0 or bc2 <= 0.0:
        raise ValueError("bias corrections vanish (beta1/beta2 of 0 with step 0?)")
    f32 = np.float32
    return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), adam_step_size(lr, bc1),
            f32(1.0 / np.sqrt(bc2)), eps)


def _check_w1_grad_inputs(W1b, c, d, check_finite):
    """Validate the operands of the fused W1 steps; return d in W1's block layout."""
    bw = _check_blocked(W1b, "W1b")
    nblk, n_conv = W1b.shape[:2]
    check_array(c, "c", np.float32, shape=(None, n_conv), finite=check_finite)
    check_array(d, "d", np.float32, shape=(c.shape[0], nblk * bw), finite=check_finite)
    if c.shape[0] == 0:
        raise ValueError("c and d must have at least one row (sample)")
    return aligned_copy(d.reshape(len(d), nblk, bw).transpose(1, 0, 2))


def _raise_if_nonfinite_grad(n_bad, adam):
    if n_bad:
        now = "W1 and Adam's m, v are" if adam else "W1 is"
        raise ValueError(f"the W1 gradient overflowed (NaN or infinite elements); {now} now "
                         "non-finite")


def w1_adam_step(W1b, m, v, c, d, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step,
                 active=None, n_threads=None, check_finite=True, geometry=None):
    """Gradient of W1, back product and Adam step in one pass over the blocked weights.

    With ``g = c.T @ d`` (in W1's blocked layout) this computes ``back = d @ W1.T`` with
    the weights *before* the step, then applies :func:`adam_step`'s update with ``g``,
    element for element the same formula. The gradient of a row of W1 is summed only over
    the samples whose entry of ``c`` is nonzero (conv activity is sparse).

    Parameters
    ----------
    W1b, m, v : float32 (n_hid//bw, n_conv, bw), C-contiguous, distinct; updated in place.
    c : float32 (B, n_conv), C-contiguous, finite (e.g. conv spikes per hidden update).
    d : float32 (B, n_hid), C-contiguous, finite (dL/d hidden current, times the drive scale).
    lr, beta1, beta2, eps, step : as in :func:`adam_step`.
    active : bool or uint8 (B, n_pos), optional
        Positions whose back product is wanted (e.g. :func:`conv_patch_active`): entry
        ``back[b, ch*n_pos + p]`` is computed only where ``active[b, p]``, and is 0 elsewhere.
        The surrogate gradient needs only those, and skipping the rest saves about a third
        of the back product on MNIST. Default: all.
    n_threads : int or None
    check_finite : bool
        Scan ``c`` and ``d`` for NaN and infinities first (default), so that bad input
        raises before anything changes. ``False`` skips the scans, for callers whose
        operands are finite by construction: a non-finite value then still raises, after
        the step, through the gradient's own check (W1, m and v are then non-finite).
    geometry : Geometry or None
        The sizes (None: :data:`DEFAULT_GEOMETRY`); W1b must have its ``n_conv`` rows.

    Returns
    -------
    back : float32 (B, n_conv)
        ``d @ W1.T`` where ``active``, else 0; per element the sum of 8 interleaved
        partial sums (see ``ext/``).
    total : float32 (n_conv,)
        ``back``'s column sums over all samples, active or not: ``D @ W1.T`` with ``D`` the
        sum of the rows of ``d`` (added in sample order), in the same lane order.
    """
    from . import _convsnn_w1
    g = _geo(geometry)
    _check_blocked(W1b, "W1b", n_conv=g.n_conv)
    d_blocks = _check_w1_grad_inputs(W1b, c, d, check_finite)
    for a, name in ((m, "m"), (v, "v")):
        check_array(a, name, np.float32, shape=W1b.shape)
    consts = _adam_constants(lr, beta1, beta2, eps, step)
    B, n_hid = d.shape
    if active is None:
        act = np.ones((B, g.n_pos), np.uint8)
    else:
        if isinstance(active, np.ndarray) and active.dtype == np.bool_:
            active = active.view(np.uint8)
        act = check_array(active, "active", np.uint8, shape=(B, g.n_pos))
    check_disjoint({"W1b": W1b, "m": m, "v": v}, {"c": c, "d": d, "active": act})
    back = np.empty((B, g.n_conv), np.float32)
    total = np.empty(g.n_conv, np.float32)
    d_rows = aligned_zeros((B + 2, _convsnn_w1.row_stride(n_hid)))
    d_rows[:B, :n_hid] = d
    n_bad = _convsnn_w1.w1_adam_into(W1b, m, v, c, d_blocks, d_rows, act, back, total,
                                     *consts, _threads(n_threads))
    _raise_if_nonfinite_grad(n_bad, adam=True)
    return back, total


def w1_sgd_step(W1b, c, d, *, rate, decay=1.0, n_threads=None, check_finite=True):
    """Gradient of W1 and the step ``W1 = (W1 - rate * g) * decay`` in one pass, in place.

    ``g = c.T @ d`` in W1's blocked layout, summed per row only over the samples whose entry
    of ``c`` is nonzero; each product and sum is rounded to float32 on its own (the order
    of NumPy's ``(W1 - np.float32(rate) * g) * np.float32(decay)``). Arguments as in
    :func:`w1_adam_step`.
    """
    from . import _convsnn_w1
    d_blocks = _check_w1_grad_inputs(W1b, c, d, check_finite)
    check_disjoint({"W1b": W1b}, {"c": c, "d": d})
    rate = _check_float(rate, "rate")
    decay = _check_float(decay, "decay")
    _raise_if_nonfinite_grad(_convsnn_w1.w1_sgd_into(W1b, c, d_blocks, rate, decay,
                                                      _threads(n_threads)), adam=False)


def _check_rates(x, conv_w, g, check_finite=True):
    check_array(x, "x", np.float32, shape=(None, g.n_pix), finite=check_finite)
    check_array(conv_w, "conv_w", np.float32, contiguous=False, finite=True)
    if conv_w.size != g.channels * g.n_taps:
        raise ValueError(f"conv_w must have {g.channels * g.n_taps} elements "
                         f"{g.param_shapes['conv_w']}, got {conv_w.shape}")
    # taps x channels: the channels of one tap are contiguous (vectors of 8)
    return np.ascontiguousarray(conv_w.reshape(g.channels, g.n_taps).T)


def conv_rate_backward(x, conv_w, conv_b, back, total, *, scale, center, slope,
                       n_threads=None, check_finite=True, geometry=None):
    """Gradients ``(conv_w (C, 1, k, k), conv_b (C,))`` of the surrogate conv layer.

    The layer is ``r = phi(a)``, ``a = conv(x) + conv_b`` (the k*k taps added in (ky, kx)
    order, each product rounded first, then the bias), with ``phi'`` as
    :func:`snnfast.convsnn_numpy.surrogate`, and ``dL/dr = scale * back``.
    ``back`` may be zero where a position's k x k input patch is all zero (see
    :func:`w1_adam_step`'s ``active``), as long as ``total`` holds its full column sums:
    there ``a = conv_b``, which lets ``dL/dconv_b`` be formed from ``total`` (see ``ext/``
    for the order of every sum).

    Parameters
    ----------
    x : float32 (B, n_pix), finite (input spike rates).
    conv_w : float32, C*k*k elements in the order of (C, 1, k, k); conv_b : float32 (C,).
    back : float32 (B, n_conv); total : float32 (n_conv,); both finite.
    scale, center, slope : float
    n_threads : int or None
    check_finite : bool
        Scan ``x``, ``back`` and ``total`` for NaN and infinities (default). ``False`` skips
        these scans, for callers whose arrays are finite by construction or whose gradients
        are checked afterwards: non-finite input then gives non-finite gradients.
    geometry : Geometry or None
        The sizes (None: :data:`DEFAULT_GEOMETRY`).
    """
    from . import _conv_rates
    g = _geo(geometry)
    wt = _check_rates(x, conv_w, g, check_finite)
    check_array(conv_b, "conv_b", np.float32, shape=(g.channels,), finite=True)
    check_array(back, "back", np.float32, shape=(len(x), g.n_conv), finite=check_finite)
    check_array(total, "total", np.float32, shape=(g.n_conv,), finite=check_finite)
    scale = _check_float(scale, "scale")
    center = _check_float(center, "center")
    slope = _check_float(slope, "slope", 0.0)
    gw = np.empty((g.n_taps, g.channels), np.float32)
    gb = np.empty(g.channels, np.float32)
    _conv_rates.rate_backward_into(x, wt, conv_b, back, total, scale, center, slope, gw, gb,
                                   g.height, g.width, g.kernel, g.stride, _threads(n_threads))
    return np.ascontiguousarray(gw.T).reshape(g.param_shapes["conv_w"]), gb


def conv_patch_active(x, *, n_threads=None, check_finite=True, geometry=None):
    """uint8 ``(B, n_pos)``: 1 where the k x k input patch of a conv position has a nonzero.

    Elsewhere every channel's current at that position is its bias alone. ``x`` is float32
    ``(B, n_pix)``, finite (``check_finite=False`` skips that scan; NaN then counts as
    nonzero). ``geometry``: the sizes (None: :data:`DEFAULT_GEOMETRY`).
    """
    from . import _conv_rates
    g = _geo(geometry)
    check_array(x, "x", np.float32, shape=(None, g.n_pix), finite=check_finite)
    out = np.empty((len(x), g.n_pos), np.uint8)
    _conv_rates.patch_active_into(x, out, g.height, g.width, g.kernel, g.stride,
                                  _threads(n_threads))
    return out


def ema_step(avg, p, *, decay, n_threads=None, check_finite=True):
    """In place ``avg = avg*decay + (1-decay)*p`` (float32, same shape, C-contiguous).

    The bits of NumPy's ``avg *= f32(decay); avg += f32(1 - decay) * p``, in one pass.

    Parameters
    ----------
    avg : float32 array, C-contiguous, writeable; updated in place.
    p : float32 array of ``avg``'s shape, C-contiguous, finite, not sharing memory with
        ``avg``.
    decay : float in [0, 1]
    n_threads : int or None
    check_finite : bool
        Scan ``p`` for NaN and infinities before updating (default; ValueError, nothing
        changed). The scan reads ``p`` once more: a third to a half of the update's time
        (~0.18 ms single-threaded for W1's 2.4 M floats). ``False`` skips it, for callers
        whose ``p`` is finite by construction: a non-finite ``p`` then makes the matching
        entries of ``avg`` non-finite.
    """
    from . import _ema
    check_array(avg, "avg", np.float32)
    check_array(p, "p", np.float32, shape=avg.shape)
    check_disjoint({"avg": avg}, {"p": p})
    _check_float(decay, "decay", 0.0, 1.0)
    d = float(decay)            # 1 - d from the unrounded value, as NumPy's expression does
    nt = _threads(n_threads)
    if check_finite and not _ema.all_finite(p.reshape(-1), nt):
        raise ValueError("p contains NaN or infinite values")
    _ema.ema_into(avg.reshape(-1), p.reshape(-1), np.float32(d), np.float32(1.0 - d), nt)
