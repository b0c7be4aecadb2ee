"""Operation counting and energy estimates with NeuroBench's definitions.

The core knows nothing about snnfast's model classes. A network is described as

* connection layers (:class:`LayerSpec`: ``"linear"`` or ``"conv2d"``, a weight array,
  stride/padding) and, per batch, the layer's input at every call as an array
  ``(N, calls, ...)``;
* activation (spiking neuron) layers, given by their outputs ``(N, calls, n)``;
* the parameter and buffer arrays (for ``Footprint``).

:class:`OpAccountant` accumulates exact integer counts over batches and returns the
NeuroBench 2.3.0 metrics (Yik et al., Nat. Commun. 16:1545, 2025) under NeuroBench's key
names, per sample:

``Footprint`` [B]
    bytes of all parameters and buffers (zero weights included).
``ConnectionSparsity`` [fraction]
    zero weights / weights of the connection layers (biases excluded), ``round(x, 4)``.
``ActivationSparsity`` [fraction]
    zero outputs / outputs of all activation layers over all calls and samples.
``SynapticOperations`` [ops/sample]
    ``Effective_MACs``, ``Effective_ACs``, ``Dense``. Per call, a layer whose input holds
    only values in {-1, 0, 1} counts ACs, otherwise MACs. Effective ops are the
    (non-zero input) x (non-zero weight) pairs, dense ops every synapse reached by the
    input (all weights, all inputs). Biases are excluded. Summed over calls, divided by
    the number of samples.
``MembraneUpdates`` [updates/sample]
    per activation layer, all neurons on the first call plus, on later calls, the neurons
    whose membrane potential changed (pre-fire vs post-fire), divided by the samples.

NeuroBench applies the binary test to the whole batch tensor of one call, so its MAC/AC
split can depend on the batch size. ``binary_scope="sample"`` (the default here) tests
each sample's input on its own, which equals NeuroBench run with batch size 1 and does not
depend on how the data are batched; ``binary_scope="batch"`` tests the batch given to
:meth:`OpAccountant.add_synaptic` as NeuroBench does.

Besides NeuroBench's metrics, each layer can carry snnfast-native *executed* counts: the
synaptic events the event-driven kernels actually performed (read from the kernels'
counters, or recounted), reported side by side and labelled as such.

Energy: :class:`EnergyModel` presets with cited per-operation energies. The SNN estimate is
``E_MAC * Effective_MACs + E_AC * Effective_ACs``, the equivalent dense ANN
``E_MAC * Dense``. Both cover compute only: memory traffic and neuron updates are not
modelled.

``python -m snnfast.energy MODEL.h5 [--preset P] [--samples N] [--json OUT]`` prints the
table for a Conv-SNN (``snnfast_format = "convsnn-2"`` or ``"convsnn-1"``) or TTFS (``"ttfs-1"``) file, or any
network (``"network-1"``, :func:`from_network`; ``--input X.npz`` gives its inputs);
``python -m snnfast.energy GRAPH.nir --input X.npz --dt DT`` for any NIR graph, counted per
node by :mod:`snnfast.nir.energy`.
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ._cli import (check_output_arg, exits_cleanly_on_interrupt, openmp_wait_defaults,
                   positive_float)
from ._utils import h5_format, write_json

__all__ = [
    "EnergyModel", "PRESETS", "get_preset", "LayerSpec", "OpAccountant",
    "synaptic_op_counts", "fanout", "footprint_bytes", "connection_sparsity",
    "energy_estimate", "format_report", "from_convsnn", "from_network", "from_ttfs",
    "analyse_file", "main",
]

ASSUMPTIONS = "compute only; memory traffic and neuron updates not modelled"


# ----------------------------------------------------------------------------- energy models

@dataclass(frozen=True)
class EnergyModel:
    """Energy per synaptic operation, with the source it comes from.

    Parameters
    ----------
    name : str
        Preset name.
    e_mac_pj, e_ac_pj : float
        Energy of one multiply-accumulate and of one accumulate, in pJ.
    citation : str
        Where the figures come from; "(verify)" marks figures not checked against the paper.
    assumptions : str
        What the estimate leaves out; printed beside every figure.
    """

    name: str
    e_mac_pj: float
    e_ac_pj: float
    citation: str
    assumptions: str = ASSUMPTIONS

    def __post_init__(self):
        for key in ("e_mac_pj", "e_ac_pj"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")

    def energy_uj(self, macs, acs):
        """Energy in uJ of ``macs`` multiply-accumulates and ``acs`` accumulates."""
        return (float(macs) * self.e_mac_pj + float(acs) * self.e_ac_pj) * 1e-6


_HOROWITZ = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
             "ISSCC 2014, 45 nm, 0.9 V")
PRESETS = {
    "horowitz45_fp32": EnergyModel(
        "horowitz45_fp32", 4.6, 0.9,
        _HOROWITZ + "; fp32 MAC = mult 3.7 + add 0.9 pJ, AC = add 0.9 pJ"),
    "horowitz45_fp16": EnergyModel(
        "horowitz45_fp16", 1.5, 0.4,
        _HOROWITZ + "; fp16 MAC = mult 1.1 + add 0.4 pJ, AC = add 0.4 pJ"),
    "horowitz45_int8": EnergyModel(
        "horowitz45_int8", 0.23, 0.03,
        _HOROWITZ + "; int8 MAC = mult 0.2 + add 0.03 pJ, AC = add 0.03 pJ"),
    "loihi": EnergyModel(
        "loihi", 23.6, 23.6,
        "M. Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', "
        "IEEE Micro 38(1):82-99, 2018, ~23.6 pJ per synaptic spike operation, 14 nm (verify: "
        "widely quoted, not checked against the paper); every operation, MAC or AC, costed "
        "as one synaptic op"),
    "truenorth": EnergyModel(
        "truenorth", 26.0, 26.0,
        "P. A. Merolla et al., 'A million spiking-neuron integrated circuit with a scalable "
        "communication network and interface', Science 345:668, 2014, 26 pJ per synaptic "
        "event, 28 nm (verify); every operation, MAC or AC, costed as one synaptic event"),
}


def get_preset(name):
    """Return the :class:`EnergyModel` preset ``name`` (ValueError listing the choices)."""
    if isinstance(name, EnergyModel):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown energy preset {name!r}; choose from {sorted(PRESETS)}") from None


def energy_estimate(synops, model="horowitz45_fp32", single_pass_ops=None, executed=None):
    """Energy per inference from NeuroBench ``SynapticOperations`` (per sample).

    Parameters
    ----------
    synops : dict
        ``{"Effective_MACs", "Effective_ACs", "Dense"}`` in ops/sample.
    model : str or EnergyModel
    single_pass_ops : int, optional
        Dense MACs of ONE forward pass of the same architecture as an ANN (every layer
        called once), e.g. ``result["Dense_single_pass"]``.
    executed : dict, optional
        ``result["executed"]`` (``MACs``, ``ACs``, ``complete``): also price the operations
        snnfast's kernels executed (``snn_executed_uJ``).

    Returns
    -------
    dict
        ``snn_uJ`` (effective MACs and ACs), ``ann_uJ`` (Dense ops as MACs, i.e. the SNN's
        dense ops over all its calls), ``ann_single_pass_uJ`` (if given), the ratios, the pJ
        per op used, the preset name, its citation and assumptions.
    """
    m = get_preset(model)
    snn = m.energy_uj(synops["Effective_MACs"], synops["Effective_ACs"])
    ann = m.energy_uj(synops["Dense"], 0)
    one = None if single_pass_ops is None else m.energy_uj(single_pass_ops, 0)
    exe = None
    if executed is not None and executed.get("complete"):
        exe = m.energy_uj(executed["MACs"], executed["ACs"])
    return {
        "snn_executed_uJ": exe,
        "ann_single_pass_uJ": one, "single_pass_MACs": single_pass_ops,
        "ann_single_pass_over_snn": (one / snn) if (one is not None and snn > 0) else None,
        "preset": m.name, "e_mac_pJ": m.e_mac_pj, "e_ac_pJ": m.e_ac_pj,
        "snn_uJ": snn, "ann_uJ": ann, "ann_over_snn": (ann / snn) if snn > 0 else None,
        "unit": "uJ per inference", "citation": m.citation, "assumptions": m.assumptions,
    }


# ----------------------------------------------------------------------------- layer geometry

def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 0:
        raise ValueError(f"{name} must be a non-negative int or a pair, got {v!r}")
    return v


@dataclass
class LayerSpec:
    """A connection layer, described independently of any model class.

    Parameters
    ----------
    name : str
    kind : {"linear", "conv2d"}
    weight : ndarray
        linear: ``(n_in, n_out)`` (the ``x @ W`` convention; transpose ``(out, in)`` weights);
        conv2d: ``(C_out, C_in, kh, kw)``.
    bias : ndarray or None
        Only used for the footprint; bias operations are never counted.
    stride, padding : int or pair
        conv2d only (zero padding, NeuroBench counts no ops on padded taps).
    in_shape : tuple
        conv2d only: ``(C_in, H, W)`` of one call's input.
    """

    name: str
    kind: str
    weight: np.ndarray
    bias: np.ndarray = None
    stride: object = 1
    padding: object = 0
    in_shape: tuple = None
    _fanout: dict = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.kind not in ("linear", "conv2d"):
            raise ValueError(f"layer {self.name!r}: kind must be 'linear' or 'conv2d', got {self.kind!r}")
        if not isinstance(self.weight, np.ndarray):
            raise TypeError(f"layer {self.name!r}: weight must be a numpy.ndarray")
        if self.kind == "linear":
            if self.weight.ndim != 2:
                raise ValueError(f"layer {self.name!r}: linear weight must be 2-D (n_in, n_out)")
        else:
            if self.weight.ndim != 4:
                raise ValueError(f"layer {self.name!r}: conv2d weight must be 4-D (C_out, C_in, kh, kw)")
            if self.in_shape is None or len(self.in_shape) != 3:
                raise ValueError(f"layer {self.name!r}: conv2d needs in_shape=(C_in, H, W)")
            self.in_shape = tuple(int(s) for s in self.in_shape)
            if self.in_shape[0] != self.weight.shape[1]:
                raise ValueError(f"layer {self.name!r}: in_shape C_in={self.in_shape[0]} does not "
                                 f"match weight C_in={self.weight.shape[1]}")
            self.stride = _pair(self.stride, "stride")
            self.padding = _pair(self.padding, "padding")
            if min(self.stride) < 1:
                raise ValueError(f"layer {self.name!r}: stride must be >= 1")
            if min(self.out_shape[1:]) < 1:
                raise ValueError(f"layer {self.name!r}: kernel larger than the padded input")

    @property
    def n_in(self):
        return int(self.weight.shape[0]) if self.kind == "linear" else int(np.prod(self.in_shape))

    @property
    def out_shape(self):
        if self.kind == "linear":
            return (int(self.weight.shape[1]),)
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        (sy, sx), (py, px) = self.stride, self.padding
        return (int(self.weight.shape[0]), (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1)

    def fanout(self, effective=True):
        """Synapses leaving each input element, ``(n_in,)`` int64 (cached).

        ``effective=True`` counts only non-zero weights; ``False`` counts every weight.
        """
        if self._fanout is None:
            self._fanout = {True: fanout(self, True), False: fanout(self, False)}
        return self._fanout[bool(effective)]


def fanout(spec, effective=True):
    """Fan-out of every input element of ``spec`` (see :meth:`LayerSpec.fanout`)."""
    w = spec.weight
    if spec.kind == "linear":
        if effective:
            return np.count_nonzero(w, axis=1).astype(np.int64)
        return np.full(w.shape[0], w.shape[1], dtype=np.int64)
    c_out, c_in, kh, kw = w.shape
    _, h, wd = spec.in_shape
    _, ho, wo = spec.out_shape
    (sy, sx), (py, px) = spec.stride, spec.padding
    # taps[ci, ky, kx]: how many output channels use this tap
    taps = np.count_nonzero(w, axis=0) if effective else np.full((c_in, kh, kw), c_out)
    out = np.zeros((c_in, h, wd), dtype=np.int64)
    for ky in range(kh):
        # input row y is hit through tap ky iff y = oy*sy - py + ky for some valid oy
        rows = np.zeros(h, dtype=np.int64)
        iy = np.arange(ho) * sy - py + ky
        rows[iy[(iy >= 0) & (iy < h)]] = 1
        for kx in range(kw):
            cols = np.zeros(wd, dtype=np.int64)
            ix = np.arange(wo) * sx - px + kx
            cols[ix[(ix >= 0) & (ix < wd)]] = 1
            out += taps[:, ky, kx, None, None] * np.outer(rows, cols)[None]
    return out.reshape(-1)


# ----------------------------------------------------------------------------- counting core

def _as_calls(inputs, n_in, name):
    """View ``inputs`` as ``(N, calls, n_in)`` without copying when possible."""
    if not isinstance(inputs, np.ndarray):
        raise TypeError(f"{name}: inputs must be a numpy.ndarray, got {type(inputs).__name__}")
    if inputs.ndim < 3:
        raise ValueError(f"{name}: inputs must be (N, calls, ...), got shape {inputs.shape}")
    n, calls = inputs.shape[:2]
    if int(np.prod(inputs.shape[2:])) != n_in:
        raise ValueError(f"{name}: one call's input has {int(np.prod(inputs.shape[2:]))} values, "
                         f"the layer expects {n_in}")
    if inputs.dtype.kind == "f" and not np.isfinite(inputs).all():
        raise ValueError(f"{name}: inputs contain NaN or infinite values")
    if inputs.dtype.kind not in "biuf":
        raise ValueError(f"{name}: inputs must be numeric, got dtype {inputs.dtype}")
    return inputs.reshape(n, calls, n_in)


def _binary_mask(x):
    """(N, calls) bool: every value of that sample's call is in {-1, 0, 1}."""
    if x.dtype == np.bool_:
        return np.ones(x.shape[:2], dtype=bool)
    ok = (x == 0) | (x == 1)
    if x.dtype.kind != "u":
        ok |= x == -1
    return ok.all(axis=2)


