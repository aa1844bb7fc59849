"""The Model: a stack of layers with one flat parameter buffer, trained by ``train``.

``Model([Linear(8), Relu(), Linear(1), Sigmoid()]).train(x, y, optim=..., loss=..., epochs=...)``

The forward and backward passes live here; ``train``, ``predict`` and ``evaluate`` hand
over to the training loop (``fastbp.training``), which sits below this module.
"""
import numpy as np

from . import training
from ._checks import as_batch, float_dtype
from .modules import BuiltinActivation, Linear
from .pairs import fused_gradient

__all__ = ["Model"]


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
            elif not isinstance(layer, BuiltinActivation):
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
        directly: no division by p and no Jacobian (see ``fastbp.pairs``).
        """
        layers = self.layers
        grad = fused_gradient(loss, layers[-1])
        if grad is None:
            grad = loss.backward()
        else:
            layers = layers[:-1]
        for layer in reversed(layers):
            grad = layer.backward(grad)
        return grad

    def train(self, x, y, optim=None, loss=None, epochs=10, *, batch_size=None, shuffle=True,
              seed=None, validation_data=None, verbose=True, loss_fn=None, optimizer=None,
              comm=None):
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
        comm : an mpi4py communicator (e.g. ``MPI.COMM_WORLD``) to train data-parallel:
            each rank passes its own shard x, y (see ``fastbp.data.shard``) and
            ``batch_size`` is per rank; rank 0's weights are broadcast first, each step
            sums all ranks' gradients (one allreduce), every rank applies the same update,
            so the weights stay bitwise identical. Shuffling uses a per-rank generator
            derived from ``seed``; only rank 0 shows the progress bar. Every rank runs
            the same number of steps per epoch, that of the rank with the fewest batches.
            See ``fastbp.distributed`` and the README's "Many processes, many machines".

        The loss of an epoch is the mean of its batch losses, each taken before its update.
        Raises FloatingPointError when the loss becomes NaN or Inf.
        """
        return training.fit(self, x, y, optim=optim, loss=loss, epochs=epochs,
                            batch_size=batch_size, shuffle=shuffle, seed=seed,
                            validation_data=validation_data, verbose=verbose,
                            loss_fn=loss_fn, optimizer=optimizer, comm=comm)

    def predict(self, x, batch_size=None):
        """The model's output for x: (N, I) -> (N, O), in batches of ``batch_size`` rows."""
        return training.predict(self, x, batch_size)

    def evaluate(self, x, y, loss=None):
        """Loss (default MSE) of the prediction for x against y, without training."""
        return training.evaluate(self, x, y, loss)
