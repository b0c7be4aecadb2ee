"""How Conv-SNN training and inference time scale with images, threads and batch size.

Three sweeps, each the median of ``--repeats`` timed runs after a short warm-up (256 images):

1. time against the number of images (training: one epoch on n images; inference:
   ``predict`` on n images) with a least-squares line ``t = a + b n``; the scaling is
   called linear when R^2 >= 0.99 and the per-image time of the largest n is within
   25 % of the fitted slope;
2. images/s with 1 and 2 threads (and the speed-up);
3. images/s against the training batch size and the inference batch size
   (``eval_batch_size``).

Usage::

    python bench/scaling.py [--preset default] [--repeats 3] [--out DIR] [--quick]

Uses MNIST when it is in the cache, synthetic uint8 images otherwise (printed). Prints
the CPU model and SIMD level; writes ``scaling.json`` (atomic) and ``scaling.png``.
"""
import argparse
import inspect
import os
import sys
from pathlib import Path

import numpy as np
from _timing import median_time  # bench/_timing.py (the script directory is on sys.path)

from snnfast._cli import openmp_wait_defaults  # noqa: E402

openmp_wait_defaults()     # as the command-line tools do, before any kernel loads OpenMP


def _data(n, dataset, data_dir):
    try:
        from snnfast import datasets
        X, y = datasets.load(dataset, "train", data_dir, download=False)
        return X[:n], y[:n], dataset
    except Exception as exc:  # noqa: BLE001 - any failure falls back to synthetic data
        rng = np.random.default_rng(0)
        X = (rng.random((n, 28, 28)) * 255).astype(np.uint8)
        X[rng.random(X.shape) < 0.8] = 0
        y = rng.integers(0, 10, n).astype(np.uint8)
        return X, y, f"synthetic ({type(exc).__name__}: {exc})"


