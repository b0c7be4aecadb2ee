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


def test_model_onnx_path(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    p, x_test, _ = _data(tmp_path, side=8)
    rng = np.random.default_rng(2)
    w1 = (rng.normal(size=(4, 1, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.normal(size=(2, 36)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["z"], transB=1)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 2])], inits)
    m = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(m))
    out = tmp_path / "run"
    assert convert.main(["--model", str(m), "--data", str(p), "--out", str(out),
                         "--no-progress"]) == 0
    res = json.loads((out / "ttfs_cnn_results.json").read_text())
    assert res["table"]["agreement"] == 100.0 and res["table"]["max_abs_err"] <= 1e-9
    # the converted logits equal a hand-written NumPy forward of the ONNX network
    x = x_test.astype(np.float64)[:, None] / 255.0
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    c = np.zeros((len(x), 4, 4, 4))
    for oy in range(4):
        for ox in range(4):
            patch = xp[:, :, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3]
            c[:, :, oy, ox] = np.einsum("ncij,ocij->no", patch, w1.astype(np.float64))
    r = np.maximum(c, 0)
    mp = np.stack([np.stack([r[:, :, y:y + 2, xx:xx + 2].max(axis=(2, 3)) for xx in range(3)],
                            axis=-1) for y in range(3)], axis=-2)
    z = mp.reshape(len(x), -1) @ w2.astype(np.float64).T
    net = ttfs_cnn.load(out / "ttfs_cnn.h5")
    assert np.abs(net.simulate(x.reshape(len(x), -1)).logits - z).max() <= 1e-9
