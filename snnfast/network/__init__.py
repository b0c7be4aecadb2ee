"""Network descriptions: layer specs, the :class:`Network` graph and the shipped presets.

>>> from snnfast.network import Network, Conv2d, LIF, Flatten, Linear, RateReadout
>>> net = Network((1, 28, 28), [Conv2d(out_channels=8, kernel_size=3), LIF(), Flatten(),
...                             Linear(out_features=10), LIF(), RateReadout()])
>>> net.shapes[0]
(8, 26, 26)

The format and every layer's equations: ``docs/network.rst``.
"""
from .graph import Network, parse_description, read_description
from .io import is_network_file, load, load_checkpoint, noise_seed, save
from .layers import (IF, LIF, AvgPool2d, ConfigError, Conv2d, Direct, Flatten, Hybrid, Linear,
                     MaxPool2d, RateReadout, SumPool2d)

__all__ = ["Network", "Conv2d", "SumPool2d", "AvgPool2d", "MaxPool2d", "Flatten", "Linear",
           "LIF", "IF", "RateReadout", "Hybrid", "Direct", "ConfigError", "PRESET_NAMES",
           "preset_path", "load_preset", "read_description", "save", "load", "load_checkpoint",
           "noise_seed", "is_network_file"]

PRESET_NAMES = ("seed", "default", "nir")


def preset_path(name):
    """Path of a shipped preset file (``snnfast/network/presets/<name>.toml``)."""
    from importlib.resources import files
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESET_NAMES)}")
    return files(__name__).joinpath("presets", f"{name}.toml")


def load_preset(name):
    """(Network, training options dict) of a shipped preset, read from its file."""
    d = _preset_dict(name)
    return Network.from_dict(d["network"]), dict(d["training"])


def _preset_dict(name):
    if name not in _CACHE:
        d = parse_description(preset_path(name).read_text(encoding="utf-8"), ".toml",
                              f"preset {name!r}")
        missing = [k for k in ("network", "training") if not isinstance(d.get(k), dict)]
        if missing:
            raise ValueError(f"preset {name!r}: the file has no [{missing[0]}] table")
        _CACHE[name] = d
    return _CACHE[name]


_CACHE = {}
