"""NumPy ReLU MLP: gradients, initialisation, training recipe, validation."""
import numpy as np
import pytest

from snnfast.mlp import MLP, _Adam, loss_and_grads, make_mlp, preprocess, train_mlp


def _loss(m, x, y):
    z = x @ m.weights[0].T + m.biases[0]
    for w, b in zip(m.weights[1:], m.biases[1:]):
        z = np.maximum(z, 0) @ w.T + b
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    m = make_mlp(3, n_in=7, width=5, n_out=4, seed=1).astype(np.float64)
    for b in m.biases:
        b[:] = rng.normal(0, 0.2, b.shape)
    x = rng.random((9, 7))
    y = rng.integers(0, 4, 9)
    loss, gw, gb = loss_and_grads(m, x, y)
    assert loss == pytest.approx(_loss(m, x, y), rel=1e-12)
    eps = 1e-6
    for params, grads in ((m.weights, gw), (m.biases, gb)):
        for p, g in zip(params, grads):
            assert g.shape == p.shape
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + eps
                up = _loss(m, x, y)
                p[idx] = old - eps
                down = _loss(m, x, y)
                p[idx] = old
                assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_make_mlp_xavier_and_seed():
    m = make_mlp(4, seed=3)
    assert m.sizes == [784, 400, 400, 400, 10] and m.depth == 4
    assert all(w.dtype == np.float32 for w in m.weights)
    for w, b in zip(m.weights, m.biases):
        a = np.sqrt(6.0 / (w.shape[0] + w.shape[1]))
        assert np.abs(w).max() <= a and np.abs(w).max() > 0.95 * a
        assert abs(w.std() - a / np.sqrt(3)) < 0.05 * a
        assert not b.any()
    same, other = make_mlp(4, seed=3), make_mlp(4, seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(m.weights, same.weights))
    assert not np.array_equal(m.weights[0], other.weights[0])


def test_adam_step_matches_textbook():
    rng = np.random.default_rng(1)
    p = rng.normal(size=5)
    g1, g2 = rng.normal(size=5), rng.normal(size=5)
    q = p.copy()
    opt = _Adam([q], lr=0.01)
    opt.step([g1])
    opt.step([g2])
    m = v = 0
    for t, g in enumerate((g1, g2), 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert np.allclose(q, p, rtol=1e-12, atol=1e-15)


def _blobs(n, seed):
    centers = np.random.default_rng(123).random((3, 20))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(centers[y] + rng.normal(0, 0.15, (n, 20)), 0, 1).astype(np.float32)
    return x, y


def test_training_learns_keeps_best_and_is_reproducible():
    x, y = _blobs(600, 0)
    xv, yv = _blobs(200, 1)
    runs = []
    for _ in range(2):
        m = make_mlp(3, n_in=20, width=16, n_out=3, seed=5)
        before = m.accuracy(xv, yv)
        info = train_mlp(m, x, y, xv, yv, epochs=6, patience=2, decay_every=2, seed=7,
                         n_threads=1, lr=1e-2, batch_size=16)
        runs.append(m)
    assert info["best_val_acc"] > max(0.9, before)
    assert info["best_val_acc"] == max(h["val_acc"] for h in info["history"])
    assert m.accuracy(xv, yv) == info["best_val_acc"]          # best weights restored
    assert info["history"][0]["lr"] == 1e-2 and info["history"][2]["lr"] == 5e-3
    assert info["epochs_run"] <= 6
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].weights, runs[1].weights))


def test_early_stopping_patience():
    x, y = _blobs(300, 2)
    m = make_mlp(2, n_in=20, width=8, n_out=3, seed=0)
    seen = []
    info = train_mlp(m, x, y, x[:5], y[:5], epochs=30, patience=1, seed=0, n_threads=1,
                     callback=seen.append)
    assert info["epochs_run"] < 30 and len(seen) == info["epochs_run"]
    assert info["epochs_run"] - info["best_epoch"] == 1


