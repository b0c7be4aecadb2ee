"""NIR graphs rewritten so that the PyTorch importers of snnTorch and Norse run them as
:func:`snnfast.nir.run` does (``docs/nir-runtime.rst``, "Running a graph in snnTorch or Norse").

The rewrites keep the graph's meaning; they only work around how the importers read it:

* **Flatten** (both): the importers hand ``start_dim``/``end_dim`` to ``torch.nn.Flatten``,
  which counts a batch axis, while NIR counts the axes of one sample. The dimensions are
  rewritten counted from the end (``start_dim=0`` over ``[8, 4, 4]`` becomes ``-3``): the same
  axes with or without a leading batch axis.
* **IF** (snnTorch only): snnTorch 1.0 maps ``IF`` to ``snn.Leaky(beta=0.9, init_hidden=False)``,
  whose tuple output the next layer cannot take, so a graph with an IF feeding another node
  does not run. An IF with ``r``, ``v_threshold`` and ``v_reset = 0`` is written as a LIF with
  ``tau = 2**60 * 1e-4`` and ``r = 2**60 * r_if``, ``v_leak = 0``: with snnTorch's fixed
  ``dt = 1e-4`` it becomes ``Leaky(beta = 1 - 2**-60 = 1.0, threshold = v_threshold / r_if,
  reset to zero)``, and :func:`snnfast.nir.run` at ``dt = 1e-4`` steps it as
  ``v = 1.0 * v + r_if * x``, which is the IF at ``dt = 1`` (one step per time bin), exactly.
"""
import numpy as np

from .graph import _read

__all__ = ["for_torch_importers", "PEERS", "SNNTORCH_DT", "IF_TAU_STEPS"]

PEERS = ("snntorch", "norse")
SNNTORCH_DT = 1e-4
"""The time step snnTorch's ``import_from_nir`` assumes (hard-coded in snnTorch 1.0)."""
IF_TAU_STEPS = 2.0 ** 60
"""``tau / dt`` of the LIF that stands for an IF: ``1 - 2**-60`` is exactly 1.0 in float64."""


def for_torch_importers(graph, peer):
    """A copy of ``graph`` that ``peer``'s NIR importer loads and runs on batches.

    Parameters
    ----------
    graph : nir.NIRGraph or path
        Any NIR graph (``nir.read`` is used for a path); it is not modified.
    peer : {"snntorch", "norse"}
        The importer: ``snntorch.import_nir.import_from_nir`` or ``norse.torch.from_nir``.

    Returns
    -------
    nir.NIRGraph
        Nested subgraphs are rewritten too. With ``peer="snntorch"`` run it here with
        ``dt = SNNTORCH_DT`` (the IF nodes then step as at ``dt = 1``).

    Raises
    ------
    ValueError
        For an unknown ``peer``, or (snnTorch) an IF node with ``v_reset != 0`` (snnTorch's
        Leaky resets to zero) or a non-positive ``r``.
    """
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(map(repr, PEERS))}, got {peer!r}")
    return _rewrite(_read(graph), peer)


def _rewrite(g, peer):
    import nir
    nodes = {}
    for name, node in g.nodes.items():
        if isinstance(node, nir.NIRGraph):
            node = _rewrite(node, peer)
        elif isinstance(node, nir.Flatten):
            node = _flatten_from_end(node)
        elif isinstance(node, nir.IF) and peer == "snntorch":
            node = _if_as_lif(name, node)
        nodes[name] = node
    return nir.NIRGraph(nodes=nodes, edges=list(g.edges), metadata=dict(g.metadata or {}),
                        type_check=False)


def _flatten_from_end(node):
    import nir
    shape = np.asarray(node.input_type["input"])
    nd = len(shape)
    start, end = int(node.start_dim), int(node.end_dim)
    start = start - nd if start >= 0 else start
    end = end - nd if end >= 0 else end
    return nir.Flatten(input_type={"input": shape}, start_dim=start, end_dim=end,
                       metadata=dict(node.metadata or {}))


def _if_as_lif(name, node):
    import nir
    r = np.asarray(node.r, dtype=np.float64)
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    v_reset = np.broadcast_to(np.asarray(node.v_reset, dtype=np.float64), thr.shape)
    if np.any(v_reset != 0):
        raise ValueError(f"node {name!r} (IF): v_reset != 0, but snnTorch's Leaky resets to 0")
    if np.any(~(r > 0)):
        raise ValueError(f"node {name!r} (IF): r must be > 0 to be written as a LIF")
    shape = thr.shape
    return nir.LIF(tau=np.full(shape, SNNTORCH_DT * IF_TAU_STEPS),
                   r=np.broadcast_to(r * IF_TAU_STEPS, shape).copy(),
                   v_leak=np.zeros(shape), v_threshold=thr, v_reset=np.zeros(shape),
                   metadata={**dict(node.metadata or {}), "snnfast_rewrite": "IF as LIF"})