def _exact_dot(mask, weights):
    """Row sums of ``mask * weights`` as exact int64 (float64 BLAS, integers < 2**53)."""
    return np.rint(mask.astype(np.float64) @ weights.astype(np.float64)).astype(np.int64)


def synaptic_op_counts(spec, inputs, binary=None, binary_scope="sample"):
    """Exact synaptic-operation totals of one layer over a batch.

    Parameters
    ----------
    spec : LayerSpec
    inputs : ndarray, shape (N, calls, ...)
        The layer's input at every call (any numeric dtype).
    binary : ndarray of bool, shape (N, calls) or (calls,), optional
        Override the per-call binary test (True = count ACs).
    binary_scope : {"sample", "batch"}
        Apply the binary test to each sample's call or to the whole batch's call.

    Returns
    -------
    dict
        Integer totals (not divided by N): ``effective_macs``, ``effective_acs``,
        ``dense``, ``calls`` (= N * calls), ``binary_calls``, ``samples``.
    """
    x = _as_calls(inputs, spec.n_in, spec.name)
    n, calls = x.shape[:2]
    if binary is None:
        is_bin = _binary_mask(x)
    else:
        is_bin = np.broadcast_to(np.asarray(binary, dtype=bool), (n, calls))
        binary_scope = "sample"            # the override is used as given
    eff = _exact_dot((x != 0).reshape(n * calls, -1), spec.fanout(True)).reshape(n, calls)
    return _op_totals(spec, eff, is_bin, binary_scope)


def _op_totals(spec, eff, is_bin, binary_scope):
    """:func:`synaptic_op_counts`' totals from each call's effective ops ``eff`` and binary
    test ``is_bin`` (both ``(N, calls)``, the test per sample)."""
    n, calls = eff.shape
    if binary_scope == "batch":
        is_bin = np.broadcast_to(is_bin.all(axis=0), (n, calls))
    elif binary_scope != "sample":
        raise ValueError(f"binary_scope must be 'sample' or 'batch', got {binary_scope!r}")
    dense_per_call = int(spec.fanout(False).sum())
    return {
        "effective_macs": int(eff[~is_bin].sum()),
        "effective_acs": int(eff[is_bin].sum()),
        "dense": dense_per_call * n * calls,
        "calls": n * calls,
        "binary_calls": int(is_bin.sum()),
        "samples": n,
    }


