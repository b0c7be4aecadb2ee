"""Training and inference throughput of ConvSNN: compiled kernels vs the NumPy baseline.

    python bench/throughput.py [--presets default seed] [--threads N] [--repeats 3]
                               [--train-images N] [--test-images N] [--json out.json]
                               [--models RUN/model.h5 ...]

Both backends run in the same process, on the same data, with the same preset and thread
count. Every figure is the median of ``--repeats`` timed runs after one warm-up run.
Training = ``fit`` for one epoch over the images (forward, backward, optimiser, shuffling,
augmentation; no evaluation), inference = ``evaluate`` (forward + loss + rates). MNIST is
used if it is in the local cache, otherwise a synthetic stand-in (reported as such).
The NumPy baseline gets fewer images (it is slower); rates are per image, so this is fair.

A fresh model fires more than a trained one, and the spike-driven kernels' cost follows the
spike count (the baseline's dense products do not), so ``--models`` also measures saved,
trained models (e.g. the README's runs): both backends load the same file, inference is
``evaluate`` and training is one more epoch of ``fit`` over the training images.
"""
import argparse
import json
import sys

from _timing import median_time  # bench/_timing.py (the script directory is on sys.path)


def _data(n_train, n_test):
    try:
        from snnfast import datasets
        Xtr, ytr = datasets.load("mnist", "train", download=False)
        Xte, yte = datasets.load("mnist", "test", download=False)
        return "mnist", Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    except Exception as exc:                      # no cached MNIST: synthetic digits
        print(f"(MNIST not available: {type(exc).__name__}; using synthetic digits)")
        from snnfast.train import synthetic_digits
        Xtr, ytr, Xte, yte = synthetic_digits(n_train, n_test, seed=1)
        return "synthetic", Xtr, ytr, Xte, yte


def bench_backend(preset, backend, threads, Xtr, ytr, Xte, yte, repeats, model=None):
    """Time ``fit`` and ``evaluate`` of a fresh model of ``preset``, or of the saved ``model``."""
    from snnfast.convsnn import ConvSNN
    if model is None:
        m = ConvSNN(preset, seed=0, n_threads=threads, backend=backend)
    else:
        m = ConvSNN.load(model, n_threads=threads, backend=backend)
    if m.backend != backend:
        raise RuntimeError(f"backend {backend!r} not available")

    def train():
        m.fit(Xtr, ytr, epochs=m.epoch_ + 1)

    ev = {}

    def infer():
        ev.update(m.evaluate(Xte, yte))
    t_train, all_train = median_time(train, repeats)
    t_inf, all_inf = median_time(infer, repeats)
    return {"train_img_s": len(Xtr) / t_train, "infer_img_s": len(Xte) / t_inf,
            "train_times_s": all_train, "infer_times_s": all_inf,
            "n_train": len(Xtr), "n_infer": len(Xte), "batch_size": m.config.batch_size,
            "preset": m.config.preset,
            "rate_input": ev["rate_input"], "rate_conv": ev["rate_conv"],
            "rate_hidden": ev["rate_hidden"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["default", "seed"],
                   choices=["default", "seed", "nir"])
    p.add_argument("--threads", type=int, default=None, help="threads (default: the rule)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--test-images", type=int, default=8192)
    p.add_argument("--numpy-fraction", type=float, default=0.25,
                   help="share of the images the NumPy baseline processes")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--models", nargs="*", default=[], metavar="MODEL_H5",
                   help="also measure these saved models (after the --presets)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not args.presets and not args.models:
        p.error("nothing to measure: give --presets and/or --models")
    from snnfast.convsnn import ConvSNN
    for path in args.models:       # fail now, not after the presets' minutes of timing
        try:
            ConvSNN.load(path)     # a clear ValueError for missing, foreign or damaged files
        except ValueError as exc:
            p.error(f"--models: {exc}")

    from snnfast import effective_n_threads
    from snnfast._config import config_dict
    cfg = config_dict()
    threads = effective_n_threads(args.threads)
    source, Xtr, ytr, Xte, yte = _data(args.train_images, args.test_images)
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; threads {threads}; "
          f"openmp {cfg['openmp']} ({cfg['omp_wait']}); data {source}")
    nf = max(64, int(args.train_images * args.numpy_fraction))
    nt = max(256, int(args.test_images * args.numpy_fraction))
    results = {"config": cfg, "threads": threads, "data": source, "presets": {}, "models": {}}
    runs = [(preset, None) for preset in args.presets] + [(None, path) for path in args.models]
    for preset, model in runs:
        r = {"kernels": bench_backend(preset, "kernels", threads, Xtr, ytr, Xte, yte,
                                      args.repeats, model),
             "numpy": bench_backend(preset, "numpy", threads, Xtr[:nf], ytr[:nf], Xte[:nt],
                                    yte[:nt], args.repeats, model)}
        r["train_speedup"] = r["kernels"]["train_img_s"] / r["numpy"]["train_img_s"]
        r["infer_speedup"] = r["kernels"]["infer_img_s"] / r["numpy"]["infer_img_s"]
        if model is None:
            results["presets"][preset] = r
            tag, rates = preset, "untrained->after the timed epochs"
        else:
            results["models"][model] = r
            tag = f"{r['kernels']['preset']} model {model}"
            rates = "trained model, after the timed epochs"
        k, n = r["kernels"], r["numpy"]
        print(f"[{tag}] training  : kernels {k['train_img_s']:8.0f} img/s   numpy "
              f"{n['train_img_s']:7.0f} img/s   x{r['train_speedup']:.1f}  (batch "
              f"{k['batch_size']})")
        print(f"[{tag}] inference : kernels {k['infer_img_s']:8.0f} img/s   numpy "
              f"{n['infer_img_s']:7.0f} img/s   x{r['infer_speedup']:.1f}")
        print(f"[{tag}] spike rates ({rates}): input "
              f"{100 * k['rate_input']:.2f}%/step  conv {100 * k['rate_conv']:.2f}%/step  "
              f"hidden {100 * k['rate_hidden']:.2f}%/update")
    try:
        import resource
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {results['peak_rss_mib']:.0f} MiB")
    except ImportError:
        pass
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
