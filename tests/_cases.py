"""Shared test inputs: a small description of every kind of layer, and a preset's description
with random weights and images."""
import numpy as np

from snnfast.network import (IF, LIF, Conv2d, Flatten, Hybrid, Linear, Network, RateReadout,
                             SumPool2d, load_preset)

f32 = np.float32


def _preset_case(preset, n=12):
    net, _ = load_preset(preset)
    rng = np.random.default_rng(7)
    # conv weights large enough that the conv layer spikes often (the hidden layer's drive
    # then changes by fewer spikes than it has: the incremental form's case)
    w = {"conv.weight": rng.normal(0.05, 0.3, (16, 1, 5, 5)), "conv.bias": np.zeros(16),
         "fc1.weight": rng.normal(0.0, 0.08, (2304, 1024)), "fc1.bias": np.full(1024, 0.05),
         "fc2.weight": rng.normal(0.0, 0.1, (1024, 10)), "fc2.bias": np.zeros(10)}
    w = {k: v.astype(f32) for k, v in w.items()}
    X = ((rng.random((n, 1, 28, 28)) < 0.4) * rng.integers(0, 256, (n, 1, 28, 28)))
    return net, w, X.astype(np.uint8)


def small_network():
    """A small description with a conv, both neuron kinds, a pool, a bias-free layer and a
    layer after the read-out."""
    return Network((2, 9, 7), [Conv2d(out_channels=4, kernel_size=3, stride=2, padding=1),
                               LIF(name="l1"), SumPool2d(2), Flatten(),
                               Linear(out_features=5, bias=False), IF(period=2, phase=1),
                               RateReadout(norm="steps"), Linear(out_features=3)],
                   encoder=Hybrid(T=4, n_det=2), name="small")
