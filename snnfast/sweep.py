"""Multi-seed statistics and Optuna studies of ``python -m snnfast.train`` runs.

    python -m snnfast.sweep --seeds N [--preset P] [--out DIR] [--workers K] [TRAIN OPTIONS]
    python -m snnfast.sweep SWEEP.toml [--trials N] [--workers K] [--storage URL]
                            [--study NAME] [--out DIR]

``--seeds N`` trains the same configuration with seeds 0..N-1, each an ordinary run directory
``DIR/seed-<s>`` written by :func:`snnfast.train.main`, and reports the mean and the sample
standard deviation (ddof=1) of the test accuracy (best-validation model and final epoch) and
of the energy per inference, in ``DIR/seeds.json``, ``DIR/seeds.csv`` and on stdout. A seed
whose run is complete is reused; an interrupted one is resumed from its checkpoint.

``SWEEP.toml`` describes an Optuna study (see ``examples/sweep.toml`` and docs/sweeps.rst):
every trial is an ordinary run directory ``DIR/trials/trial-<n>``; the objectives are the
validation accuracy (maximised) and the energy per inference or the synaptic operations
(minimised). Workers share the study through its storage, so the same command on other
machines with the same ``--storage`` joins it. Outputs: ``DIR/trials.csv``,
``DIR/trials.json``, ``DIR/pareto_front.png`` and ``DIR/best.json`` (the Pareto-optimal
trials and their models).
"""
import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path

from ._cli import positive_int, run_dir_error
from ._utils import atomic_write_bytes, write_json

__all__ = ["main", "build_parser", "seed_statistics", "mean_std"]

# the per-run figures a sweep reports, in table order
RUN_FIELDS = ("test_acc_best_val_model", "test_acc_final", "best_val_acc", "best_epoch",
              "energy_uJ", "synops")


