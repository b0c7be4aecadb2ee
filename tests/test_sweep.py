"""Tests of ``python -m snnfast.sweep``: seed statistics and Optuna studies on tiny runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snnfast import sweep, train
from snnfast.convsnn import PARAM_SHAPES, ConvSNN

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--synthetic", "60", "--val-size", "12", "--batch-size", "16", "--backend", "numpy",
        "--no-progress", "--no-plots", "--epochs", "1"]
TOML = """
[study]
name = "tiny"
trials = 8
sampler = "random"
objective = "{objective}"

[train]
synthetic = 60
val_size = 12
epochs = 1
backend = "numpy"
no_plots = true

[params]
lr = {{ type = "float", low = 1e-4, high = 1e-2, log = true }}
batch_size = {{ type = "categorical", choices = [16, 32] }}
thr_h = {{ type = "float", low = 0.5, high = 1.0 }}
T = {{ type = "int", low = 4, high = 10, step = 2 }}
"""


def _toml(tmp_path, objective="energy", text=None):
    path = tmp_path / "sweep.toml"
    path.write_text(text if text is not None else TOML.format(objective=objective))
    return path


def _sweep_cmd(toml, out, *extra):
    return [sys.executable, "-m", "snnfast.sweep", str(toml), "--out", str(out),
            "--threads", "1", "--heartbeat", "1", *extra]


def _study(out):
    import optuna
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")


def _figures(run_dir):
    """The run's validation accuracy, energy and SynOps, read from its own files."""
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    e = json.loads((Path(run_dir) / "energy.json").read_text())
    so = e["result"]["SynapticOperations"]
    return (max(h["val_acc"] for h in m["history"]), e["energy"][0]["snn_uJ"],
            so["Effective_MACs"] + so["Effective_ACs"])


# ----------------------------------------------------------------------------- --seeds
def test_seeds_report_mean_and_sample_std_of_the_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert sweep.main(["--seeds", "3", "--out", str(out), "--threads", "1"] + TINY) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "seeds.json").read_text())
    acc, final, energy = [], [], []
    for s in range(3):
        run = out / f"seed-{s}"
        m = json.loads((run / "metrics.json").read_text())
        assert m["seed"] == s and m["complete"]
        acc.append(m["final"]["test_acc_best_val_model"])
        final.append(m["history"][-1]["test_acc"])
        energy.append(json.loads((run / "energy.json").read_text())["energy"][0]["snn_uJ"])
    st = summary["statistics"]
    for key, vals in (("test_acc_best_val_model", acc), ("test_acc_final", final),
                      ("energy_uJ", energy)):
        assert st[key]["n"] == 3
        assert st[key]["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert st[key]["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9, abs=1e-15)
    assert len(set(energy)) > 1          # the seeds are different runs
    assert f"{100 * np.mean(acc):.2f} +- {100 * np.std(acc, ddof=1):.2f} %" in printed
    assert (out / "seeds.csv").read_text().count("\n") == 4
    # seed 1's run is the run `python -m snnfast.train --seed 1` makes
    direct = tmp_path / "direct"
    assert train.main(TINY + ["--seed", "1", "--threads", "1", "--out", str(direct)]) == 0
    a = ConvSNN.load(out / "seed-1" / "model.h5", backend="numpy").params
    b = ConvSNN.load(direct / "model.h5", backend="numpy").params
    for k in PARAM_SHAPES:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # re-running reuses the complete runs: nothing is trained again
    monkeypatch.setattr(train, "main", lambda argv=None: pytest.fail("retrained a seed"))
    assert sweep.main(["--seeds", "3", "--out", str(out), "--threads", "1"] + TINY) == 0
    assert json.loads((out / "seeds.json").read_text())["statistics"] == st


