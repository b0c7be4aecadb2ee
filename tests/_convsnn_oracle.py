"""Slow, obviously correct NumPy implementation of the Conv-SNN forward contract (test oracle).

Written straight from the forward contract (the docstrings of ``snnfast._convsnn_kernels``,
``hidden_forward`` for FC1) with no attempt at speed: loops over samples,
taps and spikes in exactly the contract's order, float32 throughout, so the compiled kernels
must match it bit for bit (integers and spikes exactly; float sums too, as the order is fixed).
"""
import collections

import numpy as np

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(z):
    """splitmix64 finaliser on uint64 (arrays or scalars; multiplication wraps mod 2^64)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def u24(seed, epoch, sample_id, step, pixels):
    """uint64 array of u24 for one sample, one step, the given pixels."""
    h = mix64(np.uint64(seed) ^ np.uint64(0x9E3779B97F4A7C15))
    h = mix64(h ^ np.uint64(epoch))
    h = mix64(h ^ np.uint64(sample_id))
    ctr = (np.uint64(step) << np.uint64(32)) | np.asarray(pixels, dtype=np.uint64)
    return mix64(h ^ ctr) >> np.uint64(40)


def input_spikes(images, sample_ids, seed, epoch, T, n_det):
    """uint8 (B, T, 784) input spikes per the contract (float64 deterministic rule)."""
    B = images.shape[0]
    out = np.zeros((B, T, 784), np.uint8)
    u8 = images.astype(np.int64)
    for t in range(T):
        if t < n_det:
            out[:, t] = (images.astype(np.float64) / 255.0) > (1.0 - t / float(n_det))
        else:
            for b in range(B):
                u = u24(seed, epoch, sample_ids[b], t, np.arange(784)).astype(np.int64)
                out[b, t] = u * 255 < u8[b] * (1 << 24)
    return out


def conv_current(s_in, conv_w, conv_b):
    """(B, 2304) float32: taps added in (ky, kx) order where the input spiked, then + bias."""
    B = s_in.shape[0]
    img = s_in.reshape(B, 28, 28).astype(bool)
    w = conv_w.reshape(16, 5, 5)
    acc = np.zeros((B, 16, 12, 12), np.float32)
    for ky in range(5):
        for kx in range(5):
            hit = img[:, ky:ky + 23:2, kx:kx + 23:2][:, None, :, :]   # (B, 1, 12, 12)
            acc = np.where(hit, acc + w[:, ky, kx][None, :, None, None], acc)
    return (acc + conv_b[None, :, None, None]).reshape(B, 2304).astype(np.float32)


def _window_drive_rows(zc_b, window, prev, incremental):
    """(clear, rows to add, rows to subtract) of one sample's windowed update.

    Direct: clear the accumulator, then add the rows of the window's spikes, step then
    neuron ascending. Incremental (both windows at most two steps, and fewer rows): keep
    the accumulator, add the neurons that spiked more often in this window than in the
    previous one (twice if by two), then subtract those that spiked less often, each in
    ascending order.
    """
    direct = [j for t in window for j in np.flatnonzero(zc_b[t])]
    if incremental and prev is not None and len(window) <= 2 and len(prev) <= 2:
        now = collections.Counter(direct)
        before = collections.Counter(j for t in prev for j in np.flatnonzero(zc_b[t]))
        adds = sorted((now - before).elements())
        subs = sorted((before - now).elements())
        if len(adds) + len(subs) < len(direct):
            return False, adds, subs
    return True, direct, []


def forward(images, sample_ids, seed, epoch, conv_w, conv_b, W1, b1, *, T=10, n_det=5,
            beta_c=0.9, thr_c=0.8, beta_h=0.9, thr_h=0.8, reset_h="subtract", period=2,
            phase=1, drive="window", scale=1.0, incremental=False):
    """Return a dict with all spikes, counts and counters of the contract.

    Also ``n_incremental`` (updates formed incrementally) and ``n_repeated`` (rows added or
    subtracted twice in them), so that tests can see that they exercised that form.
    """
    f = np.float32
    beta_c, thr_c, beta_h, thr_h, scale = map(f, (beta_c, thr_c, beta_h, thr_h, scale))
    B = images.shape[0]
    s_in = input_spikes(images, sample_ids, seed, epoch, T, n_det)
    zc_all = np.zeros((B, T, 2304), np.uint8)
    zh_all = np.zeros((B, T, 1024), np.uint8)
    v_c = np.zeros((B, 2304), f)
    v_h = np.zeros((B, 1024), f)
    acc = np.zeros((B, 1024), f)
    ih_sum = np.zeros((B, 1024), f)
    fc1_adds = np.zeros((B, T), np.int64)
    pending = 0                      # first step whose conv spikes the hidden layer has not seen
    prev_window = None               # steps of the previous update's window
    n_incremental = n_repeated = 0
    evt = conv_events_per_pixel()
    for t in range(T):
        I_c = conv_current(s_in[:, t], conv_w, conv_b)
        v_c = (beta_c * v_c).astype(f)
        v_c = (v_c + I_c).astype(f)
        z_c = v_c > thr_c
        zc_all[:, t] = z_c
        v_c = np.where(z_c, f(0), v_c)
        if t % period == phase:
            window = range(pending, t + 1)
            for b in range(B):
                if drive == "cumulative":
                    clear, adds, subs = False, [j for tt in window
                                                for j in np.flatnonzero(zc_all[b, tt])], []
                else:
                    clear, adds, subs = _window_drive_rows(zc_all[b], window, prev_window,
                                                           incremental)
                    n_incremental += not clear
                    n_repeated += len(adds) - len(set(adds)) + len(subs) - len(set(subs))
                fc1_adds[b, t] = 1024 * (len(adds) + len(subs))
                if clear:
                    acc[b] = 0
                for j in adds:
                    acc[b] = acc[b] + W1[j]
                for j in subs:
                    acc[b] = acc[b] - W1[j]
            prev_window = window
            pending = t + 1
            I_h = ((acc + b1).astype(f) * scale).astype(f)
            ih_sum = (ih_sum + I_h).astype(f)
            v_h = (beta_h * v_h).astype(f)
            v_h = (v_h + I_h).astype(f)
            z_h = v_h > thr_h
            zh_all[:, t] = z_h
            if reset_h == "halve":
                v_h = np.where(z_h, (v_h * f(0.5)).astype(f), v_h)
            elif reset_h == "subtract":
                v_h = np.where(z_h, (v_h - thr_h).astype(f), v_h)
            elif reset_h == "zero":
                v_h = np.where(z_h, f(0), v_h)
            else:
                raise ValueError(reset_h)
    return {
        "input_spikes": s_in, "conv_spikes": zc_all, "hidden_spikes": zh_all,
        "n_in": s_in.sum(1, dtype=np.int32), "n_c": zc_all.sum(1, dtype=np.int32),
        "n_h": zh_all.sum(1, dtype=np.int32), "ih_sum": ih_sum,
        "in_count": s_in.sum(2, dtype=np.int64),
        "conv_count": zc_all.sum(2, dtype=np.int64),
        "hid_count": zh_all.sum(2, dtype=np.int64),
        "conv_events": (s_in.astype(np.int64) * evt[None, None, :]).sum(2),
        "fc1_adds": fc1_adds, "n_incremental": n_incremental, "n_repeated": n_repeated,
    }


def conv_events_per_pixel():
    """int64 (784,): for each pixel, 16 x the number of output positions whose window holds it."""
    cover = np.zeros((28, 28), np.int64)
    for y in range(12):
        for x in range(12):
            cover[2 * y:2 * y + 5, 2 * x:2 * x + 5] += 1
    return (cover * 16).reshape(784)


def adam(param, grad, m, v, lr, beta1, beta2, eps, step):
    """NumPy float32 Adam, same formula and constants as ``adam_step`` documents."""
    f = np.float32
    b1, b2 = float(f(beta1)), float(f(beta2))
    step_size = f(float(f(lr)) / (1.0 - b1 ** step))
    rbc2 = f(1.0 / np.sqrt(1.0 - b2 ** step))
    m = (f(b1) * m).astype(f) + (f(1.0 - b1) * grad).astype(f)
    v = (f(b2) * v).astype(f) + (f(1.0 - b2) * (grad * grad).astype(f)).astype(f)
    denom = ((np.sqrt(v).astype(f) * rbc2).astype(f) + f(eps)).astype(f)
    param = (param - (step_size * (m / denom).astype(f)).astype(f)).astype(f)
    return param, m.astype(f), v.astype(f)


def w1_grad(c, d):
    """dL/dW1 = c.T @ d summed sample by sample (b ascending), each product rounded first:
    the order of the fused W1 kernels (samples with c[b, i] == 0 add exact zeros)."""
    g = np.zeros((c.shape[1], d.shape[1]), np.float32)
    for b in range(len(c)):
        g += np.outer(c[b], d[b]).astype(np.float32)
    return g


def w1_back(d, W1):
    """d @ W1.T in the fused kernel's order: 8 lane sums over j = l (mod 8) ascending, then
    ((s_0 + s_1) + s_2) + ... + s_7, every product and sum rounded to float32."""
    acc = np.zeros((len(d), W1.shape[0], 8), np.float32)
    for j0 in range(0, W1.shape[1], 8):
        acc += d[:, None, j0:j0 + 8] * W1[None, :, j0:j0 + 8]
    out = acc[..., 0].copy()
    for lane in range(1, 8):
        out += acc[..., lane]
    return out


def _taps(x):
    """(B, 25, 144): the input value under tap (ky, kx) of every output position."""
    img = x.reshape(len(x), 28, 28)
    return np.stack([img[:, ky:ky + 23:2, kx:kx + 23:2].reshape(len(x), 144)
                     for ky in range(5) for kx in range(5)], axis=1)


def conv_rate_currents(x, conv_w, conv_b):
    """conv(x) + b for real-valued x (B, 784): taps added in (ky, kx) order, then the bias."""
    P = _taps(x)
    W = conv_w.reshape(16, 25)
    acc = np.zeros((len(x), 16, 144), np.float32)
    for k in range(25):
        acc += W[None, :, k, None] * P[:, None, k, :]
    acc += conv_b[None, :, None]
    return acc.reshape(len(x), 2304)


def conv_rate_wgrad(x, delta):
    """dL/dconv_w (16, 25): per sample over the 144 positions in order, then over samples."""
    P = _taps(x)
    D = delta.reshape(len(x), 16, 144)
    part = np.zeros((len(x), 16, 25), np.float32)
    for p in range(144):
        part += D[:, :, p, None] * P[:, None, :, p]
    g = np.zeros((16, 25), np.float32)
    for b in range(len(x)):
        g += part[b]
    return g


def _lane_sums(v):
    """Sums over the last axis (a multiple of 8) in the kernels' order: 8 lane sums over
    j = l (mod 8) ascending, then ((s_0 + s_1) + s_2) + ... + s_7, all in float32."""
    acc = v[..., 0:8].copy()
    for j0 in range(8, v.shape[-1], 8):
        acc += v[..., j0:j0 + 8]
    out = acc[..., 0].copy()
    for lane in range(1, 8):
        out += acc[..., lane]
    return out


def conv_rate_backward(x, conv_w, conv_b, back, total, scale, center, slope):
    """The fused conv backward pass in the kernel's order (see ext/_conv_rates.pyx)."""
    f32 = np.float32

    def dphi(a):                       # convsnn_numpy.surrogate's operations, one by one
        t = np.abs(a - f32(center)) * f32(slope)
        t = t + f32(1)
        return f32(0.5 * slope) / (t * t)
    B = len(x)
    br = back * f32(scale)
    ph = dphi(conv_rate_currents(x, conv_w, conv_b))
    gw = conv_rate_wgrad(x, br * ph)
    phib = dphi(conv_b)
    u = _lane_sums((br * (ph - np.repeat(phib, 144))).reshape(B, 16, 144))
    gb = np.zeros(16, f32)
    for b in range(B):
        gb += u[b]
    return gw, gb + (f32(scale) * phib) * _lane_sums(total.reshape(16, 144))
