"""Train ReLU MLPs on MNIST, convert them exactly to TTFS SNNs and report (CLI).

Usage::

    python -m snnfast.convert [--depths 2 4 6 8] [--epochs 20] [--patience 6] [--zeta 0.5]
                              [--time-bits 2 3 4 5 6 8] [--dt 0.2 0.1 0.05 0.01 0.001]
                              [--seed 0] [--threads N] [--mapping b1|seed-v1] [--out DIR]
    python -m snnfast.convert --arch cnn [--dataset mnist|fashion-mnist] [--epochs E] ...
    python -m snnfast.convert --model NET.onnx|NET.npz [--dataset ...|--data FILE.npz] ...

Writes to ``--out``: ``ttfs_results.json`` (all tables, atomic), ``ttfs_L<depth>.h5``
(each converted network with its windows, thresholds and spike statistics) and PNG
figures. ``--arch cnn`` (train the built-in ReLU CNN) and ``--model`` (an ONNX or ``.npz``
ReLU network) take the CNN path, :mod:`snnfast.convert_cnn`. Trainings run in parallel joblib
processes with one BLAS thread each, so the trained networks do not depend on ``--threads``. Windows are calibrated on the training set only;
every reported figure is measured on the full test set.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ._cli import (exits_cleanly_on_interrupt, make_out_dir, openmp_wait_defaults,
                   remove_if_empty)
from ._config import effective_n_threads
from ._utils import special_file_kind, write_json

DEFAULT_BITS = [2, 3, 4, 5, 6, 8]
DEFAULT_DT = [0.2, 0.1, 0.05, 0.01, 0.001]
N_VAL = 5000
# Size limits. A run keeps float64 activations of every hidden layer for the 60 000
# calibration images (60 000 x 400 x 8 B = 192 MB per layer at width 400), so depth and
# width are bounded to keep one run within a few GB (the study itself uses depths 2-8,
# width 400); more epochs than MAX_EPOCHS is a typo (early stopping ends runs far sooner).
MAX_DEPTH = 16
MAX_WIDTH = 1024
MAX_EPOCHS = 10_000


def _parser():
    p = argparse.ArgumentParser(prog="python -m snnfast.convert",
                                description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 6, 8],
                   help="numbers of weight layers L (784-400^(L-1)-10)")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum training epochs (default 20; CNN: 6 mnist, 15 fashion-mnist)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience in epochs (default 6; CNN: no early stop)")
    p.add_argument("--zeta", type=float, default=0.5, help="window margin: Delta_n = (1+zeta) X_n")
    p.add_argument("--time-bits", type=int, nargs="*", default=DEFAULT_BITS,
                   help="spike-time quantisation sweep (bits per window)")
    p.add_argument("--dt", type=float, nargs="*", default=DEFAULT_DT,
                   help="clock-driven simulation sweep (time steps, units of tau_c)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="threads (default: snnfast rule)")
    p.add_argument("--mapping", choices=["b1", "seed-v1"], default="b1",
                   help="b1 = exact mapping; seed-v1 = the seed's per-sample renormalisation")
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp",
                   help="mlp = the 784-400^(L-1)-10 depth study; cnn = train and convert the "
                        "built-in ReLU CNN")
    p.add_argument("--model", type=Path, default=None,
                   help="convert this ReLU network (.onnx or .npz) instead of training one")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist",
                   help="data set of the CNN path (the MLP study uses mnist)")
    p.add_argument("--data", type=Path, default=None,
                   help="CNN path: .npz with x_train, y_train, x_test, y_test instead of --dataset")
    p.add_argument("--out", type=Path, default=Path("runs/ttfs"),
                   help="output directory (default runs/ttfs, git-ignored)")
    # hidden options for quick runs and tests
    p.add_argument("--data-dir", default=None,
                   help="data cache directory (as for the other snnfast commands)")
    p.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-test", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-val", type=int, default=N_VAL, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=400, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    return p


def _check_args(a):
    if a.model is not None:
        a.arch = "cnn"      # an imported network always takes the CNN path
    if a.data is not None and a.arch != "cnn":
        raise ValueError("--data needs --arch cnn or --model")
    if a.arch == "mlp":
        if a.dataset != "mnist":
            raise ValueError("the MLP depth study uses mnist; --dataset needs --arch cnn or --model")
        a.epochs = 20 if a.epochs is None else a.epochs
        a.patience = 6 if a.patience is None else a.patience
    elif (a.epochs is not None and not 1 <= a.epochs <= MAX_EPOCHS) or (
            a.patience is not None and a.patience < 1):
        raise ValueError(f"--epochs must lie in [1, {MAX_EPOCHS}] and --patience be >= 1")
    if a.model is not None and not a.model.is_file():
        raise ValueError(f"--model {a.model}: no such file")
    if a.arch == "cnn":
        if not np.isfinite(a.zeta) or a.zeta <= -1:
            raise ValueError("--zeta must be > -1")
        if a.threads == 0:
            raise ValueError("--threads must not be 0 (a positive count, or -1 for all cores)")
        return
    if not a.depths or any(not 2 <= d <= MAX_DEPTH for d in a.depths):
        raise ValueError(f"--depths must be integers in [2, {MAX_DEPTH}]")
    if a.epochs < 1 or a.patience < 1 or a.width < 1 or a.seed < 0:
        raise ValueError("--epochs, --patience, --width must be >= 1 and --seed >= 0")
    if a.width > MAX_WIDTH or a.epochs > MAX_EPOCHS:
        raise ValueError(f"--width must be <= {MAX_WIDTH} and --epochs <= {MAX_EPOCHS}")
    if not np.isfinite(a.zeta) or a.zeta <= -1:
        raise ValueError("--zeta must be > -1")
    if any(not 1 <= k <= 52 for k in a.time_bits):
        raise ValueError("--time-bits values must lie in [1, 52]")
    if any(not (np.isfinite(d) and d > 0) for d in a.dt):
        raise ValueError("--dt values must be > 0")
    from .ttfs import check_dt
    for d in a.dt:
        try:
            check_dt(d)     # t_min(N) >= 1 for every network: refused now, not after training
        except ValueError:
            raise ValueError(f"--dt {d!r} is too small: t/dt overflows float64 for spike "
                             "times t >= 1") from None
    if a.threads == 0:
        raise ValueError("--threads must not be 0 (a positive count, or -1 for all cores)")


def _check_outputs(a):
    """ValueError if a file the run writes into ``--out`` is a special file or a link
    (found now, not after the training)."""
    names = (["ttfs_cnn_results.json", "ttfs_cnn.h5"] if a.arch == "cnn" else
             ["ttfs_results.json"] + [f"ttfs_L{d}.h5" for d in a.depths])
    for name in names:
        kind = special_file_kind(a.out / name)
        if kind is not None:
            raise ValueError(f"--out: {a.out / name} is {kind}; the run writes it as a "
                             "regular file")


def _load_data(a):
    """Training split, validation split, calibration set and test set (pixels / 255)."""
    from .datasets import load, train_val_split
    xtr_u8, ytr = load("mnist", "train", a.data_dir)
    xte_u8, yte = load("mnist", "test", a.data_dir)
    n_tr = len(xtr_u8) if a.n_train is None else min(a.n_train, len(xtr_u8))
    n_te = len(xte_u8) if a.n_test is None else min(a.n_test, len(xte_u8))
    if not 0 < a.n_val < n_tr:
        raise ValueError(f"--n-val must lie in (0, {n_tr})")
    tr_idx, va_idx = train_val_split(n_tr, a.n_val, a.seed)
    return {"train_u8": xtr_u8[:n_tr], "ytrain": ytr[:n_tr].astype(np.int64),
            "tr_idx": tr_idx, "va_idx": va_idx,
            "test_u8": xte_u8[:n_te], "ytest": yte[:n_te].astype(np.int64)}


def _train_one(depth, cfg, x_u8, y, tr, va):
    """Train one depth with one BLAS thread (deterministic for a given seed).

    Runs in a joblib worker process; ``x_u8`` (the training images, uint8) reaches it as a
    memory map, not a copy per worker."""
    from .mlp import make_mlp, preprocess, train_mlp
    x = preprocess(x_u8)
    mlp = make_mlp(depth, width=cfg["width"], seed=cfg["seed"] * 1000 + depth)
    t0 = time.perf_counter()
    info = train_mlp(mlp, x[tr], y[tr], x[va], y[va], epochs=cfg["epochs"],
                     patience=cfg["patience"], seed=cfg["seed"] * 1000 + depth, n_threads=1)
    info["train_seconds"] = time.perf_counter() - t0
    return depth, mlp.weights, mlp.biases, info


def _train_all(a, data, n_threads, progress):
    """Train every depth: in ``min(n_threads, depths)`` joblib processes (largest depth
    first), or in this process for one thread. Each training uses one BLAS thread, so the
    networks are the same for any ``n_threads``."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from .mlp import MLP
    cfg = {"seed": a.seed, "width": a.width, "epochs": a.epochs, "patience": a.patience}
    depths = sorted(set(a.depths), reverse=True)
    bar = tqdm(total=len(depths), desc="training (networks)", disable=not progress)
    out = {}
    jobs = (delayed(_train_one)(d, cfg, data["train_u8"], data["ytrain"], data["tr_idx"],
                                data["va_idx"]) for d in depths)
    for r in Parallel(n_jobs=min(n_threads, len(depths)), return_as="generator_unordered")(jobs):
        out[r[0]] = r
        bar.update(1)
        bar.set_postfix(L=r[0], val=f"{r[3]['best_val_acc']:.4f}")
    bar.close()
    return {d: (MLP(w, b), info) for d, (_, w, b, info) in out.items()}


