"""The tuned Conv-SNN kernels at sizes other than the presets': every size is an argument
(snnfast._convsnn_kernels.Geometry, read from a network description), and the results equal
plain NumPy references bit for bit, for 1 and 2 threads."""
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from snnfast import _convsnn_kernels as K
from snnfast import convsnn_numpy as cnp
from snnfast.network import LIF, Conv2d, Flatten, Linear, Network, RateReadout, load_preset

sys.path.insert(0, os.path.dirname(__file__))  # the oracle sits beside this file (any import mode)
import _convsnn_oracle as O  # noqa: E402

# (height, width, channels, kernel, stride, hidden): odd/even output widths, 8/16/24
# channels (one, two and three 8-float vectors), strides 1-3, the 16-channel 5x5 stride-2
# specialisation on another input size, and a kernel that covers the whole input
GEOMETRIES = [
    (18, 18, 8, 3, 1, 32),
    (26, 26, 24, 3, 3, 48),
    (28, 24, 16, 5, 2, 64),
    (11, 19, 16, 4, 1, 16),
    (8, 15, 8, 8, 1, 16),
]
IDS = ["18x18-c8k3s1", "26x26-c24k3s3", "28x24-c16k5s2", "11x19-c16k4s1", "8x15-c8k8"]


def geometry(h, w, c, k, s, hid, classes=5):
    return K.Geometry(height=h, width=w, channels=c, kernel=k, stride=s, hidden=hid,
                      classes=classes)


def make_case(g, seed, B=5):
    rng = np.random.default_rng(seed)
    img = np.where(rng.random((B, g.n_pix)) < 0.3, rng.integers(1, 256, (B, g.n_pix)), 0)
    img[rng.random((B, g.n_pix)) < 0.05] = 255
    fan = g.n_taps
    p = {"conv_w": rng.normal(0, np.sqrt(2 / fan), g.param_shapes["conv_w"]),
         "conv_b": rng.normal(0, 0.1, g.channels),
         "W1": rng.normal(0, 3 / np.sqrt(g.n_conv), (g.n_conv, g.hidden)),
         "b1": rng.normal(0, 0.1, g.hidden),
         "W2": rng.normal(0, 0.3, (g.hidden, g.classes)), "b2": np.zeros(g.classes)}
    return img.astype(np.uint8), {k: v.astype(np.float32) for k, v in p.items()}


def config(g, **kw):
    """The semantic fields convsnn_numpy.forward reads, with the sizes as ``geometry``."""
    base = dict(T=8, n_det=3, seed=3, reseeded_noise=False, beta_c=0.9, thr_c=0.5,
                reset_c="zero", beta_h=0.9, thr_h=0.5, reset_h="subtract", hidden_period=2,
                hidden_phase=1, drive="window", drive_scale=1.0, rate_norm="updates",
                geometry=g)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("sizes", GEOMETRIES, ids=IDS)
