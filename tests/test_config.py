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


@pytest.mark.parametrize("user_env,expect", [
    ({}, (None, "100000", "3")),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None, None)),
    ({"GOMP_SPINCOUNT": "7"}, (None, "7", "3")),
    ({"KMP_BLOCKTIME": "0"}, (None, "100000", "0")),
])
def test_openmp_wait_default_yields_to_the_user(user_env, expect):
    # workers spin briefly by default (see snnfast/__init__.py); the user's setting wins
    import os
    env = {k: v for k, v in os.environ.items() if k not in _WAIT_VARS}
    env.update(user_env)
    code = f"import os, snnfast; print([os.environ.get(k) for k in {_WAIT_VARS!r}])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(list(expect))
