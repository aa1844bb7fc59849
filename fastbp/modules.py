"""The building blocks: Layer, Activation, Linear, Relu, Sigmoid, Tanh, Softmax.

Each is called as ``layer(x)`` and ``layer.backward(grad)``, as in the from-scratch design;
the built-in ones run fastbp's fused kernels. They know nothing of models, losses or
optimizers (``fastbp.model`` stacks them; ``fastbp.layers`` is the public facade).
"""
from sys import getrefcount

import numpy as np

from . import kernels as K
from ._checks import (as_batch, float_dtype, grad_like, input_dtype, positive_int,
                      require_forward)
from .reference.modules import INITS, initial_weights

# References to a layer's gradient array when only the layer holds it: its attribute and
# getrefcount's own argument.
_OWN_REFS = 2

__all__ = ["Layer", "Activation", "Linear", "Relu", "Sigmoid", "Tanh", "Softmax", "Identity"]


class Layer:
    """Base class of layers with parameters ``w``, ``b`` and gradients ``w_gradient``,
    ``b_gradient``. Subclass it with your own ``__call__(x)`` and ``backward(grad)``;
    every optimizer updates ``w`` and ``b`` of each Layer in a Model."""


class Activation:
    """Base class of layers without parameters: ``__call__(x)`` and ``backward(grad)``."""


def _no_bias(dtype):
    return np.empty(0, dtype)



class BuiltinActivation(Activation):
    """A built-in activation: forward and derivative are fused kernels (``code``)."""

    code = K.IDENTITY

    def __call__(self, x):
        x = as_batch(x, input_dtype(x), type(self).__name__, check_finite=False)
        self.output = np.empty_like(x)
        K.bias_activation_forward(self.output, x, _no_bias(x.dtype), self.code)
        return self.output

    def backward(self, grad):
        require_forward(self, "output")
        grad = grad_like(grad, self.output.shape, self.output.dtype, type(self).__name__)
        dz = np.empty_like(grad)
        K.activation_backward(dz, grad, self.output, self.code)
        return dz

    def __repr__(self):
        return f"{type(self).__name__}()"




class Identity(BuiltinActivation):
    """x unchanged; derivative 1 (a linear output layer, scikit-learn's "identity")."""
    code = K.IDENTITY


class Relu(BuiltinActivation):
    """max(0, x); derivative 1 where the output is > 0, else 0."""
    code = K.RELU


class Sigmoid(BuiltinActivation):
    """1 / (1 + exp(-x)), computed without overflow; derivative out * (1 - out)."""
    code = K.SIGMOID


class Tanh(BuiltinActivation):
    """tanh(x); derivative 1 - out**2."""
    code = K.TANH


class Softmax(BuiltinActivation):
    """Row-wise softmax (each row minus its own max); closed-form O(N*n) backward."""
    code = K.SOFTMAX


