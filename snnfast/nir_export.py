"""Export and import of snnfast networks as NIR graphs (Neuromorphic Intermediate Representation).

One exporter, :func:`network_to_nir`, writes any :class:`~snnfast.network.Network` with its
weights as a chain of NIR nodes named after its layers (the mapping: its docstring and
``docs/network.rst``). :func:`to_nir` is its front door: ``to_nir(network, weights, ...)``,
or ``to_nir(model, ...)`` for a model that holds a description (:class:`~snnfast.ConvSNN`,
:class:`~snnfast.SNN`: its ``.network``, ``.weights`` and the seed of its input noise). The
presets' ConvSNN therefore exports as its description's layers::

    input Input [1, H, W] -> conv Conv2d -> conv_lif LIF -> flatten Flatten -> fc1 Affine
    -> hidden LIF -> fc2 Affine -> readout I (r = 1/(T dt)) -> output Output

Discretisation (forward Euler with step ``dt``, the convention of snnTorch's NIR exporter):
a NIR ``LIF`` with ``tau, r, v_leak = 0`` steps as ``v[t] = beta * v[t-1] + g * I[t]`` with
``beta = 1 - dt/tau`` and input gain ``g = r * dt / tau``; a layer ``v = decay v + scale I``
(spike iff ``v > threshold``, reset to 0) is therefore written as ``tau = dt/(1-decay)``,
``r = scale/(1-decay)``, ``v_threshold = threshold``, ``v_reset = 0``. With
``fold_gain=True`` the LIF nodes get ``r = 1`` and the factor ``r`` is multiplied into the
preceding synaptic layer's weights and bias (for importers that ignore ``r``, such as Norse
and Sinabs); ``peers=True`` writes the variant snnTorch's and Norse's importers load and run
on batches (``docs/nir.rst``).

Import: :func:`network_from_nir` reads a graph of :func:`network_to_nir` back exactly (its
description and weights); :func:`from_nir` builds a ConvSNN of the ``nir`` preset's semantics
from any graph of the Conv-SNN family (Input -> Conv2d -> LIF -> Flatten -> Affine -> LIF ->
Affine -> I -> Output), which includes the files of snnfast's former ConvSNN exporter (format
``snnfast-nir-1``, :data:`FORMAT`, hidden node ``hidden_lif``). Running any NIR graph:
:func:`snnfast.nir.run`. Numerical convention of :func:`from_nir`: a gain within
``GAIN_RTOL`` of 1 is treated as exactly 1 (such gains only come from float64 round-off of
``tau = dt/(1-beta)``, ``r = 1/(1-beta)``); other gains are multiplied into weights and
biases in float64 and rounded once to float32 (exact in real arithmetic, not bit for bit).
"""
from __future__ import annotations

import dataclasses
import io
import json
import warnings

import numpy as np

from ._utils import atomic_write_bytes

__all__ = [
    "NIRExportWarning", "to_nir", "network_to_nir", "network_inexpressible", "network_from_nir",
    "from_nir", "graph_to_spec", "check_dt", "FORMAT", "NETWORK_FORMAT", "GAIN_RTOL",
]

FORMAT = "snnfast-nir-1"
"""Metadata format of the graphs of snnfast's former ConvSNN exporter (still imported by
:func:`from_nir`); graphs written today are :data:`NETWORK_FORMAT`."""
NETWORK_FORMAT = "snnfast-network-nir-1"
GAIN_RTOL = 1e-6

_DEFAULT_DT = 1e-4          # snnTorch's NIR convention; NIR itself carries no dt


class NIRExportWarning(UserWarning):
    """A model feature that the exported NIR graph cannot express (the graph differs from the model)."""


def _version():
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    return __version__


def _is_power_of_two(x):
    m, _ = np.frexp(x)
    return bool(np.isfinite(x) and m == 0.5)


