"""Training and inference throughput of ConvSNN: compiled kernels vs the NumPy baseline, and
vs the kernels of the previous revision or of a -march=native build.

    python bench/throughput.py [--presets default seed nir] [--threads N] [--repeats 5]
                               [--train-images N] [--test-images N] [--json out.json]
                               [--models RUN/model.h5 ...] [--cpu-time]
                               [--baseline REV | --no-baseline] [--baseline-dir DIR]
    python bench/throughput.py --native-build DIR [--presets ...] [--cpu-time]

Both backends run in the same process, on the same data, with the same preset and thread
count, their timed runs alternating (kernels, NumPy, kernels, ...) so that both see the same
machine: on a shared VM the speed of the neighbours drifts within a minute. Each img/s figure
is the median of ``--repeats`` timed runs after one warm-up run; each ratio is the median of
the ``--repeats`` ratios of neighbouring runs, printed with their range.
Training = ``fit`` for one epoch over the images (forward, backward, optimiser, shuffling,
augmentation; no evaluation), inference = ``evaluate`` (forward + loss + rates). MNIST is
used if it is in the local cache, otherwise a synthetic stand-in (reported as such).
The NumPy baseline gets fewer images (it is slower); rates are per image, so this is fair.

A fresh model fires more than a trained one, and the spike-driven kernels' cost follows the
spike count (the baseline's dense products do not), so ``--models`` also measures saved,
trained models (e.g. the README's runs): both backends load the same file, inference is
``evaluate`` and training is one more epoch of ``fit`` over the training images.

Every measurement is also checked against the targets of the project's issue: >= 5x the
baseline, and an absolute rate (halved on machines without AVX-512, as the project's
performance notes expect); the verdicts are printed and kept in the JSON.

Then, unless ``--no-baseline``, each preset's kernels are compared with those of an earlier
revision (``--baseline REV``, any git revision; by default ``BASELINE_REV``, the revision
before the network description replaced the fixed network): the revision is exported from git
into ``--baseline-dir`` (default ``bench/.baseline-<sha>/``, git-ignored) and built there
with its own setup.py, once (a few minutes; reused afterwards). Target: >= 0.95x.

``--native-build DIR`` instead compares the build this script imports (the portable default
build, its kernel variant chosen at run time) with a ``SNNFAST_NATIVE=1`` (``-march=native``)
build of the same source: DIR receives a copy of the source tree (only changed files are
copied, so an up-to-date DIR is not recompiled) and is built in place. With ``--native-build``
only this comparison is measured (no NumPy baseline, no earlier revision). Target: >= 0.95x.

Both comparisons of two builds work alike: each measurement is a subprocess that imports
one tree's snnfast (PYTHONPATH = that tree, working directory a temporary one), makes a fresh
model of the preset (``ConvSNN(preset, seed=0, n_threads=...)``, API that every revision
has), runs one warm-up epoch and evaluation, then times one training epoch and one
evaluation; the subprocesses of the two trees alternate, ``--repeats`` of each, and the ratio
(this tree / the other) is the median of the ratios of neighbouring runs, printed with its
range, the threads, the CPU model and the load average. ``--cpu-time`` measures them with
one thread and the calling thread's CPU time instead of wall time: the per-core cost, robust
when other processes load the machine (wall-clock figures with 2 threads then vary by tens of
percent).
"""
import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _timing import alternate_times, bench_data  # bench/_timing.py (the script directory is on sys.path)


def _model(preset, backend, threads, model):
    """A fresh model of ``preset`` on ``backend``, or the saved ``model`` loaded into it."""
    from snnfast.convsnn import ConvSNN
    if model is None:
        m = ConvSNN(preset, seed=0, n_threads=threads, backend=backend)
    else:
        m = ConvSNN.load(model, n_threads=threads, backend=backend)
    if m.backend != backend:
        raise RuntimeError(f"backend {backend!r} not available")
    return m


