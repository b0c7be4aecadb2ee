"""Export a Conv-SNN to NIR (the Neuromorphic Intermediate Representation), read it back and
check that the graph computes what the model computes.

    python examples/export_nir.py --out model.nir      # trains the nir preset 1 epoch on MNIST
    python examples/export_nir.py --small              # synthetic digits: seconds, no download
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from _data import load_digits, small_requested  # examples/_data.py
from snnfast import ConvSNN
from snnfast.nir_export import from_nir, to_nir

parser = argparse.ArgumentParser(description="NIR export and import of a ConvSNN.")
parser.add_argument("--small", action="store_true", help="synthetic digits instead of MNIST")
parser.add_argument("--out", default=None, help="the .nir file (default: in a temp dir)")
args = parser.parse_args()
small = small_requested(args)

X, y, X_test, y_test = load_digits(small, n_test=1000)
# the "nir" preset is the variant NIR expresses exactly (reset to zero, every step updated)
model = ConvSNN(preset="nir", seed=0, epochs=1)
model.fit(X, y)

path = Path(args.out or Path(tempfile.mkdtemp()) / "model.nir")
graph = to_nir(model, path)                          # no warning: nothing is approximated
print(f"wrote {path}: nodes {', '.join(sorted(graph.nodes))}")

back = from_nir(path)                                # a ConvSNN again
same = np.mean(back.predict(X_test) == model.predict(X_test))
print(f"re-imported model: same class for {same:.1%} of {len(X_test)} test images; "
      f"accuracy {np.mean(back.predict(X_test) == y_test):.4f}")
