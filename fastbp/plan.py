"""Choosing how an epoch runs: a compiled plan when everything is built-in, else layer by layer."""
from functools import partial

from .training import layerwise_epoch


def epoch_runner(model, x, y, batch_size, optim, loss):
    """A function order -> epoch loss, for the given data, optimizer and loss."""
    return partial(layerwise_epoch, model, x, y, batch_size=batch_size, optim=optim, loss=loss)
