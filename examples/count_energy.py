"""Count the operations of a trained Conv-SNN exactly (NeuroBench definitions) and price them
with a cited energy model.

    python examples/count_energy.py RUN/model.h5       # a model saved by snnfast
    python examples/count_energy.py --small            # trains a tiny model first, no download
"""
import argparse

from _data import load_digits, small_requested  # examples/_data.py
from snnfast import ConvSNN, energy

parser = argparse.ArgumentParser(description="Operation counts and energy of a ConvSNN.")
parser.add_argument("model", nargs="?", help="model.h5 written by snnfast")
parser.add_argument("--small", action="store_true", help="synthetic digits, a tiny model")
parser.add_argument("--samples", type=int, default=1000, help="test images to count on")
args = parser.parse_args()
small = small_requested(args)
if not small and not args.model:
    parser.error("give a model file, or --small")

X, y, X_test, _ = load_digits(small, n_train=600 if small else 1, n_test=args.samples)
if args.model:
    model = ConvSNN.load(args.model)
else:
    model = ConvSNN(preset="default", seed=0, epochs=1)
    model.fit(X, y)

result = energy.from_convsnn(model, X_test)         # exact counts over every layer and step
assert result["checks"]["match"], "the NumPy recount disagrees with the kernels' counters"
synops = result["SynapticOperations"]               # per inference (sample)
e = energy.energy_estimate(synops, "horowitz45_fp32", result["Dense_single_pass"])
print(energy.format_report(result, e, title=f"ConvSNN on {len(X_test)} test images"))
print(f"\n{synops['Effective_ACs']:,.0f} accumulates + {synops['Effective_MACs']:,.0f} "
      f"multiply-accumulates per inference: {e['snn_uJ']:.3f} uJ; the same network as a dense "
      f"ANN (one pass): {e['ann_single_pass_uJ']:.3f} uJ ({e['preset']}, compute only)")
