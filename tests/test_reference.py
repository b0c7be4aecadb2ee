"""The NumPy reference forward of any Network (snnfast.reference).

(a) on the presets' descriptions it equals the Conv-SNN NumPy backend's contract-order forward
    bit for bit (spikes of every layer, logits, counters);
(b) on random small architectures (hypothesis) it equals a second, naive implementation that
    loops over output pixels, taps and neurons in pure Python;
(c) bad weights and inputs are refused with a one-line message.
"""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import snnfast.convsnn_numpy as cnp
from snnfast import reference as R
from snnfast.convsnn import ConvSNN, _PARAM_KEYS
from snnfast.network import (IF, LIF, PRESET_NAMES, AvgPool2d, Conv2d, Direct, Flatten, Hybrid,
                             Linear, MaxPool2d, Network, RateReadout, SumPool2d, load_preset)
from snnfast.network.layers import ConfigError

f32 = np.float32


def _images(n, seed):
    rng = np.random.default_rng(seed)
    X = (rng.random((n, 784)) < 0.3) * rng.integers(0, 256, (n, 784))
    return X.astype(np.uint8)


def _weights(params):
    return {v: params[k] for k, v in _PARAM_KEYS.items()}


# ------------------------------------------------------------------------ (a) the presets
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_equal_the_numpy_backend_bit_for_bit(preset):
    net, _ = load_preset(preset)
    m = ConvSNN(preset, seed=3, backend="numpy")
    X, ids = _images(5, seed=1), np.arange(5) + 100
    with m._blas():       # one BLAS thread for the logits' matmul, in both
        r = R.forward(net, _weights(m.params), X.reshape(5, 1, 28, 28), seed=3, epoch=4,
                      sample_ids=ids, record=True)
        fn = cnp.forward(m.params, X, ids, 4, m.config, exact=True, record=True)
    np.testing.assert_array_equal(r["input"].reshape(5, 10, 784), fn["s_in"])
    np.testing.assert_array_equal(r["spikes"]["conv_lif"].reshape(5, 10, 2304), fn["z_c"])
    np.testing.assert_array_equal(r["spikes"]["hidden"], fn["z_h"])
    assert fn["z_h"].sum() > 100 and fn["z_c"].sum() > 1000       # the test sees spikes
    np.testing.assert_array_equal(r["rates"], fn["r_h"])
    np.testing.assert_array_equal(r["output"], fn["logits"])
    c = fn["counts"]
    for mine, theirs in [("input", "input_spikes"), ("conv_lif", "conv_spikes"),
                         ("hidden", "hidden_spikes"), ("conv", "conv_synaptic_events"),
                         ("fc1", "fc1_row_adds")]:
        np.testing.assert_array_equal(r["counts"][mine], c[theirs], err_msg=mine)
    assert r["n_updates"]["hidden"] == fn["n_updates"]
    assert r["dense_macs"] == {"fc2": 1024 * 10}


def test_default_preset_exercises_the_incremental_window():
    """The default's hidden drive is formed incrementally where that adds fewer rows: without
    it (every window summed directly) more rows are added, the spikes stay (almost) the same."""
    net, _ = load_preset("default")
    m = ConvSNN("default", seed=3, backend="numpy")
    X = _images(4, seed=2).reshape(4, 1, 28, 28)
    inc = R.forward(net, _weights(m.params), X, record=True)
    direct = R.forward(net, _weights(m.params), X, record=True, incremental=False)
    assert inc["counts"]["fc1"].sum() < direct["counts"]["fc1"].sum()
    # the two differ only in float32 rounding: a spike flips only at a potential within a few
    # ulp of the threshold
    assert np.mean(inc["spikes"]["hidden"] != direct["spikes"]["hidden"]) < 1e-3


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_agree_with_the_fast_numpy_path(preset):
    """ConvSNN(backend="numpy") sums with BLAS (another float32 order, CPU-dependent): the
    same network up to rounding, so spikes agree but for rare flips at the threshold."""
    net, _ = load_preset(preset)
    m = ConvSNN(preset, seed=3, backend="numpy")
    X = _images(4, seed=3)
    tr = m.trace(X)
    r = R.forward(net, _weights(m.params), X.reshape(4, 1, 28, 28), seed=3, record=True)
    np.testing.assert_array_equal(r["input"].reshape(4, 10, 784), tr["input"])
    for name, key in (("conv_lif", "conv"), ("hidden", "hidden")):
        assert np.mean(r["spikes"][name].reshape(tr[key].shape) != tr[key]) < 1e-3, name
    # the logits depend on the hidden spike counts only: each count that differs moves them
    # by its row of W2 / norm, plus the rounding of the 1024-term products
    W2 = np.abs(m.params["W2"]).astype(np.float64)
    dn = np.abs(r["spikes"]["hidden"].sum(1, dtype=np.int64) - tr["hidden"].sum(1, dtype=np.int64))
    norm = 10 if preset == "seed" else r["n_updates"]["hidden"]
    rounding = 2 * 1026 * np.finfo(f32).eps * (np.abs(r["rates"]) @ W2 + np.abs(r["output"]))
    assert np.all(np.abs(r["output"] - tr["logits"]) <= dn @ W2 / norm + rounding + 1e-30)