def event_driven_ops(spec, inputs):
    """Additions an event-driven kernel does: sum over inputs of value x full fan-out.

    For integer spike counts each count is one event that adds the input's whole weight
    row/kernel footprint (zero weights included), which is what snnfast's kernels execute.
    """
    x = _as_calls(inputs, spec.n_in, spec.name)
    if x.dtype.kind == "f" and not np.array_equal(x, np.round(x)):
        raise ValueError(f"{spec.name}: event counts need integer-valued inputs")
    per_input = x.sum(axis=(0, 1), dtype=np.int64)
    return int(per_input @ spec.fanout(False))


def footprint_bytes(arrays):
    """NeuroBench ``Footprint``: bytes of all parameter and buffer arrays."""
    return int(sum(np.asarray(a).nbytes for a in arrays))


def connection_sparsity(weights):
    """NeuroBench ``ConnectionSparsity``: zero weights / weights, ``round(x, 4)``."""
    total = sum(int(np.asarray(w).size) for w in weights)
    if total == 0:
        return 0.0
    zeros = sum(int(np.asarray(w).size - np.count_nonzero(w)) for w in weights)
    return round(zeros / total, 4)


def membrane_updates(pre, post):
    """NeuroBench ``MembraneUpdates`` total for one layer.

    Parameters
    ----------
    pre, post : ndarray, shape (N, calls, n)
        Membrane potential before the call and after it (after the reset).

    Returns
    -------
    int
        ``N * n`` for the first call plus the changed elements of the later calls.
    """
    if pre.shape != post.shape or pre.ndim != 3:
        raise ValueError(f"pre and post must both be (N, calls, n), got {pre.shape} and {post.shape}")
    n, calls, k = pre.shape
    if calls == 0:
        return 0
    return n * k + int(np.count_nonzero(pre[:, 1:] != post[:, 1:]))


# ----------------------------------------------------------------------------- accumulator

