"""Plain ReLU convolutional networks in NumPy: the source networks of TTFS CNN conversion.

A network is a list of :class:`Stage` objects applied to images of shape ``(C, H, W)``
(pixels in [0, 1]). Every stage is one weight layer -- a 2-D convolution (any stride and
zero padding, ONNX/PyTorch weight layout ``(C_out, C_in, kh, kw)``) or a dense layer
(``(n_out, n_in)``, applied to the flattened ``(C, H, W)`` map, i.e. ONNX ``Flatten``
order) -- followed, in every stage but the last, by a ReLU and optionally one pooling
(max or average). The last stage is dense and gives the logits. Batch norm is folded into
the weight layer before it (:func:`fold_batch_norm`); flattening is implicit.

Internally activations are channel-last ``(N, H, W, C)``, so that convolutions are one
im2col matrix product (BLAS). The trainer (:func:`train_cnn`) follows
:func:`snnfast.mlp.train_mlp`: Adam, step decay, best-validation weights, seedable.
"""
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


__all__ = ["Pool", "Stage", "CNN", "make_cnn", "fold_batch_norm", "train_cnn", "ARCHS"]


def _quad(v, name):
    """Padding (top, left, bottom, right) from an int, a pair (y, x) or four values."""
    v = (v,) * 4 if np.isscalar(v) else tuple(v)
    if len(v) == 2:
        v = (v[0], v[1], v[0], v[1])
    if len(v) != 4 or any(int(p) != p or p < 0 for p in v):
        raise ValueError(f"{name} must be non-negative integers (1, 2 or 4 values), got {v!r}")
    return tuple(int(p) for p in v)


def _pair(v, name):
    v = (v, v) if np.isscalar(v) else tuple(v)
    if len(v) != 2 or any(int(p) != p or p < 1 for p in v):
        raise ValueError(f"{name} must be one or two positive integers, got {v!r}")
    return tuple(int(p) for p in v)


def _out_len(n, k, s, p0, p1):
    return (n + p0 + p1 - k) // s + 1


@dataclass
class Pool:
    """Max or average pooling (ONNX ``MaxPool``/``AveragePool``, floor mode).

    ``include_pad`` (ONNX ``count_include_pad``) divides border cells of an average pool
    by ``kh*kw`` instead of by the number of real members. Max-pool padding never wins:
    pooled values are ReLU outputs (>= 0) and every window holds a real member.
    """
    kind: str
    kernel: tuple
    stride: tuple = None
    pad: tuple = (0, 0, 0, 0)
    include_pad: bool = False

    def __post_init__(self):
        if self.kind not in ("max", "avg"):
            raise ValueError(f"pool kind must be 'max' or 'avg', got {self.kind!r}")
        self.kernel = _pair(self.kernel, "pool kernel")
        self.stride = _pair(self.kernel if self.stride is None else self.stride, "pool stride")
        self.pad = _quad(self.pad, "pool padding")
        if self.pad[0] >= self.kernel[0] or self.pad[2] >= self.kernel[0] \
                or self.pad[1] >= self.kernel[1] or self.pad[3] >= self.kernel[1]:
            raise ValueError("pool padding must be smaller than the pool kernel")
        self.include_pad = bool(self.include_pad)

    def out_hw(self, h, w):
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pad
        return _out_len(h, kh, sh, pt, pb), _out_len(w, kw, sw, pl, pr)

    def windows(self, x, fill):
        """(N, OH, OW, C, kh, kw) view of the padded channel-last map ``x``."""
        (sh, sw), (pt, pl, pb, pr) = self.stride, self.pad
        xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
        oh, ow = self.out_hw(x.shape[1], x.shape[2])
        v = sliding_window_view(xp, self.kernel, axis=(1, 2))
        return v[:, :oh * sh:sh, :ow * sw:sw]

    def divisor(self, h, w):
        """(OH, OW) member counts of an average pool."""
        if self.include_pad:
            oh, ow = self.out_hw(h, w)
            return np.full((oh, ow), float(self.kernel[0] * self.kernel[1]))
        return self.windows(np.ones((1, h, w, 1)), 0.0).sum(axis=(3, 4, 5))[0]

    def forward(self, x):
        """Pool a channel-last map ``x`` (N, H, W, C)."""
        if self.kind == "max":
            return self.windows(x, -np.inf).max(axis=(4, 5))
        s = self.windows(x, 0.0).sum(axis=(4, 5))
        return s / self.divisor(x.shape[1], x.shape[2])[None, :, :, None]

    def to_dict(self):
        return {"kind": self.kind, "kernel": list(self.kernel), "stride": list(self.stride),
                "pad": list(self.pad), "include_pad": self.include_pad}


