"""Evaluate a saved Conv-SNN, or any network (a ``network-1`` file), on a test set.

    python -m snnfast.evaluate MODEL.h5 [--dataset mnist|fashion-mnist] [--data-dir D]
                               [--threads N]
    python -m snnfast.evaluate NET.h5 --data TEST.npz     (network-1: X_test, y_test or X, y)

Prints the test accuracy, the mean cross-entropy and the spike rates per layer (input and
conv: spikes per neuron per step; hidden: spikes per neuron per hidden update).
Evaluation noise is fixed (the model's seed, epoch key 2^32 - 1, sample id = test index), so
the figures are deterministic and those of the model's own ``evaluate``. Exit status: 0 on
success, 1 when the model or the data cannot be read, 2 for bad arguments (as
``snnfast.energy`` and ``snnfast.export``), 130/143 after Ctrl-C/SIGTERM.
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
    p.add_argument("--data", default=None,
                   help="network-1 files: .npz of test arrays X_test, y_test (or X, y) "
                        "instead of --dataset")
    args = p.parse_args(argv)

    from .network import is_network_file
    if is_network_file(args.model):
        return _evaluate_network(args)
    if args.data is not None:
        p.error("--data applies to network-1 files only")
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


def _read_test_arrays(path):
    """(X, y) of an .npz file: arrays X_test and y_test, or X and y (ValueError otherwise)."""
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = ("X_test", "y_test") if "X_test" in f.files else ("X", "y")
            if not all(k in f.files for k in keys):
                raise ValueError(f"arrays {sorted(f.files)}; expected X_test and y_test, or "
                                 "X and y")
            X, y = f[keys[0]], f[keys[1]]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except Exception as exc:    # zipfile, pickle refusal, bad headers: many types
        raise ValueError(f"cannot read {path} as .npz: {type(exc).__name__}") from None
    if y.ndim != 1 or len(y) != len(X) or y.dtype.kind not in "iu":
        raise ValueError(f"{path}: y must be {len(X)} integer labels, got {y.dtype} {y.shape}")
    return X, y


def evaluate_network(network, weights, X, y, batch_size=256, n_threads=None, seed=0,
                     sample_ids=None):
    """Accuracy, mean cross-entropy of the outputs as logits and spike rates (spikes per neuron
    per update, per spiking layer) of a network on (X, y), run by :mod:`snnfast.engine`
    (``seed`` and ``sample_ids``, default ``arange(N)``: the keys of the input noise)."""
    import numpy as np
    from .engine import CompiledNetwork
    model = CompiledNetwork(network, weights)
    ids = np.arange(len(X)) if sample_ids is None else sample_ids
    correct, loss, spikes = 0, 0.0, dict.fromkeys(network.spiking_layers(), 0)
    for lo in range(0, len(X), batch_size):
        out = model.forward(np.ascontiguousarray(X[lo:lo + batch_size]), seed=seed,
                            sample_ids=ids[lo:lo + batch_size], n_threads=n_threads)
        z = out["output"].reshape(len(out["output"]), -1).astype(np.float64)
        yb = y[lo:lo + batch_size]
        if yb.min() < 0 or yb.max() >= z.shape[1]:
            raise ValueError(f"labels must be in [0, {z.shape[1]}), the network's outputs")
        correct += int((z.argmax(axis=1) == yb).sum())
        z -= z.max(axis=1, keepdims=True)
        loss += float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(yb)), yb]).sum())
        for k in spikes:
            spikes[k] += int(out["counts"][k].sum())
    n = len(X)
    rates = {}
    for k in spikes:
        i = network.index(k)
        per_sample = int(np.prod(network.shapes[i])) * len(network[i].update_steps(network.T))
        rates[k] = spikes[k] / (n * max(per_sample, 1))
    return {"accuracy": correct / n, "loss": loss / n, "rates": rates, "n": n}


def _evaluate_network(args):
    """The ``network-1`` branch of :func:`main`."""
    from .network import load, noise_seed
    try:
        net, weights, meta = load(args.model)
        seed = noise_seed(meta)         # the model's own input noise, as for a ConvSNN file
        if args.data is not None:
            X, y = _read_test_arrays(args.data)
            source = args.data
        else:
            from . import datasets
            source = args.dataset or meta.get("dataset", "mnist")
            X, y = datasets.load(source, "test", args.data_dir)
        if args.limit:
            X, y = X[:args.limit], y[:args.limit]
        t0 = time.perf_counter()
        res = evaluate_network(net, weights, X, y, n_threads=args.threads, seed=seed)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res["img_per_s"] = len(X) / (time.perf_counter() - t0)
    res.update(data=source, network=net.name, model=str(args.model), seed=seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.model}: network {net.name or '(unnamed)'}, {source} test "
              f"({len(X)} samples)")
        print(f"accuracy {100 * res['accuracy']:.2f}%   loss {res['loss']:.4f}   "
              f"{res['img_per_s']:.0f} img/s")
        print("spike rates (per neuron per update): " + ", ".join(
            f"{k} {100 * v:.2f}%" for k, v in res["rates"].items()))
    return 0


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
