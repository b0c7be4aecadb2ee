"""Tests of snnfast.energy: exact counts against slow NumPy recounts, hand-computed values."""
import json
import math

import numpy as np
import pytest

from snnfast import energy as en


# ----------------------------------------------------------------------------- slow references

def ref_conv_sum(x, w, stride, pad):
    """Sum of a direct (loop) cross-correlation output: x (C_in,H,W), w (C_out,C_in,kh,kw)."""
    c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    xp = np.zeros((c_in, h + 2 * pad[0], wd + 2 * pad[1]), dtype=np.int64)
    xp[:, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    ho = (h + 2 * pad[0] - kh) // stride[0] + 1
    wo = (wd + 2 * pad[1] - kw) // stride[1] + 1
    total = 0
    for oy in range(ho):
        for ox in range(wo):
            patch = xp[:, oy * stride[0]:oy * stride[0] + kh, ox * stride[1]:ox * stride[1] + kw]
            total += int((patch[None] * w).sum())          # all output channels at (oy, ox)
    return total


def ref_layer_counts(kind, w, x_calls, stride=(1, 1), pad=(0, 0), scope="sample"):
    """NeuroBench's recipe, literally: binarise, run the layer, sum the outputs, per call."""
    n, calls = x_calls.shape[:2]
    macs = acs = dense = 0
    wb = (w != 0).astype(np.int64)
    ones_w = np.ones_like(wb)
    wb_f, ones_f = wb.astype(np.float64), ones_w.astype(np.float64)
    for c in range(calls):
        batch_bin = all(np.isin(x_calls[i, c], [-1, 0, 1]).all() for i in range(n))
        for i in range(n):
            x = x_calls[i, c]
            xb = (x != 0).astype(np.int64)
            if kind == "linear":      # float64 products of 0/1 values: exact, and BLAS-fast
                eff = int((xb.reshape(-1).astype(np.float64) @ wb_f).sum())
                den = int((np.ones(xb.size) @ ones_f).sum())
            else:
                eff = ref_conv_sum(xb, wb, stride, pad)
                den = ref_conv_sum(np.ones_like(xb), ones_w, stride, pad)
            is_bin = np.isin(x, [-1, 0, 1]).all() if scope == "sample" else batch_bin
            if is_bin:
                acs += eff
            else:
                macs += eff
            dense += den
    return macs, acs, dense


def sparse_weights(rng, shape, p_zero):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < p_zero] = 0.0
    return w


def mixed_inputs(rng, shape, p_spike=0.2):
    """Spikes in most calls, graded (non-binary) values in some, all-zero in some."""
    x = (rng.random(shape) < p_spike).astype(np.float32)
    n, calls = shape[:2]
    for i in range(n):
        for c in range(calls):
            r = rng.random()
            if r < 0.3:
                x[i, c] *= rng.integers(1, 4, size=x[i, c].shape)   # counts, some > 1
            elif r < 0.4:
                x[i, c] = -x[i, c]                                   # signed spikes: still binary
            elif r < 0.5:
                x[i, c] = 0.0
    return x


# ----------------------------------------------------------------------------- synaptic operations

@pytest.mark.parametrize("seed", range(4))
def test_linear_counts_equal_recount(seed):
    rng = np.random.default_rng(seed)
    n_in, n_out = rng.integers(3, 30, size=2)
    w = sparse_weights(rng, (n_in, n_out), 0.3)
    x = mixed_inputs(rng, (5, 4, n_in))
    spec = en.LayerSpec("fc", "linear", w)
    for scope in ("sample", "batch"):
        got = en.synaptic_op_counts(spec, x, binary_scope=scope)
        macs, acs, dense = ref_layer_counts("linear", w, x, scope=scope)
        assert (got["effective_macs"], got["effective_acs"], got["dense"]) == (macs, acs, dense)
        assert got["calls"] == 20 and got["samples"] == 5


