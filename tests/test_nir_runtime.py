"""The NIR runtime (snnfast.nir.load / run) against the NIR paper's references and against
oracles written from NIR's equations (docs/nir-runtime.rst)."""
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

nir = pytest.importorskip("nir")

from snnfast import nir as snir  # noqa: E402

# the NIR paper's reference files (BSD-3, see SOURCE.md there)
FIX = Path(__file__).resolve().parent / "data" / "nir-paper"
needs_fixtures = pytest.mark.skipif(not FIX.is_dir(), reason="NIR paper fixtures not present")


def _graph(in_shape, *nodes, names=None, out_shape=None):
    """Input -> nodes -> Output as a NIRGraph (nir's own type checks off: the runtime checks)."""
    names = names or [f"n{i}" for i in range(len(nodes))]
    d = {"input": nir.Input(input_type={"input": np.array(in_shape)})}
    d.update(zip(names, nodes))
    d["output"] = nir.Output(output_type={"output": None if out_shape is None  # inferred
                                          else np.array(out_shape)})
    chain = ["input", *names, "output"]
    return nir.NIRGraph(nodes=d, edges=list(zip(chain, chain[1:])), type_check=False)


def _out(g, x, **kw):
    return snir.run(g, np.asarray(x, np.float32), **kw)["output"]


def _ones(shape, v=1.0):
    return np.full(shape, v, dtype=np.float64)


# ----------------------------------------------------------------------------- NIR paper LIF
def _lif_csv(name):
    return np.loadtxt(FIX / "01_lif" / f"lif_{name}.csv", delimiter=",")   # input, v, spike


@needs_fixtures
def test_paper_lif_exact_integrator_matches_the_exact_solution():
    """lif_norse.nir on the paper's input; lif_exact.csv is the event-based exact solution
    (input held constant over each 0.1 ms bin, reset by subtraction at the crossing time)."""
    ref = _lif_csv("exact")
    g = snir.load(FIX / "01_lif" / "lif_norse.nir")
    lif = g.nodes["1"].params
    tau, thr = float(lif["tau"][0]), float(lif["v_threshold"][0])
    dt = 1e-4
    _, tr = snir.run(g, ref[:, 0].reshape(1, -1, 1), dt=dt, integrator="exact",
                     reset="subtract", trace=["1"])
    v, z = tr["1"]["v"][0, :, 0].astype(np.float64), tr["1"]["z"][0, :, 0]
    spikes = np.flatnonzero(ref[:, 2])
    assert len(spikes) >= 3 and np.array_equal(np.flatnonzero(z), spikes)     # to the step
    # before the first spike the step is exact: only float32 rounding remains
    assert np.abs(v - ref[:, 1])[:spikes[0]].max() <= 1e-7
    # after: the exact solution subtracts thr at the crossing, which then decays to the bin's
    # end; the runtime subtracts it at the end. Per spike that is < thr (1 - exp(-dt/tau)),
    # decaying by exp(-dt/tau) per step, summed over the spikes so far
    h = dt / tau
    bound = thr * -np.expm1(-h) / -np.expm1(-h * np.diff(spikes).min()) + 1e-7
    err = np.abs(v - ref[:, 1]).max()
    assert 1e-5 < err <= bound, (err, bound)       # > 1e-5: the discretisation error is real


@needs_fixtures
def test_paper_lif_euler_matches_norse_and_snntorch():
    """Forward Euler with reset to v_reset, as both frameworks ran the graph.

    snnTorch applies the input gain r*dt/tau to the threshold instead of the input, so its
    membrane is the others' divided by that gain (0.04 here)."""
    norse, torch_ = _lif_csv("norse"), _lif_csv("snntorch")
    g = snir.load(FIX / "01_lif" / "lif_norse.nir")
    lif = g.nodes["1"].params
    dt, tau, r = 1e-4, float(lif["tau"][0]), float(lif["r"][0])
    thr = float(lif["v_threshold"][0])
    gain = r * dt / tau
    x = norse[:, 0]
    assert np.array_equal(x, torch_[:, 0])
    _, tr = snir.run(g, x.reshape(1, -1, 1), dt=dt, integrator="euler", reset="zero",
                     trace=["1"])
    v, z = tr["1"]["v"][0, :, 0].astype(np.float64), tr["1"]["z"][0, :, 0]
    v_norse, v_torch = norse[:, 1], torch_[:, 1] * gain
    assert np.flatnonzero(z).size >= 3
    assert np.array_equal(z, norse[:, 2]) and np.array_equal(z, torch_[:, 2])
    # NIR's Euler equations in float64: all three are float32 roundings of this trajectory
    v64, euler = 0.0, []
    for xi in x:
        v64 = v64 + dt / tau * (0.0 - v64 + r * xi)
        v64 = 0.0 if v64 > thr else v64
        euler.append(v64)
    euler = np.array(euler)
    spread = np.abs(v_norse - v_torch).max()            # how closely the two frameworks agree
    assert 0 < spread < 1e-6
    assert np.abs(v - euler).max() <= max(np.abs(v_norse - euler).max(),
                                          np.abs(v_torch - euler).max())
    # each framework within twice their mutual spread (both differ from the runtime by
    # float32 rounding only: a few ulp of 0.1)
    assert np.abs(v - v_norse).max() <= 2 * spread and np.abs(v - v_torch).max() <= 2 * spread


