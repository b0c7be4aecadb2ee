"""The compiled inference engine (snnfast.engine) against the NumPy reference (snnfast.reference).

(a) random architectures (hypothesis): the engine's spikes of every layer, counters, rates and
    outputs equal the reference's bit for bit, and 1 and 2 threads give the same bits;
(b) the three presets' descriptions equal the reference (including the incremental window of
    the default preset's hidden layer);
(c) bad inputs and weights are refused with a one-line message.
"""
import importlib
import os
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snnfast import engine as E
from snnfast import reference as R
from snnfast.network import (IF, LIF, PRESET_NAMES, AvgPool2d, Conv2d, Direct, Flatten, Hybrid,
                             Linear, MaxPool2d, Network, RateReadout, SumPool2d, load_preset)

sys.path.insert(0, os.path.dirname(__file__))  # the shared cases sit beside this file
from _cases import _preset_case  # noqa: E402

f32 = np.float32
_F = importlib.import_module("snnfast.engine.forward")


def column_blocks(width):
    """Context: Linear stages after the first run in column blocks of ``width`` (the last
    one narrower), whatever the cache size would choose."""
    return mock.patch.object(_F, "_block_width", lambda n_in, n_out: width if n_out > width
                             else 0)


def assert_same(got, want):
    """Every returned array bit for bit, and the same keys and scalars."""
    assert set(got) == set(want)
    for key in ("output", "rates", "input"):
        if key in want:
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("counts", "spikes", "v"):
        if key in want:
            assert list(got[key]) == list(want[key])
            for name, a in want[key].items():
                assert got[key][name].dtype == a.dtype, (key, name)
                np.testing.assert_array_equal(got[key][name], a, err_msg=f"{key} {name}")
    assert got["dense_macs"] == want["dense_macs"]
    assert got["n_updates"] == want["n_updates"]


# ------------------------------------------------------------------------ (a) random networks
@st.composite
def networks(draw):
    """A random valid network of 1-3 stages (conv/pool/flatten/linear, LIF/IF, every reset,
    period, phase and drive) on an odd-sized input, with weights and a batch of inputs."""
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    T = draw(st.integers(1, 7))
    direct = draw(st.booleans())
    encoder = Direct(T=T) if direct else Hybrid(T=T, n_det=draw(st.integers(0, T + 1)))
    layers, shape = [], (C, H, W)

    def add(layer):
        nonlocal shape
        layers.append(layer)
        shape = layer.output_shape(shape)

    def pool():
        if len(shape) == 3 and min(shape[1:]) >= 2 and draw(st.integers(0, 2)) == 0:
            kind = draw(st.sampled_from([SumPool2d, AvgPool2d, MaxPool2d]))
            k = (draw(st.integers(1, min(3, shape[1]))), draw(st.integers(1, min(3, shape[2]))))
            add(kind(k, stride=draw(st.integers(1, 2))))

    for _ in range(draw(st.integers(1, 3))):
        pool()
        if len(shape) == 3 and draw(st.integers(0, 2)) > 0:
            pad = draw(st.integers(0, 2))
            kh = draw(st.integers(1, min(4, shape[1] + 2 * pad)))
            kw = draw(st.integers(1, min(4, shape[2] + 2 * pad)))
            add(Conv2d(out_channels=draw(st.integers(1, 5)), kernel_size=(kh, kw),
                       stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                       padding=(pad, draw(st.integers(0, 2))) if kw <= shape[2] else pad,
                       bias=draw(st.booleans())))
            pool()
        else:
            if len(shape) == 3:
                add(Flatten())
            add(Linear(out_features=draw(st.integers(1, 9)), bias=draw(st.booleans())))
        period = draw(st.sampled_from([1, 2, 2, 3]))
        phase = draw(st.integers(0, min(period, T) - 1))
        opts = dict(threshold=draw(st.sampled_from([0.3, 0.8, 1.5])), period=period,
                    phase=phase, reset=draw(st.sampled_from(["zero", "subtract", "halve"])),
                    drive=draw(st.sampled_from(["window", "window", "cumulative"])),
                    scale=draw(st.sampled_from([1.0, 0.5, 0.3, 1.7])))
        add(IF(**opts) if draw(st.booleans()) else
            LIF(decay=draw(st.sampled_from([0.5, 0.9, 0.37, 1.0])), **opts))
    add(RateReadout(norm=draw(st.sampled_from(["steps", "updates"]))))
    if len(shape) == 3:
        add(Flatten())
    for _ in range(draw(st.integers(1, 2))):
        add(Linear(out_features=draw(st.integers(1, 4)), bias=draw(st.booleans())))
    net = Network((C, H, W), layers, encoder=encoder)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    weights = {k: rng.standard_normal(s).astype(f32) for k, s in net.param_shapes().items()}
    B = draw(st.integers(1, 4))
    if direct:     # event frames: mostly zeros, some counts 1-2, some real values, -0.0
        x = rng.integers(0, 3, (B, T, C, H, W)) * (rng.random((B, T, C, H, W)) < 0.5)
        x = np.where(rng.random(x.shape) < 0.1, rng.standard_normal(x.shape), x).astype(f32)
        x[rng.random(x.shape) < 0.05] = -0.0
    else:
        x = rng.integers(0, 256, (B, C, H, W)).astype(np.uint8)
    return net, weights, x


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks(), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1))
def test_random_networks_equal_the_reference_bit_for_bit(case, seed, epoch):
    net, w, x = case
    ids = np.arange(len(x)) * 7 + 3
    want = R.forward(net, w, x, seed=seed, epoch=epoch, sample_ids=ids, record=True)
    one = E.forward(net, w, x, seed=seed, epoch=epoch, sample_ids=ids, record=True,
                    n_threads=1)
    assert_same(one, want)
    two = E.forward(net, w, x, seed=seed, epoch=epoch, sample_ids=ids, record=True,
                    n_threads=2)
    assert_same(two, want)
    with column_blocks(2):
        assert_same(E.forward(net, w, x, seed=seed, epoch=epoch, sample_ids=ids, record=True,
                              n_threads=2), want)
    assert_same(E.forward(net, w, x, seed=seed, epoch=epoch, sample_ids=ids),
                {k: v for k, v in want.items() if k not in ("input", "spikes", "v")})