class OpAccountant:
    """Accumulate NeuroBench metrics and executed counts over batches.

    Parameters
    ----------
    layers : list of LayerSpec
        Connection layers, in network order.
    activation_layers : list of str
        Names of the spiking (activation) layers, in network order.
    buffers : list of ndarray, optional
        Extra arrays in the footprint (e.g. per-layer decay and threshold).
    binary_scope : {"sample", "batch"}
        See :func:`synaptic_op_counts`.
    """

    def __init__(self, layers, activation_layers=(), buffers=(), binary_scope="sample"):
        if binary_scope not in ("sample", "batch"):
            raise ValueError(f"binary_scope must be 'sample' or 'batch', got {binary_scope!r}")
        names = [s.name for s in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self.layers = {s.name: s for s in layers}
        self.binary_scope = binary_scope
        self.buffers = list(buffers)
        self.syn = {s.name: dict(effective_macs=0, effective_acs=0, dense=0, calls=0,
                                 binary_calls=0, samples=0) for s in layers}
        self.executed = {s.name: None for s in layers}
        self.executed_kind = {s.name: None for s in layers}
        self.act = {a: dict(nonzero=0, total=0, membrane_updates=None, samples=0)
                    for a in activation_layers}
        self.n_samples = 0

    def add_samples(self, n):
        """Count ``n`` more samples (the divisor of every per-sample figure)."""
        self.n_samples += int(n)

    def add_synaptic(self, name, inputs, binary=None):
        """Count the ops of layer ``name`` for one batch of inputs ``(N, calls, ...)``."""
        return self._add_op_totals(name, synaptic_op_counts(self._layer(name), inputs, binary,
                                                            self.binary_scope))

    def add_synaptic_counts(self, name, effective, binary):
        """Like :meth:`add_synaptic` from counts a kernel took: ``effective`` (N, calls) ints,
        the effective ops of each sample's call (the nonzero inputs' effective fan-outs
        summed), and ``binary`` (N, calls) bool, each sample's call held only -1, 0, 1."""
        eff = np.asarray(effective, np.int64)
        return self._add_op_totals(name, _op_totals(self._layer(name), eff,
                                                     np.asarray(binary, bool), self.binary_scope))

    def _add_op_totals(self, name, c):
        for k, v in c.items():
            self.syn[name][k] += v
        return c

    def add_executed(self, name, count, kind="AC"):
        """Add ``count`` operations the snnfast kernels executed for layer ``name``."""
        self._layer(name)
        if kind not in ("AC", "MAC"):
            raise ValueError(f"kind must be 'AC' or 'MAC', got {kind!r}")
        prev = self.executed_kind[name]
        if prev is not None and prev != kind:
            raise ValueError(f"layer {name!r}: executed ops already counted as {prev}")
        self.executed_kind[name] = kind
        self.executed[name] = (self.executed[name] or 0) + int(count)

    def add_activation(self, name, outputs, membrane_updates=None):
        """Count the outputs ``(N, calls, n)`` of activation layer ``name``."""
        if name not in self.act:
            raise ValueError(f"unknown activation layer {name!r}; known: {list(self.act)}")
        if not isinstance(outputs, np.ndarray) or outputs.ndim < 2:
            raise ValueError(f"{name}: outputs must be an ndarray (N, calls, ...)")
        self.add_activation_counts(name, np.count_nonzero(outputs), outputs.size,
                                   outputs.shape[0], membrane_updates)

    def add_activation_counts(self, name, nonzero, total, samples, membrane_updates=None):
        """Like :meth:`add_activation` from counts: ``nonzero`` of ``total`` outputs, over
        ``samples`` (the outputs' first axis, summed over the calls added)."""
        if name not in self.act:
            raise ValueError(f"unknown activation layer {name!r}; known: {list(self.act)}")
        a = self.act[name]
        a["nonzero"] += int(nonzero)
        a["total"] += int(total)
        a["samples"] += int(samples)
        if membrane_updates is not None:
            a["membrane_updates"] = (a["membrane_updates"] or 0) + int(membrane_updates)

    def _layer(self, name):
        try:
            return self.layers[name]
        except KeyError:
            raise ValueError(f"unknown layer {name!r}; known: {list(self.layers)}") from None

    def result(self):
        """NeuroBench metrics (per sample) plus per-layer detail and executed counts."""
        if self.n_samples <= 0:
            raise ValueError("no samples counted (call add_samples)")
        ns = self.n_samples
        params = [a for s in self.layers.values() for a in (s.weight, s.bias) if a is not None]
        per_layer = {}
        for name, s in self.layers.items():
            c = self.syn[name]
            ex = self.executed[name]
            per_layer[name] = {
                "kind": s.kind, "weights": int(s.weight.size),
                "zero_weights": int(s.weight.size - np.count_nonzero(s.weight)),
                "calls_per_sample": c["calls"] / ns, "binary_calls": c["binary_calls"],
                "calls": c["calls"],
                "Effective_MACs": c["effective_macs"] / ns, "Effective_ACs": c["effective_acs"] / ns,
                "Dense": c["dense"] / ns, "Dense_per_call": int(s.fanout(False).sum()),
                "executed": None if ex is None else ex / ns, "executed_kind": self.executed_kind[name],
            }
        acts, mem_total, mem_known = {}, 0, bool(self.act)
        for name, a in self.act.items():
            sparsity = (a["total"] - a["nonzero"]) / a["total"] if a["total"] else 0.0
            mu = a["membrane_updates"]
            acts[name] = {"ActivationSparsity": sparsity, "activations_per_sample": a["total"] / ns,
                          "spikes_per_sample": a["nonzero"] / ns,
                          "MembraneUpdates": None if mu is None else mu / ns}
            if a["membrane_updates"] is None:
                mem_known = False
            else:
                mem_total += a["membrane_updates"]
        tot_act = sum(a["total"] for a in self.act.values())
        nz_act = sum(a["nonzero"] for a in self.act.values())
        synops = {k: sum(self.syn[n][src] for n in self.layers) / ns
                  for k, src in (("Effective_MACs", "effective_macs"), ("Effective_ACs", "effective_acs"),
                                 ("Dense", "dense"))}
        executed = {kind: sum(v for n, v in self.executed.items()
                              if v is not None and self.executed_kind[n] == kind) / ns
                    for kind in ("MAC", "AC")}
        return {
            "samples": ns,
            "binary_scope": self.binary_scope,
            "Footprint": footprint_bytes(params + self.buffers),
            "ConnectionSparsity": connection_sparsity([s.weight for s in self.layers.values()]),
            "ActivationSparsity": (tot_act - nz_act) / tot_act if tot_act else 0.0,
            "SynapticOperations": synops,
            "MembraneUpdates": mem_total / ns if mem_known else None,
            "Dense_single_pass": sum(l["Dense_per_call"] for l in per_layer.values()),
            "executed": {"MACs": executed["MAC"], "ACs": executed["AC"],
                         "complete": all(v is not None for v in self.executed.values())},
            "layers": per_layer,
            "activation_layers": acts,
            "units": {"Footprint": "bytes", "ConnectionSparsity": "fraction of zero weights",
                      "ActivationSparsity": "fraction of zero activations",
                      "SynapticOperations": "operations per sample",
                      "MembraneUpdates": "membrane updates per sample",
                      "executed": "operations per sample executed by snnfast's kernels"},
        }


# ----------------------------------------------------------------------------- report

def _fmt_int(v):
    return "-" if v is None else f"{v:,.1f}".replace(",", " ")


def format_report(result, energy=None, title=None, notes=()):
    """Human-readable table of :meth:`OpAccountant.result` (units on every figure)."""
    ns = result["samples"]
    out = []
    if title:
        out += [title, "=" * len(title)]
    scope = "sample and call" if result["binary_scope"] == "sample" else "batch call"
    out.append(f"NeuroBench 2.3.0 definitions, per sample = totals / {ns} samples "
               f"(binary test per {scope})")
    footprint = f"{result['Footprint']:>14,d}".replace(",", " ")
    out.append(f"  Footprint           {footprint} B (parameters + buffers)")
    out.append(f"  ConnectionSparsity  {result['ConnectionSparsity']:>14.4f} "
               "(fraction of zero weights, biases excluded)")
    out.append(f"  ActivationSparsity  {result['ActivationSparsity']:>14.4f} (fraction of zero "
               f"activations over {', '.join(result['activation_layers']) or 'no layers'})")
    mu = result["MembraneUpdates"]
    out.append(f"  MembraneUpdates     {_fmt_int(mu):>14} updates/sample")
    so = result["SynapticOperations"]
    out.append("  SynapticOperations  (ops/sample; executed = what snnfast's event-driven kernels did)")
    out.append(f"    {'layer':<8}{'calls/sample':>13}{'binary calls':>13}{'Effective_MACs':>17}"
               f"{'Effective_ACs':>17}{'Dense':>17}{'executed':>17}")
    for name, l in result["layers"].items():
        ex = "-" if l["executed"] is None else f"{_fmt_int(l['executed'])} {l['executed_kind']}"
        out.append(f"    {name:<8}{l['calls_per_sample']:>13.2f}{l['binary_calls']:>13d}"
                   f"{_fmt_int(l['Effective_MACs']):>17}{_fmt_int(l['Effective_ACs']):>17}"
                   f"{_fmt_int(l['Dense']):>17}{ex:>17}")
    ex = result["executed"]
    ex_txt = f"{_fmt_int(ex['MACs'])} MAC + {_fmt_int(ex['ACs'])} AC" if ex["complete"] else "-"
    out.append(f"    {'total':<8}{'':>13}{'':>13}{_fmt_int(so['Effective_MACs']):>17}"
               f"{_fmt_int(so['Effective_ACs']):>17}{_fmt_int(so['Dense']):>17}  {ex_txt}")
    for name, a in result["activation_layers"].items():
        out.append(f"  activations {name:<8} sparsity {a['ActivationSparsity']:.4f}, "
                   f"{_fmt_int(a['spikes_per_sample'])} spikes/sample of "
                   f"{_fmt_int(a['activations_per_sample'])} outputs/sample, "
                   f"MembraneUpdates {_fmt_int(a['MembraneUpdates'])} /sample")
    for e in ([energy] if isinstance(energy, dict) else list(energy or [])):
        out += _energy_lines(e)
    out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def _energy_lines(e):
    def ratio(r):
        return "-" if r is None else f"{r:.2f}x"
    out = [f"Energy per inference, preset {e['preset']} (MAC {e['e_mac_pJ']} pJ, "
           f"AC {e['e_ac_pJ']} pJ; {e['assumptions']})",
           f"  source: {e['citation']}",
           f"  SNN, NeuroBench (E_MAC x Effective_MACs + E_AC x Effective_ACs): "
           f"{e['snn_uJ']:.4f} uJ/inference"]
    if e.get("snn_executed_uJ") is not None:
        out.append(f"  SNN, ops snnfast's kernels executed (same prices):            "
                   f"{e['snn_executed_uJ']:.4f} uJ/inference")
    out.append(f"  ANN, Dense as MACs (every call of the SNN done dense):        "
               f"{e['ann_uJ']:.4f} uJ/inference (ANN/SNN {ratio(e['ann_over_snn'])})")
    if e.get("ann_single_pass_uJ") is not None:
        macs = f"{e['single_pass_MACs']:,d}".replace(",", " ")
        out.append(f"  ANN, one dense pass of the same layers ({macs} MACs): "
                   f"{e['ann_single_pass_uJ']:.4f} uJ/inference "
                   f"(ANN/SNN {ratio(e['ann_single_pass_over_snn'])})")
    return out




# ----------------------------------------------------------------------------- membrane replay

def _reset(v, z, mode, thr):
    if mode == "zero":
        return np.where(z, np.float32(0.0), v)
    if mode == "subtract":
        return np.where(z, v - thr, v)
    if mode == "halve":
        return np.where(z, v * np.float32(0.5), v)
    raise ValueError(f"unknown reset mode {mode!r}")


def _replay_lif(currents, spikes, beta, thr, reset):
    """Membrane updates (NeuroBench) and replay/trace spike mismatches of one LIF layer.

    The traced spikes drive the reset so the replay cannot drift away from the trace.
    """
    n, calls, k = currents.shape
    beta, thr = np.float32(beta), np.float32(thr)
    v = np.zeros((n, k), dtype=np.float32)
    updates = n * k if calls else 0
    mismatches = 0
    for c in range(calls):
        pre = v
        v = beta * v
        v = v + currents[:, c]
        z = spikes[:, c].astype(bool)
        mismatches += int(np.count_nonzero((v > thr) != z))
        v = _reset(v, z, reset, thr)
        if c > 0:
            updates += int(np.count_nonzero(v != pre))
    return updates, mismatches



# ----------------------------------------------------------------------------- Conv-SNN models

def from_convsnn(model, images, sample_ids=None, batch_size=250, binary_scope="sample"):
    """NeuroBench metrics and executed counts of a :class:`snnfast.ConvSNN` on ``images``.

    :func:`from_network` of the model's description (``model.network``) and weights, counted
    from the model's own forward pass (its kernels or NumPy backend, evaluation noise key)
    and its exact counters (``model.trace_network``): the same rules and result keys as any
    network's, under the description's layer names.

    Parameters
    ----------
    model : snnfast.ConvSNN
    images : uint8 (N, H, W) or (N, H*W), the model's input size
    sample_ids : int array (N,), optional
        Noise keys of the images (default ``arange(N)``).
    batch_size : int
    binary_scope : {"sample", "batch"}
    """
    from . import convsnn_numpy as cnp
    images = np.asarray(images)
    net, weights, T = model.network, model.weights, model.config.T
    conv_spec = _network_specs(net, weights)[0][0]
    hid = net["hidden"]
    steps = hid.update_steps(T)
    incremental = cnp.fc1_incremental(hid.drive, hid.period)
    # the kernels' counters next to an independent recount of the events from the spikes:
    # each input spike's valid fan-out (conv), each FC1 row the drive adds or subtracts
    kernel = {"conv": 0, "fc1": 0}
    recount = dict(kernel)

    def runner(x, sample_ids):
        out = model.trace_network(x, sample_ids=sample_ids)
        B = len(out["rates"])
        z = out["spikes"]["conv_lif"].reshape(B, T, -1).astype(np.int64)
        recount["conv"] += event_driven_ops(conv_spec, out["input"].reshape(B, T, -1))
        recount["fc1"] += (int(cnp.fc1_rows(_drives(z, steps, False), steps, incremental).sum())
                           * hid_width)
        for k in kernel:
            kernel[k] += int(out["counts"][k].sum())
        return out
    hid_width = weights["fc1.weight"].shape[1]
    res = from_network(net, weights, images, sample_ids, batch_size, binary_scope,
                       runner=runner)
    res["checks"].update(executed_kernel_counters=kernel, executed_recount_numpy=recount,
                         match=kernel == recount)
    res["model"] = {"type": "convsnn", "preset": model.config.preset, "T": T}
    return res


# ----------------------------------------------------------------------------- any Network

NETWORK_NOTES = (
    "a call of a synaptic layer = an update of the spiking layer it drives (every step for "
    "period 1): its input is the drive of that update -- the source's output after the pools "
    "and Flatten before the synapse, summed over the steps since the previous update "
    "(drive='window') or since step 0 (drive='cumulative'); ACs if every value is in {-1, 0, 1}",
    "layers after the RateReadout: one call per sample on the rates (MACs unless all are 0/1)",
    "activation layers = the LIF/IF layers on their update steps; pools are not counted",
    "MembraneUpdates replayed in NumPy float32 from the engine's spikes (dense currents: BLAS / "
    "einsum order, not the engine's; the traced spikes drive the resets)",
    "executed = snnfast.engine's exact counters: one operation per connection an input event "
    "reaches (zero weights included; incremental windows add and subtract rows), AC when every "
    "event of the stage is a spike (+-1), MAC otherwise; layers after the readout: dense MACs",
    "Footprint = weights and biases + each LIF/IF layer's decay and threshold (float32)",
)


def _network_specs(net, weights):
    """:class:`LayerSpec` of every synaptic layer of ``net`` and the neuron buffers."""
    from .network.layers import Conv2d
    specs = []
    for i, layer in enumerate(net):
        if type(layer).__name__ not in ("Conv2d", "Linear"):
            continue
        w, b = weights[f"{layer.name}.weight"], weights.get(f"{layer.name}.bias")
        if isinstance(layer, Conv2d):
            specs.append(LayerSpec(layer.name, "conv2d", w, b, stride=layer.stride,
                                   padding=layer.padding, in_shape=net.input_shape_of(i)))
        else:
            specs.append(LayerSpec(layer.name, "linear", w, b))
    buffers = [np.float32(v) for ly in net if ly.kind == "neuron"
               for v in (ly.beta, ly.threshold)]
    return specs, buffers


def _pre_chain(net, indices, x):
    """The pools and Flatten ``indices`` applied to every step of ``x`` (B, T, ...), as
    (B, T, n) float64 (spike counts and pool sums stay exact)."""
    from .reference import pool2d
    B, T = x.shape[:2]
    y = x.reshape((B * T,) + x.shape[2:])
    for i in indices:
        if type(net[i]).__name__ != "Flatten":
            y = pool2d(type(net[i]).__name__, y, net[i].kernel_size, net[i].stride)
    return y.reshape(B, T, -1).astype(np.float64)


def _drives(x, steps, cumulative):
    """Synaptic input at each update (B, U, n): the sum of ``x`` (B, T, n) over the steps
    since the previous update, or since step 0."""
    csum = np.cumsum(x, axis=1)[:, steps]
    return csum if cumulative else np.diff(csum, axis=1, prepend=np.zeros_like(csum[:, :1]))


def _dense_current(net, syn, post, neuron, w, b, drive):
    """float32 currents (B, U, *neuron shape) of ``drive`` (B, U, n_in), computed densely."""
    from .reference import pool2d
    layer = net[syn]
    B, U = drive.shape[:2]
    x = drive.reshape((B * U,) + net.input_shape_of(syn)).astype(np.float32)
    if type(layer).__name__ == "Linear":
        y = x @ w
    else:
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        OH, OW = net.shapes[syn][1:]
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw][:, :, :OH, :OW]
        y = np.einsum("ncyxij,ocij->noyx", win, w, optimize=True).astype(np.float32)
    if b is not None:
        y = y + (b if y.ndim == 2 else b[None, :, None, None])
    for i in post:
        if type(net[i]).__name__ != "Flatten":
            y = pool2d(type(net[i]).__name__, y.reshape((B * U,) + net.input_shape_of(i)),
                       net[i].kernel_size, net[i].stride)
    return (y.reshape(B, U, -1) * np.float32(net[neuron].scale)).astype(np.float32)


