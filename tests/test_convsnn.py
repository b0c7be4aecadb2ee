"""Tests of snnfast.ConvSNN: reference preset, surrogate gradient, backends, threads, I/O."""
import json

import h5py
import numpy as np
import pytest

from snnfast import convsnn_numpy as cnp
from snnfast.convsnn import (PARAM_SHAPES, ConvSNN, TrainingError, make_config,
                             shift_images)
from snnfast.network import Network

HAVE_KERNELS = __import__("snnfast.convsnn", fromlist=["x"])._kernels_module() is not None
needs_kernels = pytest.mark.skipif(not HAVE_KERNELS, reason="compiled kernels not built")


def _images(n, seed=0):
    """Digit-like uint8 images: random strokes on a dark background (some saturated pixels)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 28, 28), np.float64)
    for i in range(n):
        for _ in range(3):
            r, c = rng.integers(6, 22, 2)
            dr, dc = rng.integers(-1, 2, 2)
            for k in range(8):
                rr, cc = np.clip(r + k * dr, 0, 27), np.clip(c + k * dc, 0, 27)
                img[i, max(rr - 1, 0):rr + 2, max(cc - 1, 0):cc + 2] += rng.uniform(0.4, 1.0)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------ reference (the spec)
def _mix64(z):
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _spec_input(img, sid, seed, epoch, T=10):
    """Input spikes of one image (T, 784), Python ints for the stochastic part."""
    out = np.zeros((T, 784), np.uint8)
    p64 = img.astype(np.float64) / 255.0
    h0 = _mix64(_mix64(_mix64(seed ^ 0x9E3779B97F4A7C15) ^ epoch) ^ sid)
    for t in range(T):
        if t < 5:
            out[t] = p64 > 1.0 - t / 5.0
        else:
            for px in range(784):
                u24 = _mix64(h0 ^ ((t << 32) | px)) >> 40
                out[t, px] = u24 * 255 < int(img[px]) << 24
    return out


def _spec_seed_forward(p, images, ids, seed, epoch):
    """Seed-preset forward straight from the reference description, one image at a time."""
    f32 = np.float32
    w = p["conv_w"].reshape(16, 5, 5)
    res = []
    for img, sid in zip(images, ids):
        s_in = _spec_input(img, int(sid), seed, epoch)
        v_c = np.zeros((16, 12, 12), f32)
        v_h = np.zeros(1024, f32)
        n_c = np.zeros(2304, np.int64)
        n_h = np.zeros(1024, np.int64)
        acc = np.zeros(1024, f32)
        zc_all, zh_all = [], []
        for t in range(10):
            x = s_in[t].reshape(28, 28)
            cur = np.zeros((16, 12, 12), f32)
            for ky in range(5):
                for kx in range(5):
                    tap = x[ky:ky + 24:2, kx:kx + 24:2].astype(bool)
                    cur = np.where(tap[None], cur + w[:, ky, kx][:, None, None], cur)
            cur = cur + p["conv_b"][:, None, None]
            v_c = f32(0.9) * v_c
            v_c = v_c + cur
            z = v_c > f32(0.8)
            v_c = np.where(z, f32(0), v_c)
            zf = z.reshape(-1)
            n_c += zf
            zc_all.append(zf.astype(np.uint8))
            for j in np.nonzero(zf)[0]:          # cumulative drive: rows added in (t, j) order
                acc = acc + p["W1"][j]
            zh = np.zeros(1024, np.uint8)
            if t % 2 == 0:
                cur_h = (acc + p["b1"]) * f32(0.1)
                v_h = f32(0.9) * v_h
                v_h = v_h + cur_h
                zh = (v_h > f32(0.8)).astype(np.uint8)
                v_h = np.where(zh.astype(bool), v_h * f32(0.5), v_h)
                n_h += zh
            zh_all.append(zh)
        r_c = (n_c / 10.0).astype(f32)
        r_h = (n_h / 10.0).astype(f32)
        res.append((s_in, np.array(zc_all), np.array(zh_all), r_c, r_h))
    s_in, zc, zh, r_c, r_h = (np.array(a) for a in zip(*res))
    logits = r_h @ p["W2"] + p["b2"]
    return s_in, zc, zh, r_c, r_h, logits


def _spec_seed_step(p, r_c, r_h, logits, y, lr):
    """One reference training step (summed gradients, no spike derivative), float32."""
    f32 = np.float32
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    e = prob.copy()
    e[np.arange(len(y)), y] -= 1
    gW2, gb2 = r_h.T @ e, e.sum(axis=0)
    gW1 = r_c.T @ (e @ p["W2"].T)
    q = {k: v.copy() for k, v in p.items()}
    q["W2"] = (q["W2"] - f32(lr) * gW2) * f32(0.9999)
    q["b2"] = q["b2"] - f32(lr) * gb2
    q["W1"] = (q["W1"] - (f32(0.1) * f32(lr)) * gW1) * f32(0.9999)
    return q


@pytest.mark.parametrize("backend", ["kernels", "numpy"])
def test_seed_preset_forward_and_step_match_spec(backend):
    if backend == "kernels" and not HAVE_KERNELS:
        pytest.skip("kernels not built")
    m = ConvSNN("seed", seed=7, backend=backend, n_threads=1)
    X = _images(4, seed=1).reshape(4, 784)
    ids = np.array([3, 11, 0, 42])
    y = np.array([1, 2, 3, 4])
    p0 = m.params
    s_in, zc, zh, r_c, r_h, logits = _spec_seed_forward(p0, X, ids, seed=7, epoch=2)
    tr = m._forward(X, ids, 2, record=True) if backend == "kernels" else \
        cnp.forward(m._p, X, ids, 2, m.config, exact=True, record=True)
    np.testing.assert_array_equal(tr["s_in"], s_in)
    np.testing.assert_array_equal(tr["z_c"], zc)
    np.testing.assert_array_equal(tr["z_h"], zh)
    assert zh.sum() > 0 and zc.sum() > 0             # the test exercises spikes
    np.testing.assert_array_equal(tr["r_h"], r_h)
    np.testing.assert_allclose(tr["logits"], logits, rtol=1e-6, atol=1e-6)
    # one training step through the model (numpy backend forward is BLAS-ordered: the spikes
    # are checked above with exact=True; here only the update rule matters)
    lr = 0.01
    with m._blas():
        fw_loss, correct, fw = m._train_step(X, y, ids, 2, lr)
    expect = _spec_seed_step(p0, fw["r_c"], fw["r_h"], fw["logits"], y, lr)
    got = m.params
    for k in PARAM_SHAPES:
        np.testing.assert_allclose(got[k], expect[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for k in ("conv_w", "conv_b", "b1"):             # untrained in the reference
        np.testing.assert_array_equal(got[k], p0[k])
    assert not np.array_equal(got["W1"], p0["W1"])


def test_reseeded_noise_quirk():
    m = ConvSNN("seed", backend="numpy", reseeded_noise=True)
    X = _images(3).reshape(3, 784)
    a = cnp.forward(m._p, X, np.array([5, 6, 7]), 9, m.config, record=True)["s_in"]
    b = cnp.forward(m._p, X, np.array([0, 0, 0]), 1, m.config, record=True)["s_in"]
    np.testing.assert_array_equal(a, b)               # seed 42, epoch 0, batch position
    np.testing.assert_array_equal(a[0], _spec_input(X[0], 0, 42, 0))


# ------------------------------------------------------------------------ surrogate gradient
@pytest.mark.parametrize("preset", ["default", "nir"])
def test_surrogate_gradient_equals_finite_differences(preset):
    """With phi in place of the spike rates, the analytic gradient is the exact gradient."""
    cfg = make_config(preset)
    rng = np.random.default_rng(0)
    p = {"conv_w": rng.normal(0, 0.3, (16, 1, 5, 5)), "conv_b": rng.normal(0, 0.1, 16),
         "W1": rng.normal(0, 1 / 48, (2304, 1024)), "b1": rng.normal(0, 0.1, 1024),
         "W2": rng.normal(0, 1 / 32, (1024, 10)), "b2": rng.normal(0, 0.1, 10)}
    r_in = rng.integers(0, 11, (3, 784)) / 10.0
    y = np.array([1, 5, 7])

    def loss(q):
        fw = cnp.smooth_forward(q, r_in, cfg)
        return cnp.softmax_xent(fw["logits"], y)[0], fw

    _, fw = loss(p)
    _, prob = cnp.softmax_xent(fw["logits"], y)
    dl = prob.copy()
    dl[np.arange(3), y] -= 1
    dl /= 3
    g = cnp.surrogate_backward(p, fw, dl, cfg)
    assert all(g[k].dtype == np.float64 and g[k].shape == s for k, s in PARAM_SHAPES.items())
    for k in PARAM_SHAPES:
        flat = p[k].reshape(-1)
        picks = rng.choice(flat.size, 4, replace=False)
        if k == "W1":                       # rows of active conv neurons matter most
            picks[0] = np.argmax(np.abs(g[k]).reshape(-1))
        for i in picks:
            old = flat[i]
            eps = 1e-5
            flat[i] = old + eps
            lp = loss(p)[0]
            flat[i] = old - eps
            lm = loss(p)[0]
            flat[i] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - g[k].reshape(-1)[i]) <= 1e-7 + 1e-5 * abs(fd), (k, i, fd)


@needs_kernels
def test_surrogate_backward_with_back_product_on_nonzero_patches_only():
    # The kernels compute d @ W1.T only where a conv neuron's input patch is nonzero and
    # recover dL/db_c from the column sums: the gradients must equal the dense ones.
    from snnfast import _convsnn_kernels as K
    cfg = make_config("default")
    rng = np.random.default_rng(8)
    p = {"conv_w": rng.normal(0, 0.3, (16, 1, 5, 5)), "conv_b": rng.normal(0.3, 0.3, 16),
         "W1": rng.normal(0, 1 / 48, (2304, 1024)), "b1": rng.normal(0, 0.1, 1024),
         "W2": rng.normal(0, 1 / 32, (1024, 10)), "b2": rng.normal(0, 0.1, 10)}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    B = 12
    ink = _images(B, seed=9).reshape(B, 784) > 0
    r_in = (rng.integers(0, 11, (B, 784)) / 10.0 * ink).astype(np.float32)
    active = K.conv_patch_active(r_in)
    assert 0.2 < active.mean() < 0.9                  # both kinds of position occur
    fw = cnp.smooth_forward(p, r_in, cfg)
    _, prob = cnp.softmax_xent(fw["logits"], np.arange(B) % 10)
    dl = prob.copy()
    dl[np.arange(B), np.arange(B) % 10] -= 1
    dense = cnp.surrogate_backward(p, fw, dl, cfg)
    Wb = K.to_blocked(p["W1"])

    def skipping(c, d):
        back, total = K.w1_adam_step(Wb.copy(), np.zeros_like(Wb), np.zeros_like(Wb), c, d,
                                     lr=1e-3,
                                     step=1, active=active)
        return None, back, total
    def kernel_conv(x, w, b, back, total, scale, center, slope):
        return K.conv_rate_backward(x, w, b, back, total, scale=scale, center=center,
                                    slope=slope)
    for conv_grad in (None, kernel_conv):
        got = cnp.surrogate_backward(p, fw, dl, cfg, w1_step=skipping, conv_grad=conv_grad)
        for k in ("conv_w", "conv_b", "b1", "W2", "b2"):
            np.testing.assert_allclose(got[k], dense[k], rtol=1e-4,
                                       atol=1e-5 * np.abs(dense[k]).max(), err_msg=k)
    # the column sums matter: without them dL/db_c would miss the empty patches' share
    no_total = cnp.surrogate_backward(p, fw, dl, cfg, w1_step=lambda c, d: skipping(c, d)[:2]
                                      + (np.zeros(2304, np.float32),))
    assert not np.allclose(no_total["conv_b"], dense["conv_b"], rtol=1e-2)


def test_surrogate_derivative_is_derivative_of_phi():
    a = np.linspace(-2, 3, 101)
    d = cnp.surrogate(a, 0.45, 4.0)
    h = 1e-6
    fd = (cnp.surrogate(a + h, 0.45, 4.0, deriv=False) -
          cnp.surrogate(a - h, 0.45, 4.0, deriv=False)) / (2 * h)
    np.testing.assert_allclose(d, fd, rtol=1e-5, atol=1e-9)   # phi' has a kink at the centre


# the NumPy backend overflows in its worker threads, which np.errstate (per thread) misses
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", [pytest.param("kernels", marks=needs_kernels), "numpy"])
def test_diverging_training_raises(backend):
    # SGD with an absurd learning rate overflows the weights within a step or two: training
    # must stop with TrainingError (a ValueError saying where), never go on with NaN
    m = ConvSNN("seed", seed=0, lr=1e38, lr_schedule="constant", backend=backend)
    X = _images(256, seed=4).reshape(256, 784)
    y = np.arange(256) % 10
    with np.errstate(all="ignore"), pytest.raises(TrainingError, match=r"epoch 1, batch \d"):
        m.fit(X, y, epochs=1)
    assert m.step_ < 4
    # Adam's step is bounded by lr, so there an absurd lr is refused before any step
    m = ConvSNN("default", seed=0, lr=1e38, lr_schedule="constant", backend=backend)
    with pytest.raises(TrainingError, match="not a finite float32") as info:
        m.fit(X, y, epochs=1)
    assert isinstance(info.value, ValueError) and m.step_ == 0
    # a huge lr whose step is finite leaves finite, useless weights: caught at the epoch's end
    m = ConvSNN("default", seed=0, lr=1e30, batch_size=32, backend=backend)
    with np.errstate(all="ignore"), pytest.raises(TrainingError, match="ten times that of chance"):
        m.fit(X, y, epochs=1)
    assert m.epoch_ == 0 and m.step_ == 8
    # a large but workable lr (30x the default) is not mistaken for divergence
    ConvSNN("default", seed=0, lr=0.05, batch_size=32, backend=backend).fit(X, y, epochs=1)


# ------------------------------------------------------------------------ backends, threads
@needs_kernels
@pytest.mark.parametrize("preset", ["default", "seed", "nir"])
def test_kernels_match_numpy_backend(preset):
    mk = ConvSNN(preset, seed=3, n_threads=2)
    X = _images(6, seed=2).reshape(6, 784)
    ids = np.arange(6) + 100
    fk = mk._forward(X, ids, 4, record=True, train=True)
    fn = cnp.forward(mk.params, X, ids, 4, mk.config, exact=True, record=True)
    keys = ["s_in", "z_c", "z_h", "n_in", "n_c", "n_h", "logits", "a_h", "r_in"]
    if mk.config.trainer == "reference":              # only its backward pass reads r_c
        keys.append("r_c")
    for k in keys:
        np.testing.assert_array_equal(fk[k], fn[k], err_msg=k)
    for k in fn["counts"]:
        np.testing.assert_array_equal(fk["counts"][k], fn["counts"][k], err_msg=k)
    # the fast NumPy path (BLAS sums) agrees up to rounding
    mn = ConvSNN(preset, seed=3, backend="numpy")
    np.testing.assert_allclose(mn.forward_logits(X, ids, 4), fk["logits"], atol=0.2)


@needs_kernels
def test_training_step_backends_agree():
    X = _images(16, seed=4)
    y = np.arange(16) % 10
    mk = ConvSNN("default", seed=1, augment_shift=0, batch_size=16, n_threads=1)
    mn = ConvSNN("default", seed=1, augment_shift=0, batch_size=16, backend="numpy")
    mk.fit(X, y, epochs=1)
    mn.fit(X, y, epochs=1)
    pk, pn = mk.params, mn.params
    for k in PARAM_SHAPES:
        np.testing.assert_allclose(pk[k], pn[k], rtol=1e-4, atol=2e-6, err_msg=k)


@needs_kernels
@pytest.mark.parametrize("preset", ["default", "seed"])
def test_one_and_two_threads_bit_identical(preset):
    X = _images(40, seed=5)
    y = np.arange(40) % 10
    out = []
    for nt in (1, 2):
        m = ConvSNN(preset, seed=2, n_threads=nt, batch_size=16)
        m.fit(X, y, epochs=1)
        out.append((m.params, m.forward_logits(X[:8], np.arange(8)), m.counters_))
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(out[0][0][k], out[1][0][k], err_msg=k)
    np.testing.assert_array_equal(out[0][1], out[1][1])
    for k in out[0][2]:
        np.testing.assert_array_equal(out[0][2][k], out[1][2][k])


def test_trace_and_counters():
    m = ConvSNN("default", seed=0, backend="numpy")
    X = _images(3)
    tr = m.trace(X)
    assert tr["input"].shape == (3, 10, 784) and tr["input"].dtype == np.uint8
    assert tr["conv"].shape == (3, 10, 2304) and tr["hidden"].shape == (3, 10, 1024)
    np.testing.assert_array_equal(tr["hidden_update"], np.arange(10) % 2 == 1)
    assert tr["hidden"][:, ~tr["hidden_update"]].sum() == 0
    c = tr["counters"]
    np.testing.assert_array_equal(c["input_spikes"], tr["input"].sum(axis=2))
    np.testing.assert_array_equal(c["conv_spikes"], tr["conv"].sum(axis=2))
    np.testing.assert_array_equal(c["hidden_spikes"], tr["hidden"].sum(axis=2))
    # window drive, update on odd steps: the rows of the conv spikes of steps t-1 and t, or
    # (incrementally, after the first update) those of the neurons whose count changed by
    # one, twice for a change by two, if fewer
    conv = tr["conv"].sum(axis=2)
    win = tr["conv"][:, 0::2].astype(np.int64) + tr["conv"][:, 1::2]      # (3, 5, 2304)
    rows = win.sum(axis=2)
    rows[:, 1:] = np.minimum(rows[:, 1:], np.abs(np.diff(win, axis=1)).sum(axis=2))
    expect = np.zeros_like(conv)
    expect[:, 1::2] = rows * 1024
    np.testing.assert_array_equal(c["fc1_row_adds"], expect)
    assert (rows[:, 1:] < win[:, 1:].sum(axis=2)).any()          # incremental updates happened
    assert m.counters_["n_samples"] == 3
    np.testing.assert_array_equal(m.counters_["conv_spikes"], conv.sum(axis=0))


# ------------------------------------------------------------------------ training behaviour
def test_default_learns_a_separable_problem():
    X = _images(96, seed=8)
    y = (X.reshape(96, -1)[:, :392].sum(1) > X.reshape(96, -1)[:, 392:].sum(1)).astype(int)
    m = ConvSNN("default", seed=0, backend="numpy", batch_size=16, lr=3e-3, augment_shift=0)
    m.fit(X, y, X[:32], y[:32], epochs=6)
    assert m.evaluate(X, y)["accuracy"] >= 0.8
    assert m.history_[-1]["train_loss"] < m.history_[0]["train_loss"]
    assert m.best_epoch_ is not None


def test_shift_images():
    X = np.arange(2 * 784, dtype=np.int64).reshape(2, 784).astype(np.uint8)
    out = shift_images(X, np.array([1, 0]), np.array([0, -2]))
    a, b = X.reshape(2, 28, 28), out.reshape(2, 28, 28)
    np.testing.assert_array_equal(b[0, 1:], a[0, :-1])
    assert (b[0, 0] == 0).all()
    np.testing.assert_array_equal(b[1, :, :-2], a[1, :, 2:])
    assert (b[1, :, -2:] == 0).all()


def _shift_reference(X, dy, dx):
    out = np.zeros((len(X), 28, 28), np.uint8)
    for b, img in enumerate(X.reshape(-1, 28, 28)):
        for y in range(28):
            for x in range(28):
                if 0 <= y - dy[b] < 28 and 0 <= x - dx[b] < 28:
                    out[b, y, x] = img[y - dy[b], x - dx[b]]
    return out.reshape(len(X), 784)


@pytest.mark.parametrize("kernels", [True, False])
def test_shift_images_random(kernels, monkeypatch):
    import sys
    if not kernels:           # the NumPy fallback used when the extensions are not built
        monkeypatch.setitem(sys.modules, "snnfast._convsnn_conv", None)
    rng = np.random.default_rng(5)
    X = rng.integers(1, 256, (40, 784)).astype(np.uint8)
    for s in (1, 4, 27):
        dy, dx = rng.integers(-s, s + 1, (2, 40))
        dy[:2], dx[:2] = (s, -s), (-s, 0)
        np.testing.assert_array_equal(shift_images(X, dy, dx), _shift_reference(X, dy, dx))
    zero = np.zeros(40, np.int64)
    np.testing.assert_array_equal(shift_images(X, zero, zero), X)
    for bad in [(X, zero + 28, zero), (X[:, :700], zero, zero), (X, zero[:3], zero)]:
        with pytest.raises(ValueError):
            shift_images(*bad)


def test_schedules():
    from snnfast.convsnn import lr_at
    seed = make_config("seed")
    assert [round(lr_at(seed, e, 0) / 1e-2, 6) for e in (0, 5, 6, 10, 11, 29)] == \
        [1, 1, 0.95, 0.95, 0.9025, round(0.95 ** 5, 6)]
    d = make_config("default")
    assert lr_at(d, 0, 0.0) < 1e-3 * d.lr
    assert lr_at(d, 0, d.warmup_frac) == pytest.approx(d.lr)
    assert lr_at(d, 14, 0.999999) < 1e-6


# ------------------------------------------------------------------------ errors, I/O
def test_bad_inputs_raise():
    m = ConvSNN("default", backend="numpy")
    X = _images(4)
    with pytest.raises(ValueError, match="uint8"):
        m.predict(X.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.predict(X.reshape(4, 28 * 28)[:, :700])
    with pytest.raises(TypeError):
        m.predict([[0] * 784])
    with pytest.raises(ValueError, match="labels"):
        m.evaluate(X, np.array([0, 1, 2, 11]))
    with pytest.raises(ValueError, match="shape"):
        m.evaluate(X, np.array([0, 1, 2]))
    bad = m.params
    bad["W1"][3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.set_params(bad)
    with pytest.raises(ValueError, match="shape"):
        m.set_params({**m.params, "b1": np.zeros(5, np.float32)})
    with pytest.raises(TypeError, match="unknown"):
        ConvSNN("default", not_an_option=1)
    with pytest.raises(ValueError):
        ConvSNN("fancy")
    with pytest.raises(ValueError):
        ConvSNN("default", reset_h="bounce")
    with pytest.raises(ValueError):
        ConvSNN("default", backend="gpu")
    with pytest.raises(ValueError):
        m.forward_logits(X, np.array([-1, 0, 1, 2]))


def test_save_load_roundtrip(tmp_path):
    m = ConvSNN("nir", seed=5, backend="numpy", batch_size=8, augment_shift=1)
    X = _images(16)
    y = np.arange(16) % 10
    m.fit(X, y, X[:8], y[:8], epochs=1)
    path = tmp_path / "m.h5"
    m.save(path, metrics={"note": "x"})
    m2 = ConvSNN.load(path, backend="numpy")
    assert m2.config == m.config
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    np.testing.assert_array_equal(m2.forward_logits(X, np.arange(16)),
                                  m.forward_logits(X, np.arange(16)))
    assert m2.metrics_ == {"note": "x"} and m2.history_ == m.history_
    with h5py.File(path, "r") as f:
        assert f.attrs["snnfast_format"] == "convsnn-2" and f.attrs["preset"] == "nir"
        assert Network.from_dict(json.loads(f.attrs["network"])) == m.network


def _as_convsnn_1(path):
    """Turn a saved file into the convsnn-1 layout: the same, without the description."""
    with h5py.File(path, "r+") as f:
        f.attrs["snnfast_format"] = "convsnn-1"
        del f.attrs["network"]


def test_convsnn_1_files_still_load(tmp_path):
    m = ConvSNN("seed", seed=4, backend="numpy", thr_h=0.7)
    path = tmp_path / "old.h5"
    m.save(path, checkpoint=True)
    _as_convsnn_1(path)
    m2 = ConvSNN.load(path, backend="numpy")
    assert m2.config == m.config and m2.network == m.network
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    m2.save(path)                                   # saving again writes the new format
    with h5py.File(path, "r") as f:
        assert f.attrs["snnfast_format"] == "convsnn-2"


def test_load_refuses_a_description_that_is_not_the_configs(tmp_path):
    m = ConvSNN("default", backend="numpy")
    path = tmp_path / "m.h5"
    m.save(path)
    with h5py.File(path, "r+") as f:
        d = json.loads(f.attrs["network"])
        d["layers"][4]["threshold"] = 0.5            # the hidden LIF, not what config says
        f.attrs["network"] = json.dumps(d)
    with pytest.raises(ValueError, match="m.h5.*not the one its config runs"):
        ConvSNN.load(path)
    with h5py.File(path, "r+") as f:
        f.attrs["network"] = '{"layers": 3}'
    with pytest.raises(ValueError, match="m.h5.*network description"):
        ConvSNN.load(path)


def test_load_rejects_bad_files(tmp_path):
    m = ConvSNN("default", backend="numpy")
    good = tmp_path / "good.h5"
    m.save(good)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:20000])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5 at all\n")
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f.attrs["snnfast_format"] = "convsnn-1"
        f.attrs["config"] = '{"preset": "default"}'
    for p in (trunc, foreign, text, wrong, tmp_path / "missing.h5"):
        with pytest.raises(ValueError, match=p.name):
            ConvSNN.load(p)


@pytest.mark.parametrize("kw, match", [
    (dict(seed=2 ** 64), "seed"), (dict(T=10_001), "T must be"), (dict(n_det=10_001), "n_det"),
    (dict(eps=0.0), "eps"), (dict(lr="0.1"), "lr must be a number"),
    (dict(beta_c=1e39), "beta_c must be finite in float32"),
    (dict(surr_slope_c=-1.0), "surr_slope_c"), (dict(final_lr_frac=-0.5), "final_lr_frac"),
    (dict(warmup_frac=2.0), "warmup_frac"),
    (dict(hidden_period=10_000, hidden_phase=9_999), "never updated"),
    (dict(reseeded_noise="yes"), "reseeded_noise must be"),
    (dict(reseeded_noise=True), "preset 'seed' only")])
def test_config_refuses_what_the_kernels_cannot_run(kw, match):
    # each of these used to be accepted and fail at the first batch (or give garbage)
    with pytest.raises(ValueError, match=match):
        ConvSNN("default", backend="numpy", **kw)


def _damage(path, fn):
    # without its digest marker the file reads as one written before digests existed, so
    # these damages reach the content checks (the digests themselves: test_reliability.py)
    with h5py.File(path, "r+") as f:
        fn(f)
        del f.attrs["array_digests"]


def _set_attr(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


@pytest.mark.parametrize("damage, match", [
    (_set_attr("config", "[1, 2]"), "config is a JSON list"),
    (_set_attr("config", "{bad json"), "cannot read"),
    (_set_attr("epoch", -3), "epoch must be >= 0"),
    (_set_attr("partial", '"hello"'), "mid-epoch position"),
    (_set_attr("partial", '{"epoch": 1, "batch": 9, "sums": {}}'), "mid-epoch position"),
    (lambda f: f["optimizer"].attrs.__setitem__("t", -5), "optimizer step"),
    (lambda f: f["optimizer/m/W2"].__setitem__((0, 0), np.nan), "optimizer state m: .*W2"),
    (lambda f: f["optimizer/v/b1"].__setitem__(0, -1.0), "optimizer state v"),
    (lambda f: f["optimizer/m"].__delitem__("b2"), "optimizer state m holds"),
    (lambda f: f["best/W1"].__setitem__((0, 0), np.nan), "best-validation weights"),
])
def test_load_refuses_a_damaged_training_state(tmp_path, damage, match):
    # a checkpoint that loads must resume: damage shows at load, naming the file
    m = ConvSNN("default", backend="numpy", batch_size=8)
    X, y = _images(16), np.arange(16) % 10
    m.fit(X, y, X[:8], y[:8], epochs=1)
    path = tmp_path / "ck.h5"
    m.save(path, checkpoint=True)
    ConvSNN.load(path, backend="numpy")          # intact: loads
    _damage(path, damage)
    with pytest.raises(ValueError, match=f"ck.h5: .*{match}"):
        ConvSNN.load(path, backend="numpy")


def test_load_blames_the_environment_not_the_file(tmp_path, monkeypatch):
    m = ConvSNN("default", backend="numpy")
    m.save(tmp_path / "m.h5")
    monkeypatch.setenv("SNNFAST_NUM_THREADS", "abc")
    with pytest.raises(ValueError) as exc:
        ConvSNN.load(tmp_path / "m.h5", backend="numpy")
    assert "SNNFAST_NUM_THREADS" in str(exc.value) and "m.h5" not in str(exc.value)


def test_save_and_fit_arguments(tmp_path):
    m = ConvSNN("default", backend="numpy", batch_size=8)
    m.save(tmp_path / "m.h5", metrics={"acc": np.float32(0.5), "n": np.int64(3)})
    assert ConvSNN.load(tmp_path / "m.h5", backend="numpy").metrics_ == {"acc": 0.5, "n": 3}
    with pytest.raises(ValueError, match="is a directory"):
        m.save(tmp_path)
    X, y = _images(8), np.arange(8) % 10
    with pytest.raises(ValueError, match="X_val and y_val together"):
        m.fit(X, y, y_val=y)
    with pytest.raises(ValueError, match="epochs must be an integer"):
        m.fit(X, y, epochs=1.9)
    with pytest.raises(TypeError, match="callback must return a dict"):
        m.fit(X, y, epochs=1, callback=lambda model, metrics: 1)


def _fit_interrupted(m, X, y, after):
    """fit() that receives a Ctrl-C request after ``after`` optimiser steps."""
    orig = m._train_step

    def step(*a, **k):
        out = orig(*a, **k)
        if m.step_ == after:
            m.trainer._stop = True
        return out
    m._train_step = step
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, y, X[:8], y[:8], epochs=2)
    del m._train_step


@pytest.mark.parametrize("backend", ["kernels", "numpy"])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, backend):
    if backend == "kernels" and not HAVE_KERNELS:
        pytest.skip("kernels not built")
    X = _images(24, seed=9)
    y = np.arange(24) % 10
    kw = dict(seed=4, backend=backend, n_threads=1, batch_size=8, augment_shift=2,
              ema_decay=0.9, ema_every=2)
    ref = ConvSNN("default", **kw).fit(X, y, X[:8], y[:8], epochs=2, restore_best=False)
    m = ConvSNN("default", **kw)
    _fit_interrupted(m, X, y, after=4)              # stops inside epoch 2 (3 batches/epoch)
    assert m.epoch_ == 1 and m.trainer._partial["batch"] == 1
    m.save(tmp_path / "ck.h5", checkpoint=True)
    m2 = ConvSNN.load(tmp_path / "ck.h5", n_threads=1, backend=backend)
    m2.fit(X, y, X[:8], y[:8], epochs=2, restore_best=False)
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(m2.params[k], ref.params[k], err_msg=k)
    assert m2.step_ == ref.step_ == 6
    assert m2._ema is not None
    for k in m2._ema:                                # the weight average resumes exactly too
        np.testing.assert_array_equal(m2._ema[k], ref._ema[k], err_msg=k)
    assert m2.history_[-1]["train_loss"] == pytest.approx(ref.history_[-1]["train_loss"])


@pytest.mark.parametrize("backend", ["numpy", "kernels"])
def test_weight_average_follows_its_formula(backend):
    if backend == "kernels" and not HAVE_KERNELS:
        pytest.skip("kernels not built")
    m = ConvSNN("default", seed=0, backend=backend, ema_decay=0.5, ema_every=1, n_threads=1)
    X = _images(8).reshape(8, 784)
    y = np.arange(8) % 10
    raws = []
    with m._blas():
        for _ in range(3):
            m._train_step(X, y, np.arange(8), 0, 1e-3)
            raws.append(m._canonical(m._p))
    expect = {k: v.astype(np.float64) for k, v in raws[0].items()}
    for step, raw in ((2, raws[1]), (3, raws[2])):
        d = min(0.5, (1.0 + step) / (10.0 + step))
        expect = {k: d * expect[k] + (1 - d) * raw[k] for k in expect}
    got = m.params
    for k in PARAM_SHAPES:
        np.testing.assert_allclose(got[k], expect[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert not np.array_equal(got["W1"], m._canonical(m._p)["W1"])   # inference: the average


def test_aligned_copy_and_zeros_are_page_aligned():
    from snnfast._utils import aligned_copy, aligned_zeros
    a = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)[:, ::2]   # not contiguous
    for b, want in ((aligned_copy(a), a), (aligned_zeros(a.shape), np.zeros(a.shape))):
        assert b.ctypes.data % 4096 == 0 and b.flags.c_contiguous and b.flags.writeable
        assert b.shape == a.shape and b.dtype == np.float32 and not np.shares_memory(a, b)
        np.testing.assert_array_equal(b, want)
    assert aligned_zeros((2, 3), np.int64).dtype == np.int64


@needs_kernels
def test_streamed_copies_of_w1_are_page_aligned():
    # the weight average and Adam's moments of W1b are read row by row with vector loads as
    # the model's own W1b is: malloc's placement (16-byte aligned) made FC1 over the
    # average ~30 % slower in some processes; they are page-aligned as to_blocked's copy
    m = ConvSNN("default", seed=0, ema_decay=0.5, ema_every=1, n_threads=1)
    X = _images(8).reshape(8, 784)
    with m._blas():
        for _ in range(2):
            m._train_step(X, np.arange(8) % 10, np.arange(8), 0, 1e-3)
    arrays = {"W1b": m._p["W1b"], "ema": m._ema["W1b"], "m": m._opt["m"]["W1b"],
              "v": m._opt["v"]["W1b"]}
    assert {k: a.ctypes.data % 4096 for k, a in arrays.items()} == dict.fromkeys(arrays, 0)
    assert not np.array_equal(arrays["ema"], arrays["W1b"])       # the average moved apart