@pytest.mark.parametrize("mode", ["default", "seed"])
def test_forward_matches_numpy_reference(sizes, mode):
    g = geometry(*sizes)
    images, p = make_case(g, sum(sizes))
    cfg = config(g) if mode == "default" else config(
        g, reset_h="halve", hidden_phase=0, drive="cumulative", drive_scale=0.5)
    ids = np.arange(len(images), dtype=np.int64) * 7
    ref = cnp.forward(p, images, ids, 2, cfg, exact=True, record=True)
    runs = []
    for nt in (1, 2):
        conv = K.conv_forward(images, ids, cfg.seed, 2, p["conv_w"], p["conv_b"], T=cfg.T,
                              n_det=cfg.n_det, beta=cfg.beta_c, thr=cfg.thr_c, n_threads=nt,
                              record_input=True, geometry=g)
        hid = K.hidden_forward(conv, K.to_blocked(p["W1"]), p["b1"], beta=cfg.beta_h,
                               thr=cfg.thr_h, reset=cfg.reset_h, period=cfg.hidden_period,
                               phase=cfg.hidden_phase, drive=cfg.drive, scale=cfg.drive_scale,
                               incremental=cnp.fc1_incremental(cfg.drive, cfg.hidden_period),
                               record=True, n_threads=nt)
        runs.append((conv, hid))
        np.testing.assert_array_equal(conv.input_spikes, ref["s_in"])
        np.testing.assert_array_equal(conv.conv_spikes(), ref["z_c"])
        np.testing.assert_array_equal(hid.spikes, ref["z_h"])
        np.testing.assert_array_equal(conv.n_in, ref["n_in"])
        np.testing.assert_array_equal(conv.n_c, ref["n_c"])
        np.testing.assert_array_equal(hid.n_h, ref["n_h"])
        counts = {**conv.step_counters(), **hid.step_counters()}
        for key, name in (("input_spikes", "input_spikes"), ("conv_spikes", "conv_spikes"),
                          ("hidden_spikes", "hidden_spikes"),
                          ("conv_synaptic_events", "conv_synaptic_events"),
                          ("fc1_row_adds", "fc1_row_adds")):
            np.testing.assert_array_equal(counts[key], ref["counts"][name].sum(0), err_msg=key)
    assert 0 < ref["z_c"].mean() < 1 and 0 < ref["z_h"].mean() < 1     # a real test
    (c1, h1), (c2, h2) = runs
    assert h1.ih_sum.tobytes() == h2.ih_sum.tobytes()
    np.testing.assert_array_equal(K.conv_event_table(g), cnp.conv_event_table(g))


def test_gather_equals_scatter_at_other_sizes():
    g = geometry(*GEOMETRIES[1])
    images, p = make_case(g, 1)
    ids = np.arange(len(images), dtype=np.int64)
    a, b = (K.conv_forward(images, ids, 1, 1, p["conv_w"], p["conv_b"], geometry=g,
                           conv_method=m) for m in ("scatter", "gather"))
    np.testing.assert_array_equal(a.conv_spikes(), b.conv_spikes())


def taps(x, g):
    """(B, k*k, n_pos): the input value under tap (ky, kx) of every output position."""
    img = x.reshape(len(x), g.height, g.width)
    s, oh, ow = g.stride, g.out_h, g.out_w
    return np.stack([img[:, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s]
                     .reshape(len(x), g.n_pos)
                     for ky in range(g.kernel) for kx in range(g.kernel)], axis=1)


def rate_backward_reference(x, conv_w, conv_b, back, total, scale, center, slope, g):
    """The fused conv backward pass in the kernel's documented order (ext/_conv_rates.pyx):
    currents with the taps in (ky, kx) order then the bias; per sample the weight gradient
    over the positions in order, then over the samples; lane sums for the bias."""
    f32 = np.float32
    C, P, KK = g.channels, g.n_pos, g.n_taps

    def dphi(a):
        t = np.abs(a - f32(center)) * f32(slope)
        t = t + f32(1)
        return f32(0.5 * slope) / (t * t)
    T = taps(x, g)
    W = conv_w.reshape(C, KK)
    a = np.zeros((len(x), C, P), f32)
    for k in range(KK):
        a += W[None, :, k, None] * T[:, None, k, :]
    a += conv_b[None, :, None]
    br = back.reshape(len(x), C, P) * f32(scale)
    ph = dphi(a)
    D = br * ph
    part = np.zeros((len(x), C, KK), f32)
    for p in range(P):
        part += D[:, :, p, None] * T[:, None, :, p]
    gw = np.zeros((C, KK), f32)
    for b in range(len(x)):
        gw += part[b]
    phib = dphi(conv_b)
    u = O._lane_sums(br * (ph - phib[None, :, None]))
    gb = np.zeros(C, f32)
    for b in range(len(x)):
        gb += u[b]
    return gw, gb + (f32(scale) * phib) * O._lane_sums(total.reshape(C, P))


