"""``cloome train``: see :mod:`cloome_hf.train.params` for the arguments and :mod:`cloome_hf.train.loop`."""

from ..train.loop import main

__all__ = ["main"]
