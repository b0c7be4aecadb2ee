"""The Conv-SNN model: presets, training (reference rule and rate surrogate gradient), HDF5 I/O.

Architecture (the documentation page "Neuron and network semantics" states it exactly; the
sizes are the preset description's, ``snnfast/network/presets/<name>.toml``)::

    uint8 image (H x W) -> rate/latency input spikes (T steps)
    -> conv C x k x k stride s -> LIF (C x OH x OW) -> FC1 -> LIF (hidden) -> FC2 (rates)

Presets
-------
Each preset is a file, ``snnfast/network/presets/<name>.toml``: its network description (the
forward fields below) and its ``[training]`` options; :data:`PRESETS` and :func:`make_config`
read them.

``seed``
    A reference Conv-SNN's algorithm as its code runs: untrained conv and ``b1``, cumulative
    FC1 drive x 0.1 on even steps, halving reset, rate "gradient" without any spike derivative,
    summed gradients, SGD lr 1e-2 (x0.95 every 5 epochs) with ``W *= 0.9999``, batch 64, 30
    epochs, reference initialisation. Differences: float32; fresh counter-based input noise
    per (epoch, sample) (the reference's re-seeded noise only with ``reseeded_noise=True``);
    the training accuracy is taken from the training forward pass itself (the reference runs
    a second forward pass just for it).
``default``
    Same architecture and forward contract values (LIF decay 0.9, threshold 0.8; conv hard
    reset; hidden subtract reset, updated on the odd steps t = 1, 3, ..., 9 from a windowed
    drive so that every conv spike reaches it once; r_h = n_h / 5), with all six parameter
    arrays trained by a rate-based surrogate gradient:

    * backward: each spiking layer is treated as r = phi(a), a = its mean input current per
      update (conv: ``a_c = conv(n_in / T) + b_c``, exact because the conv is linear;
      hidden: ``a_h = ih_sum / n_updates`` from the kernel), so ``dL/da = dL/dr * phi'(a)``;
      phi is a fast sigmoid ``0.5 (1 + k x / (1 + k|x|))``, ``x = a - 0.45``, ``k = 4``
      (peak slope 2 in the middle of the LIF's rate-vs-current transition, which runs from
      ~0.12 (conv) / ~0.2 (hidden) for a first spike to 0.8 for a spike every step; the
      tails keep silent neurons trainable). ``dc_h/dr_c = T / n_updates`` links the two layers.
    * mean cross-entropy; Adam (0.9, 0.999, 1e-8), batch 64, one-cycle schedule: linear
      warm-up over the first 3 % of the steps to lr 1.5e-3, cosine decay to 0;
    * an exponential moving average of the weights (decay 0.998, applied every 4 steps,
      with the usual short-memory ramp ``min(d, (1+t)/(10+t))`` at the start) is the model
      that is validated, tested and saved (training uses the raw weights);
    * fresh Bernoulli input noise for every (epoch, sample); random shifts of +-2 px (zero
      fill) per (seed, epoch, sample);
    * init: conv N(0, sqrt(2/fan_in)) (fan_in = k*k taps), W1 N(0, 1/sqrt(conv neurons)),
      W2 N(0, 1/sqrt(hidden neurons)), biases 0;
    * model selection on a validation split of 5 000 images held out of the 60 000
      (the best-validation weights are kept); the test set is only reported; 15 epochs.
``nir``
    The variant NIR expresses exactly: hard reset everywhere, hidden layer updated every step
    from that step's conv spikes, trained like ``default``.
"""
import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from . import convsnn_numpy as cnp
from ._config import effective_n_threads
from ._convsnn_kernels import Geometry
from ._utils import (_json_default, aligned_zeros, array_digest, atomic_h5, check_labels,
                     check_named_arrays, h5_format, is_real_number)
from .network import PRESET_NAMES, load_preset
from .train.loop import Trainer, TrainingError, update_average  # noqa: F401 (re-export)
from .train.loop import as_ids as _as_ids
from .train.options import LoopOptions
from .train.schedule import lr_at  # noqa: F401 (also this module's name)

__all__ = ["ConvSNN", "ConvSNNConfig", "PRESETS", "FORMAT_VERSION", "check_params", "check_lif"]

# convsnn-2: convsnn-1 plus the network description (attribute "network", JSON of
# Network.to_dict), which load checks against the config; convsnn-1 files still load
FORMAT_VERSION = "convsnn-2"
READ_FORMATS = ("convsnn-1", "convsnn-2")
EVAL_EPOCH = cnp.EVAL_EPOCH

# ConvSNN runs the architecture of the preset files (snnfast/network/presets/*.toml), whose
# layers it knows by these names; its sizes are read from the description (Geometry, which
# also checks that the tuned kernels implement it); the module-level sizes below are the
# default preset's, which all presets share.
_LAYERS = (("conv", "Conv2d"), ("conv_lif", "LIF"), ("flatten", "Flatten"), ("fc1", "Linear"),
           ("hidden", "LIF"), ("readout", "RateReadout"), ("fc2", "Linear"))
# canonical parameter name -> the description's "<layer>.<array>"
_PARAM_KEYS = {"conv_w": "conv.weight", "conv_b": "conv.bias", "W1": "fc1.weight",
               "b1": "fc1.bias", "W2": "fc2.weight", "b2": "fc2.bias"}
_NET = load_preset("default")[0]
GEOMETRY = Geometry.from_network(_NET)
PARAM_SHAPES = {k: _NET.param_shapes()[v] for k, v in _PARAM_KEYS.items()}
_IMAGE = GEOMETRY.image_shape                                   # (H, W)
N_IN = GEOMETRY.n_pix                                           # input pixels
N_CONV = GEOMETRY.n_conv                                        # conv neurons
N_HID, N_OUT = GEOMETRY.hidden, GEOMETRY.classes                # hidden neurons, classes
_CHOICES = {"reset_c": ("zero",), "reset_h": ("halve", "subtract", "zero"),
            "drive": ("cumulative", "window"), "rate_norm": ("T", "updates"),
            "trainer": ("reference", "surrogate"),
            "init": ("reference", "scaled"), "preset": PRESET_NAMES}


# Limits of a sane model. Weights: trained ConvSNN weights are O(1) (the LIF thresholds are
# 0.8 and a neuron sees at most T = 10 spikes per input per sample); a weight of 1e4 already
# fires a neuron from one spike thousands of times over, so a larger one is a damaged file
# (a flipped exponent bit gives values like 1e29), not a model.
MAX_ABS_WEIGHT = 1e4


