"""Export a saved model to NIR.

``python -m snnfast.export MODEL.h5 OUT.nir [--dt DT] [--fold-gain] [--peers]``:

A ConvSNN file (a preset) or a ``network-1``/``network-2`` file (any network,
:func:`snnfast.network.save`, :meth:`snnfast.SNN.save`): its network description and weights
go through :func:`snnfast.nir_export.network_to_nir`, with the model's input-noise seed in the
metadata.

Prints every feature the NIR graph cannot express (``NIRExportWarning``) and a summary.
Exit status: 0 on success, 1 when the model cannot be read or exported (or the disk is
full), 2 for bad arguments (an output that is a directory, a special file or a link, or the
input model itself), 130/143 after Ctrl-C/SIGTERM.
"""
import argparse
import sys
import warnings
from pathlib import Path

from ._cli import (exits_cleanly_on_interrupt, openmp_wait_defaults, output_file_error,
                   positive_float)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m snnfast.export",
        description="Export a trained snnfast ConvSNN or network file (.h5) as a NIR graph "
                    "(.nir, HDF5).")
    p.add_argument("model", type=Path, help="model file written by ConvSNN.save / snnfast.train")
    p.add_argument("out", type=Path, help="NIR file to write (atomically)")
    p.add_argument("--dt", type=positive_float, default=1e-4,
                   help="time step of the mapping tau = dt/(1-beta) (default 1e-4, as snnTorch)")
    p.add_argument("--fold-gain", action="store_true",
                   help="write r = 1 in the LIF nodes and fold their gain into the weights (for "
                        "importers that ignore r)")
    p.add_argument("--peers", action="store_true",
                   help="the graph snnTorch's and Norse's NIR importers load and run batched "
                        "(no I read-out, Flatten counted from the end, r = 1); see docs/nir.rst")
    return p


@exits_cleanly_on_interrupt
def main(argv=None):
    openmp_wait_defaults()      # before the first kernel loads the OpenMP runtime
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"model file {str(args.model)!r} does not exist")
    # before the work: a directory, a special file (/dev/null), a link or the input model
    # itself (which the atomic write would replace by the NIR graph) is refused
    err = output_file_error(args.out, inputs=[args.model])
    if err:
        print(f"error: output {err}", file=sys.stderr)
        return 2
    from .nir_export import check_dt, network_to_nir
    try:
        net, weights, seed = _read_model(args.model)
    except (ValueError, OSError) as exc:
        print(f"error: cannot load {str(args.model)!r}: {exc}", file=sys.stderr)
        return 1
    try:
        check_dt(args.dt, net)      # a bad --dt is a bad argument (exit 2), not a bad model
    except ValueError as exc:
        print(f"error: --dt: {exc}", file=sys.stderr)
        return 2
    graph = _export(args, lambda: network_to_nir(net, weights, args.out, dt=args.dt,
                                                 fold_gain=args.fold_gain, peers=args.peers,
                                                 seed=seed))
    if graph is None:
        return 1
    meta = graph.metadata
    kinds = " -> ".join(f"{k}:{type(graph.nodes[k]).__name__}" for k in graph.nodes)
    print(f"wrote {args.out} (network {net.name or '(unnamed)'!r}, dt {meta['dt']:g}, "
          f"fold_gain {bool(meta['fold_gain'])}, peers {bool(meta['peers'])})")
    print(f"graph: {kinds}")
    if meta["exact"]:
        back = ("" if meta["fold_gain"] else "; network_from_nir reads it back (from_nir as a "
                "ConvSNN)")
        print("exact: for given input spikes, snnfast.nir.run of the graph gives the network's "
              f"spikes bit for bit (and its output up to float32 summation order){back}")
    elif not meta["inexpressible"]:
        print(f"equivalent in real arithmetic, not bit for bit (float32 rounding): "
              f"{', '.join(meta['approximations'])}")
    else:
        lost = list(meta["inexpressible"]) + list(meta["approximations"])
        print(f"NOT exact: {', '.join(lost)} (see the graph metadata)")
    return 0


def _read_model(path):
    """(description, weights, input-noise seed) of a ConvSNN file or a ``network-1``/``-2``
    file; ValueError (one line) for anything else."""
    from .network import is_network_file, load, noise_seed
    if is_network_file(path):
        net, weights, meta = load(path)
        return net, weights, noise_seed(meta)
    from .convsnn import ConvSNN
    model = ConvSNN.load(path)
    return model.network, model.weights, model.config.seed


def _export(args, export):
    """Run ``export()`` (a ``to_nir`` call), printing its NIRExportWarnings as warning lines;
    the graph, or None after one error line (a failed write, a model NIR cannot hold)."""
    from .nir_export import NIRExportWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NIRExportWarning)
        try:
            graph = export()
        except (ValueError, TypeError, OSError) as exc:
            print(f"error: cannot export {str(args.model)!r}: {exc}", file=sys.stderr)
            return None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return graph


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