# ----------------------------------------------------------------------------- NIR paper CNN
def _conv_oracle(x, w, b, stride, pad, dil, groups):
    """Direct float64 convolution; x (N, C, H, W), pad ((top, bottom), (left, right))."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0)) + tuple(pad))
    N, _, H, W = x.shape
    co, cig, kh, kw = w.shape
    oh = (H - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (W - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((N, co, oh, ow))
    for o in range(co):
        grp = o // (co // groups)
        for c in range(cig):
            for ky in range(kh):
                for kx in range(kw):
                    ys, xs = ky * dil[0], kx * dil[1]
                    patch = x[:, grp * cig + c, ys:ys + stride[0] * (oh - 1) + 1:stride[0],
                              xs:xs + stride[1] * (ow - 1) + 1:stride[1]]
                    y[:, o] += w[o, c, ky, kx] * patch
        y[:, o] += b[o]
    return y


@needs_fixtures
def test_paper_cnn_runs_on_events_and_its_first_layers_match_numpy():
    g = snir.load(FIX / "02_cnn" / "cnn_sinabs.nir")
    assert [g.nodes[k].kind for k in g.order] == ["Input", "Conv2d", "IF", "Conv2d", "IF",
                                                  "SumPool2d", "Conv2d", "IF", "SumPool2d",
                                                  "Flatten", "Affine", "IF", "Affine", "IF",
                                                  "Output"]
    rng = np.random.default_rng(0)
    N, T = 3, 12
    x = (rng.random((N, T, 2, 34, 34)) < 0.08).astype(np.uint8)     # N-MNIST-like events
    # Sinabs' IF adds its input once per bin: dt = 1 with r = 1
    out, tr = snir.run(g, x, dt=1.0, trace="all")
    assert out["output"].shape == (N, T, 10)
    shapes = {"0": (16, 16, 16), "3": (16, 16, 16), "4": (16, 8, 8), "6": (8, 8, 8),
              "8": (128,), "9": (256,), "12": (10,)}
    for k, s in shapes.items():
        key = "z" if g.nodes[k].spiking else "y"
        assert tr[k][key].shape == (N, T) + s, k
    assert tr["1"]["z"].mean() > 0.005 and tr["6"]["z"].mean() > 0.005       # real activity
    p0 = g.nodes["0"].params
    conv = _conv_oracle(x.reshape(N * T, 2, 34, 34), p0["weight"], p0["bias"], (2, 2),
                        ((1, 1), (1, 1)), (1, 1), 1).reshape(N, T, 16, 16, 16)
    np.testing.assert_allclose(tr["0"]["y"], conv, rtol=1e-5, atol=1e-5)
    # IF (r = 1, threshold 1, reset to 0) on the runtime's own conv output, in float32
    v = np.zeros((N, 16, 16, 16), np.float32)
    for t in range(T):
        v = v + tr["0"]["y"][:, t]
        z = v > 1.0
        v[z] = 0.0
        assert np.array_equal(tr["1"]["z"][:, t], z), t
    pooled = tr["3"]["z"].reshape(N, T, 16, 8, 2, 8, 2).sum(axis=(4, 6))
    assert np.array_equal(tr["4"]["y"], pooled)
    # matrix-product sums: the same up to float32 rounding of the currents
    blas = snir.run(g, x, dt=1.0, sums="blas", trace=["0"])[1]
    np.testing.assert_allclose(blas["0"]["y"], tr["0"]["y"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- stateless nodes
def test_affine_linear_scale_threshold_by_hand():
    W = np.array([[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0]])
    x = np.array([[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]])          # (N=1, T=2, 3)
    y = _out(_graph([3], nir.Affine(weight=W, bias=np.array([0.5, -1.0]))), x, dt=1.0)
    assert np.array_equal(y, [[[1.5, 4.0], [2.5, 2.5]]])
    y = _out(_graph([3], nir.Linear(weight=W)), x, dt=1.0)
    assert np.array_equal(y, [[[1.0, 5.0], [2.0, 3.5]]])
    y = _out(_graph([3], nir.Linear(weight=W)), x, dt=1.0, sums="blas")
    assert np.array_equal(y, [[[1.0, 5.0], [2.0, 3.5]]])
    # a weight with a leading axis maps each of its rows separately
    Wb = np.stack([W, 2 * W])                                      # (2, 2, 3)
    xb = np.stack([x[0], -x[0]], axis=1)[None]                     # (1, 2, 2, 3)
    y = _out(_graph([2, 3], nir.Linear(weight=Wb)), xb, dt=1.0)
    assert np.array_equal(y[0, :, 0], [[1.0, 5.0], [2.0, 3.5]])
    assert np.array_equal(y[0, :, 1], [[-2.0, -10.0], [-4.0, -7.0]])
    y = _out(_graph([3], nir.Scale(scale=np.array([2.0, -1.0, 0.5]))), x, dt=1.0)
    assert np.array_equal(y, [[[2.0, -0.0, 1.0], [0.0, -1.0, 0.5]]])
    # Threshold: strictly greater
    y = _out(_graph([3], nir.Threshold(threshold=np.array([1.0, 0.0, 1.5]))), x, dt=1.0)
    assert np.array_equal(y, [[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])


def test_flatten_dims_of_one_sample():
    x = np.arange(2 * 1 * 2 * 3 * 4, dtype=np.float32).reshape(2, 1, 2, 3, 4)
    for start, end, shape in ((0, -1, (24,)), (1, -1, (2, 12)), (0, 1, (6, 4)), (1, 1, (2, 3, 4))):
        fl = nir.Flatten(input_type={"input": np.array([2, 3, 4])}, start_dim=start, end_dim=end)
        g = snir.load(_graph([2, 3, 4], fl))
        assert g.nodes["n0"].out_shape == shape
        y = snir.run(g, x, dt=1.0)["output"]
        assert np.array_equal(y, x.reshape((2, 1) + shape))


def test_delay_whole_steps_per_element():
    x = np.zeros((1, 6, 3), np.float32)
    x[0, 0] = [1, 2, 3]
    x[0, 2] = [4, 5, 6]
    dt = 0.5
    y = _out(_graph([3], nir.Delay(delay=np.array([0.0, 0.5, 1.5]))), x, dt=dt)
    want = np.zeros((1, 6, 3), np.float32)
    for i, d in enumerate((0, 1, 3)):
        want[0, d:, i] = x[0, :6 - d, i]
    assert np.array_equal(y, want)
    with pytest.raises(ValueError, match=r"node 'n0' \(Delay\): delay/dt = 1\.5 is not a whole"):
        _out(_graph([3], nir.Delay(delay=np.array([0.0, 0.75, 1.5]))), x, dt=dt)


@pytest.mark.parametrize("sums", ["ordered", "blas"])
@pytest.mark.parametrize("stride, padding, dil, groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, "same", 2, 1), (2, 2, 2, 2), (1, "valid", 1, 4)])
def test_conv2d_against_direct_convolution(stride, padding, dil, groups, sums):
    rng = np.random.default_rng(5)
    ci, co = 4, 8
    w = rng.normal(size=(co, ci // groups, 3, 2))
    b = rng.normal(size=co)
    conv = nir.Conv2d(input_shape=(7, 6), weight=w, stride=stride, padding=padding,
                      dilation=dil, groups=groups, bias=b)
    x = (rng.random((2, 3, ci, 7, 6)) < 0.4) * rng.normal(size=(2, 3, ci, 7, 6))
    y = _out(_graph([ci, 7, 6], conv), x, dt=1.0, sums=sums)
    if padding == "same":
        tot = [dil * 2, dil * 1]
        pad = tuple((t // 2, t - t // 2) for t in tot)
    else:
        p = 0 if padding == "valid" else padding
        pad = ((p, p), (p, p))
    want = _conv_oracle(x.reshape(6, ci, 7, 6), w, b, (stride, stride), pad, (dil, dil), groups)
    if padding == "same":
        assert want.shape[2:] == (7, 6)
    np.testing.assert_allclose(y, want.reshape((2, 3) + want.shape[1:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, padding, dil, groups", [(1, 0, 1, 1), (2, 1, 2, 2), (1, "same", 3, 1)])
def test_conv1d_against_direct_convolution(stride, padding, dil, groups):
    rng = np.random.default_rng(6)
    w = rng.normal(size=(4, 2 // groups, 3))
    b = rng.normal(size=4)
    conv = nir.Conv1d(input_shape=9, weight=w, stride=stride, padding=padding, dilation=dil,
                      groups=groups, bias=b)
    x = rng.normal(size=(2, 2, 2, 9))
    y = _out(_graph([2, 9], conv), x, dt=1.0)
    if padding == "same":
        pad = ((0, 0), (dil, dil))
    else:
        pad = ((0, 0), (padding, padding))
    want = _conv_oracle(x.reshape(4, 2, 1, 9), w[:, :, None, :], b, (1, stride), pad, (1, dil),
                        groups)
    np.testing.assert_allclose(y, want.reshape(2, 2, 4, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["SumPool2d", "AvgPool2d"])
def test_pools_by_hand(kind):
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 1, 4, 4)
    node = getattr(nir, kind)(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0]))
    y = _out(_graph([1, 4, 4], node), x, dt=1.0)
    s = np.array([[1 + 2 + 5 + 6, 3 + 4 + 7 + 8], [9 + 10 + 13 + 14, 11 + 12 + 15 + 16]])
    assert np.array_equal(y[0, 0, 0], s if kind == "SumPool2d" else s / 4)
    # zero padding 1, kernel 3, stride 2: the corner window holds 1, 2, 5, 6 (+ 5 zeros);
    # the average counts the padding (count_include_pad, PyTorch's default)
    node = getattr(nir, kind)(kernel_size=np.array([3, 3]), stride=np.array([2, 2]),
                              padding=np.array([1, 1]))
    y = _out(_graph([1, 4, 4], node), x, dt=1.0)
    assert y.shape == (1, 1, 1, 2, 2)
    assert y[0, 0, 0, 0, 0] == (14.0 if kind == "SumPool2d" else np.float32(14.0) / 9)


# ----------------------------------------------------------------------------- neurons
def _neuron_graph(node, n):
    return _graph([n], node)


def _run_neuron(node, x, dt, integrator, reset="zero"):
    g = _neuron_graph(node, x.shape[-1])
    _, tr = snir.run(g, x, dt=dt, integrator=integrator, reset=reset, trace=["n0"])
    return tr["n0"]


def test_integrators_of_I_and_IF_by_hand():
    x = np.array([[[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]]])            # (1, 3, 2)
    for integ in ("euler", "exact"):
        tr = _run_neuron(nir.I(r=np.array([2.0, 0.5])), x, 0.25, integ)
        assert np.array_equal(tr["v"][0], [[0.5, 0.25], [0.75, 0.25], [2.25, 0.375]])
    node = nir.IF(r=_ones(2, 2.0), v_threshold=_ones(2, 1.0), v_reset=np.array([0.0, -0.5]))
    tr = _run_neuron(node, x, 0.5, "euler", reset="zero")
    # c_x = r dt = 1: v = [1, 2] spikes where v > 1 (strictly), then v = v_reset
    assert np.array_equal(tr["z"][0], [[0, 1], [1, 0], [1, 0]])
    assert np.array_equal(tr["v"][0], [[1.0, -0.5], [0.0, -0.5], [0.0, 0.5]])
    tr = _run_neuron(node, x, 0.5, "euler", reset="subtract")
    # subtract (v_threshold - v_reset): 1 and 1.5
    assert np.array_equal(tr["z"][0], [[0, 1], [1, 0], [1, 1]])
    assert np.array_equal(tr["v"][0], [[1.0, 0.5], [0.5, 0.5], [2.5, 0.0]])


def _li_params(n):
    return dict(tau=np.array([2e-3, 5e-3, 1e-3])[:n], r=np.array([1.5, 0.7, 2.0])[:n],
                v_leak=np.array([0.2, -0.1, 0.0])[:n])


def test_li_and_lif_exact_integrator_matches_the_continuous_solution():
    """Constant input c from v = 0: v(t) = (v_leak + r c)(1 - exp(-t/tau)), at every step end."""
    p = _li_params(3)
    dt, T, c = 4e-4, 40, np.array([1.0, 3.0, -2.0])
    x = np.broadcast_to(c, (2, T, 3)).copy()
    t = dt * np.arange(1, T + 1)[:, None]
    want = (p["v_leak"] + p["r"] * c) * -np.expm1(-t / p["tau"])
    v = _run_neuron(nir.LI(**p), x, dt, "exact")["v"]
    np.testing.assert_allclose(v[0], want, rtol=1e-5, atol=1e-6)
    # a LIF whose threshold is never reached runs the same dynamics, and never spikes
    lif = nir.LIF(**p, v_threshold=_ones(3, 100.0))
    tr = _run_neuron(lif, x, dt, "exact")
    np.testing.assert_allclose(tr["v"][0], want, rtol=1e-5, atol=1e-6)
    assert not tr["z"].any()


def _euler_lif64(p, x, dt, thr=None, v_reset=None, reset="zero"):
    """NIR's LIF equations, forward Euler in float64: v += dt/tau (v_leak - v + r x)."""
    v = np.zeros(x.shape[-1])
    vs, zs = [], []
    for xt in x:
        v = v + dt / p["tau"] * (p["v_leak"] - v + p["r"] * xt)
        z = np.zeros_like(v, dtype=bool) if thr is None else v > thr
        if reset == "zero":
            v = np.where(z, v_reset, v) if thr is not None else v
        else:
            v = np.where(z, v - (thr - v_reset), v)
        vs.append(v.copy())
        zs.append(z)
    return np.array(vs), np.array(zs)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_lif_euler_against_float64_recursion(reset):
    p = _li_params(3)
    rng = np.random.default_rng(2)
    dt, T = 2.5e-4, 60
    x = rng.normal(0.8, 1.0, size=(1, T, 3))
    thr, vr = np.array([0.4, 0.3, 0.5]), np.array([0.0, -0.1, 0.1])
    tr = _run_neuron(nir.LIF(**p, v_threshold=thr, v_reset=vr), x, dt, "euler", reset=reset)
    v64, z64 = _euler_lif64(p, x[0], dt, thr, vr, reset)
    assert z64.sum() >= 5
    # no membrane came within float32 rounding of the threshold, so the spikes are exact
    assert np.array_equal(tr["z"][0].astype(bool), z64)
    np.testing.assert_allclose(tr["v"][0], v64, rtol=1e-5, atol=1e-6)
    li = _run_neuron(nir.LI(**p), x, dt, "euler")["v"][0]
    np.testing.assert_allclose(li, _euler_lif64(p, x[0], dt)[0], rtol=1e-5, atol=1e-6)