@pytest.mark.parametrize("pool", [SumPool2d, AvgPool2d])
@pytest.mark.parametrize("H, W", [(8, 6), (9, 7), (6, 9)])
def test_two_by_two_pools_equal_the_reference_bit_for_bit(pool, H, W):
    # the engine's unrolled 2 x 2 / stride 2 pool (H even) and its general loop (H odd), on
    # the source (real values, -0.0) and on a convolution's current
    net = Network((2, H, W), [pool(2), Conv2d(out_channels=3, kernel_size=3, padding=1),
                              pool(2), LIF(reset="subtract"), RateReadout(), Flatten(),
                              Linear(out_features=4)], encoder=Direct(T=3))
    rng = np.random.default_rng(H * W)
    w = {k: rng.standard_normal(s).astype(f32) for k, s in net.param_shapes().items()}
    x = (rng.standard_normal((3, 3, 2, H, W)) * (rng.random((3, 3, 2, H, W)) < 0.6)).astype(f32)
    x[rng.random(x.shape) < 0.1] = -0.0
    want = R.forward(net, w, x, record=True)
    assert want["spikes"]["lif3"].any() and not want["spikes"]["lif3"].all()
    assert_same(E.forward(net, w, x, record=True, n_threads=2), want)


def test_batch_split_and_compiled_reuse_give_the_same_bits():
    net = Network((2, 9, 7), [Conv2d(out_channels=4, kernel_size=3, padding=1), LIF(),
                              SumPool2d(2), Flatten(), Linear(out_features=12),
                              LIF(reset="subtract", period=2, phase=1), RateReadout(),
                              Linear(out_features=3)], encoder=Hybrid(T=8, n_det=3))
    rng = np.random.default_rng(1)
    w = {k: rng.standard_normal(s).astype(f32) for k, s in net.param_shapes().items()}
    x = rng.integers(0, 256, (9, 2, 9, 7)).astype(np.uint8)
    model = E.CompiledNetwork(net, w)
    whole = model.forward(x, seed=5, epoch=2, sample_ids=np.arange(9))
    parts = [model.forward(x[i:i + 4], seed=5, epoch=2, sample_ids=np.arange(i, min(i + 4, 9)))
             for i in range(0, 9, 4)]
    for name, c in whole["counts"].items():
        np.testing.assert_array_equal(c, np.concatenate([p["counts"][name] for p in parts]))
    np.testing.assert_array_equal(whole["rates"], np.concatenate([p["rates"] for p in parts]))
    assert whole["counts"]["lif1"].sum() > 0 and whole["counts"]["lif5"].sum() > 0


def test_an_empty_batch_gives_empty_outputs():
    net, _ = load_preset("nir")
    w = {k: np.zeros(s, f32) for k, s in net.param_shapes().items()}
    out = E.forward(net, w, np.zeros((0, 784), np.uint8), record=True)
    assert out["output"].shape == (0, 10) and out["counts"]["fc1"].shape == (0, 10)
    assert out["spikes"]["hidden"].shape == (0, 10, 1024)