def _spike_events(net, chain, syn, src_is_spikes):
    """True if every event of the stage is a spike: a binary source through Flatten and
    MaxPool2d only (a sum or mean pool makes counts or fractions)."""
    return src_is_spikes and all(type(net[i]).__name__ in ("Flatten", "MaxPool2d")
                                 for i in chain if i < syn)


def account_network_batch(acc, net, weights, out, binary_input):
    """Add one batch of ``snnfast.engine.forward(..., record=True)`` output ``out`` to
    ``acc`` (built from :func:`_network_specs`); returns the replay's spike mismatches.
    ``binary_input``: whether every input of the whole run is 0 or 1 (the executed operations
    of the first stage are then ACs, in every batch alike)."""
    B, T = out["input"].shape[:2]
    src, src_is_spikes = out["input"], binary_input
    mism = {}
    for n, chain in net.stages():
        syn = next(i for i in chain if net[i].kind == "synapse")
        layer, lif = net[syn], net[n]
        steps = lif.update_steps(T)
        drive = _drives(_pre_chain(net, [i for i in chain if i < syn], src), steps,
                        lif.drive == "cumulative")
        acc.add_synaptic(layer.name, drive)
        spikes = out["spikes"][lif.name]
        z = spikes.reshape(B, T, -1)[:, steps]
        cur = _dense_current(net, syn, [i for i in chain if i > syn], n,
                             weights[f"{layer.name}.weight"], weights.get(f"{layer.name}.bias"),
                             drive)
        mem, mism[lif.name] = _replay_lif(cur, z, lif.beta, lif.threshold, lif.reset)
        acc.add_activation(lif.name, z, membrane_updates=mem)
        kind = "AC" if _spike_events(net, chain, syn, src_is_spikes) else "MAC"
        acc.add_executed(layer.name, int(out["counts"][layer.name].sum()), kind)
        src, src_is_spikes = spikes, True
    y = out["rates"]
    for i in range(net.readout_index + 1, len(net)):
        layer = net[i]
        if type(layer).__name__ == "Linear":
            acc.add_synaptic(layer.name, y.reshape(B, 1, -1))
            acc.add_executed(layer.name, B * out["dense_macs"][layer.name], "MAC")
            y = y.reshape(B, -1) @ weights[f"{layer.name}.weight"]
            if f"{layer.name}.bias" in weights:
                y = y + weights[f"{layer.name}.bias"]
    acc.add_samples(B)
    return mism