def test_preprocess_and_bad_inputs():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = preprocess(u8)
    assert x.dtype == np.float32 and x.shape == (1, 256)
    assert np.array_equal(x[0], np.arange(256, dtype=np.float32) / np.float32(255))
    with pytest.raises(ValueError):
        preprocess(u8.astype(np.float32))
    m = make_mlp(2, n_in=4, width=3, n_out=2)
    xs = np.zeros((3, 4), np.float32)
    for bad in (np.zeros((3, 5), np.float32), np.zeros((3, 4), np.int64),
                np.full((3, 4), np.nan, np.float32)):
        with pytest.raises(ValueError):
            m.forward(bad)
    with pytest.raises(TypeError):
        m.forward([[0, 0, 0, 0]])
    with pytest.raises(ValueError):
        loss_and_grads(m, xs, np.array([0, 1, 2]))      # label out of range
    with pytest.raises(ValueError):
        loss_and_grads(m, xs, np.array([0, 1]))         # wrong length
    with pytest.raises(ValueError):
        train_mlp(m, xs, np.zeros(3, int), xs, np.zeros(3, int), epochs=0)
    for kw in ({"depth": 0}, {"depth": 2, "width": 0}, {"depth": True}):
        with pytest.raises(ValueError):
            make_mlp(**kw)
    with pytest.raises(ValueError):
        MLP([np.zeros((3, 4))], [np.zeros(2)])
    with pytest.raises(ValueError):
        MLP([np.zeros((3, 4)), np.zeros((2, 5))], [np.zeros(3), np.zeros(2)])


def test_accuracy_checks_the_labels():
    x, y = _blobs(40, 3)
    m = make_mlp(2, n_in=20, width=8, n_out=3, seed=0)
    assert m.accuracy(x, y) == np.mean(m.predict(x) == y)
    # a (n, 1) column broadcast to n x n; out-of-range or float labels just gave 0.0
    for bad in (y[:, None], y[:5], y + 100, y - 1, y + 0.5, y.astype(float)):
        with pytest.raises(ValueError, match="y"):
            m.accuracy(x, bad)


def test_integer_weights_are_refused():
    # the float inputs in [0, 1] were cast to the weights' int dtype: every pixel became 0
    with pytest.raises(ValueError, match="floating point"):
        MLP([np.ones((10, 20), int)], [np.zeros(10, int)])
    with pytest.raises(ValueError, match="floating point"):
        MLP([np.ones((10, 20), np.float32)], [np.zeros(10, np.int32)])


@pytest.mark.parametrize("kw, match", [
    ({"lr": float("inf")}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"), ({"lr": "0.1"}, "lr"), ({"decay": float("nan")}, "decay"),
    ({"batch_size": 2.7}, "batch_size"), ({"batch_size": -1}, "batch_size"),
    ({"epochs": 1.5}, "epochs"), ({"patience": True}, "patience"),
    ({"decay_every": 0}, "decay_every")])
def test_train_mlp_rejects_bad_hyperparameters(kw, match):
    x, y = _blobs(30, 0)
    m = make_mlp(2, n_in=20, width=8, n_out=3, seed=0)
    with pytest.raises(ValueError, match=match):
        train_mlp(m, x, y, x, y, **{"epochs": 1, "n_threads": 1, **kw})


def test_train_mlp_rejects_bad_sets():
    x, y = _blobs(30, 0)
    m = make_mlp(2, n_in=20, width=8, n_out=3, seed=0)
    cases = [((x[:0], y[:0], x, y), "X must contain at least one sample"),     # ZeroDivisionError
             ((x, y, x[:0], y[:0]), "X_val must contain at least one sample"),  # TypeError
             ((x * 255, y, x, y), r"X must lie in \[0, 1\]"),
             ((x, y, x * 255, y), r"X_val must lie in \[0, 1\]"),
             ((x, y, x, y[:5]), "y_val")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            train_mlp(m, *args, epochs=1, n_threads=1)


def test_train_mlp_divergence_is_an_error():
    # lr=1e30 used to return NaN weights and a chance-level "best" model without a word
    x, y = _blobs(60, 0)
    m = make_mlp(2, n_in=20, width=8, n_out=3, seed=0)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="diverged"):
        train_mlp(m, x, y, x, y, epochs=2, lr=1e30, n_threads=1)
