"""``python -m snnfast.convert --arch cnn / --model`` end to end on small synthetic data,
and ``snnfast.energy`` on the written TTFS CNN file (issue 22)."""
import json

import numpy as np
import pytest

from snnfast import convert, energy, ttfs_cnn
from snnfast.cnn import CNN, Pool, Stage
from snnfast.model_import import save_npz


def _data(tmp_path, n_train=240, n_test=60, side=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, side, side), dtype=np.uint8)
    x[x < 120] = 0
    y = (x[:, :side // 2].sum(axis=(1, 2)) > x[:, side // 2:].sum(axis=(1, 2))).astype(np.int64)
    p = tmp_path / "data.npz"
    np.savez(p, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
             y_test=y[n_train:])
    return p, x[n_train:], y[n_train:]


def test_arch_cnn_on_npz_data(tmp_path, capsys):
    p, x_test, _ = _data(tmp_path)
    out = tmp_path / "run"
    rc = convert.main(["--arch", "cnn", "--data", str(p), "--epochs", "1", "--n-val", "40",
                       "--out", str(out), "--no-progress", "--threads", "2"])
    assert rc == 0
    res = json.loads((out / "ttfs_cnn_results.json").read_text())
    row = res["table"]
    assert row["n_test"] == 60
    assert row["drop"] == 0.0 and row["agreement"] == 100.0
    assert row["max_abs_err"] <= 1e-9 and row["firing_sets_equal"]
    assert row["saturated_units"] >= 0
    assert sorted(res["figures"]) == ["ttfs_cnn_sparsity.png", "ttfs_cnn_spike_times.png"]
    assert (out / "ttfs_cnn_sparsity.png").stat().st_size > 0
    net = ttfs_cnn.load(out / "ttfs_cnn.h5")
    sim = net.simulate(x_test.reshape(60, -1) / 255.0)
    z, _ = net.relu_forward(x_test.reshape(60, -1) / 255.0)
    assert np.abs(sim.logits - z).max() <= 1e-9
    assert row["synaptic_events_per_image"] == sim.events.sum() / 60
    # the energy command reads the new format; executed events == recount
    a = energy.analyse_file(out / "ttfs_cnn.h5", images=x_test)
    assert a["format"] == "ttfs-cnn-1"
    assert a["result"]["checks"]["match"]
    assert a["result"]["executed"]["MACs"] == pytest.approx(row["synaptic_events_per_image"])
    assert "SNN" in capsys.readouterr().out


def test_model_npz_path_and_errors(tmp_path, capsys):
    p, x_test, _ = _data(tmp_path, side=10)
    rng = np.random.default_rng(1)
    cnn = CNN([Stage("conv", rng.normal(size=(3, 1, 3, 3)) * 0.5, rng.normal(size=3) * 0.1,
                     2, 1, Pool("avg", 2, 1)),
               Stage("dense", rng.normal(size=(4, 48)) * 0.3, rng.normal(size=4) * 0.1)],
              (1, 10, 10))
    m = save_npz(cnn, tmp_path / "net.npz")
    out = tmp_path / "run"
    assert convert.main(["--model", str(m), "--data", str(p), "--out", str(out),
                         "--no-progress"]) == 0
    res = json.loads((out / "ttfs_cnn_results.json").read_text())
    assert res["model"]["source"] == str(m)
    assert res["table"]["agreement"] == 100.0 and res["table"]["max_abs_err"] <= 1e-9
    capsys.readouterr()
    assert convert.main(["--model", str(tmp_path / "missing.onnx"), "--out",
                         str(tmp_path / "r2")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    assert convert.main(["--data", str(p), "--out", str(tmp_path / "r3")]) == 2
    assert "--data needs" in capsys.readouterr().err
    assert convert.main(["--dataset", "fashion-mnist", "--out", str(tmp_path / "r4")]) == 2
    assert "MLP depth study uses mnist" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((3, 4, 4)))
    assert convert.main(["--model", str(m), "--data", str(bad), "--out",
                         str(tmp_path / "r5")]) == 2
    assert "x_train, y_train, x_test, y_test" in capsys.readouterr().err
    # an imported network whose input does not match the data
    q, _, _ = _data(tmp_path, side=12)
    assert convert.main(["--model", str(m), "--data", str(q), "--out",
                         str(tmp_path / "r6")]) == 2
    assert "expects inputs of shape" in capsys.readouterr().err
