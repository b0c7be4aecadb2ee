"""Compiled Conv-SNN kernels against the NumPy oracle of the forward contract (fast tests)."""
import os
import sys

import numpy as np
import pytest

from snnfast import _convsnn_kernels as K
from snnfast import convsnn_numpy as cnp

sys.path.insert(0, os.path.dirname(__file__))  # the oracle sits beside this file (any import mode)
import _convsnn_oracle as O  # noqa: E402

PRESETS = {
    "seed": dict(reset_h="halve", period=2, phase=0, drive="cumulative", scale=0.1),
    "default": dict(reset_h="subtract", period=2, phase=1, drive="window", scale=1.0,
                    incremental=True),
    "nir": dict(reset_h="zero", period=1, phase=0, drive="window", scale=1.0),
}


def random_images(rng, B, p_nonzero=0.2):
    """uint8 images with many exact 0, some exact 255 and random grey levels."""
    img = np.where(rng.random((B, 784)) < p_nonzero, rng.integers(1, 256, (B, 784)), 0)
    img[rng.random((B, 784)) < 0.03] = 255
    return img.astype(np.uint8)


def random_params(rng, w_scale=0.3, zeros=True):
    conv_w = rng.normal(0, np.sqrt(2 / 25), (16, 25)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, 16).astype(np.float32)
    W1 = rng.normal(0, w_scale * np.sqrt(2 / 3328) * 10, (2304, 1024)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 1024).astype(np.float32)
    if zeros:
        conv_w[rng.random((16, 25)) < 0.1] = 0.0
        W1[rng.random((2304, 1024)) < 0.05] = 0.0
        b1[:7] = 0.0
    return conv_w, conv_b, W1, b1


def run_kernels(images, sids, seed, epoch, params, mode, *, T=10, n_det=5, bw=None,
                n_threads=2):
    conv_w, conv_b, W1, b1 = params
    cr = K.conv_forward(images, sids, seed, epoch, conv_w, conv_b, T=T, n_det=n_det,
                        record_input=True, n_threads=n_threads)
    hr = K.hidden_forward(cr, K.to_blocked(W1, bw), b1, reset=mode["reset_h"],
                          period=mode["period"], phase=mode["phase"], drive=mode["drive"],
                          scale=mode["scale"], incremental=mode.get("incremental", False),
                          record=True, n_threads=n_threads)
    return cr, hr


def assert_matches_oracle(cr, hr, ref):
    np.testing.assert_array_equal(cr.input_spikes, ref["input_spikes"])
    np.testing.assert_array_equal(cr.conv_spikes(), ref["conv_spikes"])
    np.testing.assert_array_equal(hr.spikes, ref["hidden_spikes"])
    np.testing.assert_array_equal(cr.n_in, ref["n_in"])
    np.testing.assert_array_equal(cr.n_c, ref["n_c"])
    np.testing.assert_array_equal(hr.n_h, ref["n_h"])
    np.testing.assert_array_equal(cr.in_count, ref["in_count"])
    np.testing.assert_array_equal(cr.spk_cnt, ref["conv_count"])
    np.testing.assert_array_equal(cr.conv_events, ref["conv_events"])
    np.testing.assert_array_equal(hr.hid_count, ref["hid_count"])
    np.testing.assert_array_equal(hr.fc1_adds, ref["fc1_adds"])
    # same additions in the same order: the float32 drive sums are bit-identical
    np.testing.assert_array_equal(hr.ih_sum, ref["ih_sum"])
    for t in range(cr.T):  # spike lists ascending, counts consistent
        for b in range(cr.batch_size):
            idx = cr.spk_idx[b, t, :cr.spk_cnt[b, t]]
            assert np.all(np.diff(idx.astype(np.int64)) > 0)


# ------------------------------------------------------------------ random numbers
def test_det_table_equals_float64_rule():
    u = np.arange(256)
    for T, n_det in ((10, 5), (12, 7), (4, 3), (3, 5), (6, 0)):
        table = K.det_table(T, n_det)
        assert table.shape == (T,) and table.dtype == np.int32
        for t in range(T):
            if t < n_det:
                want = u / 255.0 > 1.0 - t / float(n_det)
                np.testing.assert_array_equal(u >= table[t], want)
            else:
                assert table[t] == -1
    assert K.det_table(10, 5)[0] == 256          # t = 0: no pixel spikes


def test_uniform24_equals_numpy_mix64():
    rng = np.random.default_rng(3)
    pixels = np.arange(784, dtype=np.int64)
    for seed, epoch in ((42, 0), (0, K.EVAL_EPOCH), (2**64 - 1, 2**63 + 5),
                        (int(rng.integers(2**62)), int(rng.integers(1000)))):
        sids = np.array([0, 1, 59999, 2**40 + 3], np.int64)
        for step in (0, 5, 9):
            got = K.uniform24(seed, epoch, sids, step, pixels)
            for i, sid in enumerate(sids):
                np.testing.assert_array_equal(got[i], O.u24(seed, epoch, sid, step, pixels))
    assert got.max() < 2**24


