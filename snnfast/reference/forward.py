"""The reference forward (inference) pass of a Network, with exact per-layer counters.

Order of every float32 sum (the contract fast implementations must follow to be bit-identical):

* a synaptic layer's drive starts at 0 (or, for a cumulative drive, at the previous update's
  drive) and adds ``x_i * w`` for each nonzero input ``x_i`` -- the *events* -- in the order
  (step ascending, flat input index ascending); then ``+ bias``, the pools after it, and
  ``* scale``. For a Conv2d this equals adding the taps in (channel, ky, kx) order;
* the incremental form of a windowed drive (see :func:`_window_events`);
* pools add their window in (ky, kx) order; AvgPool2d then divides by ``kh * kw``;
* LIF: ``v = v * decay`` then ``v = v + I`` (two float32 roundings, no fused multiply-add);
* layers after the RateReadout: ``rates @ weight + bias`` (NumPy's matmul).
"""
import numpy as np

from .._utils import check_named_arrays
from ..network.layers import Conv2d, Direct, Hybrid, Linear

__all__ = ["forward", "encode", "synapse", "pool2d", "linear", "EVAL_EPOCH"]

EVAL_EPOCH = 2 ** 32 - 1
"""The noise key's epoch of evaluation passes (outside any training epoch)."""

_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
f32 = np.float32


# ----------------------------------------------------------------------------- encoders
def _mix64(z):
    """splitmix64's finaliser on uint64 (arrays; multiplication wraps mod 2^64)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hybrid(images, enc, seed, epoch, sample_ids):
    """uint8 spikes (B, T, P) of uint8 images (B, P)."""
    B, P = images.shape
    out = np.zeros((B, enc.T, P), np.uint8)
    u = images.astype(np.float64)
    for t in range(min(enc.T, enc.n_det)):
        out[:, t] = u / 255.0 > 1.0 - t / float(enc.n_det)
    if enc.T > enc.n_det:
        key = _mix64(_mix64(np.uint64((int(seed) ^ _GOLDEN) & _M64)) ^ np.uint64(int(epoch)))
        keys = _mix64(key ^ np.asarray(sample_ids).astype(np.uint64))          # (B,)
        thresh = images.astype(np.uint64) << np.uint64(24)                     # u8 * 2^24
        pix = np.arange(P, dtype=np.uint64)
        for t in range(enc.n_det, enc.T):
            ctr = (np.uint64(t) << np.uint64(32)) | pix
            u24 = _mix64(keys[:, None] ^ ctr[None, :]) >> np.uint64(40)
            out[:, t] = u24 * np.uint64(255) < thresh
    return out


def encode(network, inputs, seed=0, epoch=EVAL_EPOCH, sample_ids=None):
    """The encoder's output, (B, T, C, H, W): uint8 spikes (Hybrid) or float32 frames (Direct).

    Parameters
    ----------
    network : Network
    inputs : ndarray
        Hybrid: uint8 images (B, C, H, W), or (B, C*H*W), or (B, H, W) when C = 1.
        Direct: real frames (B, T, C, H, W), finite (cast to float32).
    seed, epoch : int in [0, 2**64)
        Keys of the Hybrid encoder's Bernoulli steps (evaluation: ``EVAL_EPOCH``).
    sample_ids : int array (B,), optional
        Each sample's id in its data set (default ``arange(B)``): keys its noise.
    """
    enc, shape = network.encoder, network.input_shape
    if not isinstance(inputs, np.ndarray):
        raise TypeError(f"inputs must be a numpy.ndarray, got {type(inputs).__name__}")
    if isinstance(enc, Direct):
        want = (enc.T,) + shape
        if inputs.ndim != 5 or inputs.shape[1:] != want:
            raise ValueError(f"inputs must have shape (N, {', '.join(map(str, want))}) for the "
                             f"Direct encoder, got {inputs.shape}")
        if inputs.dtype.kind not in "biuf" or not np.isfinite(inputs).all():
            raise ValueError("inputs must hold finite real numbers")
        return inputs.astype(np.float32)
    assert isinstance(enc, Hybrid)
    if inputs.dtype != np.uint8:
        raise ValueError(f"inputs must be uint8 images for the Hybrid encoder, got "
                         f"{inputs.dtype}")
    P = int(np.prod(shape))
    ok = (inputs.ndim == 2 and inputs.shape[1] == P) or inputs.shape[1:] == shape or \
        (shape[0] == 1 and inputs.shape[1:] == shape[1:])
    if not ok:
        raise ValueError(f"inputs must have shape (N, {', '.join(map(str, shape))}) or "
                         f"(N, {P}), got {inputs.shape}")
    B = len(inputs)
    ids = np.arange(B) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (B,) or ids.dtype.kind not in "iu" or (B and ids.min() < 0):
        raise ValueError(f"sample_ids must be {B} integers >= 0")
    for v, what in ((seed, "seed"), (epoch, "epoch")):
        if not 0 <= int(v) < 2 ** 64:
            raise ValueError(f"{what} must be in [0, 2**64), got {v}")
    s = _hybrid(inputs.reshape(B, P), enc, seed, epoch, ids)
    return s.reshape((B, enc.T) + shape)


# ----------------------------------------------------------------------------- layer ops
def pool2d(kind, x, kernel_size, stride):
    """Pool (B, C, H, W) -> (B, C, OH, OW) float32; ``kind`` "SumPool2d", "AvgPool2d" or
    "MaxPool2d". Sums add the window in (ky, kx) order; the mean is that sum / (kh kw)."""
    (kh, kw), (sh, sw) = kernel_size, stride
    x = np.asarray(x, np.float32)
    OH, OW = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    taps = [x[:, :, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw)]
    if kind == "MaxPool2d":
        return np.maximum.reduce(taps)
    out = np.zeros(taps[0].shape, np.float32)
    for tap in taps:
        out += tap
    return out / f32(kh * kw) if kind == "AvgPool2d" else out


def _rows(layer, weight, in_shape, idx):
    """Each event's contribution per unit input, (len(idx), n_out) float32, and its fan-out
    (the synaptic operations one event costs), int64 (len(idx),)."""
    if isinstance(layer, Linear):
        return weight[idx], np.full(len(idx), weight.shape[1], np.int64)
    O = weight.shape[0]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    _, H, W = in_shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    c, y, x = np.unravel_index(idx, in_shape)
    rows = np.zeros((len(idx), O, OH, OW), np.float32)
    taps = np.zeros(len(idx), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            ny, nx = y + ph - ky, x + pw - kx          # = output position * stride
            ok = ((ny >= 0) & (nx >= 0) & (ny % sh == 0) & (nx % sw == 0)
                  & (ny // sh < OH) & (nx // sw < OW))
            e = np.flatnonzero(ok)
            rows[e, :, ny[e] // sh, nx[e] // sw] = weight[:, c[e], ky, kx].T
            taps += ok
    return rows.reshape(len(idx), O * OH * OW), taps * O


def _accumulate(layer, weight, in_shape, acc, idx, coefs, chunk=256):
    """``acc + sum_e coefs[e] * row(idx[e])`` added one event at a time in float32, and the
    events' synaptic operations. Rows are built ``chunk`` events at a time (bounded memory)."""
    ops = 0
    for i in range(0, len(idx), chunk):
        rows, fan = _rows(layer, weight, in_shape, idx[i:i + chunk])
        terms = rows * coefs[i:i + chunk, None].astype(np.float32)
        acc = np.cumsum(np.concatenate([acc[None], terms]), axis=0, dtype=np.float32)[-1]
        ops += int(fan.sum())
    return acc, ops


