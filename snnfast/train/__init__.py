"""Train a spiking network from the command line: a preset Conv-SNN, or any description.

    python -m snnfast.train [--preset seed|default|nir | --config NET.toml|NET.json]
                            [--epochs N] [--batch-size B] [--lr LR] [--threads N] [--seed S]
                            [--dataset mnist|fashion-mnist | --data FILE.npz|FILE.h5]
                            [--data-dir D] [--val-size N] [--out RUN_DIR] [--resume]
                            [--reseeded-noise] [--set FIELD=VALUE ...]

The presets train :class:`snnfast.ConvSNN` (its tuned kernels); ``--config`` trains any
network description (:class:`snnfast.SNN`, the rate surrogate gradient of
:mod:`snnfast.train.surrogate`), its ``[training]`` table giving the defaults that the flags
and ``--set`` (any :class:`snnfast.train.TrainingConfig` option) override. Both models train
through the one loop :class:`snnfast.train.Trainer` (``snnfast/train/loop.py``). ``--data``
reads a user's own arrays (:func:`snnfast.datasets.load_arrays`). The training API itself:
:class:`snnfast.SNN` (``snnfast/train/trainer.py``), :class:`snnfast.train.Trainer`.

Writes into the run directory (default ``runs/<preset>[-reseeded]-<dataset>-<seed>``, or
``runs/<config file stem>-<dataset>-<seed>``):
``model.h5`` (best-validation weights + metrics), ``checkpoint.h5`` (after every epoch and
on Ctrl-C or SIGTERM) and ``metrics.json``. ``--resume`` continues from ``checkpoint.h5`` and
reaches the same weights as an uninterrupted run (shuffles, augmentation and noise are
functions of (seed, epoch)); it keeps the run's settings, so a finished run cannot be
resumed (start a new one to train longer).

One training at a time per run directory: the lock file ``RUN_DIR/.lock`` is held with
``flock`` while it runs (released by the kernel when the process ends, however it ends).
Exit status: 0 done, 1 failed (diverged, data unreadable, disk full), 2 bad arguments or a
refused run directory, 130 after Ctrl-C, 143 after SIGTERM (both with the checkpoint
written).
"""
import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .._cli import (ignore_interrupts, interrupt_exit_code, make_out_dir, nonneg_int,
                   openmp_wait_defaults, positive_float, positive_int, remove_if_empty,
                   terminate_as_interrupt)
from .._utils import file_lock, special_file_kind, write_json
from ..network import PRESET_NAMES

__all__ = ["main", "build_parser", "SNN", "Trainer", "TrainingConfig"]


def __getattr__(name):
    # the training API (snnfast.train.trainer) loads on first use: snnfast.convsnn imports
    # snnfast.train.loop and .schedule, so this package must not import the trainer (which
    # imports snnfast.convsnn's helpers) when it loads
    if name in ("SNN", "Trainer", "TrainingConfig", "training_config"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'snnfast.train' has no attribute {name!r}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m snnfast.train",
                                description="Train a convolutional spiking network (snnfast).")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="model/training preset (default: default)")
    p.add_argument("--config", default=None, metavar="NET.toml|NET.json",
                   help="train this network description instead of a preset (its [training] "
                        "table gives the defaults)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs (default: the preset's, 15 for default/nir, 30 for seed)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="training batch size (default: the preset's)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: the preset's)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for kernels and BLAS (default: SNNFAST_NUM_THREADS, "
                        "OMP_NUM_THREADS or all cores)")
    p.add_argument("--seed", type=nonneg_int, default=None,
                   help="random seed (default: 0, or the config's)")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default=None,
                   help="built-in data set (default: mnist)")
    p.add_argument("--data", default=None, metavar="FILE.npz|FILE.h5",
                   help="your own arrays X_train, y_train, X_test, y_test instead of --dataset")
    p.add_argument("--data-dir", default=None, help="data cache directory")
    p.add_argument("--val-size", type=nonneg_int, default=None,
                   help="validation images held out of the training set (default: 5000)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>"
                                               "[-reseeded]-<dataset>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.h5")
    p.add_argument("--reseeded-noise", action="store_true",
                   help="--preset seed only: the reference code's quirk of drawing the "
                        "stochastic input spikes from a generator re-seeded with 42 on every "
                        "forward pass, so every batch position sees the same noise")
    p.add_argument("--set", dest="overrides", metavar="FIELD=VALUE", type=config_override,
                   action="append", default=[],
                   help="set any ConvSNNConfig field (--preset), e.g. --set thr_h=0.7 --set T=8, "
                        "or TrainingConfig option (--config), e.g. --set augment_flip=true "
                        "(repeatable; used by python -m snnfast.sweep)")
    p.add_argument("--backend", choices=("kernels", "numpy"), default="kernels",
                   help=argparse.SUPPRESS)
    p.add_argument("--limit-train", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit-test", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--no-plots", action="store_true", help="skip the training report plots")
    p.add_argument("--synthetic", type=positive_int, default=None, help=argparse.SUPPRESS)
    return p