def bench_pair(preset, threads, data, repeats, model=None):
    """Training and inference of the two backends, timed alternately (see the module doc).

    ``data``: backend -> (Xtr, ytr, Xte, yte). Training is one more epoch of ``fit`` per
    run, inference ``evaluate``."""
    models = {b: _model(preset, b, threads, model) for b in data}
    ev = {}

    def train(b):
        Xtr, ytr = data[b][:2]
        return lambda: models[b].fit(Xtr, ytr, epochs=models[b].epoch_ + 1)

    def infer(b):
        def run():
            ev[b] = models[b].evaluate(*data[b][2:])
        return run
    t_train = alternate_times({b: train(b) for b in data}, repeats)
    t_inf = alternate_times({b: infer(b) for b in data}, repeats)
    out = {}
    for b, (Xtr, _, Xte, _) in data.items():
        out[b] = {"train_img_s": len(Xtr) / statistics.median(t_train[b]),
                  "infer_img_s": len(Xte) / statistics.median(t_inf[b]),
                  "train_times_s": t_train[b], "infer_times_s": t_inf[b],
                  "n_train": len(Xtr), "n_infer": len(Xte),
                  "batch_size": models[b].config.batch_size, "preset": models[b].config.preset,
                  "rate_input": ev[b]["rate_input"], "rate_conv": ev[b]["rate_conv"],
                  "rate_hidden": ev[b]["rate_hidden"]}
    for kind, times, n in (("train", t_train, "n_train"), ("infer", t_inf, "n_infer")):
        # per-run ratios of img/s: (n_k / t_k) / (n_n / t_n)
        scale = out["kernels"][n] / out["numpy"][n]
        pairs = [scale * tn / tk for tk, tn in zip(times["kernels"], times["numpy"])]
        out[f"{kind}_speedup"] = statistics.median(pairs)
        out[f"{kind}_speedup_runs"] = pairs
    return out


# Issue #3's targets (2 cores, MNIST, T = 10, training batch 64): >= 5x the NumPy baseline
# measured in the same run, and >= 15 000 / 30 000 img/s (training / inference) on the
# project's AVX-512 machine; its performance notes expect about half of that on an AVX2 one.
RATIO_TARGET = 5.0
IMG_S_TARGETS = {"train": 15000.0, "infer": 30000.0}


def img_s_targets(simd):
    """The img/s targets on a machine of SIMD level ``simd``: halved without AVX-512."""
    scale = 1.0 if simd == "avx512f" else 0.5
    return {kind: v * scale for kind, v in IMG_S_TARGETS.items()}


def targets(r, simd):
    """Each measurement of ``r`` (a ``bench_pair`` result) against the issue's targets."""
    out = {}
    for kind, need in img_s_targets(simd).items():
        ratio, img_s = r[f"{kind}_speedup"], r["kernels"][f"{kind}_img_s"]
        out[kind] = {"ratio": ratio, "ratio_target": RATIO_TARGET,
                     "ratio_met": ratio >= RATIO_TARGET, "img_s": img_s,
                     "img_s_target": need, "img_s_met": img_s >= need}
    return out


def _verdict(t):
    def word(ok):
        return "met" if ok else "MISSED"
    return (f"x{t['ratio']:.1f} vs >= x{t['ratio_target']:.0f} {word(t['ratio_met'])}, "
            f"{t['img_s']:.0f} vs >= {t['img_s_target']:.0f} img/s {word(t['img_s_met'])}")


def _ratio(r, kind):
    runs = r[f"{kind}_speedup_runs"]
    spread = f" ({min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else ""
    return f"x{r[f'{kind}_speedup']:.1f}{spread}"


# --native-build: the default (dispatched) build must reach this share of a -march=native build
NATIVE_RATIO_TARGET = 0.95
ROOT = Path(__file__).resolve().parent.parent
# what an in-place build of the source tree needs (setup.py, its metadata, the package, the
# data checksums that snnfast.datasets reads in a source tree)
SOURCE_ITEMS = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "ext",
                "snnfast", "data"]
BUILD_OUTPUTS = (".so", ".pyd", ".c", ".o", ".pyc")


def _sync_tree(src, dst):
    """Copy the files of ``src`` that differ into ``dst`` (with their times, so that an
    up-to-date build in ``dst`` is not redone); build outputs are not copied."""
    for f in sorted(Path(src).rglob("*")) if Path(src).is_dir() else [Path(src)]:
        rel = f.relative_to(Path(src).parent)
        if (f.is_dir() or f.name.endswith(BUILD_OUTPUTS) or "__pycache__" in rel.parts
                or "_isa" in rel.parts or f.name == "_build_info.py"):
            continue
        out = Path(dst) / rel
        if out.exists() and out.read_bytes() == f.read_bytes():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out)


