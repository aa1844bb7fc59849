"""``fastbp bench``: the workloads of the speed issue, fastbp against its competitors.

Competitors: fastbp, fastbp.reference (plain NumPy), and PyTorch / JAX when installed
(``pip install ".[bench]"`` does not pull them in; install torch / jax yourself). Every
competitor gets the same shapes, initial weights, loss, learning rate and batch size.
Rounds interleave the competitors (so machine noise hits all of them alike); the report
gives medians and the per-round ratio of each competitor's time to fastbp's.
"""
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKLOADS = {}
PAUSE = 0.05  # seconds of idle time before each timed run


def workload(name, label):
    def register(fn):
        WORKLOADS[name] = (label, fn)
        return fn
    return register


# --------------------------------------------------------------------- model builders

def _mlp_weights(sizes, dtype, seed=0):
    """He-initialised weights and zero biases for an MLP, shared by every competitor."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(dtype) for a, b in
            zip(sizes[:-1], sizes[1:])], [np.zeros(b, dtype) for b in sizes[1:]]


def _fastbp_mlp(mod, sizes, acts, dtype, seed=0):
    ws, bs = _mlp_weights(sizes, dtype, seed)
    stack = []
    for units, act in zip(sizes[1:], acts):
        stack += [mod.Linear(units), getattr(mod, act)()]
    net = mod.Model(stack, dtype=dtype)
    net(np.zeros((1, sizes[0]), dtype))   # build, then overwrite with the shared weights
    for layer, w, b in zip([l for l in net.layers if hasattr(l, "units")], ws, bs):
        layer.w, layer.b = w, b
    return net


def _data(n, n_in, n_out, dtype, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_in)).astype(dtype)
    y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, n)]
    return x, y


XOR_X = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], dtype=np.float64)
XOR_Y = np.array([[1], [0], [0], [1]], dtype=np.float64)


def _ref():
    from . import reference
    return reference


def _fast():
    from . import layers, loss, optim
    return layers, loss, optim


def _np_train(impl, sizes, acts, dtype, x, y, loss_name, lr, epochs, batch_size):
    """A run() for fastbp or the reference: fresh model with shared weights each time."""
    if impl == "fastbp":
        L, Lo, O = _fast()
        kw = {"verbose": False}
    else:
        R = _ref()
        L, Lo, O = R.layers, R.loss, R.optim
        kw = {}

    def run():
        # Untimed: build the model and train it one epoch (buffers allocated, pages
        # touched); timed: the training call itself.
        net = _fastbp_mlp(L, sizes, acts, dtype)
        opt, loss = O.SGD(lr=lr), getattr(Lo, loss_name)()
        net.train(x, y, opt, loss, epochs=1, batch_size=batch_size, shuffle=False, **kw)
        start = time.perf_counter()
        net.train(x, y, opt, loss, epochs=epochs, batch_size=batch_size, shuffle=False, **kw)
        return time.perf_counter() - start
    return run


# --------------------------------------------------------------------- torch / jax

def _torch_train(sizes, acts, dtype, x, y, loss_name, lr, epochs, batch_size):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    ws, bs = _mlp_weights(sizes, dtype)
    X, Y = torch.tensor(x, dtype=tdt), torch.tensor(y, dtype=tdt)
    names = {"Relu": torch.nn.ReLU, "Sigmoid": torch.nn.Sigmoid, "Tanh": torch.nn.Tanh}

    def run():
        mods = []
        for w, b, act in zip(ws, bs, acts):
            lin = torch.nn.Linear(*w.shape, dtype=tdt)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(w.T))
                lin.bias.copy_(torch.tensor(b))
            mods.append(lin)
            if act != "Softmax":
                mods.append(names[act]())
        net = torch.nn.Sequential(*mods)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        n = len(X)
        step = n if batch_size is None else batch_size

        def train(epochs):
            for _ in range(epochs):
                for i in range(0, n, step):
                    out = net(X[i:i + step])
                    if loss_name == "MSE":
                        loss = ((out - Y[i:i + step]) ** 2).mean()
                    else:  # softmax + categorical cross-entropy, summed as fastbp's
                        loss = torch.nn.functional.cross_entropy(out, Y[i:i + step],
                                                                 reduction="sum")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        train(1)  # untimed warm-up, as for fastbp
        start = time.perf_counter()
        train(epochs)
        return time.perf_counter() - start
    return run


def _jax_train(sizes, acts, dtype, x, y, loss_name, lr, epochs, batch_size):
    import jax
    import jax.numpy as jnp
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    ws, bs = _mlp_weights(sizes, dtype)
    fns = {"Relu": jax.nn.relu, "Sigmoid": jax.nn.sigmoid, "Tanh": jnp.tanh}

    def loss_fn(params, xb, yb):
        h = xb
        for (w, b), act in zip(params, acts):
            h = h @ w + b
            if act != "Softmax":
                h = fns[act](h)
        if loss_name == "MSE":
            return jnp.mean((h - yb) ** 2)
        return -jnp.sum(yb * jax.nn.log_softmax(h))

    n = len(x)
    step = n if batch_size is None else batch_size
    nb = n // step
    X = jnp.asarray(x[:nb * step]).reshape(nb, step, -1)
    Y = jnp.asarray(y[:nb * step]).reshape(nb, step, -1)

    @jax.jit
    def train(params):
        def sgd(params, batch):
            g = jax.grad(loss_fn)(params, *batch)
            return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g), None

        def epoch(params, _):
            return jax.lax.scan(sgd, params, (X, Y))[0], None
        return jax.lax.scan(epoch, params, None, length=epochs)[0]

    params0 = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(ws, bs)]
    jax.block_until_ready(train(params0))  # compile outside the timing

    def run():
        jax.block_until_ready(train(params0))
    return run


def _installed(name):
    return importlib.util.find_spec(name) is not None


def _competitors(sizes, acts, dtype, x, y, loss_name, lr, epochs, batch_size):
    args = (sizes, acts, dtype, x, y, loss_name, lr, epochs, batch_size)
    out = {"fastbp": _np_train("fastbp", *args), "reference": _np_train("reference", *args)}
    if _installed("torch"):
        out["pytorch"] = _torch_train(*args)
    if _installed("jax"):
        out["jax"] = _jax_train(*args)
    return out


# --------------------------------------------------------------------- workloads

@workload("xor", "XOR 2-8-4-1, 400 full-batch epochs, float64")
def _xor(quick):
    return _competitors([2, 8, 4, 1], ["Relu", "Sigmoid", "Sigmoid"], np.float64, XOR_X,
                        XOR_Y, "MSE", 0.6, 400, None), None


@workload("digits", "digits epoch 64-128-64-10, batch 32, 56 steps, float32, SGD")
def _digits(quick):
    x, y = _data(56 * 32, 64, 10, np.float32)
    return _competitors([64, 128, 64, 10], ["Relu", "Relu", "Softmax"], np.float32, x, y,
                        "CategoricalCrossentropy", 1e-3, 1, 32), None


@workload("medium", "medium step 784-256-256-10, batch 128, float32")
def _medium(quick):
    x, y = _data(128, 784, 10, np.float32)
    return _competitors([784, 256, 256, 10], ["Relu", "Relu", "Softmax"], np.float32, x, y,
                        "CategoricalCrossentropy", 1e-4, 1, 128), None


def _large(dtype):
    def make(quick):
        sizes = [784, 2048, 2048, 10]
        x, y = _data(512, 784, 10, dtype)
        params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        return _competitors(sizes, ["Relu", "Relu", "Softmax"], dtype, x, y,
                            "CategoricalCrossentropy", 1e-4, 1, 512), 6 * 512 * params
    return make


workload("large32", "large step 784-2048-2048-10, batch 512, float32")(_large(np.float32))
workload("large64", "large step 784-2048-2048-10, batch 512, float64")(_large(np.float64))


@workload("softmax", "softmax backward N=512, n=1000, float64")
def _softmax(quick):
    from . import layers
    rng = np.random.default_rng(0)
    z, g = rng.standard_normal((512, 1000)), rng.standard_normal((512, 1000))
    fast, ref = layers.Softmax(), _ref().layers.Softmax()
    fast(z)
    ref(z)
    fast.backward(g)
    out = {"fastbp": lambda: fast.backward(g), "reference": lambda: ref.backward(g)}
    if _installed("torch"):
        import torch
        zt = torch.tensor(z, requires_grad=True)
        gt = torch.tensor(g)
        pt = torch.softmax(zt, dim=1)

        def torch_backward():
            torch.autograd.grad(pt, zt, gt, retain_graph=True)
        out["pytorch"] = torch_backward
    return out, None


_PROCESS = {
    "fastbp": "from fastbp import layers, loss, optim",
    "reference": ("import importlib.util, sys, os\n"
                  "spec = importlib.util.spec_from_file_location('ref', {path!r}, "
                  "submodule_search_locations=[os.path.dirname({path!r})])\n"
                  "ref = importlib.util.module_from_spec(spec); sys.modules['ref'] = ref\n"
                  "spec.loader.exec_module(ref)\n"
                  "layers, loss, optim = ref.layers, ref.loss, ref.optim"),
}
_FIRST_STEP = ("import numpy as np\n"
               "x = np.array([[0, 1], [0, 0], [1, 1], [1, 0]]); y = np.array([[1], [0], [0], [1]])\n"
               "np.random.seed(0)\n"
               "net = layers.Model([layers.Linear(8), layers.Relu(), layers.Linear(4), "
               "layers.Sigmoid(), layers.Linear(1), layers.Sigmoid()])\n"
               "net.train(x, y, optim.SGD(lr=0.6), loss.MSE(), epochs=1{kw})\n")


def _process_code(impl):
    path = os.path.join(os.path.dirname(__file__), "reference", "__init__.py")
    head = _PROCESS[impl].format(path=path)
    return head + "\n" + _FIRST_STEP.format(kw=", verbose=False" if impl == "fastbp" else "")


def _run_process(code, env=None):
    subprocess.run([sys.executable, "-c", code], check=True, env=env,
                   cwd=tempfile.gettempdir())


@workload("process", "whole process: import + first training step (warm Numba cache)")
def _process(quick):
    out = {impl: (lambda c=_process_code(impl): _run_process(c)) for impl in _PROCESS}
    out["fastbp"]()  # make sure the cache is warm
    return out, None


# --------------------------------------------------------------------- running

def gemm_rate(dtype, n=2048, k=2048, m=512, reps=5):
    """The machine's GEMM rate (FLOP/s) for this dtype, measured now: the best of NumPy's
    BLAS and of the BLAS the kernels call (SciPy's, through Numba), best of ``reps``."""
    from .kernels import matmul
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k)).astype(dtype), rng.random((k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    best = float("inf")
    for fn in (lambda: np.dot(a, b, out), lambda: matmul(out, a, b)):
        fn()
        best = min(best, min(_timed(fn) for _ in range(reps)))
    return 2 * m * k * n / best


def _timed(fn):
    """Seconds taken by fn(), or what fn returns when it times itself (a float)."""
    start = time.perf_counter()
    own = fn()
    elapsed = time.perf_counter() - start
    return own if isinstance(own, float) else elapsed


def cold_start_seconds():
    """``fastbp xor`` as a whole process with an empty Numba cache, then a warm one."""
    code = "from fastbp.cli import main; main(['xor', '--quiet'])"
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        cold = _timed(lambda: subprocess.run([sys.executable, "-c", code], check=True,
                                             env=env, capture_output=True,
                                             cwd=tempfile.gettempdir()))
        warm = min(_timed(lambda: subprocess.run([sys.executable, "-c", code], check=True,
                                                 env=env, capture_output=True,
                                                 cwd=tempfile.gettempdir()))
                   for _ in range(3))
    return cold, warm


def run(names, rounds, out=print):
    out(f"fastbp bench: {rounds} interleaved rounds; times are medians; 'ratio' is the "
        f"competitor's time / fastbp's (above 1 = fastbp faster), median of per-round ratios")
    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}")
    out("")
    out(f"| workload | {'fastbp':>10} | competitor | {'time':>10} | {'ratio':>8} |")
    out("|---|---:|---|---:|---:|")
    results = {}
    for name in names:
        label, make = WORKLOADS[name]
        competitors, flops = make(rounds < 5)
        times = {impl: [] for impl in competitors}
        order = list(competitors)
        for r in range(rounds):
            # Rotate who goes first, and pause between runs: thread pools (OpenBLAS, OpenMP,
            # TBB, Eigen) spin for a while after their work and would otherwise slow down
            # whichever competitor runs next.
            for impl in order[r % len(order):] + order[:r % len(order)]:
                time.sleep(PAUSE)
                times[impl].append(_timed(competitors[impl]))
        fast = statistics.median(times["fastbp"])
        rows = []
        for impl, ts in times.items():
            if impl == "fastbp":
                continue
            ratio = statistics.median(t / f for t, f in zip(ts, times["fastbp"]))
            rows.append((impl, statistics.median(ts), ratio))
        for i, (impl, t, ratio) in enumerate(rows):
            first = f"{label} | {_fmt(fast)}" if i == 0 else " | "
            out(f"| {first} | {impl} | {_fmt(t)} | {ratio:8.2f} |")
        if flops:
            dtype = np.float32 if name.endswith("32") else np.float64
            rate = gemm_rate(dtype)
            out(f"|  |  | GEMM rate | {flops / fast / 1e9:.1f} of {rate / 1e9:.1f} GFLOP/s "
                f"| {flops / fast / rate:8.0%} |")
        results[name] = times
    return results


def _fmt(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.2f} s "


def main(args):
    names = args.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"fastbp bench: unknown workload(s) {unknown}; choose from "
                         f"{list(WORKLOADS)}")
    rounds = args.rounds or (3 if args.quick else 9)
    run(names, rounds)
    if args.cold:
        cold, warm = cold_start_seconds()
        print(f"\n`fastbp xor` whole process: empty Numba cache {cold:.1f} s, warm cache "
              f"{warm:.2f} s")