def _pct(x):
    return round(100.0 * float(x), 4)


def result_fields(net, ops, r, r32, z, y_test, per):
    """The result-row figures that an MLP and a CNN conversion share: accuracies (the ReLU
    network's logits ``z``, the exact simulation ``r``, the float32 one ``r32``), spikes and
    events from ``ops``, windows and saturation; ``per`` names the hidden units' level
    ("layer" or "stage") in ``spikes_per_neuron_per_<per>``."""
    relu_pred, snn_pred = np.argmax(z, axis=1), r.predictions
    return {
        "relu_acc": _pct(np.mean(relu_pred == y_test)), "snn_acc": _pct(np.mean(snn_pred == y_test)),
        "agreement": _pct(np.mean(snn_pred == relu_pred)),
        "float32_agreement": _pct(np.mean(r32.predictions == relu_pred)),
        "float32_max_logit_err": float(np.abs(r32.logits - z).max()),
        "spikes_per_hidden_neuron": ops["spikes_per_hidden_neuron"],
        f"spikes_per_neuron_per_{per}": [h["spikes_per_neuron"] for h in ops["hidden"]],
        "synaptic_events_per_image": ops["synaptic_events_per_image"],
        "dense_macs": ops["dense_macs"],
        "events_over_macs": ops["synaptic_events_per_image"] / ops["dense_macs"],
        "latency": net.latency, "t_min": net.t_min.tolist(), "delta": net.deltas.tolist(),
        "x_max_train": net.x_max.tolist(), "saturated_units": int(r.saturated.sum()),
    }


