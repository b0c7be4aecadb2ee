"""The CNN path of ``python -m snnfast.convert`` (``--arch cnn`` or ``--model FILE``).

Trains the built-in ReLU CNN (:func:`snnfast.cnn.make_cnn`, :func:`snnfast.cnn.train_cnn`)
or reads one (ONNX / ``.npz``, :mod:`snnfast.model_import`), converts it exactly
(:func:`snnfast.ttfs_cnn.convert`, windows calibrated on the training images only) and
measures on the whole test set: ReLU and SNN accuracy, agreement, the largest activation
error of every stage (float64), float32 agreement, spikes per neuron, synaptic events vs
dense MACs, latency, simulation time and energy. Writes ``ttfs_cnn_results.json``,
``ttfs_cnn.h5`` and the figures into ``--out``.
"""
import sys
import time
from pathlib import Path

import numpy as np

from ._utils import write_json
from .convert import _pct, result_fields

__all__ = ["run", "load_data"]

#: Training epochs of ``--arch cnn`` when ``--epochs`` is not given.
DEFAULT_EPOCHS = {"mnist": 6, "fashion-mnist": 15}
EXACTNESS_CHUNK = 500       # test images per recorded (spike-times) simulation
HIST_IMAGES = 1000          # test images whose spike times go into the histograms


def load_data(a):
    """Training and test images as float64 (n, C, H, W) in [0, 1] plus integer labels,
    from ``--dataset`` or from ``--data FILE.npz`` (``x_train``, ``y_train``, ``x_test``,
    ``y_test``; uint8 pixels or floats in [0, 1]; (n, H, W) or (n, C, H, W))."""
    if a.data is not None:
        try:
            with np.load(a.data, allow_pickle=False) as z:
                raw = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"--data {a.data}: needs arrays x_train, y_train, x_test, y_test "
                             f"({exc})") from None
        name = Path(a.data).name
    else:
        from .datasets import load
        raw = {}
        raw["x_train"], raw["y_train"] = load(a.dataset, "train", a.data_dir)
        raw["x_test"], raw["y_test"] = load(a.dataset, "test", a.data_dir)
        name = a.dataset
    out = {"name": name}
    for split, limit in (("train", a.n_train), ("test", a.n_test)):
        x, y = raw[f"x_{split}"], np.asarray(raw[f"y_{split}"])
        out[f"x_{split}"] = _images(x, f"x_{split}")[:limit]
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise ValueError(f"y_{split} must hold one integer label per image")
        out[f"y_{split}"] = y.astype(np.int64)[:limit]
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise ValueError("training and test images have different shapes")
    return out


def _images(x, name):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (n, H, W) or (n, C, H, W) array")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if x.dtype.kind != "f" or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name} must be uint8 pixels or finite floats in [0, 1]")
    return x.astype(np.float64)


def _model(a, data, n_threads, progress):
    """(CNN, info): the trained built-in network or the one read from ``--model``."""
    if a.model is not None:
        from .model_import import load_model
        cnn = load_model(a.model, image_shape=data["x_train"].shape[1:])
        if cnn.in_shape != data["x_train"].shape[1:]:
            raise ValueError(f"--model expects inputs of shape {cnn.in_shape}, the data has "
                             f"{data['x_train'].shape[1:]}")
        return cnn, {"source": str(a.model)}
    from .cnn import make_cnn, train_cnn
    from .datasets import train_val_split
    n = len(data["x_train"])
    if not 0 < a.n_val < n:
        raise ValueError(f"--n-val must lie in (0, {n})")
    tr, va = train_val_split(n, a.n_val, a.seed)
    y = data["y_train"]
    cnn = make_cnn("cnn", in_shape=data["x_train"].shape[1:], n_out=int(y.max()) + 1,
                   seed=a.seed)
    x = data["x_train"].astype(np.float32)
    epochs = a.epochs or DEFAULT_EPOCHS.get(a.dataset, 6)
    t0 = time.perf_counter()
    # one BLAS thread: the trained weights do not depend on --threads
    info = train_cnn(cnn, x[tr], y[tr], x[va], y[va], epochs=epochs,
                     patience=a.patience or epochs, batch_size=128, seed=a.seed,
                     n_threads=1, progress=progress)
    info["train_seconds"] = time.perf_counter() - t0
    info["source"] = "built-in arch 'cnn'"
    return cnn, info