def test_reference_never_loads_compiled_modules():
    code = ("import sys, numpy as np\n"
            "from snnfast.network import load_preset\n"
            "from snnfast import reference as R\n"
            "net, _ = load_preset('default')\n"
            "w = {k: np.zeros(s, np.float32) for k, s in net.param_shapes().items()}\n"
            "R.forward(net, w, np.zeros((1, 784), np.uint8))\n"
            # snnfast._cpu is import snnfast's check of the CPU's features, not a kernel
            "mods = [m for m, v in sys.modules.items() if m.startswith('snnfast') and\n"
            "        m != 'snnfast._cpu' and\n"
            "        str(getattr(v, '__file__', '')).endswith(('.so', '.pyd'))]\n"
            "mods += [m for m in ('snnfast._convsnn_kernels', 'snnfast.convsnn')\n"
            "         if m in sys.modules]\n"
            "print(mods)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------ (b) naive loops
def naive_pool(kind, x, k, s):
    """Pool one (C, H, W) map with Python loops: window in (ky, kx) order."""
    (kh, kw), (sh, sw) = k, s
    C, H, W = x.shape
    OH, OW = (H - kh) // sh + 1, (W - kw) // sw + 1
    out = np.zeros((C, OH, OW), f32)
    for c in range(C):
        for oy in range(OH):
            for ox in range(OW):
                vals = [f32(x[c, oy * sh + ky, ox * sw + kx]) for ky in range(kh)
                        for kx in range(kw)]
                if kind == "MaxPool2d":
                    out[c, oy, ox] = max(vals)
                    continue
                acc = f32(0)
                for v in vals:
                    acc = f32(acc + v)
                out[c, oy, ox] = f32(acc / f32(kh * kw)) if kind == "AvgPool2d" else acc
    return out


def naive_conv(steps, w, k, s, p, acc0):
    """Drive of a Conv2d (no bias) over a list of (C, H, W) inputs: for each output pixel,
    the taps of nonzero inputs in (step, channel, ky, kx) order. Returns (drive, ops)."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    C, H, W = steps[0].shape if steps else (w.shape[1], 0, 0)
    O = w.shape[0]
    out = acc0.copy()
    ops = 0
    for o in range(O):
        for oy in range(out.shape[1]):
            for ox in range(out.shape[2]):
                acc = out[o, oy, ox]
                for x in steps:
                    for c in range(C):
                        for ky in range(kh):
                            for kx in range(kw):
                                y, xx = oy * sh - ph + ky, ox * sw - pw + kx
                                if 0 <= y < H and 0 <= xx < W and x[c, y, xx] != 0:
                                    acc = f32(acc + f32(f32(x[c, y, xx]) * w[o, c, ky, kx]))
                                    ops += 1
                out[o, oy, ox] = acc
    return out, ops


def naive_linear(steps, w, acc0):
    """Drive of a Linear (no bias) over a list of flat inputs, inputs in (step, index) order."""
    out = acc0.copy()
    ops = 0
    for o in range(w.shape[1]):
        acc = out[o]
        for x in steps:
            for i in range(len(x)):
                if x[i] != 0:
                    acc = f32(acc + f32(f32(x[i]) * w[i, o]))
                    ops += 1
        out[o] = acc
    return out, ops


def naive_forward(net, w, x):
    """Loops over samples, steps, stages and neurons; windows summed directly."""
    B, T = x.shape[:2]
    spikes = {net[n].name: np.zeros((B, T) + net.shapes[n], np.uint8) for n, _ in net.stages()}
    ops = {net[i].name: np.zeros((B, T), np.int64) for i in range(len(net))
           if net[i].kind == "synapse" and i < net.readout_index}
    for b in range(B):
        state = {}
        for t in range(T):
            src = x[b, t].astype(f32)
            for n, chain in net.stages():
                src = _naive_stage(net, w, n, chain, t, src, state, ops, b)
                spikes[net[n].name][b, t] = src
    last = net.stages()[-1][0]
    norm = T if net[net.readout_index].norm == "steps" else len(net[last].update_steps(T))
    rates = spikes[net[last].name].sum(axis=1).reshape(B, -1).astype(f32) / f32(norm)
    y = rates
    for i in range(net.readout_index + 1, len(net)):
        if isinstance(net[i], Linear):
            y = y.astype(np.float64) @ w[f"{net[i].name}.weight"].astype(np.float64)
            if net[i].bias:
                y = y + w[f"{net[i].name}.bias"]
    return spikes, ops, rates, y


def _naive_stage(net, w, n, chain, t, src, state, ops, b):
    neuron = net[n]
    st = state.setdefault(n, {"pending": [], "acc": None, "v": np.zeros(net.shapes[n], f32)})
    syn = next(i for i in chain if net[i].kind == "synapse")
    x = src
    for i in [i for i in chain if i < syn]:
        x = x.reshape(-1) if isinstance(net[i], Flatten) else \
            naive_pool(type(net[i]).__name__, x, net[i].kernel_size, net[i].stride)
    st["pending"].append(x)
    if t not in neuron.update_steps(net.T):
        return np.zeros(net.shapes[n], np.uint8)
    layer, wt = net[syn], w[f"{net[syn].name}.weight"]
    out_shape = net.shapes[syn]
    acc0 = st["acc"] if (neuron.drive == "cumulative" and st["acc"] is not None) else \
        np.zeros(out_shape, f32)
    if isinstance(layer, Conv2d):
        acc, k = naive_conv(st["pending"], wt, layer.kernel_size, layer.stride, layer.padding,
                            acc0)
    else:
        acc, k = naive_linear(st["pending"], wt, acc0)
    st["acc"], st["pending"] = acc, []
    ops[layer.name][b, t] = k
    cur = acc.copy()
    if layer.bias:
        bias = w[f"{layer.name}.bias"]
        cur = cur + (bias[:, None, None] if cur.ndim == 3 else bias)
    for i in [i for i in chain if i > syn]:
        cur = cur.reshape(-1) if isinstance(net[i], Flatten) else \
            naive_pool(type(net[i]).__name__, cur, net[i].kernel_size, net[i].stride)
    cur = cur.reshape(net.shapes[n])
    v, z = st["v"].reshape(-1), np.zeros(cur.size, np.uint8)
    for j, c in enumerate(cur.reshape(-1)):
        v[j] = f32(f32(v[j] * f32(neuron.beta)) + f32(c * f32(neuron.scale)))
        if v[j] > f32(neuron.threshold):
            z[j] = 1
            v[j] = {"zero": f32(0), "subtract": f32(v[j] - f32(neuron.threshold)),
                    "halve": f32(v[j] * f32(0.5))}[neuron.reset]
    return z.reshape(net.shapes[n])


@st.composite
def small_networks(draw):
    """A random valid network of 1-3 spiking stages on a tiny input, with its weights and a
    batch of inputs."""
    C, H, W = draw(st.integers(1, 2)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    T = draw(st.integers(1, 4))
    direct = draw(st.booleans())
    encoder = Direct(T=T) if direct else Hybrid(T=T, n_det=draw(st.integers(0, T)))
    layers, shape = [], (C, H, W)

    def add(layer):
        nonlocal shape
        layers.append(layer)
        shape = layer.output_shape(shape)

    def pool():
        if len(shape) == 3 and min(shape[1:]) >= 2 and draw(st.booleans()):
            kind = draw(st.sampled_from([SumPool2d, AvgPool2d, MaxPool2d]))
            add(kind(draw(st.integers(1, 2)), stride=draw(st.integers(1, 2))))

    for _ in range(draw(st.integers(1, 3))):
        pool()
        if len(shape) == 3 and draw(st.booleans()):
            pad = draw(st.integers(0, 1))
            kh = draw(st.integers(1, min(3, shape[1] + 2 * pad)))
            kw = draw(st.integers(1, min(3, shape[2] + 2 * pad)))
            add(Conv2d(out_channels=draw(st.integers(1, 3)), kernel_size=(kh, kw),
                       stride=draw(st.integers(1, 2)), padding=pad, bias=draw(st.booleans())))
            pool()
        else:
            if len(shape) == 3:
                add(Flatten())
            add(Linear(out_features=draw(st.integers(1, 6)), bias=draw(st.booleans())))
        period = draw(st.integers(1, 3))
        phase = draw(st.integers(0, min(period, T) - 1))
        kw = dict(threshold=draw(st.sampled_from([0.3, 0.8, 1.5])), period=period, phase=phase,
                  reset=draw(st.sampled_from(["zero", "subtract", "halve"])),
                  drive=draw(st.sampled_from(["window", "cumulative"])),
                  scale=draw(st.sampled_from([1.0, 0.5, 2.0])))
        add(IF(**kw) if draw(st.booleans()) else LIF(decay=draw(st.sampled_from([0.5, 0.9])),
                                                     **kw))
    add(RateReadout(norm=draw(st.sampled_from(["steps", "updates"]))))
    if len(shape) == 3:
        add(Flatten())
    add(Linear(out_features=draw(st.integers(1, 4)), bias=draw(st.booleans())))
    net = Network((C, H, W), layers, encoder=encoder)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    weights = {k: rng.standard_normal(s).astype(f32) for k, s in net.param_shapes().items()}
    B = draw(st.integers(1, 2))
    if direct:     # event frames: mostly zeros, some counts 1-2, some real values
        x = rng.integers(0, 3, (B, T, C, H, W)) * (rng.random((B, T, C, H, W)) < 0.5)
        x = np.where(rng.random(x.shape) < 0.1, rng.standard_normal(x.shape), x).astype(f32)
    else:
        x = rng.integers(0, 256, (B, C, H, W)).astype(np.uint8)
    return net, weights, x


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(small_networks())
def test_random_networks_equal_a_naive_loop_implementation(case):
    net, w, x = case
    B, T = len(x), net.T
    out = R.forward(net, w, x, record=True, incremental=False, seed=5, sample_ids=np.arange(B))
    # shapes and counters are consistent
    assert out["output"].shape == (B,) + net.output_shape and out["output"].dtype == f32
    assert out["input"].shape == (B, T) + net.input_shape
    for n, _ in net.stages():
        name = net[n].name
        z = out["spikes"][name]
        assert z.shape == (B, T) + net.shapes[n]
        np.testing.assert_array_equal(out["counts"][name], z.reshape(B, T, -1).sum(axis=2))
        off = [t for t in range(T) if t not in net[n].update_steps(T)]
        assert not z[:, off].any()                          # spikes only on update steps
    # the same spikes, drives' synaptic operations and rates as the naive loops, bit for bit
    spikes, ops, rates, y = naive_forward(net, w, out["input"])
    for name, z in spikes.items():
        np.testing.assert_array_equal(out["spikes"][name], z, err_msg=name)
    for name, k in ops.items():
        np.testing.assert_array_equal(out["counts"][name], k, err_msg=name)
    np.testing.assert_array_equal(out["rates"], rates)
    # the read-out Linear uses a BLAS matmul (any summation order): within float32 rounding
    # of an n-term dot product, |error| <= n eps sum |r w| (+ the bias's rounding)
    last = net[len(net) - 1]
    Wl = w[f"{last.name}.weight"].astype(np.float64)
    bound = (Wl.shape[0] + 2) * np.finfo(f32).eps * (np.abs(rates) @ np.abs(Wl) +
                                                     np.abs(y)) + 1e-30
    assert np.all(np.abs(out["output"] - y) <= bound)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_conv_pool_linear_equal_naive_loops(data):
    """The layer functions on one input, including real-valued inputs and negative zeros."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    C = data.draw(st.integers(1, 3))
    H, W = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    x = (rng.standard_normal((C, H, W)) * (rng.random((C, H, W)) < 0.6)).astype(f32)
    pad = data.draw(st.integers(0, 2))
    k = (data.draw(st.integers(1, H + 2 * pad)), data.draw(st.integers(1, W + 2 * pad)))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    conv = Conv2d(C, data.draw(st.integers(1, 3)), k, s, pad)
    wt = rng.standard_normal(conv.param_shapes((C, H, W))["weight"]).astype(f32)
    b = rng.standard_normal(conv.out_channels).astype(f32)
    got, ops = R.synapse(conv, wt, b, x)
    out_shape = conv.output_shape((C, H, W))
    # shape inference against a count of the window positions that fit the padded input
    assert out_shape == (conv.out_channels,
                         sum(1 for o in range(H + 2 * pad) if o * s[0] + k[0] <= H + 2 * pad),
                         sum(1 for o in range(W + 2 * pad) if o * s[1] + k[1] <= W + 2 * pad))
    want, n = naive_conv([x], wt, k, s, (pad, pad), np.zeros(out_shape, f32))
    np.testing.assert_array_equal(got.reshape(out_shape), want + b[:, None, None])
    assert ops == n
    flat = x.reshape(-1)
    lin = Linear(out_features=3)
    wl = rng.standard_normal((flat.size, 3)).astype(f32)
    got, ops = R.synapse(lin, wl, b[:1].repeat(3), flat)
    want, n = naive_linear([flat], wl, np.zeros(3, f32))
    np.testing.assert_array_equal(got, want + b[0])
    assert ops == n
    pk = (data.draw(st.integers(1, H)), data.draw(st.integers(1, W)))
    ps = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    assert MaxPool2d(pk, ps).output_shape((C, H, W)) == \
        (C, sum(1 for o in range(H) if o * ps[0] + pk[0] <= H),
         sum(1 for o in range(W) if o * ps[1] + pk[1] <= W))
    for kind in ("SumPool2d", "AvgPool2d", "MaxPool2d"):
        np.testing.assert_array_equal(R.pool2d(kind, x[None], pk, ps)[0],
                                      naive_pool(kind, x, pk, ps), err_msg=kind)


def test_hybrid_encoder_equals_the_backend_on_any_image_size():
    net = Network((3, 5, 4), [Flatten(), Linear(out_features=2), LIF(), RateReadout()],
                  encoder=Hybrid(T=7, n_det=3))
    X = np.random.default_rng(0).integers(0, 256, (3, 3, 5, 4)).astype(np.uint8)
    got = R.encode(net, X, seed=11, epoch=2, sample_ids=np.array([5, 0, 9]))
    want = cnp.input_spikes(X.reshape(3, -1), np.array([5, 0, 9]), 11, 2, T=7, n_det=3)
    np.testing.assert_array_equal(got.reshape(3, 7, -1), want)
    assert got.shape == (3, 7, 3, 5, 4) and 0 < got.mean() < 1


# ------------------------------------------------------------------------ (c) bad input
def _tiny():
    return Network((1, 4, 4), [Conv2d(out_channels=2, kernel_size=3), LIF(), RateReadout(),
                               Flatten(), Linear(out_features=2)], name="tiny")


def _tiny_weights():
    return {k: np.ones(s, f32) for k, s in _tiny().param_shapes().items()}


@pytest.mark.parametrize("weights, inputs, exc, match", [
    ({}, np.zeros((1, 16), np.uint8), ValueError, r"missing weight 'conv2d0\.weight'"),
    (dict(_tiny_weights(), extra=np.ones(1)), np.zeros((1, 16), np.uint8), ValueError,
     "does not: extra"),
    (dict(_tiny_weights(), **{"linear4.weight": np.ones((8, 3))}), np.zeros((1, 16), np.uint8),
     ValueError, r"weight linear4\.weight must have shape \(8, 2\), got \(8, 3\)"),
    (dict(_tiny_weights(), **{"conv2d0.bias": np.array([1, np.nan])}),
     np.zeros((1, 16), np.uint8), ValueError, "weight conv2d0.bias contains NaN"),
    (dict(_tiny_weights(), **{"conv2d0.bias": np.array(["a", "b"])}),
     np.zeros((1, 16), np.uint8), ValueError, "weight conv2d0.bias must hold real numbers"),
    (_tiny_weights(), np.zeros((1, 15), np.uint8), ValueError,
     r"inputs must have shape \(N, 1, 4, 4\) or \(N, 16\)"),
    (_tiny_weights(), np.zeros((1, 16), np.float32), ValueError, "must be uint8 images"),
    (_tiny_weights(), [[0] * 16], TypeError, "numpy.ndarray"),
])
def test_bad_weights_and_inputs_are_refused(weights, inputs, exc, match):
    with pytest.raises(exc, match=match):
        R.forward(_tiny(), weights, inputs)


def test_direct_inputs_are_checked():
    net = Network((2, 3, 3), [Flatten(), Linear(out_features=2), IF(), RateReadout()],
                  encoder=Direct(T=2))
    w = {k: np.ones(s, f32) for k, s in net.param_shapes().items()}
    with pytest.raises(ValueError, match=r"shape \(N, 2, 2, 3, 3\) for the Direct encoder"):
        R.forward(net, w, np.zeros((1, 3, 2, 3, 3), f32))
    with pytest.raises(ValueError, match="finite"):
        R.forward(net, w, np.full((1, 2, 2, 3, 3), np.inf, f32))
    out = R.forward(net, w, np.ones((1, 2, 2, 3, 3), f32))
    # IF, threshold 0.8, drive 18 + 1 per step: a spike on both steps, rates 2 / 2 updates
    np.testing.assert_array_equal(out["output"], [[1.0, 1.0]])
    assert out["counts"]["linear1"].tolist() == [[36, 36]]


def test_a_wrong_network_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"^layer 1 \('lif1', LIF\): type needs a Conv2d"):
        Network((1, 4, 4), [Flatten(), LIF(), RateReadout()])
