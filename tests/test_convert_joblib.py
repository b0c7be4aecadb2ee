"""convert trains its MLPs through joblib: the same networks as a plain serial training."""
from types import SimpleNamespace

import numpy as np

from snnfast import convert
from snnfast.datasets import train_val_split
from snnfast.mlp import make_mlp, preprocess, train_mlp
from snnfast.train import synthetic_digits


def test_parallel_trainings_equal_the_serial_reference():
    x_u8, y = synthetic_digits(300, 1, seed=3)[:2]
    y = y.astype(np.int64)
    a = SimpleNamespace(depths=[2, 3, 2], seed=1, width=24, epochs=2, patience=6, n_val=60)
    tr, va = train_val_split(len(x_u8), a.n_val, a.seed)
    data = {"train_u8": x_u8, "ytrain": y, "tr_idx": tr, "va_idx": va}
    parallel = convert._train_all(a, data, n_threads=2, progress=False)
    serial = convert._train_all(a, data, n_threads=1, progress=False)
    assert sorted(parallel) == sorted(serial) == [2, 3]
    x = preprocess(x_u8)
    for d in (2, 3):
        # what convert did before joblib, for one depth, in this process
        ref = make_mlp(d, width=a.width, seed=a.seed * 1000 + d)
        info = train_mlp(ref, x[tr], y[tr], x[va], y[va], epochs=a.epochs, patience=a.patience,
                         seed=a.seed * 1000 + d, n_threads=1)
        for net, got in ((parallel[d][0], parallel[d][1]), (serial[d][0], serial[d][1])):
            assert got["best_val_acc"] == info["best_val_acc"]
            for w, w_ref in zip(net.weights + net.biases, ref.weights + ref.biases):
                np.testing.assert_array_equal(w, w_ref)
