"""fastbp.warmup(): compile (or load from cache) every kernel for both dtypes, now."""
import time

import numpy as np


def warmup(dtypes=(np.float64, np.float32)):
    """Run a tiny model through every layer, loss and optimizer, on the compiled plan and
    layer by layer, so later calls start warm. Returns the seconds it took. Draws no
    numbers from NumPy's global generator."""
    from . import layers, loss, optim
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.random((6, 3))
    for dtype in dtypes:
        for out_act, lossf, y in ((layers.Softmax, loss.CategoricalCrossentropy, np.eye(2)),
                                  (layers.Sigmoid, loss.BinaryCrossentropy, np.eye(2)),
                                  (layers.Softmax, loss.MSE, np.eye(2))):
            for opt in (optim.SGD, optim.Momentum, optim.RMSProp, optim.Adam):
                y6 = y[rng.integers(0, 2, 6)]
                net = layers.Model([layers.Linear(4, rng=rng), layers.Relu(),
                                    layers.Linear(4, rng=rng), layers.Tanh(), layers.Sigmoid(),
                                    layers.Linear(2, rng=rng), out_act()], dtype=dtype)
                net.train(x, y6, opt(), lossf(), epochs=1, batch_size=4, verbose=False)
                net.predict(x)
                step, objective = opt(), lossf()   # the layer-by-layer path
                objective(net(x), y6)
                step(net, objective)
    return time.perf_counter() - start