def build_parser(seeds=False):
    """The parser of the ``--seeds`` mode (``seeds=True``; other options go to train) or of
    the study mode (a SWEEP.toml positional)."""
    p = argparse.ArgumentParser(
        prog="python -m snnfast.sweep", allow_abbrev=False,
        description="Repeat a training over seeds (--seeds N [TRAIN OPTIONS]: options not "
                    "listed here, e.g. --epochs 5 --dataset fashion-mnist, go to python -m "
                    "snnfast.train) or run an Optuna study (SWEEP.toml).")
    if not seeds:
        p.add_argument("sweep", nargs="?", metavar="SWEEP.toml",
                       help="TOML file describing an Optuna study (see examples/sweep.toml)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="train seeds 0..N-1 of one configuration and report mean +- std")
    p.add_argument("--preset", choices=("default", "seed", "nir"), default="default",
                   help="--seeds: the preset (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/seeds-<preset>-<dataset> for --seeds, "
                        "runs/sweep-<study> for a study)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine; the cores are split between them "
                        "(default: 1)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads per worker (default: the available cores / --workers)")
    if seeds:
        return p
    p.add_argument("--trials", type=positive_int, default=None,
                   help="total number of finished trials (default: the TOML's)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by all workers, e.g. sqlite:///study.db or "
                        "postgresql://user@host/db (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", default=None, help="the study's name (default: the TOML's)")
    p.add_argument("--heartbeat", type=positive_int, default=30, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--seeds" or a.startswith("--seeds=") for a in argv):
        parser = build_parser(seeds=True)
        args, train_args = parser.parse_known_args(argv)
        return run_seeds(parser, args, train_args)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sweep is None:
        parser.error("give a study file SWEEP.toml, or --seeds N")
    from . import _study
    return _study.run(parser, args)


# ----------------------------------------------------------------------------- shared
def worker_threads(n_workers, threads=None):
    """Threads per worker: ``threads`` if given, else the available cores split evenly."""
    if threads:
        return threads
    from ._config import _cpus_available
    return max(1, _cpus_available() // n_workers)


def call_train(argv):
    """:func:`snnfast.train.main` on ``argv``; its exit code (argparse errors included)."""
    from . import train
    try:
        return train.main(argv)
    except SystemExit as exc:       # parser.error: the message is already on stderr
        return exc.code if isinstance(exc.code, int) else 1


def run_figures(run_dir):
    """The figures of a complete run directory (see ``RUN_FIELDS``), or None if incomplete."""
    run_dir = Path(run_dir)
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not m.get("complete") or not (run_dir / "model.h5").is_file():
        return None
    out = {"test_acc_best_val_model": m["final"]["test_acc_best_val_model"],
           "test_acc_final": m["history"][-1]["test_acc"],
           "best_val_acc": m.get("best_val_acc"), "best_epoch": m.get("best_epoch"),
           "energy_uJ": None, "synops": None}
    try:   # written by train after the model; absent if that report failed
        e = json.loads((run_dir / "energy.json").read_text())
        out["energy_uJ"] = e["energy"][0]["snn_uJ"]
        so = e["result"]["SynapticOperations"]
        out["synops"] = so["Effective_MACs"] + so["Effective_ACs"]
    except (OSError, ValueError, KeyError, IndexError):
        pass
    return out


def csv_bytes(rows, fields):
    """``rows`` (dicts) as CSV text with the columns ``fields`` (missing values empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    return buf.getvalue().encode()


# ----------------------------------------------------------------------------- --seeds
def mean_std(values):
    """``{"n", "mean", "std", "min", "max"}`` of the non-None ``values``; ``std`` is the sample
    standard deviation (ddof=1), None for fewer than two values."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = math.fsum(v) / len(v)
    std = (math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1))
           if len(v) > 1 else None)
    return {"n": len(v), "mean": mean, "std": std, "min": min(v), "max": max(v)}


def seed_statistics(rows):
    """Mean and sample std (ddof=1) of each ``RUN_FIELDS`` figure over the per-seed ``rows``."""
    return {k: mean_std(r[k] for r in rows) for k in RUN_FIELDS if k != "best_epoch"}


def _seed_argv(args, train_args, seed, run_dir, threads):
    argv = ["--preset", args.preset, "--seed", str(seed), "--out", str(run_dir),
            "--threads", str(threads)] + list(train_args)
    if (run_dir / "checkpoint.h5").is_file():     # an interrupted run: continue it
        argv.append("--resume")
    return argv


def _train_seed(argv):
    # a module-level function: joblib sends it to its worker processes
    return call_train(argv)


def run_seeds(parser, args, train_args):
    """``--seeds N``: train (or reuse) seeds 0..N-1, then report their statistics."""
    from . import train
    check = train.build_parser()
    try:     # the passed-through options, checked before hours of training
        probe = check.parse_args(["--preset", args.preset] + train_args)
        train._check_args(check, probe)      # fills in the defaults train itself would
    except SystemExit:
        parser.error("the options above are not valid python -m snnfast.train options")
    for flag in ("seed", "out", "resume"):
        if f"--{flag}" in train_args:
            parser.error(f"--{flag} is set by the sweep for each seed")
    out = Path(args.out or f"runs/seeds-{args.preset}-{probe.dataset}")
    err = run_dir_error(out)
    if err:
        parser.error(f"--out: {err}")
    threads = worker_threads(args.workers, args.threads)
    todo = []
    for s in range(args.seeds):
        run_dir = out / f"seed-{s}"
        figs = run_figures(run_dir)
        if figs is not None:
            _check_reused(parser, run_dir, args.preset, s)
            print(f"seed {s}: reusing the complete run {run_dir}")
        else:
            todo.append(_seed_argv(args, train_args, s, run_dir, threads))
    if todo:
        from joblib import Parallel, delayed
        codes = Parallel(n_jobs=min(args.workers, len(todo)))(
            delayed(_train_seed)(a) for a in todo)
        failed = [a[3] for a, c in zip(todo, codes) if c != 0]
        if failed:
            print(f"error: the runs of seed(s) {', '.join(failed)} failed (see above); re-run the same "
                  f"command to retry them", file=sys.stderr)
            return 1
    rows = [dict(seed=s, run_dir=str(out / f"seed-{s}"), **run_figures(out / f"seed-{s}"))
            for s in range(args.seeds)]
    summary = {"preset": args.preset, "seeds": list(range(args.seeds)),
               "train_options": train_args, "std": "sample standard deviation (ddof=1)",
               "statistics": seed_statistics(rows), "runs": rows}
    write_json(out / "seeds.json", summary)
    atomic_write_bytes(out / "seeds.csv", csv_bytes(rows, ("seed",) + RUN_FIELDS + ("run_dir",)))
    print(format_seed_summary(summary))
    print(f"files: {out / 'seeds.json'}  {out / 'seeds.csv'}")
    return 0


def _check_reused(parser, run_dir, preset, seed):
    """A reused run must be the one asked for (an --out shared by two presets is a mistake)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    if m.get("preset") != preset or m.get("seed") != seed:
        parser.error(f"{run_dir} holds preset {m.get('preset')!r} seed {m.get('seed')}, "
                     f"not {preset!r} seed {seed}; choose another --out")


def format_seed_summary(summary):
    """The printed report of :func:`run_seeds`: one line per seed and mean +- std."""
    lines = [f"{'seed':>4}  {'test (best val)':>15}  {'test (final)':>12}  {'best val':>8}  "
             f"{'epoch':>5}  {'energy uJ':>9}"]
    for r in summary["runs"]:
        energy = "-" if r["energy_uJ"] is None else f"{r['energy_uJ']:.3f}"
        lines.append(f"{r['seed']:>4}  {100 * r['test_acc_best_val_model']:>14.2f}%  "
                     f"{100 * r['test_acc_final']:>11.2f}%  "
                     f"{_pct(r['best_val_acc']):>8}  {str(r['best_epoch']):>5}  {energy:>9}")
    st = summary["statistics"]
    n = st["test_acc_best_val_model"]["n"]
    lines.append(f"over {n} seeds, mean +- sample std (ddof=1):")
    for key, label, scale, unit, digits in (
            ("test_acc_best_val_model", "test accuracy, best-validation model", 100, " %", 2),
            ("test_acc_final", "test accuracy, final epoch", 100, " %", 2),
            ("best_val_acc", "best validation accuracy", 100, " %", 2),
            ("energy_uJ", "energy per inference", 1, " uJ", 3)):
        s = st[key]
        if s["mean"] is None:
            continue
        std = "n/a" if s["std"] is None else f"{scale * s['std']:.{digits}f}"
        lines.append(f"  {label}: {scale * s['mean']:.{digits}f} +- {std}{unit} "
                     f"(min {scale * s['min']:.{digits}f}, max {scale * s['max']:.{digits}f})")
    return "\n".join(lines)


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


if __name__ == "__main__":
    sys.exit(main())
