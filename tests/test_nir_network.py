"""NIR export of any Network (snnfast.nir_export.to_nir(network, weights)): the exported graph
run by snnfast.nir.run gives the engine's spikes bit for bit when NIR can express the
description; otherwise a NIRExportWarning lists what it cannot."""
import warnings

import numpy as np
import pytest

from snnfast import engine, nir as snir
from snnfast.network import (IF, LIF, AvgPool2d, Conv2d, Direct, Flatten, Hybrid, Linear,
                             MaxPool2d, Network, RateReadout, SumPool2d, load_preset)
from snnfast.nir_export import NIRExportWarning, network_inexpressible, to_nir

f32 = np.float32
DT = 1e-3


def _deep(pool=SumPool2d, neuron2=LIF, encoder=None):
    """conv -> LIF -> pool -> conv -> LIF -> pool -> flatten -> linear -> LIF -> readout ->
    linear."""
    return Network((2, 14, 12), [
        Conv2d(out_channels=4, kernel_size=3, padding=1, name="c1"),
        LIF(decay=0.9, threshold=0.6, name="l1"), pool(2, name="p1"),
        Conv2d(out_channels=6, kernel_size=3, stride=1, name="c2"),
        neuron2(threshold=0.7, name="l2"), pool(2, name="p2"),
        Flatten(name="fl"), Linear(out_features=12, name="fc1"),
        LIF(decay=0.8, threshold=0.5, scale=1.0, name="l3"),
        RateReadout(name="ro"), Linear(out_features=5, name="fc2")],
        encoder=encoder or Hybrid(T=8, n_det=3), name="deep")


def _weights(net, seed):
    rng = np.random.default_rng(seed)
    w = {}
    for k, s in net.param_shapes().items():
        fan_in = int(np.prod(s[1:])) if len(s) == 4 else s[0]
        w[k] = (rng.normal(0.15, 1.0, s) / np.sqrt(fan_in) * 2.0).astype(f32)
    return w


def _images(net, n, seed):
    rng = np.random.default_rng(seed)
    shape = (n,) + net.input_shape
    return (rng.integers(0, 256, shape) * (rng.random(shape) < 0.5)).astype(np.uint8)