def config_override(text):
    """An argparse ``type`` for ``--set FIELD=VALUE``: ``(field, value)``, the value read as
    JSON (``8``, ``0.7``, ``true``) or else kept as a string (``reset_h=zero``)."""
    import json
    field, sep, raw = text.partition("=")
    if not sep or not field.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return field.strip(), value


def _config_overrides(parser, args):
    """The ConvSNNConfig overrides of the flags and of ``--set`` (a field given twice is an
    error: which value would win is not obvious)."""
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("lr", args.lr), ("val_size", args.val_size),
                                   ("reseeded_noise", args.reseeded_noise or None))
                 if v is not None}
    for field, value in args.overrides:
        if field in ("preset", "seed"):
            parser.error(f"--set {field}: use --{field}")
        if field in overrides:
            parser.error(f"--set {field}: {field} is given twice")
        overrides[field] = value
    return overrides


def _load_data(args):
    if args.synthetic:
        return synthetic_digits(args.synthetic, max(1, args.synthetic // 5), seed=12345)
    from .. import datasets
    if args.data is not None:
        Xtr, ytr, Xte, yte = datasets.load_arrays(args.data)
        if args.config is None and Xtr.ndim == 4 and Xtr.shape[1] == 1:
            # the presets' ConvSNN takes (N, H, W) images
            Xtr, Xte = Xtr[:, 0], Xte[:, 0]
        return Xtr, ytr, Xte, yte
    Xtr, ytr = datasets.load(args.dataset, "train", args.data_dir)
    Xte, yte = datasets.load(args.dataset, "test", args.data_dir)
    return Xtr, ytr, Xte, yte


def synthetic_digits(n_train, n_test, seed=0):
    """A small learnable stand-in for MNIST (tests, benchmarks without data).

    Ten random stroke prototypes; each image is one prototype shifted by up to 2 px with
    pixel noise. Returns uint8 (N,28,28) images and uint8 labels like ``datasets.load``.
    """
    rng = np.random.default_rng(seed)
    protos = np.zeros((10, 32, 32))
    for c in range(10):
        for _ in range(4):
            r, col = rng.integers(6, 26, 2)
            dr, dc = rng.integers(-1, 2, 2)
            for k in range(9):
                rr, cc = np.clip(r + k * dr, 1, 30), np.clip(col + k * dc, 1, 30)
                protos[c, rr - 1:rr + 2, cc - 1:cc + 2] = 1.0

    def make(n):
        y = rng.integers(0, 10, n)
        off = rng.integers(0, 5, (n, 2))
        X = np.empty((n, 28, 28))
        for i in range(n):
            X[i] = protos[y[i], off[i, 0]:off[i, 0] + 28, off[i, 1]:off[i, 1] + 28]
        X = np.clip(X * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.normal(0, 0.08, X.shape), 0, 1)
        return (X * 255).round().astype(np.uint8), y.astype(np.uint8)
    return (*make(n_train), *make(n_test))



def _fmt_epoch(m):
    parts = [f"epoch {m['epoch']:3d}", f"loss {m['train_loss']:.4f}",
             f"train {100 * m['train_acc']:.2f}%"]
    if "val_acc" in m:
        parts.append(f"val {100 * m['val_acc']:.2f}%")
    if "test_acc" in m:
        parts.append(f"test {100 * m['test_acc']:.2f}%")
    parts.append(f"{m['train_img_s']:.0f} img/s")
    parts.append(f"rates in/conv/hid {100 * m['train_rate_input']:.1f}/"
                 f"{100 * m['train_rate_conv']:.1f}/{100 * m['train_rate_hidden']:.1f}%")
    return "  ".join(parts)


LOCK_NAME = ".lock"


def main(argv=None):
    """Run ``python -m snnfast.train``; returns the exit status (see the module docstring)."""
    openmp_wait_defaults()      # before the first kernel loads the OpenMP runtime
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.config is not None:
        tag, run = Path(args.config).stem, _ConfigRun(parser, args)
    else:
        tag = f"{args.preset}-reseeded" if args.reseeded_noise else args.preset
        run = _PresetRun(parser, args)
    model = None if args.resume else run.new()   # refused before any mkdir
    seed = args.seed if args.seed is not None or model is None else model.config.seed
    run_dir = Path(args.out or f"runs/{tag}-{_data_name(args)}-{0 if seed is None else seed}")
    try:
        created = make_out_dir(run_dir)
    except ValueError as exc:
        parser.error(str(exc))
    lock = run_dir / LOCK_NAME
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock, timeout=0))
        except TimeoutError:
            remove_if_empty(created)
            parser.error(f"--out: {run_dir} is in use by another training (it holds the lock "
                         f"{lock}); wait for it to end or choose another --out")
        try:
            with terminate_as_interrupt() as got:
                try:
                    return _locked_main(run, run_dir, model)
                except KeyboardInterrupt:   # outside the training loop (loading the data)
                    ignore_interrupts()
                    print("\ninterrupted", file=sys.stderr)
                    return interrupt_exit_code(got.signum or signal.SIGINT)
        finally:
            if all(p.name == LOCK_NAME for p in run_dir.iterdir()):
                # a refused or failed command leaves no empty run directory behind (the
                # lock file is removed while still held, and only from a directory made here)
                remove_if_empty(created, files=[lock] if created else [])


