"""Nothing lost, nothing silent (issue 25): special output files, full disks, early output
checks, run-directory locks, signals, model-file digests, one configuration validation and
size limits. Disk-full faults come from RLIMIT_FSIZE in a child process (a real failing
``write``, errno EFBIG), a monkeypatched ``open`` (ENOSPC) or a small tmpfs when mountable;
special files are a FIFO and a symbolic link in ``tmp_path``, never a real device."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from snnfast import _utils
from snnfast import train as train_cli
from snnfast.convsnn import MAX_ABS_WEIGHT, PARAM_SHAPES, ConvSNN

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic", "60", "--val-size", "12", "--batch-size", "16", "--threads", "1",
        "--backend", "numpy", "--no-progress", "--no-plots"]

# A child ``python -m snnfast.train`` that reports each optimiser step ("STEP n") and pauses
# after step PAUSE, so that a test can signal it at a known point of the run.
CHILD = """
import os, sys, time
from snnfast import train
from snnfast.convsnn import ConvSNN
orig, pause = ConvSNN._train_step, int(os.environ["PAUSE"])
def step(self, *a, **k):
    out = orig(self, *a, **k)
    print(f"STEP {self.step_}", flush=True)
    if self.step_ == pause:
        time.sleep(float(os.environ.get("SLEEP", "3")))
    return out
ConvSNN._train_step = step
from snnfast._cli import run_program
sys.exit(run_program(train.main))   # as `python -m snnfast.train` does
"""

# Run a command with a file-size limit: writes beyond it fail with EFBIG (SIGXFSZ ignored),
# as on a full disk, without filling one.
LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _limited(limit, module, *args):
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), module, *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())


def _special_files(tmp_path):
    """A FIFO and a symbolic link (to a regular file) in ``tmp_path``."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(target)
    return {"fifo": fifo, "link": link}


def _assert_untouched(tmp_path):
    assert (tmp_path / "fifo").is_fifo()
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name], "a temporary file remained"


def _model_file(path, **kw):
    m = ConvSNN("nir", seed=1, backend="numpy", **kw)
    m.save(path)
    return m


