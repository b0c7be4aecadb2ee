"""The options of the one training loop, shared by every model's configuration.

:class:`LoopOptions` holds what :class:`snnfast.train.loop.Trainer` reads (epochs, batch
sizes, Adam, the schedule, augmentation, the weight average, the validation split) and checks
them once. :class:`snnfast.train.TrainingConfig` (any description) and
:class:`snnfast.convsnn.ConvSNNConfig` (the presets) extend it with their own fields, so a
loop option has one name, one default and one range everywhere.
"""
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .._utils import is_real_number

__all__ = ["LoopOptions", "LR_SCHEDULES", "MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_SHIFT"]

# A training step holds ~100 KB per image (dense spike trains and rates of every layer), so
# 4096 images are ~0.5 GB; larger batches are refused rather than left to exhaust the memory.
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10_000
MAX_SHIFT = 8                  # pixels of random shift
LR_SCHEDULES = ("onecycle", "constant", "step")

# (name, lowest, highest) of the integer options
_INT_RANGES = (("seed", 0, 2 ** 64 - 1), ("epochs", 0, MAX_EPOCHS),
               ("batch_size", 1, MAX_BATCH_SIZE), ("augment_shift", 0, MAX_SHIFT),
               ("ema_every", 1, 10 ** 6), ("val_size", 0, 10 ** 9),
               ("eval_batch_size", 1, MAX_BATCH_SIZE))


@dataclass(frozen=True)
class LoopOptions:
    """The training loop's options.

    Attributes
    ----------
    seed : int
        Initialisation, shuffling, augmentation and the input noise.
    epochs, batch_size : int
    lr : float
        Peak learning rate of Adam.
    lr_schedule : {"onecycle", "constant", "step"}
        "onecycle": linear warm-up over ``warmup_frac`` of the steps, cosine decay to
        ``final_lr_frac * lr`` (:func:`snnfast.train.schedule.lr_at`).
    warmup_frac, final_lr_frac : float in [0, 1]
    beta1, beta2, eps : float
        Adam's.
    augment_shift : int
        Random shifts of up to this many pixels (zero fill), per (seed, epoch, sample).
    augment_flip : bool
        Random horizontal flips, per (seed, epoch, sample).
    ema_decay, ema_every, ema_ramp
        The weight average (``ema_decay = 0``: none; see
        :func:`snnfast.train.schedule.ema_factor`).
    val_size : int
        Images held out of the training set for model selection (command line).
    eval_batch_size : int
    """
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.5e-3
    lr_schedule: str = "onecycle"
    warmup_frac: float = 0.03
    final_lr_frac: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    augment_shift: int = 2
    augment_flip: bool = False
    ema_decay: float = 0.998
    ema_every: int = 4
    ema_ramp: float = 10.0
    val_size: int = 5000
    eval_batch_size: int = 256

    # the prefix of error messages ("training: " names the [training] table of a file)
    _where = ""

    def __post_init__(self):
        self._check_loop_options()

    def _check_loop_options(self):
        p = self._where
        for name, lo, hi in _INT_RANGES:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{p}{name} must be an integer >= {lo}, got {v!r}")
            if v > hi:
                raise ValueError(f"{p}{name} must be <= {hi}, got {v!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type not in (float, "float"):
                continue
            if not is_real_number(v):
                raise ValueError(f"{p}{f.name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{p}{f.name} must be a finite number, got {v!r}")
        checks = (("lr", self.lr > 0, "> 0"), ("eps", self.eps > 0, "> 0"),
                  ("warmup_frac", 0 <= self.warmup_frac <= 1, "in [0, 1]"),
                  ("final_lr_frac", 0 <= self.final_lr_frac <= 1, "in [0, 1]"),
                  ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
                  ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
                  ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
                  ("ema_ramp", self.ema_ramp >= 1, ">= 1"))
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{p}{name} must be {want}, got {getattr(self, name)!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"{p}lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                             f"{self.lr_schedule!r}")
        if not isinstance(self.augment_flip, (bool, np.bool_)):
            raise ValueError(f"{p}augment_flip must be true or false, got {self.augment_flip!r}")

    def to_dict(self):
        return dataclasses.asdict(self)