def _accuracy_line(model, final):
    """The closing line of both training paths: the selected model's test accuracy, how it
    was selected, and the last epoch's (just the accuracy if no epoch ran here)."""
    if not model.history_:
        return f"test accuracy {100 * final['accuracy']:.2f}%"
    best = model.best_epoch_
    sel = (f"best validation epoch {best[0]} (val {100 * best[1]:.2f}%)" if best
           else "final epoch (no validation set)")
    return (f"test accuracy {100 * final['accuracy']:.2f}% ({sel}); last-epoch test accuracy "
            f"{100 * model.history_[-1]['test_acc']:.2f}%")


def _split(parser, args, cfg, n_train, Xte, yte):
    """(training indices, validation indices, test images, test labels) after the --limit-*
    options and the validation split of ``cfg``; both training paths use it."""
    from ..datasets import train_val_split
    n_all = min(n_train, args.limit_train + cfg.val_size) if args.limit_train else n_train
    if cfg.val_size >= n_all:
        parser.error(f"--val-size {cfg.val_size} leaves no training images")
    tr_idx, va_idx = train_val_split(n_all, cfg.val_size, cfg.seed)
    if args.limit_test:
        Xte, yte = Xte[:args.limit_test], yte[:args.limit_test]
    return tr_idx, va_idx, Xte, yte