def _cuba_params(n, same_tau=False):
    tau_mem = np.array([2e-3, 5e-3, 1e-3])[:n]
    return dict(tau_syn=tau_mem.copy() if same_tau else np.array([1e-3, 8e-3, 0.5e-3])[:n],
                tau_mem=tau_mem, r=np.array([1.5, 0.7, 2.0])[:n],
                v_leak=np.array([0.2, -0.1, 0.0])[:n], w_in=np.array([1.0, 2.0, 0.5])[:n])


def _expm_cuba64(p, x, dt, thr=None, v_reset=None, reset="zero"):
    """Exact integration of NIR's CubaLIF ODEs for inputs held over each step, by the
    matrix exponential of the augmented linear system (i, v, input, 1); float64."""
    n = x.shape[-1]
    vs, iss, zs = [], [], []
    i, v = np.zeros(n), np.zeros(n)
    for xt in x:
        for k in range(n):
            A = np.zeros((4, 4))
            A[0, 0], A[0, 2] = -1 / p["tau_syn"][k], p["w_in"][k] / p["tau_syn"][k]
            A[1, 0], A[1, 1] = p["r"][k] / p["tau_mem"][k], -1 / p["tau_mem"][k]
            A[1, 3] = p["v_leak"][k] / p["tau_mem"][k]
            s = scipy.linalg.expm(A * dt) @ np.array([i[k], v[k], xt[k], 1.0])
            i[k], v[k] = s[0], s[1]
        z = np.zeros(n, bool) if thr is None else v > thr
        if thr is not None:
            v = np.where(z, v_reset if reset == "zero" else v - (thr - v_reset), v)
        vs.append(v.copy())
        iss.append(i.copy())
        zs.append(z)
    return np.array(vs), np.array(iss), np.array(zs)


