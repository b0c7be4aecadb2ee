"""The Optuna study of ``python -m snnfast.sweep SWEEP.toml`` (see :mod:`snnfast.sweep`).

Every trial is an ordinary ``python -m snnfast.train`` run directory, trained in the worker's
process by :func:`snnfast.train.main`. Workers (here or on other machines) share the study
through an Optuna RDB storage; a heartbeat marks the trial of a killed worker as failed, and
that trial is then run again with the same parameters, so a kill loses no finished trial.
"""
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._cli import run_dir_error
from ._utils import atomic_write_bytes, write_json
from .sweep import RUN_FIELDS, call_train, csv_bytes, run_figures, worker_threads

__all__ = ["load_sweep", "SweepError", "run", "OBJECTIVES"]

# the second objective (minimised): its key in ``run_figures`` and its axis label
OBJECTIVES = {"energy": ("energy_uJ", "energy per inference (uJ, horowitz45_fp32)"),
              "synops": ("synops", "synaptic operations per inference")}
SAMPLERS = ("tpe", "nsga2", "random")
# set by the sweep for each trial; a TOML may not set them
RESERVED = ("out", "resume", "threads", "no_progress")
MISSING_OPTUNA = ("python -m snnfast.sweep SWEEP.toml needs Optuna, an optional dependency: "
                  "pip install 'snnfast[sweep]'")


class SweepError(ValueError):
    """A SWEEP.toml that cannot describe a study (the message names the entry)."""


class TrialFailed(RuntimeError):
    """A trial's training failed; Optuna records the trial as FAIL and the study goes on."""


def import_optuna():
    """The ``optuna`` module, or SystemExit with a one-line message if it is not installed."""
    try:
        import optuna
    except ImportError:
        raise SystemExit(f"error: {MISSING_OPTUNA}") from None
    return optuna


# ----------------------------------------------------------------------------- SWEEP.toml
def _read_toml(path):
    if sys.version_info >= (3, 11):
        import tomllib
    else:   # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise SweepError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path} is not valid TOML: {exc}") from None


def load_sweep(path):
    """Read and check a SWEEP.toml; return ``{"study": ..., "train": ..., "params": ...}``.

    Raises :class:`SweepError` naming the first bad entry, before any training starts.
    """
    doc = _read_toml(path)
    extra = sorted(set(doc) - {"study", "train", "params"})
    if extra:
        raise SweepError(f"{path}: unknown table(s) {', '.join(extra)}; expected [study], "
                         f"[train] and [params]")
    study = dict(doc.get("study", {}))
    unknown = sorted(set(study) - {"name", "trials", "objective", "sampler", "seed"})
    if unknown:
        raise SweepError(f"[study]: unknown key(s) {', '.join(unknown)}")
    study.setdefault("name", Path(path).stem)
    study.setdefault("objective", "energy")
    study.setdefault("sampler", "tpe")
    study.setdefault("seed", 0)
    study.setdefault("trials", 20)
    if study["objective"] not in OBJECTIVES:
        raise SweepError(f"[study] objective = {study['objective']!r}; expected one of "
                         f"{', '.join(OBJECTIVES)}")
    if study["sampler"] not in SAMPLERS:
        raise SweepError(f"[study] sampler = {study['sampler']!r}; expected one of "
                         f"{', '.join(SAMPLERS)}")
    for key in ("trials", "seed"):
        if isinstance(study[key], bool) or not isinstance(study[key], int) or study[key] < 0:
            raise SweepError(f"[study] {key} must be an integer >= 0, got {study[key]!r}")
    train = dict(doc.get("train", {}))
    params = {name: _check_param(name, spec) for name, spec in doc.get("params", {}).items()}
    if not params:
        raise SweepError(f"{path}: [params] is empty: a study needs at least one parameter")
    for key in RESERVED:
        if key in train or key in params:
            raise SweepError(f"{key} is set by the sweep for each trial; remove it from {path}")
    both = sorted(set(train) & set(params))
    if both:
        raise SweepError(f"{', '.join(both)} both fixed in [train] and searched in [params]")
    spec = {"study": study, "train": train, "params": params}
    _check_train_options(spec)
    return spec


