"""NumPy reference of any :class:`~snnfast.network.Network`: slow, plain and independent.

It implements the equations of ``docs/network.rst`` literally, in float32, with every sum in
the documented order, so that fast implementations can be checked against it bit for bit.
It never imports snnfast's compiled modules (nor modules that load them).
"""
from .forward import EVAL_EPOCH, encode, forward, linear, pool2d, synapse

__all__ = ["forward", "encode", "synapse", "pool2d", "linear", "EVAL_EPOCH"]