def _check_args(parser, args):
    """Refuse conflicting flags; fill in the preset defaults."""
    if args.config is not None and args.preset is not None:
        parser.error("give --preset or --config, not both")
    if args.data is not None and args.dataset is not None:
        parser.error("give --dataset or --data, not both")
    if args.config is not None and (args.reseeded_noise or args.backend != "kernels"):
        parser.error("--reseeded-noise and --backend apply to the presets only")
    if args.config is None:
        args.preset = args.preset or "default"
        args.seed = 0 if args.seed is None else args.seed
    if args.data is None:
        args.dataset = args.dataset or "mnist"
    if args.reseeded_noise and args.preset != "seed":
        parser.error("--reseeded-noise applies to --preset seed only")


def _data_name(args):
    """The data set's name in run directory names and files: the built-in one's, or the
    ``--data`` file's stem."""
    return args.dataset if args.data is None else Path(args.data).stem


def _data_flag(args):
    return f"--dataset {args.dataset}" if args.data is None else f"--data {args.data}"


def _new_model(parser, args):
    """A fresh model for the command's options (parser.error for an invalid combination)."""
    from ..convsnn import ConvSNN
    overrides = _config_overrides(parser, args)
    try:
        return ConvSNN(args.preset, seed=args.seed, n_threads=args.threads,
                       backend=args.backend, **overrides)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def _locked_main(run, run_dir, model):
    """The training of a preset or a description (``run``: :class:`_PresetRun` or
    :class:`_ConfigRun`, what differs), with the run directory locked for this process."""
    parser, args = run.parser, run.args
    ckpt_path, model_path, metrics_path = _run_files(parser, args, run_dir)
    if args.resume:
        model = run.resume(ckpt_path, model_path)
        print(f"resuming {ckpt_path} after epoch {model.epoch_} (step {model.trainer.step})")
    try:
        Xtr, ytr, Xte, yte = _load_data(args)
        run.check_data(model, ((Xtr, ytr, "training"), (Xte, yte, "test")))
    except (ValueError, OSError, TypeError) as exc:    # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tr_idx, va_idx, Xte, yte = _split(parser, args, model.config, len(Xtr), Xte, yte)
    Xva, yva = (Xtr[va_idx], ytr[va_idx]) if len(va_idx) else (None, None)
    print(run.header(model, run_dir, len(tr_idx), len(va_idx), len(Xte)), flush=True)

    def on_epoch(m, metrics):
        ev = m.evaluate(Xte, yte)
        metrics.update(test_acc=ev["accuracy"], test_loss=ev["loss"])
        print(run.fmt_epoch(metrics), flush=True)
        run.save(m, ckpt_path, checkpoint=True)
        write_json(metrics_path, run.metrics(m, done=False))
        return None

    t0 = time.time()
    code = _fit(lambda: model.fit(Xtr[tr_idx], ytr[tr_idx], Xva, yva, callback=on_epoch,
                                  sample_ids=tr_idx, val_ids=va_idx,
                                  verbose=not args.no_progress),
                model, lambda: run.save(model, ckpt_path, checkpoint=True), ckpt_path, args,
                run_dir)
    if code is not None:
        return code
    t_eval = time.perf_counter()
    final = model.evaluate(Xte, yte)
    t_eval = time.perf_counter() - t_eval
    summary = run.metrics(model, done=True)
    summary["final"] = run.final(model, final, time.time() - t0, len(Xte) / max(t_eval, 1e-9))
    if not _write_or_report(lambda: (run.save(model, model_path, summary=summary),
                                     write_json(metrics_path, summary)), ckpt_path):
        return 1
    print(_accuracy_line(model, final))
    run.report(summary["final"])
    _energy_report(run_dir, model_path, Xte[:1000], args.threads)
    print(f"files: {model_path}  {ckpt_path}  {metrics_path}")
    if not args.no_plots:
        run.plots(run_dir, model, summary, Xte, yte)
    return 0


