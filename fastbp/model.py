"""The Model: a stack of layers with one flat parameter buffer, trained by ``train``.

``Model([Linear(8), Relu(), Linear(1), Sigmoid()]).train(x, y, optim=..., loss=..., epochs=...)``

The forward and backward passes live here; ``train``, ``predict`` and ``evaluate`` hand
over to the training loop (``fastbp.training``), which sits below this module.
"""
import threading
import weakref
from itertools import repeat
from operator import attrgetter, is_

import numpy as np

from . import training
from ._checks import as_batch, float_dtype
from .modules import BuiltinActivation, Linear
from .pairs import fused_gradient

__all__ = ["Model"]

# Building and rebuilding buffers is rare and quick: one lock for all models keeps a first
# predict from several threads from drawing the weights twice.
_BUILD_LOCK = threading.RLock()
_WEIGHT_BASE = attrgetter("_w.base")


def _layer_list(layers):
    """``layers`` as a list, refusing what is not a non-empty sequence of layers."""
    if layers is None or isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"Model: layers must be a list of layers, e.g. "
                        f"Model([Linear(8), Relu(), Linear(1)]), got {layers!r}")
    layers = layers if isinstance(layers, list) else list(layers)
    if not layers:
        raise ValueError("Model: the layer list is empty; pass at least one layer, e.g. "
                         "Model([Linear(1)])")
    return layers