def from_network(network, weights, X, sample_ids=None, batch_size=250, binary_scope="sample",
                 n_threads=None, runner=None, seed=0):
    """NeuroBench metrics and executed counts of any :class:`snnfast.network.Network`.

    Runs :class:`snnfast.engine.CompiledNetwork` batch by batch (evaluation noise key, so the
    result is reproducible) with its spikes recorded, and counts every synaptic layer's input
    at every call exactly (the rules: :data:`NETWORK_NOTES`).

    Parameters
    ----------
    network : Network
    weights : dict of arrays, as :meth:`Network.param_shapes` lists
    X : ndarray
        The inputs :func:`snnfast.engine.forward` takes (uint8 images for the Hybrid
        encoder, float32 frames (N, T, C, H, W) for the Direct one).
    sample_ids : int array (N,), optional
        Noise keys of the samples (default ``arange(N)``).
    batch_size : int
    binary_scope : {"sample", "batch"}
    n_threads : int, optional
    runner : callable, optional
        ``runner(X_batch, sample_ids=ids_batch)`` returning the record of
        :meth:`snnfast.engine.CompiledNetwork.forward` (``record=True``) for the same network
        and weights, e.g. ``ConvSNN.trace_network`` (see :func:`from_convsnn`); default: the
        engine.
    seed : int
        The input noise's seed (a saved model's: :func:`snnfast.network.noise_seed`).

    Returns
    -------
    dict
        :meth:`OpAccountant.result` plus ``"checks"`` (the membrane replay's spike
        mismatches, the traced spikes), ``"model"`` and ``"notes"``.
    """
    from .engine import CompiledNetwork
    from .network import Network
    if not isinstance(network, Network):
        raise TypeError(f"network must be a snnfast.network.Network, got "
                        f"{type(network).__name__}")
    if not isinstance(X, np.ndarray) or len(X) == 0:
        raise ValueError("X must be a non-empty numpy array of inputs")
    n = len(X)
    ids = np.arange(n, dtype=np.int64) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (n,):
        raise ValueError(f"sample_ids must have shape ({n},), got {ids.shape}")
    from ._utils import check_positive_int
    batch_size = check_positive_int(batch_size, "batch_size")
    model = CompiledNetwork(network, weights)
    specs, buffers = _network_specs(network, model.weights)
    spiking = network.spiking_layers()
    acc = OpAccountant(specs, spiking, buffers=buffers, binary_scope=binary_scope)
    mism, spikes = dict.fromkeys(spiking, 0), dict.fromkeys(spiking, 0)
    from .network import Direct
    binary = not isinstance(network.encoder, Direct) or bool(np.isin(X, (0, 1)).all())
    if runner is None:
        def runner(x, sample_ids):
            return model.forward(x, seed=seed, sample_ids=sample_ids, n_threads=n_threads,
                                 record=True)
    for lo in range(0, n, batch_size):
        out = runner(X[lo:lo + batch_size], sample_ids=ids[lo:lo + batch_size])
        for k, v in account_network_batch(acc, network, model.weights, out, binary).items():
            mism[k] += v
        for k in spiking:
            spikes[k] += int(out["counts"][k].sum())
    res = acc.result()
    res["checks"] = {"replay_spike_mismatches": mism, "traced_spikes": spikes}
    res["model"] = {"type": "network", "name": network.name, "T": network.T}
    res["notes"] = list(NETWORK_NOTES)
    return res


# ----------------------------------------------------------------------------- TTFS adapter

TTFS_NOTES = (
    "one call per layer per image: layer n's input is the previous layer's decoded spike "
    "times x_j = t_min(n) - t_j (pixels x = u8/255 for layer 1); a silent neuron is input 0",
    "TTFS inputs are graded (each synaptic event multiplies W_ij by t_min(n) - t_j), so "
    "NeuroBench's binary test counts them as MACs",
    "activation layers = the hidden TTFS layers (spike or not); the output layer emits no spikes",
    "MembraneUpdates = all neurons of every hidden layer once per image (one call per layer, "
    "NeuroBench counts every neuron on the first call)",
    "executed = the event-driven simulator's synaptic events (sum over spikes of fan-out, zero "
    "weights included; one multiply-add each), counted as MACs",
)


def account_mlp_batch(acc, layer_inputs, hidden_outputs, executed=None):
    """Add one batch of a feed-forward (TTFS or ReLU) network, one call per layer.

    Parameters
    ----------
    acc : OpAccountant with linear layers ``fc1..fcL`` and activation layers ``h1..h(L-1)``
    layer_inputs : list of (N, n_in) arrays, the input of every weight layer
    hidden_outputs : list of (N, n) arrays, the hidden activations
    executed : list of int, optional
        Executed synaptic events per weight layer (summed over the batch).
    """
    names = list(acc.layers)
    if len(layer_inputs) != len(names):
        raise ValueError(f"need {len(names)} layer inputs, got {len(layer_inputs)}")
    n = layer_inputs[0].shape[0]
    for name, x in zip(names, layer_inputs):
        acc.add_synaptic(name, x[:, None, :])
    for name, h in zip(acc.act, hidden_outputs):
        acc.add_activation(name, h[:, None, :], membrane_updates=h[0].size * n)
    if executed is not None:
        for name, e in zip(names, executed):
            acc.add_executed(name, int(e), "MAC")
    acc.add_samples(n)


def mlp_accountant(weights, biases, binary_scope="sample"):
    """:class:`OpAccountant` of an MLP whose ``weights[n]`` are ``(n_out, n_in)``."""
    layers = [LayerSpec(f"fc{i + 1}", "linear", np.ascontiguousarray(w.T), b)
              for i, (w, b) in enumerate(zip(weights, biases))]
    return OpAccountant(layers, [f"h{i + 1}" for i in range(len(weights) - 1)],
                        binary_scope=binary_scope)


def from_mlp(weights, biases, X, executed=None, batch_size=1000, binary_scope="sample"):
    """NeuroBench metrics of a ReLU MLP / its exact TTFS conversion on inputs ``X``.

    Layer inputs are the ReLU activations, which an exact B1 TTFS conversion reproduces
    (``x_j = t_min - t_j``; a zero activation is a silent neuron). ``weights[n]`` is
    ``(n_out, n_in)``; ``X`` float (N, n_in) in [0, 1]. ``executed`` (optional, one total
    per weight layer) are the simulator's synaptic events.
    """
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind != "f":
        raise ValueError("X must be a float array (N, n_in)")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    acc = mlp_accountant(weights, biases, binary_scope)
    for lo in range(0, len(X), batch_size):
        h = X[lo:lo + batch_size].astype(np.float64)
        inputs, hidden = [h], []
        for w, b in zip(weights[:-1], biases[:-1]):
            h = np.maximum(h @ np.asarray(w, np.float64).T + b, 0.0)
            inputs.append(h)
            hidden.append(h)
        account_mlp_batch(acc, inputs, hidden)
    if executed is not None:
        for name, e in zip(acc.layers, executed):
            acc.add_executed(name, int(e), "MAC")
    res = acc.result()
    res["notes"] = list(TTFS_NOTES)
    return res


def _ttfs_weights(net):
    """(weights (out, in) list, biases list) of a converted TTFS network object."""
    for owner in (net, getattr(net, "mlp", None), getattr(net, "relu", None)):
        if owner is not None and hasattr(owner, "weights") and hasattr(owner, "biases"):
            return list(owner.weights), list(owner.biases)
    raise TypeError(f"cannot find weights/biases on {type(net).__name__}")


def from_ttfs(net, X, batch_size=2000, binary_scope="sample", n_threads=None):
    """NeuroBench metrics and executed events of a converted TTFS network on ``X``.

    Every layer's input is taken from the event-driven simulation itself
    (``net.simulate``): the pixels for layer 1, then each hidden layer's decoded spike
    times ``t_max - t`` (0 = silent). The simulator's exact synaptic-event counts are the
    executed counts; they are checked against a recount (spikes x fan-out).

    Parameters
    ----------
    net : snnfast.ttfs.TTFSNetwork
    X : float (N, n_in) in [0, 1]
    batch_size, binary_scope, n_threads
    """
    weights, biases = _ttfs_weights(net)
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind != "f":
        raise ValueError("X must be a float array (N, n_in) in [0, 1]")
    acc = mlp_accountant(weights, biases, binary_scope)
    acc.buffers = [np.asarray(t) for t in getattr(net, "thresholds", [])] + \
        [np.asarray(getattr(net, "t_min", np.zeros(0)))]
    depth = len(weights)
    sim_events = np.zeros(depth, dtype=np.int64)
    recount = np.zeros(depth, dtype=np.int64)
    spikes_mismatch = 0
    saturated = np.zeros(max(depth - 1, 1), dtype=np.int64)
    for lo in range(0, len(X), batch_size):
        xb = X[lo:lo + batch_size]
        r = net.simulate(xb, record_times=True, n_threads=n_threads)
        acts = r.activations()
        inputs = [xb.astype(np.float64)] + acts
        ev = r.events.sum(axis=0)
        account_mlp_batch(acc, inputs, acts, executed=ev)
        sim_events += ev
        saturated[:depth - 1] += r.saturated.sum(axis=0)
        for l, (name, x) in enumerate(zip(acc.layers, inputs)):
            nz = (x != 0)
            recount[l] += event_driven_ops(acc.layers[name], nz[:, None, :].astype(np.uint8))
            spikes_mismatch += int(abs(int(nz.sum()) - int(r.spikes[:, l].sum())))
    res = acc.result()
    res["model"] = {"type": "ttfs", "depth": depth, "latency": getattr(net, "latency", None)}
    res["checks"] = {
        "executed_simulator": sim_events.tolist(),
        "executed_recount_numpy": recount.tolist(),
        "match": bool(np.array_equal(sim_events, recount) and spikes_mismatch == 0),
        "nonzero_input_vs_simulator_spikes_mismatch": spikes_mismatch,
        "saturated_units": saturated[:depth - 1].tolist(),
    }
    res["notes"] = list(TTFS_NOTES)
    return res


