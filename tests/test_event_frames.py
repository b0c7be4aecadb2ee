"""Event-frame input end to end: examples/event-frames.toml (Direct encoder, 2 x 34 x 34) trains
on synthetic N-MNIST-like frames, and its NIR export runs to the engine's spikes."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from snnfast import SNN, engine, nir as snir
from snnfast.datasets import synthetic_frames
from snnfast.network import Network
from snnfast.nir_export import NIRExportWarning, to_nir

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "event-frames.toml"
DT = 1e-3


@pytest.fixture(scope="module")
def trained():
    """The example network after 3 epochs on 256 synthetic samples, and its test samples."""
    X, y, Xt, yt = synthetic_frames(256, 128, T=8, seed=0)
    model = SNN(EXAMPLE, seed=0, n_threads=2, epochs=3, val_size=0)
    first = None
    for epoch in range(3):
        model.fit(X, y, epochs=epoch + 1)
        first = first or model.history_[0]["train_loss"]
    return model, first, Xt, yt


def test_example_description_takes_event_frames():
    net = Network.from_file(EXAMPLE)
    assert net.input_shape == (2, 34, 34) and type(net.encoder).__name__ == "Direct"
    assert net.T == 8 and net.output_shape == (10,)


def test_trains_on_synthetic_frames(trained):
    model, first, Xt, yt = trained
    last = model.history_[-1]["train_loss"]
    assert first < np.log(10) + 0.1 and last < first - 0.2      # the loss falls
    assert model.evaluate(Xt, yt)["accuracy"] > 0.25            # chance: 0.1


def test_nir_export_runs_to_the_engines_spikes(trained, tmp_path):
    model, _, Xt, _ = trained
    net, w = model.network, model.weights
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRExportWarning)      # every layer is expressible
        to_nir(net, w, path=tmp_path / "frames.nir", dt=DT)
    X = Xt[:6]
    want = engine.forward(net, w, X, record=True)
    spiking = net.spiking_layers()
    outs, tr = snir.run(tmp_path / "frames.nir", X, dt=DT, trace=spiking)
    for name in spiking:
        assert want["spikes"][name].sum() > 0, name
        np.testing.assert_array_equal(tr[name]["z"].astype(np.uint8), want["spikes"][name])
    np.testing.assert_allclose(outs["output"][:, -1], want["output"], rtol=1e-5, atol=1e-5)


def test_train_and_export_command_lines(tmp_path):
    # python -m snnfast.train --config examples/event-frames.toml --data frames.npz, then the
    # export command line on the saved model; its graph runs to the engine's spikes
    import subprocess
    import sys
    from snnfast.datasets import ARRAY_KEYS
    from snnfast.network import load
    frames = tmp_path / "frames.npz"
    np.savez(frames, **dict(zip(ARRAY_KEYS, synthetic_frames(48, 12, T=8, seed=1))))
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "snnfast.train", "--config", str(EXAMPLE),
                        "--data", str(frames), "--epochs", "1", "--val-size", "16", "--out",
                        str(run), "--no-progress", "--no-plots", "--threads", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "train=32 val=16 test=12" in r.stdout and "test accuracy" in r.stdout
    net, w, _ = load(run / "model.h5")
    assert net == Network.from_file(EXAMPLE)
    r = subprocess.run([sys.executable, "-m", "snnfast.export", str(run / "model.h5"),
                        str(tmp_path / "m.nir"), "--dt", str(DT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    X = synthetic_frames(4, 1, T=8, seed=2)[0]
    want = engine.forward(net, w, X, record=True)
    _, tr = snir.run(tmp_path / "m.nir", X, dt=DT, trace=net.spiking_layers())
    for name in net.spiking_layers():
        np.testing.assert_array_equal(tr[name]["z"].astype(np.uint8), want["spikes"][name])
