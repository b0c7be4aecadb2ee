"""Exact TTFS conversion of CNNs: event-driven kernel vs NumPy references (issue 22)."""
import numpy as np
import pytest

from snnfast import ttfs_cnn
from snnfast.cnn import CNN, Pool, Stage, _forward, _loss_and_grads, fold_batch_norm, \
    make_cnn, train_cnn

EXACT = 1e-9    # float64 activations vs the ReLU network (task requirement)


def random_cnn(seed, in_shape=(2, 9, 8)):
    """Random weights and geometry: strides, asymmetric padding, max/avg pooling (with
    and without padding), dense after conv, dense after dense."""
    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    k1 = int(rng.integers(1, 4))
    pools = [Pool("max", 2, (1, 2), (0, 1, 1, 0)), Pool("max", 3, 2, 1),
             Pool("avg", 2, 1, (1, 0, 0, 1), bool(seed % 2)), Pool("avg", 2), None]
    st1 = Stage("conv", rng.normal(size=(3, c, k1, k1 + 1)) * 0.6, rng.normal(size=3) * 0.3,
                (int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                tuple(int(v) for v in rng.integers(0, 3, size=4)),
                pools[int(rng.integers(0, len(pools)))])
    shape = st1.pooled_shape(in_shape)
    st2 = Stage("conv", rng.normal(size=(4, 3, 2, 2)) * 0.6, rng.normal(size=4) * 0.3, 1,
                int(rng.integers(0, 2)), pools[int(rng.integers(0, len(pools)))])
    try:
        shape = st2.pooled_shape(shape)
        assert min(shape) >= 1
        stages = [st1, st2]
    except AssertionError:
        stages = [st1]
    n = int(np.prod(shape))
    stages += [Stage("dense", rng.normal(size=(6, n)) * 0.5, rng.normal(size=6) * 0.3),
               Stage("dense", rng.normal(size=(5, 6)) * 0.5, rng.normal(size=5) * 0.3)]
    return CNN(stages, in_shape)


def random_inputs(seed, n, in_shape=(2, 9, 8)):
    rng = np.random.default_rng(seed + 100)
    x = rng.uniform(size=(n, int(np.prod(in_shape))))
    x[x < 0.3] = 0.0        # silent pixels
    x[0] = 0.0              # an all-silent image: only bias-driven spikes
    x[1, :5] = 1.0          # pixels at 1 fire at t = 0
    return x


def events_recount(net, X):
    """Synaptic events by brute force: per stage, sum over output positions of the
    in-bounds non-zero inputs of the receptive field, times the output channels."""
    xcl = net.cnn.check_input(X)
    ev = []
    v = xcl.transpose(0, 3, 1, 2).astype(np.float64)
    _, hidden = net.relu_forward(X)
    for l, st in enumerate(net.stages):
        nz = (v != 0).astype(np.float64)
        if st.kind == "dense":
            ev.append(nz.reshape(len(nz), -1).sum(axis=1) * st.weight.shape[0])
        else:
            ones = Stage("conv", np.ones((1,) + st.weight.shape[1:]), np.zeros(1), st.stride,
                         st.pad)
            ev.append(ttfs_cnn._ref_layer(ones, nz).sum(axis=(1, 2, 3)) * st.weight.shape[0])
        if l < net.depth - 1:
            h = hidden[l]
            t = np.where(h > 0, net.t_max[l] - h, np.inf)
            v = ttfs_cnn._ref_pool(st.pool, t, net.t_max[l])
    return np.stack(ev, axis=1).astype(np.int64)


@pytest.mark.parametrize("seed", range(8))
def test_simulator_equals_reference_and_relu(seed):
    cnn = random_cnn(seed)
    X = random_inputs(seed, 40)
    net = ttfs_cnn.convert(cnn, X)
    r = net.simulate(X)
    ref = net.reference(X)
    z, hidden = net.relu_forward(X)
    assert np.abs(r.logits - z).max() <= EXACT
    assert np.abs(ref.logits - z).max() <= EXACT
    for a, b, h in zip(r.activations(), ref.activations(), hidden):
        assert a.shape == h.shape
        assert np.abs(a - h).max() <= EXACT
        assert np.abs(b - h).max() <= EXACT
        assert np.array_equal(a > 0, h > 0)       # same firing set
    # spike times themselves (spec oracle 3): same neurons, same times
    for ta, tb in zip(r.times, ref.times):
        assert np.array_equal(np.isinf(ta), np.isinf(tb))
        fin = np.isfinite(ta)
        assert np.abs(ta[fin] - tb[fin]).max(initial=0) <= EXACT
    assert np.array_equal(r.spikes, ref.spikes)
    assert np.array_equal(r.saturated, ref.saturated)
    assert r.saturated.sum() == 0          # windows calibrated on the same inputs
    assert np.array_equal(r.events, events_recount(net, X))
    rep = ttfs_cnn.exactness_report(net, X, r)
    assert rep["network_max_abs"] <= EXACT


@pytest.mark.parametrize("seed", range(3))
def test_threads_batches_and_float32(seed):
    cnn = random_cnn(seed)
    X = random_inputs(seed, 37)
    net = ttfs_cnn.convert(cnn, X)
    r1 = net.simulate(X, n_threads=1)
    r2 = net.simulate(X, n_threads=2, batch_size=5)
    for f in ("logits", "spikes", "events", "saturated"):
        assert np.array_equal(getattr(r1, f), getattr(r2, f))
    for a, b in zip(r1.times, r2.times):
        assert np.array_equal(a, b)
    r32 = net.simulate(X.astype(np.float32), dtype=np.float32, n_threads=2)
    assert r32.logits.dtype == np.float32
    z, _ = net.relu_forward(X)
    assert np.abs(r32.logits - z).max() <= 1e-4 * max(1.0, np.abs(z).max())
    one = net.simulate(X[3:4])
    assert np.array_equal(one.logits[0], r1.logits[3])


def test_windows_chain_and_zeta_invariance():
    cnn = random_cnn(3)
    X = random_inputs(3, 30)
    a = ttfs_cnn.convert(cnn, X, zeta=0.5)
    b = ttfs_cnn.convert(cnn, X, zeta=5.0)
    assert a.t_min[0] == 1.0
    assert np.array_equal(a.t_min[1:], a.t_max)
    assert np.array_equal(a.x_max, b.x_max)
    z, hidden = a.relu_forward(X)
    assert np.allclose(a.x_max, [h.max() for h in hidden], rtol=1e-12, atol=0)
    ra, rb = a.simulate(X), b.simulate(X)
    assert np.abs(ra.logits - rb.logits).max() <= EXACT
    for t, lo, hi in zip(ra.times, a.t_min[:-1], a.t_max):
        fin = t[np.isfinite(t)]
        assert fin.size == 0 or (fin.min() >= lo and fin.max() < hi)


def test_saturation_caps_activations():
    cnn = random_cnn(5)
    X = random_inputs(5, 30)
    net = ttfs_cnn.convert(cnn, X, zeta=-0.5)     # windows half the largest activation
    r = net.simulate(X)
    ref = net.reference(X)
    assert r.saturated.sum() > 0
    assert np.array_equal(r.saturated, ref.saturated)
    # the first hidden stage sees exact inputs: its output is min(ReLU, Delta_1)
    _, hidden = net.relu_forward(X)
    assert np.abs(r.activations()[0] - np.minimum(hidden[0], net.deltas[0])).max() <= EXACT


def test_calibration_uses_fixed_chunks():
    """X_n comes from CALIB_CHUNK-image passes: the same inputs in any number of chunks
    give the float64 per-image maxima (checked image by image with the slow reference)."""
    cnn = random_cnn(2)
    X = random_inputs(2, ttfs_cnn.CALIB_CHUNK + 7)
    x_max = ttfs_cnn.calibrate(cnn, X)
    net = ttfs_cnn.TTFSConvNet(cnn, x_max)
    ref = net.reference(X)      # windows large enough: decoded = ReLU outputs
    want = [float(a.max()) for a in ref.activations()]
    assert np.allclose(x_max, want, rtol=1e-12, atol=0)
    assert np.array_equal(x_max, ttfs_cnn.calibrate(cnn, X.reshape(len(X), 2, 9, 8)))


def test_batch_norm_folding_is_exact():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var, eps = rng.normal(size=3), rng.uniform(0.5, 2, size=3), 1e-5
    x = rng.uniform(size=(4, 2, 7, 7))
    st = Stage("conv", w, b, 1, 1)
    shp = (1, -1, 1, 1)
    a = ttfs_cnn._ref_layer(st, x) + b.reshape(shp)      # the reference omits the bias
    bn = (a - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + eps) * gamma.reshape(shp) \
        + beta.reshape(shp)
    wf, bf = fold_batch_norm(w, b, gamma, beta, mean, var, eps)
    folded = ttfs_cnn._ref_layer(Stage("conv", wf, bf, 1, 1), x) + bf.reshape(shp)
    assert np.abs(folded - bn).max() <= 1e-12


def test_bad_inputs_give_clear_errors():
    cnn = random_cnn(0)
    X = random_inputs(0, 5)
    net = ttfs_cnn.convert(cnn, X)
    with pytest.raises(ValueError, match="shape"):
        net.simulate(X[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net.simulate(X * 2)
    with pytest.raises(ValueError, match="NaN"):
        net.simulate(np.full_like(X, np.nan))
    with pytest.raises(ValueError, match="floating"):
        net.simulate((X * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        net.simulate(X, dtype=np.int32)
    with pytest.raises(ValueError, match="batch_size"):
        net.simulate(X, batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        ttfs_cnn.convert(cnn, X[:0])
    with pytest.raises(ValueError, match="zeta"):
        ttfs_cnn.convert(cnn, X, zeta=-1)
    with pytest.raises(ValueError, match="last stage"):
        CNN([Stage("conv", np.ones((2, 1, 1, 1)), np.zeros(2))], (1, 2, 2))
    with pytest.raises(ValueError, match="expects"):
        CNN([Stage("dense", np.ones((2, 5)), np.zeros(2))], (1, 2, 2))


def test_save_load_roundtrip_and_damage(tmp_path):
    cnn = random_cnn(4)
    X = random_inputs(4, 20)
    net = ttfs_cnn.convert(cnn, X, meta={"source": "test"})
    p = ttfs_cnn.save(net, tmp_path / "n.h5", results={"a": 1}, stats={"s": [1, 2]})
    back = ttfs_cnn.load(p)
    assert back.meta["source"] == "test" and back.results == {"a": 1}
    assert np.array_equal(back.simulate(X).logits, net.simulate(X).logits)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.h5"):
        ttfs_cnn.load(tmp_path / "bad.h5")
    import h5py
    with h5py.File(p, "a") as f:
        del f["stages/2/W"]
    with pytest.raises(ValueError, match="n.h5"):
        ttfs_cnn.load(p)


def test_cnn_gradients_match_finite_differences():
    cnn = random_cnn(1)
    # the trainer's backward pass supports max pooling only
    for st in cnn.stages:
        if st.pool is not None and st.pool.kind == "avg":
            st.pool = Pool("max", st.pool.kernel, st.pool.stride, (0, 0, 0, 0))
    cnn = CNN(cnn.stages, cnn.in_shape)
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(6, 144))
    y = rng.integers(0, 5, size=6)
    xcl = cnn.check_input(X)
    _, gw, gb = _loss_and_grads(cnn, xcl, y)
    eps = 1e-6
    for i, st in enumerate(cnn.stages):
        for p, g in ((st.weight, gw[i]), (st.bias, gb[i])):
            for _ in range(3):
                idx = tuple(int(rng.integers(0, d)) for d in p.shape)
                old = p[idx]
                p[idx] = old + eps
                lp = _loss_and_grads(cnn, xcl, y)[0]
                p[idx] = old - eps
                lm = _loss_and_grads(cnn, xcl, y)[0]
                p[idx] = old
                assert abs((lp - lm) / (2 * eps) - g[idx]) <= 1e-6 * max(1.0, abs(g[idx]))


def test_training_is_seeded_and_learns():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(120, 784)).astype(np.float32)
    y = (X[:, :392].sum(axis=1) > X[:, 392:].sum(axis=1)).astype(np.int64)
    runs = []
    for _ in range(2):
        net = make_cnn("cnn-small", seed=3)
        info = train_cnn(net, X[:100], y[:100], X[100:], y[100:], epochs=3, batch_size=20,
                         seed=5, n_threads=1)
        runs.append(net)
    assert info["epochs_run"] >= 1
    for a, b in zip(runs[0].stages, runs[1].stages):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    z = _forward(runs[0].stages, runs[0].check_input(X), False)
    assert np.isfinite(z).all()
