"""Read ReLU networks made by other tools: ONNX files and snnfast ``.npz`` files.

ONNX (read with the ``onnx`` package; no PyTorch needed): the graph must be a chain of

- ``Conv`` (group 1, dilation 1, any strides and pads, ``auto_pad`` NOTSET/VALID/SAME_*),
- ``Gemm`` (``transA = 0``), or ``MatMul`` with a constant matrix, optionally followed by
  ``Add`` of a constant bias,
- ``BatchNormalization`` directly after a weight layer (folded into it),
- ``Relu`` after every weight layer but the last,
- ``MaxPool`` / ``AveragePool`` (floor mode, dilation 1) after the ReLU (a ``MaxPool``
  just before the ReLU is also accepted: max pooling commutes with ReLU),
- ``Flatten`` (axis 1) / ``Reshape`` to ``(N, -1)`` before the first dense layer,
- ``Dropout`` / ``Identity`` (no-ops at inference) and a final ``Softmax`` /
  ``LogSoftmax`` (monotone: the converted network returns the logits before it).

Anything else is refused with a one-line error naming the op and the node. Inputs are
assumed to be pixels in [0, 1] (shape ``(N, C, H, W)``, or ``(N, D)`` for an MLP).

``.npz`` (:func:`save_npz`): arrays ``W1, b1, ..., WN, bN`` and ``arch``, a JSON string
``{"in_shape": [C, H, W], "stages": [{"kind": "conv"|"dense", "stride": [sh, sw],
"pad": [t, l, b, r], "pool": null | {"kind": "max"|"avg", "kernel": [kh, kw], "stride":
[sh, sw], "pad": [t, l, b, r], "include_pad": false}}, ...]}``.
"""
import json
from pathlib import Path

import numpy as np

from .cnn import CNN, Pool, Stage, fold_batch_norm

__all__ = ["load_model", "load_onnx", "load_npz", "save_npz", "SUPPORTED_OPS"]

SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "AveragePool",
                 "BatchNormalization", "Flatten", "Reshape", "Dropout", "Identity",
                 "Softmax", "LogSoftmax")


def load_model(path, image_shape=None):
    """A :class:`snnfast.cnn.CNN` from ``path`` (``.onnx`` or ``.npz``).

    ``image_shape`` (C, H, W) interprets a flat ``(N, D)`` ONNX input as images
    (D must equal C*H*W).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return load_onnx(path, image_shape)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise ValueError(f"{path}: unknown model format (expected .onnx or .npz)")


# ---------------------------------------------------------------------- npz
def save_npz(cnn, path):
    """Write ``cnn`` in the ``.npz`` layout read by :func:`load_npz` (atomically)."""
    from ._utils import atomic_path
    arch = {"in_shape": list(cnn.in_shape), "stages": [s.to_dict() for s in cnn.stages]}
    arrays = {"arch": np.array(json.dumps(arch))}
    for i, s in enumerate(cnn.stages, 1):
        arrays[f"W{i}"], arrays[f"b{i}"] = s.weight, s.bias
    path = Path(path)
    with atomic_path(path, suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def load_npz(path):
    """Read a network written by :func:`save_npz` (ValueError naming the file)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arch = json.loads(str(z["arch"]))
            stages = []
            for i, spec in enumerate(arch["stages"], 1):
                pool = spec.get("pool")
                if pool is not None:
                    pool = Pool(pool["kind"], pool["kernel"], pool.get("stride"),
                                pool.get("pad", 0), pool.get("include_pad", False))
                stages.append(Stage(spec["kind"], z[f"W{i}"], z[f"b{i}"],
                                    spec.get("stride", 1), spec.get("pad", 0), pool))
            return CNN(stages, arch["in_shape"])
    except ValueError as exc:
        raise ValueError(f"{path}: invalid network ({exc})") from None
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable snnfast .npz network ({exc!r})") from None


# ---------------------------------------------------------------------- onnx
class _Refused(ValueError):
    pass