class Model:
    """A stack of layers. ``dtype`` is float64 (default, the original's) or float32.

    Built-in Linear layers share one flat parameter buffer ``params`` and one flat gradient
    buffer ``grads`` (made on the first call, when the input size is known).

    A layer object appears at most once in a model (it keeps what its forward saw for its
    backward), and a Linear belongs to at most one model (its ``w`` and ``b`` are views
    into that model's buffer): both are refused with a ValueError. ``model.layers`` may be
    changed after training (replace, append, remove layers): the next call, ``train``,
    ``predict``, ``evaluate`` or ``save`` notices and rebuilds the flat buffers from the
    current layers, keeping the weights each built Linear has.
    """

    def __init__(self, layers, dtype=np.float64):
        self.dtype = float_dtype(dtype, "Model")
        self.params = self.grads = None
        self._plan = None
        self._seen = self._seen_linear = ()
        self.layers = _layer_list(layers)
        self._adopt()

    def _adopt(self):
        """Check ``self.layers`` and make this model the owner of its Linear layers."""
        layers = self.layers = _layer_list(self.layers)
        where = {}
        for i, layer in enumerate(layers):
            if not callable(layer) or not hasattr(layer, "backward"):
                raise TypeError(f"Model: layer {i} ({layer!r}) needs __call__(x) and "
                                f"backward(grad); subclass fastbp.layers.Layer or Activation")
            if id(layer) in where:
                raise ValueError(f"Model: layer {i} ({layer!r}) is the same object as layer "
                                 f"{where[id(layer)]}; a layer keeps what its forward saw "
                                 f"for its backward, so use a new instance at each position "
                                 f"(e.g. {layer!r} twice, not one object reused)")
            where[id(layer)] = i
            if isinstance(layer, Linear):
                owner = layer._owner() if layer._owner is not None else None
                if owner is not None and owner is not self:
                    raise ValueError(f"Model: layer {i} ({layer!r}) already belongs to "
                                     f"another Model (its w and b are views into that "
                                     f"model's parameter buffer); use a new Linear and copy "
                                     f"the weights in after its first call "
                                     f"(new.w = old.w; new.b = old.b)")
                if layer.initialized and layer.dtype != self.dtype:
                    raise TypeError(f"Model: {layer!r} was built as {layer.dtype}, the model "
                                    f"is {self.dtype}")
        for old in self._seen:  # layers taken out of the model are free again
            if isinstance(old, Linear) and id(old) not in where and old._owner is not None \
                    and old._owner() is self:
                old._owner = None
        for layer in layers:
            if isinstance(layer, Linear):
                layer.dtype, layer._owner = self.dtype, weakref.ref(self)
        self._seen = tuple(layers)
        self._seen_linear = tuple(layer for layer in layers if isinstance(layer, Linear))

    def _sync(self):
        """Rebuild the flat buffers when ``self.layers`` changed since they were made, or a
        Linear's weights no longer live in them (``layer.build`` called again)."""
        seen, layers, params = self._seen, self.layers, self.params
        # map() and operator functions: no generator frames (train calls this each time).
        if isinstance(layers, list) and len(seen) == len(layers) and \
                all(map(is_, seen, layers)) and \
                (params is None or all(map(is_, map(_WEIGHT_BASE, self._seen_linear),
                                           repeat(params)))):
            return
        with _BUILD_LOCK:
            self._adopt()
            self.params = self.grads = None
            self._plan = None
            self._flatten()

    def _renew_grads(self):
        """Move the flat gradient buffer to new storage (a copy), for a caller that holds
        a layer's gradient arrays from before (see Linear._keep_held_gradients); the
        layers of the buffer are those of its last _flatten."""
        grads = self.grads.copy()
        start = 0
        for layer in self._seen_linear:
            stop = start + layer.n_params
            layer._bind_gradients(grads[start:stop])
            start = stop
        self.grads = grads

    def _keep_held_gradients(self):
        """Before a compiled step writes the flat gradient buffer: the same as
        Linear._keep_held_gradients, for every built-in Linear at once. Not for a
        buffer that is a view of another (MPI's exchange buffer, summed in place)."""
        if self.grads is None or self.grads.base is not None:
            return
        for layer in self._seen_linear:
            if layer._gradients_held():
                self._renew_grads()
                return

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
        self._sync()
        plan = self._plan
        if plan is not None and plan.n_in == n_features:
            # _sync found layers and buffers as the plan was made for them (else it drops
            # the plan): every Linear is built, in the buffer, for these widths. A repeated
            # train or predict call skips the lock and the walk over the layers.
            return
        with _BUILD_LOCK:
            self._sync()
            self._build(n_features)

    def _build(self, n_features):
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
        """Forward pass: x (N, I) -> (N, O). x is converted to the model's dtype.

        Each layer keeps what it saw for ``backward``, so a call is not thread-safe: use
        ``predict`` (safe from many threads at once) to serve predictions.
        """
        self._sync()
        return self._forward(as_batch(x, self.dtype, "Model"))

    def _forward(self, output):
        for layer in self.layers:
            output = layer(output)
        if self.params is None:
            self._flatten()
        return output

    # Optimizers may call backward(loss, input_gradient=False) on this class (see optim).
    input_gradient_optional = True

    def backward(self, loss, *, input_gradient=True):
        """Backward pass from ``loss`` (called last on the prediction) through every layer.

        When the model ends in Softmax and the loss is CategoricalCrossentropy (or Sigmoid
        and BinaryCrossentropy), the pair's gradient w.r.t. the logits, p - y, is used
        directly: no division by p and no Jacobian (see ``fastbp.pairs``). Returns dL/dx;
        with ``input_gradient=False`` (the optimizers' call) a first built-in Linear skips
        that product, which no layer needs, and None is returned.
        """
        layers = self.layers
        grad = fused_gradient(loss, layers[-1])
        if grad is None:
            grad = loss.backward()
        else:
            layers = layers[:-1]
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if i == 0 and type(layer) is Linear and not input_gradient:
                return layer.backward(grad, input_gradient=False)
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

        Both the epoch loss and the validation loss are per sample, on one scale: the mean
        over the samples of the loss before each update (summed losses such as the
        cross-entropies are divided by the rows; MSE is already a per-sample mean, the
        epoch's being the mean of its batch means). ``loss(pred, y)`` itself is unchanged.
        The History is also kept as ``model.history``. Ctrl-C stops at the end of the
        running chunk of epochs with weights, optimizer state (and ``t``) and History
        describing the same completed epochs. Raises FloatingPointError when the loss
        becomes NaN or Inf, and ValueError for an optimizer with state that belongs to
        another model.
        """
        return training.fit(self, x, y, optim=optim, loss=loss, epochs=epochs,
                            batch_size=batch_size, shuffle=shuffle, seed=seed,
                            validation_data=validation_data, verbose=verbose,
                            loss_fn=loss_fn, optimizer=optimizer, comm=comm)

    def predict(self, x, batch_size=None):
        """The model's output for x: (N, I) -> (N, O), in batches of ``batch_size`` rows.
        Safe to call on one model from many threads at once."""
        return training.predict(self, x, batch_size)

    def evaluate(self, x, y, loss=None):
        """Loss (default MSE) of the prediction for x against y, without training, as
        ``loss(pred, y)`` gives it (a sum for the cross-entropies). Thread-safe."""
        return training.evaluate(self, x, y, loss)
