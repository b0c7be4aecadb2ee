"""Describe a convolutional spiking network in Python, train it, evaluate it, save it.

    python examples/train_network.py            # Fashion-MNIST, 1 epoch (a few minutes on 2 cores)
    python examples/train_network.py --small    # synthetic digits: seconds, no download

The same network as a file, trained from the command line:
``python -m snnfast.train --config examples/fmnist-cnn.toml --dataset fashion-mnist``.
"""
import argparse
import os
import tempfile
from pathlib import Path

import snnfast
from snnfast import datasets
from snnfast.network import (LIF, AvgPool2d, Conv2d, Flatten, Hybrid, Linear, Network,
                             RateReadout)
from snnfast.train import synthetic_digits

parser = argparse.ArgumentParser(description="Train any network description.")
parser.add_argument("--small", action="store_true", help="synthetic digits, a smaller network")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--out", default=None, help="directory for cnn.h5 (default: a temp dir)")
args = parser.parse_args()
small = args.small or os.environ.get("SNNFAST_EXAMPLES_SMALL") == "1"
if small:
    X, y, X_test, y_test = synthetic_digits(1200, 200, seed=0)
else:
    X, y = datasets.load("fashion-mnist", "train")    # fetched into ~/.cache/snnfast once
    X_test, y_test = datasets.load("fashion-mnist", "test")
c1, c2, hidden = (8, 16, 64) if small else (32, 64, 256)

net = Network((1, 28, 28), [
    Conv2d(out_channels=c1, kernel_size=3, padding=1, name="conv1"),
    LIF(reset="subtract", name="lif1"), AvgPool2d(2),
    Conv2d(out_channels=c2, kernel_size=3, padding=1, name="conv2"),
    LIF(reset="subtract", name="lif2"), AvgPool2d(2), Flatten(),
    Linear(out_features=hidden, name="fc1"), LIF(reset="subtract", name="hidden"),
    RateReadout(), Linear(out_features=10, name="fc2"),
], encoder=Hybrid(T=10, n_det=5), name="cnn")
print(net.summary())

# model selection on a validation split held out of the training set, never on the test set
tr, va = datasets.train_val_split(len(X), len(X) // 12, seed=0)
model = snnfast.SNN(net, seed=0, epochs=args.epochs, augment_shift=1, augment_flip=not small,
                     surr_slope=2.0)                 # as examples/fmnist-cnn.toml
model.fit(X[tr], y[tr], X[va], y[va], sample_ids=tr, val_ids=va)
m = model.evaluate(X_test, y_test)
print(f"test accuracy {m['accuracy']:.4f}; spikes per neuron and update: "
      + ", ".join(f"{k} {v:.3f}" for k, v in m["rates"].items()))

path = Path(args.out or tempfile.mkdtemp()) / "cnn.h5"
model.save(path, metadata={"test": m})                # a network-1 file
loaded = snnfast.SNN.load(path)
assert (loaded.predict(X_test) == model.predict(X_test)).all()
print(f"saved {path}; the loaded model predicts the same classes")