def synapse(layer, weight, bias, x):
    """A Conv2d or Linear layer on one input (C, H, W) or (F,), adding the taps of the nonzero
    inputs in ascending index order; float32 output (flat), plus its synaptic operations."""
    flat = np.asarray(x, np.float32).reshape(-1)
    idx = np.flatnonzero(flat)
    n_out = _n_out(layer, weight, np.shape(x))
    acc, ops = _accumulate(layer, weight, np.shape(x), np.zeros(n_out, np.float32), idx,
                           flat[idx])
    return _with_bias(layer, acc[None], bias, (n_out,))[0], ops


def _n_out(layer, weight, in_shape):
    return weight.shape[1] if isinstance(layer, Linear) else \
        weight.shape[0] * int(np.prod(layer.output_shape(in_shape)[1:]))


def linear(x, weight, bias):
    """``x @ weight + bias`` (the layers after the RateReadout)."""
    y = np.asarray(x, np.float32) @ weight
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------- one stage
class _Stage:
    """A spiking layer with the layers that drive it: pools/Flatten ("pre", per step, on
    the source's output), the synaptic layer, pools/Flatten ("post", on the current)."""

    def __init__(self, net, weights, neuron, chain, B, first, incremental):
        self.net, self.neuron = net, net[neuron]
        syn = next(i for i in chain if net[i].kind == "synapse")
        self.pre = [i for i in chain if i < syn]
        self.post = [i for i in chain if i > syn]
        self.syn_index, self.syn = syn, net[syn]
        self.syn_in = net.input_shape_of(syn)
        self.w = weights[f"{self.syn.name}.weight"]
        self.b = weights.get(f"{self.syn.name}.bias")
        n_out = _n_out(self.syn, self.w, self.syn_in)
        self.steps = set(self.neuron.update_steps(net.T))
        # the kernels' incremental window form needs binary events: spikes of a layer,
        # reshaped at most (a pool makes counts or fractions, an encoder may give frames)
        self.incremental = (incremental and not first and self.neuron.drive == "window"
                            and self.neuron.period > 1
                            and all(type(net[i]).__name__ == "Flatten" for i in self.pre))
        self.acc = np.zeros((B, n_out), np.float32)
        self.v = np.zeros((B,) + net.shapes[neuron], np.float32)
        self.pending = []              # per-step (B, n_in) events since the last update
        self.prev = None               # the previous update's window (list of (B, n_in))
        self.n_updates = len(self.steps)

    def _pre(self, x):
        for i in self.pre:
            x = _apply(self.net[i], x)
        return x.reshape(len(x), -1)

    def step(self, t, x, ops):
        """Spikes (B, *shape) uint8 of step ``t`` given the source's output ``x``; adds the
        synaptic operations to ``ops`` (B,)."""
        self.pending.append(np.asarray(self._pre(x), np.float32))
        B = len(x)
        if t not in self.steps:
            return np.zeros((B,) + self.v.shape[1:], np.uint8)
        for b in range(B):
            self.acc[b], ops[b] = self._drive(b)
        self.prev, self.pending = self.pending, []
        cur = _with_bias(self.syn, self.acc, self.b, self.net.shapes[self.syn_index])
        for i in self.post:
            cur = _apply(self.net[i], cur)
        cur = cur.reshape(self.v.shape) * f32(self.neuron.scale)
        return self._lif(cur)

    def _drive(self, b):
        """(drive before bias, synaptic operations) of sample ``b`` at an update."""
        window = [s[b] for s in self.pending]
        if self.neuron.drive == "cumulative":
            return self._add(self.acc[b], *_events(window))
        if self.incremental and self.prev is not None:
            inc = _window_events(window, [s[b] for s in self.prev])
            if inc is not None:
                return self._add(self.acc[b], *inc)
        return self._add(np.zeros_like(self.acc[b]), *_events(window))

    def _add(self, acc, idx, coefs):
        """``acc`` plus the events (input index, value), in order; and their synaptic
        operations."""
        return _accumulate(self.syn, self.w, self.syn_in, acc, idx, coefs)

    def _lif(self, cur):
        n = self.neuron
        v = self.v
        v *= f32(n.beta)
        v += cur
        z = v > f32(n.threshold)
        if n.reset == "zero":
            v[z] = f32(0.0)
        elif n.reset == "subtract":
            v[z] -= f32(n.threshold)
        else:
            v[z] *= f32(0.5)
        return z.astype(np.uint8)