@dataclass
class Stage:
    """One weight layer (+ ReLU and optional pooling unless it is the output stage).

    Parameters
    ----------
    kind : {"conv", "dense"}
    weight : ndarray
        conv ``(C_out, C_in, kh, kw)``; dense ``(n_out, n_in)``.
    bias : ndarray (C_out,) or (n_out,)
    stride : int or pair (conv only)
    pad : int, pair or (top, left, bottom, right) zero padding (conv only)
    pool : Pool or None
    """
    kind: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple = (1, 1)
    pad: tuple = (0, 0, 0, 0)
    pool: Pool = None
    in_shape: tuple = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in ("conv", "dense"):
            raise ValueError(f"stage kind must be 'conv' or 'dense', got {self.kind!r}")
        self.weight = np.ascontiguousarray(self.weight)
        self.bias = np.ascontiguousarray(self.bias)
        nd = 4 if self.kind == "conv" else 2
        if self.weight.ndim != nd or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"{self.kind} weight {self.weight.shape} / bias {self.bias.shape} "
                             f"mismatch (weight must be {nd}-D, bias one value per output)")
        if self.weight.dtype.kind != "f" or self.bias.dtype.kind != "f":
            raise ValueError("weights and biases must be floating point")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise ValueError(f"{self.kind} layer has non-finite parameters")
        self.stride = _pair(self.stride, "conv stride")
        self.pad = _quad(self.pad, "conv padding")

    def out_shape(self, in_shape):
        """Shape after the weight layer (before pooling)."""
        if self.kind == "dense":
            return (self.weight.shape[0],)
        c, h, w = in_shape
        (_, _, kh, kw), (sh, sw), (pt, pl, pb, pr) = self.weight.shape, self.stride, self.pad
        return (self.weight.shape[0], _out_len(h, kh, sh, pt, pb), _out_len(w, kw, sw, pl, pr))

    def pooled_shape(self, in_shape):
        c, *hw = self.out_shape(in_shape)
        if self.pool is None:
            return (c, *hw)
        return (c, *self.pool.out_hw(*hw))

    def to_dict(self):
        return {"kind": self.kind, "stride": list(self.stride), "pad": list(self.pad),
                "pool": None if self.pool is None else self.pool.to_dict()}


def _im2col(x, kh, kw, stride, pad):
    """Channel-last (N, H, W, C) -> (N, OH, OW, kh*kw*C) patches, columns in (ky, kx, c)
    order (that of :func:`_wmat`; c innermost keeps :func:`_col2im`'s slices contiguous)."""
    (sh, sw), (pt, pl, pb, pr) = stride, pad
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = _out_len(x.shape[1], kh, sh, pt, pb)
    ow = _out_len(x.shape[2], kw, sw, pl, pr)
    v = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, :oh * sh:sh, :ow * sw:sw]
    return v.transpose(0, 1, 2, 4, 5, 3).reshape(x.shape[0], oh, ow, -1)


def _wmat(weight):
    """(C_out, C_in, kh, kw) -> (C_out, kh*kw*C_in), the column order of :func:`_im2col`."""
    return weight.transpose(0, 2, 3, 1).reshape(len(weight), -1)


