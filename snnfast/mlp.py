"""Plain ReLU multilayer perceptrons trained in NumPy (the source networks of TTFS conversion).

Architecture ``784-400^(L-1)-10`` for ``L`` weight layers: ``x^(n) = ReLU(W^(n) x^(n-1) + b^(n))``
for the hidden layers, logits ``z = W^(L) x^(L-1) + b^(L)``. ``W^(n)`` has shape
``(n_out, n_in)`` (row i = incoming weights of neuron i), everything is float32.

Training recipe (reproducible): Xavier-uniform weights, zero biases,
softmax cross-entropy, Adam (lr 1e-3), learning rate halved every 10 epochs, batch 64,
early stopping on a validation split held out of the training set, best-validation
weights kept. A seed fixes initialisation and batch order; BLAS threads are limited
with threadpoolctl to :func:`snnfast.effective_n_threads`.
"""
import math

import numpy as np

from ._config import effective_n_threads
from ._utils import check_positive_int, is_real_number

__all__ = ["MLP", "make_mlp", "preprocess", "loss_and_grads", "train_mlp"]


class MLP:
    """A ReLU MLP: ``weights[n]`` has shape ``(n_out, n_in)``, ``biases[n]`` ``(n_out,)``.

    Parameters
    ----------
    weights, biases : list of ndarray
        One entry per weight layer, consistent shapes, floating point. Stored as given
        (float32 from training, float64 copies for exactness checks via :meth:`astype`).
    """

    def __init__(self, weights, biases):
        if len(weights) == 0 or len(weights) != len(biases):
            raise ValueError("weights and biases must be non-empty lists of equal length")
        self.weights = [np.ascontiguousarray(w) for w in weights]
        self.biases = [np.ascontiguousarray(b) for b in biases]
        for n, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {n + 1}: weight shape {w.shape} and bias shape "
                                 f"{b.shape} are inconsistent")
            if n > 0 and w.shape[1] != self.weights[n - 1].shape[0]:
                raise ValueError(f"layer {n + 1} expects {w.shape[1]} inputs but layer {n} "
                                 f"has {self.weights[n - 1].shape[0]} outputs")
            # inputs are cast to the weights' dtype: integer weights would turn every
            # pixel in [0, 1) into 0 without a word
            if w.dtype.kind != "f" or b.dtype.kind != "f":
                raise ValueError(f"layer {n + 1}: weights and biases must be floating point, "
                                 f"got {w.dtype} / {b.dtype}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"layer {n + 1} has non-finite parameters")

    @property
    def depth(self):
        """Number of weight layers L."""
        return len(self.weights)

    @property
    def sizes(self):
        """Layer widths ``[n_in, n_hidden..., n_out]``."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def dtype(self):
        return self.weights[0].dtype

    def astype(self, dtype):
        """Copy with all parameters cast to ``dtype``."""
        return MLP([w.astype(dtype) for w in self.weights], [b.astype(dtype) for b in self.biases])

    def _check_input(self, X, name="X"):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"{name} must have shape (n, {self.sizes[0]}), got {X.shape}")
        if X.dtype.kind != "f":
            raise ValueError(f"{name} must be floating point, got {X.dtype} (use preprocess())")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return X.astype(self.dtype, copy=False)

    def forward(self, X, return_hidden=False):
        """Logits for ``X`` (n, n_in); with ``return_hidden`` also the hidden activations."""
        h = self._check_input(X)
        hidden = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w.T + b, 0)
            hidden.append(h)
        z = h @ self.weights[-1].T + self.biases[-1]
        return (z, hidden) if return_hidden else z

    def predict(self, X):
        """Class index per row (argmax of the logits, first maximum on ties)."""
        return np.argmax(self.forward(X), axis=1)

    def accuracy(self, X, y):
        """Fraction of rows of ``X`` classified as ``y``.

        ``y`` must hold one integer label in ``[0, n_out)`` per row of ``X``: a (n, 1)
        column would broadcast against the predictions and give a meaningless number.
        """
        pred = self.predict(X)
        return float(np.mean(pred == _labels(y, len(pred), self.sizes[-1])))


def make_mlp(depth, n_in=784, width=400, n_out=10, seed=0):
    """Xavier-uniform weights, zero biases, float32: ``n_in - width^(depth-1) - n_out``.

    ``depth`` counts weight layers (>= 1). Weights ~ U(-a, a), a = sqrt(6/(fan_in+fan_out)).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    for name, v in (("n_in", n_in), ("width", width), ("n_out", n_out)):
        check_positive_int(v, name)
    rng = np.random.default_rng(seed)
    sizes = [n_in] + [width] * (depth - 1) + [n_out]
    weights, biases = [], []
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        a = math.sqrt(6.0 / (fi + fo))
        weights.append(rng.uniform(-a, a, size=(fo, fi)).astype(np.float32))
        biases.append(np.zeros(fo, np.float32))
    return MLP(weights, biases)


def preprocess(images):
    """uint8 images (n, 28, 28) or (n, 784) -> float32 (n, 784) in [0, 1] (pixel/255)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError("images must be a uint8 numpy array")
    if images.ndim < 2:
        raise ValueError(f"images must be at least 2-D, got shape {images.shape}")
    return (images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0))


def _labels(y, n, n_out, name="y"):
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array of shape ({n},), "
                         f"got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= n_out):
        raise ValueError(f"{name}: labels must lie in [0, {n_out}), "
                         f"got values in [{y.min()}, {y.max()}]")
    return y.astype(np.intp)


def _training_set(mlp, X, y, x_name, y_name):
    """Checked (inputs, labels) of a training or validation set: at least one sample,
    inputs in [0, 1] (the scale TTFS conversion assumes), labels in range."""
    X = mlp._check_input(X, x_name)
    if len(X) == 0:
        raise ValueError(f"{x_name} must contain at least one sample, got shape {X.shape}")
    if X.min() < 0 or X.max() > 1:
        raise ValueError(f"{x_name} must lie in [0, 1], got values in [{X.min():g}, {X.max():g}] "
                         "(use preprocess())")
    return X, _labels(y, len(X), mlp.sizes[-1], y_name)


def loss_and_grads(mlp, X, y):
    """Mean softmax cross-entropy and its gradients.

    Returns
    -------
    loss : float
    grads_w, grads_b : list of ndarray
        Same shapes and dtype as ``mlp.weights`` / ``mlp.biases``.
    """
    X = mlp._check_input(X)
    y = _labels(y, len(X), mlp.sizes[-1])
    return _loss_and_grads(mlp, X, y)


def _loss_and_grads(mlp, X, y):
    acts = [X]
    h = X
    for w, b in zip(mlp.weights[:-1], mlp.biases[:-1]):
        h = np.maximum(h @ w.T + b, 0)
        acts.append(h)
    z = h @ mlp.weights[-1].T + mlp.biases[-1]
    z = z - z.max(axis=1, keepdims=True)
    ez = np.exp(z)
    s = ez.sum(axis=1, keepdims=True)
    rows = np.arange(len(X))
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
    dz = ez / s
    dz[rows, y] -= 1
    dz /= len(X)
    gw, gb = [None] * mlp.depth, [None] * mlp.depth
    for n in range(mlp.depth - 1, -1, -1):
        gw[n] = dz.T @ acts[n]
        gb[n] = dz.sum(axis=0)
        if n:
            dz = (dz @ mlp.weights[n]) * (acts[n] > 0)
    return loss, gw, gb


class _Adam:
    """Adam with bias correction, updating the parameter arrays in place."""

    def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        step = self.lr * math.sqrt(c2) / c1
        eps = self.eps * math.sqrt(c2)
        # in-place updates with one scratch array: the optimiser is a sizeable part of a step
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            tmp = np.multiply(g, 1 - self.b1)
            m *= self.b1
            m += tmp
            np.multiply(g, g, out=tmp)
            tmp *= 1 - self.b2
            v *= self.b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= step
            p -= tmp


def train_mlp(mlp, X, y, X_val, y_val, epochs=30, patience=5, lr=1e-3, batch_size=64,
              decay_every=10, decay=0.5, seed=0, n_threads=None, progress=False, callback=None):
    """Train ``mlp`` in place; keep the weights with the best validation accuracy.

    Parameters
    ----------
    mlp : MLP
        float32 network (e.g. from :func:`make_mlp`), modified in place.
    X, y : ndarray
        Training inputs (n, n_in) float32 in [0, 1] and integer labels (n >= 1).
    X_val, y_val : ndarray
        Validation split (held out of the training set, n >= 1) for early stopping.
    epochs : int
        Maximum number of epochs.
    patience : int
        Stop after this many epochs without a new best validation accuracy.
    lr, batch_size, decay_every, decay : Adam learning rate, batch size, and the step
        decay (``lr * decay ** (epoch // decay_every)``).
    seed : int
        Fixes the batch order.
    n_threads : int or None
        BLAS threads (see :func:`snnfast.effective_n_threads`).
    progress : bool
        Show a tqdm bar over epochs.
    callback : callable, optional
        Called after every epoch with that epoch's history entry (a dict).

    Returns
    -------
    dict
        ``history`` (per epoch: loss, val_acc, lr), ``best_epoch``, ``best_val_acc``,
        ``epochs_run``.

    Raises
    ------
    ValueError
        For an empty training or validation set, inputs outside [0, 1], bad labels,
        non-integer or non-positive ``epochs``/``batch_size``/``patience``/``decay_every``,
        ``lr`` not finite and > 0, ``decay`` outside (0, 1], and when the loss stops being
        finite (the step size diverged; ``mlp`` then holds the diverged weights).
    """
    from threadpoolctl import threadpool_limits

    X, y = _training_set(mlp, X, y, "X", "y")
    X_val, y_val = _training_set(mlp, X_val, y_val, "X_val", "y_val")
    epochs, batch_size, patience, decay_every = (
        check_positive_int(v, k) for k, v in (("epochs", epochs), ("batch_size", batch_size),
                                        ("patience", patience), ("decay_every", decay_every)))
    if not is_real_number(lr) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not is_real_number(decay) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
    rng = np.random.default_rng(seed)
    opt = _Adam(mlp.weights + mlp.biases, lr)
    best = (-1.0, None, 0)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, desc=f"train L={mlp.depth}", leave=False)
    with threadpool_limits(limits=effective_n_threads(n_threads), user_api="blas"):
        for epoch in range(epochs):
            opt.lr = lr * decay ** (epoch // decay_every)
            order = rng.permutation(len(X))
            total = 0.0
            for start in range(0, len(X), batch_size):
                idx = order[start:start + batch_size]
                loss, gw, gb = _loss_and_grads(mlp, X[idx], y[idx])
                opt.step(gw + gb)
                total += loss * len(idx)
            if not math.isfinite(total):
                # a step size that blows the weights up (e.g. lr=1e30) would otherwise
                # end in NaN weights and a chance-level "best" model without a word
                raise ValueError(f"training diverged in epoch {epoch + 1} (loss {total}); "
                                 f"lr={lr!r} is too large")
            val_acc = mlp.accuracy(X_val, y_val)
            history.append({"epoch": epoch + 1, "loss": total / len(X), "val_acc": val_acc,
                            "lr": opt.lr})
            if callback is not None:
                callback(history[-1])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / len(X):.4f}", val=f"{val_acc:.4f}")
            if val_acc > best[0]:
                best = (val_acc, ([w.copy() for w in mlp.weights], [b.copy() for b in mlp.biases]),
                        epoch + 1)
            elif epoch + 1 - best[2] >= patience:
                break
    if bar is not None:
        bar.close()
    for p, q in zip(mlp.weights + mlp.biases, best[1][0] + best[1][1]):
        p[...] = q
    return {"history": history, "best_epoch": best[2], "best_val_acc": best[0],
            "epochs_run": len(history)}