def _scaled(a, s):
    """float32(a * s) computed in float64, or ``a`` itself when ``s == 1``."""
    a = np.asarray(a, dtype=np.float32)
    if s == 1.0:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray((a.astype(np.float64) * s).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Export of any Network description
# --------------------------------------------------------------------------------------------

def to_nir(model, *args, **kwargs):
    """Export a network as a NIR graph (:func:`network_to_nir`).

    ``to_nir(network, weights, path=None, dt=1e-4, fold_gain=False, peers=False)`` for a
    :class:`~snnfast.network.Network`; ``to_nir(model, path=None, dt=1e-4, ...)`` for a model
    holding one (:class:`~snnfast.ConvSNN`, :class:`~snnfast.SNN`): its description
    (``model.network``), its weights (``model.weights``) and, in the metadata, the seed of its
    input noise (``model.config.seed``; :func:`from_nir` gives it back).
    """
    from .network import Network
    if isinstance(model, Network):
        return network_to_nir(model, *args, **kwargs)
    network = getattr(model, "network", None)
    if not isinstance(network, Network):
        raise TypeError(f"expected a snnfast.network.Network and its weights, or a model with "
                        f"a description (.network, .weights: ConvSNN, SNN), got "
                        f"{type(model).__name__}")
    kwargs.setdefault("seed", getattr(getattr(model, "config", None), "seed", None))
    return network_to_nir(network, model.weights, *args, **kwargs)


def network_inexpressible(network):
    """Features of a :class:`~snnfast.network.Network` that a NIR graph cannot express.

    Returns
    -------
    dict
        ``{"<layer>.<feature>": explanation}``; empty for descriptions whose every spiking
        layer updates on every step (period 1) with a windowed drive and a reset to zero
        (their exported graph gives the same spikes, see :func:`network_to_nir`), such as
        the ``nir`` preset's.
    """
    out = {}
    T = network.T
    for ly in network:
        if ly.kind != "neuron":
            continue
        if ly.reset != "zero":
            what = "v <- v - threshold" if ly.reset == "subtract" else "v <- v / 2"
            out[f"{ly.name}.reset"] = (f"reset {ly.reset!r} ({what} on a spike): a NIR LIF/IF "
                                       "resets to a fixed v_reset, exported as v_reset = 0")
        if ly.period != 1:
            steps = ly.update_steps(T)
            out[f"{ly.name}.period"] = (
                f"updated only on the steps t % {ly.period} == {ly.phase} ({len(steps)} of "
                f"{T}); NIR nodes update on every step, so the graph updates it on all {T}")
        if ly.drive == "cumulative":
            out[f"{ly.name}.drive"] = (
                "cumulative drive (the input spike counts since step 0); NIR edges carry the "
                "current step's values only, so the graph drives it with each step's input")
    return out


def _nir_array(shape, value):
    return np.full(shape, float(value), dtype=np.float64)


def _neuron_node(ly, shape, dt, approx, fold):
    """A NIR LIF (decay < 1) or IF (decay 1) node stepping as ``v = decay v + scale I``
    under forward Euler with step ``dt`` (with ``fold``, a LIF gets ``r = 1``: its gain is
    in the preceding weights); notes in ``approx`` where the float32 coefficients the runtime
    derives differ from the layer's."""
    import nir
    beta, scale = float(ly.beta), float(ly.scale)
    meta = {"snnfast_layer": ly.to_dict()}
    if beta == 1.0:
        r = scale / dt
        node = nir.IF(r=_nir_array(shape, r), v_threshold=_nir_array(shape, ly.threshold),
                      v_reset=_nir_array(shape, 0.0), metadata=meta)
        got_beta, got_gain = 1.0, r * dt
    else:
        tau, r = dt / (1.0 - beta), 1.0 if fold else scale / (1.0 - beta)
        node = nir.LIF(tau=_nir_array(shape, tau), r=_nir_array(shape, r),
                       v_leak=_nir_array(shape, 0.0),
                       v_threshold=_nir_array(shape, ly.threshold),
                       v_reset=_nir_array(shape, 0.0), metadata=meta)
        h = dt / tau                      # the coefficients snnfast.nir.run derives (Euler)
        got_beta, got_gain = 1.0 - h, (None if fold else r * h)
    for what, got, want in (("decay", got_beta, beta), ("input gain", got_gain, scale)):
        if got is not None and np.float32(got) != np.float32(want):
            approx[f"{ly.name}.{what}"] = (
                f"{what} {want!r} becomes {got!r} through tau/r and dt: another float32 "
                f"value, so the graph's rounding differs from the layer's")
    return node


def _fold_factors(net, approx):
    """``{synaptic layer index: factor}``: with ``fold_gain``, each LIF layer's input gain
    ``r = scale / (1 - decay)`` moves into the synaptic layer that feeds it (through pools
    and Flattens, which are linear; a Network has one before every spiking layer)."""
    out = {}
    for i, ly in enumerate(net.layers[:net.readout_index]):
        if ly.kind != "neuron" or float(ly.beta) == 1.0:
            continue                       # an IF keeps its r (NIR's IF has no tau)
        j = i - 1
        while net[j].kind != "synapse":
            j -= 1
        out[j] = float(ly.scale) / (1.0 - float(ly.beta))
        if not _is_power_of_two(out[j]):
            approx[f"{ly.name}.fold_gain"] = (
                f"gain r = {out[j]!r} folded into {net[j].name!r}'s weights and bias (r = 1): "
                "exact in real arithmetic, float32 rounding of the weights differs")
    return out


def _pool_nodes(net, i, spikes_in, lost):
    """NIR node(s) of pool layer ``i`` as ``[(suffix, node)]``."""
    import nir
    ly = net[i]
    kind = type(ly).__name__
    args = dict(kernel_size=np.array(ly.kernel_size), stride=np.array(ly.stride),
                padding=np.array([0, 0]))
    if kind != "MaxPool2d":
        return [("", getattr(nir, kind)(**args))]
    if spikes_in is False:
        raise ValueError(f"layer {i} ({ly.name!r}, MaxPool2d): NIR has no max pool; one on "
                         "spikes is exported as a sum pool + Threshold(0.5), but this one "
                         "pools currents")
    if spikes_in is None:
        lost[f"{ly.name}.max"] = ("MaxPool2d on the Direct encoder's frames exported as a sum "
                                  "pool + Threshold(0.5): exact only for binary frames")
    return [("", nir.SumPool2d(**args)),
            ("_any", nir.Threshold(threshold=_nir_array(net.shapes[i], 0.5),
                                   metadata={"meaning": "max of binary spikes = sum > 0.5"}))]


def _synapse_node(net, i, weights, factor=1.0):
    """The NIR node of synaptic layer ``i``, its weights and bias multiplied by ``factor``."""
    import nir
    ly = net[i]
    w = _scaled(weights[f"{ly.name}.weight"], factor)
    b = weights.get(f"{ly.name}.bias")
    b = None if b is None else _scaled(b, factor)
    if type(ly).__name__ == "Conv2d":
        return nir.Conv2d(input_shape=tuple(net.input_shape_of(i)[1:]), weight=w,
                          stride=ly.stride, padding=ly.padding, dilation=1, groups=1,
                          bias=b if b is not None else np.zeros(len(w), np.float32))
    wt = np.ascontiguousarray(w.T)
    return nir.Affine(weight=wt, bias=b) if b is not None else nir.Linear(weight=wt)


def _flatten_node(net, i, peers):
    import nir
    from .nir.peers import _flatten_from_end
    node = nir.Flatten(input_type={"input": np.array(net.input_shape_of(i))}, start_dim=0,
                       end_dim=-1)
    # torch importers pass start_dim to torch.nn.Flatten, which counts a batch axis too
    return _flatten_from_end(node) if peers else node


def _network_nodes(net, weights, dt, lost, approx, fold, peers):
    """The nodes of the exported chain, in order, as ``[(name, node)]``."""
    import nir
    from .network.layers import Direct
    nodes = [("input", nir.Input(input_type={"input": np.array(net.input_shape)}))]
    factors = _fold_factors(net, approx) if fold else {}
    # whether the current values are spikes: True, False (currents) or None (Direct frames)
    spikes = None if isinstance(net.encoder, Direct) else True
    r = net.readout_index
    for i, ly in enumerate(net.layers[:r]):
        if ly.kind == "synapse":
            nodes.append((ly.name, _synapse_node(net, i, weights, factors.get(i, 1.0))))
            spikes = False
        elif ly.kind == "neuron":
            nodes.append((ly.name, _neuron_node(ly, net.shapes[i], dt, approx, fold)))
            spikes = True
        elif type(ly).__name__ == "Flatten":
            nodes.append((ly.name, _flatten_node(net, i, peers)))
        else:
            nodes += [(ly.name + sfx, node) for sfx, node in _pool_nodes(net, i, spikes, lost)]
    for i in range(r + 1, len(net)):
        ly = net[i]
        nodes.append((ly.name, _synapse_node(net, i, weights) if type(ly).__name__ == "Linear"
                      else _flatten_node(net, i, peers)))
    # the graph updates every node on every step: its rates are counts / T whatever the
    # read-out's norm (a norm "updates" of a layer with period > 1 is listed as lost)
    T = net.T
    if not peers:           # neither PyTorch importer maps an I node
        nodes.append((net[r].name, nir.I(r=_nir_array(net.output_shape, 1.0 / (T * dt)),
                                         metadata={"meaning": f"rate read-out: its state after "
                                                   f"the last step = the network's output (the "
                                                   f"layers after the read-out applied to each "
                                                   f"step's spikes, summed over steps / {T})"})))
    nodes.append(("output", nir.Output(output_type={"output": np.array(net.output_shape)})))
    return nodes


def check_dt(dt, network):
    """``dt`` as a float if a graph of ``network`` can be written with it; ValueError if not.

    ``dt`` must be a finite number > 0 and the quantities :func:`network_to_nir` writes must
    be finite normal float64 numbers (or 0): ``T*dt``, the read-out's ``r = 1/(T*dt)``,
    every LIF layer's ``tau = dt/(1-decay)`` and every IF layer's ``r = scale/dt``. A tiny
    ``dt`` (1e-320) would otherwise write ``r = inf`` and a huge one ``tau = inf``: a file
    that importers reject, or a subnormal ``tau`` from which the decay cannot be recovered.

    Parameters
    ----------
    dt : float
    network : Network, or a model holding one (``.network``)
    """
    network = getattr(network, "network", network)
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.integer, np.floating)) \
            or not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    dt = float(dt)
    derived = {"T*dt": network.T * dt, "readout r = 1/(T*dt)": 1.0 / (network.T * dt)}
    for ly in network:
        if ly.kind == "neuron":
            derived[f"{ly.name} tau = dt/(1-decay)" if ly.beta < 1 else f"{ly.name} r = "
                    f"scale/dt"] = dt / (1.0 - ly.beta) if ly.beta < 1 else ly.scale / dt
    for name, v in derived.items():
        if not (np.isfinite(v) and (v == 0 or abs(v) >= np.finfo(np.float64).tiny)):
            raise ValueError(f"dt={dt!r} is out of range for this network: {name} = {v!r} is "
                             "not a finite normal float64 number")
    return dt


