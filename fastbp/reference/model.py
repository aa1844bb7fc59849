"""Reference Model: a stack of layers, trained by ``train``."""
import numpy as np

from .loss import MSE, BinaryCrossentropy, CategoricalCrossentropy
from .modules import Linear, Sigmoid, Softmax
from .optim import SGD

# The output pairs whose gradient w.r.t. the activation's input needs no division by p.
PAIRS = {CategoricalCrossentropy: Softmax, BinaryCrossentropy: Sigmoid}


class Model:
    """A stack of layers trained by ``train``; float64 unless ``dtype`` says otherwise."""

    def __init__(self, layers, dtype=np.float64):
        self.layers, self.dtype = layers, np.dtype(dtype)
        for layer in layers:
            if isinstance(layer, Linear):
                layer.dtype = self.dtype

    def __call__(self, x):
        output = np.asarray(x, dtype=self.dtype)
        for layer in self.layers:
            output = layer(output)
        return output

    def backward(self, loss):
        """Backward pass from ``loss`` through every layer. When the model ends in Softmax
        and ``loss`` is CategoricalCrossentropy (or Sigmoid and BinaryCrossentropy) and the
        loss was last called on that output, the gradient w.r.t. the logits is the
        unclipped loss's, p * sum(y) - y (p - y): right even where p < eps, where the
        clipped loss's gradient -y / p times the activation's derivative is ~0."""
        layers, last = self.layers, self.layers[-1]
        if type(last) is PAIRS.get(type(loss)) and getattr(loss, "pred", None) is \
                getattr(last, "output", None):
            grad, layers = loss.logits_gradient(), layers[:-1]
        else:
            grad = loss.backward()
        for layer in reversed(layers):
            grad = layer.backward(grad)
        return grad

    def train(self, x, y, optim=None, loss=None, epochs=10, batch_size=None,
              shuffle=True, seed=None):
        """Returns the per-epoch loss per sample: the mean over the epoch's samples of the
        loss before each update, weight-decay penalty included (summed losses divided by
        the rows, a mean-reduced loss weighted by the batch rows, MSE the mean of the
        batch means)."""
        optim = SGD() if optim is None else optim
        loss = MSE() if loss is None else loss
        x = np.asarray(x, dtype=self.dtype)
        y = np.asarray(y, dtype=self.dtype)
        n = len(x)
        batch_size = n if batch_size is None else min(batch_size, n)
        rng = np.random.default_rng(seed)
        mean = getattr(loss, "reduction", "sum") == "mean"
        history = []
        for _ in range(epochs):
            order = rng.permutation(n) if shuffle and batch_size < n else np.arange(n)
            batch_losses, sizes = [], []
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                value = loss(self(x[rows]), y[rows])
                penalty = optim.penalty(self)   # weight decay, at the weights used
                batch_losses.append(value + (penalty / len(rows) if mean else penalty))
                sizes.append(len(rows))
                optim(self, loss)
            if mean:
                history.append(float(np.average(batch_losses, weights=sizes)))
            elif getattr(loss, "summed", False):
                history.append(float(np.sum(batch_losses) / n))
            else:
                history.append(float(np.mean(batch_losses)))
        return history
