"""The compiled backend of :func:`snnfast.nir.run`: a graph as a plan of C operations.

Each node of a loaded :class:`~snnfast.nir.graph.Graph` becomes one operation on a float32
arena per thread (``ext/snn_nir.h``); one call runs every sample through all its steps with
OpenMP over samples. Conv1d/Conv2d and Affine/Linear nodes add only the weights of their
nonzero inputs (event-driven); every other node is a dense loop. The float32 operations
and their order are those of the NumPy runtime's ``sums="ordered"`` mode, so both backends
give the same bits (``docs/nir-runtime.rst``).

Graphs this backend cannot run: cycles (back edges), Delay nodes, Affine/Linear nodes with
batched (more than 2-D) weights.
"""
import numpy as np

from .._config import effective_n_threads

__all__ = ["unsupported", "run_compiled"]

f32 = np.float32
_ALIAS = ("Output", "Identity", "Flatten")
_CONNECTIONS = ("Affine", "Linear", "Conv1d", "Conv2d")
(_INPUT, _GATHER, _AFFINE, _CONV, _POOL, _SCALE, _THRESHOLD, _NEURON) = range(8)
_LINE = 16                 # floats per 64-byte cache line: every arena buffer starts on one
_MAX_ARENA = 2 ** 31 - 1


def _extension():
    try:
        from .. import _nir_run
    except ImportError:
        return None
    return _nir_run


def unsupported(graph):
    """Why the compiled backend cannot run ``graph`` (one line naming the node or edge), or
    None if it can."""
    if _extension() is None:
        return "the compiled extension snnfast._nir_run is not built"
    if graph.back_edges:
        a, b = sorted(graph.back_edges)[0]
        return f"the graph has a cycle (edge {a!r} -> {b!r} reads the previous step)"
    for k in graph.order:
        node = graph.nodes[k]
        if node.kind == "Delay":
            return f"node {k!r} is a Delay"
        if node.kind in ("Affine", "Linear") and node.params["weight"].ndim != 2:
            return (f"node {k!r} ({node.kind}) has a batched weight of shape "
                    f"{node.params['weight'].shape}")
    return None


def run_compiled(graph, xs, dt, integrator, reset, names, counts=None, n_threads=None):
    """Run ``graph`` on the checked float32 inputs ``xs`` (``{Input node: (N, T, ...)}``).

    Parameters
    ----------
    graph : Graph
        A graph :func:`unsupported` accepts.
    xs : dict
        The inputs as :func:`snnfast.nir.runtime._check_inputs` returns them (float32, or
        uint8 converted frame by frame).
    dt, integrator, reset
        As for :func:`snnfast.nir.run` (checked).
    names : list of str
        Nodes to trace.
    counts : dict, optional
        ``{"fanout": {connection node: int64 effective fan-out per input}, "activations":
        [neuron and Threshold nodes]}``: count NeuroBench operations.
    n_threads : int, optional
        OpenMP threads (:func:`snnfast.effective_n_threads`); the results do not depend on it.

    Returns
    -------
    outputs, traces, counters
        As :func:`snnfast.nir.run` returns them, and (``counts`` given) ``{node: {"eff":
        int64 (N, T), "bin": bool (N, T)}}`` per connection node and ``{node: {"nonzero":
        int64 (N,), "membrane_updates": int64 (N,) or None, "calls": N T}}`` per activation
        node.
    """
    N, T = next(iter(xs.values())).shape[:2]
    plan = _Plan(graph, dt, integrator, reset)
    plan.build(xs, N, T, counts)
    outs = {k: np.zeros((N, T) + graph.nodes[k].out_shape, f32) for k in graph.outputs}
    recs = [(plan.out[k], *_rec(graph.nodes[k], outs[k])) for k in graph.outputs]
    traces = {}
    for k in names:
        traces[k] = {}
        for key, off in plan.trace_sources(k):
            a = np.zeros((N, T) + graph.nodes[k].out_shape, f32)
            traces[k][key] = a
            recs.append((off, *_rec(graph.nodes[k], a)))
    if plan.arena > _MAX_ARENA:
        raise ValueError(f"the graph needs {plan.arena} floats of state per sample; the compiled "
                         "backend takes at most 2**31 - 1 (use backend='numpy')")
    if N and T:
        _extension().run(plan.ops, recs, T, N, plan.arena, plan.max_in, plan.max_v,
                         effective_n_threads(n_threads))
    return outs, traces, plan.counters()


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def _rec(node, a):
    """(size, (N, T, size) view) of a record array of ``node``'s output shape."""
    n = _size(node.out_shape)
    return n, a.reshape(a.shape[:2] + (n,))


