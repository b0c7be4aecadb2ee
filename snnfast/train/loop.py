"""The one training loop of snnfast: :class:`Trainer`, shared by :class:`snnfast.SNN` (any
network description) and :class:`snnfast.ConvSNN` (the presets' tuned kernels).

The loop holds what every training run needs, whatever the model: the epochs and batches
(shuffling and augmentation draws that are functions of (seed, epoch), so that a resumed
run draws the same), the learning-rate schedule, the progress bar, Ctrl-C/SIGTERM honoured
between batches, the divergence checks, the per-epoch metrics, the validation-selected
weights and the position in the run (epoch, step, history, a mid-epoch position) that a
checkpoint stores. The model provides what is specific to it:

``_fit_inputs(X, name)``
    The validated, C-contiguous inputs of ``fit`` (``name`` for messages).
``n_classes``
    The number of classes (labels, the divergence limit).
``_fit_context()``
    A context manager around the whole run (ConvSNN: single-threaded BLAS).
``_augment(xb, dy, dx, flip)``
    A batch shifted by ``(dy, dx)`` per sample (zeros when no shifts are drawn) and flipped
    where ``flip`` (None when no flips are drawn); not called when neither is.
``_train_step(X, y, ids, epoch, lr)``
    One optimisation step (forward, backward, optimiser, ``trainer.step += 1``, the weight
    average: :func:`update_average`); returns (mean loss, #correct, the forward's record).
``_rate_sums()``, ``_add_rates(sums, record)``, ``_train_rates(sums, n)``
    The spike-rate accumulators of an epoch (JSON-able: a checkpoint stores them mid-epoch),
    adding a step's spikes, and the epoch's ``{"rate_...": value}``.
``evaluate(X, y, sample_ids)``
    ``{"accuracy", "loss", ...}``; its ``rate_*`` entries are recorded as ``val_rate_*``.
``_snapshot()``, ``_restore_snapshot(weights)``
    A copy of the inference weights (the model selection's candidate), and putting one back.
"""
import math
import time

import numpy as np

from .._cli import install_stop_handlers, restore_handlers
from .._utils import aligned_copy, check_labels
from .schedule import ema_factor, lr_at

__all__ = ["Trainer", "TrainingError", "update_average", "as_ids", "DIVERGED_FACTOR"]

DIVERGED_FACTOR = 10
"""An epoch's mean cross-entropy above ten times chance level (ln n_classes) means the weights
diverged: even a 30x too large lr stays near 3-7 and recovers."""


class TrainingError(ValueError):
    """Training stopped on a non-finite loss, gradient or weight: it diverged, typically from
    too high a learning rate. The model's weights are then unusable; a checkpoint written
    before is not touched."""


