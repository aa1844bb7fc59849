"""The oracle: fastbp's API in plain NumPy, written for clarity, never for speed.

Every fused kernel and every public class of fastbp is tested against these classes.
This package imports nothing but NumPy (and nothing else of fastbp).
"""
from . import layers, loss, optim

__all__ = ["layers", "loss", "optim"]