# ------------------------------------------------------------------------ (b) the presets


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_equal_the_reference_bit_for_bit(preset):
    net, w, X = _preset_case(preset)
    ids = np.arange(len(X)) + 1000
    want = R.forward(net, w, X, seed=3, epoch=4, sample_ids=ids, record=True)
    got = E.forward(net, w, X, seed=3, epoch=4, sample_ids=ids, record=True, n_threads=2)
    assert_same(got, want)
    for width in (0, 100):       # fc1 whole, and in blocks of 100 columns (the last 24)
        with column_blocks(width):
            model = E.CompiledNetwork(net, w)
            assert model._stages[1]["block"] == width
            assert_same(model.forward(X, seed=3, epoch=4, sample_ids=ids, record=True,
                                      n_threads=2), want)
    assert want["counts"]["hidden"].sum() > 100 and want["counts"]["conv_lif"].sum() > 1000
    if preset == "default":
        # the hidden drive took the incremental form somewhere (fewer row additions than
        # the direct sums), and the engine followed it
        direct = R.forward(net, w, X, seed=3, epoch=4, sample_ids=ids, incremental=False)
        assert got["counts"]["fc1"].sum() < direct["counts"]["fc1"].sum()


# ------------------------------------------------------------------------ (c) bad input
def _tiny(encoder=None):
    return Network((1, 4, 4), [Conv2d(out_channels=2, kernel_size=3), LIF(), RateReadout(),
                               Flatten(), Linear(out_features=2)], encoder=encoder)


def _tiny_weights():
    return {k: np.ones(s, f32) for k, s in _tiny().param_shapes().items()}


_IMG = np.zeros((2, 16), np.uint8)


@pytest.mark.parametrize("weights, inputs, kwargs, exc, match", [
    ({}, _IMG, {}, ValueError, r"missing weight 'conv2d0\.weight'"),
    (dict(_tiny_weights(), extra=np.ones(1)), _IMG, {}, ValueError, "does not: extra"),
    (dict(_tiny_weights(), **{"linear4.weight": np.ones((8, 3))}), _IMG, {}, ValueError,
     r"weight linear4\.weight must have shape \(8, 2\), got \(8, 3\)"),
    (dict(_tiny_weights(), **{"conv2d0.bias": np.array([1, np.inf])}), _IMG, {}, ValueError,
     "weight conv2d0.bias contains NaN or infinite"),
    ([1, 2], _IMG, {}, TypeError, "weights must be a dict"),
    (_tiny_weights(), np.zeros((2, 15), np.uint8), {}, ValueError,
     r"inputs must have shape \(N, 1, 4, 4\) or \(N, 16\), got \(2, 15\)"),
    (_tiny_weights(), np.zeros((2, 16), np.float32), {}, ValueError,
     "must be uint8 images for the Hybrid encoder, got float32"),
    (_tiny_weights(), np.zeros((2, 32), np.uint8)[:, ::2], {}, ValueError, "C-contiguous"),
    (_tiny_weights(), [[0] * 16], {}, TypeError, "numpy.ndarray"),
    (_tiny_weights(), _IMG, dict(sample_ids=[0]), ValueError, "sample_ids must be 2 integers"),
    (_tiny_weights(), _IMG, dict(sample_ids=[0, -1]), ValueError, ">= 0"),
    (_tiny_weights(), _IMG, dict(seed=-1), ValueError, r"seed must be an integer in \[0, 2\*\*64"),
    (_tiny_weights(), _IMG, dict(epoch=2 ** 64), ValueError, "epoch must be"),
    (_tiny_weights(), _IMG, dict(n_threads=0), ValueError, "n_threads=0"),
])
def test_bad_weights_and_inputs_are_refused(weights, inputs, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        E.forward(_tiny(), weights, inputs, **kwargs)


def test_bad_direct_frames_are_refused():
    net = _tiny(Direct(T=3))
    w = _tiny_weights()
    for x, match in [(np.zeros((2, 3, 1, 4, 4)), "must be float32 frames .* got float64"),
                     (np.zeros((2, 2, 1, 4, 4), f32), r"shape \(N, 3, 1, 4, 4\) for the Direct"),
                     (np.zeros((2, 3, 1, 4, 8), f32)[..., ::2], "C-contiguous"),
                     (np.full((2, 3, 1, 4, 4), np.nan, f32), "finite")]:
        with pytest.raises(ValueError, match=match):
            E.forward(net, w, x)
    out = E.forward(net, w, np.ones((2, 3, 1, 4, 4), f32))     # and a good one runs
    assert out["counts"]["conv2d0"].tolist() == [[2 * 36] * 3] * 2


def test_engine_module_runs_compiled_code():
    from snnfast import _engine               # the extension exists and is what runs
    assert callable(_engine.run)