def _events(steps):
    """(index, value) of the nonzero inputs of a list of flat per-step inputs, in the order
    (step ascending, index ascending)."""
    idx = [np.flatnonzero(s) for s in steps]
    return (np.concatenate(idx).astype(np.int64),
            np.concatenate([s[i] for s, i in zip(steps, idx)]).astype(np.float32))


def _window_events(window, prev):
    """The incremental form of a windowed drive of binary events, or None for the direct one.

    When this window and the previous one both span at most two steps, the drive may be
    formed as the previous drive plus one row per extra spike of a neuron in this window
    (ascending neuron index, repeated if it spiked twice more), then minus one row per
    missing spike (ascending), if that takes fewer rows than the direct sum. Returns the
    events (index, +1 or -1) of that form.
    """
    if len(window) > 2 or len(prev) > 2:
        return None
    d = (sum(window) - sum(prev)).astype(np.int64)
    up = np.repeat(np.arange(len(d)), np.maximum(d, 0))
    down = np.repeat(np.arange(len(d)), np.maximum(-d, 0))
    if len(up) + len(down) >= sum(int(np.count_nonzero(s)) for s in window):
        return None
    coefs = np.concatenate([np.ones(len(up), np.float32), -np.ones(len(down), np.float32)])
    return np.concatenate([up, down]).astype(np.int64), coefs