@pytest.mark.parametrize("same_tau", [False, True], ids=["tau_syn!=tau_mem", "tau_syn==tau_mem"])
def test_cuba_exact_integrator_matches_the_matrix_exponential(same_tau):
    p = _cuba_params(3, same_tau)
    rng = np.random.default_rng(3)
    dt, T = 3e-4, 50
    x = rng.normal(0.5, 1.0, size=(1, T, 3))
    tr = _run_neuron(nir.CubaLI(**p), x, dt, "exact")
    v64, i64, _ = _expm_cuba64(p, x[0], dt)
    np.testing.assert_allclose(tr["v"][0], v64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr["i"][0], i64, rtol=1e-5, atol=1e-6)
    thr, vr = np.array([0.3, 0.4, 0.2]), np.zeros(3)
    lif = nir.CubaLIF(**{k: v for k, v in p.items() if k != "w_in"}, v_threshold=thr,
                      v_reset=vr, w_in=p["w_in"])
    for reset in ("zero", "subtract"):
        tr = _run_neuron(lif, x, dt, "exact", reset=reset)
        v64, i64, z64 = _expm_cuba64(p, x[0], dt, thr, vr, reset)
        assert z64.sum() >= 3
        assert np.array_equal(tr["z"][0].astype(bool), z64)
        np.testing.assert_allclose(tr["v"][0], v64, rtol=1e-5, atol=1e-6)


