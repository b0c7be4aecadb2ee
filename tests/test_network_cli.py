"""python -m snnfast.export / snnfast.evaluate / snnfast.energy on "network-1" files."""
import json

import nir
import numpy as np

from snnfast import energy, evaluate, export
from snnfast import nir as snir
from snnfast.engine import forward
from snnfast.network import (LIF, Conv2d, Flatten, Hybrid, Linear, Network, RateReadout,
                             SumPool2d, save)


def _saved(tmp_path, reset="zero"):
    net = Network((1, 10, 10), [Conv2d(out_channels=3, kernel_size=3), LIF(reset=reset),
                                SumPool2d(2), Flatten(), Linear(out_features=4), LIF(),
                                RateReadout(), Linear(out_features=3)],
                  encoder=Hybrid(T=5, n_det=2), name="cli")
    rng = np.random.default_rng(0)
    w = {k: (rng.normal(0.1, 0.6, s)).astype(np.float32) for k, s in net.param_shapes().items()}
    path = tmp_path / "net.h5"
    save(path, net, w, metadata={"dataset": "none"})
    X = rng.integers(0, 256, (7, 1, 10, 10)).astype(np.uint8)
    y = rng.integers(0, 3, 7)
    np.savez(tmp_path / "test.npz", X_test=X, y_test=y)
    return net, w, path, X, y


def test_export_cli_writes_a_graph_equal_to_to_nir(tmp_path, capsys):
    net, w, path, X, _ = _saved(tmp_path)
    out = tmp_path / "net.nir"
    assert export.main([str(path), str(out), "--dt", "0.001"]) == 0
    assert "exact" in capsys.readouterr().out
    want = forward(net, w, X, record=True)
    _, tr = snir.run(out, want["input"].astype(np.float32), dt=1e-3, trace=["lif1", "lif5"])
    for k in ("lif1", "lif5"):
        assert np.array_equal(tr[k]["z"].astype(np.uint8), want["spikes"][k])
    # --peers (and --fold-gain) apply to any network: no I node, gains in the weights
    assert export.main([str(path), str(out), "--peers"]) == 0
    assert "peers True" in capsys.readouterr().out
    g = nir.read(out)
    assert "ratereadout6" not in g.nodes and np.all(g.nodes["lif1"].r == 1)


def test_export_cli_warns_for_inexpressible(tmp_path, capsys):
    _, _, path, _, _ = _saved(tmp_path, reset="halve")
    assert export.main([str(path), str(tmp_path / "n.nir")]) == 0
    cap = capsys.readouterr()
    assert "lif1.reset" in cap.err and "NOT exact: lif1.reset" in cap.out


def test_evaluate_cli_on_a_network_file(tmp_path, capsys):
    net, w, path, X, y = _saved(tmp_path)
    assert evaluate.main([str(path), "--data", str(tmp_path / "test.npz"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    out = forward(net, w, X)
    z = out["output"].astype(np.float64)
    assert res["accuracy"] == float((z.argmax(1) == y).mean())
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.isclose(res["loss"], -np.log(p[np.arange(len(y)), y]).mean(), rtol=1e-12)
    assert res["rates"]["lif1"] == out["counts"]["lif1"].sum() / (7 * 3 * 8 * 8 * 5)
    np.savez(tmp_path / "bad.npz", X=X, y=np.zeros(3, int))
    assert evaluate.main([str(path), "--data", str(tmp_path / "bad.npz")]) == 1
    assert "integer labels" in capsys.readouterr().err


def test_energy_cli_refuses_dt_for_network_files(tmp_path):
    _, _, path, _, _ = _saved(tmp_path)
    try:
        energy.main([str(path), "--dt", "0.1"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--dt accepted")


def test_evaluate_and_energy_run_a_saved_snn_with_its_own_seed(tmp_path, capsys):
    """A saved SNN (network-2 checkpoint) is run with the input noise of its training seed,
    as a ConvSNN file is with its config's: the figures are the model's own ``evaluate``."""
    from snnfast import SNN
    from snnfast.network import load, noise_seed
    net, w, _, X, y = _saved(tmp_path)
    model = SNN(net, w, seed=5)
    path = tmp_path / "snn.h5"
    model.save(path, checkpoint=True)
    assert noise_seed(load(path)[2]) == 5
    data = tmp_path / "test.npz"
    assert evaluate.main([str(path), "--data", str(data), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    own = model.evaluate(X, y)
    assert res["seed"] == 5
    assert (res["accuracy"], res["loss"], res["rates"]) == \
        (own["accuracy"], own["loss"], own["rates"])
    # the check can fail: seed 0's noise gives another loss on these inputs
    assert evaluate.evaluate_network(net, w, X, y, seed=0)["loss"] != res["loss"]
    np.savez(tmp_path / "x.npz", X=X)
    report = tmp_path / "energy.json"
    assert energy.main([str(path), "--input", str(tmp_path / "x.npz"), "--json",
                        str(report)]) == 0
    got = json.loads(report.read_text())["result"]["SynapticOperations"]
    want = {s: energy.from_network(net, w, X, seed=s)["SynapticOperations"] for s in (5, 0)}
    assert got == json.loads(json.dumps(want[5])) and want[5] != want[0]