class CNN:
    """A ReLU CNN: a list of :class:`Stage` on inputs of shape ``in_shape = (C, H, W)``.

    Raises ValueError when the stages do not fit together (channel counts, dense input
    sizes, a pool on the output stage, a conv output stage, an empty map).
    """

    def __init__(self, stages, in_shape):
        if not stages:
            raise ValueError("a CNN needs at least one stage")
        self.stages = list(stages)
        self.in_shape = tuple(int(v) for v in in_shape)
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ValueError(f"in_shape must be (C, H, W) positive, got {in_shape!r}")
        shape = self.in_shape
        for i, st in enumerate(self.stages):
            n_in = int(np.prod(shape))
            if st.kind == "conv":
                if len(shape) != 3 or st.weight.shape[1] != shape[0]:
                    raise ValueError(f"stage {i + 1}: conv expects {st.weight.shape[1]} input "
                                     f"channels, gets a map of shape {shape}")
            elif st.weight.shape[1] != n_in:
                raise ValueError(f"stage {i + 1}: dense layer expects {st.weight.shape[1]} "
                                 f"inputs, gets {n_in} (shape {shape})")
            st.in_shape = shape
            shape = st.pooled_shape(shape)
            if min(shape) < 1:
                raise ValueError(f"stage {i + 1}: output map is empty (shape {shape})")
        if self.stages[-1].kind != "dense" or self.stages[-1].pool is not None:
            raise ValueError("the last stage must be a dense output layer without pooling")

    @property
    def depth(self):
        return len(self.stages)

    @property
    def n_out(self):
        return self.stages[-1].weight.shape[0]

    @property
    def dtype(self):
        return self.stages[0].weight.dtype

    def astype(self, dtype):
        """Copy with all parameters cast to ``dtype``."""
        return CNN([Stage(s.kind, s.weight.astype(dtype), s.bias.astype(dtype), s.stride,
                          s.pad, s.pool) for s in self.stages], self.in_shape)

    def layer_shapes(self):
        """Per stage: (input shape, output shape before pooling, pooled shape)."""
        return [(s.in_shape, s.out_shape(s.in_shape), s.pooled_shape(s.in_shape))
                for s in self.stages]

    def check_input(self, X, name="X"):
        """(n, C*H*W) or (n, C, H, W) float in [0, 1] -> channel-last (n, H, W, C)."""
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
        n_in = int(np.prod(self.in_shape))
        if X.dtype.kind != "f":
            raise ValueError(f"{name} must be floating point in [0, 1], got dtype {X.dtype}")
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != n_in or \
                (X.ndim > 2 and X.shape[1:] != self.in_shape):
            raise ValueError(f"{name} must have shape (n, {n_in}) or (n, *{self.in_shape}), "
                             f"got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if X.size and (X.min() < 0 or X.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1] (map inputs into the input window first)")
        return X.reshape(len(X), *self.in_shape).transpose(0, 2, 3, 1)

    def forward(self, X, return_hidden=False, dtype=None):
        """Logits (and, with ``return_hidden``, every hidden stage's ReLU output before
        pooling, channel-last) for inputs ``X`` in [0, 1]."""
        h = self.check_input(X).astype(dtype or self.dtype)
        return _forward(self.stages, h, return_hidden)

    def predict(self, X):
        return np.argmax(self.forward(X), axis=1)

    def accuracy(self, X, y):
        return float(np.mean(self.predict(X) == y))


def _layer(st, h, cache=None):
    """Pre-activation of one stage's weight layer on the channel-last input ``h``."""
    if st.kind == "conv":
        cols = _im2col(h, st.weight.shape[2], st.weight.shape[3], st.stride, st.pad)
        if cache is not None:
            cache["cols"] = cols
        return cols @ _wmat(st.weight).T.astype(h.dtype) + st.bias
    flat = _flatten(h)
    if cache is not None:
        cache["flat"] = flat
    return flat @ st.weight.T.astype(h.dtype) + st.bias


