"""Train a small ReLU network, convert it exactly into a time-to-first-spike (TTFS) network,
simulate that event by event and compare it with the ReLU network.

    python examples/convert_ttfs.py            # MNIST, depth 2 (a few minutes on 2 cores)
    python examples/convert_ttfs.py --small    # synthetic digits: seconds, no download
"""
import argparse

import numpy as np

from _data import load_digits, small_requested  # examples/_data.py
from snnfast import datasets, ttfs
from snnfast.mlp import make_mlp, preprocess, train_mlp

parser = argparse.ArgumentParser(description="ReLU -> TTFS conversion.")
parser.add_argument("--small", action="store_true", help="synthetic digits instead of MNIST")
parser.add_argument("--depth", type=int, default=2, help="weight layers of the ReLU network")
args = parser.parse_args()
small = small_requested(args)

X, y, X_test, y_test = load_digits(small)
X, X_test = preprocess(X), preprocess(X_test)              # float32 in [0, 1]
tr, va = datasets.train_val_split(len(X), len(X) // 12, seed=0)

mlp = make_mlp(args.depth, width=100 if small else 400, seed=0)
train_mlp(mlp, X[tr], y[tr], X[va], y[va], epochs=3 if small else 30)
# the time windows are calibrated on training data only (never on the test set)
net = ttfs.convert(mlp, X[tr], zeta=0.5)
sim = net.simulate(X_test)                                  # event-driven, float64
relu, _ = net.relu_forward(X_test)                          # the ReLU network's logits

print(f"ReLU accuracy {np.mean(relu.argmax(1) == y_test):.4f}, "
      f"TTFS accuracy {np.mean(sim.predictions == y_test):.4f}")
print(f"largest logit difference |TTFS - ReLU| = {np.abs(sim.logits - relu).max():.2e}")
print(f"latency (time of the output read-out) {net.latency:.3f} activation units")
counts = ttfs.operation_counts(net, X_test, result=sim)
for h, layer in enumerate(counts["hidden"], 1):
    print(f"hidden layer {h}: {layer['spikes_per_neuron']:.3f} spikes per neuron and image")
