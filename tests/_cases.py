"""Shared test inputs: a preset's description with random weights and images."""
import numpy as np

from snnfast.network import load_preset

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
