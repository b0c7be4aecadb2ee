"""Loading a NIR graph into a checked, runnable :class:`Graph` (no time step yet).

:func:`load` reads any NIR 1.0.x graph through the ``nir`` package, flattens nested
subgraphs, parses every node's parameters into float arrays of checked shapes, infers the
shape of every edge from the Input nodes and fixes the order in which a step visits the
nodes (back edges of cycles read the previous step). The semantics are in
``docs/nir-runtime.rst``.
"""
import os
from pathlib import Path

import numpy as np

__all__ = ["Graph", "GraphNode", "load", "NODE_TYPES"]

# parameters of each supported NIR type (besides shapes), as they are read from the node
_NEURON_PARAMS = {
    "I": ("r",),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
}
_ELEMENTWISE = {"Scale": ("scale",), "Threshold": ("threshold",), "Delay": ("delay",)}
NODE_TYPES = ("Input", "Output", "Identity", "Affine", "Linear", "Conv1d", "Conv2d",
              "Flatten", "AvgPool2d", "SumPool2d", "NIRGraph", *_ELEMENTWISE, *_NEURON_PARAMS)
"""The NIR node types :func:`load` accepts (every type of nir 1.0.8)."""


class GraphNode:
    """One node of a loaded graph: its NIR type, parsed parameters and shapes.

    Attributes
    ----------
    name : str
        Node name; nodes of nested subgraphs are named ``"outer.inner"``.
    kind : str
        The NIR type name (``"LIF"``, ``"Conv2d"``, ...).
    params : dict
        Parameters as float64 arrays (weights, time constants, ...) or int tuples
        (stride, padding, ...), checked finite and of consistent shapes.
    in_shape, out_shape : tuple of int
        Per-sample shapes (no batch or time axis).
    source : nir.NIRNode
        The node as the ``nir`` package read it.
    """

    def __init__(self, name, kind, params, source):
        self.name, self.kind, self.params, self.source = name, kind, params, source
        self.in_shape = self.out_shape = None

    @property
    def spiking(self):
        """True for the node types that emit spikes (IF, LIF, CubaLIF, Threshold)."""
        return self.kind in ("IF", "LIF", "CubaLIF", "Threshold")

    @property
    def neuron(self):
        """True for the node types with a membrane state (I, IF, LI, LIF, CubaLI, CubaLIF)."""
        return self.kind in _NEURON_PARAMS

    def __repr__(self):
        return f"GraphNode({self.name!r}, {self.kind}, {self.in_shape} -> {self.out_shape})"


class Graph:
    """A loaded NIR graph, ready for :func:`snnfast.nir.run`.

    Attributes
    ----------
    nodes : dict
        ``{name: GraphNode}``, nested subgraphs flattened.
    edges : list of (str, str)
        All edges, between flattened node names.
    order : list of str
        The order in which a time step visits the nodes (a topological order of the
        forward edges).
    back_edges : set of (str, str)
        Edges closing a cycle: their target reads the source's output of the previous step.
    inputs, outputs : list of str
        Names of the Input and Output nodes (top level), in ``order``.
    metadata : dict
        The top-level graph's metadata.
    """

    def __init__(self, nodes, edges, order, back_edges, metadata):
        self.nodes, self.edges, self.order = nodes, edges, order
        self.back_edges, self.metadata = back_edges, metadata
        self.inputs = [k for k in order if nodes[k].kind == "Input"]
        self.outputs = [k for k in order if nodes[k].kind == "Output"]
        self.preds = {k: [] for k in nodes}
        for a, b in edges:
            self.preds[b].append(a)

    def __repr__(self):
        return (f"Graph({len(self.nodes)} nodes, inputs {self.inputs}, outputs {self.outputs}, "
                f"{len(self.back_edges)} back edges)")


# ----------------------------------------------------------------------------- reading
def _read(path_or_graph):
    import nir
    if isinstance(path_or_graph, nir.NIRGraph):
        return path_or_graph
    if isinstance(path_or_graph, (str, os.PathLike)):
        p = Path(path_or_graph)
        if not p.is_file():
            raise ValueError(f"NIR file {str(p)!r} does not exist")
        try:
            # the runtime infers and checks every shape itself (with clearer messages)
            return nir.read(p, type_check=False)
        except Exception as exc:  # h5py/nir raise many types for foreign or broken files
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"cannot read NIR graph from {str(p)!r}: "
                             f"{type(exc).__name__}: {msg}") from None
    raise TypeError(f"expected a path or a nir.NIRGraph, got {type(path_or_graph).__name__}")


