"""Run any NIR graph on the CPU, and export snnfast models as NIR graphs.

>>> from snnfast import nir as snir
>>> net = snir.load("graph.nir")                          # doctest: +SKIP
>>> outputs = snir.run(net, x, dt=1e-4)                   # doctest: +SKIP

:func:`load` reads any NIR 1.0.x graph (every node type of ``nir`` 1.0.8, nested subgraphs,
cycles); :func:`run` steps it over a batch of input sequences with an explicit time step, a
selectable integrator (forward Euler or exact exponential) and reset rule, compiled (C,
OpenMP over samples, event-driven) when it can and in NumPy otherwise, with the same
float32 results (:func:`choose_backend`). The
semantics of every node: ``docs/nir-runtime.rst``. :func:`to_nir` exports any network
description with its weights (or a model holding one: ConvSNN, SNN) and :func:`from_nir`
builds a ConvSNN back from a graph of that family (a thin layer on :func:`load`). :func:`for_torch_importers` rewrites a graph for snnTorch's and Norse's
importers (``snnfast.nir.peers``).
"""
from ..nir_export import from_nir, to_nir
from .graph import NODE_TYPES, Graph, GraphNode, load
from .peers import for_torch_importers
from .runtime import BACKENDS, INTEGRATORS, RESETS, SUMS, choose_backend, read_inputs, run

__all__ = ["load", "run", "read_inputs", "Graph", "GraphNode", "NODE_TYPES", "INTEGRATORS",
           "RESETS", "SUMS", "BACKENDS", "choose_backend", "to_nir", "from_nir",
           "for_torch_importers"]
