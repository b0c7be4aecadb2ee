"""snnfast.energy.from_network: NeuroBench counts of any Network, checked against a naive
recount from the NumPy reference's spikes, and against from_convsnn on the default preset."""
import os
import sys

import numpy as np
import pytest

from snnfast import energy
from snnfast import reference as R
from snnfast.network import (IF, LIF, Conv2d, Direct, Flatten, Hybrid, Linear, Network,
                             RateReadout, SumPool2d, save)

sys.path.insert(0, os.path.dirname(__file__))  # the shared cases sit beside this file
from _cases import _preset_case  # noqa: E402

f32 = np.float32


def _net(encoder=None):
    return Network((2, 8, 7), [Conv2d(out_channels=3, kernel_size=3, stride=2, padding=1),
                               LIF(decay=0.75, threshold=0.5, reset="subtract"),
                               SumPool2d(2), Flatten(),
                               Linear(out_features=6, bias=False),
                               IF(threshold=1.0, period=2, phase=1, reset="halve"),
                               RateReadout(), Linear(out_features=4)],
                   encoder=encoder or Hybrid(T=6, n_det=3), name="small")


def _dyadic_weights(net, seed):
    """Weights that are multiples of 1/16 in [-1, 1], about a quarter exactly zero: every
    float32 sum of them is exact, so the recount's membranes do not depend on the order."""
    rng = np.random.default_rng(seed)
    w = {}
    for k, s in net.param_shapes().items():
        a = rng.integers(-12, 17, s) / 16.0
        a[rng.random(s) < 0.25] = 0.0
        w[k] = a.astype(f32)
    return w


def _matrix(net, i, w):
    """(M, mask): the weight of each (input, output) connection of layer i, and whether the
    connection exists (zero weights included), built by plain loops over outputs and taps."""
    layer = net[i]
    if type(layer).__name__ == "Linear":
        return w, np.ones(w.shape, bool)
    C, H, W = net.input_shape_of(i)
    O, OH, OW = net.shapes[i]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    M = np.zeros((C, H, W, O, OH, OW), f32)
    mask = np.zeros(M.shape, bool)
    for o in range(O):
        for oy in range(OH):
            for ox in range(OW):
                for c in range(C):
                    for ky in range(kh):
                        for kx in range(kw):
                            y, x = oy * sh - ph + ky, ox * sw - pw + kx
                            if 0 <= y < H and 0 <= x < W:
                                M[c, y, x, o, oy, ox] = w[o, c, ky, kx]
                                mask[c, y, x, o, oy, ox] = True
    return M.reshape(C * H * W, -1), mask.reshape(C * H * W, -1)


