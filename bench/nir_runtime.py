"""Speed of the NIR runtime on the NIR paper's N-MNIST CNN (``cnn_sinabs.nir``) -- its compiled
backend, optionally its NumPy backend -- and of the peers' NIR importers on the same graph and
input.

    python bench/nir_runtime.py [--batch 64 256] [--steps 300] [--rate 0.02] [--repeats 3]
                                [--sums ordered blas] [--peers snntorch norse] [--threads 2]
                                [--graph PATH] [--json out.json]

Synthetic N-MNIST-like input: every one of the 2x34x34 event pixels fires in a 1 ms bin with
probability ``--rate`` (independently), for ``--steps`` bins, as uint8. The graph runs with
dt = 1 (Sinabs' per-bin IF) on the compiled backend (``backend="compiled"``: C, OpenMP over
samples with ``--threads`` threads, event-driven Conv2d/Affine) and, with ``--sums``, on the
NumPy backend in those summation modes -- "ordered" (the compiled backend's order: the same
bits) and "blas" (matrix products) -- all timed in turn (``bench/_timing.py``); the figure is
samples per second. Every snnfast run returns the outputs of the same call users make
(``snnfast.nir.run``), input checks included.

``--peers``: the graph is also imported by snnTorch (``import_from_nir``) and/or Norse
(``norse.torch.from_nir``), rewritten by :func:`snnfast.nir.peers.for_torch_importers`
(snnTorch cannot run it as it is), and its module is fed the whole batch one step at a time
under ``torch.no_grad()``; these runs alternate with snnfast's. A peer that does not import is
skipped (they are not snnfast dependencies: use a separate environment). Every tool gets
``--threads`` threads (the compiled backend's OpenMP threads; torch.set_num_threads; BLAS
through threadpoolctl for the NumPy backend, multi-threaded only inside BLAS). Printed: the
thread count and the load average (the machine may be shared), samples/s per tool and the
ratio snnfast/peer (> 1: snnfast faster) per round, median and range. With snnTorch, the
compiled backend's output spikes are compared with its module's (entries that differ).
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from _timing import alternate_times  # bench/_timing.py (the script directory is on sys.path)

GRAPH = Path(__file__).resolve().parent.parent / "tests" / "data" / "nir-paper" / "02_cnn" / \
    "cnn_sinabs.nir"


def events(n, steps, rate, seed=0):
    """uint8 (n, steps, 2, 34, 34): independent Bernoulli events."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, steps, 2, 34, 34), dtype=np.float32) < rate).astype(np.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", type=Path, default=GRAPH)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rate", type=float, default=0.02)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sums", nargs="*", default=[], choices=["ordered", "blas"],
                   help="also time the NumPy backend in these summation modes (slow)")
    p.add_argument("--peers", nargs="*", default=[], choices=["snntorch", "norse"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1")
    from threadpoolctl import threadpool_limits
    from snnfast import nir as snir
    graph = snir.load(args.graph)
    peers = {}
    for name in args.peers:
        try:
            peers[name] = _peer_module(name, args.graph, args.threads)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
    out = {"graph": str(args.graph), "steps": args.steps, "rate": args.rate,
           "repeats": args.repeats, "threads": args.threads,
           "versions": {k: v[1] for k, v in peers.items()}, "batches": {}}
    out["load_before"] = os.getloadavg()
    print(f"threads {args.threads}; peers {out['versions'] or 'none'}; load average "
          f"{_load()} on {os.cpu_count()} CPUs: the machine may be busy, figures are rough")
    for n in args.batch:
        x = events(n, args.steps, args.rate)
        runs = {"compiled": lambda: snir.run(graph, x, dt=1.0, backend="compiled",
                                             n_threads=args.threads)}
        runs.update({s: (lambda s=s: _limited(threadpool_limits, args.threads,
                                              lambda: snir.run(graph, x, dt=1.0, sums=s,
                                                               backend="numpy")))
                     for s in args.sums})
        for name, (run, _) in peers.items():
            runs[name] = (lambda run=run: run(x))
        if "snntorch" in peers:
            diff = _spike_diff(runs["compiled"](), runs["snntorch"]())
            out.setdefault("vs_snntorch_outputs", {})[str(n)] = diff
            print(f"batch {n}: compiled vs snnTorch's output spikes: {diff['differ']} of "
                  f"{diff['total']} entries differ, in {diff['samples']} of {n} samples")
        times = alternate_times(runs, args.repeats)
        res = {k: {"times_s": t, "samples_per_s": n / statistics.median(t)}
               for k, t in times.items()}
        out["batches"][str(n)] = res
        for k, r in res.items():
            label = "snnfast compiled" if k == "compiled" else \
                f"snnfast numpy sums={k}" if k in snir.SUMS else k
            print(f"batch {n:4d}, T {args.steps}, rate {args.rate}: {label:<20} "
                  f"{r['samples_per_s']:8.2f} samples/s (median of {args.repeats}, "
                  f"{statistics.median(r['times_s']):.1f} s per batch)")
        for peer in peers:
            for s in ["compiled", *args.sums]:
                ratios = [tp / ts for tp, ts in zip(times[peer], times[s])]
                res[f"{s}/{peer}"] = ratios
                print(f"  snnfast {s} vs {peer}: {statistics.median(ratios):.2f}x "
                      f"(rounds {min(ratios):.2f}-{max(ratios):.2f}; > 1: snnfast faster)")
    out["load_after"] = os.getloadavg()
    print(f"load average {_load()}")
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


def _load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def _spike_diff(ours, theirs):
    """How snnfast's Output differs from the peer's (N, T, ...) output: differing entries,
    all entries, samples with a difference (float32 sums in another order can flip a
    threshold comparison now and then)."""
    y = next(iter(ours.values()))
    d = y != theirs.detach().numpy().reshape(y.shape)
    return {"differ": int(d.sum()), "total": int(d.size),
            "samples": int(d.reshape(len(d), -1).any(axis=1).sum())}


def _limited(threadpool_limits, threads, fn):
    with threadpool_limits(limits=threads):
        return fn()


def _peer_module(name, path, threads):
    """(run(x) -> outputs, version) of a peer's module imported from the graph at ``path``."""
    import torch
    torch.set_num_threads(threads)
    from importlib.metadata import version
    from snnfast.nir.peers import for_torch_importers
    g = for_torch_importers(path, name)
    reset = lambda: None       # noqa: E731  (Norse: the state passed in, None at t = 0)
    if name == "snntorch":
        from snntorch.import_nir import import_from_nir
        from snntorch.utils import reset as snntorch_reset
        module = import_from_nir(g)
        reset = lambda: snntorch_reset(module)   # noqa: E731  (Leaky keeps its membrane)
    else:
        import norse.torch as nt
        module = nt.from_nir(g, dt=1.0)

    def run(x):
        reset()
        xs, outs, state = torch.from_numpy(x.astype(np.float32)), [], None
        with torch.no_grad():
            for t in range(xs.shape[1]):
                y, state = module(xs[:, t], state)
                outs.append(y)
        return torch.stack(outs, 1)
    return run, version(name)


if __name__ == "__main__":
    sys.exit(main())