def _check_param(name, spec):
    """A [params] entry: ``{type = "float"|"int", low, high[, log, step]}`` or
    ``{type = "categorical", choices = [...]}``."""
    if not isinstance(spec, dict):
        raise SweepError(f"[params] {name} must be a table like {{type = \"float\", low = 0.1, "
                         f"high = 1.0}}")
    kind = spec.get("type")
    if kind == "categorical":
        keys = {"type", "choices"}
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise SweepError(f"[params] {name}: choices must be a non-empty list")
    elif kind in ("float", "int"):
        keys = {"type", "low", "high", "log", "step"}
        num = float if kind == "float" else int
        for bound in ("low", "high"):
            v = spec.get(bound)
            if isinstance(v, bool) or not isinstance(v, (int, float) if num is float else int):
                raise SweepError(f"[params] {name}: {bound} must be a{'n integer' if num is int else ' number'}"
                                 f", got {v!r}")
        if not spec["low"] <= spec["high"]:
            raise SweepError(f"[params] {name}: low {spec['low']} > high {spec['high']}")
        if spec.get("log") and spec["low"] <= 0:
            raise SweepError(f"[params] {name}: log = true needs low > 0")
    else:
        raise SweepError(f"[params] {name}: type = {kind!r}; expected float, int or categorical")
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise SweepError(f"[params] {name}: unknown key(s) {', '.join(unknown)}")
    return dict(spec)


def _suggest(trial, name, spec):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    suggest = trial.suggest_float if spec["type"] == "float" else trial.suggest_int
    kw = {k: spec[k] for k in ("log", "step") if k in spec}
    return suggest(name, spec["low"], spec["high"], **kw)


def train_argv(options, run_dir, threads):
    """The ``python -m snnfast.train`` arguments of one trial.

    ``options`` (the [train] table and the trial's parameters) become the train flag of the
    same name (``batch_size`` -> ``--batch-size``; ``true`` -> a bare flag) where one exists,
    and ``--set FIELD=VALUE`` (any ConvSNNConfig field) otherwise.
    """
    from . import train
    flags = train.build_parser()._option_string_actions
    argv = ["--out", str(run_dir), "--threads", str(threads), "--no-progress"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if flag not in flags or flag == "--set":
            argv += ["--set", f"{key}={json.dumps(value)}"]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def _check_train_options(spec):
    """Check the [train] table with every parameter at its low end / first choice, as the
    trials will pass them, so that a typo fails now rather than in every trial."""
    from . import train
    from .convsnn import make_config
    probe = dict(spec["train"])
    for name, p in spec["params"].items():
        probe[name] = p["choices"][0] if p["type"] == "categorical" else p["low"]
    argv = train_argv(probe, "RUN", 1)
    parser = train.build_parser()

    def error(message):
        raise SweepError(f"the training options are not valid: {message}")
    parser.error = error
    args = parser.parse_args(argv)
    train._check_args(parser, args)          # the defaults and refusals train itself applies
    overrides = {k: v for k, v in args.overrides}
    try:
        make_config(args.preset, **overrides)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"the training options are not valid: {exc}") from None
    if args.val_size == 0:
        raise SweepError("[train] val_size = 0: the study's objective is the validation "
                         "accuracy, so it needs a validation set")


# ----------------------------------------------------------------------------- the study
def open_study(optuna, spec, storage_url, name, heartbeat, create):
    """The study ``name`` in ``storage_url`` (an RDB URL), with the heartbeat that detects
    the trials of killed workers and retries them once each."""
    from optuna import storages
    kw = {}
    if storage_url.startswith("sqlite"):
        # several processes write one SQLite file: wait for its lock instead of failing
        kw["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):     # Optuna >= 4.9
        kw["heartbeat_stale_trial_callback"] = storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1)
    else:
        kw["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=1)
    storage = storages.RDBStorage(storage_url, heartbeat_interval=heartbeat,
                                  grace_period=3 * heartbeat, **kw)
    study_cfg = spec["study"]
    if create:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    directions=["maximize", "minimize"])
        study.set_user_attr("objectives", ["val_acc", study_cfg["objective"]])
    else:
        study = optuna.load_study(study_name=name, storage=storage)
    if study.user_attrs.get("objectives") != ["val_acc", study_cfg["objective"]]:
        raise SweepError(f"study {name!r} in {storage_url} optimises "
                         f"{study.user_attrs.get('objectives')}, not this TOML's objectives")
    return study


def _sampler(optuna, cfg, worker_index):
    # each worker its own seed, so that two workers do not propose the same points
    seed = cfg["seed"] + worker_index
    return {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "random": optuna.samplers.RandomSampler}[cfg["sampler"]](seed=seed)


def trial_counts(optuna, study):
    """``(done, running)``: finished trials that count towards the total (completed, or
    failed in training; not the failures of killed workers, which are retried), and
    trials being run."""
    S = optuna.trial.TrialState
    done = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == S.COMPLETE or (t.state == S.FAIL and "error" in t.user_attrs):
            done += 1
        elif t.state == S.RUNNING:
            running += 1
    return done, running


