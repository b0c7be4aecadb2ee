"""The benchmark scripts run and report what they claim (tiny sizes; no timing is checked)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load_bench(name):
    """Import the module ``name`` of bench/ (its scripts import each other by plain name)."""
    import importlib
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_alternate_times_runs_in_turn():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = _load_bench("_timing").alternate_times(fns, 3)
    assert calls == ["a", "b"] * 4                   # one warm-up round, then 3 timed rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_throughput_script_reports_paired_ratios(tmp_path):
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--presets", "default",
                        "--train-images", "128", "--test-images", "256", "--repeats", "2",
                        "--no-baseline", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "[default] training  : kernels" in r.stdout and "numpy" in r.stdout
    d = json.loads(out.read_text())["presets"]["default"]
    for kind, n in (("train", "n_train"), ("infer", "n_infer")):
        runs = d[f"{kind}_speedup_runs"]
        assert len(runs) == 2 and d[f"{kind}_speedup"] == pytest.approx(sum(runs) / 2)
        # each ratio is the img/s ratio of one kernels run and the NumPy run after it
        k, nb = d["kernels"], d["numpy"]
        for i, ratio in enumerate(runs):
            expect = (k[n] / k[f"{kind}_times_s"][i]) / (nb[n] / nb[f"{kind}_times_s"][i])
            assert math.isclose(ratio, expect, rel_tol=1e-12)
    assert d["kernels"]["n_train"] == 128 and d["numpy"]["n_train"] == 64
    # the verdicts follow the figures they judge, and are printed
    for kind in ("train", "infer"):
        t = d["targets"][kind]
        assert t["ratio"] == d[f"{kind}_speedup"] and t["img_s"] == d["kernels"][f"{kind}_img_s"]
        assert t["ratio_met"] == (t["ratio"] >= 5.0)
        assert t["img_s_met"] == (t["img_s"] >= t["img_s_target"])
        assert t["img_s_target"] in ({"train": 15000, "infer": 30000}[kind] * f
                                     for f in (0.5, 1.0))
    assert "[default] targets   : training x" in r.stdout


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_peers_script_measures_snnfast_and_reports_missing_peers(tmp_path):
    out = tmp_path / "peers.json"
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--train-images", "64",
                        "--test-images", "64", "--repeats", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    for peer in ("snntorch", "spikingjelly"):
        there = _importable("torch") and _importable(peer)
        assert (f"{peer}: skipped" in r.stdout) != there
        assert (peer in d["tools"]) == there
    for name, tool in d["tools"].items():
        for kind in ("training", "inference"):
            s = tool[kind]
            ref = d["tools"]["snnfast default"][kind]["times_s"]
            # every ratio is that of one round: snnfast default's time over this tool's
            assert [math.isclose(x, t / rt, rel_tol=1e-12)
                    for x, t, rt in zip(s["ratio_runs"], s["times_s"], ref)] == [True, True]
            assert f"{kind:9s} {name:16s}" in r.stdout
    assert d["data"] in ("mnist", "synthetic")
    assert d["tools"]["snnfast default"]["training"]["snnfast_over_this"] == 1.0


def _lif_reference(x, reset):
    """Spikes of snnfast's LIF, v = 0.9 v + x, spike iff v > 0.8, then reset."""
    v, out = np.zeros(x.shape[1]), []
    for xt in x:
        v = 0.9 * v + xt
        z = v > 0.8
        v = np.where(z, 0.0 if reset == "zero" else v - 0.8, v)
        out.append(z)
    return np.array(out)


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
@pytest.mark.parametrize("peer", ["snntorch", "spikingjelly", "norse"])
def test_peer_networks_use_snnfasts_neuron(peer):
    # the comparison is only fair if each peer's LIF layers are snnfast's: same decay,
    # threshold, reset and reset timing (checked spike for spike on random currents)
    pytest.importorskip("torch")
    pytest.importorskip(peer)
    import torch
    peers = _load_bench("peers")
    torch_, make, _ = peers._peer(peer, 1)
    net = make()
    x = np.random.default_rng(0).uniform(0, 0.6, (40, 7)).astype(np.float32)
    with torch.no_grad():
        for layer, reset in ((net.lif1, "zero"), (net.lif2, "subtract")):
            if peer == "spikingjelly":
                layer.step_mode = "s"
                layer.reset()
                got = [layer(torch.from_numpy(xt)).numpy() > 0 for xt in x]
            else:
                state, got = layer.init_leaky() if peer == "snntorch" else None, []
                for xt in x:
                    z, state = layer(torch.from_numpy(xt), state)
                    got.append(z.numpy() > 0)
            want = _lif_reference(x.astype(np.float64), reset)
            assert want.sum() > 20
            assert np.array_equal(np.array(got), want), (peer, reset)


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_nir_runtime_script_reports_the_compiled_backend_and_both_summation_modes(tmp_path):
    out = tmp_path / "nir.json"
    r = subprocess.run([sys.executable, str(BENCH / "nir_runtime.py"), "--batch", "2", "--steps",
                        "3", "--repeats", "2", "--sums", "ordered", "blas", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["threads"] == 1 and "threads 1;" in r.stdout and "load average" in r.stdout
    for mode, label in (("compiled", "snnfast compiled"), ("ordered", "numpy sums=ordered"),
                        ("blas", "numpy sums=blas")):
        times = d["batches"]["2"][mode]["times_s"]
        assert len(times) == 2
        assert d["batches"]["2"][mode]["samples_per_s"] == pytest.approx(2 / (sum(times) / 2))
        assert label in r.stdout


def test_engine_bench_reports_paired_ratios(tmp_path):
    out = tmp_path / "engine.json"
    r = subprocess.run([sys.executable, str(BENCH / "engine.py"), "--images", "16",
                        "--ref-images", "4", "--batch", "8", "--repeats", "2", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["threads"] == 1 and "threads 1" in r.stdout
    assert d["default"]["same_logits"] is True           # engine == tuned kernels, checked
    for key, other in (("vs_tuned", "tuned"), ("vs_reference", "reference")):
        res = d["default"][key]
        runs = res[f"engine/{other}"]["runs"]
        e, o = res["engine"], res[other]
        for i, ratio in enumerate(runs):   # each ratio: img/s of one round's two runs
            expect = (e["n_images"] / e["times_s"][i]) / (o["n_images"] / o["times_s"][i])
            assert math.isclose(ratio, expect, rel_tol=1e-12)
        assert e["n_images"] == 16 and o["n_images"] == (16 if other == "tuned" else 4)
    assert set(d["deep_cnn"]["rates"]) == {"input", "lif1", "lif2", "hidden"}
    assert "[deep_cnn] engine" in r.stdout and "0.95x the tuned" in r.stdout


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_nir_runtime_script_times_or_skips_the_peers(tmp_path):
    """``--peers``: an absent peer is reported as skipped; a present one is timed beside snnfast
    with a ratio per round."""
    out = tmp_path / "nir.json"
    r = subprocess.run([sys.executable, str(BENCH / "nir_runtime.py"), "--batch", "2", "--steps",
                        "2", "--repeats", "1", "--sums", "blas", "--peers", "snntorch", "--json",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["threads"] == 2 and "blas" in d["batches"]["2"]
    if "snntorch" in d["versions"]:
        assert len(d["batches"]["2"]["blas/snntorch"]) == 1 and "vs snntorch" in r.stdout
        assert len(d["batches"]["2"]["compiled/snntorch"]) == 1
        assert d["vs_snntorch_outputs"]["2"]["total"] == 2 * 2 * 10
    else:
        assert "snntorch: skipped" in r.stdout


def test_build_comparison_ratio_pairs_neighbouring_runs():
    tp = _load_bench("throughput")
    def runs(train, infer):
        return [{"train_img_s": t, "infer_img_s": i} for t, i in zip(train, infer)]
    this = runs([90.0, 50.0, 99.0], [200.0, 100.0, 300.0])
    ref = runs([100.0, 50.0, 100.0], [200.0, 400.0, 300.0])
    r = tp.ratio_summary(this, ref, "train", 0.95)
    assert r["ratios"] == [0.9, 1.0, 0.99] and r["ratio"] == 0.99 and r["met"]
    assert r["img_s"] == 90.0 and r["ref_img_s"] == 100.0 and r["target"] == 0.95
    r = tp.ratio_summary(this, ref, "infer", 0.95)
    assert r["ratios"] == [1.0, 0.25, 1.0] and r["ratio"] == 1.0 and r["met"]
    assert not tp.ratio_summary(this[:1], ref[:1], "train", 0.95)["met"]      # 0.9 < 0.95
    assert tp.ratio_summary(this[:1], ref[:1], "train", 0.9)["met"]
    # an even number of pairs: the mean of the middle two
    assert tp.ratio_summary(this[:2], ref[:2], "train", 0.95)["ratio"] == 0.95


def test_baseline_directory_is_reused_or_refused_never_overwritten(tmp_path):
    tp = _load_bench("throughput")
    sha, other = "a" * 40, "b" * 40
    assert tp.baseline_state(tmp_path / "new", sha) == "export"
    (tmp_path / "empty").mkdir()
    assert tp.baseline_state(tmp_path / "empty", sha) == "export"
    d = tmp_path / "d"
    d.mkdir()
    (d / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="holds no baseline build"):
        tp.baseline_state(d, sha)
    (d / tp.BASELINE_STAMP).write_text(sha + "\n")             # exported, build not finished
    assert tp.baseline_state(d, sha) == "build"
    (d / tp.BASELINE_STAMP).write_text(sha + " built\n")
    assert tp.baseline_state(d, sha) == "ready"
    with pytest.raises(SystemExit, match=f"holds revision {sha[:12]}, not {other[:12]}"):
        tp.baseline_state(d, other)


def _git_head():
    r = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_throughput_baseline_options_are_checked_before_any_build(tmp_path):
    tp = _load_bench("throughput")
    assert tp.BASELINE_REV == "23f1210"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cases = [(["--baseline", "HEAD", "--no-baseline"], "not allowed with"),
             (["--native-build", str(tmp_path / "n"), "--baseline", "HEAD"],
              "--native-build measures only that comparison"),
             (["--no-baseline", "--baseline-dir", str(tmp_path / "b")], "nothing would be built"),
             (["--no-baseline", "--cpu-time"], "--cpu-time is an option of the comparisons")]
    if _git_head():
        cases += [(["--baseline", "no-such-revision-x"],
                   "--baseline: 'no-such-revision-x' is not a commit of the git repository"),
                  (["--baseline", "HEAD", "--baseline-dir", str(foreign)],
                   "holds no baseline build of this script")]
    for args, msg in cases:
        r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--presets", "seed",
                            *args], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
        assert "building" not in r.stdout
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "n").exists()
    if _git_head():
        assert tp.baseline_sha("HEAD") == _git_head()


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_build_comparison_runs_each_tree_in_its_own_subprocess(tmp_path, capsys):
    # the machinery of --baseline and --native-build on two names for this tree (no build):
    # alternating subprocesses that import the given tree, their ratios paired in order
    import argparse
    tp = _load_bench("throughput")
    root = BENCH.parent
    args = argparse.Namespace(repeats=2, train_images=64, test_images=64, threads=1,
                              cpu_time=True)
    out = tp.compare_builds("seed", {"this": root, "other": root}, args, 0.95)
    for kind in ("train", "infer"):
        ratios = [a[f"{kind}_img_s"] / b[f"{kind}_img_s"]
                  for a, b in zip(out["runs"]["this"], out["runs"]["other"])]
        assert out[kind]["ratios"] == ratios and len(ratios) == 2
    assert all(r["threads"] == 1 and Path(r["file"]).resolve().parent.parent == root.resolve()
               for rs in out["runs"].values() for r in rs)
    text = capsys.readouterr().out
    assert "[seed] training  : this" in text and "thread CPU time" in text


def test_native_build_copies_sources_not_build_outputs(tmp_path):
    tp = _load_bench("throughput")
    src = tmp_path / "src" / "pkg"
    (src / "_isa" / "v3").mkdir(parents=True)
    (src / "a.py").write_text("x = 1\n")
    (src / "_build_info.py").write_text("MODE = 'dispatch'\n")
    for out in ("m.cpython-311-x86_64-linux-gnu.so", "m.c", "_isa/v3/m.so"):
        (src / out).write_text("binary")
    dst = tmp_path / "dst"
    tp._sync_tree(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "pkg/a.py"]
    copied = dst / "pkg" / "a.py"
    mtime = copied.stat().st_mtime_ns
    tp._sync_tree(src, dst)                     # unchanged: not copied again (no rebuild)
    assert copied.stat().st_mtime_ns == mtime
    (src / "a.py").write_text("x = 2\n")
    tp._sync_tree(src, dst)
    assert copied.read_text() == "x = 2\n"


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_native_build_refuses_the_source_tree_itself():
    r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--native-build",
                        str(BENCH.parent)], capture_output=True, text=True, timeout=300,
                       cwd=BENCH.parent)
    assert r.returncode != 0
    assert ("DIR must not be the source tree itself" in r.stderr
            or "is not a default (dispatched) build" in r.stderr), r.stderr


def _dyadic_weights(net, seed):
    """Weights that are multiples of 1/16: every sum of them and of integer inputs is exact in
    float32 in any order, so the comparison below does not depend on a summation order."""
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(-5, 7, s) / 16).astype(np.float32)
            for k, s in net.param_shapes().items()}


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
@pytest.mark.parametrize("encoder", ["hybrid", "direct"])
def test_snntorch_network_of_a_description_is_snnfasts(encoder):
    # bench/peers.py --config compares snnfast with snnTorch on the same network: with the
    # same weights, snnTorch's network must give the engine's outputs exactly
    pytest.importorskip("torch")
    pytest.importorskip("snntorch")
    import snntorch
    import torch
    from snnfast import engine
    from snnfast.network import (IF, LIF, AvgPool2d, Conv2d, Direct, Flatten, Hybrid, Linear,
                                 MaxPool2d, Network, RateReadout, SumPool2d)
    peers = _load_bench("peers")
    T = 6
    enc = Hybrid(T=T, n_det=T) if encoder == "hybrid" else Direct(T=T)   # no random coding
    net = Network((2, 10, 9), [
        Conv2d(out_channels=4, kernel_size=3, padding=1), LIF(), SumPool2d(2),
        Conv2d(out_channels=5, kernel_size=2), IF(period=2, phase=1), MaxPool2d(2),
        AvgPool2d(1), Flatten(), Linear(out_features=12, bias=False),
        LIF(decay=0.5, threshold=0.5, reset="subtract", drive="cumulative", period=2,
            phase=1, scale=0.5),
        RateReadout(norm="steps"), Linear(out_features=3)], encoder=enc)
    w = _dyadic_weights(net, 2)
    rng = np.random.default_rng(2)
    if encoder == "hybrid":
        X = rng.integers(0, 256, (16, 2, 10, 9)).astype(np.uint8)
    else:
        X = rng.integers(0, 2, (16, T, 2, 10, 9)).astype(np.float32)
    want = engine.forward(net, w, X, n_threads=1)
    assert all(c.sum() > 0 for k, c in want["counts"].items() if k in net.spiking_layers())
    torch.manual_seed(0)
    model = peers.snntorch_net(torch, snntorch, net)
    peers.set_snntorch_weights(model, net, w)
    x = torch.from_numpy(X).float()
    # im2col + matrix product convolutions (oneDNN or NNPACK may pick Winograd's algorithm,
    # whose transforms round)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), \
            torch.backends.nnpack.flags(enabled=False):
        got = model(x / 255 if encoder == "hybrid" else x, None).numpy()
    assert len(set(want["output"][:, 0].tolist())) > 3       # the outputs depend on the input
    np.testing.assert_array_equal(got, want["output"])


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_peers_script_config_mode(tmp_path):
    # --config: snnfast (and snnTorch where installed) on a description's network
    out = tmp_path / "peers.json"
    example = BENCH.parent / "examples" / "event-frames.toml"
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--config", str(example),
                        "--train-images", "64", "--test-images", "16", "--repeats", "1",
                        "--threads", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    there = _importable("torch") and _importable("snntorch")
    assert ("snntorch: skipped" in r.stdout) != there
    assert set(d["tools"]) == ({"snnfast", "snntorch"} if there else {"snnfast"})
    assert d["data"] == "synthetic event frames" and d["threads"] == 2
    assert d["network"]["input"] == [2, 34, 34]
    for kind in ("training", "inference"):
        assert f"{kind:9s} snnfast" in r.stdout
        assert d["tools"]["snnfast"][kind]["snnfast_over_this"] == 1.0
    assert math.isfinite(d["tools"]["snnfast"]["last_train_loss"])
    assert "chance: ln 10 = 2.30" in r.stdout and "threads 2" in r.stdout


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not shipped with this install")
def test_peers_script_config_mode_usage_errors(tmp_path):
    odd = tmp_path / "odd.toml"
    odd.write_text((BENCH.parent / "examples" / "event-frames.toml").read_text()
                   .replace("input = [2, 34, 34]", "input = [3, 34, 34]"))
    bad_lr = tmp_path / "bad_lr.toml"
    bad_lr.write_text((BENCH.parent / "examples" / "event-frames.toml").read_text()
                      .replace("epochs = 10", "epochs = 10\nlr = -1.0"))
    frames = tmp_path / "f.npz"
    np.savez(frames, X_train=np.zeros((70, 8, 2, 34, 34), np.uint8), y_train=np.zeros(70, int),
             X_test=np.zeros((5, 8, 2, 34, 34), np.uint8), y_test=np.full(5, 12))
    for args, msg in (([str(odd)], "no built-in data for a Direct input of shape [3, 34, 34]"),
                      ([str(odd), "--data", str(frames)], "samples of shape (8, 2, 34, 34), "
                                                          "the network takes (8, 3, 34, 34)"),
                      ([str(tmp_path / "absent.toml")], "--config:"),
                      ([str(odd), "--accuracy"], "--accuracy is for the presets"),
                      ([str(bad_lr)], "--config: training: lr must be > 0, got -1")):
        r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--config", *args],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    example = BENCH.parent / "examples" / "event-frames.toml"
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--config", str(example),
                        "--data", str(frames)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "labels up to 12, the network has 10 outputs" in r.stderr
