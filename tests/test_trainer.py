"""Training any network description: the rate surrogate gradient (against finite differences
of the smooth network, and the mean currents against the spiking forward pass), thread
independence, resume == uninterrupted, and ``python -m snnfast.train --config``."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snnfast import train as train_cli
from snnfast.network import (IF, LIF, AvgPool2d, Conv2d, Direct, Flatten, Hybrid, Linear,
                             MaxPool2d, Network, RateReadout, SumPool2d)
from snnfast.train import surrogate as sg
from snnfast.train.trainer import SNN, training_config

POOLS = {"sum": SumPool2d, "avg": AvgPool2d, "max": MaxPool2d}


def _random_net(draw):
    """A small random conv -> [pool] -> LIF -> [pool] -> conv -> LIF -> Flatten -> Linear ->
    LIF -> readout -> Linear network (every kind of layer and LIF option)."""
    C = draw(st.integers(1, 2))
    H, W = draw(st.integers(5, 8)), draw(st.integers(5, 8))
    T = draw(st.integers(2, 5))
    lif = st.builds(dict, period=st.integers(1, 2), drive=st.sampled_from(["window",
                                                                          "cumulative"]),
                    scale=st.floats(0.5, 1.5))

    def neuron(name):
        o = draw(lif)
        o["phase"] = draw(st.integers(0, o["period"] - 1))
        return LIF(name=name, **o)
    layers = [Conv2d(out_channels=draw(st.integers(1, 3)), kernel_size=draw(st.integers(1, 3)),
                     stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1)),
                     name="c1")]
    post = draw(st.sampled_from([None, "sum", "avg", "max"]))
    if post:
        layers.append(POOLS[post](kernel_size=2, stride=1))
    layers.append(neuron("l1"))
    pre = draw(st.sampled_from([None, "sum", "avg", "max"]))
    if pre:
        layers.append(POOLS[pre](kernel_size=2, stride=draw(st.integers(1, 2))))
    layers += [Conv2d(out_channels=draw(st.integers(1, 3)), kernel_size=2, name="c2",
                      bias=draw(st.booleans())),
               neuron("l2"), Flatten(), Linear(out_features=draw(st.integers(2, 5)), name="f1"),
               neuron("l3"), RateReadout(norm=draw(st.sampled_from(["steps", "updates"]))),
               Linear(out_features=3, name="f2")]
    try:
        return Network((C, H, W), layers, encoder=Hybrid(T=T, n_det=1))
    except ValueError:                 # shapes that do not chain (a kernel larger than its input)
        return None


def _smooth_loss(net, stages, w, e0, y):
    z = sg.smooth_forward(net, stages, w, e0)["output"]
    z = z - z.max(axis=1, keepdims=True)
    return -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))


# derandomized: a random draw can put the two largest inputs of a max-pool window closer than
# the finite-difference step moves them (a fresh-clone run drew a gap of 2.7e-8 with h = 1e-6;
# that case passes with sum or no pooling), and there a central difference straddles the switch
# of the maximum and is no reference; the fixed draws have no such near-tie
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_gradient_equals_finite_differences_of_the_smooth_network(data):
    net = _random_net(data.draw)
    if net is None:
        return
    seed = data.draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    stages = sg.plan(net, {"center": 0.3, "slope": 3.0})
    w = {k: rng.standard_normal(s) * 0.8 for k, s in net.param_shapes().items()}   # float64
    B = 3
    e0 = rng.random((B, int(np.prod(net.input_shape))))
    y = rng.integers(0, 3, B)
    fw = sg.smooth_forward(net, stages, w, e0)
    _, _, dout = sg.cross_entropy_grad(fw["output"], y)
    g = sg.backward(net, stages, w, fw, dout)
    assert set(g) == set(w)
    h = 1e-6
    for k in w:
        num = np.zeros_like(w[k])
        for i in np.ndindex(w[k].shape):
            old = w[k][i]
            w[k][i] = old + h
            up = _smooth_loss(net, stages, w, e0, y)
            w[k][i] = old - h
            down = _smooth_loss(net, stages, w, e0, y)
            w[k][i] = old
            num[i] = (up - down) / (2 * h)
        # max pools: a finite difference across a tie is one-sided; the draws make ties
        # (of real-valued rates and currents) improbable
        np.testing.assert_allclose(g[k], num, rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("drive,period,phase,post", [
    ("window", 1, 0, None), ("window", 2, 1, "sum"), ("window", 3, 0, "avg"),
    ("cumulative", 2, 0, None), ("cumulative", 1, 0, "sum")])
def test_mean_current_is_the_mean_of_the_currents_the_lif_received(drive, period, phase, post):
    """``a = s post(L(e) + b)`` recomputed from the recorded spikes equals the mean current per
    update the spiking forward pass gave the layer: with no leak and no spike, the final
    membrane potential is the sum of the currents, ``U a``."""
    from snnfast import engine
    huge = 1e9
    tail = [POOLS[post](kernel_size=2)] if post else []
    net = Network((2, 9, 9), [
        Conv2d(out_channels=3, kernel_size=3, padding=1, name="c1"), LIF(name="l1"),
        MaxPool2d(2, stride=1),
        Conv2d(out_channels=4, kernel_size=3, stride=2, name="c2"), *tail,
        IF(name="l2", threshold=huge, drive=drive, period=period, phase=phase, scale=0.7),
        Flatten(), Linear(out_features=3, name="f1"), LIF(name="l3"), RateReadout(),
        Linear(out_features=2, name="f2")], encoder=Hybrid(T=6, n_det=2))
    rng = np.random.default_rng(0)
    w = {k: (rng.standard_normal(s) * 0.5).astype(np.float32)
         for k, s in net.param_shapes().items()}
    X = rng.integers(0, 256, (5, 2, 9, 9), dtype=np.uint8)
    rec = engine.forward(net, w, X, record=True)
    fw = sg.train_forward(net, sg.plan(net), w, rec)
    U = len(net["l2"].update_steps(net.T))
    np.testing.assert_allclose(fw["a"][1] * U, rec["v"]["l2"], rtol=2e-5, atol=2e-5)
    assert rec["counts"]["l2"].sum() == 0 and rec["counts"]["l1"].sum() > 0


def _tiny_net(direct=False):
    enc = Direct(T=3) if direct else Hybrid(T=4, n_det=2)
    return Network((2 if direct else 1, 8, 8), [
        Conv2d(out_channels=4, kernel_size=3, padding=1, name="conv1"), LIF(name="lif1"),
        MaxPool2d(2), Conv2d(out_channels=6, kernel_size=3, name="conv2"),
        LIF(name="lif2", period=2, phase=1), Flatten(),
        Linear(out_features=12, name="fc1"), LIF(name="hidden", reset="subtract"),
        RateReadout(), Linear(out_features=4, name="fc2")], encoder=enc, name="tiny")


def _tiny_data(n, direct=False, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    if direct:                                        # event frames: a busy row per class
        X = rng.random((n, 3, 2, 8, 8)) < 0.1
        X[np.arange(n), :, :, 2 * y, :] |= rng.random((n, 3, 2, 8)) < 0.8
        return X.astype(np.float32), y
    X = rng.integers(0, 120, (n, 1, 8, 8))
    X[np.arange(n), 0, 2 * y, :] = 250                # a learnable row per class
    return X.astype(np.uint8), y


@pytest.mark.parametrize("options, expected", [
    ({}, {n: (sg.DEFAULT_CENTER, sg.DEFAULT_SLOPE) for n in ("lif1", "lif2", "hidden")}),
    ({"surr_center": 0.3, "surr_slope": 2.0},
     {n: (0.3, 2.0) for n in ("lif1", "lif2", "hidden")}),
    ({"surr_slope": 2.0, "surrogate": {"lif2": {"center": 0.6}, "hidden": {"slope": 7.0}}},
     {"lif1": (0.45, 2.0), "lif2": (0.6, 2.0), "hidden": (0.45, 7.0)})])
def test_surrogate_options_reach_every_spiking_layer(options, expected):
    # a run's centre and slope without any per-layer entry once fell back to the defaults
    model = SNN(_tiny_net(), **options)
    got = {s.neuron.name: (s.center, s.slope)
           for s in sg.plan(model.network, model.config.surrogates(model.network))}
    assert got == expected
    X, y = _tiny_data(32)
    trained = SNN(_tiny_net(), seed=0, epochs=1, batch_size=16, **options).fit(X, y).weights
    default = SNN(_tiny_net(), seed=0, epochs=1, batch_size=16).fit(X, y).weights
    assert (not options) == all(np.array_equal(trained[k], default[k]) for k in default)


def test_backward_does_not_depend_on_the_thread_count():
    from snnfast import engine
    net = _tiny_net()
    model = SNN(net, seed=3)
    X, y = _tiny_data(40)
    rec = engine.forward(net, model.weights, X, record=True)
    stages = sg.plan(net)
    out = []
    for n in (1, 2):
        rows = sg._Rows(n)
        fw = sg.train_forward(net, stages, model.weights, rec, rows)
        _, _, d = sg.cross_entropy_grad(rec["output"], y)
        out.append(sg.backward(net, stages, model.weights, fw, d, rows))
    for k in out[0]:
        np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=k)


@pytest.mark.parametrize("direct", [False, True])
def test_training_learns_and_does_not_depend_on_the_thread_count(direct):
    X, y = _tiny_data(96, direct)
    runs = []
    for n in (1, 2):
        # (the class patterns are rows: horizontal flips keep them, shifts would mix them)
        m = SNN(_tiny_net(direct), seed=1, n_threads=n, epochs=6, batch_size=16, lr=1e-2,
                augment_shift=0, augment_flip=True)
        m.fit(X[:80], y[:80], X[80:], y[80:])
        runs.append(m)
    for k in runs[0].weights:
        np.testing.assert_array_equal(runs[0].weights[k], runs[1].weights[k], err_msg=k)
    h = runs[0].history_
    assert len(h) == 6 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert runs[0].evaluate(X[:80], y[:80])["accuracy"] > 0.4      # chance: 0.25


@pytest.mark.parametrize("stop_at", [5, 10])     # 5 batches per epoch: boundary / mid-epoch
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, stop_at):
    X, y = _tiny_data(100)

    def model():
        return SNN(_tiny_net(), seed=2, epochs=3, batch_size=16, lr=3e-3, ema_every=2)
    a = model().fit(X[:80], y[:80], X[80:], y[80:])
    b = model()
    orig = type(b.trainer).train_step if b.trainer else None
    from snnfast.train.trainer import Trainer
    orig = Trainer.train_step

    def step(self, *args, **kw):
        out = orig(self, *args, **kw)
        if self.step == stop_at:
            self._stop = True              # what the SIGINT handler does on Ctrl-C
        return out
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_step", step)
        with pytest.raises(KeyboardInterrupt):
            b.fit(X[:80], y[:80], X[80:], y[80:])
    assert b.clean_stop_
    b.save(tmp_path / "ckpt.h5", checkpoint=True)
    c = SNN.load(tmp_path / "ckpt.h5")
    assert c.trainer.step == stop_at
    c.fit(X[:80], y[:80], X[80:], y[80:])
    assert c.trainer.step == a.trainer.step == 15
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], c.weights[k], err_msg=k)
    assert [h["train_loss"] for h in a.history_] == [h["train_loss"] for h in c.history_]


def test_save_load_round_trip_and_network_load(tmp_path):
    from snnfast import network
    X, y = _tiny_data(40)
    m = SNN(_tiny_net(), seed=0, epochs=1, batch_size=20).fit(X, y)
    m.save(tmp_path / "m.h5")
    net, w, meta = network.load(tmp_path / "m.h5")
    assert net == m.network and meta["training"]["batch_size"] == 20
    for k in w:
        np.testing.assert_array_equal(w[k], m.weights[k])
    m2 = SNN.load(tmp_path / "m.h5")
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    m.save(tmp_path / "c.h5", checkpoint=True)         # network-2: network.load reads it too
    assert network.is_network_file(tmp_path / "c.h5")
    assert network.load(tmp_path / "c.h5")[0] == net


def test_bad_options_and_inputs_are_refused_with_one_line():
    net = _tiny_net()
    with pytest.raises(ValueError, match="training: lr must be > 0"):
        SNN(net, lr=-1.0)
    with pytest.raises(ValueError, match="unknown option.*'lrr'"):
        SNN(net, lrr=1.0)
    with pytest.raises(ValueError, match="surrogate names 'nope'"):
        SNN(net, surrogate={"nope": {"slope": 2.0}})
    m = SNN(net)
    with pytest.raises(ValueError, match="uint8"):
        m.fit(np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="labels 0..3"):
        m.fit(np.zeros((4, 1, 8, 8), np.uint8), np.full(4, 7))
    assert training_config({"epochs": 2}).epochs == 2


# ----------------------------------------------------------------------------- command line
TINY_TOML = """
[network]
name = "tiny"
input = [1, 28, 28]
encoder = {type = "Hybrid", T = 4, n_det = 2}