def build_info_of(root):
    """``snnfast/_build_info.py`` of the tree ``root`` as a dict ({} if it was never built)."""
    info = Path(root) / "snnfast" / "_build_info.py"
    if not info.exists():
        return {}
    ns = {}
    exec(info.read_text(), ns)                 # a file setup.py wrote: plain assignments
    return {k: v for k, v in ns.items() if k.isupper()}


def _build_in_place(dir_, env, what):
    """``setup.py build_ext --inplace`` in ``dir_`` (its own setup.py), or SystemExit."""
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dir_,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{what}: the build in {dir_} failed:\n{r.stderr[-3000:]}")


def native_build(dir_):
    """Copy this source tree into ``dir_`` and build it in place with SNNFAST_NATIVE=1."""
    if not (ROOT / "setup.py").exists():
        raise SystemExit("--native-build needs the source tree (setup.py) next to bench/")
    dir_ = Path(dir_).resolve()
    if dir_ == ROOT:
        raise SystemExit("--native-build: DIR must not be the source tree itself")
    for item in SOURCE_ITEMS:
        if (ROOT / item).exists():
            _sync_tree(ROOT / item, dir_)
    print(f"building the -march=native copy in {dir_} (SNNFAST_NATIVE=1; a few minutes the "
          "first time)", flush=True)
    _build_in_place(dir_, dict(os.environ, SNNFAST_NATIVE="1"), "--native-build")
    if build_info_of(dir_).get("MODE") != "native":
        raise SystemExit(f"--native-build: {dir_} is not a SNNFAST_NATIVE=1 build")
    return dir_


# The revision before the network-description work began (2026-11-24): the last one whose
# kernels were written for the fixed network of the three presets. The description-driven
# kernels must keep >= 0.95x of its speed for every preset (issue #20), measured in one run.
BASELINE_REV = "23f1210"
BASELINE_RATIO_TARGET = 0.95
# written into a baseline directory: the full sha once exported, then "built" once built
BASELINE_STAMP = ".snnfast-baseline"


def _git(*args, error=None):
    """Output of ``git -C ROOT args``, or SystemExit with ``error`` (default: git's own)."""
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    except OSError as exc:
        raise SystemExit(f"--baseline needs git: {exc}")
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(error or f"--baseline: git {args[0]} failed: "
                         f"{msg[-1] if msg else 'exit code ' + str(r.returncode)}")
    return r.stdout


def baseline_sha(rev):
    """The full sha of the git revision ``rev`` of this source tree, or SystemExit."""
    error = f"--baseline: {rev!r} is not a commit of the git repository of {ROOT}"
    if rev.startswith("-"):
        raise SystemExit(error)
    _git("rev-parse", "--git-dir", error=f"--baseline: {ROOT} is not a git checkout (an "
         "unpacked sdist?): give --no-baseline")
    return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}",
                error=error).decode().strip()


def baseline_state(dir_, sha):
    """What ``dir_`` needs to hold the built revision ``sha``: "ready" (built), "build"
    (exported, not yet built) or "export" (absent or empty); SystemExit if it holds anything
    else (another revision, or files this script did not put there: never overwritten)."""
    dir_ = Path(dir_)
    if not dir_.exists() or (dir_.is_dir() and not any(dir_.iterdir())):
        return "export"
    stamp = dir_ / BASELINE_STAMP
    if not stamp.is_file():
        raise SystemExit(f"--baseline-dir: {dir_} is not empty and holds no baseline build "
                         "of this script; give an empty or new directory")
    words = stamp.read_text().split()
    if not words or words[0] != sha:
        held = words[0][:12] if words else "nothing"
        raise SystemExit(f"--baseline-dir: {dir_} holds revision {held}, not {sha[:12]}; "
                         "give another directory or remove it")
    return "ready" if words[1:] == ["built"] else "build"


