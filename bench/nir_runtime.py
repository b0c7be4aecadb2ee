"""Speed of the NumPy NIR runtime on the NIR paper's N-MNIST CNN (``cnn_sinabs.nir``).

    python bench/nir_runtime.py [--batch 64 256] [--steps 300] [--rate 0.02] [--repeats 3]
                                [--graph PATH] [--json out.json]

Synthetic N-MNIST-like input: every one of the 2x34x34 event pixels fires in a 1 ms bin with
probability ``--rate`` (independently), for ``--steps`` bins. The graph runs with dt = 1
(Sinabs' per-bin IF) and both summation modes of :func:`snnfast.nir.run` -- "ordered"
(deterministic, adds only inputs active somewhere in the batch) and "blas" (matrix
products) -- timed in turn (``bench/_timing.py``); the figure is samples per second. This is
the NumPy reference runtime: the compiled, event-driven engine and the comparison with
snnTorch's importer that issue 21 asks for are not part of it.
"""
import argparse
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
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from snnfast import nir as snir
    graph = snir.load(args.graph)
    out = {"graph": str(args.graph), "steps": args.steps, "rate": args.rate,
           "repeats": args.repeats, "batches": {}}
    for n in args.batch:
        x = events(n, args.steps, args.rate)
        runs = {s: (lambda s=s: snir.run(graph, x, dt=1.0, sums=s)) for s in snir.SUMS}
        times = alternate_times(runs, args.repeats)
        res = {s: {"times_s": t, "samples_per_s": n / statistics.median(t)}
               for s, t in times.items()}
        out["batches"][str(n)] = res
        for s, r in res.items():
            print(f"batch {n:4d}, T {args.steps}, rate {args.rate}: sums={s:<8} "
                  f"{r['samples_per_s']:8.2f} samples/s (median of {args.repeats})")
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