def from_ttfs_cnn(net, X, batch_size=500, binary_scope="sample", n_threads=None):
    """NeuroBench metrics and executed events of a converted TTFS CNN on ``X``.

    As :func:`from_ttfs`, stage by stage: each weight layer's input is the event-driven
    simulation's own output (pixels, then the decoded hidden activations after pooling);
    the activation layers are the hidden stages before pooling. The simulator's synaptic
    events are the executed counts, checked against a recount (non-zero inputs x fan-out).

    Parameters
    ----------
    net : snnfast.ttfs_cnn.TTFSConvNet
    X : float (N, C*H*W) in [0, 1]
    """
    from .ttfs_cnn import _ref_pool
    layers = []
    for i, st in enumerate(net.stages, 1):
        if st.kind == "dense":
            layers.append(LayerSpec(f"fc{i}", "linear", np.ascontiguousarray(st.weight.T),
                                    st.bias))
            continue
        pt, pl, pb, pr = st.pad
        if (pt, pl) != (pb, pr):
            raise ValueError(f"stage {i}: NeuroBench accounting needs symmetric conv padding, "
                             f"got (top, left, bottom, right) = {st.pad}")
        layers.append(LayerSpec(f"conv{i}", "conv2d", st.weight, st.bias, st.stride, (pt, pl),
                                st.in_shape))
    acc = OpAccountant(layers, [f"h{i + 1}" for i in range(net.depth - 1)],
                       buffers=list(net.thresholds) + [net.t_min], binary_scope=binary_scope)
    names = list(acc.layers)
    sim_events = np.zeros(net.depth, dtype=np.int64)
    recount = np.zeros(net.depth, dtype=np.int64)
    saturated = np.zeros(max(net.depth - 1, 1), dtype=np.int64)
    for lo in range(0, len(X), batch_size):
        xb = X[lo:lo + batch_size]
        r = net.simulate(xb, record_times=True, n_threads=n_threads)
        acts = r.activations()
        inputs = [xb.astype(np.float64).reshape(len(xb), -1)]
        for l, st in enumerate(net.stages[:-1]):
            inputs.append(_ref_pool(st.pool, r.times[l].astype(np.float64), net.t_max[l])
                          .reshape(len(xb), -1))
        n = len(xb)
        for l, (name, x) in enumerate(zip(names, inputs)):
            acc.add_synaptic(name, x[:, None, :])
            ev = int(r.events[:, l].sum())
            acc.add_executed(name, ev, "MAC")
            sim_events[l] += ev
            recount[l] += event_driven_ops(acc.layers[name], (x != 0)[:, None, :].astype(np.uint8))
        for name, h in zip(acc.act, acts):
            h = h.reshape(n, -1)
            acc.add_activation(name, h[:, None, :], membrane_updates=h.shape[1] * n)
        saturated[:net.depth - 1] += r.saturated.sum(axis=0)
        acc.add_samples(n)
    res = acc.result()
    res["model"] = {"type": "ttfs-cnn", "depth": net.depth, "latency": net.latency}
    res["checks"] = {"executed_simulator": sim_events.tolist(),
                     "executed_recount_numpy": recount.tolist(),
                     "match": bool(np.array_equal(sim_events, recount)),
                     "saturated_units": saturated[:net.depth - 1].tolist()}
    res["notes"] = list(TTFS_NOTES) + [
        "conv stages: one call per image; pooling (max = earliest spike, average = linear) "
        "sits between a hidden stage and the next weight layer and is not counted"]
    return res


# ----------------------------------------------------------------------------- files and CLI