# ------------------------------------------------------------------------ special files
def test_special_file_kind_and_check_output_path(tmp_path):
    sp = _special_files(tmp_path)
    assert _utils.special_file_kind(sp["fifo"]) == "a FIFO"
    assert _utils.special_file_kind(sp["link"]) == "a symbolic link"
    assert _utils.special_file_kind(tmp_path) == "a directory"
    assert _utils.special_file_kind(tmp_path / "target.txt") is None
    assert _utils.special_file_kind(tmp_path / "absent") is None
    for p in sp.values():
        with pytest.raises(ValueError, match="is a (FIFO|symbolic link)"):
            _utils.write_json(p, {"a": 1})
    _assert_untouched(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_save_and_export_refuse_special_outputs(tmp_path, capsys, kind):
    from snnfast import export
    out = _special_files(tmp_path)[kind]
    m = _model_file(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="is a (FIFO|symbolic link)"):
        m.save(out)
    assert export.main([str(tmp_path / "m.h5"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output") and err.count("\n") == 1
    assert "FIFO" in err or "symbolic link" in err
    _assert_untouched(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_energy_json_special_output_refused_before_the_analysis(tmp_path, capsys, monkeypatch,
                                                                kind):
    from snnfast import energy
    out = _special_files(tmp_path)[kind]
    _model_file(tmp_path / "m.h5")
    monkeypatch.setattr(energy, "analyse_file", lambda *a, **k: pytest.fail("analysed"))
    with pytest.raises(SystemExit) as exc:
        energy.main([str(tmp_path / "m.h5"), "--json", str(out)])
    assert exc.value.code == 2 and "--json" in capsys.readouterr().err
    _assert_untouched(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_train_refuses_special_files_in_the_run_dir_before_training(tmp_path, capsys, kind):
    sp = _special_files(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    os.rename(sp[kind], run / "metrics.json")
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--epochs", "1", "--out", str(run)])
    cap = capsys.readouterr()
    assert exc.value.code == 2 and "metrics.json is a" in cap.err and "epoch" not in cap.out
    assert not (run / "checkpoint.h5").exists()


def test_convert_refuses_a_special_output_before_loading_data(tmp_path, capsys, monkeypatch):
    from snnfast import convert
    out = tmp_path / "ttfs"
    out.mkdir()
    os.mkfifo(out / "ttfs_results.json")
    monkeypatch.setattr(convert, "_load_data", lambda a: pytest.fail("data loaded"))
    assert convert.main(["--out", str(out), "--depths", "2", "--no-progress"]) == 2
    assert "ttfs_results.json is a FIFO" in capsys.readouterr().err
    assert (out / "ttfs_results.json").is_fifo()


@pytest.mark.skipif(not (ROOT / "bench").is_dir(), reason="bench/ is not shipped")
def test_bench_json_special_output_refused(tmp_path):
    for p in _special_files(tmp_path).values():
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "w1_step.py"), "--json", str(p),
                            "--repeats", "1"], capture_output=True, text=True, timeout=120,
                           env=_env())
        assert r.returncode == 2 and "--json" in r.stderr and "Traceback" not in r.stderr
    _assert_untouched(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_unwritable_output_directory_is_found_before_the_work(capsys, monkeypatch):
    # root passes os.access() for /proc, where no file can be created: a real creation decides
    from snnfast import energy
    from snnfast._cli import output_file_error
    assert "cannot write into the directory /proc" in output_file_error("/proc/x.json")
    monkeypatch.setattr(energy, "analyse_file", lambda *a, **k: pytest.fail("analysed"))
    with pytest.raises(SystemExit) as exc:
        energy.main([str(ROOT / "pyproject.toml"), "--json", "/proc/x.json"])
    assert exc.value.code == 2 and "--json: cannot write" in capsys.readouterr().err


# ------------------------------------------------------------------------ disk full
def _no_space(monkeypatch):
    """Make every write of an output (``_utils.atomic_write_bytes``) fail with ENOSPC."""
    class Full:
        def __init__(self, *a, **k):
            self.fh = open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[:1000])       # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(_utils, "open", Full, raising=False)


def test_save_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    _model_file(path)
    before = path.read_bytes()
    _no_space(monkeypatch)
    with pytest.raises(OSError) as exc:
        ConvSNN("nir", seed=2, backend="numpy").save(path)
    assert exc.value.errno == errno.ENOSPC
    assert str(exc.value) == f"[Errno 28] No space left on device: '{path}'"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.h5"]


def test_energy_json_on_a_full_disk_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    from snnfast import energy
    _model_file(tmp_path / "m.h5")
    monkeypatch.setattr(energy, "analyse_file", lambda *a, **k: {
        "format": "convsnn-1", "samples": 1, "result": {}, "energy": []})
    monkeypatch.setattr(energy, "format_report", lambda *a, **k: "report")
    _no_space(monkeypatch)
    assert energy.main([str(tmp_path / "m.h5"), "--json", str(tmp_path / "e.json")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: [Errno 28] No space left on device: '{tmp_path / 'e.json'}'\n"
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]


def test_export_past_the_file_size_limit_exits_1_without_a_crash(tmp_path):
    _model_file(tmp_path / "m.h5")
    res = _limited(1_000_000, "snnfast.export", tmp_path / "m.h5", tmp_path / "o.nir")
    assert res.returncode == 1, res.stderr     # was a segfault (139) after h5py tracebacks
    assert res.stderr.count("\n") == 1 and "File too large" in res.stderr
    assert "Exception ignored" not in res.stderr and "Traceback" not in res.stderr
    assert os.listdir(tmp_path) == ["m.h5"]


def test_train_past_the_file_size_limit_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    orig = ConvSNN._train_step

    def step(self, *a, **k):        # stop at the end of epoch 1 (3 batches per epoch)
        out = orig(self, *a, **k)
        if self.step_ == 3:
            self.trainer._stop = True
        return out
    with monkeypatch.context() as mp:
        mp.setattr(ConvSNN, "_train_step", step)
        assert train_cli.main(TINY + ["--epochs", "2", "--out", str(run)]) == 130
    ckpt = (run / "checkpoint.h5").read_bytes()
    files = sorted(os.listdir(run))
    res = _limited(1_000_000, "snnfast.train", *TINY, "--epochs", "2", "--out", run, "--resume")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    assert res.stderr.startswith("error: [Errno 27] File too large: ")
    assert "checkpoint.h5 holds the last completed epoch" in res.stderr
    assert (run / "checkpoint.h5").read_bytes() == ckpt
    assert sorted(os.listdir(run)) == files


def _mount_tmpfs(path, size):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")


def test_save_on_a_real_full_tmpfs(tmp_path):
    fs = tmp_path / "small"
    _mount_tmpfs(fs, "12m")
    try:
        path = fs / "m.h5"
        _model_file(path)                           # 9.5 MB: fits once, not twice
        before = path.read_bytes()
        with pytest.raises(OSError) as exc:
            ConvSNN("nir", seed=2, backend="numpy").save(path)
        assert exc.value.errno == errno.ENOSPC and str(path) in str(exc.value)
        assert path.read_bytes() == before and os.listdir(fs) == ["m.h5"]
    finally:
        subprocess.run(["umount", str(fs)], check=True)


# ------------------------------------------------------------------------ signals
def _start_child(tmp_path, args, pause, sleep=3.0):
    p = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], cwd=ROOT,
                         env=_env(PAUSE=str(pause), SLEEP=str(sleep)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.strip() == f"STEP {pause}":
            return p
    p.wait()
    pytest.fail(f"the child ended before step {pause}: {p.stderr.read()}")


def _params_equal(a, b):
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli.main(TINY + ["--epochs", "2", "--out", str(a)]) == 0
    child = _start_child(tmp_path, TINY + ["--epochs", "2", "--out", b], pause=4)
    child.send_signal(signal.SIGTERM)              # inside epoch 2 (3 batches per epoch)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert "interrupted; state saved" in err and "Traceback" not in err
    mid = ConvSNN.load(b / "checkpoint.h5", backend="numpy")
    assert mid.step_ == 4 and (mid.trainer._partial["epoch"], mid.trainer._partial["batch"]) == (1, 1)
    assert not (b / "model.h5").exists()
    assert train_cli.main(TINY + ["--out", str(b), "--resume"]) == 0
    for name in ("checkpoint.h5", "model.h5"):
        ma = ConvSNN.load(a / name, backend="numpy")
        mb = ConvSNN.load(b / name, backend="numpy")
        _params_equal(ma, mb)
        assert ma.step_ == mb.step_ == 6


def test_repeated_ctrl_c_exits_130_without_noise(tmp_path):
    run = tmp_path / "r"
    child = _start_child(tmp_path, TINY + ["--epochs", "2", "--out", run], pause=4)
    for _ in range(5):
        child.send_signal(signal.SIGINT)
        time.sleep(0.02)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted" in err
    # a hard stop keeps the checkpoint of the last completed epoch
    assert ConvSNN.load(run / "checkpoint.h5", backend="numpy").epoch_ == 1


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_energy_interrupted_one_line(tmp_path, sig, code):
    _model_file(tmp_path / "m.h5")
    slow = ("import sys, time\nfrom snnfast import energy\n"
            "def slow(*a, **k):\n    print('ANALYSING', flush=True)\n    time.sleep(60)\n"
            "energy.analyse_file = slow\nsys.exit(energy.main(sys.argv[1:]))\n")
    p = subprocess.Popen([sys.executable, "-c", slow, str(tmp_path / "m.h5"), "--json",
                          str(tmp_path / "e.json")], cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ANALYSING"
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code
    assert err.strip() == f"interrupted ({signal.Signals(sig).name})"
    assert not (tmp_path / "e.json").exists()


def test_convert_interrupted_exits_130_and_removes_its_empty_out_dir(tmp_path, capsys,
                                                                       monkeypatch):
    from snnfast import convert

    def interrupted(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, "_load_data", interrupted)
    out = tmp_path / "new" / "ttfs"
    assert convert.main(["--out", str(out), "--depths", "2", "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted (SIGINT)"
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------ run-dir lock
def test_two_trainings_into_one_directory(tmp_path):
    run = tmp_path / "r"
    first = _start_child(tmp_path, TINY + ["--epochs", "1", "--out", run], pause=1, sleep=60)
    second = subprocess.run([sys.executable, "-m", "snnfast.train", *TINY, "--seed", "1",
                             "--epochs", "1", "--out", str(run)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert "is in use by another training" in second.stderr
    # a lock of a dead process never blocks: flock ends with its process, even on SIGKILL
    first.kill()
    first.communicate(timeout=60)
    assert (run / ".lock").exists()
    third = subprocess.run([sys.executable, "-m", "snnfast.train", *TINY, "--seed", "1",
                            "--epochs", "1", "--out", str(run)], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert ConvSNN.load(run / "model.h5", backend="numpy").config.seed == 1


# ------------------------------------------------------------------------ model integrity
def _flip_byte(path, dataset, index=5):
    """Flip one byte of ``dataset``'s stored data in the file itself."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    assert offset is not None
    with open(path, "r+b") as fh:
        fh.seek(offset + index)
        b = fh.read(1)
        fh.seek(offset + index)
        fh.write(bytes([b[0] ^ 0x40]))


def _checkpoint(tmp_path):
    m = ConvSNN("default", backend="numpy", batch_size=8)
    X = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    y = np.arange(16) % 10
    m.fit(X, y, X[:8], y[:8], epochs=1)
    path = tmp_path / "ck.h5"
    m.save(path, checkpoint=True)
    return path


def _datasets(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def test_a_flipped_byte_in_any_array_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    names = _datasets(path)
    assert {f"params/{k}" for k in PARAM_SHAPES} <= set(names) and "optimizer/v/W1" in names
    raw = path.read_bytes()
    for name in names:
        path.write_bytes(raw)
        _flip_byte(path, name)
        with pytest.raises(ValueError, match=f"ck.h5: array /{name} does not match its "
                                             "SHA-256 digest"):
            ConvSNN.load(path, backend="numpy")
    path.write_bytes(raw)
    ConvSNN.load(path, backend="numpy")


def test_the_cli_tools_refuse_a_damaged_model(tmp_path, capsys):
    from snnfast import energy, evaluate, export
    path = tmp_path / "m.h5"
    _model_file(path)
    _flip_byte(path, "params/W2")
    assert evaluate.main([str(path)]) == 1
    assert "does not match its SHA-256 digest" in capsys.readouterr().err
    assert energy.main([str(path), "--samples", "1"]) == 1
    assert "does not match its SHA-256 digest" in capsys.readouterr().err
    assert export.main([str(path), str(tmp_path / "o.nir")]) == 1
    assert "does not match its SHA-256 digest" in capsys.readouterr().err


def _strip_digests(path):
    """Make ``path`` what the code before digests wrote (the same layout without them)."""
    with h5py.File(path, "r+") as f:
        del f.attrs["array_digests"]
        for name in _datasets(path):
            del f[name].attrs["sha256"]


def test_files_without_digests_still_load(tmp_path):
    path = _checkpoint(tmp_path)
    ref = ConvSNN.load(path, backend="numpy")
    _strip_digests(path)
    old = ConvSNN.load(path, backend="numpy")
    _params_equal(ref, old)
    assert old.step_ == ref.step_


def test_a_removed_digest_is_refused(tmp_path):
    path = tmp_path / "m.h5"
    _model_file(path)
    with h5py.File(path, "r+") as f:
        del f["params/b1"].attrs["sha256"]
    with pytest.raises(ValueError, match="array /params/b1 has no digest"):
        ConvSNN.load(path, backend="numpy")


def test_weights_beyond_the_sane_range_are_refused(tmp_path):
    path = tmp_path / "m.h5"
    _model_file(path)
    _strip_digests(path)                  # a file without digests: the range still guards it
    with h5py.File(path, "r+") as f:
        f["params/W1"][0, 0] = np.float32(1.6e29)
    with pytest.raises(ValueError, match="W1 has a value of magnitude 1.6e\\+29, beyond"):
        ConvSNN.load(path, backend="numpy")
    big = {k: np.zeros(s, np.float32) for k, s in PARAM_SHAPES.items()}
    big["W2"][3, 1] = -2 * MAX_ABS_WEIGHT
    with pytest.raises(ValueError, match="W2 has a value of magnitude"):
        ConvSNN("nir", backend="numpy").set_params(big)


# ------------------------------------------------------------------------ one config check
@pytest.mark.parametrize("kw, match", [(dict(beta_c=-5.0), "beta_c .* must be in \\[0, 1\\)"),
                                       (dict(beta_h=1.0), "beta_h"),
                                       (dict(thr_c=0.0), "thr_c .* must be > 0"),
                                       (dict(thr_h=-0.8), "thr_h")])
def test_config_refuses_invalid_lif_values(kw, match):
    with pytest.raises(ValueError, match=match):
        ConvSNN("default", backend="numpy", **kw)


def test_every_tool_refuses_a_stored_beta_c_of_minus_5(tmp_path, capsys):
    from snnfast import energy, evaluate, export
    path = tmp_path / "m.h5"
    _model_file(path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["beta_c"] = -5.0
        f.attrs["config"] = json.dumps(cfg)
    with pytest.raises(ValueError, match="beta_c"):
        ConvSNN.load(path, backend="numpy")
    for tool, args in ((evaluate, []), (energy, ["--samples", "1"]),
                       (export, [str(tmp_path / "o.nir")])):
        assert tool.main([str(path)] + args) == 1, tool.__name__
        assert "beta_c (the LIF decay) must be in [0, 1)" in capsys.readouterr().err


# ------------------------------------------------------------------------ resume, sizes
def test_resume_of_a_finished_run_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    assert train_cli.main(TINY + ["--epochs", "2", "--out", str(run)]) == 0
    before = (run / "model.h5").read_bytes()
    for extra, why in (([], "is complete (2 of 2 epochs"),
                       (["--epochs", "3"], "trained with --epochs 2")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            train_cli.main(TINY + ["--out", str(run), "--resume"] + extra)
        assert exc.value.code == 2 and why in capsys.readouterr().err
    assert (run / "model.h5").read_bytes() == before


@pytest.mark.parametrize("extra, why", [(["--epochs", "1e20"], "expected an integer"),
                                        (["--epochs", str(10 ** 20)], "epochs must be <="),
                                        (["--batch-size", "10000000"], "batch_size must be <=")])
def test_unbounded_train_sizes_are_refused_without_a_run_dir(tmp_path, capsys, extra, why):
    run = tmp_path / "new" / "r"
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--out", str(run)] + extra)
    assert exc.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_refused_run_leaves_no_run_dir(tmp_path, capsys):
    run = tmp_path / "new" / "r"
    with pytest.raises(SystemExit):         # refused after the directory was made
        train_cli.main(TINY + ["--out", str(run), "--val-size", "1000"])
    assert "leaves no training images" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("extra, why", [(["--depths", "100000"], "--depths must be integers in"),
                                        (["--width", "100000"], "--width must be <="),
                                        (["--epochs", "100000"], "--epochs <=")])
def test_unbounded_convert_sizes_are_refused(tmp_path, capsys, extra, why):
    from snnfast import convert
    out = tmp_path / "ttfs"
    assert convert.main(["--out", str(out), "--no-progress"] + extra) == 2
    assert why in capsys.readouterr().err
    assert not out.exists()