def baseline_build(rev, dir_=None):
    """The git revision ``rev`` exported into ``dir_`` and built there with its own setup.py,
    unless that was done already. Returns (directory, full sha)."""
    sha = baseline_sha(rev)
    dir_ = Path(dir_ or ROOT / "bench" / f".baseline-{sha[:12]}").resolve()
    state = baseline_state(dir_, sha)
    if state == "export":
        if not _git("ls-tree", "--name-only", sha, "setup.py").strip():
            raise SystemExit(f"--baseline: revision {rev} has no setup.py to build")
        dir_.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", sha))) as tar:
            tar.extractall(dir_, **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                    else {}))
        (dir_ / BASELINE_STAMP).write_text(sha + "\n")
    if state != "ready":
        print(f"building revision {rev} ({sha[:12]}) in {dir_} with its own setup.py (a few "
              "minutes, once; reused afterwards)", flush=True)
        _build_in_place(dir_, dict(os.environ), "--baseline")
        (dir_ / BASELINE_STAMP).write_text(sha + " built\n")
    return dir_, sha


def _worker(args):
    """--worker: one warm-up, then one timed training epoch and one evaluation of the snnfast
    this process imports (this tree's or another revision's: only API that both have); a JSON
    line on stdout."""
    import snnfast
    threads = 1 if args.cpu_time else snnfast.effective_n_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    _, Xtr, ytr, Xte, yte = bench_data(args.train_images, args.test_images)
    m = _model(args.worker, "kernels", threads, None)
    m.fit(Xtr, ytr, epochs=1)
    m.evaluate(Xte, yte)
    t0 = clock()
    m.fit(Xtr, ytr, epochs=m.epoch_ + 1)
    t1 = clock()
    m.evaluate(Xte, yte)
    t2 = clock()
    try:
        from snnfast import _dispatch        # revisions before the portable build have none
        level = _dispatch.chosen_level()
    except ImportError:
        level = None
    info = build_info_of(Path(snnfast.__file__).parent.parent)
    print(json.dumps({"train_img_s": len(Xtr) / (t1 - t0), "infer_img_s": len(Xte) / (t2 - t1),
                      "threads": threads, "level": level,
                      "mode": info.get("MODE"), "cflags": info.get("CFLAGS"),
                      "file": snnfast.__file__}))
    return 0


