"""Speed of the event-driven TTFS simulator on the MNIST test set.

Usage::

    python bench/ttfs_sim.py [--nets /tmp/ttfs_run] [--threads 1 2] [--repeat 3]
                             [--n-test 10000] [--out bench_ttfs.json]

``--nets`` is an output directory of ``python -m snnfast.convert`` (its ``ttfs_L*.h5``
files: trained, converted networks, so the spike sparsity is the real one). Reports,
per dtype and thread count, the best-of-``repeat`` wall time to simulate all test
images through every network (spike times not recorded, as for plain inference) and
with spike times recorded, plus synaptic events per second.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from snnfast._cli import openmp_wait_defaults  # noqa: E402

openmp_wait_defaults()     # as the command-line tools do, before any kernel loads OpenMP


def _best(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", type=Path, default=Path("/tmp/ttfs_run"))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(p, "--out", a.out)   # before the measurements
    from snnfast import ttfs
    from snnfast._config import config_dict
    from snnfast._utils import atomic_write_bytes
    from snnfast.datasets import load
    files = sorted(a.nets.glob("ttfs_L*.h5"), key=lambda f: int(f.stem.split("L")[-1]))
    if not files:
        print(f"no ttfs_L*.h5 in {a.nets}; run python -m snnfast.convert --out {a.nets} first",
              file=sys.stderr)
        return 2
    nets = [ttfs.load(f) for f in files]
    x_u8, _ = load("mnist", "test")
    x64 = x_u8[:a.n_test].reshape(min(a.n_test, len(x_u8)), -1) / 255.0
    xs = {"float64": x64, "float32": x64.astype(np.float32)}
    rows = []
    print(f"{'dtype':>8} {'thr':>3} {'record':>6} " + " ".join(f"{'L=' + str(n.depth):>8}"
                                                               for n in nets)
          + f" {'total s':>8} {'Gevents/s':>9}")
    for dtype in ("float64", "float32"):
        for nt in a.threads:
            for record in (False, True):
                times, events = [], 0
                for net in nets:
                    fn = lambda: net.simulate(xs[dtype], dtype=dtype, n_threads=nt,  # noqa: E731
                                              record_times=record)
                    times.append(_best(fn, a.repeat))
                    if not record:
                        events += int(net.simulate(xs[dtype], dtype=dtype, n_threads=nt,
                                                   record_times=False).events.sum())
                row = {"dtype": dtype, "threads": nt, "record_times": record,
                       "seconds_per_depth": dict(zip([n.depth for n in nets], times)),
                       "total_seconds": float(sum(times))}
                if not record:
                    row["synaptic_events"] = events
                    row["events_per_second"] = events / sum(times)
                rows.append(row)
                ev = f"{row['events_per_second'] / 1e9:9.2f}" if not record else f"{'':>9}"
                print(f"{dtype:>8} {nt:>3} {str(record):>6} "
                      + " ".join(f"{t:8.3f}" for t in times) + f" {sum(times):8.3f} {ev}")
    res = {"benchmark": "ttfs_sim", "n_images": len(x64), "repeat": a.repeat,
           "nets": [str(f) for f in files], "rows": rows, "machine": config_dict()}
    if a.out:
        atomic_write_bytes(a.out, json.dumps(res, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