def load(path_or_graph):
    """Read a NIR graph (a ``.nir`` file or a ``nir.NIRGraph``) into a runnable :class:`Graph`.

    Raises
    ------
    ValueError
        One line naming the node, edge or parameter that cannot be run: unknown node
        types, non-finite or inconsistent parameters, shape mismatches along an edge,
        dangling edges, nodes unreachable from an Input.
    TypeError
        If ``path_or_graph`` is neither a path nor a ``nir.NIRGraph``.
    """
    g = _read(path_or_graph)
    nodes, edges = {}, []
    _flatten(g, "", nodes, edges)
    meta = g.metadata if isinstance(g.metadata, dict) else {}
    order, back = _step_order(nodes, edges)
    graph = Graph(nodes, edges, order, back, dict(meta))
    _infer_shapes(graph)
    return graph


def _flatten(g, prefix, nodes, edges):
    """Add the nodes and edges of ``g`` (names prefixed) to ``nodes`` and ``edges``;
    returns ``{name: (entry node, exit node)}`` of ``g``'s own nodes."""
    import nir
    ends = {}
    for name, node in g.nodes.items():
        full = prefix + str(name)
        if isinstance(node, nir.NIRGraph):
            ends[name] = _subgraph(node, full, nodes, edges)
        else:
            nodes[full] = _parse(full, node)
            ends[name] = (full, full)
    for e in g.edges:
        if len(e) != 2:
            raise ValueError(f"malformed edge {e!r} in graph {prefix[:-1] or '(top)'!r}")
        a, b = (_endpoint(str(x), ends, prefix, i) for i, x in enumerate(e))
        edges.append((a, b))
    return ends


def _endpoint(name, ends, prefix, side):
    """The flattened node an edge end names: a node, a subgraph (its Input/Output) or
    ``"subgraph.node"``."""
    if name in ends:
        return ends[name][1 - side]
    head, _, tail = name.partition(".")
    if tail and head in ends and ends[head][0] != ends[head][1]:
        return prefix + name
    raise ValueError(f"edge names node {prefix + name!r}, which is not in the graph")