class _Run:
    """What differs between the runs of :func:`_locked_main`: :class:`_PresetRun` and
    :class:`_ConfigRun`."""

    def __init__(self, parser, args):
        self.parser, self.args = parser, args

    def resume(self, ckpt_path, model_path):
        return _resume(self, ckpt_path, model_path)

    def _sizes(self, cfg, n_train, n_val, n_test):
        """The data and training sizes of the run's first line."""
        return (f"dataset={_data_name(self.args)} train={n_train} val={n_val} test={n_test} "
                f"epochs={cfg.epochs} batch={cfg.batch_size} lr={cfg.lr} seed={cfg.seed}")


class _PresetRun(_Run):
    """What a preset's run (:class:`snnfast.ConvSNN`) does in :func:`_locked_main`."""

    def new(self):
        return _new_model(self.parser, self.args)

    def load(self, path):
        """(the checkpoint's model, its saved metrics)."""
        from ..convsnn import ConvSNN
        model = ConvSNN.load(path, n_threads=self.args.threads, backend=self.args.backend)
        return model, model.metrics_

    def check_model(self, model, ckpt_path):
        """parser.error unless the command asks for the checkpoint's preset and seed."""
        c, args = model.config, self.args
        if c.preset != args.preset or c.seed != args.seed or \
                c.reseeded_noise != args.reseeded_noise:
            flag = " --reseeded-noise" if c.reseeded_noise else ""
            self.parser.error(f"--resume: {ckpt_path} holds preset {c.preset!r} seed "
                              f"{c.seed}{flag}; pass the same --preset/--seed/--reseeded-noise")

    def check_settings(self, model, ckpt_path):
        """parser.error for a flag or ``--set`` that differs from the checkpoint's."""
        parser, args, c = self.parser, self.args, model.config
        for flag, given, saved in (("--lr", args.lr, c.lr),
                                   ("--batch-size", args.batch_size, c.batch_size),
                                   ("--val-size", args.val_size, c.val_size),
                                   ("--epochs", args.epochs, c.epochs)):
            if given is not None and given != saved:
                parser.error(f"--resume: {ckpt_path} was trained with {flag} {saved}; a resumed "
                             f"run keeps its settings (drop {flag} {given}, or start a new run)")
        for field, value in args.overrides:
            if getattr(c, field, None) != value:
                parser.error(f"--resume: {ckpt_path} was trained with {field}="
                             f"{getattr(c, field, None)!r}; a resumed run keeps its settings "
                             f"(drop --set {field}={value!r}, or start a new run)")

    def check_data(self, model, parts):
        """The presets' inputs are checked by ConvSNN.fit/evaluate."""

    def header(self, model, run_dir, n_train, n_val, n_test):
        return (f"snnfast ConvSNN preset={model.config.preset} backend={model.backend} "
                f"{self._sizes(model.config, n_train, n_val, n_test)} -> {run_dir}")

    fmt_epoch = staticmethod(_fmt_epoch)

    def metrics(self, model, done):
        return _metrics(model, model.config.epochs, self.args, done)

    def save(self, model, path, checkpoint=False, summary=None):
        """A checkpoint records the history and the data set's name; the final model file
        the run's summary."""
        model.save(path, checkpoint=checkpoint,
                   metrics=summary if summary is not None else
                   {"history": model.history_, "dataset": _data_name(self.args)})

    @staticmethod
    def final(model, final, wall_time_s, test_img_s):
        return {"test_acc_best_val_model": final["accuracy"], "test_loss": final["loss"],
                "rate_input": final["rate_input"], "rate_conv": final["rate_conv"],
                "rate_hidden": final["rate_hidden"], "wall_time_s": wall_time_s}

    @staticmethod
    def report(final):
        print(f"spike rates: input {100 * final['rate_input']:.2f}%/step, conv "
              f"{100 * final['rate_conv']:.2f}%/step, hidden "
              f"{100 * final['rate_hidden']:.2f}%/update")

    @staticmethod
    def plots(run_dir, model, summary, Xte, yte):
        try:
            from .. import plotting
            plotting.training_report(run_dir, model, summary, Xte, yte)
        except ImportError:
            pass
        except Exception as exc:  # plots must never lose a finished training
            print(f"warning: plots failed: {exc}", file=sys.stderr)