def network_to_nir(network, weights, path=None, dt=_DEFAULT_DT, fold_gain=False, peers=False,
                   seed=None):
    """Export any :class:`~snnfast.network.Network` with its weights as a NIR graph.

    The graph is a chain ``input -> <one node per layer> -> <readout> -> output`` whose nodes
    are named after the layers: Conv2d -> ``Conv2d``; Linear -> ``Affine`` (``Linear`` without
    bias; weight transposed to NIR's (out, in)); SumPool2d/AvgPool2d -> the same NIR pools;
    MaxPool2d on spikes -> ``SumPool2d`` + ``Threshold(0.5)`` (node ``<name>_any``: the max of
    binary values); Flatten -> ``Flatten``; LIF -> ``LIF`` with ``tau = dt/(1-decay)``,
    ``r = scale/(1-decay)``, ``v_leak = 0``, ``v_reset = 0`` (forward Euler then steps
    ``v = decay v + scale I``); IF (or a LIF of decay 1) -> ``IF`` with ``r = scale/dt``; the
    RateReadout -> an integrator ``I`` with ``r = 1/(T dt)`` placed after the layers that
    follow the read-out (their outputs summed over the T steps / T = the output, up to
    float32 rounding, when the last spiking layer updates on every step). The input encoder
    is not part of the graph: it takes the encoder's output (input spikes or frames) at each
    step.

    For a description without inexpressible features (:func:`network_inexpressible`) the
    graph run by :func:`snnfast.nir.run` (``integrator="euler"``, ``sums="ordered"``) gives
    the same spikes as :func:`snnfast.engine.forward`, bit for bit (unless a coefficient
    listed in ``metadata["approximations"]`` rounds differently).

    Parameters
    ----------
    network : Network
    weights : dict of arrays, as :meth:`Network.param_shapes` lists
    path : str or Path, optional
        Where to write the graph (``nir.write``, HDF5), atomically.
    dt : float
        Time step of the mapping (NIR graphs carry none; default 1e-4, snnTorch's); see
        :func:`check_dt` for the values refused.
    fold_gain : bool
        Write ``r = 1`` in every LIF node and multiply its gain ``r = scale/(1-decay)`` into
        the weights and bias of the synaptic layer that feeds it, in float64, rounded once to
        float32 (``metadata["approximations"]`` lists the gains that are not powers of two).
    peers : bool
        The graph snnTorch's ``import_from_nir`` and Norse's ``from_nir`` load as they are and
        run on batches (``docs/nir.rst``): Flattens count their axes from the end
        (``start_dim=-3`` over ``[C, H, W]``: the same axes with or without a batch axis), no
        ``I`` read-out (neither importer maps it; the Output takes the last layer's per-step
        output, whose mean over the ``T`` steps is the network's output) and ``fold_gain``.
        :func:`network_from_nir` and :func:`from_nir` do not read it back.
    seed : int, optional
        The seed of the input encoder's noise of the model exported (recorded in the
        metadata; :func:`from_nir` gives its model this seed).

    Returns
    -------
    nir.NIRGraph

    Raises
    ------
    ValueError
        For weights that do not match, a ``dt`` out of range, or a MaxPool2d of currents (NIR
        has no max pool).

    Warns
    -----
    NIRExportWarning
        Listing the features NIR cannot express (also in ``metadata["inexpressible"]``).
    """
    from .network import Network
    from .reference.forward import _check_weights
    if not isinstance(network, Network):
        raise TypeError(f"network must be a snnfast.network.Network, got "
                        f"{type(network).__name__}")
    w = _check_weights(network, weights)
    dt = check_dt(dt, network)
    fold = bool(fold_gain or peers)
    lost, approx = network_inexpressible(network), {}
    nodes = _network_nodes(network, w, dt, lost, approx, fold, bool(peers))
    names = [k for k, _ in nodes]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names clash with the graph's node names {names}: rename the "
                         "layers called 'input' or 'output'")
    meta = {"format": NETWORK_FORMAT, "producer": f"snnfast {_version()}", "dt": dt,
            "discretization": "forward Euler: v[t] = beta v[t-1] + (r dt/tau) I[t], beta = "
                              "1 - dt/tau; spike iff v > v_threshold, then v = v_reset",
            "threshold_op": ">", "network": json.dumps(network.to_dict()),
            "not_in_graph": {"input_encoder": json.dumps(network.to_dict()["encoder"])},
            "fold_gain": fold, "peers": bool(peers),
            "exact": not lost and not approx, "expressible": not lost,
            "inexpressible": dict(lost), "approximations": dict(approx)}
    if peers:
        meta["readout"] = (f"rate: the network's output = mean over the {network.T} steps of "
                           "node 'output' (no I node)")
    if seed is not None:
        meta["seed"] = _check_seed(seed)
    return _finish_graph(dict(nodes), names, meta, lost,
                         f"network {network.name or '(unnamed)'!r}", path)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
            not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    # an HDF5 attribute holds int64: larger seeds are written as text
    return int(seed) if seed < 2 ** 63 else str(int(seed))