def _with_bias(layer, acc, bias, out_shape):
    """(B, n_out) drive + bias, reshaped to (B, *out_shape)."""
    B = len(acc)
    if bias is not None:
        if isinstance(layer, Conv2d):
            acc = (acc.reshape(B, len(bias), -1) + bias[None, :, None]).reshape(B, -1)
        else:
            acc = acc + bias
    return acc.reshape((B,) + out_shape)


def _apply(layer, x):
    """A pool or Flatten on a batch (B, ...)."""
    name = type(layer).__name__
    if name == "Flatten":
        return x.reshape(len(x), -1)
    return pool2d(name, x, layer.kernel_size, layer.stride)


# ----------------------------------------------------------------------------- forward
def _check_weights(net, weights):
    shapes = net.param_shapes()
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict of arrays, got {type(weights).__name__}")
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise ValueError(f"weights has array(s) the network does not: {', '.join(extra)}")
    return check_named_arrays(weights, shapes, "weight")


def forward(network, weights, inputs, *, seed=0, epoch=EVAL_EPOCH, sample_ids=None,
            record=False, incremental=True):
    """Inference of ``network`` on a batch, with exact counters.

    Parameters
    ----------
    network : Network
    weights : dict
        ``{"<layer>.weight": array, "<layer>.bias": array}`` as
        :meth:`Network.param_shapes` lists (cast to float32).
    inputs : ndarray
        See :func:`encode`.
    seed, epoch, sample_ids
        Noise keys of the Hybrid encoder (see :func:`encode`).
    record : bool
        Also return the encoder's output and every spiking layer's spikes.
    incremental : bool
        Allow the incremental form of windowed drives (see :func:`_window_events`), as the
        compiled kernels form them; False sums every window directly (the same values up to
        float32 rounding).

    Returns
    -------
    dict
        ``output`` ``(B, *output_shape)`` float32; ``rates`` (B, F) float32 (the RateReadout's);
        ``counts``: int64 (B, T) per step -- ``"input"`` nonzero encoder outputs, each spiking
        layer's spikes and each synaptic layer's synaptic operations (one per connection an
        event reaches), under the layer's name; ``dense_macs``: multiply-adds per sample of
        each layer after the readout; ``n_updates``: updates per spiking layer; with
        ``record``: ``input`` (B, T, C, H, W), ``spikes`` ``{name: uint8 (B, T, *shape)}`` and
        ``v`` ``{name: float32 (B, *shape)}``, every spiking layer's membrane potentials after
        the last step (they show any float32 difference that the spikes may hide).
    """
    net = network
    w = _check_weights(net, weights)
    x = encode(net, inputs, seed, epoch, sample_ids)
    B, T = x.shape[:2]
    stages = [_Stage(net, w, n, chain, B, k == 0, incremental)
              for k, (n, chain) in enumerate(net.stages())]
    counts = {"input": np.count_nonzero(x.reshape(B, T, -1), axis=2).astype(np.int64)}
    for n, _ in net.stages():
        counts[net[n].name] = np.zeros((B, T), np.int64)
    for st in stages:
        counts[st.syn.name] = np.zeros((B, T), np.int64)
    spikes = {net[n].name: np.zeros((B, T) + net.shapes[n], np.uint8) for n, _ in net.stages()}
    for t in range(T):
        src = x[:, t]
        for st in stages:
            src = st.step(t, src, counts[st.syn.name][:, t])
            spikes[st.neuron.name][:, t] = src
            counts[st.neuron.name][:, t] = src.reshape(B, -1).sum(axis=1)
    return _readout(net, w, stages, spikes, counts, x if record else None, record)


def _readout(net, w, stages, spikes, counts, x, record):
    r = net.readout_index
    last = stages[-1]
    norm = net.T if net[r].norm == "steps" else last.n_updates
    n = spikes[last.neuron.name].sum(axis=1, dtype=np.int64)
    B = len(n)
    rates = n.reshape(B, -1).astype(np.float32) / f32(max(norm, 1))
    y, macs = rates, {}
    for i in range(r + 1, len(net)):
        layer = net[i]
        if type(layer).__name__ == "Linear":
            macs[layer.name] = int(np.prod(layer.param_shapes(net.input_shape_of(i))["weight"]))
            y = linear(y, w[f"{layer.name}.weight"], w.get(f"{layer.name}.bias"))
        else:
            y = y.reshape(B, -1)
    out = dict(output=y.reshape((B,) + net.output_shape), rates=rates, counts=counts,
               dense_macs=macs, n_updates={st.neuron.name: st.n_updates for st in stages})
    if record:
        out.update(input=x, spikes=spikes, v={st.neuron.name: st.v.copy() for st in stages})
    return out