def _evaluate(net, x_test, y_test, a, n_threads, progress):
    """Exact simulation + ReLU reference + sweeps for one converted network."""
    from tqdm.auto import tqdm

    from .ttfs import exactness_report, operation_counts
    z, hidden = net.relu_forward(x_test)
    relu_pred = np.argmax(z, axis=1)
    t0 = time.perf_counter()
    r = net.simulate(x_test, n_threads=n_threads)
    sim_s = time.perf_counter() - t0
    ops = operation_counts(net, x_test, result=r)
    exact = exactness_report(net, x_test, result=r)
    r32 = net.simulate(x_test.astype(np.float32), dtype=np.float32, record_times=False,
                       n_threads=n_threads)
    row = {"depth": net.depth, **result_fields(net, ops, r, r32, z, y_test, "layer"),
           "max_abs_err_per_layer": [e["max_abs"] for e in exact["layers"]],
           "saturated_per_layer": r.saturated.sum(axis=0).tolist(),
           "sim_seconds_float64": sim_s, "operation_counts": ops, "exactness": exact}
    row["drop"] = round(row["relu_acc"] - row["snn_acc"], 4)
    sweeps = {"time_bits": [], "dt": []}
    jobs = [("time_bits", k) for k in a.time_bits] + [("dt", d) for d in a.dt]
    for kind, v in tqdm(jobs, desc=f"sweeps L={net.depth}", disable=not progress or not jobs,
                        leave=False):
        kw = {"time_bits": v} if kind == "time_bits" else {"dt": v}
        rs = net.simulate(x_test, record_times=False, n_threads=n_threads, **kw)
        sweeps[kind].append({kind: v, "agreement": _pct(np.mean(rs.predictions == relu_pred)),
                             "snn_acc": _pct(np.mean(rs.predictions == y_test)),
                             "max_abs_logit_err": float(np.abs(rs.logits - z).max()),
                             "spikes_per_hidden_neuron":
                                 float(rs.spikes[:, 1:].sum() / len(x_test)
                                       / max(sum(net.sizes[1:-1]), 1))})
    return row, sweeps, r, hidden