def test_seeds_refuse_bad_train_options_and_a_foreign_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--seeds", "2", "--out", str(tmp_path / "a"), "--epochs", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--seeds", "2", "--out", str(tmp_path / "a"), "--seed", "3"])
    assert exc.value.code == 2 and "--seed is set by the sweep" in capsys.readouterr().err
    out = tmp_path / "b"
    assert sweep.main(["--seeds", "1", "--out", str(out), "--threads", "1"] + TINY) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:       # seed-0 holds a default-preset run
        sweep.main(["--seeds", "1", "--preset", "nir", "--out", str(out)] + TINY)
    assert exc.value.code == 2 and "holds preset 'default'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- studies
def test_two_worker_sqlite_study_completes_and_plots_its_front(tmp_path):
    out = tmp_path / "st"
    res = subprocess.run(_sweep_cmd(_toml(tmp_path), out, "--workers", "2"), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 8 and {t["state"] for t in trials} == {"COMPLETE"}
    assert len({t["worker"] for t in trials}) == 2        # both workers ran trials
    points = {}
    for t in trials:      # the objectives are the run directory's own figures
        val, energy, _ = _figures(t["run_dir"])
        assert (t["val_acc"], t["objective_2"]) == (val, energy)
        points[t["number"]] = (val, energy)
    # the front is the non-dominated set (max accuracy, min energy), recomputed here
    front = {n for n, (a, e) in points.items()
             if not any(a2 >= a and e2 <= e and (a2, e2) != (a, e) for a2, e2 in points.values())}
    best = json.loads((out / "best.json").read_text())["pareto_front"]
    assert {b["number"] for b in best} == front
    assert all(Path(b["model"]).is_file() for b in best)
    assert "Pareto front" in res.stdout and "pareto_front.png" in res.stdout


def _wait_for(cond, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail("timed out")


def test_killed_workers_lose_no_finished_trial_and_the_study_resumes(tmp_path):
    import optuna
    S = optuna.trial.TrialState
    out = tmp_path / "st"
    toml = _toml(tmp_path, objective="synops")
    proc = subprocess.Popen(_sweep_cmd(toml, out, "--workers", "2"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids = _wait_for(lambda: (out / "workers.json").is_file()
                         and json.loads((out / "workers.json").read_text())["pids"])

        def running_trial_of_a_worker():    # two trials done, one worker in the middle of one
            try:
                trials = _study(out).get_trials()
            except Exception:               # the study is not created yet
                return None
            if sum(t.state == S.COMPLETE for t in trials) < 2:
                return None
            return next((t for t in trials if t.state == S.RUNNING and
                         int(t.user_attrs.get("worker", ":0").split(":")[1]) in pids), None)
        victim = _wait_for(running_trial_of_a_worker)
        os.kill(int(victim.user_attrs["worker"].split(":")[1]), signal.SIGKILL)
        finished = {t.number: t.values for t in _study(out).get_trials(states=(S.COMPLETE,))}
        # then the whole machine goes down: the command and its other worker too
        proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.kill()
        proc.wait()
    assert finished and len(finished) < 8
    res = subprocess.run(_sweep_cmd(toml, out), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(out).get_trials()
    complete = {t.number: t for t in trials if t.state == S.COMPLETE}
    assert len(complete) == 8
    for n, values in finished.items():          # nothing finished was lost or redone
        assert complete[n].values == values
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == S.FAIL and "error" not in killed.user_attrs
    # its parameters were tried again, by a trial that completed
    assert any(t.params == victim.params for t in complete.values())
    for t in complete.values():
        assert (t.values[0], t.values[1]) == _figures(t.user_attrs["run_dir"])[::2]
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 8


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, capsys):
    text = TOML.format(objective="energy").replace("trials = 8", "trials = 2").replace(
        'lr = { type = "float", low = 1e-4, high = 1e-2, log = true }',
        'lr = { type = "categorical", choices = [1e38] }').replace(    # diverges at once
        "[train]", "[train]\npreset = \"seed\"")
    out = tmp_path / "f"
    with np.errstate(all="ignore"):
        rc = sweep.main([str(_toml(tmp_path, text=text)), "--out", str(out), "--threads", "1"])
    assert rc == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "FAIL"]
    for t in trials:
        assert "training exited with code 1" in t["error"]
        assert "error: training" in (Path(t["run_dir"]) / "train.log").read_text()
    assert "no trial completed" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (("trials = 8", "trials = -1"), "[study] trials must be an integer >= 0"),
    (("objective = \"{objective}\"", "objective = \"speed\""), "objective = 'speed'"),
    (("T = {{", "bogus_field = {{ type = \"int\", low = 1, high = 2 }}\nT = {{"),
     "unknown ConvSNN option(s): bogus_field"),
    (("step = 2", "step = 2, lo = 3"), "[params] T: unknown key(s) lo"),
    (("low = 0.5, high = 1.0", "low = 1.5, high = 1.0"), "[params] thr_h: low 1.5 > high 1.0"),
    (("val_size = 12", "val_size = 0"), "needs a validation set"),
    (("epochs = 1", "epochs = 1\nout = \"x\""), "out is set by the sweep"),
    (("epochs = 1", "epochs = 0"), "the training options are not valid"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, change, message):
    text = TOML.replace(*change).format(objective="energy")
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(_toml(tmp_path, text=text)), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_missing_optuna_is_a_one_line_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)      # import optuna -> ImportError
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(_toml(tmp_path)), "--out", str(tmp_path / "o")])
    assert str(exc.value) == ("error: python -m snnfast.sweep SWEEP.toml needs Optuna, an "
                              "optional dependency: pip install 'snnfast[sweep]'")
    assert not (tmp_path / "o").exists()