def check_params(params, max_abs=MAX_ABS_WEIGHT, shapes=None):
    """Validate the six canonical parameter arrays; return float32 C-contiguous copies.

    Raises ``ValueError`` naming the array for a missing key, a wrong shape (``shapes``,
    default the presets' :data:`PARAM_SHAPES`; a model's: ``config.geometry.param_shapes``),
    NaN/inf or (unless ``max_abs`` is None) a magnitude above ``max_abs``
    (:data:`MAX_ABS_WEIGHT`).
    """
    return check_named_arrays(params, PARAM_SHAPES if shapes is None else shapes, "parameter",
                              max_abs)


def check_lif(beta, thr, name=""):
    """ValueError unless ``beta`` (a LIF decay) is in [0, 1) and ``thr`` (its threshold) > 0.

    A negative decay flips the membrane's sign every step, ``beta >= 1`` never forgets (and
    has no time constant ``dt / (1 - beta)``), and a threshold <= 0 fires without input.
    ``name`` is the layer's suffix in the config (``"_c"``, ``"_h"``) for the message.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta{name} (the LIF decay) must be in [0, 1), got {beta!r}")
    if not thr > 0:
        raise ValueError(f"thr{name} (the LIF threshold) must be > 0, got {thr!r}")


class _NotConvSNN(Exception):
    """Raised inside :meth:`ConvSNN.load` for a readable file of another format, or one whose
    arrays do not match their digests (its message is then the whole explanation)."""


# Each array of a model file carries the SHA-256 of its dtype, shape and bytes (attribute
# DIGEST_ATTR); the file attribute DIGESTS_ATTR says that it does, so that an array that
# lost its digest is refused too. Files written before digests existed have neither, and
# load unchecked (the format version "convsnn-1" is unchanged).
DIGEST_ATTR = "sha256"
DIGESTS_ATTR = "array_digests"


def _put(group, name, a):
    """Create the dataset ``name`` in ``group`` holding ``a``, with its digest."""
    group.create_dataset(name, data=a).attrs[DIGEST_ATTR] = array_digest(np.asarray(a))


def _get(dset, verify):
    """The array of ``dset``, checked against its digest if ``verify``."""
    a = np.array(dset)
    if verify:
        want = dset.attrs.get(DIGEST_ATTR)
        want = want.decode() if isinstance(want, bytes) else want
        if want is None:
            raise _NotConvSNN(f"array {dset.name} has no digest although the file records "
                              "one for every array: the file was altered")
        if array_digest(a) != want:
            raise _NotConvSNN(f"array {dset.name} does not match its SHA-256 digest: the "
                              "file is damaged (e.g. a flipped byte); it is not used")
    return a


def _check_state(st):
    """Validate the training state read from a checkpoint (see ``ConvSNN._read_state``), so
    that a damaged one is refused by ``load`` rather than failing in the middle of a run (the
    position in the run: :meth:`snnfast.train.loop.Trainer.restore`)."""
    if not isinstance(st["history"], list) or not isinstance(st["metrics"], dict):
        raise ValueError("history must be a JSON list and metrics a JSON object")
    if st["opt"] is not None:
        if st["opt"]["t"] < 0:
            raise ValueError(f"optimizer step t must be >= 0, got {st['opt']['t']}")
        for which in ("m", "v"):
            if set(st["opt"][which]) != set(PARAM_SHAPES):
                raise ValueError(f"optimizer state {which} holds {sorted(st['opt'][which])}")
            moments = _checked(lambda p: check_params(p, max_abs=None), st["opt"][which],
                               f"optimizer state {which}")
            if which == "v" and any((a < 0).any() for a in moments.values()):
                raise ValueError("optimizer state v (a mean of squares) has negative values")
            st["opt"][which] = moments
    if st["best"] is not None:
        st["best"]["params"] = _checked(check_params, st["best"]["params"],
                                        "best-validation weights")


def _check_network(stored, network):
    """ValueError unless a file's stored description (None: a convsnn-1 file) is the
    ``network`` its config runs."""
    if stored is None:
        return
    from .network import Network
    try:
        stored = Network.from_dict(stored)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"network description: {exc}") from None
    if stored != network:
        raise ValueError("the stored network description is not the one its config runs "
                         "(the file was altered)")


def _checked(fn, arg, what):
    try:
        return fn(arg)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class ConvSNNConfig(LoopOptions):
    """Every semantic field of the forward contract plus the training hyper-parameters: the
    loop's (:class:`snnfast.train.options.LoopOptions`) and the preset's rules."""
    preset: str = "default"
    # ---- forward (documentation: "Neuron and network semantics")
    T: int = 10
    n_det: int = 5
    beta_c: float = 0.9
    thr_c: float = 0.8
    reset_c: str = "zero"
    beta_h: float = 0.9
    thr_h: float = 0.8
    reset_h: str = "subtract"
    hidden_period: int = 2
    hidden_phase: int = 1
    drive: str = "window"
    drive_scale: float = 1.0
    rate_norm: str = "updates"
    reseeded_noise: bool = False
    # ---- training
    trainer: str = "surrogate"
    epochs: int = 15
    surr_center_c: float = 0.45
    surr_slope_c: float = 4.0
    surr_center_h: float = 0.45
    surr_slope_h: float = 4.0
    init: str = "scaled"
    conv_init_gain: float = 1.0
    w1_init_gain: float = 1.0
    b1_init: float = 0.0
    w2_init_gain: float = 1.0

    def __post_init__(self):
        self._check_loop_options()
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {choices}")
        for name, lo in (("T", 1), ("hidden_period", 1), ("n_det", 0)):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        # the kernels' own ranges: refused here, not at the first batch of a run
        for name in ("T", "n_det"):
            if getattr(self, name) > 10_000:
                raise ValueError(f"{name} must be <= 10000, got {getattr(self, name)!r}")
        if not 0 <= self.hidden_phase < self.hidden_period:
            raise ValueError("hidden_phase must be in [0, hidden_period)")
        if not self.update_steps:
            raise ValueError(f"the hidden layer is never updated: hidden_phase="
                             f"{self.hidden_phase} must be < T={self.T}")
        if not isinstance(self.reseeded_noise, (bool, np.bool_)):
            raise ValueError(f"reseeded_noise must be True or False, got {self.reseeded_noise!r}")
        if self.reseeded_noise and self.preset != "seed":
            raise ValueError("reseeded_noise reproduces the seed preset's reference code; it "
                             "applies to preset 'seed' only")
        self._check_floats()
        check_lif(self.beta_c, self.thr_c, "_c")
        check_lif(self.beta_h, self.thr_h, "_h")
        for name in ("surr_slope_c", "surr_slope_h"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def _check_floats(self):
        f32_max = float(np.finfo(np.float32).max)
        for f in dataclasses.fields(self):
            if f.type is not float and f.type != "float":
                continue
            val = getattr(self, f.name)
            if not is_real_number(val):
                raise ValueError(f"{f.name} must be a number, got {val!r}")
            # the kernels compute in float32: a larger value would become inf there
            if not math.isfinite(val) or abs(val) > f32_max:
                raise ValueError(f"{f.name} must be finite in float32, got {val!r}")

    @property
    def update_steps(self):
        return tuple(t for t in range(self.T) if t % self.hidden_period == self.hidden_phase)

    @property
    def geometry(self):
        """The sizes of the preset's network description (a :class:`Geometry`)."""
        return _preset_geometry(self.preset)

    @property
    def network(self):
        """The network description this config runs: its preset's, with the config's
        forward fields (encoder, both LIF layers, the read-out's normalisation)."""
        from .network import Network
        d = load_preset(self.preset)[0].to_dict()
        d["encoder"].update(T=self.T, n_det=self.n_det)
        fields = {"conv_lif": dict(decay=self.beta_c, threshold=self.thr_c, reset=self.reset_c),
                  "hidden": dict(decay=self.beta_h, threshold=self.thr_h, reset=self.reset_h,
                                 period=self.hidden_period, phase=self.hidden_phase,
                                 drive=self.drive, scale=self.drive_scale),
                  "readout": dict(norm={"T": "steps", "updates": "updates"}[self.rate_norm])}
        for layer in d["layers"]:
            layer.update(fields.get(layer["name"], {}))
        return Network.from_dict(d)


