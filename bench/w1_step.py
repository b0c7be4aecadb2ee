"""The training step's work on W1: fused kernels vs the same work through NumPy/BLAS.

    python bench/w1_step.py [--threads N] [--batch 64] [--repeats 20] [--json out.json]

Per training batch the default preset needs dL/dW1 = c.T @ d, the back product d @ W1.T
(with the old weights) and an Adam step over W1's 2.36 M values; the seed preset needs the
gradient and an SGD step with weight decay. The baseline does this as a competent NumPy
program does: two sgemms (BLAS with the same thread count) and the update of the NumPy
baseline (``convsnn_numpy.Adam``, or two in-place array operations for SGD). snnfast does
each in one pass over the blocked W1 (``w1_adam_step``, ``w1_sgd_step``); as in training,
its back product is computed only where the conv neuron's input patch is nonzero (the
second Adam line computes all of it). The activity c is that of a real forward pass (MNIST
from the local cache if present, else synthetic blobs); every figure is a median.
"""
import argparse
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from _timing import median_time  # bench/_timing.py (the script directory is on sys.path)
from snnfast._cli import openmp_wait_defaults

openmp_wait_defaults()     # as the command-line tools do, before the imports below load OpenMP

from kernels import G, load_images  # noqa: E402

from snnfast import _convsnn_kernels as K  # noqa: E402
from snnfast import convsnn_numpy as cnp  # noqa: E402
from snnfast import effective_n_threads  # noqa: E402
from snnfast._config import config_dict  # noqa: E402


def operands(B, rng):
    """Conv activity per hidden update (default preset, untrained weights), d, W1, and the
    conv positions whose input patch has a nonzero pixel (where training needs the back
    product; it uses the pixels that spiked, a subset of these)."""
    images, origin = load_images(B, False, rng)
    C, K2 = G.channels, G.n_taps
    conv_w = rng.normal(0, np.sqrt(2 / K2), (C, K2)).astype(np.float32)
    conv = K.conv_forward(images, np.arange(B), 0, 0, conv_w, np.zeros(C, np.float32))
    c = (conv.drive_counts(2, 1, "window") / np.float32(5)).astype(np.float32)
    d = rng.normal(0, 1e-3, (B, G.hidden)).astype(np.float32)
    W1 = rng.normal(0, 1 / np.sqrt(G.n_conv), (G.n_conv, G.hidden)).astype(np.float32)
    active = K.conv_patch_active((images > 0).astype(np.float32))
    return c, d, W1, active, origin


def numpy_adam(params, opt, c, d, lr=1e-3):
    """The NumPy baseline's Adam (``convsnn_numpy.Adam``) after the two BLAS products."""
    back = d @ params["W1"].T
    opt.step(params, {"W1": c.T @ d}, lr)
    return back


def numpy_sgd(W1, c, d, rate=1e-3, decay=0.9999):
    W1 -= np.float32(rate) * (c.T @ d)
    W1 *= np.float32(decay)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(p, "--json", args.json)   # before the measurements
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    nt = effective_n_threads(args.threads)
    cfg = config_dict()
    rng = np.random.default_rng(0)
    c, d, W1, active, origin = operands(args.batch, rng)
    Wb = K.to_blocked(W1)
    m, v = np.zeros_like(Wb), np.zeros_like(Wb)
    pn = {"W1": W1.copy()}
    opt = cnp.Adam(pn)
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}]; threads {nt}; batch {args.batch}; block width "
          f"{Wb.shape[2]}; activity from {origin}: {100 * (c != 0).mean():.1f} % of c nonzero, "
          f"{100 * active.mean():.1f} % of the back product wanted")
    cases = {
        "adam (grad + back + step)": (
            lambda: K.w1_adam_step(Wb, m, v, c, d, lr=1e-9, step=10, active=active,
                                   n_threads=nt),
            lambda: numpy_adam(pn, opt, c, d, lr=1e-9)),
        "adam, whole back product": (
            lambda: K.w1_adam_step(Wb, m, v, c, d, lr=1e-9, step=10, n_threads=nt),
            lambda: numpy_adam(pn, opt, c, d, lr=1e-9)),
        "sgd (grad + step)": (
            lambda: K.w1_sgd_step(Wb, c, d, rate=1e-9, decay=1.0, n_threads=nt),
            lambda: numpy_sgd(pn["W1"], c, d, rate=1e-9, decay=1.0)),
    }
    out = {"config": cfg, "threads": nt, "batch": args.batch, "cases": {}}
    with threadpool_limits(nt, user_api="blas"):
        for name, (fast, base) in cases.items():
            tf, _ = median_time(fast, args.repeats)
            tb, _ = median_time(base, args.repeats)
            out["cases"][name] = {"snnfast_ms": 1e3 * tf, "numpy_ms": 1e3 * tb}
            print(f"{name:27s}: snnfast {1e3 * tf:6.2f} ms   numpy/BLAS {1e3 * tb:6.2f} ms   "
                  f"x{tb / tf:.1f}   (this stage alone: {args.batch / tf:.0f} img/s)")
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