def test_example_sweep_file_is_valid():
    from snnfast._study import load_sweep
    spec = load_sweep(ROOT / "examples" / "sweep.toml")
    assert spec["study"]["objective"] in ("energy", "synops") and spec["params"]


def test_train_set_reaches_the_config_and_guards_resume(tmp_path, capsys):
    run = tmp_path / "r"
    args = TINY + ["--threads", "1", "--out", str(run), "--set", "T=6", "--set", "reset_h=zero"]
    assert train.main(args) == 0
    cfg = ConvSNN.load(run / "model.h5", backend="numpy").config
    assert (cfg.T, cfg.reset_h) == (6, "zero")
    capsys.readouterr()
    resume = TINY + ["--threads", "1", "--out", str(run), "--resume", "--set", "T=8"]
    with pytest.raises(SystemExit) as exc:
        train.main(resume)
    assert exc.value.code == 2 and "T=6" in capsys.readouterr().err
    for bad, why in (([], "already holds a run"),
                     (["--set", "lr=0.1", "--lr", "0.2"], "lr is given twice"),
                     (["--set", "seed=3"], "use --seed"), (["--set", "T"], "FIELD=VALUE")):
        with pytest.raises(SystemExit) as exc:
            train.main(args + bad)
        assert exc.value.code == 2 and why in capsys.readouterr().err


def test_an_unusable_storage_is_a_one_line_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    assert sweep.main([str(_toml(tmp_path)), "--out", str(tmp_path / "o"), "--storage", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot open the study storage {url}")


def test_a_trial_orphaned_before_its_first_heartbeat_is_failed(tmp_path):
    # Optuna never finds a RUNNING trial without a heartbeat stale: a worker killed between
    # creating a trial and its first beat left the resumed study waiting for ever
    import optuna

    from snnfast import _study
    S = optuna.trial.TrialState
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}",
                                         heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    orphan = study.ask()            # RUNNING, no heartbeat, no mark: its process died
    live = study.ask()
    live.set_user_attr("beat", live.number)
    inherited = study.ask()         # a retry carries the mark of the trial it retries
    inherited.set_user_attr("beat", orphan.number)
    _study._fail_orphans(optuna, study, grace=3600)     # too young to be judged
    assert [t.state for t in study.get_trials()] == [S.RUNNING] * 3
    time.sleep(0.05)
    _study._fail_orphans(optuna, study, grace=0.01)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: S.FAIL, live.number: S.RUNNING, inherited.number: S.FAIL}
