"""Run a NIR graph: ``python -m snnfast.run GRAPH.nir --input X.npz --dt DT [--trace NODE ...]
[--out OUT.h5] [--raster OUT.png]``.

The input file holds one array ``(N, T, *input_shape)`` (or one per Input node, named after
it). Prints the graph, every spiking node's spike rate and each Output's values; ``--out``
writes the outputs, the traces of the ``--trace`` nodes and the spike counts to HDF5, and a
raster PNG of the traced nodes is written beside it (or to ``--raster``). Semantics:
``docs/nir-runtime.rst``. Exit status: 0 on success, 1 when the graph or the input cannot be
read or run, 2 for bad arguments (checked before the run), 130/143 after Ctrl-C/SIGTERM.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from ._cli import check_output_arg, exits_cleanly_on_interrupt, positive_float, positive_int

FORMAT = "snnfast-nir-run-1"


def build_parser():
    from .nir import BACKENDS, INTEGRATORS, RESETS, SUMS
    p = argparse.ArgumentParser(prog="python -m snnfast.run",
                                description="Run a NIR graph on the CPU.")
    p.add_argument("graph", type=Path, help="NIR graph (.nir, HDF5)")
    p.add_argument("--input", type=Path, required=True,
                   help=".npz with the input (N, T, *input_shape), one array per Input node")
    p.add_argument("--dt", type=positive_float, default=None,
                   help="time step (required: NIR graphs carry none)")
    p.add_argument("--trace", nargs="+", default=[], metavar="NODE",
                   help="nodes whose state, spikes or output to record ('all': every node)")
    p.add_argument("--out", type=Path, default=None,
                   help="HDF5 file for outputs, traces and spike counts (atomic)")
    p.add_argument("--raster", type=Path, default=None,
                   help="raster PNG of the traced nodes (default: --out with suffix .png)")
    p.add_argument("--sample", type=int, default=0, help="sample shown in the raster (default 0)")
    p.add_argument("--integrator", choices=INTEGRATORS, default="euler")
    p.add_argument("--reset", choices=RESETS, default="zero")
    p.add_argument("--sums", choices=SUMS, default="ordered")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="compiled (C, OpenMP) or numpy; auto (default): compiled when it can "
                        "run the graph and the options (the same results)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads of the compiled backend (default: snnfast's rule)")
    return p


class _Counts:
    """Spikes per spiking node (monitor of :func:`snnfast.nir.run`)."""

    def __init__(self, graph):
        self.names = [k for k in graph.order if graph.nodes[k].spiking]
        self.counts = {k: None for k in self.names}

    def __call__(self, t, info):
        out = info["outputs"]
        for k in self.names:
            c = out[k].reshape(len(out[k]), -1).sum(axis=1, dtype=np.float64)
            self.counts[k] = c if self.counts[k] is None else self.counts[k] + c


def _summary(graph, outs, counts, T, args):
    lines = [f"graph {args.graph}: {len(graph.nodes)} nodes, {len(graph.back_edges)} back "
             f"edge(s); dt {args.dt:g}, integrator {args.integrator}, reset {args.reset}, "
             f"sums {args.sums}, {args.used} backend",
             "step order: " + " -> ".join(f"{k}:{graph.nodes[k].kind}" for k in graph.order)]
    for k in counts.names:
        size = int(np.prod(graph.nodes[k].out_shape))
        rate = counts.counts[k].mean() / (size * T) if T else 0.0
        lines.append(f"  {k:>12} {graph.nodes[k].kind:<8} {size:>7} units  "
                     f"{rate:.4f} spikes/unit/step")
    for k, y in outs.items():
        total = y.reshape(len(y), T, -1).sum(axis=1)
        pred = np.argmax(total, axis=1)
        lines.append(f"output {k}: shape {y.shape}, mean {y.mean():.4g}; argmax of the sum "
                     f"over steps, first samples: {pred[:10].tolist()}")
    return "\n".join(lines)


def _write_h5(path, outs, traces, counts, args):
    from ._utils import atomic_h5
    with atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, graph=str(args.graph), dt=args.dt,
                       integrator=args.integrator, reset=args.reset, sums=args.sums,
                       backend=args.used)
        for k, y in outs.items():
            f.create_dataset(f"outputs/{k}", data=y, compression="gzip")
        for k, rec in traces.items():
            for key, a in rec.items():
                f.create_dataset(f"traces/{k}/{key}", data=a, compression="gzip")
        for k, c in counts.counts.items():
            f.create_dataset(f"spike_counts/{k}", data=c)


def _raster_series(traces):
    return {f"node {k} " + ("spikes" if "z" in rec else "output"): rec.get("z", rec.get("y"))
            for k, rec in traces.items()}


def _run(graph, x, trace, counts, args):
    """(outputs, traces) of the run, ``counts`` filled; ``args.used`` names the backend."""
    from .nir import choose_backend, run
    from .nir.runtime import run_counted
    # the compiled backend counts the spikes itself: no per-step monitor
    args.used = choose_backend(graph, args.backend, sums=args.sums)
    if args.used == "numpy":
        return run(graph, x, dt=args.dt, trace=trace, integrator=args.integrator,
                   reset=args.reset, sums=args.sums, monitor=counts, backend="numpy")
    outs, traces, c = run_counted(graph, x, args.dt, args.integrator, args.reset,
                                  {"fanout": {}, "activations": counts.names}, trace=trace,
                                  n_threads=args.threads)
    counts.counts = {k: c[k]["nonzero"].astype(np.float64) for k in counts.names}
    return outs, traces


@exits_cleanly_on_interrupt
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, path in (("graph", args.graph), ("--input", args.input)):
        if not path.is_file():
            parser.error(f"{flag}: {str(path)!r} is not a file")
    raster = args.raster or (args.out.with_suffix(".png") if args.out and args.trace else None)
    if args.raster and not args.trace:
        parser.error("--raster needs --trace NODE ...")
    check_output_arg(parser, "--out", args.out, inputs=[args.graph, args.input])
    check_output_arg(parser, "--raster", raster, inputs=[args.graph, args.input])
    if args.out and raster and raster.resolve() == args.out.resolve():
        parser.error("--raster and --out name the same file")
    from .nir import load, read_inputs
    try:
        graph = load(args.graph)
        x = read_inputs(args.input, graph)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.dt is None:
        hint = graph.metadata.get("dt")
        print("error: --dt is required: NIR graphs carry no time step"
              + (f" (this graph's metadata says dt = {hint!r})" if hint is not None else ""),
              file=sys.stderr)
        return 2
    trace = "all" if args.trace == ["all"] else args.trace
    counts = _Counts(graph)
    try:
        outs, traces = _run(graph, x, trace, counts, args)
        if raster and not 0 <= args.sample < next(iter(outs.values())).shape[0]:
            raise ValueError(f"--sample {args.sample} is not a sample of the input")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    T = next(iter(outs.values())).shape[1]
    print(_summary(graph, outs, counts, T, args))
    try:
        if args.out:
            _write_h5(args.out, outs, traces, counts, args)
            print(f"wrote {args.out}")
        if raster:
            from .plotting import node_rasters
            node_rasters(_raster_series(traces), raster, sample=args.sample)
            print(f"wrote {raster}")
    except (OSError, ValueError) as exc:     # a full disk; a special file made meanwhile
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