def evaluate(net, x_test, y_test, n_threads):
    """All test-set figures of one converted network (see the module doc)."""
    from .ttfs_cnn import ConvSimResult, exactness_report, operation_counts
    z, _ = net.relu_forward(x_test)
    t0 = time.perf_counter()
    r = net.simulate(x_test, record_times=False, n_threads=n_threads)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r32 = net.simulate(x_test.astype(np.float32), dtype=np.float32, record_times=False,
                       n_threads=n_threads)
    sim32_s = time.perf_counter() - t0
    # exactness on every test image, in chunks (spike times of all images do not fit)
    errs, firing_equal, hist_times = None, True, None
    for s in range(0, len(x_test), EXACTNESS_CHUNK):
        xb = x_test[s:s + EXACTNESS_CHUNK]
        rb = net.simulate(xb, n_threads=n_threads)
        if not np.array_equal(rb.logits, r.logits[s:s + len(xb)]):
            raise RuntimeError("recorded and unrecorded simulations differ")
        rep = exactness_report(net, xb, rb)
        e = [row["max_abs"] for row in rep["layers"]]
        errs = e if errs is None else [max(p, q) for p, q in zip(errs, e)]
        firing_equal &= all(row["firing_set_equal"] in (True, None) for row in rep["layers"])
        if s < HIST_IMAGES:
            hist_times = rb.times if hist_times is None else \
                [np.concatenate([p, q]) for p, q in zip(hist_times, rb.times)]
    ops = operation_counts(net, r)
    row = {**result_fields(net, ops, r, r32, z, y_test, "stage"),
           "max_abs_err_per_stage": errs, "max_abs_err": max(errs),
           "firing_sets_equal": firing_equal,
           "float32_acc": _pct(np.mean(r32.predictions == y_test)),
           "n_test": int(len(x_test)), "n_threads": n_threads,
           "sim_seconds_float64": sim_s, "sim_seconds_float32": sim32_s,
           "operation_counts": ops}
    row["drop"] = round(row["relu_acc"] - row["snn_acc"], 4)
    hist = ConvSimResult(hist_times, r.logits[:HIST_IMAGES], r.spikes[:HIST_IMAGES],
                         r.events[:HIST_IMAGES], r.saturated[:HIST_IMAGES], net.t_max.copy())
    return row, r, hist


def _stats(r, net):
    n = max(len(r.logits), 1)
    return {"spikes_per_image": r.spikes.sum(axis=0) / n,
            "events_per_image": r.events.sum(axis=0) / n,
            "saturated_per_image": r.saturated.sum(axis=0) / n,
            "spikes_per_neuron": r.spikes[:, 1:].sum(axis=0) / n
            / np.asarray(net.hidden_units, np.float64),
            "dense_macs": np.asarray(net.dense_macs)}


def format_row(row, label):
    return (f"{label}: ReLU {row['relu_acc']:.2f} %  SNN {row['snn_acc']:.2f} %  drop "
            f"{row['drop']:.2f}  agreement {row['agreement']:.2f} %  max|dx| "
            f"{row['max_abs_err']:.1e}  spikes/neuron {row['spikes_per_hidden_neuron']:.3f}  "
            f"events/img {row['synaptic_events_per_image']:,.0f} vs dense MACs "
            f"{row['dense_macs']:,d} ({row['events_over_macs']:.3f})  latency t_min(N) "
            f"{row['latency']:.2f}  saturated {row['saturated_units']}\n"
            f"  event simulation of {row['n_test']} images on {row['n_threads']} threads: "
            f"float64 {row['sim_seconds_float64']:.2f} s, float32 "
            f"{row['sim_seconds_float32']:.2f} s (float32 agreement "
            f"{row['float32_agreement']:.2f} %, max logit error "
            f"{row['float32_max_logit_err']:.1e})")


