"""Training any network description: the :class:`SNN` estimator and its :class:`Trainer`.

>>> import snnfast
>>> from snnfast.network import Network
>>> net = Network.from_file("examples/fmnist-cnn.toml")
>>> model = snnfast.SNN(net, seed=0, epochs=10)               # or SNN("fmnist-cnn.toml")
>>> model.fit(X_train, y_train, X_val, y_val, verbose=True)
>>> model.evaluate(X_test, y_test)["accuracy"]
>>> model.save("cnn.h5")                                       # snnfast.network.load reads it

:class:`SNN` is the network with its weights (``fit``, ``predict``, ``evaluate``,
``save``/``load``, ``weights``) and its training step: a forward pass through the compiled
engine (:mod:`snnfast.engine`, recording every layer's spikes), the rate surrogate gradient
(:mod:`snnfast.train.surrogate`), Adam and an exponential moving average of the weights,
which is the model that is validated, selected and saved. The loop around it (epochs,
schedule, model selection, the position in the run, Ctrl-C, divergence checks) is the
:class:`~snnfast.train.loop.Trainer` that :class:`snnfast.ConvSNN` trains through too.
"""
import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._config import effective_n_threads
from .._utils import aligned_zeros, check_labels, is_real_number
from ..network import ConfigError, Network, read_description
from ..network.layers import Conv2d, Direct
from . import surrogate as sg
from .augment import shift_flip
from .loop import Trainer, TrainingError, update_average
from .loop import as_ids as _as_ids
from .options import LoopOptions

__all__ = ["SNN", "Trainer", "TrainingConfig", "TrainingError", "training_config"]

EVAL_EPOCH = 2 ** 32 - 1          # the noise key's epoch of evaluation (snnfast.engine's)


@dataclass(frozen=True)
class TrainingConfig(LoopOptions):
    """The options of a training run (the ``[training]`` table of a description file): the
    loop's (:class:`snnfast.train.options.LoopOptions`: seed, epochs, batch sizes, Adam, the
    schedule, augmentation, the weight average, the validation split) and the rate surrogate
    gradient's.

    Attributes
    ----------
    surr_center, surr_slope : float
        phi of every spiking layer (fast sigmoid, peak at ``center``, slope ``k``).
    surrogate : dict
        Per-layer overrides ``{layer name: {"center": c, "slope": k}}``.
    init_gain : float
        Weights start N(0, gain^2 2/fan_in) (Conv2d) or N(0, gain^2/fan_in) (Linear); biases 0.
    """
    surr_center: float = sg.DEFAULT_CENTER
    surr_slope: float = sg.DEFAULT_SLOPE
    surrogate: dict = field(default_factory=dict)
    init_gain: float = 1.0

    _where = "training: "

    def __post_init__(self):
        self._check_loop_options()
        for name in ("surr_slope", "init_gain"):
            if not getattr(self, name) > 0:
                raise ValueError(f"training: {name} must be > 0, got {getattr(self, name)!r}")
        _check_surrogate(self.surrogate)

    def check_network(self, network):
        """ValueError unless every layer of ``surrogate`` is a spiking layer of ``network``."""
        names = network.spiking_layers()
        for k in self.surrogate:
            if k not in names:
                raise ValueError(f"training: surrogate names {k!r}, not a LIF/IF layer of the "
                                 f"network (those are {', '.join(names)})")

    def surrogates(self, network):
        """The surrogate table of :func:`snnfast.train.surrogate.plan`: ``{name: {"center",
        "slope"}}`` for every spiking layer of ``network``, the run's own centre and slope
        where the ``surrogate`` option does not name the layer or the field."""
        own = {"center": self.surr_center, "slope": self.surr_slope}
        return {k: {**own, **self.surrogate.get(k, {})} for k in network.spiking_layers()}


def _check_surrogate(table):
    if not isinstance(table, dict):
        raise ValueError(f"training: surrogate must be a table {{layer = {{center, slope}}}}, "
                         f"got {table!r}")
    for k, v in table.items():
        if not isinstance(v, dict) or set(v) - {"center", "slope"}:
            raise ValueError(f"training: surrogate.{k} must be a table with center and/or "
                             f"slope, got {v!r}")
        for f, x in v.items():
            if not is_real_number(x) or not math.isfinite(x) or (f == "slope" and x <= 0):
                raise ValueError(f"training: surrogate.{k}.{f} must be a finite number"
                                 f"{' > 0' if f == 'slope' else ''}, got {x!r}")


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingConfig))


