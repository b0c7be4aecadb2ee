"""Exact ReLU -> TTFS conversion: spec ttfs.md §6 identities, edge cases, storage, CLI."""
import json

import h5py
import numpy as np
import pytest

from snnfast import ttfs
from snnfast.mlp import MLP, make_mlp


def _net(depth=4, n_in=40, width=24, n_out=6, seed=0, bias_sd=0.1):
    rng = np.random.default_rng(seed)
    m = make_mlp(depth, n_in=n_in, width=width, n_out=n_out, seed=seed).astype(np.float64)
    for b in m.biases:
        b[:] = rng.normal(0, bias_sd, b.shape)
    return m


def _inputs(n=300, n_in=40, seed=1):
    """MNIST-like: values in [0, 1] with many exact zeros (silent pixels)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_in))
    x[x < 0.5] = 0.0
    x[:, 0] = 0.0
    x[::7, 1] = 1.0
    return x


@pytest.fixture(scope="module")
def case():
    m = _net()
    x = _inputs()
    net = ttfs.convert(m, _inputs(seed=2))    # calibration set != evaluation set
    return m, net, x


def _tol(t):
    return 1e-12 * max(1.0, float(np.max(np.abs(t[np.isfinite(t)]), initial=1.0)))


def test_layer_identity_tmax_minus_t_equals_relu(case):
    m, net, x = case
    z, hidden = net.relu_forward(x)
    for res in (net.simulate(x, n_threads=2), net.closed_form(x)):
        for l, (t, h) in enumerate(zip(res.times, hidden)):
            # inputs outside the calibration range may saturate: then the identity is min(., Delta)
            want = np.minimum(h, net.deltas[l])
            got = np.where(np.isinf(t), 0.0, net.t_max[l] - t)
            assert np.abs(got - want).max() <= _tol(t)
            assert np.array_equal(np.isfinite(t), want > 0)
        if res.saturated.sum() == 0:
            assert np.abs(res.logits - z).max() <= 1e-12 * max(1, np.abs(z).max())
    # and against the float32-trained MLP's own forward pass
    assert np.array_equal(net.predict(x), np.argmax(m.forward(x), axis=1))


def test_event_driven_equals_closed_form_spike_by_spike(case):
    _, net, x = case
    a, b = net.simulate(x, n_threads=2), net.closed_form(x)
    for ta, tb in zip(a.times, b.times):
        assert np.array_equal(np.isinf(ta), np.isinf(tb))          # same firing set
        fin = np.isfinite(ta)
        assert np.abs(ta[fin] - tb[fin]).max() <= _tol(ta)           # same times
    assert np.array_equal(a.spikes, b.spikes)
    assert np.array_equal(a.events, b.events)
    assert np.array_equal(a.saturated, b.saturated)
    assert np.abs(a.logits - b.logits).max() <= 1e-12


def test_spikes_inside_windows_and_chaining(case):
    m, net, x = case
    assert net.t_min[0] == 1.0
    assert np.array_equal(net.t_max[:-1], net.t_min[1:-1])
    assert np.array_equal(net.t_max, net.t_min[1:])
    # X_n = max activation of the calibration set (never the evaluation set)
    _, hidden = ttfs.TTFSNetwork(m.weights, m.biases, np.ones(m.depth - 1)).relu_forward(
        _inputs(seed=2))
    assert np.allclose(net.x_max, [h.max() for h in hidden], rtol=1e-12)
    assert np.allclose(net.deltas, 1.5 * net.x_max, rtol=1e-15)
    assert np.allclose(np.diff(net.t_min), net.deltas, rtol=1e-12)
    assert net.latency == net.t_min[-1]
    r = net.simulate(x)
    for l, t in enumerate(r.times):
        fin = t[np.isfinite(t)]
        assert fin.size and fin.min() >= net.t_min[l] and fin.max() < net.t_max[l]


def test_zeta_invariance():
    m = _net(seed=3)
    x = _inputs(seed=4)
    a = ttfs.convert(m, x, zeta=0.5).simulate(x)
    b = ttfs.convert(m, x, zeta=5.0).simulate(x)
    assert a.saturated.sum() == 0 and b.saturated.sum() == 0
    assert np.abs(a.logits - b.logits).max() <= 1e-11
    for xa, xb in zip(a.activations(), b.activations()):
        assert np.array_equal(xa > 0, xb > 0)
        assert np.abs(xa - xb).max() <= 1e-11
    assert np.array_equal(a.spikes, b.spikes)


def _handmade():
    """3 inputs -> 5 hidden -> 2 outputs with one neuron per edge case."""
    w1 = np.array([[0.0, 0.0, 0.0],     # bias-only, b > 0: spikes at t_max - b
                   [0.0, 0.0, 0.0],     # bias-only, b < 0: silent
                   [0.0, 0.0, 0.0],     # pre-activation exactly 0: silent
                   [5.0, 5.0, 5.0],     # saturates (window from x_max below)
                   [1.0, -1.0, 0.5]])   # ordinary
    b1 = np.array([0.3, -0.1, 0.0, 0.0, 0.05])
    w2 = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [-1.0, 0.5, 0.0, 1.0, 2.0]])
    b2 = np.array([0.1, -0.2])
    return ttfs.TTFSNetwork([w1, w2], [b1, b2], x_max=[2.0], zeta=0.5)   # Delta = 3


def test_silent_saturated_zero_weight_bias_only_neurons():
    net = _handmade()
    x = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.1]])
    for r in (net.simulate(x), net.closed_form(x)):
        t = r.times[0]
        tmin, tmax = net.t_min[0], net.t_max[0]
        assert np.allclose(t[:, 0], tmax - 0.3, rtol=0, atol=1e-14)   # bias-only spike
        assert np.isinf(t[:, 1]).all() and np.isinf(t[:, 2]).all()
        # row 0: 5*(1+0.5) = 7.5 >= Delta = 3 -> fires at t_min and is counted
        assert t[0, 3] == tmin and r.saturated[0, 0] == 1
        assert np.isinf(t[1, 3])                                     # no input: silent
        assert abs((tmax - t[2, 3]) - 1.5) < 1e-14 and r.saturated[2, 0] == 0
        assert abs((tmax - t[0, 4]) - (1.0 - 0.5 + 0.05)) < 1e-14
        assert abs((tmax - t[1, 4]) - 0.05) < 1e-14
        # silent pixels send nothing: spikes/events count only x > 0
        assert r.spikes[:, 0].tolist() == [2, 0, 2]
        assert r.events[:, 0].tolist() == [10, 0, 10]
        assert r.spikes[:, 1].tolist() == [3, 2, 3]
        assert r.events[:, 1].tolist() == [6, 4, 6]
        # capped activation of the saturated unit enters the logits
        h = np.array([0.3, 0, 0, 3.0, 0.55])
        assert np.allclose(r.logits[0], net.weights[1] @ h + net.biases[1], atol=1e-13)


def test_saturation_when_window_too_small():
    m = _net(seed=5)
    x = _inputs(seed=6)
    big = ttfs.convert(m, x)
    small = ttfs.TTFSNetwork(m.weights, m.biases, big.x_max * 0.3, zeta=0.0)
    r = small.simulate(x)
    assert r.saturated.sum() > 0
    _, hidden = small.relu_forward(x)
    got = r.activations()[0]
    assert np.abs(got - np.minimum(hidden[0], small.deltas[0])).max() < 1e-12
    assert np.array_equal(r.saturated[:, 0], (hidden[0] >= small.deltas[0]).sum(axis=1))


def test_operation_counts_match_numpy_reference(case):
    _, net, x = case
    ops = ttfs.operation_counts(net, x, n_threads=2)
    _, hidden = net.relu_forward(x)
    act = [x] + hidden
    for l, layer in enumerate(ops["layers"]):
        n_src = int(np.count_nonzero(act[l] > 0))
        assert layer["source_spikes_total"] == n_src
        assert layer["synaptic_events_total"] == n_src * net.sizes[l + 1]
        assert layer["dense_macs"] == net.sizes[l] * net.sizes[l + 1]
    for l, h in enumerate(ops["hidden"]):
        assert h["spikes_total"] == int(np.count_nonzero(hidden[l] > 0))
    frac = sum(np.count_nonzero(h > 0) for h in hidden) / (len(x) * sum(net.sizes[1:-1]))
    assert ops["spikes_per_hidden_neuron"] == pytest.approx(frac, rel=1e-12)
    assert ops["n_images"] == len(x)


def test_seed_v1_identity_and_drop():
    m = _net(depth=5, seed=7, bias_sd=0.3)
    # a strongly negative bias guarantees a silent unit per hidden layer (min h = 0)
    for b in m.biases[:-1]:
        b[0] = -1e3
    x = _inputs(seed=8)
    net = ttfs.convert(m, x)
    v1, s = ttfs.seed_v1_forward(net, x)
    assert np.allclose(s[:, 0], x.max(axis=1))
    ident = ttfs.scaled_bias_relu(net, x, s)
    assert np.abs(v1 - ident).max() <= 1e-10 * max(1.0, np.abs(ident).max())
    z, _ = net.relu_forward(x)
    assert np.abs(v1 - np.maximum(z, 0)).max() > 1e-3     # v1 is NOT the ReLU net
    # dividing each bias by the scale v1 sees on the true activations makes v1 exact:
    # the per-sample renormalisation (not time resolution) is the seed's bug
    z, hidden = net.relu_forward(x)
    s_true = np.stack([a.max(axis=1) for a in [x] + hidden], axis=1)
    fixed = ttfs.TTFSNetwork(net.weights, net.biases, net.x_max)
    for i in range(20):
        fixed.biases = [b / si for b, si in zip(net.biases, s_true[i])]
        v1_i = ttfs.seed_v1_forward(fixed, x[i:i + 1])[0][0]
        assert np.allclose(v1_i, np.maximum(z[i], 0), rtol=0, atol=1e-9)


def test_clock_driven_converges_and_matches_reference(case):
    _, net, x = case
    z, _ = net.relu_forward(x)
    errs = []
    for dt in (0.1, 0.01, 0.001, 1e-5):
        a, b = net.simulate(x, dt=dt, n_threads=2), net.closed_form(x, dt=dt)
        assert np.array_equal(a.spikes, b.spikes)
        assert np.abs(a.logits - b.logits).max() <= 1e-10
        errs.append(np.abs(a.logits - z).max())
        for t in a.times:       # spikes are registered on the grid
            fin = t[np.isfinite(t)]
            assert np.allclose(fin / dt, np.round(fin / dt), atol=1e-6)
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-3


def test_time_quantisation_many_bits_is_exact(case):
    _, net, x = case
    z, _ = net.relu_forward(x)
    errs = []
    for k in (3, 6, 12, 40):
        a, b = net.simulate(x, time_bits=k), net.closed_form(x, time_bits=k)
        assert np.array_equal(a.spikes, b.spikes)
        assert np.abs(a.logits - b.logits).max() <= 1e-10
        errs.append(np.abs(a.logits - z).max())
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-9
    # the grid: decoded activations are integer multiples of Delta/(2^k - 1)
    r = net.simulate(x, time_bits=4)
    for l, xa in enumerate(r.activations()):
        q = xa / (net.deltas[l] / 15)
        assert np.allclose(q, np.round(q), atol=1e-9)


def test_jitter_touches_only_real_spikes():
    m = _net(depth=3, seed=9)
    x = _inputs(seed=10)
    x[:, :5] = 0.0
    m.weights[0][:, :5] = 1e6           # silent pixels: any event from them would explode
    m.biases[0][:3] = -1e3              # never-firing hidden units
    net = ttfs.convert(m, x)
    a = net.simulate(x)
    j = net.simulate(x, jitter=1e-3, seed=3)
    assert np.isinf(j.times[0][:, :3]).all()
    assert np.abs(j.logits - a.logits).max() < 1.0
    assert np.abs(j.logits - a.logits).max() > 0
    fired = np.isfinite(a.times[0]) & np.isfinite(j.times[0])
    d = j.times[0][fired] - a.times[0][fired]
    assert 1e-4 < np.abs(d).max() < 1e-2
    assert np.array_equal(net.simulate(x, jitter=1e-3, seed=3).logits, j.logits)
    assert not np.array_equal(net.simulate(x, jitter=1e-3, seed=4).logits, j.logits)


@pytest.mark.parametrize("kw", [{}, {"dt": 0.01}, {"time_bits": 5}, {"jitter": 0.01, "seed": 2},
                                {"dtype": np.float32}])
def test_threads_bit_identical(case, kw):
    _, net, x = case
    xx = x.astype(np.float32) if kw.get("dtype") == np.float32 else x
    x_many = np.concatenate([xx] * 4)
    r1 = net.simulate(x_many, n_threads=1, **kw)
    r2 = net.simulate(x_many, n_threads=2, **kw)
    for a, b in zip(r1.times, r2.times):
        assert np.array_equal(a, b)
    for f in ("logits", "spikes", "events", "saturated"):
        assert np.array_equal(getattr(r1, f), getattr(r2, f))


def test_float32_path(case):
    _, net, x = case
    z, _ = net.relu_forward(x)
    r = net.simulate(x.astype(np.float32), dtype=np.float32)
    assert r.logits.dtype == np.float32 and r.times[0].dtype == np.float32
    assert np.abs(r.logits - z).max() < 1e-4
    assert np.array_equal(r.predictions, np.argmax(z, axis=1))


def test_batching_and_record_flag(case):
    _, net, x = case
    a = net.simulate(x)
    b = net.simulate(x, batch_size=7, record_times=False)
    assert b.times is None
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.events, b.events)
    e = net.simulate(x[:0])
    assert e.logits.shape == (0, net.sizes[-1])


def test_bad_inputs_raise(case):
    _, net, x = case
    bad = [x[:, :-1], x.astype(np.int64), np.where(x > 0.9, np.nan, x), x * 2, x - 0.5,
           x[0], list(x)]
    for b in bad:
        with pytest.raises((ValueError, TypeError)):
            net.simulate(b)
        with pytest.raises((ValueError, TypeError)):
            net.closed_form(b)
    for kw in ({"dt": -1.0}, {"dt": np.nan}, {"time_bits": 0.5}, {"time_bits": 99},
               {"jitter": -0.1}, {"jitter": np.inf}, {"seed": -1}, {"dtype": np.int32},
               {"dt": True}):
        with pytest.raises(ValueError):
            net.simulate(x, **kw)
    w, b = net.weights, net.biases
    with pytest.raises(ValueError):
        ttfs.TTFSNetwork(w, b[:-1], net.x_max)
    with pytest.raises(ValueError):
        ttfs.TTFSNetwork([w[0], w[0]], [b[0], b[0]], [1.0])
    with pytest.raises(ValueError):
        ttfs.TTFSNetwork(w, b, net.x_max[:-1])
    with pytest.raises(ValueError):
        ttfs.TTFSNetwork(w, b, -net.x_max)
    with pytest.raises(ValueError):
        ttfs.TTFSNetwork(w, b, net.x_max, zeta=-1.5)
    with pytest.raises(ValueError):
        ttfs.convert(MLP(w, b), x[:0])


@pytest.mark.parametrize("bs", [-5, 0, 2.7, "4", True])
def test_batch_size_must_be_a_positive_integer(case, bs):
    # a negative step skipped the kernel (np.empty logits) and the calibration loop
    # (X_n = 0); 0 meant "all images"; 2.7 was truncated
    m, net, x = case
    with pytest.raises(ValueError, match="batch_size"):
        net.simulate(x, batch_size=bs)


def test_calibration_of_a_set_is_the_maximum_over_its_blocks(case):
    # Each fixed-size block goes through products of one shape, whatever the set's length:
    # a block gives the same bits alone as inside the set, on any BLAS.
    m, net, _ = case
    x = _inputs(seed=2)
    rows = ttfs.CALIBRATION_ROWS
    assert len(x) > rows and len(x) % rows    # a full block and a padded last one
    per_block = [ttfs.calibration_maxima(m, x[s:s + rows]) for s in range(0, len(x), rows)]
    assert np.array_equal(np.max(per_block, axis=0), net.x_max)


def test_calibration_maxima_are_the_largest_activations(case):
    m, net, _ = case
    x = _inputs(seed=2)
    _, hidden = net.relu_forward(x)
    want = np.array([h.max() for h in hidden])
    np.testing.assert_allclose(net.x_max, want, rtol=1e-12, atol=0)


def test_dt_too_small_for_the_clock_grid_is_refused(case):
    # t/dt overflowed to inf: every spike was lost and the logits were garbage
    _, net, x = case
    for fn in (net.simulate, net.closed_form):
        with pytest.raises(ValueError, match="dt=1e-320 is too small"):
            fn(x, dt=1e-320)
    with pytest.raises(ValueError, match="dt"):
        ttfs.check_dt(1e-320)
    z, _ = net.relu_forward(x)
    r = net.simulate(x, dt=1e-300)          # tiny but usable: as good as exact
    assert np.abs(r.logits - net.simulate(x).logits).max() <= 1e-12 * max(1, np.abs(z).max())


def test_seed_beyond_uint64_is_a_value_error(case):
    _, net, x = case
    with pytest.raises(ValueError, match="seed"):
        net.simulate(x[:3], jitter=0.1, seed=2 ** 70)
    net.simulate(x[:3], jitter=0.1, seed=2 ** 64 - 1)


def test_results_of_other_images_and_wrong_scales_are_refused(case):
    _, net, x = case
    r = net.simulate(x[:20])
    with pytest.raises(ValueError, match="result holds 20 images but X has 5"):
        ttfs.operation_counts(net, x[:5], result=r)
    with pytest.raises(ValueError, match="result holds 20 images but X has 5"):
        ttfs.exactness_report(net, x[:5], result=r)
    with pytest.raises(TypeError, match="SimResult"):
        ttfs.operation_counts(net, x[:20], result=r.logits)
    assert ttfs.operation_counts(net, x[:20], result=r) == ttfs.operation_counts(net, x[:20])
    _, s = ttfs.seed_v1_forward(net, x[:4])
    with pytest.raises(ValueError, match=r"scales must have shape \(4, 4\)"):
        ttfs.scaled_bias_relu(net, x[:4], np.ones(3))
    with pytest.raises(ValueError, match="scales"):
        ttfs.scaled_bias_relu(net, x[:4], s[:3])


def test_hdf5_roundtrip(tmp_path, case):
    _, net, x = case
    path = tmp_path / "net.h5"
    ttfs.save(net, path, results={"acc": 0.5}, stats={"spikes": np.arange(3)})
    back = ttfs.load(path)
    assert back.results == {"acc": 0.5}
    assert np.array_equal(back.stats["spikes"], np.arange(3))
    assert np.array_equal(back.t_min, net.t_min) and back.zeta == net.zeta
    a, b = net.simulate(x), back.simulate(x)
    assert np.array_equal(a.logits, b.logits)
    with h5py.File(path, "r") as f:
        assert f.attrs["snnfast_format"] == "ttfs-1"
    assert not list(tmp_path.glob(".*tmp"))


def test_hdf5_malformed_files_raise_clear_errors(tmp_path, case):
    _, net, _ = case
    good = tmp_path / "good.h5"
    ttfs.save(net, good)
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(raw[: len(raw) // 2])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    partial = tmp_path / "partial.h5"
    partial.write_bytes(raw)
    with h5py.File(partial, "a") as f:
        del f["relu/W2"]
    tampered = tmp_path / "tampered.h5"
    tampered.write_bytes(raw)
    with h5py.File(tampered, "a") as f:
        f["thresholds/theta1"][0] += 1.0
    for p in (trunc, junk, foreign, partial, tampered, tmp_path / "missing.h5"):
        with pytest.raises(ValueError, match=p.name):
            ttfs.load(p)


def _convert_cli(monkeypatch, capsys, *args):
    """Run the convert CLI with the data loading replaced by a failure: an argument
    error must be reported before any data is loaded or network trained."""
    from snnfast import convert

    def no_work(a):
        raise AssertionError("convert started its work despite a bad argument")
    monkeypatch.setattr(convert, "_load_data", no_work)
    rc = convert.main(["--no-progress", *map(str, args)])
    return rc, capsys.readouterr().err


def test_convert_cli_refuses_bad_arguments_up_front(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for args, msg in ((["--out", afile], "exists and is not a directory"),
                      (["--out", afile / "sub"], "cannot create the directory"),
                      (["--threads", 0, "--out", tmp_path / "r"], "--threads must not be 0"),
                      (["--dt", 0.1, 1e-320, "--out", tmp_path / "r"], "--dt 1e-320 is too small")):
        rc, err = _convert_cli(monkeypatch, capsys, *args)
        assert rc == 2, args
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
        assert "None" not in err        # library wording ("use None for the default")
    assert afile.read_text() == "keep me"
    assert not (tmp_path / "r").exists()


def test_convert_cli_failed_run_removes_only_the_dirs_it_created(tmp_path, monkeypatch, capsys):
    from snnfast import convert

    def fail(a):
        raise ValueError("--n-val must lie in (0, 300)")
    monkeypatch.setattr(convert, "_load_data", fail)
    new = tmp_path / "new" / "sub"
    assert convert.main(["--no-progress", "--out", str(new)]) == 2
    assert "--n-val" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    assert convert.main(["--no-progress", "--out", str(old)]) == 2
    assert old.is_dir()                 # the user's (empty) directory stays


def test_convert_cli_reads_the_data_from_data_dir(tmp_path, capsys):
    from snnfast import convert
    afile = tmp_path / "afile"
    afile.write_text("x")
    # the data set comes from --data-dir: a file there cannot be the cache directory
    assert convert.main(["--no-progress", "--data-dir", str(afile),
                         "--out", str(tmp_path / "r")]) == 2
    assert "cannot use" in capsys.readouterr().err and not (tmp_path / "r").exists()


def _mnist_available():
    try:
        from snnfast.datasets import load
        load("mnist", "test")
        load("mnist", "train")
        return True
    except Exception:
        return False


@pytest.mark.slow
def test_convert_cli_tiny_run(tmp_path):
    if not _mnist_available():
        pytest.skip("MNIST is not cached and cannot be fetched")
    from snnfast.convert import main
    out = tmp_path / "run"
    rc = main(["--depths", "2", "3", "--epochs", "1", "--n-train", "1200", "--n-val", "200",
               "--n-test", "300", "--width", "16", "--threads", "2", "--time-bits", "3", "10",
               "--dt", "0.1", "--out", str(out), "--no-progress", "--mapping", "seed-v1"])
    assert rc == 0
    res = json.loads((out / "ttfs_results.json").read_text())
    assert [r["depth"] for r in res["table"]] == [2, 3]
    for r in res["table"]:
        assert r["agreement"] == 100.0 and r["drop"] == 0.0 or r["saturated_units"] > 0
        assert max(r["max_abs_err_per_layer"]) < 1e-9
        assert len(res["sweeps"][str(r["depth"])]["time_bits"]) == 2
    assert len(res["seed_v1"]) == 2
    # the same figures as `python -m snnfast.energy`, per depth (width 16)
    dense = {"2": 784 * 16 + 16 * 10, "3": 784 * 16 + 16 * 16 + 16 * 10}
    assert {d: e["SynapticOperations"]["Dense"] for d, e in res["energy"].items()} == dense
    for name in ("ttfs_L2.h5", "ttfs_L3.h5", "ttfs_depth.png", "ttfs_spike_times.png",
                 "ttfs_windows.png", "ttfs_sweeps.png"):
        assert (out / name).stat().st_size > 0
    net = ttfs.load(out / "ttfs_L3.h5")
    assert net.depth == 3 and net.results["summary"]["depth"] == 3
    assert main(["--depths", "1", "--out", str(out)]) == 2