class Linear(Layer):
    """Fully connected layer: ``x @ w + b``, x: (N, I), w: (I, O = units), b: (O,).

    Weights are made on the first call, from the input's last dimension. ``init``:
    "uniform" (default, the original's ``np.random.rand`` from NumPy's global generator),
    "he" or "xavier"; ``rng`` (a ``np.random.Generator``) replaces the global generator.
    Inside a Model, ``w``, ``b``, ``w_gradient`` and ``b_gradient`` are views into the
    model's flat parameter and gradient buffers; assigning ``layer.w = array`` copies into
    the view (the shape must match).
    """

    def __init__(self, units, init="uniform", rng=None):
        self.units = positive_int(units, "Linear", "units")
        if init not in INITS:
            raise ValueError(f"Linear: init must be one of {INITS}, got {init!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"Linear: rng must be a numpy.random.Generator "
                            f"(np.random.default_rng(seed)), got {type(rng).__name__}")
        self.init, self.rng = init, rng
        self.dtype = None  # a Model sets its dtype; alone, the first input's float dtype
        self.initialized = False
        self._owner = None  # weak reference to the Model whose flat buffer holds w and b

    # -- parameters: views into flat buffers -------------------------------------------
    @property
    def n_params(self):
        return self.n_in * self.units + self.units

    def _bind(self, params, grads):
        """Point w, b, w_gradient, b_gradient at slices of flat (params, grads) buffers."""
        k = self.n_in * self.units
        self._w, self._b = params[:k].reshape(self.n_in, self.units), params[k:]
        self._bind_gradients(grads)

    def _bind_gradients(self, grads):
        k = self.n_in * self.units
        self._dw, self._db = grads[:k].reshape(self.n_in, self.units), grads[k:]

    def _gradients_held(self):
        """Whether anything but this layer holds its gradient arrays."""
        return getrefcount(self._dw) > _OWN_REFS or getrefcount(self._db) > _OWN_REFS

    def _keep_held_gradients(self):
        """Before a backward overwrites w_gradient and b_gradient: when a caller still
        holds the arrays of the last backward (``saved.append(layer.w_gradient)``, a sum
        over batches), give the layer new storage, so that those arrays keep their values,
        as the original's fresh arrays did. Inside a model the whole flat gradient buffer
        moves (a copy: the other layers keep theirs)."""
        if not self._gradients_held():
            return   # nobody else holds them: overwrite in place
        owner = self._owner() if self._owner is not None else None
        if owner is None or owner.grads is None:   # the layer's own arrays
            self._dw, self._db = self._dw.copy(), self._db.copy()
        elif self._db.base is owner.grads:
            owner._renew_grads()
        # else the model's buffer is a view of another (MPI's exchange buffer, which the
        # allreduce sums in place): it stays where it is, and so do the layer's views

    def allocate(self, n_in, dtype=None):
        """Make (uninitialised) storage for ``n_in`` input features; draws nothing."""
        self.dtype = float_dtype(dtype or self.dtype or np.float64, "Linear")
        self.n_in = positive_int(n_in, "Linear", "n_in")
        self._bind(np.empty(self.n_params, self.dtype), np.zeros(self.n_params, self.dtype))
        self.initialized = True

    def build(self, n_in, dtype=None):
        """Create the weights for ``n_in`` input features (called by the first forward)."""
        self.allocate(n_in, dtype)
        self._w[...], self._b[...] = initial_weights(n_in, self.units, self.init, self.rng)

    def _get(self, name, slot):
        if not self.initialized:
            raise AttributeError(f"Linear({self.units}): {name} does not exist before the "
                                 f"first call (the input size is not known yet); call the "
                                 f"layer or its model on data first, or layer.build(n_in)")
        return getattr(self, slot)

    def _set(self, name, slot, value):
        view = self._get(name, slot)
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"Linear: {name} must have shape {view.shape}, got {value.shape}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"Linear: {name} must be real numbers, got dtype {value.dtype}")
        view[...] = value

    @staticmethod
    def _view_property(name, slot):
        return property(lambda self: self._get(name, slot),
                        lambda self, value: self._set(name, slot, value))

    w = _view_property("w", "_w")
    b = _view_property("b", "_b")
    w_gradient = _view_property("w_gradient", "_dw")
    b_gradient = _view_property("b_gradient", "_db")

    # -- forward / backward ------------------------------------------------------------
    def __call__(self, x):
        dtype = self.dtype or input_dtype(x)
        x = as_batch(x, dtype, "Linear", check_finite=False)
        if not self.initialized:
            self.build(x.shape[1], dtype)
        if x.shape[1] != self.n_in:
            raise ValueError(f"Linear({self.units}): input has {x.shape[1]} features but this "
                             f"layer was built for {self.n_in} (w has shape {self._w.shape}); "
                             f"pass (N, {self.n_in}) arrays or use a new Linear")
        self.input = x
        out = np.empty((x.shape[0], self.units), self.dtype)
        K.linear_forward(out, x, self._w, self._b, K.IDENTITY)
        return out

    def backward(self, grad, *, input_gradient=True):
        """Sets w_gradient = x.T @ grad and b_gradient = grad.sum(0); returns grad @ w.T,
        or None with ``input_gradient=False`` (a first layer's: nobody needs it)."""
        require_forward(self, "input")
        grad = grad_like(grad, (self.input.shape[0], self.units), self.dtype,
                          f"Linear({self.units})")
        dx = np.empty_like(self.input) if input_gradient else self.input[:0]
        self._keep_held_gradients()
        K.linear_backward(dx, self._dw, self._db, grad, self.input, self._w, input_gradient)
        return dx if input_gradient else None

    def __getstate__(self):
        """Copies (copy.deepcopy, pickle) belong to no model: a weak reference to the
        original's model cannot be pickled, and copied, it would make the copied model
        refuse its own layers. The model that holds the copy adopts it on its next call."""
        state = dict(self.__dict__)
        state["_owner"] = None
        return state

    def __repr__(self):
        return f"Linear({self.units})"
