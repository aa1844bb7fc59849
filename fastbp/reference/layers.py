"""Reference ``layers``: the original's names, re-exported from where they live."""
from .model import Model
from .modules import (INITS, QUIET_UNDERFLOW, Activation, Identity, Layer, Linear, Relu,
                      Sigmoid, Softmax, Tanh, initial_weights)

__all__ = ["Layer", "Activation", "Model", "Linear", "Relu", "Sigmoid", "Tanh", "Softmax",
           "Identity", "INITS", "initial_weights", "QUIET_UNDERFLOW"]