@pytest.mark.parametrize("seed", range(6))
def test_conv_counts_equal_recount(seed):
    rng = np.random.default_rng(100 + seed)
    c_in, c_out = rng.integers(1, 4), rng.integers(1, 5)
    kh, kw = rng.integers(1, 5, size=2)
    h, wd = rng.integers(max(kh, kw) + 1, 12, size=2)
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    pad = tuple(int(p) for p in rng.integers(0, 3, size=2))
    w = sparse_weights(rng, (c_out, c_in, kh, kw), 0.3)
    x = mixed_inputs(rng, (3, 3, c_in, h, wd))
    spec = en.LayerSpec("conv", "conv2d", w, stride=stride, padding=pad, in_shape=(c_in, h, wd))
    got = en.synaptic_op_counts(spec, x)
    macs, acs, dense = ref_layer_counts("conv", w, x, stride, pad)
    assert (got["effective_macs"], got["effective_acs"], got["dense"]) == (macs, acs, dense)
    # flat (N, calls, C*H*W) input gives the same counts
    flat = en.synaptic_op_counts(spec, x.reshape(3, 3, -1))
    assert flat == got


def test_convsnn_geometry_dense_matches_spec():
    """Seed Conv-SNN per step: conv 57 600, FC1 2 359 296, FC2 10 240 dense synops."""
    rng = np.random.default_rng(0)
    conv = en.LayerSpec("conv", "conv2d", rng.standard_normal((16, 1, 5, 5)), stride=2,
                        in_shape=(1, 28, 28))
    assert conv.out_shape == (16, 12, 12)
    assert conv.fanout(False).sum() == 57_600
    assert en.LayerSpec("fc1", "linear", np.ones((2304, 1024))).fanout(False).sum() == 2_359_296
    assert en.LayerSpec("fc2", "linear", np.ones((1024, 10))).fanout(False).sum() == 10_240


def test_binary_override_and_executed_recount():
    rng = np.random.default_rng(3)
    w = sparse_weights(rng, (6, 4), 0.5)
    x = rng.integers(0, 3, size=(2, 3, 6)).astype(np.uint8)
    spec = en.LayerSpec("fc", "linear", w)
    forced = en.synaptic_op_counts(spec, x, binary=np.ones(3, dtype=bool))
    assert forced["effective_macs"] == 0 and forced["binary_calls"] == 6
    eff = int(((x != 0).astype(np.int64) @ (w != 0).astype(np.int64)).sum())
    assert forced["effective_acs"] == eff
    # every count is one event adding a full weight row (zero weights included)
    assert en.event_driven_ops(spec, x) == int(x.astype(np.int64).sum()) * 4


# ----------------------------------------------------------------------------- static metrics

def tiny_network():
    w1 = np.array([[0.5, 0.0, -1.0], [0.0, 0.0, 2.0]], dtype=np.float32)     # (2 in, 3 out), 3 zeros
    b1 = np.zeros(3, dtype=np.float32)
    w2 = np.array([[1.0], [0.0], [0.25]], dtype=np.float32)                  # (3, 1), 1 zero
    b2 = np.array([0.1], dtype=np.float32)
    layers = [en.LayerSpec("fc1", "linear", w1, b1), en.LayerSpec("fc2", "linear", w2, b2)]
    buffers = [np.float32(0.9), np.float32(1.0)]                              # beta, threshold
    return layers, buffers


def test_footprint_and_sparsity_hand_computed():
    layers, buffers = tiny_network()
    acc = en.OpAccountant(layers, ["lif1"], buffers=buffers)
    # 2 samples, 2 steps; input spikes (binary) then non-binary rates into fc2
    x1 = np.array([[[1, 0], [1, 1]], [[0, 0], [0, 1]]], dtype=np.uint8)
    s1 = np.array([[[1, 0, 0], [0, 0, 1]], [[0, 0, 1], [0, 0, 1]]], dtype=np.uint8)
    r = s1.mean(axis=1, keepdims=True).astype(np.float32)   # one call: (.5, 0, .5) and (0, 0, 1)
    acc.add_synaptic("fc1", x1)
    acc.add_activation("lif1", s1, membrane_updates=9)
    acc.add_synaptic("fc2", r)
    acc.add_samples(2)
    res = acc.result()
    assert res["Footprint"] == (6 + 3 + 3 + 1) * 4 + 2 * 4
    assert res["ConnectionSparsity"] == round(4 / 9, 4)
    assert res["ActivationSparsity"] == pytest.approx(8 / 12)
    assert res["MembraneUpdates"] == 4.5
    # fc1 effective: input 0 has fan-out 2, input 1 fan-out 1 -> calls: 2, 3, 0, 1 = 6 ACs
    so = res["SynapticOperations"]
    # fc2: sample 0 rates (0.5, 0, 0.5) non-binary -> 1 + 1 = 2 MACs; sample 1 (0, 0, 1) binary -> 1 AC
    assert so == {"Effective_MACs": 2 / 2, "Effective_ACs": (6 + 1) / 2, "Dense": (4 * 6 + 2 * 3) / 2}
    assert res["layers"]["fc2"]["binary_calls"] == 1