def _accepts(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _make(preset, threads, seed, **overrides):
    from snnfast.convsnn import ConvSNN
    return ConvSNN(preset=preset, seed=seed, n_threads=threads, **overrides)


def _fit_quiet(model, X, y):
    # fit(epochs=E) trains up to E epochs in total, so ask for one more than done so far
    kw = {"epochs": int(getattr(model, "epoch_", 0)) + 1}
    if _accepts(model.fit, "verbose"):
        kw["verbose"] = False
    model.fit(X, y, **kw)


def _linear_fit(ns, ts):
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    b, a = np.polyfit(ns, ts, 1)
    pred = a + b * ns
    ss_res = float(((ts - pred) ** 2).sum())
    ss_tot = float(((ts - ts.mean()) ** 2).sum()) or 1e-300
    r2 = 1.0 - ss_res / ss_tot
    per_img_last = ts[-1] / ns[-1]
    linear = bool(r2 >= 0.99 and abs(per_img_last - b) <= 0.25 * b)
    return {"intercept_s": float(a), "seconds_per_image": float(b), "r2": r2, "linear": linear}


def sweep_images(args, X, y):
    out = {}
    for mode, ns in (("train", args.train_sizes), ("infer", args.infer_sizes)):
        rows = []
        for n in ns:
            model = _make(args.preset, args.threads, args.seed)
            w = min(n, 256)
            if mode == "train":
                med, all_t = median_time(lambda: _fit_quiet(model, X[:n], y[:n]), args.repeats,
                                    lambda: _fit_quiet(model, X[:w], y[:w]))
            else:
                med, all_t = median_time(lambda: model.predict(X[:n]), args.repeats,
                                    lambda: model.predict(X[:w]))
            rows.append({"n": n, "seconds": med, "all": all_t, "images_per_s": n / med})
            print(f"  {mode:<5} n={n:>6}: {med:8.3f} s  {n / med:9.0f} img/s", flush=True)
        fit = _linear_fit([r["n"] for r in rows], [r["seconds"] for r in rows])
        print(f"  {mode:<5} fit t = {fit['intercept_s']:.3f} s + n x {1e6 * fit['seconds_per_image']:.1f} us,"
              f" R^2 = {fit['r2']:.4f}, linear: {fit['linear']}", flush=True)
        out[mode] = {"points": rows, "fit": fit}
    return out


def sweep_threads(args, X, y):
    out = {"train": [], "infer": []}
    for threads in (1, 2):
        model = _make(args.preset, threads, args.seed)
        n = args.train_sizes[-1]
        med, _ = median_time(lambda: _fit_quiet(model, X[:n], y[:n]), args.repeats,
                        lambda: _fit_quiet(model, X[:256], y[:256]))
        out["train"].append({"threads": threads, "n": n, "seconds": med, "images_per_s": n / med})
        n = args.infer_sizes[-1]
        med, _ = median_time(lambda: model.predict(X[:n]), args.repeats)
        out["infer"].append({"threads": threads, "n": n, "seconds": med, "images_per_s": n / med})
        print(f"  threads {threads}: train {out['train'][-1]['images_per_s']:8.0f} img/s, "
              f"infer {out['infer'][-1]['images_per_s']:8.0f} img/s", flush=True)
    for mode in ("train", "infer"):
        out[mode + "_speedup_2_over_1"] = out[mode][1]["images_per_s"] / out[mode][0]["images_per_s"]
    print(f"  speed-up 2 vs 1 thread: train {out['train_speedup_2_over_1']:.2f}x, "
          f"infer {out['infer_speedup_2_over_1']:.2f}x", flush=True)
    return out


def sweep_batch(args, X, y):
    out = {"train": [], "infer": []}
    n = args.train_sizes[-1]
    for bs in args.batch_sizes:
        model = _make(args.preset, args.threads, args.seed, batch_size=bs)
        med, _ = median_time(lambda: _fit_quiet(model, X[:n], y[:n]), args.repeats,
                        lambda: _fit_quiet(model, X[:256], y[:256]))
        out["train"].append({"batch_size": bs, "n": n, "seconds": med, "images_per_s": n / med})
        print(f"  train batch {bs:>5}: {n / med:8.0f} img/s", flush=True)
    n = args.infer_sizes[-1]
    for bs in args.infer_batch_sizes:
        # the inference batch is the config's eval_batch_size (predict has no batch argument)
        model = _make(args.preset, args.threads, args.seed, eval_batch_size=bs)
        med, _ = median_time(lambda: model.predict(X[:n]), args.repeats)
        out["infer"].append({"batch_size": bs, "n": n, "seconds": med, "images_per_s": n / med})
        print(f"  infer batch {bs:>5}: {n / med:8.0f} img/s", flush=True)
    return out


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for mode, mk, col in (("train", "o", "C0"), ("infer", "s", "C1")):
        pts = res["images"][mode]["points"]
        ns = np.array([p["n"] for p in pts])
        ax.plot(ns, [p["seconds"] for p in pts], mk, color=col, label=f"{mode} (measured)")
        f = res["images"][mode]["fit"]
        grid = np.linspace(0, ns.max(), 50)
        ax.plot(grid, f["intercept_s"] + f["seconds_per_image"] * grid, "-", color=col, alpha=0.6,
                label=f"{mode} fit, R$^2$={f['r2']:.3f}")
    ax.set_xlabel("images")
    ax.set_ylabel("seconds (median)")
    ax.set_title("time vs number of images")
    ax.legend(fontsize=7)
    ax = axes[1]
    for mode in ("train", "infer"):
        pts = res["threads"][mode]
        ax.plot([p["threads"] for p in pts], [p["images_per_s"] for p in pts], "o-", label=mode)
    ax.set_xticks([1, 2])
    ax.set_xlabel("threads")
    ax.set_ylabel("images / s")
    ax.set_title("throughput vs threads")
    ax.legend(fontsize=7)
    ax = axes[2]
    for mode in ("train", "infer"):
        pts = res["batch"][mode]
        if pts:
            ax.plot([p["batch_size"] for p in pts], [p["images_per_s"] for p in pts], "o-", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title("throughput vs batch size")
    ax.legend(fontsize=7)
    load = max(v for k, v in res["loadavg"].items())
    fig.suptitle(f"{res['config']['cpu']} [{res['config']['simd']}], preset {res['preset']}, "
                 f"data {res['data'][:40]}; max 1-min load average during the run {load:.1f} "
                 f"on {res['config']['cpus_available']} cpus", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    from snnfast._config import config_dict, effective_n_threads
    from snnfast._utils import write_json
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", choices=["seed", "default", "nir"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="threads for the image and batch sweeps")
    p.add_argument("--train-sizes", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--infer-sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--infer-batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (smoke run)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/snnfast_scaling")
    args = p.parse_args(argv)
    from snnfast._cli import check_out_dir_arg
    check_out_dir_arg(p, "--out", args.out, ("scaling.json", "scaling.png"))
    if args.quick:
        args.repeats, args.train_sizes, args.infer_sizes = 1, [256, 512], [256, 512, 1024]
        args.batch_sizes, args.infer_batch_sizes = [32, 128], [128, 512]
    if args.repeats < 1 or min(args.train_sizes + args.infer_sizes + args.batch_sizes) < 1:
        p.error("sizes and --repeats must be >= 1")
    args.train_sizes, args.infer_sizes = sorted(args.train_sizes), sorted(args.infer_sizes)
    cfg = config_dict()
    n_max = max(args.train_sizes + args.infer_sizes)
    X, y, data = _data(n_max, args.dataset, args.data_dir)
    if len(X) < n_max:
        p.error(f"only {len(X)} images available, sizes need {n_max}")
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus, OpenMP {cfg['openmp']}, "
          f"threads {effective_n_threads(args.threads)}; preset {args.preset}; data {data}")
    res = {"config": cfg, "preset": args.preset, "data": data, "repeats": args.repeats,
           "threads": None, "statistic": "median of repeats after a 256-image warm-up"}
    res["loadavg"] = {"start": os.getloadavg()[0]}
    print("time vs number of images:")
    res["images"] = sweep_images(args, X, y)
    res["loadavg"]["after_images"] = os.getloadavg()[0]
    print("threads:")
    res["threads"] = sweep_threads(args, X, y)
    res["loadavg"]["after_threads"] = os.getloadavg()[0]
    print("batch size:")
    res["batch"] = sweep_batch(args, X, y)
    res["loadavg"]["end"] = os.getloadavg()[0]
    busy = max(res["loadavg"].values())
    if busy > cfg["cpus_available"] + 0.5:
        print(f"WARNING: 1-min load average reached {busy:.1f} on {cfg['cpus_available']} cpus: other "
              "processes shared the cores, so these timings (and the thread speed-up) are not reliable")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scaling.json", res)
    plot(res, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
