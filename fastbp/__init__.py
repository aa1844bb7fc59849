"""fastbp: the from-scratch deep-learning API (``layers``, ``loss``, ``optim``) on fused
Numba kernels, proved equal to a pure-NumPy reference (``fastbp.reference``).

Importing fastbp compiles nothing: kernels compile on first use or load from Numba's cache.
"""
from . import data, layers, loss, optim
from ._warmup import warmup
from .io import ModelFileError, load, load_optimizer, save

__version__ = "0.1.0"
__all__ = ["layers", "loss", "optim", "data", "save", "load", "load_optimizer",
           "ModelFileError", "warmup", "__version__"]
