"""Every script in examples/ runs on small synthetic data (``--small``) and says what it did."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="needs the source checkout")


def _run(script, *args, cwd):
    env = dict(os.environ, SNNFAST_EXAMPLES_SMALL="1")
    # the checkout's snnfast, also when it is not installed (tests run from the checkout)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    res = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == {"quickstart.py", "train_evaluate.py", "convert_ttfs.py",
                       "count_energy.py", "export_nir.py", "train_network.py"}


def test_quickstart_is_the_readme_example(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = (EXAMPLES / "quickstart.py").read_text()
    assert f"```python\n{code}```" in readme
    out = _run("quickstart.py", cwd=tmp_path)
    assert "'accuracy': " in out and "uJ per inference (horowitz45_fp32" in out
    assert (tmp_path / "model.h5").is_file()


def test_train_evaluate(tmp_path):
    out = _run("train_evaluate.py", "--out", str(tmp_path), cwd=tmp_path)
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.5                      # ten classes: chance is 0.1
    assert (tmp_path / "model.h5").is_file()
    assert "the loaded model predicts the same classes" in out


def test_train_network(tmp_path):
    out = _run("train_network.py", "--out", str(tmp_path), "--epochs", "2", cwd=tmp_path)
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.3                      # ten classes: chance is 0.1
    assert (tmp_path / "cnn.h5").is_file()
    assert "the loaded model predicts the same classes" in out


def test_convert_ttfs(tmp_path):
    out = _run("convert_ttfs.py", cwd=tmp_path)
    relu, snn = re.search(r"ReLU accuracy ([0-9.]+), TTFS accuracy ([0-9.]+)", out).groups()
    assert relu == snn                    # the conversion is exact
    diff = float(re.search(r"\|TTFS - ReLU\| = ([0-9.e+-]+)", out).group(1))
    assert diff < 1e-9
    assert "spikes per neuron and image" in out


def test_count_energy(tmp_path):
    out = _run("count_energy.py", "--samples", "50", cwd=tmp_path)
    assert "ConvSNN on 50 test images" in out
    assert re.search(r"multiply-accumulates per inference: [0-9.]+ uJ", out)


def test_export_nir(tmp_path):
    path = tmp_path / "m.nir"
    out = _run("export_nir.py", "--out", str(path), cwd=tmp_path)
    assert path.is_file()
    assert "same class for 100.0%" in out  # the nir preset exports exactly
