import subprocess
import sys

import pytest

import snnfast
from snnfast import effective_n_threads


def test_openmp_compiled_in():
    # The CI machine has gcc with OpenMP: a serial build there is a defect.
    assert snnfast.openmp_enabled()


def test_thread_rule(monkeypatch):
    monkeypatch.delenv("SNNFAST_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert effective_n_threads() == 3
    monkeypatch.setenv("SNNFAST_NUM_THREADS", "1")
    assert effective_n_threads() == 1
    assert effective_n_threads(2) == 2
    monkeypatch.delenv("SNNFAST_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    import os
    cpus = len(os.sched_getaffinity(0))
    assert effective_n_threads() == cpus
    assert effective_n_threads(-1) == cpus


@pytest.mark.parametrize("bad", [0, 1.5, "2", True])
def test_thread_rule_rejects(bad):
    with pytest.raises((ValueError, TypeError)):
        effective_n_threads(bad)


def test_env_garbage_rejected(monkeypatch):
    monkeypatch.setenv("SNNFAST_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="SNNFAST_NUM_THREADS"):
        effective_n_threads()


def test_show_config_cli():
    out = subprocess.run([sys.executable, "-m", "snnfast", "--version", "--config"],
                         capture_output=True, text=True, check=True).stdout
    assert snnfast.__version__ in out
    assert "OpenMP:              enabled" in out
    assert "effective threads:" in out


_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def test_import_leaves_the_environment_alone():
    # a library must not change the OpenMP settings of the process and its children
    import os
    env = {k: v for k, v in os.environ.items() if k not in _WAIT_VARS}
    code = ("import os; before = dict(os.environ); import snnfast, snnfast.convsnn; "
            "snnfast.effective_n_threads(); print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "True"


@pytest.mark.parametrize("user_env,expect", [
    ({}, (None, "100000", "3")),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None, None)),
    ({"GOMP_SPINCOUNT": "7"}, (None, "7", "3")),
    ({"KMP_BLOCKTIME": "0"}, (None, "100000", "0")),
])
def test_cli_openmp_wait_default_yields_to_the_user(monkeypatch, user_env, expect):
    # the command-line tools let workers spin briefly (see snnfast._cli); the user's setting wins
    import os
    from snnfast._cli import openmp_wait_defaults
    for k in _WAIT_VARS:
        monkeypatch.setenv(k, "")       # recorded, so that teardown restores what was there
        monkeypatch.delenv(k)
    for k, v in user_env.items():
        monkeypatch.setenv(k, v)
    openmp_wait_defaults()
    assert tuple(os.environ.get(k) for k in _WAIT_VARS) == expect


def _cpus():
    import os
    return len(os.sched_getaffinity(0))


def test_thread_rule_keeps_usual_counts(monkeypatch):
    # the CPU count, 2x oversubscription, joblib-style negatives and the limit itself
    from snnfast._config import max_n_threads
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    cpus = _cpus()
    assert max_n_threads() == max(1024, 4 * cpus)
    for n in (1, cpus, 2 * cpus, max_n_threads()):
        assert effective_n_threads(n) == n
    assert effective_n_threads(-1) == cpus
    assert effective_n_threads(-2) == max(1, cpus - 1)
    assert effective_n_threads(-10**30) == 1
    monkeypatch.setenv("SNNFAST_NUM_THREADS", str(2 * cpus))
    assert effective_n_threads() == 2 * cpus


@pytest.mark.parametrize("n", [100_000, 2**31, 10**30])
def test_thread_rule_rejects_absurd_counts(n):
    # 100000 threads crashed the process inside OpenMP; >= 2**31 gave OverflowError
    from snnfast._config import max_n_threads
    with pytest.raises(ValueError, match=rf"n_threads={n} exceeds the limit of "
                                         rf"{max_n_threads()} threads"):
        effective_n_threads(n)
    with pytest.raises(ValueError, match="exceeds the limit"):
        effective_n_threads(max_n_threads() + 1)


@pytest.mark.parametrize("var", ["SNNFAST_NUM_THREADS", "OMP_NUM_THREADS"])
def test_thread_rule_rejects_absurd_environment(monkeypatch, var):
    monkeypatch.delenv("SNNFAST_NUM_THREADS", raising=False)
    monkeypatch.setenv(var, "100000")
    with pytest.raises(ValueError, match=f"{var}='100000' exceeds the limit"):
        effective_n_threads()
    assert effective_n_threads(2) == 2      # an explicit count does not read the variables


_KERNEL_THREAD_LIMIT_CODE = """
import numpy as np
from snnfast import _convsnn_kernels as K
a, g = np.zeros(8, np.float32), np.ones(8, np.float32)
x = np.zeros((1, 784), np.float32)
calls = [lambda n: K.ema_step(a, g, decay=0.5, n_threads=n),
         lambda n: K.adam_step(a, g, a.copy(), a.copy(), lr=1e-3, step=1, n_threads=n),
         lambda n: K.conv_patch_active(x, n_threads=n)]
for call in calls:
    for n in (100_000, 2**31):
        try:
            call(n)
            print("accepted", n)
        except ValueError as exc:
            print("ValueError" if "exceeds the limit" in str(exc) else exc)
print("changed" if a.any() else "unchanged")
"""


def test_every_kernel_entry_checks_the_thread_limit():
    # each entry point must go through effective_n_threads before any OpenMP region; in a
    # subprocess, since a regression crashes (100000 threads) rather than raises
    r = subprocess.run([sys.executable, "-c", _KERNEL_THREAD_LIMIT_CODE],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:-1] == ["ValueError"] * 6 + ["unchanged"]


def test_thread_rule_respects_omp_thread_limit():
    # OpenMP never runs more than OMP_THREAD_LIMIT threads: the rule reports what runs
    import os
    env = dict(os.environ, OMP_THREAD_LIMIT="3")
    env.pop("SNNFAST_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    code = "import snnfast; print(snnfast.effective_n_threads(8), snnfast.effective_n_threads(2))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["3", "2"]


@pytest.mark.parametrize("var,value,msg", [
    ("SNNFAST_NUM_THREADS", "0", "SNNFAST_NUM_THREADS='0' must be >= 1"),
    ("OMP_NUM_THREADS", "abc", "OMP_NUM_THREADS='abc' is not an integer"),
    ("SNNFAST_NUM_THREADS", "100000", "SNNFAST_NUM_THREADS='100000' exceeds the limit"),
])
def test_show_config_cli_reports_a_bad_thread_variable(var, value, msg):
    # the diagnostic must not crash on the setting it should diagnose
    import os
    env = {k: v for k, v in os.environ.items()
           if k not in ("SNNFAST_NUM_THREADS", "OMP_NUM_THREADS")}
    env[var] = value
    r = subprocess.run([sys.executable, "-m", "snnfast", "--config"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"effective threads:   INVALID: {msg}" in r.stdout
    assert "OpenMP:              enabled" in r.stdout          # the rest of the report
    errors = [line for line in r.stderr.splitlines() if line.startswith("python -m snnfast")]
    assert len(errors) == 1 and msg in errors[0]


def test_config_dict_reports_a_bad_thread_variable(monkeypatch):
    from snnfast._config import config_dict
    monkeypatch.setenv("SNNFAST_NUM_THREADS", "many")
    c = config_dict()
    assert c["effective_n_threads"] is None
    assert c["threads_error"] == "SNNFAST_NUM_THREADS='many' is not an integer"
    monkeypatch.delenv("SNNFAST_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    c = config_dict()
    assert c["effective_n_threads"] == _cpus() and c["threads_error"] is None