def _finish_graph(nodes, order, meta, lost, what, path):
    """The chain ``order`` of ``nodes`` as a checked NIR graph; warns (NIRExportWarning) with
    what NIR cannot express of ``what`` and writes ``path`` (if given) atomically."""
    import nir
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata=meta,
                         type_check=True)
    if lost:
        lines = "\n".join(f"  - {k}: {v}" for k, v in lost.items())
        # stacklevel 3: the warning names the caller of the exporter
        warnings.warn(f"NIR export of {what} is not exact; NIR cannot express:\n{lines}",
                      NIRExportWarning, stacklevel=3)
    if path is not None:
        _write_graph(path, graph)
    return graph


def network_from_nir(path_or_graph):
    """The :class:`~snnfast.network.Network` and weights of a graph :func:`network_to_nir`
    wrote (a ``.nir`` file or a ``nir.NIRGraph``).

    The description comes from the graph's metadata, the weights and biases from its
    ``Conv2d``/``Affine``/``Linear`` nodes (so edited weights are taken). Every other node
    must be exactly what exporting that description with those weights gives (same names,
    types, edges and parameters): a graph whose neuron parameters or structure were edited
    is refused rather than imported as something it is not. Graphs from other tools run
    through :func:`snnfast.nir.run`; ConvSNN graphs import with :func:`from_nir`.

    Returns
    -------
    (Network, dict of float32 arrays)

    Raises
    ------
    ValueError
        One line: not a graph of :func:`network_to_nir`, an unreadable description, or a node
        that differs from the export of the description.
    """
    from .network import ConfigError, Network
    from .nir.graph import _read
    g = _read(path_or_graph)
    meta = g.metadata if isinstance(g.metadata, dict) else {}
    fmt = _text(meta.get("format"))
    if fmt != NETWORK_FORMAT:
        raise ValueError(f"not a graph written by network_to_nir (metadata format {fmt!r}, "
                         f"expected {NETWORK_FORMAT!r}); run it with snnfast.nir.run"
                         + ("; ConvSNN graphs import with from_nir" if fmt == FORMAT else ""))
    if _flag(meta.get("fold_gain")) or _flag(meta.get("peers")):
        raise ValueError("the graph was written with fold_gain or peers: its weights hold the "
                         "LIF nodes' gains (and peers has no read-out), so they are not the "
                         "network's; run it with snnfast.nir.run")
    try:
        text = meta["network"]
        net = Network.from_dict(json.loads(_text(text)))
        dt = float(np.asarray(meta["dt"]))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ValueError(f"the graph's network description cannot be read: {exc}") from None
    weights = {}
    for ly in net:
        if ly.kind == "synapse":
            weights.update(_synapse_arrays(g, ly))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRExportWarning)
        want = network_to_nir(net, weights, dt=dt)
    _same_graph(g, want)
    from .reference.forward import _check_weights
    return net, _check_weights(net, weights)