[[network.layers]]
type = "Conv2d"
name = "conv1"
out_channels = 4
kernel_size = 5
stride = 3

[[network.layers]]
type = "LIF"
name = "lif1"

[[network.layers]]
type = "Flatten"

[[network.layers]]
type = "Linear"
name = "fc1"
out_features = 16

[[network.layers]]
type = "LIF"
name = "hidden"
reset = "subtract"

[[network.layers]]
type = "RateReadout"

[[network.layers]]
type = "Linear"
name = "fc2"
out_features = 10

[training]
batch_size = 16
val_size = 12
epochs = 2
lr = 3e-3
"""
CLI = ["--synthetic", "60", "--threads", "1", "--no-progress"]


@pytest.fixture
def tiny_config(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


def test_cli_config_trains_saves_and_the_tools_read_the_file(tmp_path, tiny_config, capsys):
    from snnfast import evaluate, network
    out = tmp_path / "run"
    assert train_cli.main(["--config", str(tiny_config), "--out", str(out)] + CLI) == 0
    net, w, meta = network.load(out / "model.h5")
    assert net.name == "tiny" and meta["training"]["epochs"] == 2
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["epochs_done"] == 2 and 0 <= m["final"]["test_acc_best_val_model"]
    assert (out / "energy.json").is_file()
    Xtr, ytr, Xte, yte = train_cli.synthetic_digits(60, 12, seed=12345)
    np.savez(tmp_path / "test.npz", X_test=Xte, y_test=yte)
    capsys.readouterr()
    assert evaluate.main([str(out / "model.h5"), "--data", str(tmp_path / "test.npz")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_config_flags_override_the_training_table(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert train_cli.main(["--config", str(tiny_config), "--out", str(out), "--epochs", "1",
                           "--set", "augment_flip=true"] + CLI) == 0
    from snnfast.network import load
    meta = load(out / "model.h5")[2]
    assert meta["training"]["epochs"] == 1 and meta["training"]["augment_flip"] is True
    assert meta["training"]["batch_size"] == 16


@pytest.mark.parametrize("edit,message", [
    (("out_features = 16", "out_features = -16"), "layer 3 ('fc1', Linear): out_features"),
    (("kernel_size = 5", "kernel_size = 29"), "layer 0 ('conv1', Conv2d): kernel_size 29"),
    (('reset = "subtract"', 'reset = "sometimes"'), "layer 4 ('hidden', LIF): reset"),
    (("lr = 3e-3", "lr = -3e-3"), "training: lr must be > 0"),
    (("epochs = 2", "epoks = 2"), "unknown option(s) 'epoks'"),
])
def test_cli_bad_config_is_refused_before_anything_is_written(tmp_path, tiny_config, capsys,
                                                              edit, message):
    tiny_config.write_text(TINY_TOML.replace(*edit))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--config", str(tiny_config), "--out", str(out)] + CLI)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and str(tiny_config) in err
    assert not out.exists()


def test_cli_config_interrupt_and_resume_equal_an_uninterrupted_run(tmp_path, tiny_config,
                                                                   monkeypatch):
    from snnfast.network import load
    from snnfast.train.trainer import Trainer
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli.main(["--config", str(tiny_config), "--out", str(a)] + CLI) == 0
    orig = Trainer.train_step

    def step(self, *args, **kw):
        out = orig(self, *args, **kw)
        if self.step == 4:                 # inside the second epoch (3 batches per epoch)
            self._stop = True
        return out
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_step", step)
        assert train_cli.main(["--config", str(tiny_config), "--out", str(b)] + CLI) == 130
    with pytest.raises(SystemExit):        # a resumed run keeps its options
        train_cli.main(["--config", str(tiny_config), "--out", str(b), "--resume",
                        "--lr", "0.1"] + CLI)
    assert train_cli.main(["--config", str(tiny_config), "--out", str(b), "--resume"] + CLI) == 0
    wa, wb = load(a / "model.h5")[1], load(b / "model.h5")[1]
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_cli_config_refuses_conflicting_flags(tiny_config):
    for extra in (["--preset", "seed"], ["--reseeded-noise"]):
        with pytest.raises(SystemExit):
            train_cli.main(["--config", str(tiny_config)] + extra + CLI)