def as_ids(ids, n, name="sample_ids"):
    """Each sample's index in its data set (keys its input noise) as C-contiguous int64 of
    shape ``(n,)``; default ``arange(n)``. ValueError for another shape, dtype or a negative
    index."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.shape != (n,):
        raise ValueError(f"{name} must be integers of shape ({n},), got {ids.dtype} {ids.shape}")
    if n and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0")
    return np.ascontiguousarray(ids, dtype=np.int64)


def update_average(avg, w, config, step, kernels=None, n_threads=None):
    """The weight average after optimiser step ``step`` (``avg`` updated in place, or a new one).

    Every ``config.ema_every`` steps (none if ``config.ema_decay`` is 0): the first time a
    copy of the weights ``w``, then ``avg = d avg + (1 - d) w`` with ``d`` of
    :func:`snnfast.train.schedule.ema_factor`, through the compiled ``kernels.ema_step``
    (``kernels`` None: NumPy, float32). ``w`` are the model's own weights, finite after every
    step the optimiser checked, so the kernel skips its NaN scan.
    """
    if config.ema_decay <= 0 or step % config.ema_every:
        return avg
    if avg is None:
        # page-aligned like the models' own weights: FC1 streams the average with vector
        # loads, which straddle cache lines on malloc's placement (aligned_copy)
        return {k: aligned_copy(v) for k, v in w.items()}
    d = ema_factor(config, step)        # early on: a shorter memory
    for k, v in avg.items():
        if kernels is not None:
            # an OpenMP region costs more than it saves on small arrays
            kernels.ema_step(v, w[k], decay=d, check_finite=False,
                             n_threads=n_threads if v.size >= 65536 else 1)
        else:
            v *= np.float32(d)
            v += np.float32(1.0 - d) * w[k]
    return avg


class Trainer:
    """The training loop of a model (see the module docstring for what the model provides).

    Parameters
    ----------
    model : SNN or ConvSNN
        Trained in place; its ``config`` (a :class:`snnfast.train.options.LoopOptions`) gives
        ``seed``, ``epochs``, ``batch_size``, the schedule
        (:func:`snnfast.train.schedule.lr_at`), the augmentation and the weight average.

    Attributes
    ----------
    config : the model's
    epoch, step : int, epochs completed and optimiser steps taken
    history : list of per-epoch metrics dicts
    best_epoch : (epoch, validation accuracy) of the kept best weights, or None
    clean_stop_, stop_signal_ : after a Ctrl-C/SIGTERM (see :meth:`fit`)
    """

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.epoch, self.step = 0, 0
        self.history = []
        self._best = None         # {"val_acc", "epoch", "weights"}
        self._partial = None      # mid-epoch position {"epoch", "batch", "sums"}
        self.clean_stop_, self.stop_signal_, self._stop = False, None, False

    @property
    def best_epoch(self):
        return None if self._best is None else (self._best["epoch"], self._best["val_acc"])

    def restore(self, epoch, step, history, partial, best):
        """Continue from a checkpoint's position: ``best`` is None or ``{"val_acc", "epoch",
        "weights"}`` (the weights checked by the model), ``partial`` None or ``{"epoch",
        "batch", "sums"}``. ValueError for a damaged position, so that a checkpoint that
        loads also resumes."""
        for key, v in (("epoch", epoch), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{key} must be >= 0 (an integer), got {v!r}")
        if history is not None and not isinstance(history, list):
            raise ValueError(f"history must be a JSON list, got {type(history).__name__}")
        self._check_partial(partial)
        self.epoch, self.step = epoch, step
        self.history = list(history or [])
        self._partial = partial
        self._best = best

    def _check_partial(self, p):
        """ValueError unless ``p`` is None or a mid-epoch position with this model's sums."""
        if p is None:
            return
        keys = {"loss", "correct", "n", "time"} | set(self.model._rate_sums())
        if (not isinstance(p, dict) or not isinstance(p.get("epoch"), int)
                or not isinstance(p.get("batch"), int) or p["batch"] < 0
                or not isinstance(p.get("sums"), dict) or set(p["sums"]) != keys):
            raise ValueError(f"damaged mid-epoch position {p!r}")

    def train_step(self, X, y, ids, epoch, lr):
        """One optimisation step on a batch (the model's); returns (mean loss, #correct,
        the forward's record)."""
        return self.model._train_step(X, y, ids, epoch, lr)

    # ------------------------------------------------------------------ the loop
    def fit(self, X, y, X_val=None, y_val=None, *, epochs=None, sample_ids=None, val_ids=None,
            callback=None, verbose=False, restore_best=True):
        """Train (or continue training) up to ``epochs`` epochs in total (default
        ``config.epochs``), from :attr:`epoch` (and a mid-epoch position).

        ``callback(model, metrics)`` runs after every epoch and may return a dict of extra
        metrics to record. Ctrl-C or SIGTERM stops at the next batch boundary with a
        consistent state (``clean_stop_`` True, the signal in ``stop_signal_``) and raises
        KeyboardInterrupt; a second signal raises it at once (``clean_stop_`` False).
        Raises :class:`TrainingError` if training diverges. Returns the model.
        """
        m, c = self.model, self.config
        X = m._fit_inputs(X, "X")
        y = check_labels(y, len(X), m.n_classes)
        ids = as_ids(sample_ids, len(X))
        if (X_val is None) != (y_val is None):
            raise ValueError("give X_val and y_val together (or neither)")
        val = None
        if X_val is not None:
            Xv = m._fit_inputs(X_val, "X_val")
            val = (Xv, check_labels(y_val, len(Xv), m.n_classes, "y_val"),
                   as_ids(val_ids, len(Xv), "val_ids"))
        if epochs is None:
            epochs = c.epochs
        elif isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        if len(X) == 0:
            raise ValueError("X is empty")
        n_batches = -(-len(X) // c.batch_size)
        total = max(1, epochs * n_batches)
        self.clean_stop_ = False
        old = install_stop_handlers(self)
        try:
            with m._fit_context():
                for epoch in range(self.epoch, epochs):
                    sums, lr = self._fit_epoch(X, y, ids, epoch, n_batches, total, verbose)
                    metrics = self._end_epoch(epoch, sums, lr, val)
                    if callback is not None:
                        extra = callback(m, metrics)
                        if extra is not None and not isinstance(extra, dict):
                            raise TypeError(f"callback must return a dict or None, got "
                                            f"{type(extra).__name__}")
                        metrics.update(extra or {})
        finally:
            restore_handlers(old)
        if restore_best and val is not None and self._best is not None:
            m._restore_snapshot(self._best["weights"])
        return m

    def _epoch_plan(self, epoch, N):
        """(permutation, shifts (2, N) or None, flips (N,) bool or None) of an epoch: functions
        of (seed, epoch) only, so that a resumed run draws the same."""
        c = self.config
        perm = np.random.default_rng((c.seed, epoch)).permutation(N)
        shifts = flips = None
        if c.augment_shift:
            s = c.augment_shift
            shifts = np.random.default_rng((c.seed, epoch, 1)).integers(-s, s + 1, size=(2, N))
        if c.augment_flip:
            flips = np.random.default_rng((c.seed, epoch, 2)).random(N) < 0.5
        return perm, shifts, flips

    def _batch(self, X, pos, perm, shifts, flips):
        idx = perm[pos]
        xb = X[idx]
        if shifts is not None or flips is not None:
            dy, dx = np.zeros((2, len(idx)), np.int64) if shifts is None else shifts[:, pos]
            xb = self.model._augment(xb, dy, dx, None if flips is None else flips[pos])
        return idx, np.ascontiguousarray(xb)

    def _fit_epoch(self, X, y, ids, epoch, n_batches, total, verbose):
        c, bs = self.config, self.config.batch_size
        perm, shifts, flips = self._epoch_plan(epoch, len(X))
        p = self._partial if (self._partial and self._partial["epoch"] == epoch) else None
        start = p["batch"] if p else 0
        sums = dict(p["sums"]) if p else {"loss": 0.0, "correct": 0, "n": 0,
                                            **self.model._rate_sums(), "time": 0.0}
        bar = None
        if verbose:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch + 1}", leave=False,
                       unit="batch", dynamic_ncols=True)
        lr = c.lr

        def where(b):          # for error messages only: not built on every batch
            return f"epoch {epoch + 1}, batch {b + 1} of {n_batches}"
        try:
            for b in range(start, n_batches):
                if self._stop:
                    self._partial = {"epoch": epoch, "batch": b, "sums": sums}
                    self.clean_stop_ = True          # state consistent: safe to checkpoint
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                pos = slice(b * bs, (b + 1) * bs)
                idx, xb = self._batch(X, pos, perm, shifts, flips)
                lr = lr_at(c, epoch, (epoch * n_batches + b) / total)
                try:
                    # the inputs were validated before the loop: a ValueError here is a
                    # non-finite value met by a kernel's check
                    loss, correct, rec = self.train_step(xb, y[idx], ids[idx], epoch, lr)
                except ValueError as exc:
                    raise TrainingError(f"training failed at {where(b)}: {exc}") from exc
                if not math.isfinite(loss):
                    raise TrainingError(f"training diverged at {where(b)}: the loss is {loss}")
                sums["time"] += time.perf_counter() - t0
                sums["loss"] += loss * len(idx)
                sums["correct"] += correct
                sums["n"] += len(idx)
                self.model._add_rates(sums, rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}",
                                    acc=f"{sums['correct'] / sums['n']:.4f}",
                                    img_s=f"{sums['n'] / max(sums['time'], 1e-9):.0f}")
        finally:
            if bar is not None:
                bar.close()
        self._check_epoch_loss(epoch, sums)
        self._partial = None
        return sums, lr

    def _check_epoch_loss(self, epoch, sums):
        """TrainingError if the epoch's mean loss says the weights diverged: Adam's steps stay
        finite for any lr, so a huge one leaves finite but useless weights rather than NaN,
        caught here, before the epoch is counted or saved."""
        n_classes = self.model.n_classes
        mean_loss = sums["loss"] / max(sums["n"], 1)
        if mean_loss > DIVERGED_FACTOR * math.log(n_classes):
            raise TrainingError(f"training diverged in epoch {epoch + 1}: the mean training "
                                f"loss {mean_loss:.1f} is over ten times that of chance "
                                f"(ln {n_classes} = {math.log(n_classes):.2f})")

    def _end_epoch(self, epoch, sums, lr, val):
        m = self.model
        n = max(sums["n"], 1)
        out = {"epoch": epoch + 1, "lr": lr, "train_loss": sums["loss"] / n,
               "train_acc": sums["correct"] / n,
               "train_img_s": sums["n"] / max(sums["time"], 1e-9), "train_time_s": sums["time"]}
        out.update({"train_" + k: v for k, v in m._train_rates(sums, n).items()})
        if val is not None:
            t0 = time.perf_counter()
            ev = m.evaluate(*val)
            out.update(val_acc=ev["accuracy"], val_loss=ev["loss"],
                       eval_img_s=len(val[0]) / max(time.perf_counter() - t0, 1e-9))
            out.update({"val_" + k: v for k, v in ev.items() if k.startswith("rate_")})
            if self._best is None or ev["accuracy"] > self._best["val_acc"]:
                self._best = {"val_acc": ev["accuracy"], "epoch": epoch + 1,
                              "weights": m._snapshot()}
        self.epoch = epoch + 1
        self.history.append(out)
        return out