def _subgraph(g, name, nodes, edges):
    import nir
    ins = [k for k, n in g.nodes.items() if isinstance(n, nir.Input)]
    outs = [k for k, n in g.nodes.items() if isinstance(n, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(f"nested subgraph {name!r} has {len(ins)} Input and {len(outs)} Output "
                         "nodes; exactly one of each is supported")
    _flatten(g, name + ".", nodes, edges)
    # the subgraph's Input/Output become pass-through nodes inside the parent
    nodes[f"{name}.{ins[0]}"].kind = "Identity"
    nodes[f"{name}.{outs[0]}"].kind = "Identity"
    return f"{name}.{ins[0]}", f"{name}.{outs[0]}"


# ----------------------------------------------------------------------------- parameters
def _arr(node, name, attr, allow_none=False):
    v = getattr(node, attr, None)
    if v is None:
        if allow_none:
            return None
        raise ValueError(f"node {name!r} ({type(node).__name__}): parameter {attr} is missing")
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"node {name!r} ({type(node).__name__}): parameter {attr} is not "
                         f"numeric ({type(v).__name__})") from None
    if not np.isfinite(a).all():
        raise ValueError(f"node {name!r} ({type(node).__name__}): parameter {attr} contains "
                         "NaN or infinite values")
    return a


def _ints(node, name, attr, n, low):
    """An int parameter given as a scalar or ``n`` values, as an n-tuple (each >= ``low``)."""
    v = np.asarray(getattr(node, attr), dtype=object).ravel()
    try:
        vals = [int(x) for x in v]
        exact = all(float(x) == int(x) for x in v)
    except (TypeError, ValueError):
        vals, exact = [], False
    if not exact or len(vals) not in (1, n) or min(vals) < low:
        raise ValueError(f"node {name!r} ({type(node).__name__}): {attr} = {getattr(node, attr)!r} "
                         f"must be {n} integer(s) >= {low}")
    return tuple(vals * n if len(vals) == 1 else vals)


def _parse(name, node):
    kind = type(node).__name__
    if kind not in NODE_TYPES:
        raise ValueError(f"node {name!r}: NIR type {kind} is not supported by snnfast.nir "
                         f"(supported: {', '.join(NODE_TYPES)})")
    p = {}
    if kind in ("Input", "Output", "Identity"):
        types = node.input_type if kind != "Output" else node.output_type
        shape = next(iter(types.values())) if isinstance(types, dict) and types else None
        p["shape"] = None if shape is None else _shape(shape, name, "shape")
    elif kind in ("Affine", "Linear"):
        p["weight"] = _arr(node, name, "weight")
        if p["weight"].ndim < 2:
            raise ValueError(f"node {name!r} ({kind}): weight must be at least 2-D, got shape "
                             f"{p['weight'].shape}")
        bias = _arr(node, name, "bias") if kind == "Affine" else np.zeros(())
        p["bias"] = _broadcast(bias, p["weight"].shape[:-1], name, kind, "bias")
    elif kind in ("Conv1d", "Conv2d"):
        p.update(_conv_params(node, name, kind))
    elif kind in ("AvgPool2d", "SumPool2d"):
        p["kernel_size"] = _ints(node, name, "kernel_size", 2, 1)
        p["stride"] = _ints(node, name, "stride", 2, 1)
        p["padding"] = _ints(node, name, "padding", 2, 0)
    elif kind == "Flatten":
        p["start_dim"] = _ints(node, name, "start_dim", 1, -64)[0]
        p["end_dim"] = _ints(node, name, "end_dim", 1, -64)[0]
        t = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        p["declared_in"] = None if t is None else _shape(t, name, "input_type")
    elif kind in _ELEMENTWISE:
        p[_ELEMENTWISE[kind][0]] = _arr(node, name, _ELEMENTWISE[kind][0])
        if kind == "Delay" and np.any(p["delay"] < 0):
            raise ValueError(f"node {name!r} (Delay): delays must be >= 0")
    elif kind in _NEURON_PARAMS:
        p.update(_neuron_params(node, name, kind))
    return GraphNode(name, kind, p, node)


def _shape(v, name, what):
    a = np.asarray(v).ravel()
    if a.size and (a.dtype.kind not in "iuf" or np.any(a != np.round(a)) or np.any(a < 1)):
        raise ValueError(f"node {name!r}: {what} {v!r} is not a shape of positive integers")
    return tuple(int(x) for x in a)


def _broadcast(a, shape, name, kind, attr):
    try:
        return np.broadcast_to(a, shape).copy()
    except ValueError:
        raise ValueError(f"node {name!r} ({kind}): {attr} has shape {a.shape}, expected "
                         f"{tuple(shape)}") from None


def _neuron_params(node, name, kind):
    attrs = _NEURON_PARAMS[kind]
    p = {a: _arr(node, name, a, allow_none=a in ("v_reset", "w_in")) for a in attrs}
    shapes = {a: v.shape for a, v in p.items() if v is not None and v.ndim}
    shape = max(shapes.values(), key=len) if shapes else ()
    for a in attrs:
        v = p[a]
        p[a] = _broadcast(0.0 if a == "v_reset" else 1.0, shape, name, kind, a) if v is None \
            else _broadcast(v, shape, name, kind, a)
    for a in ("tau", "tau_syn", "tau_mem"):
        if a in p and np.any(p[a] <= 0):
            raise ValueError(f"node {name!r} ({kind}): {a} must be > 0, got min "
                             f"{float(p[a].min())!r}")
    p["shape"] = shape
    return p


def _conv_params(node, name, kind):
    n = 1 if kind == "Conv1d" else 2
    w = _arr(node, name, "weight")
    if w.ndim != n + 2:
        raise ValueError(f"node {name!r} ({kind}): weight must be {n + 2}-D (C_out, C_in, "
                         f"{'K' if n == 1 else 'KH, KW'}), got shape {w.shape}")
    groups = _ints(node, name, "groups", 1, 1)[0]
    if w.shape[0] % groups:
        raise ValueError(f"node {name!r} ({kind}): C_out = {w.shape[0]} is not a multiple of "
                         f"groups = {groups}")
    b = getattr(node, "bias", None)
    bias = np.zeros(w.shape[0]) if b is None else _arr(node, name, "bias")
    p = {"weight": w, "bias": _broadcast(bias, (w.shape[0],), name, kind, "bias"),
         "stride": _ints(node, name, "stride", n, 1),
         "dilation": _ints(node, name, "dilation", n, 1), "groups": groups}
    pad = node.padding
    if isinstance(pad, (str, bytes)):
        pad = pad.decode() if isinstance(pad, bytes) else pad
        if pad == "same" and any(s != 1 for s in p["stride"]):
            raise ValueError(f"node {name!r} ({kind}): padding 'same' needs stride 1, got "
                             f"{p['stride']}")
        if pad not in ("same", "valid"):
            raise ValueError(f"node {name!r} ({kind}): padding {pad!r} must be 'same', "
                             "'valid' or integers")
        k = w.shape[2:]
        total = [0] * n if pad == "valid" else [d * (kk - 1) for d, kk in zip(p["dilation"], k)]
        # PyTorch's 'same': the odd extra pad goes after the data
        p["padding"] = tuple((t // 2, t - t // 2) for t in total)
    else:
        p["padding"] = tuple((q, q) for q in _ints(node, name, "padding", n, 0))
    return p


# ----------------------------------------------------------------------------- structure
def _step_order(nodes, edges):
    """(order, back edges): depth-first from the Input nodes (in the graph's node order,
    successors in edge order); an edge to a node on the current path is a back edge; the
    order is a topological order of the remaining (forward) edges, ties broken by the
    graph's node order."""
    seen_edges = set()
    for a, b in edges:
        if (a, b) in seen_edges:
            raise ValueError(f"duplicate edge ({a!r}, {b!r})")
        seen_edges.add((a, b))
    succ = {k: [] for k in nodes}
    indeg = {k: 0 for k in nodes}
    for a, b in edges:
        if nodes[b].kind == "Input":
            raise ValueError(f"edge ({a!r}, {b!r}) leads into Input node {b!r}")
        if nodes[a].kind == "Output":
            raise ValueError(f"edge ({a!r}, {b!r}) leaves Output node {a!r}")
        succ[a].append(b)
        indeg[b] += 1
    inputs = [k for k in nodes if nodes[k].kind == "Input"]
    if not inputs:
        raise ValueError("the graph has no Input node")
    if not any(nodes[k].kind == "Output" for k in nodes):
        raise ValueError("the graph has no Output node")
    back, state = set(), {}
    for root in inputs:
        stack = [(root, iter(succ[root]))]
        state[root] = "open"
        while stack:
            k, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[k] = "done"
                stack.pop()
            elif state.get(nxt) == "open":
                back.add((k, nxt))
            elif nxt not in state:
                state[nxt] = "open"
                stack.append((nxt, iter(succ[nxt])))
    lost = [k for k in nodes if k not in state]
    if lost:
        raise ValueError(f"node {lost[0]!r} is not reachable from any Input node"
                         + (f" (nor are {len(lost) - 1} more)" if len(lost) > 1 else ""))
    rank = {k: i for i, k in enumerate(nodes)}
    indeg = {k: 0 for k in nodes}
    for a, b in edges:
        if (a, b) not in back:
            indeg[b] += 1
    ready = sorted((k for k in nodes if indeg[k] == 0), key=rank.get)
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for b in succ[k]:
            if (k, b) not in back:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
                    ready.sort(key=rank.get)
    return order, back


def _infer_shapes(graph):
    """Set every node's in/out shape, propagating from the Input nodes in step order, and
    check that every edge (back edges too) joins equal shapes."""
    for k in graph.order:
        node = graph.nodes[k]
        fwd = [a for a in graph.preds[k] if (a, k) not in graph.back_edges]
        if node.kind == "Input":
            if node.params["shape"] is None:
                raise ValueError(f"Input node {k!r} has no shape")
            node.in_shape = node.params["shape"]
        else:
            node.in_shape = _input_shape(graph, node, fwd)
        node.out_shape = _output_shape(node)
        for a in fwd:
            _check_edge(graph, a, k)
        if node.kind == "Output" and node.params["shape"] not in (None, node.out_shape):
            raise ValueError(f"Output node {k!r} declares shape {node.params['shape']}, but "
                             f"receives {node.out_shape}")
    for a, b in graph.back_edges:
        _check_edge(graph, a, b)


def _check_edge(graph, a, b):
    sa, sb = graph.nodes[a].out_shape, graph.nodes[b].in_shape
    if sa != sb:
        raise ValueError(f"shape mismatch on edge ({a!r}, {b!r}): {a!r} outputs {sa}, "
                         f"{b!r} ({graph.nodes[b].kind}) takes {sb}")


def _input_shape(graph, node, fwd):
    """A node's per-sample input shape: what its own parameters fix, else its forward
    predecessors' output shape."""
    own = _own_input_shape(node)
    if own is not None:
        return own
    if fwd:
        return graph.nodes[fwd[0]].out_shape
    declared = node.params.get("declared_in")
    if declared is not None:
        return declared
    raise ValueError(f"node {node.name!r} ({node.kind}): its input shape cannot be inferred "
                     "(it is fed by back edges only)")


def _own_input_shape(node):
    p, k = node.params, node.kind
    if k in ("Affine", "Linear"):
        return p["weight"].shape[:-2] + p["weight"].shape[-1:]
    if k in _NEURON_PARAMS:
        return p["shape"] if p["shape"] != () else None
    if k in _ELEMENTWISE:
        a = p[_ELEMENTWISE[k][0]]
        return a.shape if a.ndim else None
    return None


def _output_shape(node):
    p, k, s = node.params, node.kind, node.in_shape
    if k in ("Affine", "Linear"):
        return p["weight"].shape[:-1]
    if k in ("Conv1d", "Conv2d"):
        return _conv_out_shape(node, s)
    if k in ("AvgPool2d", "SumPool2d"):
        return _pool_out_shape(node, s)
    if k == "Flatten":
        return _flatten_out_shape(node, s)
    return s


def _conv_out_shape(node, s):
    p = node.params
    w = p["weight"]
    n = w.ndim - 2
    if len(s) != n + 1 or s[0] != w.shape[1] * p["groups"]:
        raise ValueError(f"node {node.name!r} ({node.kind}): input shape {s} does not fit weight "
                         f"{w.shape} with groups = {p['groups']} (expected ({w.shape[1] * p['groups']}, "
                         f"{', '.join(['L'] if n == 1 else ['H', 'W'])}))")
    return _windows(node, s, w.shape[0], w.shape[2:], p["stride"], p["dilation"], p["padding"])


def _pool_out_shape(node, s):
    p = node.params
    if len(s) != 3:
        raise ValueError(f"node {node.name!r} ({node.kind}): input shape {s} is not (C, H, W)")
    return _windows(node, s, s[0], p["kernel_size"], p["stride"], (1, 1),
                    [(q, q) for q in p["padding"]])


def _windows(node, s, channels, kernel, stride, dilation, padding):
    """(channels, *positions) of a sliding window over the spatial axes of ``s``."""
    out = [channels]
    for size, k, st, d, (lo, hi) in zip(s[1:], kernel, stride, dilation, padding):
        o = (size + lo + hi - d * (k - 1) - 1) // st + 1
        if o < 1:
            raise ValueError(f"node {node.name!r} ({node.kind}): kernel larger than the padded "
                             f"input {s}")
        out.append(o)
    return tuple(out)


def _flatten_out_shape(node, s):
    p = node.params
    if p["declared_in"] not in (None, s):
        raise ValueError(f"node {node.name!r} (Flatten): declared input_type {p['declared_in']} "
                         f"but receives {s}")
    n = len(s)
    a, b = p["start_dim"], p["end_dim"]
    a, b = a + n if a < 0 else a, b + n if b < 0 else b
    if not 0 <= a <= b < n:
        raise ValueError(f"node {node.name!r} (Flatten): start_dim {p['start_dim']}, end_dim "
                         f"{p['end_dim']} do not fit an input of shape {s} (dims of one "
                         "sample, no batch axis)")
    return s[:a] + (int(np.prod(s[a:b + 1])),) + s[b + 1:]
