"""``posttrain alignprop``: see :mod:`posttrain.scripts.diffusion`."""

from .diffusion import main_alignprop as main

__all__ = ["main"]
