"""The original's public names, ``layers.Model``, ``layers.Linear``, ``layers.save``, ...:
a facade that re-exports them from where they live. Nothing inside fastbp imports it.

``Model([Linear(8), Relu(), Linear(1), Sigmoid()]).train(x, y, optim=..., loss=..., epochs=...)``
"""
from .io import load, save
from .model import Model
from .modules import Activation, Identity, Layer, Linear, Relu, Sigmoid, Softmax, Tanh
from .training import History

__all__ = ["Layer", "Activation", "Model", "Linear", "Relu", "Sigmoid", "Tanh", "Softmax",
           "Identity", "History", "save", "load"]