def _run_files(parser, args, run_dir):
    """(checkpoint, model, metrics) paths of a run directory, refusing special files and
    (without --resume) a directory that already holds a run."""
    ckpt_path, model_path = run_dir / "checkpoint.h5", run_dir / "model.h5"
    metrics_path = run_dir / "metrics.json"
    for name in (ckpt_path, model_path, metrics_path, run_dir / "energy.json"):
        kind = special_file_kind(name)
        if kind is not None:    # never replaced: refused now, not after an epoch
            parser.error(f"--out: {name} is {kind}; the run writes it as a regular file")
    if not args.resume and (ckpt_path.exists() or model_path.exists()):
        parser.error(f"{run_dir} already holds a run ({ckpt_path.name} or {model_path.name}): "
                     f"continue it with --resume, or choose another --out")
    return ckpt_path, model_path, metrics_path


def _fit(fit, model, save_checkpoint, ckpt_path, args, run_dir):
    """Run ``fit()``; None when it completes, else the exit status after reporting why it
    stopped: diverged (1), Ctrl-C/SIGTERM (:func:`_interrupted`) or a failed checkpoint
    write (1)."""
    from .loop import TrainingError
    try:
        fit()
    except TrainingError as exc:
        print(f"\nerror: {exc}\n{ckpt_path} holds the last completed epoch (if any), "
              f"untouched; a lower --lr (now {model.config.lr}) may help", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(model, save_checkpoint, ckpt_path, args, run_dir)
    except (OSError, ValueError) as exc:    # the checkpoint write failed (disk full)
        _report_write_error(exc, ckpt_path)
        return 1
    return None


def _interrupted(model, save_checkpoint, ckpt_path, args, run_dir):
    """After Ctrl-C/SIGTERM stopped ``fit``: write the checkpoint (``save_checkpoint()``) if
    the stop was clean, say how to resume, and return the exit status (128 + the first
    signal's number)."""
    ignore_interrupts()     # more signals must not cut the checkpoint write short
    code = interrupt_exit_code(getattr(model, "stop_signal_", None) or signal.SIGINT)
    if getattr(model, "clean_stop_", False):
        if not _write_or_report(save_checkpoint, ckpt_path):
            return 1
        print(f"\ninterrupted; state saved to {ckpt_path}", file=sys.stderr)
    elif ckpt_path.exists():
        # a second signal may have hit mid-update: the last epoch's checkpoint is kept
        print(f"\ninterrupted hard; {ckpt_path} holds the last completed epoch",
              file=sys.stderr)
    else:
        print("\ninterrupted hard before the first epoch ended; nothing was saved",
              file=sys.stderr)
        return code
    c = model.config
    what = f"--config {args.config}" if args.config is not None else f"--preset {c.preset}"
    print(f"resume with: python -m snnfast.train {what} --seed {c.seed} "
          f"{_data_flag(args)} --out {run_dir} --resume", file=sys.stderr)
    return code


def _write_or_report(write, ckpt_path):
    """Run ``write()``; on a failed write report it (:func:`_report_write_error`) and return
    False."""
    try:
        write()
    except (OSError, ValueError) as exc:
        _report_write_error(exc, ckpt_path)
        return False
    return True


def _report_write_error(exc, ckpt_path):
    print(f"error: {exc}\n{ckpt_path} holds the last completed epoch (if any), untouched",
          file=sys.stderr)


def _resume(run, ckpt_path, model_path):
    """The model of ``ckpt_path``, after checking that the command asks for the same run (the
    same model: ``run.check_model``, on the same data, with the same settings:
    ``run.check_settings``) and that the run is not finished."""
    parser, args = run.parser, run.args
    if not ckpt_path.is_file():
        parser.error(f"--resume: no checkpoint at {ckpt_path}")
    try:
        model, meta = run.load(ckpt_path)
    except ValueError as exc:
        parser.error(f"--resume: {exc}")
    run.check_model(model, ckpt_path)
    dataset = (meta or {}).get("dataset")
    if dataset is not None and dataset != _data_name(args):
        parser.error(f"--resume: {ckpt_path} was trained on {dataset}; pass the same "
                     f"--dataset or --data")
    # the rest of a resumed run must be the run that was interrupted: an option given now
    # must be the one it ran with (--epochs too: the learning-rate schedule spans the run's
    # epochs, so more epochs would not continue the run but train on at its final, near-zero
    # rate)
    run.check_settings(model, ckpt_path)
    if model.epoch_ >= model.config.epochs and model_path.is_file():
        parser.error(f"--resume: the run in {ckpt_path.parent} is complete ({model.epoch_} of "
                     f"{model.config.epochs} epochs, {model_path.name} written); to train "
                     "longer, start a new run with more --epochs")
    return model


def _energy_report(run_dir, model_path, images, n_threads):
    """Print and save (energy.json) the same figures as ``python -m snnfast.energy``."""
    try:
        from .. import energy
        out, line = energy.summarize(model_path, images, n_threads=n_threads)
    except Exception as exc:  # the report must never lose a finished training
        print(f"warning: energy report failed: {exc}", file=sys.stderr)
        return
    write_json(run_dir / "energy.json", out)
    print(line)


def _metrics(model, epochs, args, done):
    best = model.best_epoch_
    return {"preset": model.config.preset, "dataset": _data_name(args), "seed": model.config.seed,
            "epochs": epochs, "epochs_done": model.epoch_, "complete": done,
            "backend": model.backend, "config": model.config.to_dict(),
            "best_epoch": best[0] if best else None, "best_val_acc": best[1] if best else None,
            "history": model.history_}


# ----------------------------------------------------------------------------- --config
def _training_overrides(parser, args):
    """The TrainingConfig options of the flags and of ``--set`` (a field given twice is an
    error)."""
    from .trainer import TRAINING_FIELDS
    out = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                             ("lr", args.lr), ("val_size", args.val_size), ("seed", args.seed))
           if v is not None}
    for field, value in args.overrides:
        if field in out or field == "seed":
            parser.error(f"--set {field}: {field} is given twice (or use --{field})")
        if field not in TRAINING_FIELDS:
            parser.error(f"--set {field}: not a training option (options: "
                         f"{', '.join(TRAINING_FIELDS)})")
        out[field] = value
    return out


