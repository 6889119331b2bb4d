"""``posttrain ddpo``: see :mod:`posttrain.scripts.diffusion`."""

from .diffusion import main_ddpo as main

__all__ = ["main"]