def test_bernoulli_frequency():
    levels = np.array([1, 30, 64, 128, 200, 254], np.uint8)
    B = 40
    images = np.repeat(levels, 784 // len(levels) + 1)[:784][None, :].repeat(B, 0)
    images = np.ascontiguousarray(images)
    w = np.zeros((16, 25), np.float32)
    cr = K.conv_forward(images, np.arange(B, dtype=np.int64), 7, 1, w, np.zeros(16, np.float32),
                        T=10, n_det=5, record_input=True)
    stoch = cr.input_spikes[:, 5:].astype(np.float64)         # (B, 5, 784)
    for lv in levels:
        cols = images[0] == lv
        n = stoch[:, :, cols].size
        freq = stoch[:, :, cols].mean()
        p = lv / 255.0
        assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-12, (lv, freq, p)


# ------------------------------------------------------------------ forward vs oracle
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_forward_matches_oracle(preset):
    rng = np.random.default_rng({"seed": 11, "default": 12, "nir": 13}[preset])
    B = 5                                         # odd: exercises the unpaired-sample path
    images = random_images(rng, B)
    sids = rng.integers(0, 60000, B).astype(np.int64)
    params = random_params(rng)
    seed, epoch = int(rng.integers(2**63)), int(rng.integers(100))
    mode = PRESETS[preset]
    cr, hr = run_kernels(images, sids, seed, epoch, params, mode)
    ref = O.forward(images, sids, seed, epoch, *params, T=10, n_det=5, **mode)
    assert_matches_oracle(cr, hr, ref)
    assert ref["hidden_spikes"].any() and ref["conv_spikes"].any()   # not a vacuous test
    assert hr.update_steps == tuple(t for t in range(10) if t % mode["period"] == mode["phase"])
    if mode.get("incremental"):
        assert ref["n_incremental"] > 0 and ref["n_repeated"] > 0


@pytest.mark.parametrize("period,phase,T", [(2, 1, 10), (2, 0, 9), (1, 0, 6), (3, 1, 10),
                                            (4, 3, 12)])
def test_incremental_window_drive_matches_oracle(period, phase, T):
    """Incremental updates where both windows span <= 2 steps and it saves rows, else direct."""
    rng = np.random.default_rng(40 + 7 * period + phase)
    B = 7
    images = random_images(rng, B, 0.35)
    sids = np.arange(B, dtype=np.int64) + 3
    params = random_params(rng)
    mode = dict(reset_h="subtract", period=period, phase=phase, drive="window", scale=1.0,
                incremental=True)
    cr, hr = run_kernels(images, sids, 9, 3, params, mode, T=T, n_det=4)
    ref = O.forward(images, sids, 9, 3, *params, T=T, n_det=4, **mode)
    assert_matches_oracle(cr, hr, ref)
    if period <= 2:
        assert ref["n_incremental"] > 0
        assert ref["n_repeated"] > 0 or period == 1       # 1-step windows: d is -1..1
    else:                    # windows of 3 or 4 steps: always the direct sum
        assert ref["n_incremental"] == 0
    # the same drive as the direct sums up to rounding
    direct = O.forward(images, sids, 9, 3, *params, T=T, n_det=4, **dict(mode, incremental=False))
    np.testing.assert_allclose(hr.ih_sum, direct["ih_sum"], rtol=1e-5, atol=1e-4)


def test_incremental_needs_window_drive():
    rng = np.random.default_rng(2)
    params = random_params(rng)
    cr = K.conv_forward(random_images(rng, 2), np.arange(2), 0, 0, *params[:2])
    with pytest.raises(ValueError, match="window"):
        K.hidden_forward(cr, K.to_blocked(params[2]), params[3], drive="cumulative",
                         incremental=True)
    with pytest.raises(TypeError):
        K.hidden_forward(cr, K.to_blocked(params[2]), params[3], incremental="yes")


def test_outputs_written_in_full(monkeypatch):
    # the wrappers allocate most outputs uninitialised: every element must come from the
    # kernels, so outputs allocated over junk must still equal the oracle
    real_empty = np.empty

    def junk_empty(shape, dtype=float, **kw):
        a = real_empty(shape, dtype, **kw)
        a.reshape(-1).view(np.uint8)[:] = 0xA5
        return a
    rng = np.random.default_rng(19)
    B = 6
    images = random_images(rng, B)
    sids = np.arange(B, dtype=np.int64)
    params = random_params(rng)
    mode = PRESETS["default"]
    monkeypatch.setattr(np, "empty", junk_empty)
    cr, hr = run_kernels(images, sids, 5, 1, params, mode)
    monkeypatch.undo()
    assert_matches_oracle(cr, hr, O.forward(images, sids, 5, 1, *params, T=10, n_det=5, **mode))


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("bw", K.SUPPORTED_BLOCK_WIDTHS)
def test_every_block_width_matches_oracle(bw, incremental):
    rng = np.random.default_rng(100 + bw)
    B, T, n_det = 7, 7, 3                          # a group of 4, a pair and a single sample
    images = random_images(rng, B, 0.3)
    sids = np.arange(B, dtype=np.int64) * 7
    params = random_params(rng)
    mode = dict(reset_h="subtract", period=3, phase=2, drive="cumulative", scale=0.5)
    if incremental:
        mode = dict(reset_h="halve", period=2, phase=0, drive="window", scale=0.5,
                    incremental=True)
    conv_w4 = params[0].reshape(16, 1, 5, 5)                 # the (16, 1, 5, 5) form works too
    cr, hr = run_kernels(images, sids, 1, 2, (conv_w4,) + params[1:], mode, T=T, n_det=n_det,
                         bw=bw)
    ref = O.forward(images, sids, 1, 2, *params, T=T, n_det=n_det, **mode)
    assert_matches_oracle(cr, hr, ref)
    if incremental:
        assert ref["n_incremental"] > 0 and ref["n_repeated"] > 0


def test_conv_gather_equals_scatter():
    rng = np.random.default_rng(17)
    images = random_images(rng, 9, 0.35)
    sids = np.arange(9, dtype=np.int64)
    conv_w, conv_b, _, _ = random_params(rng)
    a = K.conv_forward(images, sids, 4, 4, conv_w, conv_b, conv_method="scatter")
    b = K.conv_forward(images, sids, 4, 4, conv_w, conv_b, conv_method="gather")
    np.testing.assert_array_equal(a.conv_spikes(), b.conv_spikes())
    np.testing.assert_array_equal(a.spk_cnt, b.spk_cnt)
    np.testing.assert_array_equal(a.n_c, b.n_c)
    with pytest.raises(ValueError):
        K.conv_forward(images, sids, 4, 4, conv_w, conv_b, conv_method="fft")


def test_conv_event_table_and_counters():
    np.testing.assert_array_equal(K.conv_event_table(), O.conv_events_per_pixel())
    rng = np.random.default_rng(5)
    images = random_images(rng, 4)
    params = random_params(rng)
    direct = dict(PRESETS["default"], incremental=False)
    cr, hr = run_kernels(images, np.arange(4, dtype=np.int64), 0, 0, params, direct)
    sc, st = cr.sample_counters(), cr.step_counters()
    assert sc["conv_spikes"].sum() == st["conv_spikes"].sum() == cr.n_c.sum()
    assert sc["input_spikes"].sum() == cr.n_in.sum() == cr.input_spikes.sum()
    assert (hr.sample_counters()["hidden_spikes"] == hr.n_h.sum(1)).all()
    # direct sums: every conv spike before the last update is added exactly once
    last = max(hr.update_steps)
    assert hr.fc1_adds.sum() == cr.spk_cnt[:, :last + 1].sum() * 1024
    # incremental: the rows actually added and subtracted (the oracle's count), fewer
    _, hi = run_kernels(images, np.arange(4, dtype=np.int64), 0, 0, params, PRESETS["default"])
    assert hi.fc1_adds.sum() < hr.fc1_adds.sum()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_drive_counts(preset):
    rng = np.random.default_rng(31)
    B, mode = 6, PRESETS[preset]
    images = random_images(rng, B)
    params = random_params(rng)
    cr, hr = run_kernels(images, np.arange(B, dtype=np.int64), 3, 1, params, mode)
    z = cr.conv_spikes().astype(np.int64)                      # (B, T, 2304)
    np.testing.assert_array_equal(z.sum(1), cr.n_c)
    want = np.zeros((B, 2304), np.int64)
    prev = 0
    for u in hr.update_steps:                                  # straight from the contract
        if mode["drive"] == "cumulative":
            want += z[:, :u + 1].sum(1)
        else:
            want += z[:, prev:u + 1].sum(1)
        prev = u + 1
    got = cr.drive_counts(mode["period"], mode["phase"], mode["drive"])
    np.testing.assert_array_equal(got, want)
    # the documented use: summed drive = scale * (drive_counts @ W1 + U * b1)
    W1, b1 = params[2].astype(np.float64), params[3].astype(np.float64)
    approx = mode["scale"] * (got @ W1 + hr.n_updates * b1)
    np.testing.assert_allclose(hr.ih_sum, approx, rtol=1e-4, atol=1e-3)
    w = rng.integers(-3, 4, cr.T).astype(np.int32)
    np.testing.assert_array_equal(cr.weighted_counts(w), (z * w[None, :, None]).sum(1))


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("drive", ["cumulative", "incremental"])
def test_thread_count_bit_identical(drive):
    rng = np.random.default_rng(21)
    B = 37
    images = random_images(rng, B)
    sids = rng.permutation(1000)[:B].astype(np.int64)
    conv_w, conv_b, W1, b1 = random_params(rng)
    W1b = K.to_blocked(W1)
    hidden = dict(reset="halve", period=2, phase=0, drive="cumulative", scale=0.1)
    if drive == "incremental":
        hidden = dict(reset="subtract", period=2, phase=1, drive="window", scale=1.0,
                      incremental=True)
    out = []
    for nt in (1, 2, 3):
        cr = K.conv_forward(images, sids, 9, 4, conv_w, conv_b, record_input=True, n_threads=nt)
        hr = K.hidden_forward(cr, W1b, b1, record=True, n_threads=nt, **hidden)
        out.append((cr, hr))
    (c1, h1) = out[0]
    for c2, h2 in out[1:]:
        np.testing.assert_array_equal(c1.conv_spikes(), c2.conv_spikes())
        for name in ("spk_cnt", "n_in", "n_c", "in_count", "conv_events", "input_spikes"):
            np.testing.assert_array_equal(getattr(c1, name), getattr(c2, name))
        for name in ("n_h", "hid_count", "fc1_adds", "spikes"):
            np.testing.assert_array_equal(getattr(h1, name), getattr(h2, name))
        assert h1.ih_sum.tobytes() == h2.ih_sum.tobytes()


def test_adam_thread_count_bit_identical():
    rng = np.random.default_rng(2)
    shape = (5, 2304, 32)
    p, g, m = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    v = np.abs(rng.normal(size=shape)).astype(np.float32)
    res = []
    for nt in (1, 2):
        P, M, V = p.copy(), m.copy(), v.copy()
        K.adam_step(P, g, M, V, lr=1e-3, step=3, n_threads=nt)
        res.append((P, M, V))
    for a, b in zip(*res):
        assert a.tobytes() == b.tobytes()


def test_noise_keyed_by_sample_id_not_position():
    rng = np.random.default_rng(8)
    images = random_images(rng, 6)
    sids = np.array([10, 11, 12, 13, 14, 15], np.int64)
    conv_w, conv_b, W1, b1 = random_params(rng)
    W1b = K.to_blocked(W1)

    def run(idx):
        cr = K.conv_forward(np.ascontiguousarray(images[idx]), sids[idx], 5, 3, conv_w, conv_b,
                            record_input=True)
        hr = K.hidden_forward(cr, W1b, b1, record=True)
        return cr, hr

    full_c, full_h = run(np.arange(6))
    perm = np.array([4, 0, 5, 2])                 # other positions, other batch composition
    sub_c, sub_h = run(perm)
    np.testing.assert_array_equal(sub_c.input_spikes, full_c.input_spikes[perm])
    np.testing.assert_array_equal(sub_c.conv_spikes(), full_c.conv_spikes()[perm])
    np.testing.assert_array_equal(sub_h.spikes, full_h.spikes[perm])
    np.testing.assert_array_equal(sub_h.ih_sum, full_h.ih_sum[perm])
    # a different epoch or sample id changes the stochastic phase
    other = K.conv_forward(images, sids + 1, 5, 3, conv_w, conv_b, record_input=True)
    assert not np.array_equal(other.input_spikes[:, 5:], full_c.input_spikes[:, 5:])
    np.testing.assert_array_equal(other.input_spikes[:, :5], full_c.input_spikes[:, :5])


# ------------------------------------------------------------------ adam, layouts
@pytest.mark.parametrize("shape", [(7,), (3, 2304, 16), (40000,)])
def test_adam_matches_numpy(shape):
    rng = np.random.default_rng(4)
    p, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    g.reshape(-1)[:3] = 0.0
    m, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    P, M, V = p.copy(), m.copy(), v.copy()
    for step in (1, 2, 3):
        g = (g * np.float32(0.9)).astype(np.float32)
        p, m, v = O.adam(p, g, m, v, 2e-3, 0.9, 0.99, 1e-7, step)
        K.adam_step(P, g, M, V, lr=2e-3, beta1=0.9, beta2=0.99, eps=1e-7, step=step)
    # same float32 operations in the same order (sqrt and division are correctly rounded)
    np.testing.assert_array_equal(P, p)
    np.testing.assert_array_equal(M, m)
    np.testing.assert_array_equal(V, v)


@pytest.mark.parametrize("bw", K.SUPPORTED_BLOCK_WIDTHS)
def test_blocked_roundtrip(bw):
    rng = np.random.default_rng(bw)
    W1 = rng.normal(size=(2304, 1024)).astype(np.float32)
    W1b = K.to_blocked(W1, bw)
    assert W1b.shape == (1024 // bw, 2304, bw) and W1b.flags.c_contiguous
    assert W1b.ctypes.data % 64 == 0
    k, j, i = 1024 // bw - 1, 2303, bw - 1
    assert W1b[k, j, i] == W1[j, k * bw + i] and W1b[0, 5, 3] == W1[5, 3]
    np.testing.assert_array_equal(K.from_blocked(W1b), W1)


def test_block_width_fits_l2():
    assert K.BLOCK_WIDTH in K.SUPPORTED_BLOCK_WIDTHS
    l2 = K._l2_bytes()
    if l2 is not None:
        assert 2304 * K.BLOCK_WIDTH * 4 <= l2 or K.BLOCK_WIDTH == K.SUPPORTED_BLOCK_WIDTHS[0]


def test_empty_batch():
    w, b = np.zeros((16, 25), np.float32), np.zeros(16, np.float32)
    cr = K.conv_forward(np.zeros((0, 784), np.uint8), np.zeros(0, np.int64), 0, 0, w, b)
    hr = K.hidden_forward(cr, K.to_blocked(np.zeros((2304, 1024), np.float32)),
                          np.zeros(1024, np.float32))
    assert cr.spk_cnt.shape == (0, 10) and hr.n_h.shape == (0, 1024)


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def good():
    rng = np.random.default_rng(0)
    conv_w, conv_b, W1, b1 = random_params(rng)
    images = random_images(rng, 3)
    sids = np.arange(3, dtype=np.int64)
    return dict(images=images, sids=sids, conv_w=conv_w, conv_b=conv_b, W1b=K.to_blocked(W1),
                b1=b1, cr=K.conv_forward(images, sids, 0, 0, conv_w, conv_b))


def _conv(g, **kw):
    args = dict(images=g["images"], sample_ids=g["sids"], seed=0, epoch=0,
                conv_w=g["conv_w"], conv_b=g["conv_b"])
    args.update(kw)
    return K.conv_forward(**args)


def _hidden(g, **kw):
    args = dict(conv=g["cr"], W1b=g["W1b"], b1=g["b1"])
    args.update(kw)
    return K.hidden_forward(**args)


def test_bad_conv_inputs(good):
    g = good
    nan_w = g["conv_w"].copy()
    nan_w[3, 4] = np.nan
    bad = [
        dict(images=g["images"].astype(np.float32)),
        dict(images=g["images"][:, :700].copy()),
        dict(images=np.asfortranarray(g["images"])),
        dict(images=g["images"][::2]),                   # non-contiguous view (wrong B too)
        dict(sample_ids=g["sids"].astype(np.int32)),
        dict(sample_ids=np.array([0, -1, 2], np.int64)),
        dict(sample_ids=g["sids"][:2].copy()),
        dict(conv_w=nan_w),
        dict(conv_w=g["conv_w"].astype(np.float64)),
        dict(conv_w=g["conv_w"][:, :24].copy()),
        dict(conv_b=np.full(16, np.inf, np.float32)),
        dict(seed=-1), dict(seed=2**64), dict(epoch=-3),
        dict(T=0), dict(n_det=-1), dict(beta=np.nan), dict(thr=float("inf")),
        dict(reset="halve"),
    ]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            _conv(g, **kw)
    with pytest.raises(TypeError):
        _conv(g, images=[[0] * 784])
    with pytest.raises(TypeError):
        _conv(g, seed=1.5)


def test_bad_hidden_inputs(good):
    g = good
    nan_W = g["W1b"].copy()
    nan_W[1, 2, 3] = np.nan
    bad = [
        dict(W1b=nan_W),
        dict(W1b=g["W1b"].astype(np.float64)),
        dict(W1b=np.zeros((1024 // 48, 2304, 48), np.float32)),     # unsupported width
        dict(W1b=np.zeros((2304, 1024), np.float32)),               # canonical, not blocked
        dict(W1b=np.zeros((32, 2304, 64), np.float32)),             # 32*64 != 1024
        dict(b1=np.full(1024, np.nan, np.float32)),
        dict(b1=g["b1"][:1000].copy()),
        dict(reset="soft"), dict(drive="sum"), dict(period=0), dict(phase=2),
        dict(period=2, phase=-1), dict(beta=float("nan")), dict(scale=np.inf),
    ]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            _hidden(g, **kw)
    with pytest.raises(TypeError):
        _hidden(g, conv=(g["cr"].spk_idx, g["cr"].spk_cnt))
    # a corrupted spike list is caught before any row of W1 is read through it
    import dataclasses
    idx = g["cr"].spk_idx.copy()
    cnt = g["cr"].spk_cnt.copy()
    cnt[1, 6] = max(cnt[1, 6], 1)
    idx[1, 6, 0] = 5000
    for incremental in (False, True):     # also before the incremental plan reads it
        with pytest.raises(ValueError, match="2304"):
            _hidden(g, conv=dataclasses.replace(g["cr"], spk_idx=idx, spk_cnt=cnt),
                    incremental=incremental)
    bad_cr = dataclasses.replace(g["cr"], spk_idx=idx, spk_cnt=cnt)
    with pytest.raises(ValueError, match="2304"):
        bad_cr.conv_spikes()
    with pytest.raises(ValueError, match="2304"):
        bad_cr.drive_counts(2, 1, "window")
    for wrong in (3000, -1):                  # counts are range-checked inside the kernel
        cnt[0, 0] = wrong
        for incremental in (False, True):
            with pytest.raises(ValueError, match="spk_cnt out of range"):
                _hidden(g, conv=dataclasses.replace(g["cr"], spk_idx=g["cr"].spk_idx,
                                                    spk_cnt=cnt), incremental=incremental)
    with pytest.raises(ValueError):
        dataclasses.replace(g["cr"], spk_cnt=cnt).conv_spikes()


# ------------------------------------------------------------------ fused W1 steps
def _w1_operands(rng, B, density=0.2):
    """Sparse non-negative c (conv activity, many exact zeros) and dense d, float32."""
    c = np.where(rng.random((B, 2304)) < density, rng.integers(1, 6, (B, 2304)) / 5, 0.0)
    c[:, :16] = 0.0                                           # a tile with no active input
    d = rng.normal(0, 1e-2, (B, 1024))
    return c.astype(np.float32), d.astype(np.float32)


def _column_sum(d):
    """Rows of d added in order, ((d[0] + d[1]) + d[2]) + ..., in float32."""
    D = d[0].copy()
    for row in d[1:]:
        D += row
    return D


@pytest.mark.parametrize("bw,B,density", [(16, 7, 1.0), (32, 64, 0.55), (64, 5, 0.3),
                                          (256, 9, 0.0)])
def test_w1_adam_step_matches_numpy(bw, B, density):
    rng = np.random.default_rng(bw + B)
    c, d = _w1_operands(rng, B)
    W1 = rng.normal(0, 0.05, (2304, 1024)).astype(np.float32)
    W1[rng.random(W1.shape) < 0.05] = 0.0
    m = rng.normal(0, 1e-3, W1.shape).astype(np.float32)
    v = (rng.random(W1.shape) * 1e-5).astype(np.float32)
    Wb, mb, vb = K.to_blocked(W1, bw), K.to_blocked(m, bw), K.to_blocked(v, bw)
    active = rng.random((B, 144)) < density
    active[0, 1] = not active[0, 0]                  # a row pair with one wanted entry
    back, total = K.w1_adam_step(Wb, mb, vb, c, d, lr=2e-3, beta1=0.9, beta2=0.99, eps=1e-7,
                                 step=4, active=active if density < 1 else None)
    wanted = np.tile(active, 16) if density < 1 else np.ones((B, 2304), bool)
    full = O.w1_back(d, W1)                          # with the weights before the step
    np.testing.assert_array_equal(back, np.where(wanted, full, 0))
    np.testing.assert_array_equal(total, O.w1_back(_column_sum(d)[None], W1)[0])
    p, m2, v2 = O.adam(W1, O.w1_grad(c, d), m, v, 2e-3, 0.9, 0.99, 1e-7, 4)
    np.testing.assert_array_equal(K.from_blocked(Wb), p)
    np.testing.assert_array_equal(K.from_blocked(mb), m2)
    np.testing.assert_array_equal(K.from_blocked(vb), v2)
    np.testing.assert_allclose(full, d @ W1.T, rtol=1e-4, atol=1e-6)    # and it is d @ W1.T
    np.testing.assert_allclose(total, (d @ W1.T).sum(axis=0), rtol=1e-4, atol=1e-6)


def test_conv_patch_active_matches_numpy():
    rng = np.random.default_rng(11)
    x = np.where(rng.random((9, 784)) < 0.03, rng.random((9, 784)), 0).astype(np.float32)
    x[:2] = 0.0
    x[1, 26 * 28 + 26] = -0.5                         # only the last patch sees it
    x[1, 27 * 28 + 3] = 0.5                           # no patch sees row 27
    got = K.conv_patch_active(x, n_threads=2)
    expect = (O._taps(x) != 0).any(axis=1)           # (B, 25 taps, 144 positions)
    np.testing.assert_array_equal(got, expect.astype(np.uint8))
    assert got[1, 143] == 1 and got[1].sum() == 1 and not got[0].any()
    assert 0 < got[2:].mean() < 1


@pytest.mark.parametrize("bw,B", [(16, 3), (32, 64), (64, 5), (128, 1), (256, 33)])
def test_w1_sgd_step_matches_numpy(bw, B):
    rng = np.random.default_rng(7 + bw)
    c, d = _w1_operands(rng, B, density=0.4)
    W1 = rng.normal(0, 0.05, (2304, 1024)).astype(np.float32)
    Wb = K.to_blocked(W1, bw)
    rate, decay = np.float32(0.1) * np.float32(0.01), np.float32(0.9999)
    K.w1_sgd_step(Wb, c, d, rate=rate, decay=decay)
    expect = (W1 - rate * O.w1_grad(c, d)) * decay
    np.testing.assert_array_equal(K.from_blocked(Wb), expect)
    assert not np.array_equal(expect, W1 * decay)          # the gradient did something


def test_w1_steps_thread_count_bit_identical():
    rng = np.random.default_rng(3)
    c, d = _w1_operands(rng, 21)
    W1 = K.to_blocked(rng.normal(0, 0.05, (2304, 1024)).astype(np.float32))
    out = []
    for nt in (1, 2):
        Wb, m, v = W1.copy(), np.zeros_like(W1), np.zeros_like(W1)
        back, total = K.w1_adam_step(Wb, m, v, c, d, lr=1e-3, step=1, n_threads=nt,
                                     active=np.arange(21 * 144).reshape(21, 144) % 3 != 0)
        Ws = W1.copy()
        K.w1_sgd_step(Ws, c, d, rate=1e-3, decay=0.999, n_threads=nt)
        out.append((back, total, Wb, m, v, Ws))
    for a, b in zip(*out):
        assert a.tobytes() == b.tobytes()


def test_bad_w1_step_inputs():
    rng = np.random.default_rng(5)
    c, d = _w1_operands(rng, 4)
    W1 = K.to_blocked(rng.normal(0, 0.05, (2304, 1024)).astype(np.float32))
    m, v = np.zeros_like(W1), np.zeros_like(W1)
    W0 = W1.copy()
    ok = dict(lr=1e-3, step=1)
    bad_c = c.copy()
    bad_c[1, 5] = np.nan
    bad_d = d.copy()
    bad_d[0, 3] = np.inf
    for args in [(W1, m, v, bad_c, d), (W1, m, v, c, bad_d),            # non-finite inputs
                 (W1, m, v, c.astype(np.float64), d), (W1, m, v, c, d[:3]),
                 (W1, m, v, c[:, :2303], d), (W1, m, v, np.asfortranarray(c), d),
                 (W1, m, v, c[:0], d[:0]), (W1, W1, v, c, d),             # empty, aliasing
                 (W1, m[:, :, :16], v, c, d), (W1[:, :, :16], m, v, c, d)]:
        with pytest.raises(ValueError):
            K.w1_adam_step(*args, **ok)
    for args in [(W1, bad_c, d), (W1, c, d[:, :1000]), (W1.astype(np.float64), c, d)]:
        with pytest.raises(ValueError):
            K.w1_sgd_step(*args, rate=1e-3)
    with pytest.raises(ValueError):
        K.w1_adam_step(W1, m, v, c, d, lr=1e-3, step=0)
    for active in (np.ones((4, 143), bool), np.ones((3, 144), bool), np.ones((4, 144)),
                   np.ones((144, 4), np.uint8).T):
        with pytest.raises(ValueError, match="active"):
            K.w1_adam_step(W1, m, v, c, d, lr=1e-3, step=1, active=active)
    with pytest.raises(TypeError):
        K.w1_sgd_step(W1, c, d, rate="fast")
    assert W1.tobytes() == W0.tobytes() and not m.any() and not v.any()  # nothing changed
    big = np.full_like(d, 3e38)                                # the gradient overflows
    with pytest.raises(ValueError, match="now non-finite"):
        K.w1_sgd_step(W1, np.full_like(c, 2.0), big, rate=1e-3)


def test_w1_steps_without_the_nan_scans_still_raise():
    # check_finite=False skips the up-front scans of c and d; a NaN then reaches the
    # gradient, whose own check raises after the step (W1 is then non-finite)
    rng = np.random.default_rng(6)
    c, d = _w1_operands(rng, 4)
    c[2, :] = 0.5                                     # sample 2 feeds every row's gradient
    d[2, 7] = np.nan
    W1 = K.to_blocked(rng.normal(0, 0.05, (2304, 1024)).astype(np.float32), 32)
    m, v = np.zeros_like(W1), np.zeros_like(W1)
    with pytest.raises(ValueError, match="c contains NaN|d contains NaN"):
        K.w1_adam_step(W1.copy(), m.copy(), v.copy(), c, d, lr=1e-3, step=1)
    with pytest.raises(ValueError, match="now non-finite"):
        K.w1_adam_step(W1.copy(), m, v, c, d, lr=1e-3, step=1, check_finite=False)
    with pytest.raises(ValueError, match="now non-finite"):
        K.w1_sgd_step(W1.copy(), c, d, rate=1e-3, check_finite=False)
    ok = np.nan_to_num(d)                             # and finite input is unaffected
    outs = [K.w1_adam_step(W1.copy(), np.zeros_like(W1), np.zeros_like(W1), c, ok, lr=1e-3,
                           step=1, check_finite=f) for f in (True, False)]
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()


def test_conv_rate_kernels_without_the_nan_scans():
    rng = np.random.default_rng(8)
    x = (rng.random((3, 784)) * (rng.random((3, 784)) < 0.1)).astype(np.float32)
    x[0] = 0.0
    x[0, 28 * 13 + 13] = np.nan                       # sample 0: one NaN pixel, else empty
    with pytest.raises(ValueError, match="x contains NaN"):
        K.conv_patch_active(x)
    act = K.conv_patch_active(x, check_finite=False)   # NaN != 0: its patches count
    clean = x.copy()
    clean[0, 28 * 13 + 13] = 1.0
    np.testing.assert_array_equal(act, K.conv_patch_active(clean))
    w = rng.normal(0, 0.3, (16, 1, 5, 5)).astype(np.float32)
    b = rng.normal(0, 0.1, 16).astype(np.float32)
    back = rng.normal(size=(3, 2304)).astype(np.float32)
    back[1, 5] = np.inf
    total = back.sum(axis=0)
    kw = dict(scale=2.0, center=0.45, slope=4.0)
    with pytest.raises(ValueError, match="back contains NaN"):
        K.conv_rate_backward(clean, w, b, back, total, **kw)
    gw, gb = K.conv_rate_backward(clean, w, b, back, total, check_finite=False, **kw)
    assert not np.isfinite(gb).all()                  # propagated, for the caller to catch


# ------------------------------------------------------------------ conv on rates
@pytest.mark.parametrize("B", [1, 6, 64])
def test_conv_rate_backward_matches_numpy(B):
    rng = np.random.default_rng(20 + B)
    x = (rng.integers(0, 11, (B, 784)) / 10 * (rng.random((B, 784)) < 0.1)).astype(np.float32)
    x[:, :300] = 0.0                                  # whole rows of empty patches
    conv_w, conv_b = random_params(rng)[:2]
    conv_w = conv_w.reshape(16, 1, 5, 5)
    full = rng.normal(0, 1e-2, (B, 2304)).astype(np.float32)
    active = np.tile(K.conv_patch_active(x), 16).astype(bool)
    assert 0.05 < active.mean() < 0.95
    back = np.where(active, full, np.float32(0))
    total = full.sum(axis=0)
    args = (x, conv_w, conv_b, back, total)
    kw = dict(scale=2.5, center=0.45, slope=4.0)
    gw, gb = K.conv_rate_backward(*args, **kw)
    ew, eb = O.conv_rate_backward(*args, 2.5, 0.45, 4.0)
    np.testing.assert_array_equal(gw.reshape(16, 25), ew)
    np.testing.assert_array_equal(gb, eb)
    # and it is the gradient of the dense formula (phi' of the currents times the full back)
    dw, db = cnp.conv_backward(x, conv_w, conv_b, full, None, np.float32(2.5), 0.45, 4.0)
    np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5 * np.abs(dw).max())
    np.testing.assert_allclose(gb, db, rtol=1e-4, atol=1e-5 * np.abs(db).max())
    for nt in (1, 2):
        w2, b2 = K.conv_rate_backward(*args, **kw, n_threads=nt)
        assert w2.tobytes() == gw.tobytes() and b2.tobytes() == gb.tobytes()


def test_bad_conv_rate_inputs():
    x = np.zeros((3, 784), np.float32)
    w, b = np.zeros((16, 1, 5, 5), np.float32), np.zeros(16, np.float32)
    d = np.zeros((3, 2304), np.float32)
    t = np.zeros(2304, np.float32)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    bad_d = d.copy()
    bad_d[2, 7] = np.inf
    kw = dict(scale=1.0, center=0.45, slope=4.0)
    for args in [(bad_x, w, b, d, t), (x.astype(np.float64), w, b, d, t),
                 (x[:, :783], w, b, d, t), (np.asfortranarray(x), w, b, d, t),
                 (x, w[:15], b, d, t), (x, w, b[:15], d, t), (x, w, b, d[:2], t),
                 (x, w, b, d[:, ::2], t), (x, w, b, bad_d, t), (x, w, b, d, t[:2]),
                 (x, w, b, d, t.astype(np.float64))]:
        with pytest.raises(ValueError):
            K.conv_rate_backward(*args, **kw)
    with pytest.raises(ValueError):
        K.conv_rate_backward(x, w, b, d, t, scale=np.inf, center=0.45, slope=4.0)
    with pytest.raises(TypeError):
        K.conv_rate_backward(x, w, b, d, t, scale="2", center=0.45, slope=4.0)
    for bad in (bad_x, x[:, :783], x.astype(np.float64)):
        with pytest.raises(ValueError):
            K.conv_patch_active(bad)


def test_ema_step_equals_numpy_bits():
    rng = np.random.default_rng(11)
    avg, p = (rng.normal(size=(3, 2304, 32)).astype(np.float32) for _ in range(2))
    expect = avg.copy()
    expect *= np.float32(0.93)
    expect += np.float32(1.0 - 0.93) * p
    for nt in (1, 2):
        a = avg.copy()
        K.ema_step(a, p, decay=0.93, n_threads=nt)
        assert a.tobytes() == expect.tobytes()
    for args, kw in [((avg, p[:2]), {}), ((avg, p.astype(np.float64)), {}), ((avg, avg), {}),
                     ((avg[:, :, ::2], p[:, :, ::2]), {})]:
        with pytest.raises(ValueError):
            K.ema_step(*args, decay=0.5, **kw)
    with pytest.raises(ValueError):
        K.ema_step(avg.copy(), p, decay=1.5)


def test_bad_adam_inputs():
    a = np.zeros(10, np.float32)
    ok = dict(lr=1e-3, step=1)
    with pytest.raises(ValueError):
        K.adam_step(a, np.full(10, np.nan, np.float32), a.copy(), a.copy(), **ok)
    g = np.zeros(10, np.float32)
    g[4] = np.inf
    p0 = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="now non-finite"):    # fused check, after the fact
        K.adam_step(p0, g, a.copy(), a.copy(), check_finite=False, **ok)
    assert not np.isfinite(p0[4]) and np.isfinite(np.delete(p0, 4)).all()
    with pytest.raises(ValueError):
        K.adam_step(a, np.zeros(11, np.float32), a.copy(), a.copy(), **ok)
    with pytest.raises(ValueError):
        K.adam_step(a, a.astype(np.float64), a.copy(), a.copy(), **ok)
    with pytest.raises(ValueError):
        K.adam_step(np.zeros(20, np.float32)[::2], a.copy(), a.copy(), a.copy(), **ok)
    with pytest.raises(ValueError):
        K.adam_step(a, a, a.copy(), a.copy(), **ok)              # aliasing
    with pytest.raises(ValueError):
        K.adam_step(a, a.copy(), a.copy(), a.copy(), lr=1e-3, step=0)
    with pytest.raises(ValueError):
        K.adam_step(a, a.copy(), a.copy(), a.copy(), lr=-1.0, step=1)
    with pytest.raises(ValueError):
        K.adam_step(a, a.copy(), a.copy(), a.copy(), lr=1e-3, beta1=1.0, step=1)


def test_adam_step_many_equals_one_by_one():
    rng = np.random.default_rng(23)
    shapes = [(16, 1, 5, 5), (16,), (1024,), (1024, 10), (10,)]
    P = [rng.normal(size=s).astype(np.float32) for s in shapes]
    G = [rng.normal(size=s).astype(np.float32) for s in shapes]
    M = [rng.normal(size=s).astype(np.float32) for s in shapes]
    V = [rng.random(s).astype(np.float32) for s in shapes]
    one = [[a.copy() for a in arrs] for arrs in (P, M, V)]
    for i in range(len(shapes)):
        K.adam_step(one[0][i], G[i], one[1][i], one[2][i], lr=3e-3, step=7)
    K.adam_step_many(P, G, M, V, lr=3e-3, step=7)
    for got, want in zip(P + M + V, one[0] + one[1] + one[2]):
        np.testing.assert_array_equal(got, want)
    # a non-finite gradient anywhere: an error before any array changes
    before = [a.copy() for a in P]
    G[3][2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        K.adam_step_many(P, G, M, V, lr=3e-3, step=8)
    for got, want in zip(P, before):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="same length"):
        K.adam_step_many(P, G[:2], M, V, lr=3e-3, step=8)


def test_adam_step_many_bad_arrays_name_the_entry():
    shapes = [(16,), (4, 10)]
    P, M, V = ([np.zeros(s, np.float32) for s in shapes] for _ in range(3))
    G = [np.ones(s, np.float32) for s in shapes]    # a step would change P, M and V
    ok = dict(lr=1e-3, step=1)

    def bad(k, i, value):
        lists = [list(P), list(G), list(M), list(V)]
        lists[k][i] = value
        return lists
    ro = np.zeros((4, 10), np.float32)
    ro.flags.writeable = False
    cases = [(bad(1, 1, [[0.0] * 10] * 4), TypeError, r"grads\[1\] must be a numpy"),
             (bad(2, 1, np.zeros((4, 10))), ValueError, r"ms\[1\] must have dtype float32"),
             (bad(3, 1, np.zeros((10, 4), np.float32).T), ValueError, r"vs\[1\] must be C-c"),
             (bad(1, 0, np.zeros(15, np.float32)), ValueError, r"grads\[0\] must have the sh"),
             (bad(1, 1, np.zeros(40, np.float32)), ValueError, r"grads\[1\] must have the sh"),
             (bad(0, 1, ro), ValueError, r"params\[1\] must be writeable"),
             (bad(2, 0, P[0]), ValueError, r"params\[0\] and ms\[0\] share memory"),
             (bad(3, 1, G[1]), ValueError, r"grads\[1\] and vs\[1\] share memory")]
    for lists, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            K.adam_step_many(*lists, **ok)
    for a in P + M + V:                 # nothing was changed by a refused call
        assert not a.any()
    K.adam_step_many(P, G, M, V, **ok)  # and the valid call does change them
    assert all(a.all() for a in P + M + V)


@pytest.mark.parametrize("where", [0, 8003, 8011, 8019, 8027, 20009, 20019 - 1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_adam_finite_check_finds_every_position(where, bad):
    """The up-front scan sees any element: 20 019 floats are 625 steps of 32 (four
    vectors, one position in each here), two of 8 (20 000-20 015) and a scalar tail of 3."""
    p = np.ones(20019, np.float32)
    g = np.zeros(20019, np.float32)
    g[where] = bad
    with pytest.raises(ValueError, match=r"grads\[0\] contains NaN or infinite"):
        K.adam_step(p, g, np.zeros_like(p), np.zeros_like(p), lr=1e-3, step=1)
    assert (p == 1).all()



# ------------------------------------------------------------------ overlapping operands
def _adam_lists(n=3, size=8):
    """Fresh (params, grads, ms, vs) lists of n float32 vectors; a step changes P, M, V."""
    P, M, V = ([np.zeros(size, np.float32) for _ in range(n)] for _ in range(3))
    return P, [np.ones(size, np.float32) for _ in range(n)], M, V


def test_adam_step_rejects_overlapping_views():
    # distinct start pointers, shared memory: the old check (start pointers only) passed it
    big = np.arange(21, dtype=np.float32)
    before = big.copy()
    g, v = np.ones(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] and ms\[0\] share memory"):
        K.adam_step(big[:10], g, big[1:11], v, lr=0.1, step=1)
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[0\] share memory"):
        K.adam_step(big[1:11], big[:10], np.zeros(10, np.float32), v, lr=0.1, step=1)
    assert big.tobytes() == before.tobytes() and not v.any()
    # adjacent views of one buffer do not overlap: accepted, same bits as separate arrays
    p, m = big[:10], big[10:20]
    want_p, want_m, want_v = p.copy(), m.copy(), v.copy()
    K.adam_step(want_p, g, want_m, want_v, lr=0.1, step=1)
    K.adam_step(p, g, m, v, lr=0.1, step=1)
    assert p.tobytes() == want_p.tobytes() and m.tobytes() == want_m.tobytes()


@pytest.mark.parametrize("k1,i1,k2,i2", [
    (2, 0, 2, 1),    # one m for two parameters (the audit's case)
    (0, 0, 0, 2),    # the same parameter twice
    (0, 0, 1, 1),    # a parameter read as another entry's gradient
    (3, 2, 1, 0),    # a v read as an earlier entry's gradient
    (2, 1, 3, 2),    # m of one entry is v of another
])
def test_adam_step_many_rejects_memory_shared_across_entries(k1, i1, k2, i2):
    lists = _adam_lists()
    lists[k2][i2] = lists[k1][i1]
    names = ("params", "grads", "ms", "vs")
    (ka, ia), (kb, ib) = sorted([(k1, i1), (k2, i2)], key=lambda t: (t[1], t[0]))
    with pytest.raises(ValueError, match=rf"{names[ka]}\[{ia}\] and {names[kb]}\[{ib}\] "
                                         "share memory"):
        K.adam_step_many(*lists, lr=0.1, step=1)
    for k in (0, 2, 3):                 # nothing was changed by the refused call
        assert not any(a.any() for a in lists[k])


def test_adam_step_many_rejects_partial_overlap_across_entries():
    buf = np.zeros(20, np.float32)
    P, G, M, V = _adam_lists(n=2)
    P[0], M[1] = buf[:8], buf[4:12]     # half of params[0] is the start of ms[1]
    with pytest.raises(ValueError, match=r"params\[0\] and ms\[1\] share memory"):
        K.adam_step_many(P, G, M, V, lr=0.1, step=1)
    assert not buf.any()


def test_adam_step_many_allows_shared_gradients_and_adjacent_views():
    # grads are only read: one gradient for several entries is fine
    P, G, M, V = _adam_lists()
    G = [G[0]] * 3
    want = _adam_lists()
    for p, m, v in zip(want[0], want[2], want[3]):
        K.adam_step(p, G[0], m, v, lr=0.1, step=1)
    buf = np.zeros(24, np.float32)       # three params as adjacent views of one buffer
    P = [buf[0:8], buf[8:16], buf[16:24]]
    K.adam_step_many(P, G, M, V, lr=0.1, step=1)
    for got, exp in zip(P + M + V, want[0] + want[2] + want[3]):
        assert got.tobytes() == exp.tobytes()
    # empty arrays use no memory, wherever their data pointer is
    e = buf[:0]
    K.adam_step_many([e, buf[:0]], [e, e], [buf[:0], e], [e, e], lr=0.1, step=1)


def test_w1_steps_reject_operands_overlapping_written_arrays():
    rng = np.random.default_rng(8)
    B = 4
    c, d = _w1_operands(rng, B)
    W1 = K.to_blocked(rng.normal(0, 0.05, (2304, 1024)).astype(np.float32))
    m, v = np.zeros_like(W1), np.zeros_like(W1)
    c_in_W1 = W1.reshape(-1)[:B * 2304].reshape(B, 2304)   # c read while W1b is written
    c_in_W1[...] = c
    W0 = W1.copy()
    d_in_m = m.reshape(-1)[7:7 + B * 1024].reshape(B, 1024)
    act_in_v = v.reshape(-1).view(np.uint8)[:B * 144].reshape(B, 144)
    buf = np.zeros(W1.size + 8, np.float32)
    ok = dict(lr=1e-3, step=1)
    cases = [((W1, m, v, c_in_W1, d), {}, "W1b and c"),
             ((W1, m, v, c, d_in_m), {}, "m and d"),
             ((W1, m, v, c, d), {"active": act_in_v}, "v and active"),
             ((W1, buf[:W1.size].reshape(W1.shape), buf[8:8 + W1.size].reshape(W1.shape),
               c, d), {}, "m and v")]                   # m and v: shifted views of one buffer
    for args, kw, names in cases:
        with pytest.raises(ValueError, match=f"{names} share memory"):
            K.w1_adam_step(*args, **kw, **ok)
    with pytest.raises(ValueError, match="W1b and c share memory"):
        K.w1_sgd_step(W1, c_in_W1, d, rate=1e-3)
    assert W1.tobytes() == W0.tobytes() and not m.any() and not v.any() and not buf.any()


def test_ema_step_rejects_overlapping_views():
    a = np.arange(21, dtype=np.float32)
    with pytest.raises(ValueError, match="avg and p share memory"):
        K.ema_step(a[:10], a[1:11], decay=0.5)
    assert a.tobytes() == np.arange(21, dtype=np.float32).tobytes()
    K.ema_step(a[:10], a[10:20], decay=0.5)              # adjacent views: fine
    assert a[:10].tobytes() == (np.float32(0.5) * np.arange(10, dtype=np.float32)
                                + np.float32(0.5) * np.arange(10, 20, dtype=np.float32)).tobytes()


def test_ema_step_rejects_nonfinite_p():
    # a bad value in the vector loop, in the scalar tail, in a later chunk (parallel scan)
    n = 3 * 16384 + 37
    for pos, bad in [(5, np.nan), (n - 1, np.inf), (2 * 16384 + 9, -np.inf), (70, np.inf),
                     (40, np.nan)]:
        for size in (n, 77):
            if pos >= size:
                continue
            avg = np.ones(size, np.float32)
            p = np.full(size, 2.0, np.float32)
            p[pos] = bad
            for nt in (1, 2):
                with pytest.raises(ValueError, match="p contains NaN or infinite"):
                    K.ema_step(avg, p, decay=0.9, n_threads=nt)
                assert (avg == 1.0).all()               # nothing changed
    K.ema_step(avg, p, decay=0.9, check_finite=False)   # documented: no scan
    assert not np.isfinite(avg[40]) and np.isfinite(np.delete(avg, 40)).all()
