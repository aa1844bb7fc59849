"""Reference Model: a stack of layers, trained by ``train``."""
import numpy as np

from .loss import MSE
from .modules import Linear
from .optim import SGD


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

    def train(self, x, y, optim=None, loss=None, epochs=10, batch_size=None,
              shuffle=True, seed=None):
        """Returns the per-epoch loss: the mean of the batch losses before each update
        (weight-decay penalty included; weighted by batch rows for a mean-reduced loss)."""
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
            # a mean-reduced loss reports the mean over samples; else the mean over batches
            history.append(float(np.average(batch_losses, weights=sizes if mean else None)))
        return history
