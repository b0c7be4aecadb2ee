"""Train a spiking Conv-SNN on MNIST from Python, evaluate it, save it and load it back.

    python examples/train_evaluate.py            # MNIST, 1 epoch (about a minute on 2 cores)
    python examples/train_evaluate.py --small    # synthetic digits: seconds, no download
"""
import argparse
import os
import tempfile
from pathlib import Path

from snnfast import ConvSNN, datasets
from snnfast.train import synthetic_digits

parser = argparse.ArgumentParser(description="Train, evaluate, save and load a ConvSNN.")
parser.add_argument("--small", action="store_true", help="synthetic digits instead of MNIST")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--out", default=None, help="directory for model.h5 (default: a temp dir)")
args = parser.parse_args()

if args.small or os.environ.get("SNNFAST_EXAMPLES_SMALL") == "1":
    X, y, X_test, y_test = synthetic_digits(1200, 200, seed=0)
else:
    X, y = datasets.load("mnist", "train")           # fetched into ~/.cache/snnfast once
    X_test, y_test = datasets.load("mnist", "test")
# model selection on a validation split held out of the training set, never on the test set
tr, va = datasets.train_val_split(len(X), len(X) // 12, seed=0)

model = ConvSNN(preset="default", seed=0, epochs=args.epochs)
model.fit(X[tr], y[tr], X[va], y[va], sample_ids=tr, val_ids=va)
m = model.evaluate(X_test, y_test)
print(f"test accuracy {m['accuracy']:.4f}; spikes per neuron: conv {m['rate_conv']:.3f}/step, "
      f"hidden {m['rate_hidden']:.3f}/update")

path = Path(args.out or tempfile.mkdtemp()) / "model.h5"
model.save(path, metrics=m)
loaded = ConvSNN.load(path)
assert (loaded.predict(X_test) == model.predict(X_test)).all()
print(f"saved {path}; the loaded model predicts the same classes")