def _seed_v1_row(net, x_test, y_test):
    from .ttfs import scaled_bias_relu, seed_v1_forward
    z, _ = net.relu_forward(x_test)
    relu_pred = np.argmax(z, axis=1)
    v1, s = seed_v1_forward(net, x_test)
    ident = scaled_bias_relu(net, x_test, s)
    pred = np.argmax(v1, axis=1)
    row = {"depth": net.depth, "relu_acc": _pct(np.mean(relu_pred == y_test)),
           "snn_acc": _pct(np.mean(pred == y_test)),
           "agreement": _pct(np.mean(pred == relu_pred)),
           "identity_max_abs_err": float(np.abs(v1 - ident).max()),
           "median_scale_per_layer": np.median(s, axis=0).tolist(),
           "mean_abs_bias_per_layer": [float(np.abs(b).mean()) for b in net.biases]}
    row["drop"] = round(row["relu_acc"] - row["snn_acc"], 4)
    return row


def _fmt_table(rows):
    head = (f"{'L':>2} {'ReLU%':>7} {'SNN%':>7} {'drop':>6} {'agree%':>7} {'max|dx|':>9} "
            f"{'spk/neur':>8} {'events/img':>10} {'MACs':>9} {'ev/MAC':>6} {'t_min(N)':>8} "
            f"{'sat':>5}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['depth']:>2} {r['relu_acc']:7.2f} {r['snn_acc']:7.2f} {r['drop']:6.2f} "
                     f"{r['agreement']:7.2f} {max(r['max_abs_err_per_layer']):9.1e} "
                     f"{r['spikes_per_hidden_neuron']:8.3f} "
                     f"{r['synaptic_events_per_image']:10.0f} {r['dense_macs']:9d} "
                     f"{r['events_over_macs']:6.3f} {r['latency']:8.2f} {r['saturated_units']:5d}")
    return "\n".join(lines)


def _fmt_sweep(sweeps, kind):
    depths = sorted(sweeps)
    if not depths or not sweeps[depths[0]][kind]:
        return ""
    lines = [f"{kind:>9} " + " ".join(f"{'L=' + str(d) + ' agr% (acc%)':>22}" for d in depths)]
    for i, e in enumerate(sweeps[depths[0]][kind]):
        cells = " ".join(f"{sweeps[d][kind][i]['agreement']:>12.2f} "
                         f"({sweeps[d][kind][i]['snn_acc']:6.2f})" for d in depths)
        lines.append(f"{e[kind]:>9} {cells}")
    return "\n".join(lines)


def _fmt_v1(rows):
    lines = [f"{'L':>2} {'ReLU%':>7} {'v1%':>7} {'drop':>6} {'agree%':>7} {'ident.err':>9}  "
             "median s_n per layer"]
    for r in rows:
        s = " ".join(f"{v:.2f}" for v in r["median_scale_per_layer"])
        lines.append(f"{r['depth']:>2} {r['relu_acc']:7.2f} {r['snn_acc']:7.2f} {r['drop']:6.2f} "
                     f"{r['agreement']:7.2f} {r['identity_max_abs_err']:9.1e}  {s}")
    return "\n".join(lines)


def _stats(r, net):
    n = max(len(r.logits), 1)
    return {"spikes_per_image": r.spikes.sum(axis=0) / n,
            "events_per_image": r.events.sum(axis=0) / n,
            "saturated_per_image": (r.saturated.sum(axis=0) / n if net.depth > 1
                                    else np.zeros(0)),
            "spikes_per_neuron": (r.spikes[:, 1:].sum(axis=0) / n
                                  / np.asarray(net.sizes[1:-1], dtype=np.float64)),
            "fan_out": np.asarray(net.fan_out), "dense_macs": np.asarray(net.dense_macs)}


def run(argv=None):
    a = _parser().parse_args(argv)
    _check_args(a)
    n_threads = effective_n_threads(a.threads)
    # the output location is checked (and created) before the data is loaded and the
    # networks are trained; a run that fails leaves no empty directory of its own behind
    created = make_out_dir(a.out)
    try:
        _check_outputs(a)
        if a.arch == "cnn":
            from .convert_cnn import run as run_cnn
            return run_cnn(a, n_threads)
        return _run(a, n_threads)
    except BaseException:
        remove_if_empty(created)
        raise