def run(a, n_threads):
    """Run the CNN path for parsed ``convert`` arguments ``a``; returns the results dict."""
    from . import energy, ttfs_cnn
    from ._config import config_dict
    progress = not a.no_progress
    t_start = time.perf_counter()
    data = load_data(a)
    cnn, info = _model(a, data, n_threads, progress)
    net = ttfs_cnn.convert(cnn, data["x_train"], zeta=a.zeta,
                           meta={"calibration": f"{data['name']} train "
                                                f"({len(data['x_train'])} images)",
                                 "seed": a.seed, "source": info.get("source"),
                                 "train": {k: v for k, v in info.items() if k != "history"}})
    row, r, hist = evaluate(net, data["x_test"], data["y_test"], n_threads)
    h5 = a.out / "ttfs_cnn.h5"
    ttfs_cnn.save(net, h5, results={"summary": {k: v for k, v in row.items()
                                                if k != "operation_counts"}},
                  stats=_stats(r, net))
    n_energy = min(1000, len(data["x_test"]))
    images = np.rint(data["x_test"][:n_energy] * 255).astype(np.uint8)
    try:
        out, line = energy.summarize(h5, images, n_threads=n_threads)
        row["energy"] = {"summary": line, "SynapticOperations":
                         out["result"]["SynapticOperations"], "energy": out["energy"][0],
                         "samples": out["samples"]}
    except ValueError as exc:      # e.g. asymmetric padding of an imported model
        row["energy"] = {"error": str(exc)}
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "dataset": data["name"], "n_calibration": len(data["x_train"]),
               "machine": config_dict(), "model": info, "table": row,
               "layers": [{"kind": s.kind, "in": list(s.in_shape),
                           "out": list(s.out_shape(s.in_shape)),
                           "pool": None if s.pool is None else s.pool.to_dict()}
                          for s in net.stages],
               "definitions": {
                   "spikes_per_hidden_neuron": "fired pre-pool hidden units / hidden units, "
                                               "mean over test images; pixels and outputs excluded",
                   "synaptic_events": "multiply-adds done by the event-driven simulator (sum "
                                      "over source spikes of their in-map fan-out)",
                   "dense_macs": "multiply-accumulates of the ReLU network's conv/dense "
                                 "layers computed densely (zero-padded taps included; "
                                 "NeuroBench's Dense in the energy report excludes them)",
                   "windows": "Delta_n = (1+zeta) * max activation on the training set"}}
    try:
        from .ttfs_plots import make_cnn_figures
        results["figures"] = make_cnn_figures(a.out, net, hist, row)
    except Exception as exc:  # figures must not lose the numbers
        results["figures_error"] = repr(exc)
        print(f"warning: figures failed: {exc!r}", file=sys.stderr)
    results["wall_seconds"] = time.perf_counter() - t_start
    write_json(a.out / "ttfs_cnn_results.json", results, indent=1)
    print(f"\nTTFS CNN conversion, {data['name']}, {row['n_test']} test images, zeta={a.zeta}")
    if "history" in info:
        print(f"training: {info['epochs_run']} epochs, best validation accuracy "
              f"{100 * info['best_val_acc']:.2f} % (epoch {info['best_epoch']}), "
              f"{info['train_seconds']:.0f} s")
    print(format_row(row, "CNN"))
    print("per-stage max |x_SNN - x_ReLU| (float64): "
          + " ".join(f"{e:.1e}" for e in row["max_abs_err_per_stage"]))
    print("spikes per neuron per hidden stage: "
          + " ".join(f"{v:.3f}" for v in row["spikes_per_neuron_per_stage"]))
    if "summary" in row["energy"]:
        print(row["energy"]["summary"])
    print(f"\ntotal wall {results['wall_seconds']:.1f} s; results in {a.out}")
    return results
