"""Where the time of a Conv-SNN training step goes, stage by stage.

    python bench/train_step.py [--preset default] [--threads N] [--images 6400] [--warmup 640]

Trains ``--warmup`` images first (so the spike rates are past their untrained peak), then
times ``--images`` more, batch by batch, with a timer around every compiled kernel and the
backward pass. Prints ms per step (64 images) for each stage; stages nest (``backward``
contains ``w1_adam_step`` and ``conv_rate_backward``), so the lines do not add up to
``step``; the last line is what the kernels leave of ``step``: the Python and NumPy code
between them.
MNIST must be in the local cache (``python -m snnfast.datasets fetch mnist``).
"""
import argparse
import functools
import sys
import time
from collections import defaultdict

import numpy as np

from snnfast._cli import openmp_wait_defaults

openmp_wait_defaults()     # as the command-line tools do, before the imports below load OpenMP

from snnfast import convsnn_numpy as cnp  # noqa: E402
from snnfast import datasets, effective_n_threads  # noqa: E402
from snnfast._config import config_dict  # noqa: E402
from snnfast.convsnn import ConvSNN  # noqa: E402

KERNELS = ("conv_forward", "hidden_forward", "w1_adam_step", "w1_sgd_step",
           "conv_patch_active", "conv_rate_backward", "adam_step_many", "ema_step")


def timed(fn, name, totals):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    return wrapper


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", choices=["default", "seed", "nir"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images", type=int, default=6400)
    p.add_argument("--warmup", type=int, default=640)
    args = p.parse_args(argv)
    X, y = datasets.load("mnist", "train", download=False)
    X = X.reshape(len(X), -1)
    m = ConvSNN(args.preset, seed=0, n_threads=args.threads)
    if m._K is None:
        p.error("the compiled kernels are not built")
    B, w = m.config.batch_size, args.warmup
    m.fit(X[:w], y[:w], epochs=1)
    totals = defaultdict(float)
    K = m._K
    for name in KERNELS:       # the model looks its kernels up on this module at call time
        setattr(K, name, timed(getattr(K, name), name, totals))
    cnp.surrogate_backward = timed(cnp.surrogate_backward, "backward", totals)
    cnp.reference_backward = timed(cnp.reference_backward, "backward", totals)
    step = timed(m._train_step, "step", totals)
    n = args.images - args.images % B
    with m._blas():
        for i in range(w, w + n, B):
            step(X[i:i + B], y[i:i + B].astype(np.int64), np.arange(i, i + B), 1, 1e-4)
    cfg = config_dict()
    steps = n // B
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}]; threads {effective_n_threads(args.threads)}; "
          f"preset {args.preset}; {n} images after {w} of warm-up: "
          f"{n / totals['step']:.0f} img/s")
    print(f"ms per step of {B} images:")
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:22s} {1e3 * t / steps:7.2f}")
    # the compiled kernels (with their Python wrappers) do not nest: the rest of a step is
    # the Python and NumPy code between them
    between = totals["step"] - sum(totals[name] for name in KERNELS)
    print(f"  {'between the kernels':22s} {1e3 * between / steps:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