def _run(a, n_threads):
    from . import ttfs
    from ._config import config_dict
    progress = not a.no_progress
    t_start = time.perf_counter()
    data = _load_data(a)
    x_test = data["test_u8"].reshape(len(data["test_u8"]), -1) / 255.0
    x_train = data["train_u8"].reshape(len(data["train_u8"]), -1) / 255.0
    y_test = data["ytest"]
    t0 = time.perf_counter()
    trained = _train_all(a, data, n_threads, progress)
    train_wall = time.perf_counter() - t0
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "n_threads": n_threads, "n_test": len(x_test), "n_calibration": len(x_train),
               "train_wall_seconds": train_wall, "machine": config_dict(),
               "definitions": {
                   "spikes_per_hidden_neuron": "fired hidden units / hidden units, mean over "
                                               "test images; input pixels and outputs excluded",
                   "synaptic_events": "sum over delivered spikes (input pixels included) of "
                                      "fan-out", "no_spike_time": "inf",
                   "max_rel_err": "max|x_SNN - x_ReLU| / max|x_ReLU| per layer",
                   "windows": "Delta_n = (1+zeta) * max activation on the training set"}}
    rows, sweeps, v1rows, nets, sims, hiddens = [], {}, [], {}, {}, {}
    for d in sorted(trained):
        mlp, info = trained[d]
        net = ttfs.convert(mlp, x_train, zeta=a.zeta,
                           meta={"calibration": "mnist train (all training images)",
                                 "seed": a.seed, "train": {k: v for k, v in info.items()
                                                            if k != "history"}})
        if a.mapping == "seed-v1":
            v1rows.append(_seed_v1_row(net, x_test, y_test))
        row, sw, r, hidden = _evaluate(net, x_test, y_test, a, n_threads, progress)
        row["training"] = info
        rows.append(row)
        sweeps[d] = sw
        nets[d], sims[d], hiddens[d] = net, r, hidden
        ttfs.save(net, a.out / f"ttfs_L{d}.h5", results={"summary": {k: v for k, v in row.items()
                  if k not in ("operation_counts", "exactness", "training")}, "sweeps": sw},
                  stats=_stats(r, net))
    results["energy"] = _energy(a.out, sorted(trained), data["test_u8"][:1000], n_threads)
    results["table"] = rows
    results["sweeps"] = {str(d): s for d, s in sweeps.items()}
    results["exactness"] = {str(r["depth"]): r["exactness"] for r in rows}
    if v1rows:
        results["seed_v1"] = v1rows
    try:
        from .ttfs_plots import make_all
        results["figures"] = make_all(a.out, rows, sweeps, nets, sims)
    except Exception as exc:  # figures must not lose the numbers
        results["figures_error"] = repr(exc)
        print(f"warning: figures failed: {exc!r}", file=sys.stderr)
    results["wall_seconds"] = time.perf_counter() - t_start
    write_json(a.out / "ttfs_results.json", results, indent=1)
    print(f"\nTTFS conversion, {len(x_test)} test images, zeta={a.zeta}, "
          f"threads={n_threads}")
    if v1rows:
        print("\nmapping seed-v1 (per-sample renormalisation, spec §4): v1 == ReLU net with "
              "b(n) <- s_n(x) b(n)")
        print(_fmt_v1(v1rows))
        print("\nexact B1 mapping of the same networks for comparison:")
    print(_fmt_table(rows))
    for kind in ("time_bits", "dt"):
        t = _fmt_sweep(sweeps, kind)
        if t:
            print(f"\nsweep {kind}: argmax agreement with ReLU % (SNN accuracy %)\n{t}")
    print("\nexactness (float64): max abs / max rel error, single layer (layer 1) and network")
    for r in rows:
        e = r["exactness"]
        print(f"  L={r['depth']}: single layer {e['single_layer']['max_abs']:.2e} / "
              f"{e['single_layer']['max_rel']:.2e}; network {e['network_max_abs']:.2e} / "
              f"{e['network_max_rel']:.2e}; per layer max|dx| "
              + " ".join(f"{v['max_abs']:.1e}" for v in e["layers"]))
    for d, e in results["energy"].items():
        print(f"L={d}: {e['summary']}")
    print(f"\ntraining wall {train_wall:.1f} s; total wall {results['wall_seconds']:.1f} s; "
          f"results in {a.out}")
    return results



def _energy(out_dir, depths, images, n_threads):
    """Per depth: the counts and energy of ``python -m snnfast.energy`` on ``images``."""
    from . import energy
    res = {}
    for d in depths:
        out, line = energy.summarize(out_dir / f"ttfs_L{d}.h5", images, n_threads=n_threads)
        res[str(d)] = {"summary": line, "SynapticOperations": out["result"]["SynapticOperations"],
                       "energy": out["energy"][0], "samples": out["samples"]}
    return res


@exits_cleanly_on_interrupt
def main(argv=None):
    """Run the command; exit status 0, 1 (a failed write, e.g. a full disk), 2 (bad
    arguments) or 130/143 (Ctrl-C/SIGTERM)."""
    openmp_wait_defaults()      # before the first kernel loads the OpenMP runtime
    try:
        run(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:      # e.g. the disk filled up while writing the results
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