@pytest.mark.parametrize("sizes", GEOMETRIES, ids=IDS)
def test_conv_rate_kernels_match_numpy_reference(sizes):
    g = geometry(*sizes)
    rng = np.random.default_rng(sum(sizes) + 1)
    B = 6
    x = (rng.integers(0, 11, (B, g.n_pix)) / 10 * (rng.random((B, g.n_pix)) < 0.15))
    x = x.astype(np.float32)
    x[0] = 0.0
    _, p = make_case(g, 2)
    full = rng.normal(0, 1e-2, (B, g.n_conv)).astype(np.float32)
    act = K.conv_patch_active(x, geometry=g)
    np.testing.assert_array_equal(act, (taps(x, g) != 0).any(axis=1).astype(np.uint8))
    back = np.where(np.tile(act, g.channels).astype(bool), full, np.float32(0))
    total = full.sum(axis=0)
    args = (x, p["conv_w"], p["conv_b"], back, total)
    ew, eb = rate_backward_reference(*args, 2.5, 0.45, 4.0, g)
    for nt in (1, 2):
        gw, gb = K.conv_rate_backward(*args, scale=2.5, center=0.45, slope=4.0, n_threads=nt,
                                      geometry=g)
        assert gw.shape == g.param_shapes["conv_w"]
        np.testing.assert_array_equal(gw.reshape(g.channels, g.n_taps), ew)
        np.testing.assert_array_equal(gb, eb)
    # and it is the gradient of the dense formula (the NumPy backend's, sgemm order)
    dw, db = cnp.conv_backward(x, p["conv_w"], p["conv_b"], full, None, np.float32(2.5), 0.45,
                               4.0, geometry=g)
    np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5 * np.abs(dw).max())
    np.testing.assert_allclose(gb, db, rtol=1e-4, atol=1e-5 * np.abs(db).max())


@pytest.mark.parametrize("sizes", GEOMETRIES, ids=IDS)
def test_w1_steps_match_numpy_reference(sizes):
    g = geometry(*sizes)
    rng = np.random.default_rng(sum(sizes) + 2)
    B = 7
    c = np.where(rng.random((B, g.n_conv)) < 0.3, rng.integers(1, 6, (B, g.n_conv)) / 5, 0)
    c = c.astype(np.float32)
    d = rng.normal(0, 1e-2, (B, g.hidden)).astype(np.float32)
    W1 = rng.normal(0, 0.05, (g.n_conv, g.hidden)).astype(np.float32)
    m = rng.normal(0, 1e-3, W1.shape).astype(np.float32)
    v = (rng.random(W1.shape) * 1e-5).astype(np.float32)
    active = rng.random((B, g.n_pos)) < 0.6
    D = d[0].copy()
    for row in d[1:]:
        D += row
    for nt in (1, 2):
        Wb, mb, vb = K.to_blocked(W1), K.to_blocked(m), K.to_blocked(v)
        back, total = K.w1_adam_step(Wb, mb, vb, c, d, lr=2e-3, step=3, active=active,
                                     n_threads=nt, geometry=g)
        full = O.w1_back(d, W1)
        np.testing.assert_array_equal(back, np.where(np.tile(active, g.channels), full, 0))
        np.testing.assert_array_equal(total, O.w1_back(D[None], W1)[0])
        pw, pm, pv = O.adam(W1, O.w1_grad(c, d), m, v, 2e-3, 0.9, 0.999, 1e-8, 3)
        np.testing.assert_array_equal(K.from_blocked(Wb), pw)
        np.testing.assert_array_equal(K.from_blocked(mb), pm)
        np.testing.assert_array_equal(K.from_blocked(vb), pv)
        Wb = K.to_blocked(W1)
        K.w1_sgd_step(Wb, c, d, rate=np.float32(1e-3), decay=np.float32(0.9999), n_threads=nt)
        expect = (W1 - np.float32(1e-3) * O.w1_grad(c, d)) * np.float32(0.9999)
        np.testing.assert_array_equal(K.from_blocked(Wb), expect)


