"""NeuroBench counts of a NIR graph run by :func:`snnfast.nir.run`, per node.

The counting rules are :mod:`snnfast.energy`'s (NeuroBench 2.3.0): every Affine, Linear,
Conv1d and Conv2d node is a connection layer (a call = one time step; ACs when the step's
input of a sample holds only -1, 0, 1, MACs otherwise); every neuron node (I, IF, LI, LIF,
CubaLI, CubaLIF) and Threshold node is an activation layer (ActivationSparsity over its
outputs; MembraneUpdates: all units at the first step, then the units whose membrane
changed). The counts are those of the runtime's own per-step values.
"""
import numpy as np

from .. import energy as _energy
from .graph import Graph, load
from .runtime import choose_backend, run, run_counted

__all__ = ["account", "analyse_file", "is_nir_file", "NOTES"]

NOTES = (
    "a call = one time step of the graph; the binary (AC) test is applied to each sample's "
    "input of that step",
    "connection layers = Affine, Linear, Conv1d, Conv2d nodes; activation layers = neuron "
    "(I, IF, LI, LIF, CubaLI, CubaLIF) and Threshold nodes",
    "MembraneUpdates = every unit of a neuron node at the first step, then the units whose "
    "membrane changed (after the reset vs the previous step)",
    "Footprint = float32 weights, biases and every other node parameter the runtime keeps",
)


def _layer_spec(node):
    """The :class:`snnfast.energy.LayerSpec` of a connection node, or a ValueError naming it."""
    p, k = node.params, node.kind
    if k in ("Affine", "Linear"):
        if p["weight"].ndim != 2:
            raise ValueError(f"node {node.name!r} ({k}): energy counts need a 2-D weight, got "
                             f"shape {p['weight'].shape}")
        bias = p["bias"].astype(np.float32) if k == "Affine" else None
        return _energy.LayerSpec(node.name, "linear", p["weight"].T.astype(np.float32), bias)
    w = p["weight"].astype(np.float32)
    one_d = w.ndim == 3
    pads = p["padding"]
    if p["groups"] != 1 or any(d != 1 for d in p["dilation"]) or any(a != b for a, b in pads):
        raise ValueError(f"node {node.name!r} ({k}): energy counts support groups 1, dilation 1 "
                         "and symmetric padding only")
    shape = node.in_shape
    return _energy.LayerSpec(
        node.name, "conv2d", w[:, :, None, :] if one_d else w, p["bias"].astype(np.float32),
        stride=((1,) + p["stride"]) if one_d else p["stride"],
        padding=((0,) + tuple(a for a, _ in pads)) if one_d else tuple(a for a, _ in pads),
        in_shape=(shape[0], 1, shape[1]) if one_d else shape)


class _Counter:
    """Monitor of :func:`run` feeding an :class:`snnfast.energy.OpAccountant`."""

    def __init__(self, graph, acc, syn, act):
        self.graph, self.acc, self.syn, self.act = graph, acc, syn, act
        self.prev = {}

    def __call__(self, t, info):
        for k in self.syn:
            x = info["inputs"][k]
            self.acc.add_synaptic(k, x.reshape(len(x), 1, -1))
        for k in self.act:
            y = info["outputs"][k]
            n = len(y)
            state = info["states"].get(k)
            mu = None
            if state is not None:
                v = state["v"]
                mu = v.size if t == 0 else int(np.count_nonzero(v != self.prev[k]))
                self.prev[k] = v
            self.acc.add_activation(k, y.reshape(n, 1, -1), membrane_updates=mu)