def _flat(a, shape=None):
    """A float32 C-contiguous 1-D copy of ``a`` (broadcast to ``shape`` first)."""
    a = np.asarray(a, f32)
    if shape is not None:
        a = np.broadcast_to(a, shape)
    return np.ascontiguousarray(a).reshape(-1)


class _Plan:
    """The operation tables of one run: arena offsets, parameters, counters."""

    def __init__(self, graph, dt, integrator, reset):
        self.graph, self.dt, self.integrator, self.reset = graph, dt, integrator, reset
        self.ops, self.out, self.state = [], {}, {}
        self.arena, self.max_in, self.max_v = 0, 1, 1
        self._counters = {}

    def alloc(self, n):
        off = self.arena
        self.arena += -(-max(int(n), 1) // _LINE) * _LINE
        return off

    def build(self, xs, N, T, counts):
        g = self.graph
        for k in g.order:
            node = g.nodes[k]
            if node.kind == "Input":
                n = _size(node.out_shape)
                self.out[k] = self.alloc(n)
                x = np.ascontiguousarray(xs[k]).reshape(-1)
                self.ops.append(dict(kind=_INPUT, out=self.out[k], n_out=n,
                                     **{"x8" if x.dtype == np.uint8 else "x": x}))
                continue
            src = self._input(k, node)
            if node.kind in _ALIAS:
                self.out[k] = src
                continue
            op = self._op(node, src)
            self.ops.append(op)
            self._count(op, k, node, N, T, counts)

    def _input(self, k, node):
        """The arena offset of a node's input: its predecessor's output, or their sum."""
        preds = self.graph.preds[k]
        if len(preds) == 1:
            return self.out[preds[0]]
        n = _size(node.in_shape)
        off = self.alloc(n)
        self.ops.append(dict(kind=_GATHER, out=off, n_out=n, n_src=len(preds),
                             src=np.array([self.out[a] for a in preds], np.int32)))
        return off

    def _op(self, node, src):
        n_in, n_out = _size(node.in_shape), _size(node.out_shape)
        op = dict(kind=None, n_in=n_in, n_out=n_out)
        op["in"] = src
        kind, p = node.kind, node.params
        if kind in ("Affine", "Linear"):
            op.update(kind=_AFFINE, w=_flat(p["weight"].T), bias=_flat(p["bias"]))
            self.max_in = max(self.max_in, n_in)
        elif kind in ("Conv1d", "Conv2d"):
            op.update(self._conv(node))
            op["acc"] = self.alloc(n_out)
            self.max_in = max(self.max_in, n_in)
        elif kind in ("AvgPool2d", "SumPool2d"):
            (C, H, W), (_, OH, OW) = node.in_shape, node.out_shape
            kh, kw = p["kernel_size"]
            op.update(kind=_POOL, shape=(C, H, W, C, OH, OW, kh, kw, 0, 0),
                      pool=(int(kind == "AvgPool2d"),) + tuple(p["stride"]) + tuple(p["padding"]))
        elif kind == "Scale":
            op.update(kind=_SCALE, p=_flat(p["scale"], node.in_shape))
        elif kind == "Threshold":
            op.update(kind=_THRESHOLD, p=_flat(p["threshold"], node.in_shape))
        else:
            op.update(self._neuron(node))
            self.max_v = max(self.max_v, n_out)
            if not node.spiking:                 # the output is the membrane itself
                self.out[node.name] = op["out"] = op["v"]
                return op
        self.out[node.name] = op["out"] = self.alloc(n_out)
        return op

    def _conv(self, node):
        p = node.params
        w = p["weight"]
        pads = p["padding"]
        stride, dil = tuple(p["stride"]), tuple(p["dilation"])
        in_shape, out_shape = node.in_shape, node.out_shape
        if w.ndim == 3:                          # Conv1d: a Conv2d of height 1
            w = w[:, :, None, :]
            pads, stride, dil = ((0, 0),) + tuple(pads), (1,) + stride, (1,) + dil
            in_shape, out_shape = (in_shape[0], 1, in_shape[1]), (out_shape[0], 1, out_shape[1])
        O, cig, kh, kw = w.shape
        g = p["groups"]
        cog = O // g
        # (g, cog, cig, kh, kw) -> (g, cig, kh, kw, cog) = (C_in, kh, kw, cog)
        wt = w.reshape(g, cog, cig, kh, kw).transpose(0, 2, 3, 4, 1)
        (C, H, W), (_, OH, OW) = in_shape, out_shape
        yp, yk, yo = _taps(H, kh, stride[0], dil[0], pads[0][0], OH)
        xp, xk, xo = _taps(W, kw, stride[1], dil[1], pads[1][0], OW)
        return dict(kind=_CONV, w=_flat(wt), bias=_flat(p["bias"]),
                    shape=(C, H, W, O, OH, OW, kh, kw, cig, cog),
                    ytap_ptr=yp, ytap_k=yk, ytap_o=yo, xtap_ptr=xp, xtap_k=xk, xtap_o=xo)

    def _neuron(self, node):
        from .runtime import _Neuron
        nrn = _Neuron(node, self.dt, self.integrator, self.reset, 0)
        shape = node.in_shape
        op = dict(kind=_NEURON, cuba=int(nrn.cuba), spiking=int(nrn.spiking),
                  reset=int(self.reset == "subtract"), v=self.alloc(_size(shape)),
                  i=self.alloc(_size(shape)) if nrn.cuba else -1)
        for key, c in nrn.c.items():
            op[key] = _flat(c, shape)
        if nrn.spiking:
            op["thr"] = _flat(nrn.thr, shape)
            op["after"] = _flat(nrn.vr if self.reset == "zero" else nrn.jump, shape)
        coef = [op[k] for k in ("beta", "leak", "c_x", "c_i", "a_s", "g_s", "thr", "after")
                if k in op]
        # one value per array (the same bits everywhere): the kernel reads scalars
        op["uniform"] = int(all(np.array_equal(c.view(np.uint32), np.broadcast_to(
            c[:1].view(np.uint32), c.shape)) for c in coef))
        self.state[node.name] = {"v": op["v"]} if op["i"] < 0 else {"v": op["v"], "i": op["i"]}
        return op

    def _count(self, op, k, node, N, T, counts):
        if counts is None:
            return
        self.calls = N * T
        if k in counts["fanout"]:
            op.update(fanout=np.ascontiguousarray(counts["fanout"][k], np.int64),
                      eff=np.zeros((N, T), np.int64), bin=np.zeros((N, T), np.uint8))
            self._counters[k] = op
        elif k in counts["activations"]:
            op["nz"] = np.zeros(N, np.int64)
            if op["kind"] == _NEURON:
                op["mu"] = np.zeros(N, np.int64)
            self._counters[k] = op

    def counters(self):
        out = {}
        for k, op in self._counters.items():
            if "eff" in op:
                out[k] = {"eff": op["eff"], "bin": op["bin"].astype(bool)}
            else:
                out[k] = {"nonzero": op["nz"], "membrane_updates": op.get("mu"),
                          "calls": self.calls}
        return out

    def trace_sources(self, k):
        """``[(trace key, arena offset)]`` of node ``k``, in the NumPy runtime's key order."""
        node = self.graph.nodes[k]
        items = list(self.state.get(k, {}).items())
        return items + [("z" if node.spiking else "y", self.out[k])]


def _taps(size, k, stride, dil, pad, osize):
    """CSR table of the (kernel index, output index) pairs each input index reaches:
    ``input = output * stride - pad + kernel index * dil``."""
    ptr, ks, os = [0], [], []
    for i in range(size):
        for kk in range(k):
            t = i + pad - kk * dil
            if t >= 0 and t % stride == 0 and t // stride < osize:
                ks.append(kk)
                os.append(t // stride)
        ptr.append(len(ks))
    return (np.array(ptr, np.int32), np.array(ks or [0], np.int32),
            np.array(os or [0], np.int32))
