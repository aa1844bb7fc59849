"""fastbp.warmup(): compile (or load from cache) every kernel for both dtypes, now."""
import time

import numpy as np


def warmup(dtypes=(np.float64, np.float32), report=False):
    """Run small models through every layer, loss and optimizer, on the compiled plans
    (tiny and general) and layer by layer, so later calls start warm. Returns the seconds
    it took, or with ``report=True`` a markdown table of every kernel and signature with
    the seconds spent compiling it or loading it from the cache. Draws no numbers from
    NumPy's global generator."""
    from .compile_log import recording
    start = time.perf_counter()
    with recording() as record:
        _run_everything(dtypes)
    seconds = time.perf_counter() - start
    if report:
        return f"{record.table()}\n\nwall time: {seconds:.1f} s"
    return seconds


def _run_everything(dtypes):
    """Every compiled path, for each dtype: the tiny-net kernel (XOR-sized), the general
    plan (whole epochs), the large-model plan (a step per call, parallel update), the
    layer-by-layer kernels (and their parallel variants, at 33,000 elements), with every
    output pair, loss and optimizer."""
    from . import layers, loss, optim
    rng = np.random.default_rng(0)
    x = rng.random((130, 3))
    outputs = ((layers.Softmax, loss.CategoricalCrossentropy),
               (layers.Sigmoid, loss.BinaryCrossentropy), (layers.Softmax, loss.MSE))
    optimizers = (optim.SGD, optim.Momentum, optim.RMSProp, optim.Adam)
    for dtype in dtypes:
        for out_act, lossf in outputs:
            y = np.eye(2)[rng.integers(0, 2, len(x))]
            for opt in optimizers:
                for width, rows, batch in ((4, 4, 4), (16, 40, 32), (256, 130, 130)):
                    net = layers.Model([layers.Linear(width, rng=rng), layers.Relu(),
                                        layers.Linear(width // 2, rng=rng), layers.Tanh(),
                                        layers.Sigmoid(), layers.Linear(2, rng=rng),
                                        out_act()], dtype=dtype)
                    net.train(x[:rows], y[:rows], opt(), lossf(), epochs=1,
                              batch_size=batch, verbose=False)
                    net.predict(x[:rows])
                    step, objective = opt(), lossf()   # the layer-by-layer path
                    objective(net(x[:rows]), y[:rows])
                    step(net, objective)