def _objective(optuna, spec, out, threads, n_trials):
    key, _ = OBJECTIVES[spec["study"]["objective"]]

    def objective(trial):
        # A heartbeat of our own before anything else, then a mark of it: a marked trial has a
        # heartbeat, so the storage fails it once its worker is dead. (A worker killed before
        # the heartbeat thread's first beat would leave a RUNNING trial that never goes
        # stale; _fail_orphans takes those, which have no mark.) The mark is the trial's own
        # number: a retried trial inherits the user attributes of the one it retries.
        trial.study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("beat", trial.number)
        S = optuna.trial.TrialState
        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and (t.state in (S.COMPLETE, S.RUNNING) or
                                                 (t.state == S.FAIL and "error" in t.user_attrs))]
        if len(ahead) >= n_trials:      # another worker took the last trial meanwhile
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the study has its trials")
        params = {n: _suggest(trial, n, p) for n, p in spec["params"].items()}
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        argv = train_argv({**spec["train"], **params}, run_dir, threads)
        rc = _train_logged(trial, argv, run_dir)
        figs = run_figures(run_dir) if rc == 0 else None
        if figs is None or figs[key] is None or figs["best_val_acc"] is None:
            why = (f"training exited with code {rc}" if rc else "the run has no validation "
                   f"accuracy or {key}")
            trial.set_user_attr("error", f"{why}; see {run_dir / 'train.log'}")
            print(f"trial {trial.number}: FAILED, {trial.user_attrs['error']}", flush=True)
            raise TrialFailed(why)
        for k, v in figs.items():
            trial.set_user_attr(k, v)
        print(f"trial {trial.number}: val {100 * figs['best_val_acc']:.2f}%  {key} "
              f"{figs[key]:.4g}  {params}", flush=True)
        return figs["best_val_acc"], figs[key]
    return objective


def _train_logged(trial, argv, run_dir):
    """Train in this process with the run's output in RUN_DIR/train.log; the exit code."""
    err = run_dir_error(run_dir)
    if err:
        trial.set_user_attr("error", err)
        raise TrialFailed(err)
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            rc = call_train(argv)
        except Exception as exc:     # a bug or MemoryError: recorded, the study goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
    if rc == 130:                    # Ctrl-C: stop this worker (train kept its checkpoint)
        raise KeyboardInterrupt
    return rc


def _fail_orphans(optuna, study, grace):
    """Fail the RUNNING trials whose worker died before the objective's first line.

    Such a trial has no heartbeat, so Optuna never finds it stale, and it would keep the
    study waiting for ever; it has no ``beat`` mark of its own either (the objective records
    a heartbeat, then the mark, first thing). It ran nothing, so it is not retried. A live
    worker gets past those two lines within milliseconds; ``grace`` is seconds.
    """
    S = optuna.trial.TrialState
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        started = t.datetime_start
        if (t.user_attrs.get("beat") != t.number and started is not None
                and (now - started).total_seconds() > grace):
            study._storage.set_trial_state_values(t._trial_id, S.FAIL)


def work(optuna, study, spec, out, threads, n_trials, heartbeat):
    """Run trials until ``n_trials`` count as done; wait while others run the last ones (a
    dead worker's trial is failed by the heartbeat after its grace period, then retried)."""
    from optuna.storages import fail_stale_trials
    objective = _objective(optuna, spec, out, threads, n_trials)
    while True:
        fail_stale_trials(study)
        _fail_orphans(optuna, study, 3 * heartbeat)
        done, running = trial_counts(optuna, study)
        if done >= n_trials:
            return
        if done + running >= n_trials:
            time.sleep(min(heartbeat, 5))
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


# ----------------------------------------------------------------------------- report
def trial_rows(optuna, study):
    """One dict per trial (pruned surplus trials left out), for trials.csv/.json."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == optuna.trial.TrialState.WAITING:
            continue
        row = {"number": t.number, "state": t.state.name,
               "val_acc": t.values[0] if t.values else None,
               "objective_2": t.values[1] if t.values else None,
               "duration_s": t.duration.total_seconds() if t.duration else None}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row.update({k: t.user_attrs.get(k) for k in RUN_FIELDS + ("run_dir", "worker", "error")})
        rows.append(row)
    return rows


def report(optuna, study, spec, out):
    """Write trials.csv, trials.json, best.json and pareto_front.png; print the front."""
    key, label = OBJECTIVES[spec["study"]["objective"]]
    rows = trial_rows(optuna, study)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    write_json(out / "trials.json", {"study": study.study_name, "objectives":
                                     ["val_acc (maximised)", f"{key} (minimised)"],
                                     "trials": rows})
    atomic_write_bytes(out / "trials.csv", csv_bytes(rows, fields))
    front = sorted(study.best_trials, key=lambda t: -t.values[0])
    best = [{"number": t.number, "val_acc": t.values[0], key: t.values[1], "params": t.params,
             "test_acc_best_val_model": t.user_attrs.get("test_acc_best_val_model"),
             "model": str(Path(t.user_attrs["run_dir"]) / "model.h5")} for t in front]
    write_json(out / "best.json", {"pareto_front": best})
    print(f"{len(rows)} trials in study {study.study_name!r}; Pareto front (validation "
          f"accuracy vs {key}; the test accuracy is only reported):")
    for b in best:
        print(f"  trial {b['number']}: val {100 * b['val_acc']:.2f}%  {key} {b[key]:.4g}  "
              f"test {100 * (b['test_acc_best_val_model'] or 0):.2f}%  {b['model']}")
    files = [out / "trials.csv", out / "trials.json", out / "best.json"]
    if best:
        files.append(plot_front(optuna, study, label, out / "pareto_front.png"))
    else:
        print("warning: no trial completed, so there is no Pareto front (the errors are in "
              "trials.csv)", file=sys.stderr)
    print("files: " + "  ".join(map(str, files)))


def plot_front(optuna, study, label, path):
    """Optuna's matplotlib Pareto-front plot of ``study``, saved atomically as ``path``."""
    from .plotting import _pyplot, _save
    _pyplot()                        # the Agg backend before Optuna imports pyplot
    from optuna.visualization.matplotlib import plot_pareto_front
    ax = plot_pareto_front(study, target_names=["validation accuracy", label])
    return _save(ax.figure, path)