def _preset_geometry(name):
    """The :class:`Geometry` of a preset's description (checked against the tuned kernels'
    pattern: ValueError naming the layer otherwise)."""
    return _PRESET_GEOMETRY[name]


def _preset_fields(name):
    """Every :class:`ConvSNNConfig` field of a preset, read from its file
    (``snnfast/network/presets/<name>.toml``): the forward fields from the network
    description, the others from its ``[training]`` table."""
    net, training = load_preset(name)
    where = f"preset file {name}.toml"
    try:
        geometry = Geometry.from_network(net)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if tuple((ly.name, type(ly).__name__) for ly in net) != _LAYERS or \
            geometry != GEOMETRY or type(net.encoder).__name__ != "Hybrid":
        raise ValueError(f"{where}: ConvSNN runs only the architecture of the default preset")
    _PRESET_GEOMETRY[name] = geometry
    conv, hid = net["conv_lif"], net["hidden"]
    if (conv.period, conv.phase, conv.drive, conv.scale) != (1, 0, "window", 1.0):
        raise ValueError(f"{where}: ConvSNN updates the conv LIF every step from that step's "
                         f"input (period 1, phase 0, window drive, scale 1)")
    fields = dict(preset=net.name, T=net.encoder.T, n_det=net.encoder.n_det,
                  beta_c=conv.decay, thr_c=conv.threshold, reset_c=conv.reset,
                  beta_h=hid.decay, thr_h=hid.threshold, reset_h=hid.reset,
                  hidden_period=hid.period, hidden_phase=hid.phase, drive=hid.drive,
                  drive_scale=hid.scale,
                  rate_norm={"steps": "T", "updates": "updates"}[net["readout"].norm])
    names = {f.name for f in dataclasses.fields(ConvSNNConfig)}
    bad = sorted(set(training) - (names - set(fields)))
    if bad:
        raise ValueError(f"{where}: [training] has unknown option(s) {', '.join(bad)}")
    fields.update(training)
    missing = sorted(names - set(fields))
    if missing:
        raise ValueError(f"{where}: [training] misses option(s) {', '.join(missing)}")
    return fields


# every field of each preset, from the preset files (their one source), and their sizes
_PRESET_GEOMETRY = {}
PRESETS = {name: _preset_fields(name) for name in PRESET_NAMES}