def _new_snn(parser, args):
    """The SNN of ``--config`` with the command's options; parser.error (one line naming the
    file, the layer or option and the field) for a description or option that cannot run."""
    from .trainer import SNN
    overrides = _training_overrides(parser, args)
    try:
        return SNN(args.config, n_threads=args.threads, **overrides)
    except (TypeError, ValueError) as exc:      # ConfigError is a ValueError
        msg = str(exc)
        parser.error(f"--config {args.config}: {msg}" if not msg.startswith(args.config)
                     else f"--config {msg}")


def _fmt_snn_epoch(m):
    parts = [f"epoch {m['epoch']:3d}", f"loss {m['train_loss']:.4f}",
             f"train {100 * m['train_acc']:.2f}%"]
    for k in ("val_acc", "test_acc"):
        if k in m:
            parts.append(f"{k[:-4]} {100 * m[k]:.2f}%")
    parts.append(f"{m['train_img_s']:.0f} img/s")
    rates = [f"{k[11:]} {100 * v:.1f}" for k, v in m.items()
             if k.startswith("train_rate_") and k != "train_rate_input"]
    parts.append("rates % " + " ".join(rates))
    return "  ".join(parts)


class _ConfigRun(_Run):
    """What the run of a ``--config`` description (:class:`snnfast.SNN`) does in
    :func:`_locked_main`."""

    def new(self):
        return _new_snn(self.parser, self.args)

    def load(self, path):
        """(the checkpoint's model, its saved metadata)."""
        from .trainer import SNN
        model = SNN.load(path, n_threads=self.args.threads)
        return model, model.metadata_

    def check_model(self, model, ckpt_path):
        """parser.error unless the checkpoint holds training state of the command's
        description."""
        if model.trainer is None:
            self.parser.error(f"--resume: {ckpt_path} holds no training state")
        if self.new().network != model.network:
            self.parser.error(f"--resume: {ckpt_path} holds another network than "
                              f"{self.args.config}")

    def check_settings(self, model, ckpt_path):
        """parser.error for an option that differs from the checkpoint's."""
        parser, saved = self.parser, model.config.to_dict()
        for k, v in _training_overrides(parser, self.args).items():
            if saved[k] != v:
                parser.error(f"--resume: {ckpt_path} was trained with {k}={saved[k]!r}; a "
                             f"resumed run keeps its settings (drop {k}={v!r}, or start a new "
                             "run)")

    @staticmethod
    def check_data(model, parts):
        """ValueError/TypeError naming the data set for inputs or labels that do not fit the
        description (before any training)."""
        from .._utils import check_labels
        from .trainer import _check_inputs
        for X, y, name in parts:
            check_labels(y, len(_check_inputs(model.network, X, f"the {name} data")),
                         model.n_classes, f"the {name} labels")

    def header(self, model, run_dir, n_train, n_val, n_test):
        from .._config import effective_n_threads
        return (f"snnfast SNN config={self.args.config} ({model.network.n_params():,d} "
                f"weights) {self._sizes(model.config, n_train, n_val, n_test)} "
                f"threads={effective_n_threads(self.args.threads)} -> {run_dir}")

    fmt_epoch = staticmethod(_fmt_snn_epoch)

    def metrics(self, model, done):
        return _snn_metrics(model, self.args, done)

    def save(self, model, path, checkpoint=False, summary=None):
        """Both files' metadata record the history, the data set and the description file;
        the final model file also the run's summary."""
        meta = {"history": model.history_, "dataset": _data_name(self.args),
                "config": self.args.config}
        if summary is not None:
            meta["summary"] = summary
        model.save(path, checkpoint=checkpoint, metadata=meta)

    @staticmethod
    def final(model, final, wall_time_s, test_img_s):
        return {"test_acc_best_val_model": final["accuracy"], "test_loss": final["loss"],
                "rates": final["rates"], "wall_time_s": wall_time_s,
                "train_time_s": sum(h["train_time_s"] for h in model.history_),
                "test_img_s": test_img_s}

    @staticmethod
    def report(final):
        print("spike rates per update: " + ", ".join(f"{k} {100 * v:.2f}%"
                                                     for k, v in final["rates"].items()))
        print(f"wall time {final['wall_time_s']:.0f} s, training {final['train_time_s']:.0f} s, "
              f"test {final['test_img_s']:.0f} img/s")

    @staticmethod
    def plots(run_dir, model, summary, Xte, yte):
        """No training report plots for a description yet."""


def _snn_metrics(model, args, done):
    best = model.best_epoch_
    return {"config": args.config, "network": model.network.to_dict(),
            "dataset": _data_name(args), "seed": model.config.seed,
            "epochs": model.config.epochs, "epochs_done": model.epoch_, "complete": done,
            "training": model.config.to_dict(),
            "best_epoch": best[0] if best else None, "best_val_acc": best[1] if best else None,
            "history": model.history_}