def _flatten(h):
    """Channel-last map -> ONNX Flatten order (C, H, W); 2-D inputs pass through."""
    return h.transpose(0, 3, 1, 2).reshape(len(h), -1) if h.ndim == 4 else h


def _forward(stages, h, return_hidden):
    hidden = []
    for st in stages[:-1]:
        h = np.maximum(_layer(st, h), 0)
        hidden.append(h)
        if st.pool is not None:
            h = st.pool.forward(h)
    z = _layer(stages[-1], h)
    return (z, hidden) if return_hidden else z


def fold_batch_norm(weight, bias, gamma, beta, mean, var, eps):
    """Fold ``BN(W x + b)`` (per output channel) into ``(W', b')``: exact in real numbers.

    ``W'_o = kappa_o W_o``, ``b'_o = kappa_o (b_o - mean_o) + beta_o`` with
    ``kappa = gamma / sqrt(var + eps)``.
    """
    kappa = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shape = (-1,) + (1,) * (np.ndim(weight) - 1)
    w = np.asarray(weight, np.float64) * kappa.reshape(shape)
    b = kappa * (np.asarray(bias, np.float64) - mean) + beta
    return w, b


# ---------------------------------------------------------------------- architectures
#: Built-in architectures: conv channels and kernel sizes ('same' padding, each conv
#: followed by ReLU and 2x2 max-pool), then dense hidden widths. "cnn" on 1x28x28:
#: conv 16 5x5 - pool - conv 32 3x3 - pool - dense 128 - out (1.3 M MACs per image).
ARCHS = {"cnn": {"conv": [16, 32], "kernel": [5, 3], "dense": [128]},
         "cnn-small": {"conv": [4], "kernel": [3], "dense": [16]}}