def test_cuba_euler_updates_the_current_first():
    """Euler: i' = i + dt/tau_syn (-i + w_in x); v' = v + dt/tau_mem (v_leak - v + r i')."""
    p = _cuba_params(3)
    p["tau_syn"] = np.array([1e-3, 8e-3, 2e-3])
    rng = np.random.default_rng(4)
    dt, T = 2.5e-4, 40
    x = rng.normal(0.5, 1.0, size=(1, T, 3))
    thr = np.array([0.3, 0.4, 0.2])
    tr = _run_neuron(nir.CubaLIF(**{k: v for k, v in p.items() if k != "w_in"},
                                 v_threshold=thr, v_reset=np.zeros(3), w_in=p["w_in"]),
                     x, dt, "euler")
    i, v, vs, zs = np.zeros(3), np.zeros(3), [], []
    for xt in x[0]:
        i = i + dt / p["tau_syn"] * (-i + p["w_in"] * xt)
        v = v + dt / p["tau_mem"] * (p["v_leak"] - v + p["r"] * i)
        z = v > thr
        v = np.where(z, 0.0, v)
        vs.append(v)
        zs.append(z)
    assert np.sum(zs) >= 3
    assert np.array_equal(tr["z"][0].astype(bool), np.array(zs))
    np.testing.assert_allclose(tr["v"][0], np.array(vs), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- graphs
def test_recurrent_graph_reads_the_previous_step():
    """in -> Linear -> LIF -> out, with LIF -> Linear(rec) -> LIF: the recurrent input is the
    previous step's spikes. Dyadic values: float32 is exact, so the expectation is exact."""
    lif = nir.LIF(tau=_ones(2, 2.0), r=_ones(2, 2.0), v_leak=_ones(2, 0.0),
                  v_threshold=_ones(2, 1.0), v_reset=_ones(2, 0.0))   # Euler, dt=1: v = v/2 + x
    nodes = {"in": nir.Input(input_type={"input": np.array([2])}),
             "w": nir.Linear(weight=np.eye(2)), "lif": lif,
             "rec": nir.Linear(weight=np.array([[0.0, 1.5], [2.0, 0.0]])),
             "out": nir.Output(output_type={"output": np.array([2])})}
    edges = [("in", "w"), ("w", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out")]
    g = snir.load(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    assert g.back_edges == {("rec", "lif")} and g.order == ["in", "w", "lif", "rec", "out"]
    x = np.zeros((1, 6, 2), np.float32)
    x[0, 0, 0] = 1.5
    _, tr = snir.run(g, x, dt=1.0, trace=["lif"])
    v, z = np.zeros(2), np.zeros(2)
    want = []
    for t in range(6):
        cur = x[0, t] + np.array([[0.0, 1.5], [2.0, 0.0]]) @ z     # z of step t-1
        v = v / 2 + cur
        z = (v > 1).astype(float)
        v[z > 0] = 0
        want.append(z)
    want = np.array(want)
    assert want[:, 0].sum() >= 1 and want[:, 1].sum() >= 1        # the spike travels around
    assert np.array_equal(tr["lif"]["z"][0], want)


def test_nested_subgraph_runs_like_the_flat_graph():
    rng = np.random.default_rng(8)
    W = rng.normal(size=(4, 3))

    def lif():
        return nir.LIF(tau=_ones(4, 2e-3), r=_ones(4, 1.0), v_leak=_ones(4, 0.0),
                       v_threshold=_ones(4, 0.2), v_reset=_ones(4, 0.0))

    flat = _graph([3], nir.Affine(weight=W, bias=np.zeros(4)), lif())
    inner = _graph([3], nir.Affine(weight=W, bias=np.zeros(4)), lif())
    nested = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([3])}), "sub": inner,
               "output": nir.Output(output_type={"output": np.array([4])})},
        edges=[("input", "sub"), ("sub", "output")], type_check=False)
    x = rng.normal(1.0, 1.0, size=(2, 30, 3))
    g = snir.load(nested)
    assert "sub.n1" in g.nodes and g.nodes["sub.n1"].kind == "LIF"
    a, b = _out(flat, x, dt=1e-4), _out(nested, x, dt=1e-4)
    assert a.any() and np.array_equal(a, b)