def _run_worker(root, preset, args):
    """One --worker subprocess on the snnfast of the tree ``root`` only: PYTHONPATH is that
    tree, the working directory an empty temporary one (so no other tree is importable); the
    OpenMP wait settings come from this process's environment (openmp_wait_defaults)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", preset,
           "--train-images", str(args.train_images), "--test-images", str(args.test_images)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.cpu_time:
        cmd += ["--cpu-time"]
    env = dict(os.environ, PYTHONPATH=str(root))
    with tempfile.TemporaryDirectory() as cwd:
        r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the benchmark of {root} failed:\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    if Path(d["file"]).resolve().parent.parent != Path(root).resolve():
        raise SystemExit(f"the subprocess imported {d['file']}, not the build in {root}")
    return d


def ratio_summary(runs, ref_runs, kind, target):
    """Median and all ratios this tree / the other of ``kind`` img/s of neighbouring runs
    (``runs[i]`` and ``ref_runs[i]``), the median img/s of each and the verdict."""
    pairs = [d[f"{kind}_img_s"] / n[f"{kind}_img_s"] for d, n in zip(runs, ref_runs)]
    ratio = statistics.median(pairs)
    return {"ratio": ratio, "ratios": pairs,
            "img_s": statistics.median(d[f"{kind}_img_s"] for d in runs),
            "ref_img_s": statistics.median(n[f"{kind}_img_s"] for n in ref_runs),
            "target": target, "met": ratio >= target}


def _build_label(run):
    """How the tree of a worker result was built, for the printed header."""
    level = f"kernels {run['level']}, " if run["level"] else ""
    flags = " ".join(run["cflags"]) if run["cflags"] else "flags unknown"
    return f"{level}{flags}"


def compare_builds(preset, roots, args, target):
    """This tree (``roots["this"]``) against the other tree of ``roots`` (name -> root),
    alternating their --worker subprocesses, ``args.repeats`` of each; prints and returns the
    ratios per kind (``ratio_summary``) and all runs."""
    (ref_name, _), = [(k, v) for k, v in roots.items() if k != "this"]
    runs = {name: [] for name in roots}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, root in roots.items():
            runs[name].append(_run_worker(root, preset, args))
    load.append(os.getloadavg()[0])
    out = {k: ratio_summary(runs["this"], runs[ref_name], k, target)
           for k in ("train", "infer")}
    out.update(runs=runs, load_average=load)
    d, n = runs["this"][0], runs[ref_name][0]
    clock = "thread CPU time" if args.cpu_time else "wall time"
    print(f"[{preset}] this build ({_build_label(d)}) vs {ref_name} ({_build_label(n)}); "
          f"threads {d['threads']}, {clock}, load average {load[0]:.1f} -> {load[1]:.1f}:")
    for kind, label in (("train", "training "), ("infer", "inference")):
        r = out[kind]
        print(f"[{preset}] {label} : this {r['img_s']:8.0f} img/s   {ref_name} "
              f"{r['ref_img_s']:8.0f} img/s   x{r['ratio']:.3f} ({min(r['ratios']):.3f}-"
              f"{max(r['ratios']):.3f}) vs >= x{target} {'met' if r['met'] else 'MISSED'}",
              flush=True)
    return out


def _this_tree(mode=None):
    """The source tree whose snnfast this script imports (built as ``mode`` if given)."""
    import snnfast
    root = Path(snnfast.__file__).resolve().parent.parent
    if mode is not None and build_info_of(root).get("MODE") != mode:
        raise SystemExit(f"--native-build: {root} is not a default (dispatched) build")
    return root


def _machine_line(args):
    from snnfast._config import config_dict
    cfg = config_dict()
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; "
          f"{args.train_images} training / {args.test_images} test images; {args.repeats} "
          "alternating subprocess runs per build")
    return cfg


def main_native(args):
    """--native-build: the default build against a -march=native one, per preset."""
    roots = {"this": _this_tree("dispatch"), "native build": native_build(args.native_build)}
    cfg = _machine_line(args)
    results = {"config": cfg, "native_build": {
        preset: compare_builds(preset, roots, args, NATIVE_RATIO_TARGET)
        for preset in args.presets}}
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, results)
    return 0


def compare_baseline(args, baseline):
    """Each preset of ``args.presets`` on this tree against the built revision ``baseline``
    ((directory, sha)); the results for the JSON."""
    dir_, sha = baseline
    print(f"\nthis tree against revision {args.baseline} ({sha[:12]}), built in {dir_}:")
    _machine_line(args)
    roots = {"this": _this_tree(), f"rev {sha[:7]}": dir_}
    return {"rev": args.baseline, "sha": sha, "dir": str(dir_),
            "presets": {preset: compare_builds(preset, roots, args, BASELINE_RATIO_TARGET)
                        for preset in args.presets}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["default", "seed", "nir"],
                   choices=["default", "seed", "nir"])
    p.add_argument("--threads", type=int, default=None, help="threads (default: the rule)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs per backend and measurement (default 5: on a shared "
                   "machine the ratio of one pair of runs can be 30 %% off the median)")
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--test-images", type=int, default=8192)
    p.add_argument("--numpy-fraction", type=float, default=0.25,
                   help="share of the images the NumPy baseline processes")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--models", nargs="*", default=[], metavar="MODEL_H5",
                   help="also measure these saved models (after the --presets)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline", default=None, metavar="REV",
                      help="compare the presets' kernels with those of this git revision "
                      f"(default {BASELINE_REV}, the revision before the network description)")
    base.add_argument("--no-baseline", action="store_true",
                      help="skip the comparison with an earlier revision")
    p.add_argument("--baseline-dir", default=None, metavar="DIR",
                   help="where the revision is exported and built (default "
                   "bench/.baseline-<sha>; reused when it holds that revision built)")
    p.add_argument("--native-build", default=None, metavar="DIR",
                   help="instead, compare this (default, dispatched) build with a "
                   "SNNFAST_NATIVE=1 build of the same source, made in DIR (reused when up to "
                   "date)")
    p.add_argument("--cpu-time", action="store_true",
                   help="in the comparisons of two builds (earlier revision, --native-build): "
                   "one thread, timed by the thread's CPU time")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:                # its environment (OpenMP wait settings) is this one's
        return _worker(args)
    from snnfast._cli import check_output_arg, openmp_wait_defaults
    openmp_wait_defaults()         # as the command-line tools do, before any kernel loads OpenMP
    check_output_arg(p, "--json", args.json)   # before the measurements
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not args.presets and not args.models:
        p.error("nothing to measure: give --presets and/or --models")
    if args.native_build and (args.baseline or args.baseline_dir or args.no_baseline):
        p.error("--native-build measures only that comparison: no --baseline, --baseline-dir "
                "or --no-baseline with it")
    if args.no_baseline and args.baseline_dir:
        p.error("--baseline-dir with --no-baseline: nothing would be built there")
    if args.native_build:
        return main_native(args)
    if args.cpu_time and args.no_baseline:
        p.error("--cpu-time is an option of the comparisons of two builds (not with "
                "--no-baseline)")
    args.baseline = args.baseline or BASELINE_REV
    from snnfast.convsnn import ConvSNN
    for path in args.models:       # fail now, not after the presets' minutes of timing
        try:
            ConvSNN.load(path)     # a clear ValueError for missing, foreign or damaged files
        except ValueError as exc:
            p.error(f"--models: {exc}")

    # the earlier revision is built first: a wrong revision fails now, not after the timing
    baseline = None if args.no_baseline or not args.presets else baseline_build(
        args.baseline, args.baseline_dir)

    from snnfast import effective_n_threads
    from snnfast._config import config_dict
    cfg = config_dict()
    threads = effective_n_threads(args.threads)
    source, Xtr, ytr, Xte, yte = bench_data(args.train_images, args.test_images)
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; threads {threads}; "
          f"openmp {cfg['openmp']} ({cfg['omp_wait']}); data {source}")
    need = img_s_targets(cfg["simd"])
    half = need != IMG_S_TARGETS
    print(f"targets (2 cores, MNIST): >= x{RATIO_TARGET:.0f} the NumPy baseline; training >= "
          f"{need['train']:.0f} and inference >= {need['infer']:.0f} img/s (the issue asks "
          f"{IMG_S_TARGETS['train']:.0f} / {IMG_S_TARGETS['infer']:.0f} of the AVX-512 machine"
          f"{'; halved, as there is no AVX-512 here' if half else ''})")
    nf = max(64, int(args.train_images * args.numpy_fraction))
    nt = max(256, int(args.test_images * args.numpy_fraction))
    results = {"config": cfg, "threads": threads, "data": source, "presets": {}, "models": {}}
    runs = [(preset, None) for preset in args.presets] + [(None, path) for path in args.models]
    for preset, model in runs:
        r = bench_pair(preset, threads, {"kernels": (Xtr, ytr, Xte, yte),
                                         "numpy": (Xtr[:nf], ytr[:nf], Xte[:nt], yte[:nt])},
                       args.repeats, model)
        if model is None:
            results["presets"][preset] = r
            tag, rates = preset, "untrained->after the timed epochs"
        else:
            results["models"][model] = r
            tag = f"{r['kernels']['preset']} model {model}"
            rates = "trained model, after the timed epochs"
        k, n = r["kernels"], r["numpy"]
        print(f"[{tag}] training  : kernels {k['train_img_s']:8.0f} img/s   numpy "
              f"{n['train_img_s']:7.0f} img/s   {_ratio(r, 'train')}  (batch "
              f"{k['batch_size']})")
        print(f"[{tag}] inference : kernels {k['infer_img_s']:8.0f} img/s   numpy "
              f"{n['infer_img_s']:7.0f} img/s   {_ratio(r, 'infer')}")
        print(f"[{tag}] spike rates ({rates}): input "
              f"{100 * k['rate_input']:.2f}%/step  conv {100 * k['rate_conv']:.2f}%/step  "
              f"hidden {100 * k['rate_hidden']:.2f}%/update")
        r["targets"] = t = targets(r, cfg["simd"])
        print(f"[{tag}] targets   : training {_verdict(t['train'])}; "
              f"inference {_verdict(t['infer'])}")
    if baseline is not None:
        results["baseline"] = compare_baseline(args, baseline)
    try:
        import resource
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {results['peak_rss_mib']:.0f} MiB")
    except ImportError:
        pass
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