def test_shift_images_at_other_sizes():
    from snnfast.convsnn import shift_images
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, (4, 7 * 9)).astype(np.uint8)
    dy, dx = np.array([0, 2, -3, 6]), np.array([1, -8, 0, 3])
    got = shift_images(X, dy, dx, (7, 9))
    img = X.reshape(4, 7, 9)
    for b in range(4):
        want = np.zeros((7, 9), np.uint8)
        for y in range(7):
            for x in range(9):
                sy, sx = y - dy[b], x - dx[b]
                if 0 <= sy < 7 and 0 <= sx < 9:
                    want[y, x] = img[b, sy, sx]
        np.testing.assert_array_equal(got[b].reshape(7, 9), want)
    with pytest.raises(ValueError, match="less than 7 rows"):
        shift_images(X, np.array([7, 0, 0, 0]), dx, (7, 9))


def test_geometry_of_the_presets_is_read_from_their_files():
    for name in ("seed", "default", "nir"):
        net = load_preset(name)[0]
        g = K.Geometry.from_network(net)
        assert g.param_shapes == {k: net.param_shapes()[v] for k, v in
                                  (("conv_w", "conv.weight"), ("conv_b", "conv.bias"),
                                   ("W1", "fc1.weight"), ("b1", "fc1.bias"),
                                   ("W2", "fc2.weight"), ("b2", "fc2.bias"))}
    assert K.DEFAULT_GEOMETRY == K.Geometry.from_network(load_preset("default")[0])


def _net(**conv):
    layers = [Conv2d(out_channels=conv.pop("out_channels", 16), kernel_size=5, stride=2,
                     **conv), LIF(), Flatten(), Linear(out_features=64), LIF(), RateReadout(),
              Linear(out_features=10)]
    return Network((1, 28, 28), layers)


@pytest.mark.parametrize("net,match", [
    (Network((1, 28, 28), [Conv2d(out_channels=16, kernel_size=5, stride=2), LIF(), Flatten(),
                           Linear(out_features=10), LIF(), RateReadout()]),
     "run only Conv2d -> LIF"),
    (Network((2, 28, 28), [Conv2d(out_channels=16, kernel_size=5, stride=2), LIF(), Flatten(),
                           Linear(out_features=64), LIF(), RateReadout(),
                           Linear(out_features=10)]), "one input channel"),
    (_net(padding=1), "padding"),
    (_net(out_channels=12), "channels must be a multiple of 8"),
    (_net(bias=False), "bias must be true"),
])
def test_networks_outside_the_family_are_refused(net, match):
    with pytest.raises(ValueError, match=match):
        K.Geometry.from_network(net)


@pytest.mark.parametrize("kw,match", [
    (dict(height=9, width=9, kernel=3, stride=1), "multiple of 8 positions"),
    (dict(hidden=40), "hidden must be a multiple of 16"),
    (dict(kernel=30), "larger than the input"),
    (dict(stride=0), "stride must be an integer >= 1"),
    (dict(height=300, width=300), "at most 65536"),
    (dict(height=103, width=103, kernel=16, stride=1, channels=8), "allow 255"),
    (dict(height=100, width=100, kernel=37, stride=9, channels=56), "65536 conv weights"),
])
def test_bad_geometries_are_refused(kw, match):
    base = dict(height=28, width=28, channels=16, kernel=5, stride=2, hidden=64, classes=10)
    with pytest.raises(ValueError, match=match):
        K.Geometry(**{**base, **kw})


def test_arrays_of_another_geometry_are_refused():
    g = geometry(*GEOMETRIES[0])
    images, p = make_case(g, 0)
    ids = np.arange(len(images), dtype=np.int64)
    with pytest.raises(ValueError, match="images"):
        K.conv_forward(images, ids, 0, 0, p["conv_w"], p["conv_b"])     # default sizes
    conv = K.conv_forward(images, ids, 0, 0, p["conv_w"], p["conv_b"], geometry=g)
    W1b = K.to_blocked(np.zeros((K.N_CONV, 64), np.float32))
    with pytest.raises(ValueError, match="W1b"):
        K.hidden_forward(conv, W1b, np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="gather"):
        big = geometry(42, 42, 8, 3, 1, 16)
        K.conv_forward(np.zeros((1, big.n_pix), np.uint8), ids[:1], 0, 0,
                       np.zeros((8, 9), np.float32), np.zeros(8, np.float32), geometry=big,
                       conv_method="gather")
