"""The compiled inference engine: any :class:`~snnfast.network.Network` description run by
event-driven kernels (``ext/snn_engine.h``), bit-identical to :mod:`snnfast.reference`.

>>> from snnfast import engine
>>> out = engine.forward(net, weights, images)          # as snnfast.reference.forward
>>> model = engine.CompiledNetwork(net, weights)        # validated once, many batches
>>> out = model.forward(images, n_threads=2)
"""
from .forward import EVAL_EPOCH, CompiledNetwork, forward

__all__ = ["forward", "CompiledNetwork", "EVAL_EPOCH"]
