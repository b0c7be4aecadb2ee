"""Export a saved Conv-SNN to NIR: ``python -m snnfast.export MODEL.h5 OUT.nir [--dt DT] [--fold-gain]``.

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
        description="Export a trained snnfast ConvSNN (.h5) as a NIR graph (.nir, HDF5).")
    p.add_argument("model", type=Path, help="model file written by ConvSNN.save / snnfast.train")
    p.add_argument("out", type=Path, help="NIR file to write (atomically)")
    p.add_argument("--dt", type=positive_float, default=1e-4,
                   help="time step of the mapping tau = dt/(1-beta) (default 1e-4, as snnTorch)")
    p.add_argument("--fold-gain", action="store_true",
                   help="write r = 1 and fold 1/(1-beta) into the weights (for importers that ignore r)")
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
    from .convsnn import ConvSNN
    from .nir_export import NIRExportWarning, check_dt, to_nir
    try:
        model = ConvSNN.load(args.model)
    except (ValueError, OSError) as exc:
        print(f"error: cannot load {str(args.model)!r}: {exc}", file=sys.stderr)
        return 1
    try:
        check_dt(args.dt, model)    # a bad --dt is a bad argument (exit 2), not a bad model
    except ValueError as exc:
        print(f"error: --dt: {exc}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NIRExportWarning)
        try:
            graph = to_nir(model, args.out, dt=args.dt, fold_gain=args.fold_gain)
        except (ValueError, TypeError, OSError) as exc:
            print(f"error: cannot export {str(args.model)!r}: {exc}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    meta = graph.metadata
    kinds = " -> ".join(f"{k}:{type(graph.nodes[k]).__name__}" for k in graph.nodes)
    print(f"wrote {args.out} (preset {meta['preset']!r}, dt {meta['dt']:g}, "
          f"fold_gain {bool(meta['fold_gain'])})")
    print(f"graph: {kinds}")
    if meta["exact"]:
        print("exact: for given input spikes the graph gives the model's spikes bit for bit (and the "
              "logits up to float32 summation order); from_nir gives back the identical model")
    elif not meta["inexpressible"]:
        print(f"equivalent in real arithmetic, not bit for bit (float32 rounding): "
              f"{', '.join(meta['approximations'])}")
    else:
        lost = list(meta["inexpressible"]) + list(meta["approximations"])
        print(f"NOT exact: {', '.join(lost)} (see the graph metadata)")
    return 0


if __name__ == "__main__":
    from ._cli import run_program
    sys.exit(run_program(main))