def file_format(path):
    """The ``snnfast_format`` attribute of an HDF5 file (ValueError naming the file)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            fmt = h5_format(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    if fmt not in ("convsnn-2", "convsnn-1", "ttfs-1", "ttfs-cnn-1"):
        raise ValueError(f"{path}: snnfast_format is {fmt!r}, expected 'convsnn-2', "
                         "'convsnn-1', 'ttfs-1' or 'ttfs-cnn-1'")
    return fmt


def analyse_file(path, preset="horowitz45_fp32", samples=1000, dataset="mnist", data_dir=None,
                 n_threads=None, images=None, binary_scope="sample"):
    """Operation counts and energy of a saved Conv-SNN or TTFS model on test images.

    Parameters
    ----------
    path : str or Path, an ``.h5`` written by ``ConvSNN.save`` or the TTFS converter
    preset : str, energy preset (see :data:`PRESETS`)
    samples : int, number of test images (the first ``samples`` of the test split)
    images : uint8 (N, 28, 28), optional, use these instead of the test split
    binary_scope : {"sample", "batch"}, see :func:`synaptic_op_counts`

    Returns
    -------
    dict with ``file``, ``format``, ``result`` (metrics), ``energy`` (all presets, the chosen
    one first).
    """
    get_preset(preset)
    fmt = file_format(path)
    if images is None:
        from . import datasets
        images, _ = datasets.load(dataset, "test", data_dir)
    images = images[:samples]
    if fmt.startswith("convsnn-"):
        from .convsnn import ConvSNN
        model = ConvSNN.load(path, n_threads=n_threads)
        res = from_convsnn(model, images, binary_scope=binary_scope)
    elif fmt == "ttfs-cnn-1":
        from . import ttfs_cnn
        net = ttfs_cnn.load(path)
        res = from_ttfs_cnn(net, images.reshape(len(images), -1).astype(np.float64) / 255.0,
                            n_threads=n_threads, binary_scope=binary_scope)
    else:
        from . import ttfs
        net = ttfs.load(path)
        res = from_ttfs(net, images.reshape(len(images), -1).astype(np.float64) / 255.0,
                        n_threads=n_threads, binary_scope=binary_scope)
    order = [preset] + [p for p in PRESETS if p != preset]
    energies = [energy_estimate(res["SynapticOperations"], p, res["Dense_single_pass"], res["executed"])
                for p in order]
    return {"file": str(path), "format": fmt, "samples": len(images), "dataset": dataset,
            "result": res, "energy": energies}


def summarize(path, images, preset="horowitz45_fp32", n_threads=None):
    """Counts and energy of a saved model on ``images``, plus a one-line summary.

    Used by ``python -m snnfast.train`` and ``python -m snnfast.convert`` so that they report
    the same figures as ``python -m snnfast.energy``.

    Returns
    -------
    (dict, str)
        The :func:`analyse_file` result and a line naming the preset and its assumptions.
    """
    from .network import is_network_file
    if is_network_file(path):
        out = analyse_network_file(path, images, preset, n_threads=n_threads)
    else:
        out = analyse_file(path, preset, samples=len(images), images=images,
                           n_threads=n_threads)
    e = out["energy"][0]
    so = out["result"]["SynapticOperations"]
    line = (f"energy on {out['samples']} test images ({e['preset']}: MAC {e['e_mac_pJ']} pJ, "
            f"AC {e['e_ac_pJ']} pJ; compute only): SNN {e['snn_uJ']:.3f} uJ/inference "
            f"(Effective_MACs {so['Effective_MACs']:,.0f} + Effective_ACs "
            f"{so['Effective_ACs']:,.0f} per sample), ANN one dense pass "
            f"{e['ann_single_pass_uJ']:.3f} uJ")
    return out, line


def _replay_note(checks):
    # the replay only yields MembraneUpdates; it sums the hidden drive with BLAS, in another
    # float order than the kernels, so a current within rounding of the threshold can differ
    mis, n = checks["replay_spike_mismatches"], checks.get("traced_spikes", {})
    parts = [f"{mis[k]} of {n[k]:,d} {k} spikes" if k in n else f"{mis[k]} {k} spikes"
             for k in mis]
    return (f"the NumPy membrane replay (for MembraneUpdates, summed in BLAS's float order) "
            f"disagrees on {' and '.join(parts)}")


@exits_cleanly_on_interrupt
def main(argv=None):
    """``python -m snnfast.energy MODEL.h5 [--preset P] [--samples N] [--json OUT]``, or
    ``python -m snnfast.energy GRAPH.nir --input X.npz --dt DT [...]`` for a NIR graph.

    Exit status: 0 done, 1 when the model, the data or the ``--json`` write fails (disk
    full), 2 for bad arguments (``--json`` is checked before the analysis), 130/143 after
    Ctrl-C/SIGTERM.
    """
    openmp_wait_defaults()      # before the first kernel loads the OpenMP runtime
    p = argparse.ArgumentParser(prog="python -m snnfast.energy",
                                description="NeuroBench-style operation counts and energy estimate "
                                            "of a saved Conv-SNN or TTFS model.")
    p.add_argument("model", help="model file (.h5, snnfast_format convsnn-2/-1, ttfs-1 or "
                                 "ttfs-cnn-1 or network-1)")
    p.add_argument("--preset", default="horowitz45_fp32", choices=sorted(PRESETS),
                   help="energy preset printed first (default horowitz45_fp32)")
    p.add_argument("--samples", type=int, default=1000, help="test images to run (default 1000)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", default=None, help="data cache directory")
    p.add_argument("--threads", type=int, default=None, help="kernel threads")
    p.add_argument("--all-presets", action="store_true", help="print every energy preset")
    p.add_argument("--binary-scope", default="sample", choices=["sample", "batch"],
                   help="NeuroBench's binary (AC) test per sample and call (default; = NeuroBench "
                        "with batch size 1) or per batch call")
    p.add_argument("--json", default=None, help="write the full result as JSON (atomic)")
    nir_args = p.add_argument_group("NIR graphs (MODEL is a .nir file)")
    nir_args.add_argument("--input", default=None,
                          help=".npz/.npy input (N, T, *input_shape); for a network-1 file "
                               "its inputs (default: the --dataset test images)")
    nir_args.add_argument("--dt", type=positive_float, default=None,
                          help="time step (required: NIR graphs carry none)")
    nir_args.add_argument("--integrator", default="euler", choices=["euler", "exact"])
    nir_args.add_argument("--reset", default="zero", choices=["zero", "subtract"])
    nir_args.add_argument("--backend", default="auto", choices=["auto", "compiled", "numpy"],
                          help="NIR runtime backend (default auto: compiled when it can run "
                               "the graph; both count the same)")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be >= 1")
    if args.threads is not None and args.threads == 0:
        p.error("--threads must not be 0")
    if os.path.isdir(args.model):
        p.error(f"{args.model} is a directory, not a model file")
    from .nir.energy import is_nir_file
    nir_graph = is_nir_file(args.model)
    if nir_graph and (args.input is None or args.dt is None):
        p.error(f"{args.model} is a NIR graph: give --input X.npz and --dt DT")
    from .network import is_network_file
    network_file = not nir_graph and is_network_file(args.model)
    if not nir_graph and args.dt is not None:
        p.error("--dt applies to NIR graphs only")
    if not (nir_graph or network_file) and args.input is not None:
        p.error("--input applies to NIR graphs and network-1 files only")
    # checked before the analysis, which can take minutes
    check_output_arg(p, "--json", args.json, inputs=[args.model])
    if nir_graph:
        return _main_nir(args)
    if network_file:
        return _main_network(args)
    try:
        out = analyse_file(args.model, args.preset, args.samples, args.dataset, args.data_dir,
                           args.threads, binary_scope=args.binary_scope)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res = out["result"]
    title = f"{args.model}: {out['format']}, {out['samples']} {args.dataset} test images"
    energies = out["energy"] if args.all_presets else out["energy"][:1]
    print(format_report(res, energies, title=title, notes=res.get("notes", ())))
    checks = res.get("checks")
    if checks and "match" in checks:
        extra = ""
        if "replay_spike_mismatches" in checks:
            extra = "; " + _replay_note(checks)
        print(f"check: executed counts (kernels/simulator) == NumPy recount: {checks['match']}{extra}")
    return _write_report(args.json, out)


def _network_inputs(args, network):
    """The inputs of a network file's run: ``--input`` (.npy, or .npz with one array or an
    array ``X``) or the test split of ``--dataset`` (a 1 x 28 x 28 Hybrid network), first
    ``--samples``."""
    if args.input is None:
        if network.input_shape != (1, 28, 28):
            raise ValueError(f"the network's input is {network.input_shape}, not MNIST's "
                             f"(1, 28, 28): give its inputs with --input X.npz")
        from . import datasets
        return datasets.load(args.dataset, "test", args.data_dir)[0][:args.samples]
    try:
        obj = np.load(args.input, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            return obj[:args.samples]
        with obj as f:
            names = f.files
            key = "X" if "X" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise ValueError(f"arrays {sorted(names)}: name the inputs 'X'")
            return f[key][:args.samples]
    except Exception as exc:    # zipfile, pickle refusal, bad headers: many types
        msg = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"cannot read inputs from {args.input}: {msg}") from None


def analyse_network_file(path, inputs, preset="horowitz45_fp32", n_threads=None,
                         binary_scope=None, source=None):
    """:func:`from_network` of a ``network-1`` file on ``inputs`` (an array, or a function
    of the network giving one) with the energy of every preset (``preset`` first), as the
    dict ``python -m snnfast.energy --json`` writes."""
    from .network import load as load_network
    from .network import noise_seed
    net, weights, meta = load_network(path)
    X = inputs(net) if callable(inputs) else inputs
    kw = {} if binary_scope is None else {"binary_scope": binary_scope}
    # the model's own input noise, as a ConvSNN file's run (its config's seed)
    res = from_network(net, weights, X, n_threads=n_threads, seed=noise_seed(meta), **kw)
    order = [preset] + [p for p in PRESETS if p != preset]
    energies = [energy_estimate(res["SynapticOperations"], p, res["Dense_single_pass"],
                                res["executed"]) for p in order]
    return {"file": str(path), "format": "network-1", "samples": res["samples"],
            "inputs": source or f"{len(X)} inputs", "result": res, "energy": energies}


def _main_network(args):
    """The ``network-1`` branch of :func:`main` (arguments already checked)."""
    from .network import load as load_network
    source = args.input or f"{args.dataset} test images"
    try:
        net = load_network(args.model)[0]
        out = analyse_network_file(args.model, lambda net: _network_inputs(args, net),
                                   args.preset, n_threads=args.threads,
                                   binary_scope=args.binary_scope, source=source)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res, energies = out["result"], out["energy"]
    title = (f"{args.model}: network-1 ({net.name or 'unnamed'}), {res['samples']} samples of "
             f"{source}")
    print(format_report(res, energies if args.all_presets else energies[:1], title=title,
                        notes=res["notes"]))
    print(f"check: {_replay_note(res['checks'])}")
    return _write_report(args.json, out)


def _write_report(path, out):
    """Write the ``--json`` report ``out`` to ``path`` (if given); the exit status: 0, or 1
    with one line when the write fails (a full disk; a special file made meanwhile)."""
    if path:
        try:
            write_json(path, out)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0


def _main_nir(args):
    """The NIR-graph branch of :func:`main` (arguments already checked)."""
    from .nir.energy import analyse_file as analyse_nir
    try:
        out = analyse_nir(args.model, args.input, args.dt, args.preset, args.integrator,
                          args.reset, args.binary_scope, args.backend, args.threads)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res = out["result"]
    title = (f"{args.model}: NIR graph, {out['samples']} samples of {args.input}, dt {args.dt:g}, "
             f"{args.integrator}, reset {args.reset}, {out['backend']} backend")
    energies = out["energy"] if args.all_presets else out["energy"][:1]
    print(format_report(res, energies, title=title, notes=res.get("notes", ())))
    return _write_report(args.json, out)


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
