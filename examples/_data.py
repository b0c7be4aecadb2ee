"""Data for the examples: MNIST, or a small synthetic stand-in with ``--small``.

``--small`` (or the environment variable ``SNNFAST_EXAMPLES_SMALL=1``) uses a few hundred
synthetic digit-like images, so that every example runs in seconds without a download; the
test suite runs the examples that way.
"""
import os

import numpy as np


def small_requested(args):
    """True if ``--small`` was given or ``SNNFAST_EXAMPLES_SMALL`` is set to 1."""
    return args.small or os.environ.get("SNNFAST_EXAMPLES_SMALL", "") == "1"


def load_digits(small, n_train=None, n_test=None):
    """(X_train, y_train, X_test, y_test): uint8 (N, 28, 28) images and labels 0..9.

    MNIST through :func:`snnfast.datasets.load` (fetched into ~/.cache/snnfast on first use),
    or synthetic digits if ``small``; ``n_train``/``n_test`` keep only the first images.
    """
    if small:
        from snnfast.train import synthetic_digits
        X, y, Xt, yt = synthetic_digits(n_train or 600, n_test or 200, seed=0)
    else:
        from snnfast import datasets
        X, y = datasets.load("mnist", "train")
        Xt, yt = datasets.load("mnist", "test")
    return X[:n_train], np.asarray(y[:n_train]), Xt[:n_test], np.asarray(yt[:n_test])