def training_config(table=None, **overrides):
    """A :class:`TrainingConfig` from a ``[training]`` table and overrides; ValueError (one
    line, naming the option) for an unknown or invalid one."""
    d = dict(table or {})
    d.update(overrides)
    bad = sorted(set(d) - set(TRAINING_FIELDS))
    if bad:
        raise ValueError(f"training: unknown option(s) {', '.join(map(repr, bad))} (options: "
                         f"{', '.join(TRAINING_FIELDS)})")
    return TrainingConfig(**d)


# ----------------------------------------------------------------------------- inputs
def _check_inputs(network, X, name="X"):
    """Validated C-contiguous inputs: uint8 images (N, C, H, W) for the Hybrid encoder,
    float32 frames (N, T, C, H, W) for Direct."""
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
    shape = network.input_shape
    if isinstance(network.encoder, Direct):
        want = (network.T,) + shape
        if X.ndim != 5 or X.shape[1:] != want:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, want))}) "
                             f"(event frames for the Direct encoder), got {X.shape}")
        if X.dtype.kind not in "biuf" or not np.isfinite(X).all():
            raise ValueError(f"{name} must hold finite real numbers")
        return np.ascontiguousarray(X, dtype=np.float32)
    if X.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 images (pixels 0..255) for the Hybrid encoder, "
                         f"got dtype {X.dtype}")
    P = int(np.prod(shape))
    if X.ndim == 2 and X.shape[1] == P or shape[0] == 1 and X.shape[1:] == shape[1:]:
        X = X.reshape((len(X),) + shape)
    if X.shape[1:] != shape:
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape))}) or "
                         f"(N, {P}), got {X.shape}")
    return np.ascontiguousarray(X)