def _text(v):
    """A text of a graph's metadata (bytes from some HDF5 writers) as str."""
    return v.decode() if isinstance(v, bytes) else v


def _flag(v):
    """A boolean of a graph's metadata (HDF5 gives numpy.bool_ back)."""
    return bool(np.asarray(v)) if v is not None else False


def _synapse_arrays(g, ly):
    """``{"<layer>.weight": ..., "<layer>.bias": ...}`` of a synaptic layer's node."""
    node = g.nodes.get(ly.name)
    kind = type(node).__name__
    if kind == "Conv2d":
        w, b = node.weight, node.bias
    elif kind in ("Affine", "Linear"):
        w, b = np.asarray(node.weight).T, getattr(node, "bias", None)
    else:
        raise ValueError(f"node {ly.name!r}: expected the Conv2d/Affine/Linear node of layer "
                         f"{ly.name!r}, found {kind if node is not None else 'none'}")
    out = {f"{ly.name}.weight": np.asarray(w, np.float32)}
    if ly.bias and b is not None:
        out[f"{ly.name}.bias"] = np.asarray(b, np.float32)
    return out


def _same_graph(got, want):
    """ValueError naming the first node or edge of ``got`` that differs from ``want``."""
    # (a file does not keep the nodes' order: compared as sets)
    if set(got.nodes) != set(want.nodes) or \
            sorted(map(tuple, got.edges)) != sorted(map(tuple, want.edges)):
        raise ValueError(f"the graph's nodes/edges ({sorted(got.nodes)}) are not those of its "
                         f"description's export ({sorted(want.nodes)}): the graph was edited")
    for name, w_node in want.nodes.items():
        g_node = got.nodes[name]
        if type(g_node).__name__ != type(w_node).__name__:
            raise ValueError(f"node {name!r} is a {type(g_node).__name__}, the description "
                             f"exports a {type(w_node).__name__}: the graph was edited")
        for f in dataclasses.fields(w_node):     # the parameters (not inferred types)
            if f.init and f.name != "metadata" and not _same_value(getattr(g_node, f.name, None),
                                                        getattr(w_node, f.name)):
                raise ValueError(f"node {name!r} ({type(w_node).__name__}): {f.name} differs "
                                 f"from the export of the graph's description: the graph was "
                                 f"edited (only weights and biases may be)")


def _same_value(a, b):
    if isinstance(b, dict):
        return isinstance(a, dict) and set(a) == set(b) and all(
            _same_value(a[k], b[k]) for k in b)
    try:
        return np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    except (TypeError, ValueError):
        return a == b