def account(net, x, dt, integrator="euler", reset="zero", sums="ordered", batch_size=256,
            binary_scope="sample", backend="auto", n_threads=None):
    """NeuroBench metrics of ``net`` run on ``x`` (see :func:`snnfast.nir.run`).

    Parameters
    ----------
    net : Graph, nir.NIRGraph or path
    x : ndarray (N, T, *input_shape) or dict of them
    dt, integrator, reset, sums
        As for :func:`snnfast.nir.run`.
    batch_size : int
        Samples run at once (bounds memory).
    binary_scope : {"sample", "batch"}
        See :func:`snnfast.energy.synaptic_op_counts`.
    backend : {"auto", "compiled", "numpy"}
        As for :func:`snnfast.nir.run`: the compiled backend counts in C what the NumPy
        one counts per step (the same figures); "auto" takes it when it can.
    n_threads : int, optional
        Threads of the compiled backend.

    Returns
    -------
    dict
        :meth:`snnfast.energy.OpAccountant.result` (per sample, per node) with ``notes``
        and ``backend`` (the one that ran).
    """
    graph = net if isinstance(net, Graph) else load(net)
    syn = [k for k in graph.order if graph.nodes[k].kind in ("Affine", "Linear", "Conv1d",
                                                              "Conv2d")]
    act = [k for k in graph.order if graph.nodes[k].neuron or graph.nodes[k].kind == "Threshold"]
    buffers = [np.asarray(v, np.float32) for k in graph.order if k not in syn
               for v in graph.nodes[k].params.values()
               if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    specs = [_layer_spec(graph.nodes[k]) for k in syn]
    acc = _energy.OpAccountant(specs, act, buffers, binary_scope=binary_scope)
    used = choose_backend(graph, backend, sums=sums)
    counts = {"fanout": {s.name: s.fanout(True) for s in specs}, "activations": act}
    single = not isinstance(x, dict)
    xs = {None: x} if single else x
    n = len(np.asarray(next(iter(xs.values()))))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        part = {k: np.asarray(v)[start:start + batch_size] for k, v in xs.items()}
        inputs = part[None] if single else part
        if used == "compiled":
            _add_counts(graph, acc, run_counted(graph, inputs, dt, integrator, reset, counts,
                                                n_threads=n_threads)[2])
        else:
            run(graph, inputs, dt=dt, integrator=integrator, reset=reset, sums=sums,
                monitor=_Counter(graph, acc, syn, act), backend="numpy")
        acc.add_samples(len(next(iter(part.values()))))
    res = acc.result()
    res["notes"] = list(NOTES)
    res["backend"] = used
    return res


def _add_counts(graph, acc, counters):
    """The compiled backend's counters (:func:`snnfast.nir.compiled.run_compiled`) into
    ``acc``: the totals :class:`_Counter` adds step by step."""
    for k, c in counters.items():
        if "eff" in c:
            acc.add_synaptic_counts(k, c["eff"], c["bin"])
            continue
        units = int(np.prod(graph.nodes[k].out_shape))
        mu = c["membrane_updates"]
        acc.add_activation_counts(k, c["nonzero"].sum(), c["calls"] * units, c["calls"],
                                  None if mu is None else mu.sum())


def is_nir_file(path):
    """True if ``path`` is an HDF5 file laid out as ``nir.write`` writes graphs."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "node" in f and "nodes" in f["node"]
    except (OSError, ValueError):
        return False


def analyse_file(path, input_path, dt, preset="horowitz45_fp32", integrator="euler",
                 reset="zero", binary_scope="sample", backend="auto", n_threads=None):
    """:func:`account` of the graph ``path`` on the input file ``input_path`` (see
    :func:`snnfast.nir.read_inputs`), with every energy preset (``preset`` first): the
    structure :func:`snnfast.energy.analyse_file` returns."""
    from .runtime import read_inputs
    _energy.get_preset(preset)
    graph = load(path)
    x = read_inputs(input_path, graph)
    res = account(graph, x, dt, integrator=integrator, reset=reset, binary_scope=binary_scope,
                  backend=backend, n_threads=n_threads)
    order = [preset] + [p for p in _energy.PRESETS if p != preset]
    energies = [_energy.energy_estimate(res["SynapticOperations"], p, res["Dense_single_pass"],
                                        res["executed"]) for p in order]
    return {"file": str(path), "format": "nir", "input": str(input_path), "dt": float(dt),
            "integrator": integrator, "reset": reset, "backend": res["backend"],
            "samples": res["samples"],
            "result": res, "energy": energies}
