"""Layers and the Model: the from-scratch API, running fastbp's fused kernels.

``Model([Linear(8), Relu(), Linear(1), Sigmoid()]).train(x, y, optim=..., loss=..., epochs=...)``
"""
import numpy as np

from . import kernels as K
from ._checks import as_batch, float_dtype, positive_int
from .reference.layers import INITS, initial_weights

__all__ = ["Layer", "Activation", "Model", "Linear", "Relu", "Sigmoid", "Tanh", "Softmax",
           "save", "load"]


class Layer:
    """Base class of layers with parameters ``w``, ``b`` and gradients ``w_gradient``,
    ``b_gradient``. Subclass it with your own ``__call__(x)`` and ``backward(grad)``;
    every optimizer updates ``w`` and ``b`` of each Layer in a Model."""


class Activation:
    """Base class of layers without parameters: ``__call__(x)`` and ``backward(grad)``."""


def _no_bias(dtype):
    return np.empty(0, dtype)


def _grad_like(grad, shape, dtype, who):
    """The incoming gradient as a C-contiguous writable array of ``shape`` and ``dtype``."""
    grad = np.asarray(grad)
    if grad.shape != shape:
        raise ValueError(f"{who}.backward: grad has shape {grad.shape} but the last forward "
                         f"output had shape {shape}; pass dL/d(output) of that shape")
    if grad.dtype.kind not in "biuf":
        raise TypeError(f"{who}.backward: grad must be real numbers, got dtype {grad.dtype}")
    grad = np.require(grad, dtype=dtype, requirements=["C_CONTIGUOUS"])
    return grad.copy() if not grad.flags.writeable else grad


class _KernelActivation(Activation):
    """A built-in activation: forward and derivative are fused kernels (``code``)."""

    code = K.IDENTITY

    def __call__(self, x):
        x = as_batch(x, _input_dtype(x), type(self).__name__, check_finite=False)
        self.output = np.empty_like(x)
        K.bias_activation_forward(self.output, x, _no_bias(x.dtype), self.code)
        return self.output

    def backward(self, grad):
        _require_forward(self, "output")
        grad = _grad_like(grad, self.output.shape, self.output.dtype, type(self).__name__)
        dz = np.empty_like(grad)
        K.activation_backward(dz, grad, self.output, self.code)
        return dz

    def __repr__(self):
        return f"{type(self).__name__}()"


def _require_forward(obj, attribute):
    if not hasattr(obj, attribute):
        raise RuntimeError(f"{obj!r}.backward was called before any forward pass; call "
                           f"it on data first (backward needs what the forward kept)")