def _write_graph(path, graph):
    """``nir.write`` built in memory, then one atomic plain write (a full disk is a clean
    OSError; HDF5 writing to the disk itself left objects open: a segfault at exit)."""
    import nir
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write_bytes(path, buf.getbuffer(), suffix=".nir.tmp")


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------

def _chain(net):
    """The node names of a loaded graph that is a linear chain Input -> ... -> Output."""
    if net.back_edges:
        a, b = sorted(net.back_edges)[0]
        raise ValueError(f"unsupported NIR graph: cycle through node {b!r} (edge {a!r} -> {b!r})")
    if len(net.inputs) != 1:
        raise ValueError(f"unsupported NIR graph: expected exactly one Input node, found "
                         f"{len(net.inputs)}")
    succ = {}
    for a, b in net.edges:
        if a in succ:
            raise ValueError(f"unsupported NIR graph: node {a!r} has more than one successor "
                             "(only a linear chain is supported)")
        succ[a] = b
    order = [net.inputs[0]]
    while order[-1] in succ:
        order.append(succ[order[-1]])
    if len(order) != len(net.nodes):
        extra = sorted(set(net.nodes) - set(order))
        raise ValueError(f"unsupported NIR graph: nodes {extra} are not on the chain from the Input")
    return order


_EXPECTED = [("Input",), ("Conv2d",), ("LIF",), ("Flatten",), ("Affine", "Linear"), ("LIF",),
             ("Affine", "Linear"), ("I",), ("Output",)]


def _uniform(a, name, what):
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"{name}: {what} must be finite and non-empty")
    if not np.all(a == a.flat[0]):
        raise ValueError(f"{name}: non-uniform {what} (min {a.min()!r}, max {a.max()!r}) cannot be "
                         "represented by ConvSNN (one value per layer)")
    return float(a.flat[0])


def _shape_of(node, name, attr, shape):
    a = np.asarray(getattr(node, attr))
    if a.shape != tuple(shape):
        raise ValueError(f"node {name!r} ({type(node).__name__}): {attr} has shape {a.shape}, "
                         f"expected {tuple(shape)}")
    if not np.isfinite(a.astype(np.float64)).all():
        raise ValueError(f"node {name!r}: {attr} contains NaN or infinite values")
    return a


def _lif_params(node, name, shape, dt):
    """(beta, thr, gain array) of a NIR LIF node under snnfast's discretisation."""
    for attr in ("tau", "r", "v_leak", "v_threshold", "v_reset"):
        _shape_of(node, name, attr, shape)
    if np.any(np.asarray(node.v_leak) != 0):
        raise ValueError(f"node {name!r}: v_leak != 0 is not supported (ConvSNN has no leak potential)")
    if np.any(np.asarray(node.v_reset) != 0):
        raise ValueError(f"node {name!r}: v_reset != 0 is not supported (ConvSNN resets to 0)")
    tau = _uniform(node.tau, name, "tau")
    if tau < dt:
        raise ValueError(f"node {name!r}: tau = {tau!r} < dt = {dt!r} gives a negative decay "
                         "1 - dt/tau; pass the dt the graph was made for")
    thr = _uniform(node.v_threshold, name, "v_threshold")
    beta = 1.0 - dt / tau
    gain = np.asarray(node.r, dtype=np.float64) * dt / tau
    return beta, thr, gain


def _unit_or(g):
    """Gains within GAIN_RTOL of 1 are float64 round-off of the tau/r mapping: treat them as 1."""
    g = np.asarray(g, dtype=np.float64)
    return np.where(np.abs(g - 1.0) <= GAIN_RTOL, 1.0, g)


def _recorded(meta):
    """What snnfast recorded beside a graph of the Conv-SNN family: ``T``, ``n_det``, ``seed``
    and the exact decays ``beta_c``, ``beta_h`` (those present), read from the description of
    a :data:`NETWORK_FORMAT` graph or from the fields of the former ConvSNN exporter's
    (:data:`FORMAT`); ``{}`` for another producer's graph."""
    if not str(_text(meta.get("producer", ""))).startswith("snnfast"):
        return {}
    out = {}
    try:
        if _text(meta.get("format")) == NETWORK_FORMAT:
            d = json.loads(_text(meta["network"]))
            enc = d["encoder"]
            out.update({k: enc[k] for k in ("T", "n_det") if k in enc})
            decays = [ly.get("decay") for ly in d["layers"] if ly.get("type") == "LIF"]
            if len(decays) == 2:
                out["beta_c"], out["beta_h"] = decays
            if "seed" in meta:
                out["seed"] = meta["seed"]
        else:
            out.update(meta.get("input_coding", {}))
            out["beta_c"], out["beta_h"] = meta["conv"]["beta"], meta["hidden"]["beta"]
    except (KeyError, TypeError, ValueError, AttributeError):
        pass                         # a damaged record: the graph's own values are used
    return out


def _recorded_int(rec, key, default=None):
    try:
        return int(rec[key])
    except (KeyError, TypeError, ValueError):
        return default