def test_edges_into_one_node_add_and_several_inputs_run():
    nodes = {"a": nir.Input(input_type={"input": np.array([2])}),
             "b": nir.Input(input_type={"input": np.array([2])}),
             "sa": nir.Scale(scale=np.array([1.0, 2.0])),
             "sb": nir.Scale(scale=np.array([-1.0, 0.5])),
             "i": nir.I(r=np.array([1.0, 1.0])),
             "out": nir.Output(output_type={"output": np.array([2])})}
    edges = [("a", "sa"), ("b", "sb"), ("sa", "i"), ("sb", "i"), ("i", "out")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    xa = np.ones((1, 2, 2))
    xb = np.full((1, 2, 2), 2.0)
    y = snir.run(g, {"a": xa, "b": xb}, dt=0.5)["out"]
    # per step: I integrates 0.5 * (xa*[1,2] + xb*[-1,0.5]) = 0.5*[-1, 3]
    assert np.array_equal(y[0], [[-0.5, 1.5], [-1.0, 3.0]])
    with pytest.raises(ValueError, match="2 Input nodes"):
        snir.run(g, xa, dt=0.5)


# ----------------------------------------------------------------------------- errors
class _Custom(nir.NIRNode):
    def __init__(self):
        self.input_type, self.output_type, self.metadata = {"input": None}, {"output": None}, {}


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _lif1():
    return nir.LIF(tau=_ones(1, 1e-3), r=_ones(1), v_leak=_ones(1, 0), v_threshold=_ones(1))


@pytest.mark.parametrize("make, match", [
    (lambda: _graph([3], _Custom()), r"node 'n0': NIR type _Custom is not supported"),
    (lambda: _graph([3], nir.Scale(scale=np.array([1.0, np.nan, 1.0]))),
     r"node 'n0' \(Scale\): parameter scale contains NaN"),
    (lambda: _graph([3], nir.Linear(weight=np.ones((2, 4)))),
     r"shape mismatch on edge \('input', 'n0'\): 'input' outputs \(3,\), 'n0' \(Linear\) takes \(4,\)"),
    (lambda: _graph([3], nir.LIF(tau=np.array([1.0, -1.0, 1.0]), r=_ones(3), v_leak=_ones(3, 0),
                                 v_threshold=_ones(3))), r"node 'n0' \(LIF\): tau must be > 0"),
    (lambda: _graph([2, 5, 5], nir.Conv2d(input_shape=None, weight=np.ones((1, 3, 2, 2)),
                                          stride=1, padding=0, dilation=1, groups=1,
                                          bias=np.zeros(1))),
     r"node 'n0' \(Conv2d\): input shape \(2, 5, 5\) does not fit weight"),
    (lambda: _graph([2, 3], nir.Flatten(input_type={"input": np.array([2, 3])}, start_dim=2,
                                        end_dim=-1)),
     r"Flatten\): start_dim 2, end_dim -1 do not fit"),
    (lambda: nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([1])}),
                                 "x": _lif1(), "output": nir.Output(output_type={"output": np.array([1])})},
                          edges=[("input", "x"), ("x", "nowhere")], type_check=False),
     r"edge names node 'nowhere', which is not in the graph"),
    (lambda: nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([1])}),
                                 "x": _lif1(), "y": _lif1(),
                                 "output": nir.Output(output_type={"output": np.array([1])})},
                          edges=[("input", "x"), ("x", "output"), ("y", "output")], type_check=False),
     r"node 'y' is not reachable from any Input node"),
])
def test_bad_graphs_are_refused_in_one_line(make, match):
    with pytest.raises(ValueError, match=match) as e:
        snir.load(make())
    _one_line(e)


def test_bad_run_arguments_are_refused_in_one_line():
    lif = nir.LIF(tau=_ones(2, 1e-3), r=_ones(2), v_leak=_ones(2, 0), v_threshold=_ones(2))
    g = _graph([2], lif)
    g.metadata = {"dt": 1e-4}
    x = np.zeros((1, 3, 2))
    for kw, match in (({}, r"dt is required: NIR graphs carry no time step \(this graph's "
                           r"metadata says dt = 0\.0001\)"),
                      ({"dt": 0.0}, "dt must be a finite number > 0"),
                      ({"dt": "x"}, "dt must be a number"),
                      ({"dt": 1e-4, "integrator": "rk4"}, "integrator must be one of"),
                      ({"dt": 1e-4, "reset": "halve"}, "reset must be one of"),
                      ({"dt": 2e-3}, r"tau = 0\.001 < dt = 0\.002: forward Euler"),
                      ({"dt": 1e-4, "trace": ["nope"]}, "trace: no node named 'nope'")):
        with pytest.raises(ValueError, match=match) as e:
            snir.run(g, x, **kw)
        _one_line(e)
    snir.run(g, x, dt=2e-3, integrator="exact")              # exact integration is stable
    for bad, match in ((np.zeros((1, 3, 3)), r"must have shape \(N, T, 2\), got \(1, 3, 3\)"),
                       (np.full((1, 3, 2), np.nan), "NaN or infinite"),
                       (np.array([["a", "b"]]), "must hold real numbers")):
        with pytest.raises(ValueError, match=match) as e:
            snir.run(g, bad, dt=1e-4)
        _one_line(e)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        snir.load(tmp_path / "nope.nir")
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read NIR graph") as e:
        snir.load(junk)
    _one_line(e)
    with pytest.raises(TypeError):
        snir.load(42)


# ----------------------------------------------------------------------------- our exports
def _convsnn_model():
    """A ConvSNN of preset nir with random weights under which both layers spike, and the
    random generator to draw its input from."""
    try:
        from snnfast.convsnn import ConvSNN
    except ImportError:
        pytest.skip("snnfast.convsnn (compiled kernels) is not built")
    rng = np.random.default_rng(1)
    model = ConvSNN(preset="nir", seed=4)
    f = np.float32
    model.set_params({"conv_w": rng.normal(0.05, 0.35, (16, 1, 5, 5)).astype(f),
                      "conv_b": rng.normal(0, 0.1, 16).astype(f),
                      "W1": rng.normal(-0.002, 0.04, (2304, 1024)).astype(f),
                      "b1": rng.normal(0, 0.1, 1024).astype(f),
                      "W2": rng.normal(0, 0.1, (1024, 10)).astype(f),
                      "b2": rng.normal(0, 0.1, 10).astype(f)})
    return model, rng