def make_cnn(arch="cnn", in_shape=(1, 28, 28), n_out=10, seed=0):
    """He-uniform weights, zero biases, float32, for one of :data:`ARCHS`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    spec = ARCHS[arch]
    rng = np.random.default_rng(seed)
    stages, c = [], in_shape[0]

    def init(shape, fan_in):
        a = math.sqrt(6.0 / fan_in)
        return rng.uniform(-a, a, size=shape).astype(np.float32)

    for co, k in zip(spec["conv"], spec["kernel"]):
        stages.append(Stage("conv", init((co, c, k, k), c * k * k), np.zeros(co, np.float32),
                            1, k // 2, Pool("max", 2)))
        c = co
    h, w = in_shape[1:]
    for _ in spec["conv"]:
        h, w = h // 2, w // 2
    n = c * h * w
    for width in spec["dense"] + [n_out]:
        stages.append(Stage("dense", init((width, n), n), np.zeros(width, np.float32)))
        n = width
    return CNN(stages, in_shape)


# ---------------------------------------------------------------------- training
def _loss_and_grads(net, x, y):
    """Softmax cross-entropy and gradients (weights then biases, stage order)."""
    caches, h = [], x
    for st in net.stages:
        c = {"in_shape": h.shape}
        a = _layer(st, h, c)
        if st is net.stages[-1]:
            z = a
            caches.append(c)
            break
        h = np.maximum(a, 0)
        c["relu"] = h
        if st.pool is not None:
            c["pre_pool"] = h
            h = st.pool.forward(h)
        caches.append(c)
    from .mlp import softmax_cross_entropy
    loss, d = softmax_cross_entropy(z, y)
    gw, gb = [None] * net.depth, [None] * net.depth
    for i in range(net.depth - 1, -1, -1):
        st, c = net.stages[i], caches[i]
        if i < net.depth - 1:
            if st.pool is not None:
                d = _pool_backward(st.pool, c["pre_pool"], d)
            d = d * (c["relu"] > 0)
        if st.kind == "dense":
            gw[i] = d.T @ c["flat"]
            gb[i] = d.sum(axis=0)
            if i:
                d = d @ st.weight
                shp = c["in_shape"]
                if len(shp) == 4:
                    d = d.reshape(shp[0], shp[3], shp[1], shp[2]).transpose(0, 2, 3, 1)
        else:
            d2 = d.reshape(-1, d.shape[-1])
            cols = c["cols"]
            co, ci, kh, kw = st.weight.shape
            gw[i] = (d2.T @ cols.reshape(len(d2), -1)).reshape(co, kh, kw, ci) \
                .transpose(0, 3, 1, 2)
            gb[i] = d2.sum(axis=0)
            if i:
                d = _col2im(d @ _wmat(st.weight), st, c["in_shape"])
    return loss, gw, gb


def _col2im(dcols, st, in_shape):
    n, h, w, c = in_shape
    _, _, kh, kw = st.weight.shape
    (sh, sw), (pt, pl, pb, pr) = st.stride, st.pad
    oh, ow = dcols.shape[1:3]
    dcols = dcols.reshape(n, oh, ow, kh, kw, c)
    dx = np.zeros((n, h + pt + pb, w + pl + pr, c), dcols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            dx[:, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += dcols[:, :, :, ky, kx]
    return dx[:, pt:pt + h, pl:pl + w]


def _pool_backward(pool, x, d):
    """Gradient of max pooling (to the first maximum of each window)."""
    if pool.kind != "max":
        raise ValueError("the built-in trainer supports max pooling only")
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = pool.kernel, pool.stride, pool.pad
    win = pool.windows(x, -np.inf)
    n, oh, ow, c = win.shape[:4]
    arg = win.reshape(n, oh, ow, c, -1).argmax(axis=-1)
    dx = np.zeros((n, x.shape[1] + pt + pb, x.shape[2] + pl + pr, c), d.dtype)
    for ky in range(kh):
        for kx in range(kw):
            dx[:, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += d * (arg == ky * kw + kx)
    return dx[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]


def train_cnn(net, X, y, X_val, y_val, epochs=10, patience=4, lr=1e-3, batch_size=64,
              decay_every=4, decay=0.5, seed=0, n_threads=None, progress=False, callback=None):
    """Train ``net`` in place (Adam, step decay); keep the best-validation weights.

    Same recipe and arguments as :func:`snnfast.mlp.train_mlp`; ``X``/``X_val`` are
    (n, C*H*W) or (n, C, H, W) float32 in [0, 1], labels integers in [0, n_out).

    Returns
    -------
    dict
        ``history`` (per epoch: loss, val_acc, lr), ``best_epoch``,
        ``best_val_acc``, ``epochs_run``.
    """
    from .mlp import _labels, fit
    X = net.check_input(X, "X").astype(np.float32)
    X_val = net.check_input(X_val, "X_val")
    if len(X) == 0 or len(X_val) == 0:
        raise ValueError("X and X_val must contain at least one image")
    y = _labels(y, len(X), net.n_out)
    y_val = _labels(y_val, len(X_val), net.n_out)

    def batch_loss(idx):
        loss, gw, gb = _loss_and_grads(net, X[idx], y[idx])
        return loss, gw + gb

    return fit([s.weight for s in net.stages] + [s.bias for s in net.stages], batch_loss,
               len(X), lambda: _accuracy(net, X_val, y_val), epochs=epochs, patience=patience,
               lr=lr, batch_size=batch_size, decay_every=decay_every, decay=decay, seed=seed,
               n_threads=n_threads, desc="train CNN", progress=progress, callback=callback)


def _accuracy(net, x_cl, y, chunk=1000):
    """Accuracy on channel-last inputs, in chunks (bounds the im2col memory)."""
    hits = 0
    for s in range(0, len(x_cl), chunk):
        z = _forward(net.stages, x_cl[s:s + chunk].astype(net.dtype), False)
        hits += int(np.sum(np.argmax(z, axis=1) == y[s:s + chunk]))
    return hits / len(x_cl)
