"""python -m snnfast.export / snnfast.evaluate / snnfast.energy on "network-1" files."""
import json

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
    assert export.main([str(path), str(out), "--fold-gain"]) == 2


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
