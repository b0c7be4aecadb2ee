"""Speed of the event-driven TTFS CNN simulator on a test set.

Usage::

    python bench/ttfs_cnn_sim.py runs/cnn_mnist/ttfs_cnn.h5 [--dataset mnist]
                                 [--threads 1 2] [--repeat 3] [--n-test 10000]

The network is a file written by ``python -m snnfast.convert --arch cnn`` (trained and
converted, so the spike sparsity is the real one). Reports, per dtype and thread count,
the median wall time to simulate the test images (spike times not recorded, as for plain
inference) and synaptic events per second.
"""
import argparse
import sys

import numpy as np

from _timing import median_time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("net")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-test", type=int, default=10000)
    a = p.parse_args(argv)
    from snnfast import ttfs_cnn
    from snnfast.datasets import load
    net = ttfs_cnn.load(a.net)
    x_u8, _ = load(a.dataset, "test")
    x64 = x_u8[:a.n_test].reshape(min(a.n_test, len(x_u8)), -1) / 255.0
    xs = {"float64": x64, "float32": x64.astype(np.float32)}
    print(f"{len(x64)} images; {'dtype':>8} {'threads':>7} {'median s':>9} {'Gevents/s':>9}")
    for dtype, x in xs.items():
        events = int(net.simulate(x, dtype=dtype, record_times=False).events.sum())
        for nt in a.threads:
            t, _ = median_time(lambda: net.simulate(x, dtype=dtype, n_threads=nt,  # noqa: B023
                                                    record_times=False), a.repeat)
            print(f"{'':>{len(str(len(x64))) + 8}} {dtype:>8} {nt:>7} {t:9.3f} "
                  f"{events / t / 1e9:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