def _compare(net, w, X, tmp_path=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRExportWarning)      # expressible: no warning
        path = None if tmp_path is None else tmp_path / "net.nir"
        graph = to_nir(net, w, path=path, dt=DT)
    assert graph.metadata["exact"] and graph.metadata["inexpressible"] == {}
    want = engine.forward(net, w, X, record=True)
    x = want["input"].astype(f32)              # the encoder's output: the graph's input
    spiking = net.spiking_layers()
    outs, tr = snir.run(path if path is not None else graph, x, dt=DT, trace=spiking)
    for name in spiking:
        got = tr[name]["z"].astype(np.uint8)
        assert np.array_equal(got, want["spikes"][name]), name
        np.testing.assert_array_equal(tr[name]["v"][:, -1], want["v"][name])
    assert sum(int(want["spikes"][k].sum()) for k in spiking[1:]) > 20  # deep layers spike
    # the read-out integrates fc2 of each step's spikes: the output up to float32 rounding
    np.testing.assert_allclose(outs["output"][:, -1], want["output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_deep_cnn_graph_gives_the_engines_spikes(seed, tmp_path):
    net = _deep()
    _compare(net, _weights(net, seed), _images(net, 6, seed + 5), tmp_path)


def test_avg_and_max_pools_and_if_layers():
    for pool, neuron in ((AvgPool2d, IF), (MaxPool2d, LIF)):
        net = _deep(pool, neuron)
        _compare(net, _weights(net, 2), _images(net, 5, 3))


def test_direct_encoder_frames():
    net = _deep(encoder=Direct(T=5))
    rng = np.random.default_rng(9)
    X = (rng.random((4, 5) + net.input_shape) < 0.3).astype(f32) * 2.0
    _compare(net, _weights(net, 4), X)


def test_inexpressible_features_warn_and_are_listed():
    net, _ = load_preset("default")
    lost = network_inexpressible(net)
    assert set(lost) == {"hidden.reset", "hidden.period"}
    rng = np.random.default_rng(0)
    w = {k: (rng.standard_normal(s) * 0.01).astype(f32) for k, s in net.param_shapes().items()}
    with pytest.warns(NIRExportWarning, match="hidden.period"):
        g = to_nir(net, w, dt=DT)
    assert g.metadata["inexpressible"] == lost and not g.metadata["exact"]
    # the graph updates the hidden layer on all T steps: its rates are counts / T
    assert np.all(g.nodes["readout"].r == 1.0 / (net.T * DT))
    assert list(g.nodes) == ["input", "conv", "conv_lif", "flatten", "fc1", "hidden", "fc2",
                             "readout", "output"]
    nir_net, _ = load_preset("nir")
    assert network_inexpressible(nir_net) == {}
    seed_net, _ = load_preset("seed")
    assert "hidden.drive" in network_inexpressible(seed_net)


def test_max_pool_of_currents_is_refused_and_bad_dt():
    net = Network((1, 6, 6), [Conv2d(out_channels=2, kernel_size=3), MaxPool2d(2), LIF(),
                              RateReadout()])
    w = _weights(net, 0)
    with pytest.raises(ValueError, match="maxpool2d1.*NIR has no max pool"):
        to_nir(net, w, dt=DT)
    net = _deep()
    for dt in (0.0, -1.0, float("nan"), 1e-320):
        with pytest.raises(ValueError, match="dt"):
            to_nir(net, _weights(net, 0), dt=dt)


def test_import_round_trip_and_edited_graphs(tmp_path):
    import nir
    from snnfast.nir_export import network_from_nir
    net = _deep(MaxPool2d, IF)
    w = _weights(net, 5)
    path = tmp_path / "deep.nir"
    to_nir(net, w, path=path, dt=DT)
    net2, w2 = network_from_nir(path)
    assert net2 == net and sorted(w2) == sorted(w)
    assert all(np.array_equal(w2[k], w[k]) for k in w)
    g = nir.read(path)
    g.nodes["c2"].weight = g.nodes["c2"].weight * 2          # weights may be edited
    assert np.array_equal(network_from_nir(g)[1]["c2.weight"], (w["c2.weight"] * 2))
    g.nodes["l3"].v_threshold = g.nodes["l3"].v_threshold + 0.1
    with pytest.raises(ValueError, match="node 'l3' \\(LIF\\): v_threshold differs"):
        network_from_nir(g)
    g = nir.read(path)
    g.metadata["format"] = "other"
    with pytest.raises(ValueError, match="not a graph written by network_to_nir"):
        network_from_nir(g)


def test_fold_gain_and_peers_for_any_network(tmp_path):
    """``fold_gain``: every LIF node gets r = 1 and its gain (here 4 and 1, powers of two:
    exact) moves into the synaptic layer feeding it, through a pool; the graph then gives the
    engine's spikes bit for bit. ``peers``: the same spikes, no I node (the mean of the
    per-step output is the read-out's value), Flattens counted from the end."""
    from snnfast.nir_export import network_from_nir
    net = Network((2, 14, 12), [
        Conv2d(out_channels=4, kernel_size=3, padding=1, name="c1"), AvgPool2d(2, name="p1"),
        LIF(decay=0.75, threshold=0.3, name="l1"),
        Conv2d(out_channels=6, kernel_size=3, name="c2"),
        LIF(decay=0.5, threshold=0.4, scale=0.5, name="l2"), MaxPool2d(2, name="p2"),
        Flatten(name="fl"), Linear(out_features=12, name="fc1"), IF(threshold=0.5, name="l3"),
        RateReadout(name="ro"), Linear(out_features=5, name="fc2")],
        encoder=Hybrid(T=8, n_det=3), name="fold")
    w = _weights(net, 4)
    X = _images(net, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRExportWarning)
        fold = to_nir(net, w, path=tmp_path / "fold.nir", dt=DT, fold_gain=True)
        peers = to_nir(net, w, dt=DT, peers=True)
    assert fold.metadata["exact"] and fold.metadata["fold_gain"] and not fold.metadata["peers"]
    assert np.all(fold.nodes["l1"].r == 1) and np.all(fold.nodes["l2"].r == 1)
    assert np.array_equal(fold.nodes["c1"].weight, w["c1.weight"] * f32(4))
    assert np.array_equal(fold.nodes["c1"].bias, w["c1.bias"] * f32(4))
    assert np.array_equal(fold.nodes["c2"].weight, w["c2.weight"])        # 0.5 / (1 - 0.5)
    assert np.array_equal(fold.nodes["fc1"].weight, w["fc1.weight"].T)    # an IF keeps its r
    want = engine.forward(net, w, X, record=True)
    x = want["input"].astype(f32)
    spiking = net.spiking_layers()
    out_f, tr_f = snir.run(fold, x, dt=DT, trace=spiking)
    out_p, tr_p = snir.run(peers, x, dt=DT, trace=spiking)
    for name in spiking:
        assert want["spikes"][name].any(), name
        assert np.array_equal(tr_f[name]["z"].astype(np.uint8), want["spikes"][name]), name
        assert np.array_equal(tr_p[name]["z"], tr_f[name]["z"]), name
    assert "ro" not in peers.nodes and peers.metadata["peers"]
    assert (int(peers.nodes["fl"].start_dim), int(peers.nodes["fl"].end_dim)) == (-3, -1)
    np.testing.assert_allclose(out_p["output"].mean(axis=1), out_f["output"][:, -1],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fold_gain or peers"):
        network_from_nir(tmp_path / "fold.nir")