def test_membrane_updates_definition():
    pre = np.zeros((1, 3, 2), dtype=np.float32)
    post = np.zeros((1, 3, 2), dtype=np.float32)
    pre[0, 1] = [0.5, 0.0]
    post[0, 1] = [0.45, 0.0]          # first neuron changed, second not
    post[0, 2] = [0.0, 0.3]
    assert en.membrane_updates(pre, post) == 2 + 1 + 1


# ----------------------------------------------------------------------------- energy

def test_energy_worked_example():
    e = en.energy_estimate({"Effective_MACs": 0, "Effective_ACs": 1_245_750, "Dense": 2_427_136})
    assert e["ann_uJ"] == pytest.approx(11.1648256, rel=1e-12)           # 2 427 136 x 4.6 pJ
    assert e["snn_uJ"] == pytest.approx(1.121175, rel=1e-12)             # 1 245 750 x 0.9 pJ
    assert e["preset"] == "horowitz45_fp32" and "not modelled" in e["assumptions"]
    assert math.isclose(en.PRESETS["loihi"].energy_uj(1e6, 1e6), 47.2)
    assert "(verify)" in en.PRESETS["truenorth"].citation and "verify" in en.PRESETS["loihi"].citation
    assert en.PRESETS["horowitz45_int8"].energy_uj(100, 1000) == pytest.approx(23e-6 + 30e-6)
    with pytest.raises(ValueError, match="unknown energy preset"):
        en.get_preset("nope")
    with pytest.raises(ValueError):
        en.EnergyModel("bad", float("nan"), 1.0, "x")


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_raise():
    spec = en.LayerSpec("fc", "linear", np.ones((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="expects 4"):
        en.synaptic_op_counts(spec, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        en.synaptic_op_counts(spec, np.full((1, 1, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(N, calls"):
        en.synaptic_op_counts(spec, np.zeros(4))
    with pytest.raises(TypeError):
        en.synaptic_op_counts(spec, [[0, 1, 0, 1]])
    with pytest.raises(ValueError, match="kind"):
        en.LayerSpec("x", "pool", np.ones((2, 2)))
    with pytest.raises(ValueError, match="in_shape"):
        en.LayerSpec("c", "conv2d", np.ones((2, 1, 3, 3)))
    with pytest.raises(ValueError, match="C_in"):
        en.LayerSpec("c", "conv2d", np.ones((2, 1, 3, 3)), in_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="binary_scope"):
        en.OpAccountant([spec], binary_scope="step")
    acc = en.OpAccountant([spec])
    with pytest.raises(ValueError, match="no samples"):
        acc.result()
    with pytest.raises(ValueError, match="unknown layer"):
        acc.add_synaptic("fc9", np.zeros((1, 1, 4)))


def test_report_and_json(tmp_path):
    layers, buffers = tiny_network()
    acc = en.OpAccountant(layers, ["lif1"], buffers=buffers)
    acc.add_synaptic("fc1", np.ones((1, 2, 2), dtype=np.uint8))
    acc.add_executed("fc1", 12)
    acc.add_synaptic("fc2", np.full((1, 1, 3), 0.5, dtype=np.float32))
    acc.add_activation("lif1", np.ones((1, 2, 3), dtype=np.uint8))
    acc.add_samples(1)
    res = acc.result()
    e = en.energy_estimate(res["SynapticOperations"])
    text = en.format_report(res, e, title="tiny")
    for key in ("Footprint", "ConnectionSparsity", "ActivationSparsity", "SynapticOperations",
                "Effective_MACs", "Effective_ACs", "Dense", "MembraneUpdates", "uJ/inference",
                "horowitz45_fp32", "not modelled", "ops/sample", " B "):
        assert key in text
    out = tmp_path / "r.json"
    en.write_json(out, {"result": res, "energy": e})
    back = json.loads(out.read_text())
    assert back["result"]["SynapticOperations"] == res["SynapticOperations"]


# ----------------------------------------------------------------------------- optional peer check

def test_matches_neurobench_if_installed():
    """Same weights and spikes through NeuroBench's SynapticOperations (skipped if absent)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("snntorch")
    sops = pytest.importorskip("neurobench.metrics.utils.layers")
    rng = np.random.default_rng(7)
    w = sparse_weights(rng, (12, 5), 0.4)
    x = mixed_inputs(rng, (1, 6, 12))
    lin = torch.nn.Linear(12, 5, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T.copy()))
    macs = acs = dense = 0
    for c in range(x.shape[1]):
        t = torch.from_numpy(x[:, c].copy())
        ops, spiking = sops.single_layer_MACs(t, lin)
        tot, _ = sops.single_layer_MACs(t, lin, total=True)
        dense += int(tot)
        if spiking:
            acs += int(ops)
        else:
            macs += int(ops)
    got = en.synaptic_op_counts(en.LayerSpec("fc", "linear", w), x)
    assert (got["effective_macs"], got["effective_acs"], got["dense"]) == (macs, acs, dense)


# ----------------------------------------------------------------------------- Conv-SNN adapter

def _cfg(preset):
    from types import SimpleNamespace
    common = dict(T=10, n_det=5, seed=3, reseeded_noise=False, beta_c=0.9, thr_c=0.8, reset_c="zero",
                  beta_h=0.9, thr_h=0.8)
    if preset == "seed":
        return SimpleNamespace(**common, reset_h="halve", hidden_period=2, hidden_phase=0,
                               drive="cumulative", drive_scale=0.1, rate_norm="T")
    return SimpleNamespace(**common, reset_h="subtract", hidden_period=2, hidden_phase=1,
                           drive="window", drive_scale=1.0, rate_norm="n_updates")


def _convsnn_params(seed):
    rng = np.random.default_rng(seed)
    p = dict(conv_w=rng.normal(0, 0.4, (16, 1, 5, 5)).astype(np.float32),
             conv_b=rng.normal(0, 0.05, 16).astype(np.float32),
             W1=rng.normal(0, 0.05, (2304, 1024)).astype(np.float32),
             b1=rng.normal(0, 0.05, 1024).astype(np.float32),
             W2=rng.normal(0, 0.05, (1024, 10)).astype(np.float32), b2=np.zeros(10, np.float32))
    p["conv_w"][0, 0, 2, 2] = 0.0                 # a few zero weights: effective != executed
    p["W1"][rng.random((2304, 1024)) < 0.1] = 0.0
    return p


def _images(rng, n):
    img = (rng.random((n, 784)) * 255).astype(np.uint8)
    img[rng.random((n, 784)) < 0.7] = 0
    return img


def _ref_fc1_inputs(z_c, steps, cumulative):
    """Per sample, per update, by explicit loops over steps."""
    n, T, k = z_c.shape
    out = np.zeros((n, len(steps), k), dtype=np.int64)
    for i in range(n):
        seen = np.zeros(k, dtype=np.int64)
        prev = -1
        for u, t in enumerate(steps):
            window = z_c[i, prev + 1:t + 1].astype(np.int64).sum(axis=0)
            seen += window
            out[i, u] = seen if cumulative else window
            prev = t
    return out


def _ref_conv_events(s_in):
    """Input spike x number of valid 12x12 output positions it reaches x 16 channels (loops)."""
    total = 0
    for i, t, p in zip(*np.nonzero(s_in)):
        r, c = divmod(int(p), 28)
        ny = sum(1 for y in range(12) if 2 * y <= r <= 2 * y + 4)
        nx = sum(1 for x in range(12) if 2 * x <= c <= 2 * x + 4)
        total += ny * nx * 16
    return total


def _ref_fc1_rows(z_c, steps, incremental):
    """Rows the compiled FC1 adds or subtracts: each spike's row once, or, per update of an
    incremental windowed drive whose window and previous window span <= 2 steps, the sum of
    |window - previous window| when that is fewer."""
    total = 0
    for zb in z_c.astype(np.int64):
        prev, prev_len, start = None, 0, 0
        for t in steps:
            win = zb[start:t + 1].sum(axis=0)
            rows = int(win.sum())
            if incremental and prev is not None and t + 1 - start <= 2 and prev_len <= 2:
                rows = min(rows, int(np.abs(win - prev).sum()))
            total += rows
            prev, prev_len, start = win, t + 1 - start, t + 1
    return total


def _convsnn_model(preset, params, backend):
    convsnn = pytest.importorskip("snnfast.convsnn")
    with _no_check():
        model = convsnn.ConvSNN(preset=preset, seed=3, backend=backend)
    if model.backend != backend:
        pytest.skip(f"{backend} backend not built")
    model.set_params(params)
    return model


@pytest.mark.parametrize("preset", ["seed", "default"])
def test_convsnn_counts_equal_recount(preset):
    """from_convsnn (the network accounting over the model's own trace) against a recount
    by loops of its spikes; the NumPy backend."""
    params = _convsnn_params(1)
    model = _convsnn_model(preset, params, "numpy")
    cfg = model.config
    imgs = _images(np.random.default_rng(2), 3)
    res = en.from_convsnn(model, imgs, batch_size=2)
    tr = model.trace(imgs)
    steps = [t for t in range(cfg.T) if t % cfg.hidden_period == cfg.hidden_phase]
    n = 3
    x1 = _ref_fc1_inputs(tr["conv"], steps, preset == "seed")
    norm = cfg.T if preset == "seed" else len(steps)
    r_h = (tr["hidden"].sum(axis=1) / norm)[:, None, :]
    for name, kind, w, x, kw in [
            ("conv", "conv", params["conv_w"], tr["input"].reshape(n, cfg.T, 1, 28, 28), dict(stride=(2, 2))),
            ("fc1", "linear", params["W1"], x1, {}), ("fc2", "linear", params["W2"], r_h, {})]:
        macs, acs, dense = ref_layer_counts(kind, w, x, **kw)
        lay = res["layers"][name]
        assert (lay["Effective_MACs"] * n, lay["Effective_ACs"] * n, lay["Dense"] * n) == \
            pytest.approx((macs, acs, dense), rel=0, abs=1e-6), name
    assert res["layers"]["conv"]["executed"] * n == _ref_conv_events(tr["input"])
    assert res["layers"]["fc1"]["executed"] * n == \
        _ref_fc1_rows(tr["conv"], steps, preset != "seed") * 1024
    # the replay reproduces the model's spikes, so its membranes are the model's
    assert res["checks"]["replay_spike_mismatches"] == {"conv_lif": 0, "hidden": 0}
    # spike counts and sparsity per activation layer
    nz = int(tr["conv"].sum()) + int(tr["hidden"][:, steps].sum())
    assert res["ActivationSparsity"] == pytest.approx(1 - nz / (n * (cfg.T * 2304 + len(steps) * 1024)))
    assert res["Footprint"] == sum(a.nbytes for a in params.values()) + 16
    assert res["Dense_single_pass"] == 57_600 + 2_359_296 + 10_240
    assert res["MembraneUpdates"] <= cfg.T * 2304 + len(steps) * 1024
    assert res["MembraneUpdates"] >= 2304 + 1024


def test_convsnn_kernel_counters_equal_recount():
    """The compiled kernels' counters, which from_convsnn reports as executed, equal the
    recount of executed events from the traced spikes."""
    for preset in ("seed", "default"):
        model = _convsnn_model(preset, _convsnn_params(4), "kernels")
        imgs = _images(np.random.default_rng(5), 6)
        res = en.from_convsnn(model, imgs)
        tr = model.trace(imgs)
        steps = [t for t in range(model.config.T) if tr["hidden_update"][t]]
        incremental = preset == "default"
        assert res["layers"]["conv"]["executed"] * 6 == _ref_conv_events(tr["input"])
        fc1 = res["layers"]["fc1"]["executed"] * 6
        assert fc1 == _ref_fc1_rows(tr["conv"], steps, incremental) * 1024
        spikes = int(tr["conv"][:, :steps[-1] + 1].sum())
        if incremental:              # incremental updates: fewer rows than spikes
            assert fc1 < spikes * 1024
        else:
            assert fc1 == spikes * 1024


# ----------------------------------------------------------------------------- MLP / TTFS

def test_mlp_counts_equal_recount():
    rng = np.random.default_rng(11)
    sizes = [20, 15, 12, 4]
    weights = [sparse_weights(rng, (o, i), 0.2) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(0, 0.3, o).astype(np.float32) for o in sizes[1:]]
    X = rng.random((7, 20))
    X[rng.random(X.shape) < 0.5] = 0.0
    X[0] = (X[0] > 0).astype(float)                          # one all-binary input: ACs
    res = en.from_mlp(weights, biases, X, executed=[5, 6, 7], batch_size=3)
    h = X
    n = len(X)
    hidden_nz = hidden_total = 0
    for i, (w, b) in enumerate(zip(weights, biases)):
        macs, acs, dense = ref_layer_counts("linear", w.T, h[:, None, :])
        lay = res["layers"][f"fc{i + 1}"]
        assert (lay["Effective_MACs"] * n, lay["Effective_ACs"] * n, lay["Dense"] * n) == \
            pytest.approx((macs, acs, dense), abs=1e-9)
        assert lay["executed"] * n == 5 + i
        if i < len(weights) - 1:
            h = np.maximum(h @ w.T.astype(np.float64) + b, 0)
            hidden_nz += np.count_nonzero(h)
            hidden_total += h.size
    assert res["layers"]["fc1"]["Effective_ACs"] > 0
    assert res["ActivationSparsity"] == pytest.approx(1 - hidden_nz / hidden_total)
    assert res["MembraneUpdates"] == 15 + 12
    assert res["Footprint"] == sum(w.nbytes + b.nbytes for w, b in zip(weights, biases))


# ----------------------------------------------------------------------------- CLI

def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        en.main(["x.h5", "--preset", "nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        en.main(["x.h5", "--samples", "0"])
    assert e.value.code == 2
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert en.main([str(bad)]) == 1
    assert "bad.h5" in capsys.readouterr().err
    import h5py
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["snnfast_format"] = "other-9"
    assert en.main([str(foreign)]) == 1
    assert "snnfast_format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        en.main([str(tmp_path)])
    assert e.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_cli_refuses_a_json_path_it_cannot_use_before_the_analysis(tmp_path, capsys):
    convsnn = pytest.importorskip("snnfast.convsnn")
    path = tmp_path / "m.h5"
    convsnn.ConvSNN(preset="default", backend="numpy").save(path)
    before = path.read_bytes()
    (tmp_path / "afile").write_text("x")
    for out, why in ((path, "is the input file"), (tmp_path / "." / "m.h5", "is the input file"),
                     (tmp_path, "is a directory"),
                     (tmp_path / "afile" / "o.json", "exists and is not a directory")):
        with pytest.raises(SystemExit) as e:
            en.main([str(path), "--samples", "2", "--json", str(out)])
        assert e.value.code == 2
        assert why in capsys.readouterr().err
    assert path.read_bytes() == before          # the model passed twice is not replaced


@pytest.mark.parametrize("preset,backend", [("seed", "kernels"), ("default", "kernels"),
                                            ("nir", "kernels"), ("seed", "numpy")])
def test_from_convsnn_equals_recount_from_trace(preset, backend):
    convsnn = pytest.importorskip("snnfast.convsnn")
    with _no_check():
        model = convsnn.ConvSNN(preset=preset, seed=2, backend=backend)
    if model.backend != backend:
        pytest.skip(f"{backend} backend not built")
    rng = np.random.default_rng(9)
    imgs = _images(rng, 3)
    ids = np.array([5, 0, 7])
    res = en.from_convsnn(model, imgs, sample_ids=ids, batch_size=2)
    tr = model.trace(imgs, sample_ids=ids)
    p, cfg = model.params, model.config
    steps = [t for t in range(cfg.T) if tr["hidden_update"][t]]
    x1 = _ref_fc1_inputs(tr["conv"], steps, cfg.drive == "cumulative")
    norm = cfg.T if cfg.rate_norm == "T" else len(steps)
    r_h = (tr["hidden"].sum(axis=1) / norm)[:, None, :]
    n = 3
    for name, kind, w, x, kw in [
            ("conv", "conv", p["conv_w"], tr["input"].reshape(n, cfg.T, 1, 28, 28), dict(stride=(2, 2))),
            ("fc1", "linear", p["W1"], x1, {}), ("fc2", "linear", p["W2"], r_h, {})]:
        macs, acs, dense = ref_layer_counts(kind, w, x, **kw)
        lay = res["layers"][name]
        assert (lay["Effective_MACs"] * n, lay["Effective_ACs"] * n, lay["Dense"] * n) == \
            pytest.approx((macs, acs, dense), rel=0, abs=1e-6), name
    # executed: the model's exact counters equal an independent recount of the events
    assert res["layers"]["conv"]["executed"] * n == _ref_conv_events(tr["input"])
    incremental = cfg.drive == "window" and cfg.hidden_period > 1
    assert res["layers"]["fc1"]["executed"] * n == _ref_fc1_rows(tr["conv"], steps, incremental) * 1024
    assert res["checks"]["match"] is True
    assert res["checks"]["replay_spike_mismatches"] == {"conv_lif": 0, "hidden": 0}


class _no_check:
    """Context manager that lets the NumPy-fallback warning through silently."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def test_from_ttfs_equals_recount():
    ttfs = pytest.importorskip("snnfast.ttfs")
    from snnfast.mlp import MLP
    rng = np.random.default_rng(21)
    sizes = [30, 16, 12, 5]
    weights = [sparse_weights(rng, (o, i), 0.2) * 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(0, 0.1, o).astype(np.float32) for o in sizes[1:]]
    X = rng.random((40, 30))
    X[rng.random(X.shape) < 0.5] = 0.0
    net = ttfs.convert(MLP(weights, biases), X)
    res = en.from_ttfs(net, X, batch_size=16)
    n = len(X)
    h = X
    events = []
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        macs, acs, dense = ref_layer_counts("linear", w.T, h[:, None, :])
        lay = res["layers"][f"fc{i + 1}"]
        assert (lay["Effective_MACs"] * n, lay["Effective_ACs"] * n, lay["Dense"] * n) == \
            pytest.approx((macs, acs, dense), rel=0, abs=1e-6)
        events.append(int(np.count_nonzero(h)) * w.shape[0])      # every spike x full fan-out
        assert lay["executed"] * n == events[-1]
        h = np.maximum(h @ w.T + b, 0) if i < len(weights) - 1 else None
    assert res["checks"]["match"] is True
    assert res["MembraneUpdates"] == 16 + 12


def _fake_test_set(monkeypatch, n=6):
    from snnfast import datasets
    imgs = _images(np.random.default_rng(1), n).reshape(n, 28, 28)
    monkeypatch.setattr(datasets, "load", lambda *a, **k: (imgs, np.zeros(n, np.uint8)))


def test_cli_convsnn_file(tmp_path, monkeypatch, capsys):
    convsnn = pytest.importorskip("snnfast.convsnn")
    with _no_check():
        model = convsnn.ConvSNN(preset="default", seed=0)
    path = tmp_path / "m.h5"
    model.save(path)
    _fake_test_set(monkeypatch)
    out = tmp_path / "e.json"
    assert en.main([str(path), "--samples", "4", "--json", str(out), "--preset", "loihi"]) == 0
    text = capsys.readouterr().out
    assert "convsnn-2" in text and "loihi" in text and "uJ/inference" in text
    assert "executed counts (kernels/simulator) == NumPy recount: True" in text
    back = json.loads(out.read_text())
    assert back["samples"] == 4 and back["energy"][0]["preset"] == "loihi"
    assert back["result"]["SynapticOperations"]["Dense"] == 10 * 57_600 + 5 * 2_359_296 + 10_240
    # the replay's disagreements are printed beside the number of spikes they are out of
    n = back["result"]["checks"]["traced_spikes"]
    assert n["conv_lif"] > 0 and f"of {n['conv_lif']:,d} conv_lif spikes" in text


def test_cli_ttfs_file(tmp_path, monkeypatch, capsys):
    ttfs = pytest.importorskip("snnfast.ttfs")
    from snnfast.mlp import make_mlp
    mlp = make_mlp(2, width=8, seed=0)
    X = np.random.default_rng(0).random((20, 784))
    path = tmp_path / "t.h5"
    ttfs.save(ttfs.convert(mlp, X), path)
    _fake_test_set(monkeypatch)
    assert en.main([str(path), "--samples", "5"]) == 0
    text = capsys.readouterr().out
    assert "ttfs-1" in text and "Effective_MACs" in text and "NumPy recount: True" in text


def test_from_convsnn_thread_count_independent():
    convsnn = pytest.importorskip("snnfast.convsnn")
    imgs = _images(np.random.default_rng(4), 4)
    out = []
    for threads in (1, 2):
        with _no_check():
            model = convsnn.ConvSNN(preset="default", seed=1, n_threads=threads)
        res = en.from_convsnn(model, imgs)
        out.append(json.dumps(res, sort_keys=True, default=str))
    assert out[0] == out[1]