def _meta_float(rec, key, computed):
    """The producer's exact value when it agrees with the one computed from the graph."""
    try:
        v = float(rec[key])
    except (KeyError, TypeError, ValueError):
        return computed
    return v if abs(v - computed) <= 1e-9 * max(1.0, abs(v)) else computed


def graph_to_spec(path_or_graph, dt=None, T=None):
    """Translate a NIR graph of the Conv-SNN family into ConvSNN semantics and parameters.

    What snnfast recorded beside the graph (``T``, ``n_det``, the exact decays, the seed) is
    read from either of its formats: :data:`NETWORK_FORMAT` (today's exports, the network
    description) and :data:`FORMAT` (the former ConvSNN exporter's fields).

    Parameters
    ----------
    path_or_graph : str, Path or nir.NIRGraph
    dt : float, optional
        Time step of the discretisation. Default: ``metadata["dt"]`` if present, else 1e-4
        (snnTorch's convention; NIR carries no dt).
    T : int, optional
        Number of time steps (fixes the read-out scale). Default: snnfast metadata, else inferred
        from the read-out ``I`` node as ``1/(r*dt)`` when that is an integer.

    Returns
    -------
    overrides : dict
        Config fields for ``ConvSNN(preset="nir", **overrides)``.
    params : dict
        Canonical float32 ``conv_w, conv_b, W1, b1, W2, b2`` with all gains folded in.
    info : dict
        ``seed`` (recorded by snnfast's exporter, else 0), ``dt``, ``T``, ``metadata``.

    Raises
    ------
    ValueError
        For graphs outside the family or parameters ConvSNN cannot represent, and for
        everything :func:`snnfast.nir.load` (which reads and checks the graph) refuses.
    """
    from .nir.graph import load
    net = load(path_or_graph)         # reads, flattens and checks shapes and values
    meta = net.metadata
    rec = _recorded(meta)
    if dt is None:
        dt = float(meta["dt"]) if "dt" in meta else _DEFAULT_DT
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")

    order = _chain(net)
    types = [net.nodes[k].kind for k in order]
    if len(types) != len(_EXPECTED) or any(t not in e for t, e in zip(types, _EXPECTED)):
        want = " -> ".join("|".join(e) for e in _EXPECTED)
        raise ValueError(f"unsupported NIR graph topology: expected {want}, got {' -> '.join(types)}")
    n = dict(zip(["input", "conv", "conv_lif", "flatten", "fc1", "hidden_lif", "fc2", "readout",
                  "output"], [net.nodes[k].source for k in order]))
    names = dict(zip(n, order))

    # the sizes of the model it becomes: the nir preset's description
    from .convsnn import _preset_geometry
    geo = _preset_geometry("nir")
    in_want, conv_shape = (1,) + geo.image_shape, geo.conv_shape
    in_shape = net.nodes[names["input"]].out_shape
    if in_shape != in_want:
        raise ValueError(f"Input node {names['input']!r}: shape {in_shape}, expected {in_want}")
    conv = n["conv"]
    w = _shape_of(conv, names["conv"], "weight", geo.param_shapes["conv_w"])
    b = _shape_of(conv, names["conv"], "bias", geo.param_shapes["conv_b"])
    pad = conv.padding
    pad_ok = (isinstance(pad, str) and pad == "valid") or (
        not isinstance(pad, str) and np.all(np.asarray(pad) == 0))
    for what, val, ok in (("stride", conv.stride, np.all(np.asarray(conv.stride) == geo.stride)),
                          ("padding", pad, pad_ok),
                          ("dilation", conv.dilation, np.all(np.asarray(conv.dilation) == 1)),
                          ("groups", conv.groups, np.all(np.asarray(conv.groups) == 1))):
        if not ok:
            raise ValueError(f"Conv2d node {names['conv']!r}: {what} = {val!r} is not supported "
                             f"(ConvSNN: stride {geo.stride}, padding 0, dilation 1, groups 1)")
    if (conv.input_shape is not None
            and tuple(np.asarray(conv.input_shape).ravel()) != geo.image_shape):
        raise ValueError(f"Conv2d node {names['conv']!r}: input_shape {conv.input_shape}, "
                         f"expected {geo.image_shape}")

    beta_c, thr_c, g_c = _lif_params(n["conv_lif"], names["conv_lif"], conv_shape, dt)
    g_c = _unit_or(g_c)
    if not np.all(g_c == g_c[:, :1, :1]):
        raise ValueError(f"node {names['conv_lif']!r}: input gain r*dt/tau varies within a channel; "
                         "only a per-channel gain can be folded into the conv weights")
    g_c = g_c[:, 0, 0]

    fl = net.nodes[names["flatten"]]
    if (fl.in_shape, fl.out_shape) != (conv_shape, (geo.n_conv,)):
        raise ValueError(f"Flatten node {names['flatten']!r}: expected {conv_shape} -> "
                         f"({geo.n_conv},), got {fl.in_shape} -> {fl.out_shape}")

    def affine(key, shape):
        node = n[key]
        W = _shape_of(node, names[key], "weight", shape)
        if type(node).__name__ == "Affine":
            bias = _shape_of(node, names[key], "bias", (shape[0],))
        else:
            bias = np.zeros(shape[0], dtype=np.float32)
        return W, bias

    W1t, b1 = affine("fc1", (geo.hidden, geo.n_conv))
    beta_h, thr_h, g_h = _lif_params(n["hidden_lif"], names["hidden_lif"], (geo.hidden,), dt)
    g_h = _unit_or(g_h)
    W2t, b2 = affine("fc2", (geo.classes, geo.hidden))

    r_out = _shape_of(n["readout"], names["readout"], "r", (geo.classes,))
    r_out = _uniform(r_out, names["readout"], "r")
    if r_out <= 0:
        raise ValueError(f"readout node {names['readout']!r}: r must be > 0, got {r_out!r}")
    if T is None:
        T = _recorded_int(rec, "T")
    if T is None:
        t_est = 1.0 / (r_out * dt)
        if abs(t_est - round(t_est)) > 1e-6 * t_est or round(t_est) < 1:
            raise ValueError(f"cannot infer T from readout r = {r_out!r} and dt = {dt!r} "
                             f"(1/(r*dt) = {t_est!r} is not an integer); pass T=")
        T = int(round(t_est))
    T = int(T)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    g_out = float(_unit_or(r_out * dt * T))
    out_shape = net.nodes[names["output"]].out_shape
    if out_shape != (geo.classes,):
        raise ValueError(f"Output node {names['output']!r}: shape {out_shape}, expected "
                         f"({geo.classes},)")

    params = {
        "conv_w": _fold(w, g_c.reshape(-1, 1, 1, 1), "conv_w", dt),
        "conv_b": _fold(b, g_c, "conv_b", dt),
        "W1": _fold(np.asarray(W1t).T, g_h.reshape(1, -1), "W1", dt),
        "b1": _fold(b1, g_h, "b1", dt),
        "W2": _fold(np.asarray(W2t).T, g_out, "W2", dt), "b2": _fold(b2, g_out, "b2", dt),
    }
    overrides = {
        "T": T,
        "beta_c": _meta_float(rec, "beta_c", beta_c),
        "thr_c": thr_c, "reset_c": "zero",
        "beta_h": _meta_float(rec, "beta_h", beta_h),
        "thr_h": thr_h, "reset_h": "zero",
        "hidden_period": 1, "hidden_phase": 0, "drive": "window", "drive_scale": 1.0,
    }
    if _recorded_int(rec, "n_det") is not None:
        overrides["n_det"] = min(_recorded_int(rec, "n_det"), T)
    info = {"seed": _recorded_int(rec, "seed", 0), "dt": dt, "T": T, "metadata": meta}
    return overrides, params, info