def make_config(preset="default", **overrides):
    """Config of a preset with overrides (unknown names raise TypeError)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ConvSNNConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise TypeError(f"unknown ConvSNN option(s): {', '.join(bad)}")
    kw = dict(PRESETS[preset])
    kw.update(overrides)
    return ConvSNNConfig(**kw)


# ----------------------------------------------------------------------------- helpers
def hidden_forward_args(cfg):
    """The hidden layer's arguments of ``_convsnn_kernels.hidden_forward`` for a config: its
    LIF, its update steps and the FC1 drive, as the model runs them."""
    return dict(beta=cfg.beta_h, thr=cfg.thr_h, reset=cfg.reset_h, period=cfg.hidden_period,
                phase=cfg.hidden_phase, drive=cfg.drive, scale=cfg.drive_scale,
                incremental=cnp.fc1_incremental(cfg.drive, cfg.hidden_period))


def _kernels_module():
    """The compiled-kernel API, or None if it (or one of its extensions) is not importable."""
    try:
        from . import _convsnn_kernels as K
        # all compiled? (a partial build must not fail in the middle of training)
        from . import _adam, _conv_rates, _convsnn_conv, _convsnn_fc, _convsnn_w1, _ema  # noqa
    except ImportError:
        return None
    return K


def _as_images(X, name="X"):
    """Validate uint8 images (N, H, W) or (N, H*W); return a C-contiguous (N, H*W) view.

    (The sizes are the preset description's: ``_IMAGE`` and ``N_IN``.)
    """
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of uint8 images, got {type(X).__name__}")
    if X.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (pixels 0..255), got {X.dtype}")
    if X.ndim == 3 and X.shape[1:] == _IMAGE:
        X = X.reshape(len(X), N_IN)
    if X.ndim != 2 or X.shape[1] != N_IN:
        raise ValueError(f"{name} must have shape (N, {_IMAGE[0]}, {_IMAGE[1]}) or (N, {N_IN}), "
                         f"got {X.shape}")
    return np.ascontiguousarray(X)


def shift_images(X, dy, dx, image_shape=_IMAGE, flip=None):
    """Shift uint8 images (N, H*W) of ``image_shape`` (H, W) (default: the preset
    description's) by integer (dy, dx) per image, zero fill (no wrap):
    ``out[y, x] = X[y - dy, x - dx]`` (shifts of less than H rows and W columns), then mirror
    the images where ``flip`` (N,) is true, by the augmentation of every network
    (:func:`snnfast.train.augment.shift_flip`)."""
    from .train.augment import shift_flip
    H, W = image_shape
    X = np.ascontiguousarray(X, np.uint8)
    dy = np.ascontiguousarray(dy, np.int64)
    dx = np.ascontiguousarray(dx, np.int64)
    if X.ndim != 2 or X.shape[1] != H * W or dy.shape != (len(X),) or dx.shape != (len(X),):
        raise ValueError(f"shift_images needs X (N, {H * W}) and dy, dx of shape (N,)")
    if len(X) and (np.abs(dy).max() >= H or np.abs(dx).max() >= W):
        raise ValueError(f"shifts must be less than {H} rows and {W} columns")
    return shift_flip(X.reshape(-1, H, W), dy, dx, flip).reshape(len(X), H * W)


def _empty_counters(T):
    keys = ("input_spikes", "conv_spikes", "hidden_spikes", "conv_synaptic_events",
            "fc1_row_adds")
    c = {k: np.zeros(T, np.int64) for k in keys}
    c["n_samples"] = 0
    return c


def _mm(a, b, out):
    np.matmul(a, b, out=out)


class _Par:
    """A pool of ``n`` threads working through fixed slices of an index range.

    Used with single-threaded BLAS: each output element is produced by exactly one BLAS call
    on one fixed slice, so results do not depend on ``n`` (BLAS releases the GIL).
    """

    def __init__(self, n):
        self.n = n
        self._pool = None
        if n > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(n, thread_name_prefix="snnfast")

    def run(self, fn, size, chunk=256):
        # Fixed chunk sizes (independent of n): BLAS may pick another kernel, and another
        # summation order, for another shape.
        slices = [slice(i, min(i + chunk, size)) for i in range(0, size, chunk)]
        if self._pool is None or len(slices) == 1:
            for s in slices:
                fn(s)
            return
        for f in [self._pool.submit(fn, s) for s in slices]:
            f.result()


# ----------------------------------------------------------------------------- the model
class ConvSNN:
    """Convolutional spiking network (conv -> LIF -> FC -> LIF -> FC, the sizes of its preset's
    description), trained on rates.

    Parameters
    ----------
    preset : {"default", "seed", "nir"}
        See the module docstring.
    seed : int
        Fixes initialisation, shuffling, augmentation and the input spike noise.
    n_threads : int or None
        Threads for the kernels and BLAS (rule: :func:`snnfast.effective_n_threads`).
    backend : {"kernels", "numpy"}
        "kernels": compiled event-driven kernels (falls back to NumPy with a warning if they
        are not built); "numpy": the plain NumPy implementation (:mod:`snnfast.convsnn_numpy`).
    **overrides
        Any field of :class:`ConvSNNConfig` (e.g. ``epochs=5, lr=1e-3``).

    Attributes
    ----------
    config : ConvSNNConfig
    params : dict of float32 arrays in canonical layouts (a fresh dict; W1 built on demand)
    trainer : snnfast.train.loop.Trainer
        The training loop (shared with :class:`snnfast.SNN`) and the position in the run;
        ``epoch_``, ``step_``, ``history_``, ``best_epoch_``, ``clean_stop_`` and
        ``stop_signal_`` are its state under this model's names.
    history_ : list of per-epoch metric dicts
    counters_ : exact event counters accumulated over every forward pass
    """

    def __init__(self, preset="default", seed=0, n_threads=None, backend="kernels",
                 **overrides):
        self.config = make_config(preset, seed=seed, **overrides)
        effective_n_threads(n_threads)            # validate early
        self.n_threads = n_threads
        if backend not in ("kernels", "numpy"):
            raise ValueError(f"backend must be 'kernels' or 'numpy', got {backend!r}")
        self._K = _kernels_module() if backend == "kernels" else None
        if backend == "kernels" and self._K is None:
            import warnings
            warnings.warn("snnfast kernels are not built; ConvSNN uses the NumPy backend",
                          RuntimeWarning, stacklevel=2)
        self.backend = "kernels" if self._K is not None else "numpy"
        self._p = {}
        self._ema = None
        self._set_canonical(self._init_params())
        self._reset_training_state()
        self.counters_ = _empty_counters(self.config.T)

    # ------------------------------------------------------------------ parameters
    def _init_params(self):
        c = self.config
        rng = np.random.default_rng((c.seed, 0x5EED))
        S = c.geometry.param_shapes
        conv_fan_in = math.prod(S["conv_w"][1:])                   # k*k taps
        if c.init == "reference":
            # the reference's He-style sqrt(2 / (fan_in + fan_out)) of the FC layers
            conv_std = math.sqrt(2 / conv_fan_in)
            w1_std, w2_std = math.sqrt(2 / sum(S["W1"])), math.sqrt(2 / sum(S["W2"]))
            b1 = 0.0
        else:
            conv_std = c.conv_init_gain * math.sqrt(2 / conv_fan_in)
            w1_std = c.w1_init_gain / math.sqrt(S["W1"][0])
            w2_std = c.w2_init_gain / math.sqrt(S["W2"][0])
            b1 = c.b1_init
        f32 = np.float32
        return {"conv_w": (rng.standard_normal(S["conv_w"]) * conv_std).astype(f32),
                "conv_b": np.zeros(S["conv_b"], f32),
                "W1": (rng.standard_normal(S["W1"]) * w1_std).astype(f32),
                "b1": np.full(S["b1"], b1, f32),
                "W2": (rng.standard_normal(S["W2"]) * w2_std).astype(f32),
                "b2": np.zeros(S["b2"], f32)}

    def _set_canonical(self, params):
        for k, a in check_params(params).items():
            if k == "W1" and self._K is not None:
                self._p["W1b"] = self._K.to_blocked(a)
                self._p.pop("W1", None)
            else:
                self._p[k] = a

    def set_params(self, params):
        """Replace the parameters (canonical layouts, see :attr:`params`).

        Also restarts the weight average (if ``ema_decay``) from these weights.
        """
        self._set_canonical(params)
        self._ema = None

    @property
    def params(self):
        """Canonical float32 parameters: conv_w (C,1,k,k), conv_b, W1 (conv neurons, hidden),
        b1, W2, b2 (shapes: ``config.geometry.param_shapes``).

        A new dict of copies (training updates the model's own arrays in place); use
        :meth:`set_params` to change the model.
        """
        return self._canonical(self._infer_p())

    def _canonical(self, p):
        out = {k: v.copy() for k, v in p.items() if k != "W1b"}
        if "W1b" in p:
            out["W1"] = self._K.from_blocked(p["W1b"])
        return {k: out[k] for k in PARAM_SHAPES}

    def _infer_p(self):
        """Weights used for inference: the running average while it exists, else the raw ones."""
        return self._ema if self._ema is not None else self._p

    def _update_ema(self):
        if self.config.trainer == "surrogate":          # the reference rule has no average
            self._ema = update_average(self._ema, self._p, self.config, self.step_, self._K,
                                       self.n_threads)

    def _reset_training_state(self):
        # the loop and its position (epoch, step, history, best weights, mid-epoch position)
        self.trainer = Trainer(self)
        self._opt = None           # {"m": {...}, "v": {...}} in the backend's layouts

    # ------------------------------------------------------------------ forward
    def _blas(self):
        """BLAS runs single-threaded inside the model; the large W1 products are split over
        ``n_threads`` Python threads by output columns instead (see :class:`_Par`), so
        every result is bit-identical for any thread count."""
        return cnp._serial_blas()

    def _par(self):
        n = effective_n_threads(self.n_threads)
        if getattr(self, "_pool", None) is None or self._pool.n != n:
            self._pool = _Par(n)
        return self._pool

    def _forward(self, X, ids, epoch, record=False, record_input=False, p=None, train=False):
        """Forward of validated (B, H*W) uint8 images; a dict like convsnn_numpy.forward's.

        With ``train`` the dict also holds what the backward pass needs (``r_in``, ``r_c``,
        ``a_h``); the NumPy backend always returns them.
        """
        c = self.config
        p = self._p if p is None else p
        if self._K is None:
            par = self._par()

            def matmul(A, W):
                out = np.empty((A.shape[0], W.shape[1]), np.float32)
                par.run(lambda s: _mm(A, W[:, s], out[:, s]), W.shape[1])
                return out
            fw = cnp.forward(p, X, ids, epoch, c, record=record, matmul=matmul)
            self._add_counters(fw["counts"])
            return fw
        K = self._K
        seed, key_ids = c.seed, ids
        if c.reseeded_noise:
            seed, epoch, key_ids = 42, 0, np.arange(len(X), dtype=np.int64)
        conv = K.conv_forward(X, key_ids, seed, int(epoch), p["conv_w"], p["conv_b"],
                              T=c.T, n_det=c.n_det, beta=c.beta_c, thr=c.thr_c, reset=c.reset_c,
                              n_threads=self.n_threads, record_input=record_input or record,
                              geometry=c.geometry)
        hid = K.hidden_forward(conv, p["W1b"], p["b1"], n_threads=self.n_threads,
                               record=record, **hidden_forward_args(c))
        U = hid.n_updates
        T = np.float32(c.T)
        r_h = hid.n_h.astype(np.float32) / np.float32(c.T if c.rate_norm == "T" else U)
        fw = dict(logits=r_h @ p["W2"] + p["b2"], r_h=r_h, n_in=conv.n_in, n_c=conv.n_c,
                  n_h=hid.n_h, n_updates=U, conv=conv)
        if train:
            # only the backward pass reads these (r_c only the reference rule's): evaluation
            # need not build them
            fw.update(r_in=conv.n_in.astype(np.float32) / T,
                      a_h=hid.ih_sum / np.float32(max(U, 1)))
            if c.trainer == "reference":
                fw["r_c"] = conv.n_c.astype(np.float32) / T
        fw["counts"] = dict(input_spikes=conv.in_count,
                            conv_spikes=conv.spk_cnt.astype(np.int64),
                            hidden_spikes=hid.hid_count, conv_synaptic_events=conv.conv_events,
                            fc1_row_adds=hid.fc1_adds)
        if record:
            fw.update(s_in=conv.input_spikes, z_c=conv.conv_spikes(), z_h=hid.spikes)
        self._add_counters(fw["counts"])
        return fw

    def _c_h(self, fw):
        """Conv spikes that reached the hidden layer, per update (B, conv neurons) float32."""
        if "c_h" in fw:
            return fw["c_h"]
        c = self.config
        steps = c.update_steps
        U = max(len(steps), 1)
        if c.drive == "window" and steps and steps[-1] == c.T - 1:
            return fw["n_c"].astype(np.float32) / np.float32(U)     # every conv spike arrives
        z = fw["conv"].conv_spikes().astype(np.float32)               # (B, T, conv neurons)
        cs = np.cumsum(z, axis=1)
        if c.drive == "window":
            return cs[:, steps[-1]] / np.float32(U) if steps else cs[:, 0] * 0
        return cs[:, list(steps)].sum(axis=1) / np.float32(U)

    def _add_counters(self, counts):
        for k, v in counts.items():
            self.counters_[k] += v.sum(axis=0, dtype=np.int64)
        self.counters_["n_samples"] += len(counts["input_spikes"])

    def forward_logits(self, images, sample_ids, epoch_key=EVAL_EPOCH):
        """Logits (B, classes) float32 of uint8 images with the given noise keys."""
        X = _as_images(images, "images")
        ids = _as_ids(sample_ids, len(X))
        epoch_key = int(epoch_key)
        if not 0 <= epoch_key < 2**64:
            raise ValueError("epoch_key must be in [0, 2^64)")
        with self._blas():
            return self._forward(X, ids, epoch_key, p=self._infer_p())["logits"]

    def _batches(self, X, ids, fn):
        bs = self.config.eval_batch_size
        with self._blas():
            for i in range(0, len(X), bs):
                fn(i, self._forward(X[i:i + bs], ids[i:i + bs], EVAL_EPOCH, p=self._infer_p()))

    def predict(self, X, sample_ids=None):
        """Predicted classes (N,) int64 (deterministic evaluation noise)."""
        X = _as_images(X)
        ids = _as_ids(sample_ids, len(X))
        out = np.empty(len(X), np.int64)

        def put(i, fw):
            out[i:i + len(fw["logits"])] = fw["logits"].argmax(axis=1)
        self._batches(X, ids, put)
        return out

    def evaluate(self, X, y, sample_ids=None):
        """Accuracy, mean cross-entropy and spike rates on (X, y).

        Rates: ``rate_input`` = input spikes per pixel per step, ``rate_conv`` = conv spikes
        per neuron per step, ``rate_hidden`` = hidden spikes per neuron per hidden update.
        """
        X = _as_images(X)
        y = check_labels(y, len(X), N_OUT)
        ids = _as_ids(sample_ids, len(X))
        acc = {"correct": 0, "loss": 0.0, "in": 0.0, "c": 0.0, "h": 0.0}

        def add(i, fw):
            yb = y[i:i + len(fw["logits"])]
            loss, _ = cnp.softmax_xent(fw["logits"], yb)
            acc["correct"] += int((fw["logits"].argmax(axis=1) == yb).sum())
            acc["loss"] += loss * len(yb)
            self._add_rates(acc, fw)
        self._batches(X, ids, add)
        n = max(len(X), 1)
        return {"accuracy": acc["correct"] / n, "loss": acc["loss"] / n, "n": len(X),
                **self._rates(acc, n)}

    def _add_rates(self, acc, fw):
        # the per-step counters hold the same totals as n_in, n_c, n_h in B x T elements
        # instead of B x 4 112
        cnt = fw["counts"]
        acc["in"] += float(cnt["input_spikes"].sum())
        acc["c"] += float(cnt["conv_spikes"].sum())
        acc["h"] += float(cnt["hidden_spikes"].sum())

    def _rates(self, acc, n):
        c, g = self.config, self.config.geometry
        U = max(len(c.update_steps), 1)
        return {"rate_input": acc["in"] / (n * g.n_pix * c.T),
                "rate_conv": acc["c"] / (n * g.n_conv * c.T),
                "rate_hidden": acc["h"] / (n * g.hidden * U)}

    @property
    def network(self):
        """The network description of this model (:attr:`ConvSNNConfig.network`)."""
        return self.config.network

    @property
    def weights(self):
        """The parameters under the description's names (``"conv.weight"``, ...), as
        :attr:`params` (copies)."""
        return {_PARAM_KEYS[k]: v for k, v in self.params.items()}

    def trace_network(self, images, sample_ids=None):
        """:meth:`trace` in the record format of ``snnfast.engine`` (keys of the
        description's layers), for the consumers that read any network: the input spikes
        ``input`` (N, T, C, H, W), ``spikes`` per spiking layer, the exact ``counts`` per
        synaptic layer (operations) and spiking layer (spikes), per sample and step, the
        read-out ``rates`` and the ``dense_macs`` per sample of the layers after it."""
        tr = self.trace(images, sample_ids)
        c, g, cnt = self.config, self.config.geometry, tr["counters"]
        N = len(tr["logits"])
        norm = c.T if c.rate_norm == "T" else max(len(c.update_steps), 1)
        rates = tr["hidden"].sum(axis=1, dtype=np.int32).astype(np.float32) / np.float32(norm)
        return {"input": tr["input"].reshape((N, c.T, 1) + g.image_shape),
                "spikes": {"conv_lif": tr["conv"].reshape((N, c.T) + g.conv_shape),
                           "hidden": tr["hidden"]},
                "counts": {"conv": cnt["conv_synaptic_events"], "fc1": cnt["fc1_row_adds"],
                           "conv_lif": cnt["conv_spikes"], "hidden": cnt["hidden_spikes"]},
                "rates": rates, "dense_macs": {"fc2": g.hidden * g.classes},
                "logits": tr["logits"]}

    def trace(self, images, sample_ids=None):
        """Spike trains of a batch (deterministic evaluation noise).

        Returns
        -------
        dict with uint8 'input' (N,T,H*W), 'conv' (N,T,conv neurons), 'hidden' (N,T,hidden)
        (zero on non-update steps), bool 'hidden_update' (T,), float32 'logits' (N,classes)
        and 'counters'
        (per-sample-per-step int64 (N,T) arrays of the kernels' exact counters).
        """
        X = _as_images(images, "images")
        ids = _as_ids(sample_ids, len(X))
        c = self.config
        with self._blas():
            fw = self._forward(X, ids, EVAL_EPOCH, record=True, p=self._infer_p())
        upd = np.zeros(c.T, bool)
        upd[list(c.update_steps)] = True
        return {"input": np.ascontiguousarray(fw["s_in"], np.uint8),
                "conv": np.ascontiguousarray(fw["z_c"], np.uint8),
                "hidden": np.ascontiguousarray(fw["z_h"], np.uint8), "hidden_update": upd,
                "logits": fw["logits"], "counters": fw["counts"]}

    # ------------------------------------------------------------------ training
    def _w1_numpy_ops(self):
        """(outer, step) of the NumPy backend: ``outer(c, d)`` = dL/dW1 = c.T @ d and
        ``step(c, d)`` = (c.T @ d, d @ W1.T).

        Each output element is computed by one single-threaded BLAS call whatever the thread
        count; the threads share the output columns.
        """
        par = self._par()
        W1 = self._p["W1"]

        def outer(c, d):
            out = np.empty((c.shape[1], d.shape[1]), np.float32)
            cT = np.ascontiguousarray(c.T)
            par.run(lambda s: _mm(cT, d[:, s], out[:, s]), d.shape[1])
            return out

        def back(d):
            out = np.empty((len(d), W1.shape[0]), np.float32)
            par.run(lambda s: out.__setitem__((slice(None), s), d @ W1[s].T), W1.shape[0])
            return out

        def step(c, d):
            return outer(c, d), back(d), None
        return outer, step

    def _w1_kernel_ops(self, lr, r_in):
        """(outer, step) of the kernel backend: W1's gradient and optimiser step in one pass.

        ``outer(r_c, e_h)`` applies the reference's SGD step, ``step(c_h, d)`` the Adam step
        and returns d @ W1.T with the old weights, computed only where the input patch of
        ``r_in`` is nonzero, and its column sums; both return None for the gradient.
        """
        K, c, W1b = self._K, self.config, self._p["W1b"]

        # The arrays passed below are the model's own: spike rates (finite by construction)
        # and gradients, whose non-finite values the W1 step and the optimiser step of the
        # other parameters still catch. So the NaN scans of the kernels' inputs are skipped
        # (~0.3 ms of a 13 ms default step).
        def outer(r_c, e_h):
            K.w1_sgd_step(W1b, r_c, e_h, rate=cnp.reference_w1_rate(lr),
                          decay=cnp.REFERENCE_DECAY, n_threads=self.n_threads,
                          check_finite=False)

        def step(c_h, d):
            o = self._opt_state()
            active = K.conv_patch_active(r_in, n_threads=self.n_threads, check_finite=False,
                                         geometry=c.geometry)
            back, total = K.w1_adam_step(W1b, o["m"]["W1b"], o["v"]["W1b"], c_h, d, lr=lr,
                                         beta1=c.beta1, beta2=c.beta2, eps=c.eps,
                                         step=o["t"] + 1, active=active,
                                         n_threads=self.n_threads, check_finite=False,
                                         geometry=c.geometry)
            return None, back, total
        return outer, step

    def _conv_grad(self):
        """The kernels' :func:`convsnn_numpy.conv_backward`, or None for the NumPy backend."""
        if self._K is None:
            return None
        K, nt, geo = self._K, self.n_threads, self.config.geometry
        return (lambda x, w, b, back, total, scale, center, slope: K.conv_rate_backward(
            x, w, b, back, total, scale=scale, center=center, slope=slope, n_threads=nt,
            check_finite=False, geometry=geo))

    def _train_step(self, X, y, ids, epoch, lr):
        """One optimisation step on a batch; returns (mean loss, #correct, forward dict)."""
        c = self.config
        fw = self._forward(X, ids, epoch, train=True)
        loss, prob = cnp.softmax_xent(fw["logits"], y)
        correct = int((fw["logits"].argmax(axis=1) == y).sum())
        outer, step = (self._w1_numpy_ops() if self._K is None
                       else self._w1_kernel_ops(lr, fw["r_in"]))
        if c.trainer == "reference":
            g = cnp.reference_backward(self._p, fw, prob, y, w1_outer=outer)
            cnp.reference_update(self._p, g, lr)
        else:
            dl = prob.copy()
            dl[np.arange(len(y)), y] -= 1
            dl *= np.float32(1.0 / len(y))
            fw["c_h"] = self._c_h(fw)
            g = cnp.surrogate_backward(self._p, fw, dl, c, w1_step=step,
                                       conv_grad=self._conv_grad())
            self._adam(g, lr)
        self.trainer.step += 1
        self._update_ema()
        return loss, correct, fw

    def _opt_state(self):
        """Adam's state {"m", "v": arrays in the backend's layouts, "t": steps taken}."""
        if self._opt is None:
            self._opt = {w: {k: aligned_zeros(v.shape, v.dtype) for k, v in self._p.items()}
                         for w in ("m", "v")}
            self._opt["t"] = 0
        return self._opt

    def _adam(self, grads, lr):
        c = self.config
        o = self._opt_state()
        o["t"] += 1
        if self._K is not None:
            # W1 was stepped in the backward pass; the rest are small arrays for which an
            # OpenMP region would cost more than the update
            keys = list(grads)
            self._K.adam_step_many([self._p[k] for k in keys],
                                   [np.ascontiguousarray(grads[k]) for k in keys],
                                   [o["m"][k] for k in keys], [o["v"][k] for k in keys],
                                   lr=lr, beta1=c.beta1, beta2=c.beta2, eps=c.eps, step=o["t"],
                                   n_threads=1)
            return
        opt = cnp.Adam({}, c.beta1, c.beta2, c.eps)
        opt.m, opt.v, opt.t = o["m"], o["v"], o["t"] - 1
        opt.step(self._p, grads, lr)

    def fit(self, X, y, X_val=None, y_val=None, epochs=None, callback=None, sample_ids=None,
            val_ids=None, verbose=False, restore_best=True):
        """Train (or continue training) for ``epochs`` epochs in total.

        Parameters
        ----------
        X : uint8 (N, H, W) or (N, H*W) (the description's input); y : int (N,)
        X_val, y_val : optional validation set (model selection: best validation accuracy)
        epochs : int, total epochs (default ``config.epochs``); training continues from
            ``self.epoch_`` (so a loaded checkpoint resumes where it stopped)
        callback : callable(model, metrics) -> dict or None, after every epoch (extra
            metrics to record, e.g. a test accuracy; a checkpoint writer)
        sample_ids, val_ids : index of each image in its data set (keys the input noise;
            default ``arange``)
        verbose : bool, a tqdm bar per epoch
        restore_best : bool, end with the best-validation weights (if a validation set)

        Ctrl-C or SIGTERM stops at the next batch boundary with a consistent state
        (``clean_stop_`` True, the signal in ``stop_signal_``) and raises KeyboardInterrupt;
        :meth:`save` with ``checkpoint=True`` then allows an exact resume. A second signal
        raises KeyboardInterrupt at once (``clean_stop_`` False: the state may be mid-update).
        Training accuracy/loss come from the training forward passes themselves (on the
        augmented images, with the weights of that moment), not from a second pass.

        Raises :class:`TrainingError` (a ValueError) if training diverges: a non-finite loss,
        gradient or weight, typically from too high a learning rate.
        """
        return self.trainer.fit(X, y, X_val, y_val, epochs=epochs, sample_ids=sample_ids,
                                val_ids=val_ids, callback=callback, verbose=verbose,
                                restore_best=restore_best)

    # what the training loop (snnfast.train.loop.Trainer) asks of its model
    @property
    def n_classes(self):
        return self.config.geometry.classes

    def _fit_inputs(self, X, name):
        return _as_images(X, name)

    def _fit_context(self):
        return self._blas()

    def _augment(self, X, dy, dx, flip):
        return shift_images(X, dy, dx, self.config.geometry.image_shape, flip)

    @staticmethod
    def _rate_sums():
        return {"in": 0.0, "c": 0.0, "h": 0.0}

    def _train_rates(self, sums, n):
        return self._rates(sums, n)

    def _snapshot(self):
        return self.params

    def _restore_snapshot(self, params):
        self.set_params(params)

    # the loop's state, under the model's historic names
    @property
    def epoch_(self):
        """Epochs completed."""
        return self.trainer.epoch

    @property
    def step_(self):
        """Optimiser steps taken."""
        return self.trainer.step

    @property
    def history_(self):
        """Per-epoch metrics dicts."""
        return self.trainer.history

    @property
    def best_epoch_(self):
        """(epoch, validation accuracy) of the best-validation weights, or None."""
        return self.trainer.best_epoch

    @property
    def clean_stop_(self):
        """True after a Ctrl-C/SIGTERM stopped :meth:`fit` between batches (see there)."""
        return self.trainer.clean_stop_

    @property
    def stop_signal_(self):
        return self.trainer.stop_signal_

    # ------------------------------------------------------------------ persistence
    def save(self, path, metrics=None, checkpoint=False):
        """Write an HDF5 file atomically.

        Always: canonical weights (group ``params``), the full config (attribute ``config``,
        JSON), the network description (attribute ``network``, JSON of
        :meth:`snnfast.network.Network.to_dict`), ``preset``, ``snnfast_format =
        "convsnn-2"``, ``metrics`` and ``history`` (JSON). With ``checkpoint=True`` also the optimiser state (moments in canonical
        layout), step/epoch counters, the best-validation weights and a mid-epoch position,
        so that :meth:`load` + :meth:`fit` continue exactly where training stopped.
        Every array carries the SHA-256 digest of its bytes (attribute ``sha256``), which
        :meth:`load` checks.

        Raises
        ------
        ValueError
            If ``path`` is a directory, a special file or a symbolic link (never replaced).
        OSError
            One line naming ``path`` if the write fails (disk full); an existing ``path``
            is then untouched and no temporary file remains.
        """
        from pathlib import Path
        from . import __version__
        if Path(path).is_dir():
            raise ValueError(f"{path} is a directory, not a file name")
        # NumPy scalars in metrics are common (accuracies computed with NumPy)
        metrics = json.dumps(metrics or {}, default=_json_default)
        with atomic_h5(path) as f:
            f.attrs["snnfast_format"] = FORMAT_VERSION
            f.attrs["snnfast_version"] = __version__
            f.attrs["kind"] = "checkpoint" if checkpoint else "model"
            f.attrs["preset"] = self.config.preset
            f.attrs["config"] = json.dumps(self.config.to_dict())
            f.attrs["network"] = json.dumps(self.network.to_dict())
            f.attrs["metrics"] = metrics
            f.attrs["history"] = json.dumps(self.history_)
            f.attrs["epoch"] = self.epoch_
            f.attrs["step"] = self.step_
            f.attrs[DIGESTS_ATTR] = "sha256 of dtype, shape and bytes, per array"
            g = f.create_group("params")
            for k, v in self.params.items():
                _put(g, k, v)
            if checkpoint:
                self._save_state(f)

    def _save_state(self, f):
        if self._ema is not None:           # "params" holds the average; keep the raw ones too
            g = f.create_group("train_params")
            for k, v in self._canonical(self._p).items():
                _put(g, k, v)
        if self._opt is not None:
            o = f.create_group("optimizer")
            o.attrs["t"] = self._opt["t"]
            for which in ("m", "v"):
                grp = o.create_group(which)
                for k, v in self._opt[which].items():
                    if k == "W1b":
                        k, v = "W1", self._K.from_blocked(v)
                    _put(grp, k, v)
        best = self.trainer._best
        if best is not None:
            b = f.create_group("best")
            b.attrs["val_acc"] = best["val_acc"]
            b.attrs["epoch"] = best["epoch"]
            for k, v in best["weights"].items():
                _put(b, k, v)
        f.attrs["partial"] = json.dumps(self.trainer._partial)

    @classmethod
    def load(cls, path, n_threads=None, backend="kernels"):
        """Read a file written by :meth:`save` (model or checkpoint).

        Raises
        ------
        ValueError
            naming the file, if it is missing, not HDF5, truncated/corrupt, not a
            ``convsnn-1`` or ``convsnn-2`` file, if its network description (``convsnn-2``)
            is not the one its config runs, if an array does not match its digest (files written before
            digests existed have none and are read unchecked), or if its content is invalid
            (the configuration, a weight beyond :data:`MAX_ABS_WEIGHT`, ...).
        """
        import h5py
        from pathlib import Path
        path = Path(path)
        # a bad thread count or environment variable is the caller's error, not the file's
        effective_n_threads(n_threads)
        if not path.is_file():
            raise ValueError(f"{path}: no such model file")
        try:
            with h5py.File(path, "r") as f:
                fmt = h5_format(f)
                if fmt not in READ_FORMATS:
                    raise _NotConvSNN(f"{path}: not an snnfast ConvSNN file "
                                      f"(snnfast_format={fmt!r}, expected one of "
                                      f"{', '.join(READ_FORMATS)})")
                cfg = json.loads(f.attrs["config"])
                # convsnn-1 files predate the stored description: their config is all
                network = json.loads(f.attrs["network"]) if fmt != "convsnn-1" else None
                if not isinstance(cfg, dict):
                    raise ValueError(f"config is a JSON {type(cfg).__name__}, not an object")
                verify = DIGESTS_ATTR in f.attrs
                params = {k: _get(f["params"][k], verify) for k in PARAM_SHAPES}
                state = cls._read_state(f, verify)
                if "train_params" in f:
                    state["ema"] = params
                    params = {k: _get(f["train_params"][k], verify) for k in PARAM_SHAPES}
        except _NotConvSNN as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        except Exception as exc:      # h5py raises OSError/KeyError/... for damaged files
            raise ValueError(f"{path}: cannot read ConvSNN model ({type(exc).__name__}: {exc})") \
                from None
        preset = cfg.pop("preset", None)
        seed = cfg.pop("seed", 0)
        try:
            model = cls(preset=preset, seed=seed, n_threads=n_threads, backend=backend, **cfg)
            _check_network(network, model.network)
            model.set_params(params)
            _check_state(state)
            model._restore_state(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid ConvSNN content ({exc})") from None
        return model

    @staticmethod
    def _read_state(f, verify=False):
        st = {"ema": None, "history": json.loads(f.attrs.get("history", "[]")),
              "metrics": json.loads(f.attrs.get("metrics", "{}")),
              "epoch": int(f.attrs.get("epoch", 0)), "step": int(f.attrs.get("step", 0)),
              "partial": json.loads(f.attrs.get("partial", "null")), "opt": None, "best": None}
        if "optimizer" in f:
            o = f["optimizer"]
            st["opt"] = {"t": int(o.attrs["t"]),
                         "m": {k: _get(o["m"][k], verify) for k in o["m"]},
                         "v": {k: _get(o["v"][k], verify) for k in o["v"]}}
        if "best" in f:
            b = f["best"]
            st["best"] = {"val_acc": float(b.attrs["val_acc"]), "epoch": int(b.attrs["epoch"]),
                          "params": {k: _get(b[k], verify) for k in PARAM_SHAPES}}
        return st

    def _restore_state(self, st):
        if st["ema"] is not None:
            raw = self._p
            self._p = {}
            self._set_canonical(st["ema"])
            self._ema, self._p = self._p, raw
        self.metrics_ = st["metrics"]
        best = st["best"]
        self.trainer.restore(st["epoch"], st["step"], st["history"], st["partial"],
                             None if best is None else
                             {"val_acc": best["val_acc"], "epoch": best["epoch"],
                              "weights": best["params"]})
        if st["opt"] is not None:
            o = st["opt"]
            for which in ("m", "v"):
                if "W1" in o[which] and self._K is not None:
                    o[which]["W1b"] = self._K.to_blocked(o[which].pop("W1"))
            self._opt = o

    def __repr__(self):
        return (f"ConvSNN(preset={self.config.preset!r}, seed={self.config.seed}, "
                f"backend={self.backend!r}, epochs_trained={self.epoch_})")