# ----------------------------------------------------------------------------- the model
class SNN:
    """A spiking network description with its weights: train, predict, evaluate, save.

    Parameters
    ----------
    network : Network, or a path to a ``.toml``/``.json`` description
        A file's ``[training]`` table gives the default training options.
    weights : dict, optional
        ``{"<layer>.weight": array, ...}`` as :meth:`Network.param_shapes` lists (default:
        random, from ``seed``; see :class:`TrainingConfig`'s ``init_gain``).
    seed : int, optional
        Overrides the training options' ``seed``.
    n_threads : int, optional
        Threads of the kernels and of the backward pass (rule:
        :func:`snnfast.effective_n_threads`); no result depends on it.
    **options
        Any :class:`TrainingConfig` field (``epochs=10, lr=1e-3, ...``).

    Attributes
    ----------
    network : Network
    config : TrainingConfig
    weights : dict of float32 arrays (a copy: the weight average once training has made one)
    trainer : Trainer or None (after :meth:`fit`, or loaded from a checkpoint)
    history_ : list of per-epoch metrics dicts (the trainer's)

    Raises
    ------
    ConfigError, ValueError
        A description or an option that cannot run, naming the layer or option.
    """

    def __init__(self, network, weights=None, *, seed=None, n_threads=None, **options):
        table = {}
        if isinstance(network, (str, Path)):
            path = network
            d = read_description(path)
            network = Network.from_dict(d.get("network", d))
            table = d.get("training", {})
            if not isinstance(table, dict):
                raise ValueError(f"{path}: [training] must be a table, got {table!r}")
        if not isinstance(network, Network):
            raise TypeError(f"network must be a snnfast.network.Network or a description file, "
                            f"got {type(network).__name__}")
        if len(network.output_shape) != 1:
            raise ConfigError(f"network: the output must be a vector of class scores, got "
                              f"shape {network.output_shape}")
        if seed is not None:
            options["seed"] = seed
        self.network = network
        self.config = training_config(table, **options)
        self.config.check_network(network)
        effective_n_threads(n_threads)                 # validate early
        self.n_threads = n_threads
        self._w = self._init_weights() if weights is None else _checked_weights(network, weights)
        self._avg = None                               # the weight average, once made
        self.trainer = None                            # the loop (snnfast.train.loop)
        self._opt = None          # Adam's {"m": {...}, "v": {...}, "t": int}
        self._stages = self._rows = None               # the backward pass's plan, buffers
        self._compiled, self._version = (None, None), 0

    @property
    def n_classes(self):
        return int(self.network.output_shape[0])

    def _init_weights(self):
        rng = np.random.default_rng((self.config.seed, 0x5EED))
        g, out = self.config.init_gain, {}
        net = self.network
        for i, layer in enumerate(net):
            for k, shape in layer.param_shapes(net.input_shape_of(i)).items():
                if k == "bias":
                    out[f"{layer.name}.{k}"] = np.zeros(shape, np.float32)
                    continue
                fan_in = int(np.prod(shape[1:])) if isinstance(layer, Conv2d) else shape[0]
                std = g * math.sqrt((2.0 if isinstance(layer, Conv2d) else 1.0) / fan_in)
                out[f"{layer.name}.{k}"] = (rng.standard_normal(shape) * std).astype(np.float32)
        return out

    # ------------------------------------------------------------------ weights
    @property
    def weights(self):
        """The weights used for inference (the weight average once it exists), as copies."""
        return {k: v.copy() for k, v in self._infer_w().items()}

    def set_weights(self, weights):
        """Replace the weights (checked against the network); restarts the weight average."""
        self._w = _checked_weights(self.network, weights)
        self._avg = None
        self._changed()

    def _infer_w(self):
        return self._avg if self._avg is not None else self._w

    def _engine(self, raw=False):
        """The compiled engine (:class:`snnfast.engine.CompiledNetwork`) of the inference
        weights, or of the raw training weights with ``raw``; rebuilt after every change
        (:meth:`_changed`), since it lays the weights out once."""
        from ..engine import CompiledNetwork
        key = (raw, self._version)
        if self._compiled[0] != key:
            self._compiled = (key, CompiledNetwork(self.network,
                                                   self._w if raw else self._infer_w()))
        return self._compiled[1]

    def _changed(self):
        """Note that the weights changed (training updates them in place)."""
        self._version += 1

    # ------------------------------------------------------------------ inference
    def forward(self, X, sample_ids=None, *, record=False):
        """The engine's forward pass (:func:`snnfast.engine.forward`) of ``X`` with the
        inference weights and the evaluation noise key."""
        X = _check_inputs(self.network, X)
        ids = _as_ids(sample_ids, len(X))
        return self._engine().forward(X, seed=self.config.seed, epoch=EVAL_EPOCH,
                                      sample_ids=ids, n_threads=self.n_threads, record=record)

    def _batches(self, X, ids):
        bs = self.config.eval_batch_size
        eng = self._engine()
        for i in range(0, len(X), bs):
            yield i, eng.forward(X[i:i + bs], seed=self.config.seed, epoch=EVAL_EPOCH,
                                 sample_ids=ids[i:i + bs], n_threads=self.n_threads)

    def predict_scores(self, X, sample_ids=None):
        """Class scores (N, n_classes) float32 (the network's output)."""
        X = _check_inputs(self.network, X)
        ids = _as_ids(sample_ids, len(X))
        out = np.empty((len(X), self.n_classes), np.float32)
        for i, fw in self._batches(X, ids):
            out[i:i + len(fw["output"])] = fw["output"]
        return out

    def predict(self, X, sample_ids=None):
        """Predicted classes (N,) int64."""
        return self.predict_scores(X, sample_ids).argmax(axis=1)

    def evaluate(self, X, y, sample_ids=None):
        """``{"accuracy", "loss" (mean cross-entropy), "n", "rates": {layer: spikes per neuron
        per update}}`` on (X, y) (:func:`snnfast.evaluate.evaluate_network`)."""
        from ..evaluate import evaluate_network
        X = _check_inputs(self.network, X)
        y = check_labels(y, len(X), self.n_classes)
        ids = _as_ids(sample_ids, len(X))
        return evaluate_network(self.network, self._infer_w(), X, y,
                                self.config.eval_batch_size, self.n_threads,
                                seed=self.config.seed, sample_ids=ids)

    # ------------------------------------------------------------------ training
    def fit(self, X, y, X_val=None, y_val=None, *, epochs=None, sample_ids=None, val_ids=None,
            callback=None, verbose=False, restore_best=True):
        """Train (or continue training) up to ``epochs`` epochs in total.

        Parameters
        ----------
        X : uint8 images (N, C, H, W) (or (N, H, W) for C = 1, or (N, C*H*W)) for the Hybrid
            encoder; float32 frames (N, T, C, H, W) for Direct.
        y : int (N,), labels 0..n_classes-1
        X_val, y_val : optional validation set (model selection: the best validation accuracy)
        epochs : int, default ``config.epochs``
        sample_ids, val_ids : each sample's index in its data set (keys its input noise;
            default ``arange``)
        callback : callable(model, metrics) -> dict or None, after every epoch
        verbose : bool, a tqdm bar per epoch
        restore_best : bool, end with the best-validation weights (if a validation set)

        Ctrl-C or SIGTERM stops at the next batch boundary with a consistent state
        (``trainer.clean_stop_``, ``trainer.stop_signal_``) and raises KeyboardInterrupt;
        :meth:`save` with ``checkpoint=True`` then allows an exact resume (:meth:`load` +
        :meth:`fit`). Raises :class:`snnfast.convsnn.TrainingError` if training diverges.
        """
        if self.trainer is None:
            self.trainer = Trainer(self)
        self.trainer.fit(X, y, X_val, y_val, epochs=epochs, sample_ids=sample_ids,
                         val_ids=val_ids, callback=callback, verbose=verbose,
                         restore_best=restore_best)
        return self

    @property
    def history_(self):
        return [] if self.trainer is None else self.trainer.history

    @property
    def epoch_(self):
        return 0 if self.trainer is None else self.trainer.epoch

    @property
    def best_epoch_(self):
        """(epoch, validation accuracy) of the best-validation weights, or None."""
        return None if self.trainer is None else self.trainer.best_epoch

    @property
    def clean_stop_(self):
        """True after a Ctrl-C/SIGTERM stopped :meth:`fit` between batches (see there)."""
        return self.trainer is not None and self.trainer.clean_stop_

    @property
    def stop_signal_(self):
        return None if self.trainer is None else self.trainer.stop_signal_

    # ------------------------------------------------------------------ one training step
    def _train_step(self, X, y, ids, epoch, lr):
        """One optimisation step on a batch; returns (mean loss, #correct, the record)."""
        c = self.config
        if self._stages is None:
            self._stages = sg.plan(self.network, c.surrogates(self.network))
            self._rows = sg._Rows(self.n_threads)
        rec = self._engine(raw=True).forward(X, seed=c.seed, epoch=epoch, sample_ids=ids,
                                             n_threads=self.n_threads, record=True)
        fw = sg.train_forward(self.network, self._stages, self._w, rec, self._rows)
        loss, correct, dout = sg.cross_entropy_grad(rec["output"], y)
        if not math.isfinite(loss):
            return loss, correct, rec
        grads = sg.backward(self.network, self._stages, self._w, fw, dout, self._rows)
        self._adam(grads, lr)
        self.trainer.step += 1
        self._avg = update_average(self._avg, self._w, c, self.trainer.step, _kernels(),
                                   self.n_threads)
        self._changed()
        return loss, correct, rec

    def _adam(self, grads, lr):
        c, w = self.config, self._w
        if self._opt is None:
            # page-aligned, as the presets' (aligned_zeros: the kernels stream them)
            self._opt = {"m": {k: aligned_zeros(v.shape, v.dtype) for k, v in w.items()},
                         "v": {k: aligned_zeros(v.shape, v.dtype) for k, v in w.items()},
                         "t": 0}
        o = self._opt
        keys = list(w)
        # check_finite: a non-finite gradient (divergence) raises before any weight changes
        _kernels().adam_step_many([w[k] for k in keys],
                                  [np.ascontiguousarray(grads[k], np.float32) for k in keys],
                                  [o["m"][k] for k in keys], [o["v"][k] for k in keys],
                                  lr=lr, beta1=c.beta1, beta2=c.beta2, eps=c.eps,
                                  step=o["t"] + 1, n_threads=self.n_threads,
                                  check_finite=True)
        o["t"] += 1

    # what the training loop (snnfast.train.loop.Trainer) asks of its model
    def _fit_inputs(self, X, name):
        return _check_inputs(self.network, X, name)

    def _fit_context(self):
        return contextlib.nullcontext()

    @staticmethod
    def _augment(X, dy, dx, flip):
        return shift_flip(X, dy, dx, flip)

    @staticmethod
    def _rate_sums():
        return {"spikes": {}}

    @staticmethod
    def _add_rates(sums, rec):
        _add_spikes(sums["spikes"], rec)

    def _train_rates(self, sums, n):
        return _rates(self.network, sums["spikes"], n)

    def _snapshot(self):
        return self.weights

    def _restore_snapshot(self, weights):
        self.set_weights(weights)

    # ------------------------------------------------------------------ checkpoints
    def _training_state(self):
        """The training state for :func:`snnfast.network.save` (``{"attrs", "arrays"}``)."""
        t = self.trainer or Trainer(self)
        arrays = {}
        if self._avg is not None:                 # the file's weights are the average
            arrays.update({f"raw:{k}": v for k, v in self._w.items()})
        if self._opt is not None:
            for which in ("m", "v"):
                arrays.update({f"{which}:{k}": v for k, v in self._opt[which].items()})
        if t._best is not None:
            arrays.update({f"best:{k}": v for k, v in t._best["weights"].items()})
        attrs = {"config": self.config.to_dict(), "epoch": t.epoch, "step": t.step,
                 "history": t.history, "partial": t._partial,
                 "adam_t": None if self._opt is None else self._opt["t"],
                 "average": self._avg is not None,
                 "best": None if t._best is None else
                 {"val_acc": t._best["val_acc"], "epoch": t._best["epoch"]}}
        return {"attrs": attrs, "arrays": arrays}

    def _restore_training(self, state):
        """Continue from :meth:`_training_state` (read back by
        :func:`snnfast.network.load_checkpoint`)."""
        a, arr = state["attrs"], state["arrays"]
        if a.get("config") != self.config.to_dict():
            raise ValueError("the checkpoint's training options differ from the model's")

        def group(prefix, what):
            d = {k.split(":", 1)[1]: v for k, v in arr.items() if k.startswith(prefix + ":")}
            return _checked(self.network, d, what) if d or prefix != "raw" else None
        self.trainer = Trainer(self)
        best = a.get("best")
        self.trainer.restore(a.get("epoch"), a.get("step"), a.get("history"), a.get("partial"),
                             None if best is None else
                             dict(best, weights=group("best", "best-validation weights")))
        if a.get("average"):
            self._avg, self._w = self._w, group("raw", "raw weights")
        if a.get("adam_t") is not None:
            self._opt = {"m": group("m", "Adam m"), "v": group("v", "Adam v"),
                         "t": int(a["adam_t"])}
        self._changed()

    # ------------------------------------------------------------------ files
    def save(self, path, metadata=None, checkpoint=False):
        """Write the network and its inference weights (:func:`snnfast.network.save`, format
        ``network-1``; ``metadata`` gets the training options under ``"training"``). With
        ``checkpoint=True`` also the trainer's state (format ``network-2``), from which
        :meth:`load` + :meth:`fit` continue exactly as an uninterrupted run."""
        from ..network import save
        meta = dict(metadata or {})
        meta.setdefault("training", self.config.to_dict())
        meta.setdefault("history", self.history_)
        state = None
        if checkpoint:
            state = self._training_state()
        save(path, self.network, self._infer_w(), metadata=meta, state=state)

    @classmethod
    def load(cls, path, n_threads=None):
        """A model from a file of :meth:`save` (or any ``network-1`` file, whose metadata's
        ``"training"`` options are used if present); a checkpoint's trainer is restored."""
        from ..network import load_checkpoint
        net, weights, meta, state = load_checkpoint(path)
        opts = meta.get("training", {}) if isinstance(meta.get("training"), dict) else {}
        try:
            model = cls(net, weights, n_threads=n_threads, **opts)
            if state is not None:
                model._restore_training(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid model content ({exc})") from None
        model.metadata_ = meta
        return model

    def __repr__(self):
        return (f"SNN({self.network.name or 'network'!r}, {self.network.n_params()} weights, "
                f"seed={self.config.seed}, epochs_trained={self.epoch_})")


def _kernels():
    from .. import _convsnn_kernels as K
    return K


def _checked_weights(network, weights):
    from ..reference.forward import _check_weights
    return _check_weights(network, weights)


def _add_spikes(acc, fw):
    for k, v in fw["counts"].items():
        acc[k] = acc.get(k, 0) + int(v.sum())


def _rates(network, spikes, n):
    out = {"rate_input": spikes.get("input", 0) / (n * int(np.prod(network.input_shape))
                                                   * network.T)}
    for i, ly in enumerate(network):
        if ly.kind == "neuron":
            size = int(np.prod(network.shapes[i])) * len(ly.update_steps(network.T))
            out[f"rate_{ly.name}"] = spikes.get(ly.name, 0) / (n * size)
    return out


def _checked(network, arrays, what):
    try:
        return _checked_weights(network, arrays)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