def load_onnx(path, image_shape=None):
    """Read an ONNX ReLU network as a :class:`snnfast.cnn.CNN` (see the module doc)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:    # onnx raises protobuf DecodeError, ValidationError, ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a valid ONNX model ({msg})") from None
    try:
        return _GraphReader(model.graph, image_shape).read()
    except _Refused as exc:
        raise ValueError(f"{path}: {exc}") from None


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _auto_pad(mode, size, kernel, stride, pads):
    """(top, left, bottom, right) padding for ONNX ``auto_pad``."""
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode in ("", "NOTSET"):
        p = list(pads) if pads else [0, 0, 0, 0]
        return (p[0], p[1], p[2], p[3])
    if mode == "VALID":
        return (0, 0, 0, 0)
    out = []
    for n, k, s in zip(size, kernel, stride):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if mode == "SAME_UPPER" else (big, small))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


class _GraphReader:
    """Walks a chain-shaped ONNX graph and collects :class:`Stage` objects."""

    def __init__(self, graph, image_shape):
        from onnx import numpy_helper
        self.graph = graph
        self.const = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.const]
        if len(inputs) != 1:
            raise _Refused(f"the graph must have exactly one data input, has {len(inputs)}")
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and all(d > 0 for d in dims[1:]):
            self.in_shape = tuple(dims[1:])
        elif len(dims) == 2 and dims[1] > 0:
            self.in_shape = tuple(image_shape) if image_shape is not None \
                and int(np.prod(image_shape)) == dims[1] else (dims[1], 1, 1)
        else:
            raise _Refused(f"input {inputs[0].name!r} must have a static shape (N, C, H, W) "
                           f"or (N, D), got {dims}")
        self.current = inputs[0].name
        self.shape = self.in_shape          # shape of the current tensor (without N)
        self.stages = []
        self.pending = None                 # weight layer under construction
        self.flat = False
        self.final = False                  # Softmax seen: nothing may follow

    def read(self):
        for node in self.graph.node:
            self._node(node)
        if self.pending is None:
            raise _Refused("the graph has no Conv/Gemm/MatMul layer")
        if self.pending["relu"]:
            raise _Refused("the output layer ends with a Relu; a TTFS network reads the "
                           "logits before any ReLU (remove it)")
        self._close(last=True)
        outs = [o.name for o in self.graph.output]
        if outs != [self.current]:
            raise _Refused(f"the graph output {outs} is not the end of the layer chain "
                           f"({self.current!r})")
        try:
            return CNN(self.stages, self.in_shape)
        except ValueError as exc:
            raise _Refused(str(exc)) from None

    # -------------------------------------------------------------- helpers
    def _name(self, node):
        return f"{node.op_type} node {node.name or '(unnamed)'!r}"

    def _data_input(self, node):
        if not node.input or node.input[0] != self.current:
            raise _Refused(f"{self._name(node)} does not continue the layer chain "
                           "(branching graphs are not supported)")
        if self.final:
            raise _Refused(f"{self._name(node)} follows the final Softmax")

    def _constant(self, node, name, what):
        if name not in self.const:
            raise _Refused(f"{self._name(node)}: {what} {name!r} must be a constant "
                           "initializer")
        return self.const[name].astype(np.float64)

    def _advance(self, node):
        if len(node.output) < 1:
            raise _Refused(f"{self._name(node)} has no output")
        self.current = node.output[0]

    def _close(self, last=False):
        """Turn the pending weight layer into a Stage."""
        p = self.pending
        if not last and not p["relu"]:
            raise _Refused(f"{p['node']} is followed by another weight layer without a Relu "
                           "in between; only ReLU networks convert exactly")
        self.stages.append(Stage(p["kind"], p["W"], p["b"], p["stride"], p["pad"], p["pool"]))
        self.pending = None

    # -------------------------------------------------------------- ops
    def _node(self, node):
        op = node.op_type
        if op == "Constant":
            from onnx import numpy_helper
            val = _attrs(node).get("value")
            if val is None:
                raise _Refused(f"{self._name(node)}: only tensor constants are supported")
            self.const[node.output[0]] = numpy_helper.to_array(val)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None or op not in SUPPORTED_OPS:
            raise _Refused(f"unsupported ONNX op {op!r} ({self._name(node)}); supported: "
                           + ", ".join(SUPPORTED_OPS))
        self._data_input(node)
        handler(node, _attrs(node))
        self._advance(node)

    def _start(self, node, kind, W, b, stride=(1, 1), pad=(0, 0, 0, 0)):
        if self.pending is not None:
            self._close()
        self.pending = {"node": self._name(node), "kind": kind, "W": W, "b": b,
                        "stride": stride, "pad": pad, "relu": False, "pool": None,
                        "bn_ok": True}

    def _op_Conv(self, node, a):
        if len(self.shape) != 3:
            raise _Refused(f"{self._name(node)} applies to a flat tensor")
        W = self._constant(node, node.input[1], "weight")
        b = self._constant(node, node.input[2], "bias") if len(node.input) > 2 and \
            node.input[2] else np.zeros(W.shape[0])
        if W.ndim != 4:
            raise _Refused(f"{self._name(node)}: only 2-D convolutions are supported")
        if a.get("group", 1) != 1:
            raise _Refused(f"{self._name(node)}: grouped convolution (group={a['group']}) is "
                           "not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Refused(f"{self._name(node)}: dilated convolution is not supported")
        stride = tuple(a.get("strides", [1, 1]))
        pad = _auto_pad(a.get("auto_pad", "NOTSET"), self.shape[1:], W.shape[2:], stride,
                        a.get("pads"))
        self._start(node, "conv", W, b, stride, pad)
        st = Stage("conv", W, b, stride, pad)
        self.shape = st.out_shape(self.shape)

    def _dense(self, node, W, b):
        n_in = int(np.prod(self.shape))
        if len(self.shape) == 3 and not self.flat and self.shape[1:] != (1, 1):
            raise _Refused(f"{self._name(node)} needs a Flatten/Reshape before it")
        if W.shape[1] != n_in:
            raise _Refused(f"{self._name(node)}: weight expects {W.shape[1]} inputs, gets {n_in}")
        self._start(node, "dense", W, np.broadcast_to(b, (W.shape[0],)).copy())
        self.shape = (W.shape[0],)
        self.flat = True

    def _op_Gemm(self, node, a):
        if a.get("transA", 0):
            raise _Refused(f"{self._name(node)}: transA=1 is not supported")
        B = self._constant(node, node.input[1], "weight")
        W = B if a.get("transB", 0) else B.T
        C = self._constant(node, node.input[2], "bias") if len(node.input) > 2 and \
            node.input[2] else np.zeros(W.shape[0])
        self._dense(node, a.get("alpha", 1.0) * W, a.get("beta", 1.0) * C.reshape(-1))

    def _op_MatMul(self, node, a):
        B = self._constant(node, node.input[1], "weight")
        if B.ndim != 2:
            raise _Refused(f"{self._name(node)}: weight must be a matrix")
        self._dense(node, B.T, np.zeros(B.shape[1]))

    def _op_Add(self, node, a):
        p = self.pending
        if p is None or p["relu"] or p["pool"] is not None:
            raise _Refused(f"{self._name(node)}: only a bias Add directly after a weight "
                           "layer is supported")
        c = self._constant(node, node.input[1], "addend")
        n = p["W"].shape[0]
        if c.size != n:
            raise _Refused(f"{self._name(node)}: addend of shape {c.shape} is not a "
                           f"per-output bias ({n} values)")
        p["b"] = p["b"] + c.reshape(-1)

    def _op_BatchNormalization(self, node, a):
        p = self.pending
        if p is None or p["relu"] or p["pool"] is not None:
            raise _Refused(f"{self._name(node)} is not directly after a Conv/Gemm/MatMul; "
                           "only such batch norms can be folded")
        gamma, beta, mean, var = (self._constant(node, n, "parameter") for n in node.input[1:5])
        p["W"], p["b"] = fold_batch_norm(p["W"], p["b"], gamma, beta, mean, var,
                                         a.get("epsilon", 1e-5))

    def _op_Relu(self, node, a):
        p = self.pending
        if p is None or p["relu"]:
            raise _Refused(f"{self._name(node)} is not directly after a weight layer")
        p["relu"] = True

    def _pool(self, node, a, kind):
        p = self.pending
        if p is None or p["kind"] != "conv" or p["pool"] is not None:
            raise _Refused(f"{self._name(node)}: pooling must follow a Conv (+Relu), once")
        if kind == "avg" and not p["relu"]:
            raise _Refused(f"{self._name(node)}: average pooling before the Relu is not "
                           "exact (ReLU(mean) != mean(ReLU)); put it after the Relu")
        if a.get("ceil_mode", 0):
            raise _Refused(f"{self._name(node)}: ceil_mode=1 is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Refused(f"{self._name(node)}: dilated pooling is not supported")
        k = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1, 1]))
        pad = _auto_pad(a.get("auto_pad", "NOTSET"), self.shape[1:], k, stride, a.get("pads"))
        try:
            p["pool"] = Pool(kind, k, stride, pad, bool(a.get("count_include_pad", 0)))
        except ValueError as exc:
            raise _Refused(f"{self._name(node)}: {exc}") from None
        self.shape = (self.shape[0], *p["pool"].out_hw(*self.shape[1:]))

    def _op_MaxPool(self, node, a):
        if len(node.output) > 1 and node.output[1]:
            raise _Refused(f"{self._name(node)}: the Indices output is not supported")
        self._pool(node, a, "max")

    def _op_AveragePool(self, node, a):
        self._pool(node, a, "avg")

    def _op_Flatten(self, node, a):
        if a.get("axis", 1) != 1:
            raise _Refused(f"{self._name(node)}: only axis=1 is supported")
        self.flat = True

    def _op_Reshape(self, node, a):
        shape = [int(v) for v in self._constant(node, node.input[1], "shape").reshape(-1)]
        n = int(np.prod(self.shape))
        if len(shape) != 2 or shape[1] not in (-1, n) or (shape[1] == -1 and shape[0] == -1):
            raise _Refused(f"{self._name(node)}: only a flattening Reshape to (N, -1) or "
                           f"(N, {n}) is supported, got {shape}")
        self.flat = True

    def _op_Dropout(self, node, a):
        pass

    def _op_Identity(self, node, a):
        pass

    def _op_Softmax(self, node, a):
        if self.pending is None or self.pending["relu"]:
            raise _Refused(f"{self._name(node)} must directly follow the output layer")
        self.final = True

    _op_LogSoftmax = _op_Softmax