def _sumpool(x, k):
    """Sum pool (C, H, W) by loops."""
    C, H, W = x.shape
    out = np.zeros((C, H // k, W // k))
    for c in range(C):
        for y in range(H // k):
            for xx in range(W // k):
                out[c, y, xx] = x[c, y * k:(y + 1) * k, xx * k:(xx + 1) * k].sum()
    return out


def _recount(net, w, X):
    """The NeuroBench figures from the reference's spikes, counted one call at a time."""
    ref = R.forward(net, w, X, record=True)
    B, T = ref["input"].shape[:2]
    conv, lif1, lin, lif2, fc = net[0], net[1], net[4], net[5], net[7]
    Mc, mc = _matrix(net, 0, w[f"{conv.name}.weight"])
    Ml, ml = _matrix(net, 4, w[f"{lin.name}.weight"])
    tot = dict(macs=0, acs=0, dense=0, act_total=0, act_zero=0, mem=0)
    steps2 = lif2.update_steps(T)

    def add(x, M, mask):
        eff = sum(int(np.count_nonzero(M[j])) for j in np.flatnonzero(x))
        binary = bool(np.isin(x, (-1, 0, 1)).all())
        tot["acs" if binary else "macs"] += eff
        tot["dense"] += int(mask.sum())

    def membrane(cur, z, beta, thr, reset):
        v = np.zeros(cur.shape[1], f32)
        for c in range(len(cur)):
            pre = v.copy()
            v = v * f32(beta) + cur[c]
            s = z[c].astype(bool)
            v[s] = {"zero": 0, "subtract": v[s] - f32(thr), "halve": v[s] * f32(0.5)}[reset]
            tot["mem"] += len(v) if c == 0 else int(np.count_nonzero(v != pre))
            tot["act_total"] += len(v)
            tot["act_zero"] += int(np.count_nonzero(~s))

    for b in range(B):
        xin = ref["input"][b].reshape(T, -1)
        z1 = ref["spikes"][lif1.name][b].reshape(T, -1)
        z2 = ref["spikes"][lif2.name][b].reshape(T, -1)
        for t in range(T):
            add(xin[t], Mc, mc)
        membrane(xin.astype(f32) @ Mc + np.repeat(w[f"{conv.name}.bias"], Mc.shape[1] // 3),
                 z1, lif1.decay, lif1.threshold, lif1.reset)
        pooled = np.array([_sumpool(z1[t].reshape(net.shapes[1]), 2).reshape(-1)
                           for t in range(T)])
        prev, drives = 0, []
        for u in steps2:
            drives.append(pooled[prev:u + 1].sum(axis=0))
            prev = u + 1
            add(drives[-1], Ml, ml)
        membrane(np.array(drives, f32) @ Ml, z2[steps2], 1.0, lif2.threshold, lif2.reset)
        rates = ref["rates"][b]
        add(rates, w[f"{fc.name}.weight"], np.ones(w[f"{fc.name}.weight"].shape, bool))
    executed_ac = int(ref["counts"][conv.name].sum())            # input spikes: ACs
    executed_mac = int(ref["counts"][lin.name].sum()) + B * w[f"{fc.name}.weight"].size
    footprint = sum(a.nbytes for a in w.values()) + 4 * 2 * 2
    return tot, executed_ac, executed_mac, footprint, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_counts_equal_a_naive_recount(seed):
    net = _net()
    w = _dyadic_weights(net, seed)
    rng = np.random.default_rng(seed + 10)
    X = (rng.integers(0, 256, (5, 2, 8, 7)) * (rng.random((5, 2, 8, 7)) < 0.6)).astype(np.uint8)
    tot, ex_ac, ex_mac, footprint, ref = _recount(net, w, X)
    res = energy.from_network(net, w, X, batch_size=2)
    n = len(X)
    so = res["SynapticOperations"]
    assert so["Effective_ACs"] * n == tot["acs"] and so["Effective_MACs"] * n == tot["macs"]
    assert so["Dense"] * n == tot["dense"]
    assert tot["acs"] > 0 and tot["macs"] > 0            # both kinds occur
    assert res["ActivationSparsity"] == tot["act_zero"] / tot["act_total"]
    assert res["MembraneUpdates"] * n == tot["mem"]
    assert res["executed"]["ACs"] * n == ex_ac and res["executed"]["MACs"] * n == ex_mac
    assert res["Footprint"] == footprint
    assert res["checks"]["replay_spike_mismatches"] == {"lif1": 0, "if5": 0}
    assert res["checks"]["traced_spikes"] == {k: int(v.sum()) for k, v in ref["spikes"].items()}


def test_direct_encoder_frames_count_as_macs():
    net = _net(Direct(T=4))
    w = _dyadic_weights(net, 3)
    rng = np.random.default_rng(4)
    X = (rng.integers(0, 3, (3, 4, 2, 8, 7)) * (rng.random((3, 4, 2, 8, 7)) < 0.5)).astype(f32)
    res = energy.from_network(net, w, X)
    conv = res["layers"]["conv2d0"]
    assert conv["executed_kind"] == "MAC" and conv["Effective_MACs"] > 0
    binary = (X > 0).astype(f32)
    res_b = energy.from_network(net, w, binary)
    assert res_b["layers"]["conv2d0"]["executed_kind"] == "AC"
    # binary frames in the first batch, graded ones in the second: one kind for the run
    mixed = np.concatenate([binary[:1], X[1:]])
    mixed[1:] += 2.0
    res_m = energy.from_network(net, w, mixed, batch_size=1)
    assert res_m["layers"]["conv2d0"]["executed_kind"] == "MAC"
    assert res_m["executed"]["MACs"] > res_m["layers"]["linear7"]["executed"]




def test_default_preset_equals_from_convsnn():
    from snnfast.convsnn import _PARAM_KEYS, ConvSNN
    net, w, X = _preset_case("default", n=6)
    model = ConvSNN(preset="default")
    model.set_params({k: w[v] for k, v in _PARAM_KEYS.items()})
    old = energy.from_convsnn(model, X[:, 0], batch_size=4)
    new = energy.from_network(net, w, X, batch_size=4)
    for key in ("Footprint", "ConnectionSparsity", "ActivationSparsity", "MembraneUpdates",
                "SynapticOperations", "Dense_single_pass", "executed", "samples"):
        assert new[key] == old[key], key
    # the same layers under the description's names, counted from the engine's run and
    # from the model's own kernels
    assert new["layers"] == old["layers"]
    assert new["activation_layers"] == old["activation_layers"]


def test_cli_on_a_network_file(tmp_path, capsys):
    net = _net()
    w = _dyadic_weights(net, 0)
    path = tmp_path / "small.h5"
    save(path, net, w)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (4, 2, 8, 7)).astype(np.uint8)
    np.savez(tmp_path / "x.npz", X=X)
    out_json = tmp_path / "e.json"
    assert energy.main([str(path), "--input", str(tmp_path / "x.npz"), "--json",
                        str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "network-1" in text and "conv2d0" in text and out_json.exists()
    res = energy.from_network(net, w, X)
    import json
    got = json.loads(out_json.read_text())["result"]
    assert got["SynapticOperations"] == res["SynapticOperations"]
