"""Learning-rate schedules and the weight average's decay, shared by
:class:`snnfast.ConvSNN` and :class:`snnfast.train.Trainer`."""
import math

__all__ = ["lr_at", "ema_factor"]


def lr_at(cfg, epoch, frac_in_run):
    """Learning rate of a step: ``epoch`` (0-based), ``frac_in_run`` in [0, 1) of all steps.

    ``cfg`` has ``lr``, ``lr_schedule`` ("step": x0.95 every 5 epochs after the first 5, the
    seed preset's; "constant"; "onecycle": linear warm-up over ``warmup_frac`` of the steps,
    then a cosine decay to ``final_lr_frac * lr``), ``warmup_frac`` and ``final_lr_frac``.
    """
    if cfg.lr_schedule == "step":
        # reference: after epoch e > 0 with e % 5 == 0, lr *= 0.95 (so epochs 0-5 use lr)
        return cfg.lr * 0.95 ** max(0, (epoch - 1) // 5)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    w = cfg.warmup_frac
    if frac_in_run < w:
        return cfg.lr * (frac_in_run + 1e-12) / w
    x = (frac_in_run - w) / max(1e-12, 1.0 - w)
    lo = cfg.final_lr_frac
    return cfg.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, x))))


def ema_factor(cfg, step):
    """The factor ``d`` of the weight average's update ``avg = d avg + (1 - d) w`` after
    optimiser step ``step``, applied every ``cfg.ema_every`` steps: early on the average
    would be dominated by the initial weights, so its memory is shorter,
    ``min(ema_decay, (1 + step) / (ema_ramp + step)) ** ema_every``."""
    return min(cfg.ema_decay, (1.0 + step) / (cfg.ema_ramp + step)) ** cfg.ema_every
