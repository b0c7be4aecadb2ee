"""Tests of the ``python -m snnfast.train`` / ``snnfast.evaluate`` command lines."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from snnfast import train as train_cli
from snnfast.convsnn import PARAM_SHAPES, ConvSNN

TINY = ["--synthetic", "60", "--val-size", "12", "--batch-size", "16", "--threads", "1",
        "--backend", "numpy", "--no-progress", "--no-plots"]


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--epochs", "x"], ["--lr", "-1"],
                                 ["--lr", "nan"], ["--preset", "fancy"], ["--threads", "0"],
                                 ["--batch-size", "2.5"], ["--dataset", "cifar"],
                                 ["--seed", "-3"], ["--val-size", "-1"], ["--bogus"]])
def test_bad_arguments_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(bad)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err


def test_reseeded_noise_only_with_the_seed_preset(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--reseeded-noise"])
    assert exc.value.code == 2
    assert "--preset seed only" in capsys.readouterr().err


def test_reseeded_noise_reaches_the_model_and_guards_resume(tmp_path, capsys):
    run = tmp_path / "r"
    seed = TINY + ["--preset", "seed", "--epochs", "1", "--out", str(run)]
    assert train_cli.main(seed + ["--reseeded-noise"]) == 0
    model = ConvSNN.load(run / "model.h5", backend="numpy")
    assert model.config.reseeded_noise and model.config.preset == "seed"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:       # resuming without the flag is another run
        train_cli.main(seed + ["--resume"])
    assert exc.value.code == 2
    assert "--reseeded-noise" in capsys.readouterr().err


def test_diverging_run_exits_1_with_a_clear_message(tmp_path, capsys):
    run = tmp_path / "d"
    args = TINY + ["--preset", "seed", "--lr", "1e38", "--epochs", "2", "--out", str(run)]
    with np.errstate(all="ignore"):
        assert train_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "error: training" in err and "epoch 1, batch" in err and "--lr" in err
    assert "Traceback" not in err and not (run / "model.h5").exists()


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--out", str(tmp_path / "none"), "--resume"])
    assert exc.value.code == 2
    assert "checkpoint" in capsys.readouterr().err


def test_end_to_end_subprocess(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "snnfast.train", "--epochs", "2", "--out", str(run)] + TINY
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout and "epoch   2" in res.stdout
    for name in ("model.h5", "checkpoint.h5", "metrics.json", "energy.json"):
        assert (run / name).is_file(), name
    # the same figures as `python -m snnfast.energy` (T = 10: conv 10 calls, FC1 5, FC2 1)
    assert "energy on" in res.stdout and "uJ/inference" in res.stdout
    ops = json.loads((run / "energy.json").read_text())["result"]["SynapticOperations"]
    assert ops["Dense"] == 10 * 57_600 + 5 * 2_359_296 + 10_240
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs_done"] == 2 and len(metrics["history"]) == 2
    assert 0.0 <= metrics["final"]["test_acc_best_val_model"] <= 1.0
    with h5py.File(run / "model.h5", "r") as f:
        assert f.attrs["snnfast_format"] == "convsnn-2"
        assert f.attrs["kind"] == "model"
    with h5py.File(run / "checkpoint.h5", "r") as f:
        assert f.attrs["kind"] == "checkpoint" and "optimizer" in f
    model = ConvSNN.load(run / "model.h5", backend="numpy")
    assert model.config.batch_size == 16 and model.epoch_ == 2


@pytest.mark.parametrize("stop_at", [3, 4])
# 3 batches per epoch: stop at the epoch boundary / inside the second epoch
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, stop_at):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli.main(TINY + ["--epochs", "2", "--out", str(a)]) == 0
    orig = ConvSNN._train_step

    def step(self, *args, **kw):
        out = orig(self, *args, **kw)
        if self.step_ == stop_at:
            self.trainer._stop = True          # what the SIGINT handler does on Ctrl-C
        return out
    with monkeypatch.context() as mp:
        mp.setattr(ConvSNN, "_train_step", step)
        assert train_cli.main(TINY + ["--epochs", "2", "--out", str(b)]) == 130
    assert train_cli.main(TINY + ["--out", str(b), "--resume"]) == 0
    ma = ConvSNN.load(a / "checkpoint.h5", backend="numpy")
    mb = ConvSNN.load(b / "checkpoint.h5", backend="numpy")
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(ma.params[k], mb.params[k], err_msg=k)
    fa = ConvSNN.load(a / "model.h5", backend="numpy").params
    fb = ConvSNN.load(b / "model.h5", backend="numpy").params
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert ma.step_ == mb.step_ == 6


def test_evaluate_cli(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(run)]) == 0
    from snnfast import datasets, evaluate
    Xtr, ytr, Xte, yte = train_cli.synthetic_digits(60, 12, seed=12345)
    monkeypatch.setattr(datasets, "load", lambda name, split, data_dir=None: (Xte, yte))
    capsys.readouterr()
    assert evaluate.main([str(run / "model.h5"), "--backend", "numpy", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "spike rates" in out
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    assert evaluate.main([str(bad)]) == 1
    assert "bad.h5" in capsys.readouterr().err


def test_ctrl_c_saves_checkpoint_and_exits_130(tmp_path, monkeypatch, capsys):
    run = tmp_path / "c"
    orig = ConvSNN._train_step

    def step(self, *a, **k):
        out = orig(self, *a, **k)
        if self.step_ == 4:
            self.trainer._stop = True          # what the SIGINT handler does
        return out
    monkeypatch.setattr(ConvSNN, "_train_step", step)
    assert train_cli.main(TINY + ["--epochs", "2", "--out", str(run)]) == 130
    assert "--resume" in capsys.readouterr().err
    m = ConvSNN.load(run / "checkpoint.h5", backend="numpy")
    assert m.step_ == 4 and m.trainer._partial is not None


def test_a_finished_run_is_not_overwritten_without_resume(tmp_path, capsys):
    run = tmp_path / "r"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(run)]) == 0
    saved = {n: (run / n).read_bytes() for n in ("model.h5", "checkpoint.h5")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--epochs", "1", "--out", str(run)])
    assert exc.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert {n: (run / n).read_bytes() for n in saved} == saved


@pytest.mark.parametrize("extra, why", [(["--lr", "0.5"], "--lr"),
                                        (["--batch-size", "8"], "--batch-size"),
                                        (["--val-size", "6"], "--val-size"),
                                        (["--dataset", "fashion-mnist"], "trained on mnist")])
def test_resume_refuses_settings_of_another_run(tmp_path, capsys, extra, why):
    run = tmp_path / "r"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:     # the later option wins in argparse
        train_cli.main(TINY + ["--epochs", "2", "--out", str(run), "--resume"] + extra)
    assert exc.value.code == 2 and why in capsys.readouterr().err
    assert ConvSNN.load(run / "checkpoint.h5", backend="numpy").epoch_ == 1


def test_resume_from_a_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "r"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(run)]) == 0
    ck = run / "checkpoint.h5"
    ck.write_bytes(ck.read_bytes()[:5000])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--epochs", "2", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "checkpoint.h5: cannot read" in err


def test_unusable_out_or_data_dir_fails_before_training(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        with pytest.raises(SystemExit) as exc:
            train_cli.main(TINY + ["--out", str(out)])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert "--out" in captured.err and "epoch" not in captured.out
    # no --synthetic: the data set comes from --data-dir, which cannot be a cache directory
    args = [a for a in TINY if a not in ("--synthetic", "60")]
    assert train_cli.main(args + ["--out", str(tmp_path / "r"), "--data-dir", str(afile)]) == 1
    err = capsys.readouterr().err
    assert "error: cannot use" in err and "data cache directory" in err
    from snnfast import evaluate
    run = tmp_path / "ok"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert evaluate.main([str(run / "model.h5"), "--data-dir", str(afile)]) == 1
    assert "data cache directory" in capsys.readouterr().err