def _fold(a, g, name, dt):
    """``a * g`` as float32; refuses gains that push nonzero parameters out of float32.

    The gains ``r*dt/tau`` and ``r*dt*T`` scale with ``dt``: a ``dt`` far from the one the
    graph was made for (e.g. 1e-300 for a graph of dt = 1e-4) would flush every weight to 0,
    or overflow it, and give a model that silently outputs nothing.
    """
    a32 = np.asarray(a, dtype=np.float32)
    g = np.asarray(g, dtype=np.float64)
    if np.all(g == 1.0):
        return np.ascontiguousarray(a32).copy()
    out = np.ascontiguousarray((a32.astype(np.float64) * g).astype(np.float32))
    with np.errstate(invalid="ignore"):
        lost = (a32 != 0) & ~(np.abs(out) >= np.finfo(np.float32).tiny)
    if not np.isfinite(out).all() or lost.any():
        raise ValueError(f"{name}: folding the input gain of dt = {dt!r} into the weights takes "
                         "them outside float32 (overflow or underflow to 0); pass the dt the "
                         "graph was made for")
    return out


def from_nir(path_or_graph, dt=None, T=None, seed=None, **overrides):
    """Build a :class:`~snnfast.ConvSNN` from a NIR graph of the Conv-SNN family.

    The model gets the graph's semantics (preset ``nir``: reset to 0, every layer updated every
    step, per-step drive) with decays and thresholds read from the LIF nodes and every input gain
    ``r*dt/tau`` (and the read-out scale ``r*dt*T``) folded into the weights. snnfast metadata
    (``dt``, exact ``beta``, input coding ``T``, ``n_det``, ``seed``) is used when present, never
    required. See :func:`graph_to_spec` for ``dt`` and ``T``.

    Extra keyword arguments are passed to ``ConvSNN`` (e.g. ``backend``, ``n_threads``).

    Raises
    ------
    ValueError
        Malformed or unsupported graphs (topology, node types, shapes, non-uniform parameters,
        v_leak != 0, v_reset != 0, ...).
    """
    from .convsnn import ConvSNN
    cfg, params, info = graph_to_spec(path_or_graph, dt=dt, T=T)
    cfg.update(overrides)
    model = ConvSNN(preset="nir", seed=info["seed"] if seed is None else int(seed), **cfg)
    _set_params(model, params)
    return model


def _set_params(model, params):
    setter = getattr(model, "set_params", None)
    if callable(setter):
        setter(params)
        return
    for k, v in params.items():
        model.params[k][...] = v