def test_exported_convsnn_runs_with_identical_spikes(tmp_path):
    """to_nir of a ConvSNN (preset nir), run here with forward Euler, reset to v_reset and
    ordered sums, gives the model's own spikes bit for bit."""
    model, rng = _convsnn_model()
    path = tmp_path / "m.nir"
    snir.to_nir(model, path)
    img = rng.integers(0, 256, (5, 784)).astype(np.uint8)
    img[rng.random((5, 784)) < 0.6] = 0
    a = model.trace(img)
    B, T = a["input"].shape[:2]
    out, tr = snir.run(path, a["input"].reshape(B, T, 1, 28, 28), dt=1e-4,
                       trace=["conv_lif", "hidden"])
    assert a["conv"].any() and a["hidden"].any()
    assert np.array_equal(tr["conv_lif"]["z"].reshape(a["conv"].shape), a["conv"])
    assert np.array_equal(tr["hidden"]["z"].reshape(a["hidden"].shape), a["hidden"])
    np.testing.assert_allclose(out["output"][:, -1], a["logits"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CLI
def _cli_graph(tmp_path):
    rng = np.random.default_rng(9)
    lif = nir.LIF(tau=_ones(5, 2e-3), r=_ones(5), v_leak=_ones(5, 0), v_threshold=_ones(5, 0.3))
    g = _graph([3], nir.Affine(weight=rng.normal(size=(5, 3)), bias=np.zeros(5)), lif,
               out_shape=[5])
    path = tmp_path / "g.nir"
    nir.write(path, g)
    x = (rng.random((4, 20, 3)) < 0.5).astype(np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    return path, tmp_path / "x.npz", x


def test_cli_runs_writes_h5_and_raster(tmp_path, capsys):
    import h5py
    from snnfast import run as cli
    graph, inp, x = _cli_graph(tmp_path)
    out = tmp_path / "res" / "r.h5"
    assert cli.main([str(graph), "--input", str(inp), "--dt", "1e-4", "--trace", "n1", "n0",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    want, tr = snir.run(graph, x, dt=1e-4, trace=["n1", "n0"])
    rate = tr["n1"]["z"].mean()
    assert 0 < rate < 1 and f"{rate:.4f} spikes/unit/step" in text
    assert "step order: input:Input -> n0:Affine -> n1:LIF -> output:Output" in text
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == cli.FORMAT and f.attrs["dt"] == 1e-4
        assert np.array_equal(f["outputs/output"][()], want["output"])
        assert np.array_equal(f["traces/n1/v"][()], tr["n1"]["v"])
        assert np.array_equal(f["traces/n0/y"][()], tr["n0"]["y"])
        assert np.array_equal(f["spike_counts/n1"][()], tr["n1"]["z"].sum(axis=(1, 2)))
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.h5", "r.png"]


@pytest.mark.parametrize("extra, code, match", [
    ([], 2, r"^error: --dt is required: NIR graphs carry no time step\n$"),
    (["--dt", "1e-4", "--trace", "nope"], 1, r"^error: trace: no node named 'nope'"),
    (["--dt", "3e-3"], 1, r"^error: node 'n1' \(LIF\): tau = 0\.002 < dt = 0\.003"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, extra, code, match):
    from snnfast import run as cli
    graph, inp, _ = _cli_graph(tmp_path)
    out = tmp_path / "o.h5"
    assert cli.main([str(graph), "--input", str(inp), "--out", str(out), *extra]) == code
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_cli_refuses_bad_inputs_and_outputs(tmp_path, capsys):
    from snnfast import run as cli
    graph, inp, _ = _cli_graph(tmp_path)
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 5, 4)))
    assert cli.main([str(graph), "--input", str(tmp_path / "bad.npz"), "--dt", "1e-4"]) == 1
    err = capsys.readouterr().err
    assert "must have shape (N, T, 3), got (2, 5, 4)" in err and err.count("\n") == 1
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert cli.main([str(graph), "--input", str(tmp_path / "junk.npz"), "--dt", "1e-4"]) == 1
    assert "cannot read" in capsys.readouterr().err
    for argv in ([str(graph), "--input", str(tmp_path / "none.npz"), "--dt", "1e-4"],
                 [str(graph), "--input", str(inp), "--dt", "-1"],
                 [str(graph), "--input", str(inp), "--dt", "1e-4", "--out", str(tmp_path)],
                 [str(graph), "--input", str(inp), "--dt", "1e-4", "--out", str(graph)]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "g.nir", "junk.npz", "x.npz"]


def test_cli_as_a_program(tmp_path):
    import subprocess
    import sys
    graph, inp, _ = _cli_graph(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snnfast.run", str(graph), "--input", str(inp),
                           "--dt", "1e-4", "--integrator", "exact", "--reset", "subtract"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "integrator exact, reset subtract" in proc.stdout and "output output:" in proc.stdout


# ----------------------------------------------------------------------------- energy
def test_energy_counts_by_hand():
    """Linear (2x3, one zero weight) -> LIF: effective ops = nonzero inputs x nonzero fan-out
    per step; a step with a non-binary input counts MACs; membrane updates = all units at the
    first step, then the units whose membrane changed."""
    from snnfast.nir.energy import account
    W = np.array([[1.0, 0.0, 2.0], [0.5, 1.0, 1.0]])          # fan-out of inputs: 2, 1, 2
    lif = nir.LIF(tau=_ones(2, 2.0), r=_ones(2, 2.0), v_leak=_ones(2, 0), v_threshold=_ones(2))
    g = _graph([3], nir.Linear(weight=W), lif)
    x = np.array([[[1, 0, 1], [0, 0, 0], [0, 2, 0]],             # sample 0
                  [[0, 1, 0], [0, 0, 0], [0, 0, 0]]], np.float32)  # sample 1
    res = account(g, x, dt=1.0)
    lay = res["layers"]["n0"]
    # ACs: sample 0 step 0: 2 + 2; sample 1 step 0: 1; MACs: sample 0 step 2: 1 (x = 2)
    assert lay["Effective_ACs"] == (4 + 1) / 2 and lay["Effective_MACs"] == 1 / 2
    assert lay["Dense"] == 6 * 3 * 2 / 2 and lay["binary_calls"] == 5
    _, tr = snir.run(g, x, dt=1.0, trace=["n1"])
    v = tr["n1"]["v"]
    changed = 2 * 2 + int(np.count_nonzero(v[:, 1:] != v[:, :-1]))
    act = res["activation_layers"]["n1"]
    assert act["MembraneUpdates"] == changed / 2
    assert act["spikes_per_sample"] == tr["n1"]["z"].sum() / 2
    assert res["Footprint"] == 4 * (W.size + 5 * 2)      # float32 weight + 5 LIF parameters


def test_energy_of_an_exported_convsnn_matches_its_own_accounting():
    """conv and fc1 ops and both LIF layers' activations and membrane updates equal
    snnfast.energy.from_convsnn's for the same model and input; fc2 differs by design (the
    graph applies it to each step's hidden spikes, the model once to the rates)."""
    from snnfast import energy
    from snnfast.nir.energy import account
    model, rng = _convsnn_model()
    img = rng.integers(0, 256, (5, 784)).astype(np.uint8)
    img[rng.random((5, 784)) < 0.6] = 0
    ref = energy.from_convsnn(model, img)
    s_in = model.trace(img)["input"]
    res = account(snir.to_nir(model), s_in.reshape(5, -1, 1, 28, 28), dt=1e-4, batch_size=2)
    for k in ("conv", "fc1"):
        for q in ("Effective_ACs", "Effective_MACs", "Dense", "calls_per_sample"):
            assert res["layers"][k][q] == ref["layers"][k][q], (k, q)
    assert res["layers"]["fc1"]["Effective_ACs"] > 0
    for k in ("conv_lif", "hidden"):       # the graph's nodes are the description's layers
        assert res["activation_layers"][k] == ref["activation_layers"][k]


def test_energy_cli_on_a_nir_graph(tmp_path, capsys):
    import json
    from snnfast import energy
    graph, inp, _ = _cli_graph(tmp_path)
    out = tmp_path / "e.json"
    assert energy.main([str(graph), "--input", str(inp), "--dt", "1e-4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NIR graph, 4 samples" in text and "SynapticOperations" in text and "uJ/inference" in text
    data = json.loads(out.read_text())
    assert data["format"] == "nir" and data["result"]["layers"]["n0"]["calls_per_sample"] == 20
    for argv in ([str(graph), "--input", str(inp)], [str(graph), "--dt", "1e-4"]):
        with pytest.raises(SystemExit) as e:
            energy.main(argv)
        assert e.value.code == 2
    assert "is a NIR graph: give --input X.npz and --dt DT" in capsys.readouterr().err


def test_every_node_type_survives_a_nir_file(tmp_path):
    """A chain holding every node type of nir 1.0.8 (and a nested graph) written with
    nir.write, read back by load(): the same outputs as the graph in memory, with activity."""
    rng = np.random.default_rng(12)

    def r(*shape, scale=1.0):
        return rng.normal(0, scale, size=shape)

    def pos(*shape, low=2e-3, high=8e-3):
        return rng.uniform(low, high, size=shape)

    inner_nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
                   "lin": nir.Linear(weight=r(8, 8, scale=0.8)),
                   "cubalif": nir.CubaLIF(tau_syn=pos(8), tau_mem=pos(8), r=_ones(8, 4.0),
                                          v_leak=np.zeros(8), v_threshold=_ones(8, 0.2),
                                          v_reset=np.zeros(8), w_in=_ones(8, 2.0)),
                   "output": nir.Output(output_type={"output": np.array([8])})}
    inner = nir.NIRGraph(nodes=inner_nodes, edges=[("input", "lin"), ("lin", "cubalif"),
                                                   ("cubalif", "output")], type_check=False)
    chain = [
        ("conv2", nir.Conv2d(input_shape=(6, 6), weight=r(4, 2, 3, 3), stride=1, padding=1,
                             dilation=1, groups=1, bias=r(4, scale=0.1))),
        ("sum", nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0]))),
        ("avg", nir.AvgPool2d(kernel_size=np.array([1, 1]), stride=np.array([1, 1]),
                              padding=np.array([0, 0]))),
        ("fl1", nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=1, end_dim=-1)),
        ("conv1", nir.Conv1d(input_shape=9, weight=r(2, 4, 3), stride=1, padding=0, dilation=1,
                             groups=1, bias=np.zeros(2))),
        ("fl2", nir.Flatten(input_type={"input": np.array([2, 7])}, start_dim=0, end_dim=-1)),
        ("aff", nir.Affine(weight=r(8, 14, scale=0.5), bias=r(8, scale=0.1))),
        ("delay", nir.Delay(delay=np.array([0.0, 1e-4, 2e-4, 0.0, 3e-4, 1e-4, 0.0, 2e-4]))),
        ("scale", nir.Scale(scale=r(8) + 2.0)),
        ("lif", nir.LIF(tau=pos(8), r=_ones(8, 3.0), v_leak=r(8, scale=0.01),
                        v_threshold=_ones(8, 0.1), v_reset=np.zeros(8))),
        ("sub", inner),
        ("lin2", nir.Linear(weight=r(8, 8))),
        ("if", nir.IF(r=_ones(8, 2000.0), v_threshold=_ones(8, 0.3), v_reset=np.zeros(8))),
        ("lin3", nir.Linear(weight=r(8, 8))),
        ("li", nir.LI(tau=pos(8), r=_ones(8, 1.0), v_leak=np.zeros(8))),
        ("cubali", nir.CubaLI(tau_syn=pos(8), tau_mem=pos(8), r=_ones(8), v_leak=np.zeros(8),
                              w_in=_ones(8))),
        ("thr", nir.Threshold(threshold=_ones(8, 0.0))),
        ("i", nir.I(r=_ones(8, 100.0))),
    ]
    names = [n for n, _ in chain]
    g = _graph([2, 6, 6], *[node for _, node in chain], names=names, out_shape=[8])
    kinds = {type(n).__name__ for _, n in chain} | {"Input", "Output", "NIRGraph", "CubaLIF",
                                                     "Linear"}
    assert kinds >= set(snir.NODE_TYPES) - {"Identity"}
    path = tmp_path / "all.nir"
    nir.write(path, g)
    x = (rng.random((3, 25, 2, 6, 6)) < 0.3).astype(np.float32)
    a, ta = snir.run(g, x, dt=1e-4, trace="all")
    b, tb = snir.run(path, x, dt=1e-4, trace="all")
    assert np.array_equal(a["output"], b["output"])
    assert ta.keys() == tb.keys() and "sub.cubalif" in tb
    for k in ("lif", "sub.cubalif", "if"):
        assert np.array_equal(ta[k]["z"], tb[k]["z"]) and tb[k]["z"].any(), k
    assert tb["thr"]["z"].any() and not tb["thr"]["z"].all()