def _input_dtype(x):
    """float32 or float64, as x is (in any byte order); float64 for anything else."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(f"f{dtype.itemsize}")
    return np.dtype(np.float64)


class Relu(_KernelActivation):
    """max(0, x); derivative 1 where the output is > 0, else 0."""
    code = K.RELU


class Sigmoid(_KernelActivation):
    """1 / (1 + exp(-x)), computed without overflow; derivative out * (1 - out)."""
    code = K.SIGMOID


class Tanh(_KernelActivation):
    """tanh(x); derivative 1 - out**2."""
    code = K.TANH


class Softmax(_KernelActivation):
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

    # -- parameters: views into flat buffers -------------------------------------------
    @property
    def n_params(self):
        return self.n_in * self.units + self.units

    def _bind(self, params, grads):
        """Point w, b, w_gradient, b_gradient at slices of flat (params, grads) buffers."""
        k = self.n_in * self.units
        self._w, self._b = params[:k].reshape(self.n_in, self.units), params[k:]
        self._dw, self._db = grads[:k].reshape(self.n_in, self.units), grads[k:]

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

    def _set(self, name, view, value):
        if not self.initialized:
            raise AttributeError(f"Linear: {name} does not exist before the first call "
                                 f"(the input size is not known yet)")
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"Linear: {name} must have shape {view.shape}, got {value.shape}")
        view[...] = value

    w = property(lambda self: self._w, lambda self, v: self._set("w", self._w, v))
    b = property(lambda self: self._b, lambda self, v: self._set("b", self._b, v))
    w_gradient = property(lambda self: self._dw,
                          lambda self, v: self._set("w_gradient", self._dw, v))
    b_gradient = property(lambda self: self._db,
                          lambda self, v: self._set("b_gradient", self._db, v))

    # -- forward / backward ------------------------------------------------------------
    def __call__(self, x):
        dtype = self.dtype or _input_dtype(x)
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

    def backward(self, grad):
        """Sets w_gradient = x.T @ grad and b_gradient = grad.sum(0); returns grad @ w.T."""
        _require_forward(self, "input")
        grad = _grad_like(grad, (self.input.shape[0], self.units), self.dtype,
                          f"Linear({self.units})")
        dx = np.empty_like(self.input)
        K.linear_backward(dx, self._dw, self._db, grad, self.input, self._w, True)
        return dx

    def __repr__(self):
        return f"Linear({self.units})"


class History(list):
    """Per-epoch training loss (a list, as the original returned), plus ``history``:
    a dict with "loss" and, with validation data, "val_loss" and "val_accuracy"."""

    def __init__(self):
        super().__init__()
        self.history = {"loss": self}


class Model:
    """A stack of layers. ``dtype`` is float64 (default, the original's) or float32.

    Built-in Linear layers share one flat parameter buffer ``params`` and one flat gradient
    buffer ``grads`` (made on the first call, when the input size is known).
    """

    def __init__(self, layers, dtype=np.float64):
        layers = list(layers) if not isinstance(layers, list) else layers
        for i, layer in enumerate(layers):
            if not callable(layer) or not hasattr(layer, "backward"):
                raise TypeError(f"Model: layer {i} ({layer!r}) needs __call__(x) and "
                                f"backward(grad); subclass fastbp.layers.Layer or Activation")
        self.layers = layers
        self.dtype = float_dtype(dtype, "Model")
        for layer in layers:
            if isinstance(layer, Linear):
                if layer.initialized and layer.dtype != self.dtype:
                    raise TypeError(f"Model: {layer!r} was built as {layer.dtype}, the model "
                                    f"is {self.dtype}")
                layer.dtype = self.dtype
        self.params = self.grads = None
        self._plan = None

    def __repr__(self):
        return f"Model({self.layers!r}, dtype={self.dtype.name})"

    @property
    def linear_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Linear)]

    def _flatten(self):
        """Move every built Linear's parameters into one flat buffer (and gradients too)."""
        linear = self.linear_layers
        if not linear or not all(layer.initialized for layer in linear):
            return
        total = sum(layer.n_params for layer in linear)
        params, grads = np.empty(total, self.dtype), np.zeros(total, self.dtype)
        start = 0
        for layer in linear:
            stop = start + layer.n_params
            params[start:stop] = np.concatenate([layer.w.ravel(), layer.b])
            layer._bind(params[start:stop], grads[start:stop])
            start = stop
        self.params, self.grads = params, grads

    def build(self, n_features):
        """Create the weights of every Linear for inputs of ``n_features`` columns, in layer
        order (as the first forward would), and gather them into the flat buffers. With a
        custom layer in the stack, widths are unknown until it runs: the first forward
        builds the layers instead."""
        width = n_features
        for layer in self.layers:
            if type(layer) is Linear:
                if not layer.initialized:
                    layer.build(width, self.dtype)
                elif layer.n_in != width:
                    raise ValueError(f"{layer!r}: input has {width} features but this layer "
                                     f"was built for {layer.n_in}; pass (N, {layer.n_in}) "
                                     f"arrays or use a new Linear")
                width = layer.units
            elif not isinstance(layer, _KernelActivation):
                return
        if self.params is None:
            self._flatten()

    def __call__(self, x):
        """Forward pass: x (N, I) -> (N, O). x is converted to the model's dtype."""
        return self._forward(as_batch(x, self.dtype, "Model"))

    def _forward(self, output):
        for layer in self.layers:
            output = layer(output)
        if self.params is None:
            self._flatten()
        return output

    def backward(self, loss):
        """Backward pass from ``loss`` (called last on the prediction) through every layer.

        When the model ends in Softmax and the loss is CategoricalCrossentropy (or Sigmoid
        and BinaryCrossentropy), the pair's gradient w.r.t. the logits, p - y, is used
        directly: no division by p and no Jacobian.
        """
        layers = self.layers
        fused = getattr(loss, "fused_backward", None)
        grad = fused(layers[-1]) if fused is not None else None
        if grad is None:
            grad = loss.backward()
        else:
            layers = layers[:-1]
        for layer in reversed(layers):
            grad = layer.backward(grad)
        return grad

    def train(self, x, y, optim=None, loss=None, epochs=10, *, batch_size=None, shuffle=True,
              seed=None, validation_data=None, verbose=True, loss_fn=None, optimizer=None):
        """Train and return the per-epoch loss history (a :class:`History` list).

        Parameters
        ----------
        x : (N, I) array; y : (N, O) array. Integer and boolean arrays are converted.
        optim, loss : an optimizer and a loss (defaults: SGD(), MSE(), made per call);
            ``optimizer=`` and ``loss_fn=`` are accepted as aliases.
        epochs : number of passes over the data.
        batch_size : rows per update; None (default) is full batch, as the original.
        shuffle, seed : with mini-batches, shuffle the rows each epoch with
            ``np.random.default_rng(seed)`` (NumPy's global generator is never touched).
        validation_data : (x_val, y_val), evaluated after each epoch.
        verbose : show one progress bar over epochs with the current loss.

        The loss of an epoch is the mean of its batch losses, each taken before its update.
        Raises FloatingPointError when the loss becomes NaN or Inf.
        """
        from .training import fit
        return fit(self, x, y, optim=optim, loss=loss, epochs=epochs, batch_size=batch_size,
                   shuffle=shuffle, seed=seed, validation_data=validation_data,
                   verbose=verbose, loss_fn=loss_fn, optimizer=optimizer)

    def predict(self, x, batch_size=None):
        """The model's output for x: (N, I) -> (N, O), in batches of ``batch_size`` rows."""
        from .training import predict
        return predict(self, x, batch_size)

    def evaluate(self, x, y, loss=None):
        """Loss (default MSE) of the prediction for x against y, without training."""
        from .training import evaluate
        return evaluate(self, x, y, loss)


def save(model, path, optimizer=None):
    """Save ``model`` (and optionally ``optimizer``'s state) to ``path`` (.npz, no pickle)."""
    from .io import save as _save
    return _save(model, path, optimizer)


def load(path, optimizer=None):
    """Load a model saved by :func:`save` (restoring ``optimizer``'s state when given)."""
    from .io import load as _load
    return _load(path, optimizer)