# ----------------------------------------------------------------------------- command
def run(parser, args):
    """``python -m snnfast.sweep SWEEP.toml ...`` (``args`` from :func:`sweep.build_parser`)."""
    optuna = import_optuna()
    import warnings
    # the heartbeat and the matplotlib plots are "experimental" in Optuna: say it once, in
    # the docs, not in every worker's output
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    try:
        spec = load_sweep(args.sweep)
    except SweepError as exc:
        parser.error(str(exc))
    name = args.study or spec["study"]["name"]
    n_trials = args.trials or spec["study"]["trials"]
    out = Path(args.out or f"runs/sweep-{name}")
    err = run_dir_error(out)
    if err:
        parser.error(f"--out: {err}")
    storage = args.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    if "://" not in storage:
        parser.error(f"--storage {storage!r} is not a database URL (sqlite:///PATH, "
                     f"postgresql://..., mysql://...)")
    # Optuna logs a traceback for every failed trial; the sweep prints one line instead
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    threads = worker_threads(args.workers, args.threads)
    try:
        study = open_study(optuna, spec, storage, name, args.heartbeat,
                           create=args.worker is None)
    except SweepError as exc:
        parser.error(str(exc))
    except Exception as exc:        # a wrong URL, an unreachable server, a missing driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: cannot open the study storage {storage}: {type(exc).__name__}: "
              f"{first}", file=sys.stderr)
        return 1
    try:
        if args.worker is not None:      # one of the processes started by --workers K
            study.sampler = _sampler(optuna, spec["study"], args.worker)
            work(optuna, study, spec, out, threads, n_trials, args.heartbeat)
            return 0
        print(f"study {name!r} in {storage}: {n_trials} trials, {args.workers} worker(s) x "
              f"{threads} threads -> {out}", flush=True)
        if args.workers == 1:
            study.sampler = _sampler(optuna, spec["study"], 0)
            work(optuna, study, spec, out, threads, n_trials, args.heartbeat)
        else:
            _run_workers(args, storage, name, n_trials, out, threads)
    except KeyboardInterrupt:
        # the interrupted trials are FAIL in the study, not counted: a re-run replaces them
        if args.worker is None:
            print("\ninterrupted: the finished trials are in the study; run the same command "
                  "again to continue it", file=sys.stderr)
        return 130
    done, _ = trial_counts(optuna, study)
    report(optuna, study, spec, out)
    if done < n_trials:
        print(f"error: {done} of {n_trials} trials done (a worker failed, see above); run "
              f"the same command again to continue the study", file=sys.stderr)
        return 1
    return 0


def _run_workers(args, storage, name, n_trials, out, threads):
    """Start ``args.workers`` worker processes on the study and wait for them all."""
    cmd = [sys.executable, "-m", "snnfast.sweep", str(args.sweep), "--storage", storage,
           "--study", name, "--trials", str(n_trials), "--out", str(out), "--threads",
           str(threads), "--heartbeat", str(args.heartbeat)]
    procs = [subprocess.Popen(cmd + ["--worker", str(i)]) for i in range(args.workers)]
    write_json(out / "workers.json", {"pids": [p.pid for p in procs]})
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:        # Ctrl-C reached the workers too: let them record it
        for p in procs:
            p.wait()
        raise
    for i, (p, rc) in enumerate(zip(procs, codes)):
        if rc != 0:
            print(f"warning: worker {i} (pid {p.pid}) exited with code {rc}", file=sys.stderr)
