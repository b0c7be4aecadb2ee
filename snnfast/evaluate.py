"""Evaluate a saved Conv-SNN on a test set.

    python -m snnfast.evaluate MODEL.h5 [--dataset mnist|fashion-mnist] [--data-dir D]
                               [--threads N]

Prints the test accuracy, the mean cross-entropy and the spike rates per layer (input and
conv: spikes per neuron per step; hidden: spikes per neuron per hidden update).
Evaluation noise is fixed (epoch key 2^32 - 1, sample id = test index), so the figures are
deterministic. Exit status: 0 on success, 1 when the model or the data cannot be read, 2 for
bad arguments (as ``snnfast.energy`` and ``snnfast.export``), 130/143 after Ctrl-C/SIGTERM.
"""
import argparse
import json
import sys
import time

from ._cli import exits_cleanly_on_interrupt, positive_int

__all__ = ["main"]


@exits_cleanly_on_interrupt
def main(argv=None):
    from ._cli import openmp_wait_defaults
    openmp_wait_defaults()      # before the first kernel loads the OpenMP runtime
    p = argparse.ArgumentParser(prog="python -m snnfast.evaluate",
                                description="Test accuracy and spike rates of a ConvSNN file.")
    p.add_argument("model", help="model file written by snnfast (model.h5 or checkpoint.h5)")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default=None,
                   help="test set (default: the one recorded in the file, else mnist)")
    p.add_argument("--data-dir", default=None, help="data cache directory")
    p.add_argument("--threads", type=positive_int, default=None, help="threads")
    p.add_argument("--limit", type=positive_int, default=None, help="first N test images only")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--backend", choices=("kernels", "numpy"), default="kernels",
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from .convsnn import ConvSNN
    try:
        model = ConvSNN.load(args.model, n_threads=args.threads, backend=args.backend)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dataset = args.dataset or (getattr(model, "metrics_", {}) or {}).get("dataset", "mnist")
    from . import datasets
    try:
        X, y = datasets.load(dataset, "test", args.data_dir)
    except (ValueError, OSError) as exc:    # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.limit:
        X, y = X[:args.limit], y[:args.limit]
    t0 = time.perf_counter()
    res = model.evaluate(X, y)
    res["img_per_s"] = len(X) / (time.perf_counter() - t0)
    res.update(dataset=dataset, preset=model.config.preset, model=str(args.model))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.model}: preset {model.config.preset}, {dataset} test ({len(X)} images)")
        print(f"accuracy {100 * res['accuracy']:.2f}%   loss {res['loss']:.4f}   "
              f"{res['img_per_s']:.0f} img/s")
        print(f"spike rates: input {100 * res['rate_input']:.2f}% /step, conv "
              f"{100 * res['rate_conv']:.2f}% /step, hidden {100 * res['rate_hidden']:.2f}% "
              f"/update")
    return 0


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
