"""The worker side of ``fastbp bench``: one long-lived process per library.

Run as a script, ``python .../fastbp/_bench_workers.py <library>`` (never as
``python -m fastbp...``, which would import fastbp and so Numba into every worker): a
worker imports NumPy (the common data format) and its own library only. It reads
pickled requests on stdin and answers on the pipe that was its stdout; whatever the
library prints goes to stderr. While another worker runs, it blocks on that read.

Requests: ``("setup", key, spec, variant)`` builds a runner (compiling and warming it,
untimed); ``("run", key)`` resets the runner to the shared initial weights (untimed),
times ``spec["inner"]`` back-to-back calls and answers ``(seconds per call, final loss)``
(with ``spec["min_seconds"]``: calls each from the initial weights until they add up to
that long, see ``Runner._run_from_reset``);
``("weights", key)`` resets and answers the (w, b) pairs a run starts from, as the
library holds them, in fastbp's orientation; ``("imported", names)`` answers which of
those modules the worker has imported; ``("quit",)`` ends the worker.

``python .../_bench_workers.py --process <library> <workload>`` is the whole-process
variant: import, build, one training step, print the loss, exit.

Every competitor gets the same data and initial weights (``shared_weights``,
``shared_data``) and minimises the same summed loss with the same learning rate:
cross-entropy summed over the batch rows (fastbp's; PyTorch ``reduction="sum"``), MSE as
the mean over a row's outputs summed over the rows (fastbp's gradient ``2 e / O``).
"""
import os
import pickle
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":
    # Run by path, Python put fastbp/ first on sys.path, where io.py, data.py and
    # model.py would shadow the libraries' own imports of those names.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import numpy as np  # noqa: E402

# --------------------------------------------------------------------- shared inputs

XOR_X = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], dtype=np.float64)
XOR_Y = np.array([[1], [0], [0], [1]], dtype=np.float64)


def shared_weights(sizes, dtype, seed=0):
    """He-initialised weights (I, O) and zero biases, identical for every competitor."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(dtype), np.zeros(b, dtype))
            for a, b in zip(sizes[:-1], sizes[1:])]


def shared_data(spec):
    """(x, y) of a workload: XOR's four rows, or random inputs with one-hot labels."""
    dtype = np.dtype(spec["dtype"])
    if spec["data"] == "xor":
        return XOR_X.astype(dtype), XOR_Y.astype(dtype)
    rng = np.random.default_rng(1)
    n, n_in, n_out = spec["rows"], spec["sizes"][0], spec["sizes"][-1]
    x = rng.random((n, n_in)).astype(dtype)
    return x, np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, n)]


def softmax_inputs(spec):
    rng = np.random.default_rng(0)
    shape = (spec["rows"], spec["width"])
    return rng.standard_normal(shape), rng.standard_normal(shape)


def final_loss(pred, y, loss):
    """The loss of the final parameters on the whole training set, per row, computed the
    same way (NumPy, float64) for every competitor: MSE, or cross-entropy of the
    probabilities."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    if loss == "MSE":
        return float(np.mean((pred - y) ** 2))
    return float(-np.sum(y * np.log(np.clip(pred, 1e-12, 1))) / len(y))


def _batches(n, batch):
    step = n if batch is None else batch
    return [(i, min(i + step, n)) for i in range(0, n, step)]


# --------------------------------------------------------------------- runners

class Runner:
    """One competitor on one workload. Subclasses set ``self.call`` (the timed call) and
    implement ``reset`` (back to the initial weights) and ``loss`` (after the run)."""

    def __init__(self, spec, variant):
        self.spec, self.variant = spec, variant

    def reset(self):
        pass

    def loss(self):
        return float("nan")

    def warm(self):
        """Two untimed runs: compile, allocate, touch every page."""
        for _ in range(2):
            self.reset()
            self.call()

    def run(self):
        least = self.spec.get("min_seconds", 0.0)
        if least:
            return self._run_from_reset(least)
        self.reset()
        inner = self.spec.get("inner", 1)
        start = time.perf_counter()
        for _ in range(inner):
            self.call()
        seconds = (time.perf_counter() - start) / inner
        return seconds, self.loss()

    def _run_from_reset(self, least):
        """Calls that each start from the initial weights (reset untimed, right before
        the call), until their times add up to ``least`` seconds; the mean per call. A
        timed run of about a millisecond right after the idle gap costs up to twice the
        back-to-back time (waking the core), which a 100 ms competitor never sees."""
        total, calls = 0.0, 0
        while calls == 0 or total < least:
            self.reset()
            start = time.perf_counter()
            self.call()
            total += time.perf_counter() - start
            calls += 1
        return total / calls, self.loss()


class NumpyMLP(Runner):
    """fastbp or its NumPy reference (same API): variants "train" (``net.train``),
    "layerwise" (``loss(net(x), y); optim(net, loss)`` per batch) and "plan" (the compiled
    plan's epoch call alone, without train()'s per-call work)."""

    def __init__(self, spec, variant, lib, train_kw):
        super().__init__(spec, variant)
        self.layers, self.losses, self.optims = lib
        self.train_kw = train_kw   # fastbp: verbose=False (the reference has no bar)
        self.x, self.y = shared_data(spec)
        self.init = shared_weights(spec["sizes"], spec["dtype"])
        stack = []
        for units, act in zip(spec["sizes"][1:], spec["acts"]):
            stack += [self.layers.Linear(units), getattr(self.layers, act)()]
        self.net = self.layers.Model(stack, dtype=spec["dtype"])
        self.net(self.x[:1])   # build, then take the shared weights
        self.linear = [layer for layer in self.net.layers if hasattr(layer, "units")]
        self.call = getattr(self, "_" + variant)

    def reset(self):
        for layer, (w, b) in zip(self.linear, self.init):
            layer.w, layer.b = w.copy(), b.copy()   # fastbp copies into its flat buffer
        self.opt = getattr(self.optims, self.spec["optim"])(lr=self.spec["lr"])
        self.objective = getattr(self.losses, self.spec["loss"])()
        if self.variant == "plan":
            from fastbp.plan import epoch_runner
            self.epochs = epoch_runner(self.net, self.x, self.y, self.spec["batch"] or
                                       len(self.x), self.opt, self.objective)

    def weights(self):
        return [(np.array(layer.w), np.array(layer.b)) for layer in self.linear]

    def _train(self):
        self.net.train(self.x, self.y, self.opt, self.objective, epochs=self.spec["epochs"],
                       batch_size=self.spec["batch"], shuffle=False, **self.train_kw)

    def _layerwise(self):
        for _ in range(self.spec["epochs"]):
            for a, b in _batches(len(self.x), self.spec["batch"]):
                self.objective(self.net(self.x[a:b]), self.y[a:b])
                self.opt(self.net, self.objective)

    def _plan(self):
        self.epochs([None] * self.spec["epochs"])

    def loss(self):
        return final_loss(self.net(self.x), self.y, self.spec["loss"])


class TorchMLP(Runner):
    """PyTorch eager: nn.Linear layers, autograd, torch.optim (SGD or Adam)."""

    def __init__(self, spec, variant):
        super().__init__(spec, variant)
        import torch
        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)
        dtype = torch.float32 if spec["dtype"] == "float32" else torch.float64
        x, y = shared_data(spec)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.init = shared_weights(spec["sizes"], spec["dtype"])
        acts = {"Relu": torch.nn.ReLU, "Sigmoid": torch.nn.Sigmoid, "Tanh": torch.nn.Tanh}
        mods = []
        for (w, _), act in zip(self.init, spec["acts"]):
            mods.append(torch.nn.Linear(*w.shape, dtype=dtype))
            if act != "Softmax":   # softmax is inside the summed cross-entropy
                mods.append(acts[act]())
        self.net = torch.nn.Sequential(*mods)
        self.linear = [m for m in mods if isinstance(m, torch.nn.Linear)]
        self.call = self._train

    def reset(self):
        with self.torch.no_grad():
            for lin, (w, b) in zip(self.linear, self.init):
                lin.weight.copy_(self.torch.from_numpy(w.T))
                lin.bias.copy_(self.torch.from_numpy(b))
        optimizer = {"SGD": self.torch.optim.SGD, "Adam": self.torch.optim.Adam}
        self.opt = optimizer[self.spec["optim"]](self.net.parameters(), lr=self.spec["lr"])

    def weights(self):
        return [(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
                for lin in self.linear]

    def _objective(self, out, y):
        if self.spec["loss"] == "MSE":
            return ((out - y) ** 2).mean(dim=1).sum()
        return self.torch.nn.functional.cross_entropy(out, y, reduction="sum")

    def _train(self):
        for _ in range(self.spec["epochs"]):
            for a, b in _batches(len(self.x), self.spec["batch"]):
                loss = self._objective(self.net(self.x[a:b]), self.y[a:b])
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()

    def loss(self):
        with self.torch.no_grad():
            out = self.net(self.x)
            if self.spec["acts"][-1] == "Softmax":
                out = self.torch.softmax(out, dim=1)
        return final_loss(out.numpy(), self.y.numpy(), self.spec["loss"])


class JaxMLP(Runner):
    """JAX, two variants: "step" (a Python loop over a jitted training step) and "scan"
    (the whole run, every epoch and batch, one jitted ``lax.scan``). SGD or Adam written
    out as torch.optim defines them."""

    def __init__(self, spec, variant):
        super().__init__(spec, variant)
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)   # float64 workloads; float32 stays float32
        self.jax, self.jnp = jax, jnp
        x, y = shared_data(spec)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.init = shared_weights(spec["sizes"], spec["dtype"])
        self.params0 = [(jnp.asarray(w), jnp.asarray(b)) for w, b in self.init]
        acts = {"Relu": jax.nn.relu, "Sigmoid": jax.nn.sigmoid, "Tanh": jnp.tanh}
        dtype = np.dtype(spec["dtype"])

        def forward(params, xb):
            h = xb
            for (w, b), act in zip(params, spec["acts"]):
                h = h @ w + b
                if act != "Softmax":
                    h = acts[act](h)
            return h

        def objective(params, xb, yb):
            h = forward(params, xb)
            if spec["loss"] == "MSE":
                return jnp.sum(jnp.mean((h - yb) ** 2, axis=1))
            return -jnp.sum(yb * jax.nn.log_softmax(h))

        lr, adam = dtype.type(spec["lr"]), spec["optim"] == "Adam"
        b1, b2, eps = dtype.type(0.9), dtype.type(0.999), dtype.type(1e-8)

        def step(state, batch):
            params, m, v, t = state
            g = jax.grad(objective)(params, *batch)
            if not adam:
                return (jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g),
                        m, v, t), None
            t = t + 1
            m = jax.tree_util.tree_map(lambda a, gp: b1 * a + (1 - b1) * gp, m, g)
            v = jax.tree_util.tree_map(lambda a, gp: b2 * a + (1 - b2) * gp * gp, v, g)
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            params = jax.tree_util.tree_map(
                lambda p, a, s: p - lr * (a / c1) / (jnp.sqrt(s / c2) + eps), params, m, v)
            return (params, m, v, t), None

        bounds = _batches(len(x), spec["batch"])
        size = bounds[0][1]
        if any(b - a != size for a, b in bounds):
            raise ValueError("bench: JAX's scan needs equal batches; pick rows = k * batch")
        xs = self.x.reshape(len(bounds), size, -1)
        ys = self.y.reshape(len(bounds), size, -1)

        @jax.jit
        def whole_run(state):
            def epoch(state, _):
                return jax.lax.scan(step, state, (xs, ys))[0], None
            return jax.lax.scan(epoch, state, None, length=spec["epochs"])[0]

        jit_step = jax.jit(lambda state, xb, yb: step(state, (xb, yb))[0])

        batches = [(xs[i], ys[i]) for i in range(len(bounds))]   # sliced once, untimed

        def step_loop(state):
            for _ in range(spec["epochs"]):
                for xb, yb in batches:
                    state = jit_step(state, xb, yb)
            return state

        self.forward = jax.jit(forward)
        self._run = whole_run if variant == "scan" else step_loop

    def reset(self):
        zeros = self.jax.tree_util.tree_map(self.jnp.zeros_like, self.params0)
        self.state = (self.params0, zeros, zeros, self.jnp.asarray(0, self.x.dtype))

    def call(self):
        self.state = self.jax.block_until_ready(self._run(self.state))

    def weights(self):
        return [(np.asarray(w), np.asarray(b)) for w, b in self.state[0]]

    def loss(self):
        out = self.forward(self.state[0], self.x)
        if self.spec["acts"][-1] == "Softmax":
            out = self.jax.nn.softmax(out, axis=1)
        return final_loss(np.asarray(out), np.asarray(self.y), self.spec["loss"])


class NumpySoftmax(Runner):
    """Softmax backward after one forward: the public layer ("layer"), or for fastbp
    also the raw kernel ``fastbp.kernels.activation_backward`` ("kernel")."""

    def __init__(self, spec, variant, lib):
        super().__init__(spec, variant)
        z, self.g = softmax_inputs(spec)
        self.layer = lib[0].Softmax()
        self.layer(z)
        if variant == "kernel":
            from fastbp import kernels
            self.dz = np.empty_like(self.g)
            self.call = lambda: kernels.activation_backward(self.dz, self.g, self.layer.output,
                                                            kernels.SOFTMAX)
        else:
            self.call = lambda: setattr(self, "dz", self.layer.backward(self.g))

    def loss(self):   # not a loss: sum(dz^2), so equal work is visible
        return float(np.sum(np.asarray(self.dz, np.float64) ** 2))


class TorchSoftmax(Runner):
    """PyTorch autograd through ``torch.softmax`` (graph kept between calls)."""

    def __init__(self, spec, variant):
        super().__init__(spec, variant)
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        z, g = softmax_inputs(spec)
        zt = torch.tensor(z, requires_grad=True)
        gt = torch.tensor(g)
        pt = torch.softmax(zt, dim=1)
        self.call = lambda: setattr(self, "dz", torch.autograd.grad(pt, zt, gt,
                                                                   retain_graph=True)[0])

    def loss(self):
        return float((self.dz.double() ** 2).sum())


class Gemm(Runner):
    """The machine's GEMM rate: one (M, K) x (K, N) product, the faster of NumPy's BLAS and
    SciPy's (the one Numba's np.dot calls inside fastbp's kernels)."""

    def __init__(self, spec, variant):
        super().__init__(spec, variant)
        from scipy.linalg import blas
        dtype = np.dtype(spec["dtype"])
        rng = np.random.default_rng(0)
        m, k, n = spec["gemm"]
        a, b = rng.random((m, k)).astype(dtype), rng.random((k, n)).astype(dtype)
        out = np.empty((m, n), dtype)
        gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
        # a, b are C-ordered: C = A B is C^T = B^T A^T in Fortran order, no copies.
        self.products = (lambda: np.dot(a, b, out), lambda: gemm(1.0, b.T, a.T, trans_a=0))

    def run(self):
        best = float("inf")
        for product in self.products:
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
        return best, float("nan")

    def warm(self):
        for product in self.products:
            product()


# --------------------------------------------------------------------- libraries

def _load_reference():
    """fastbp.reference as a package of its own, without importing fastbp (and Numba)."""
    import importlib.util
    path = os.path.join(HERE, "reference", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "fastbp_reference", path, submodule_search_locations=[os.path.dirname(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastbp_reference"] = module
    spec.loader.exec_module(module)
    return module.layers, module.loss, module.optim


def _load_fastbp():
    from fastbp import layers, loss, optim
    return layers, loss, optim


class SklearnFit(Runner):
    """One whole ``fit`` of an MLPClassifier: fastbp.sklearn's ("fastbp") or scikit-learn's
    own ("sklearn"), the same parameters and data (fastbp._sklearn_bench)."""

    def __init__(self, spec, library):
        super().__init__(spec, library)
        from fastbp import _sklearn_bench as S
        dtype = np.dtype(spec["dtype"])
        X, y = S.workload_data(spec["name"], dtype)
        ours, theirs = S._estimators(spec["name"], dtype)
        self.estimator = ours if library == "fastbp" else theirs
        self.call = S._fit_fn(self.estimator, X, y)
        self.warm = (lambda: S.warm_up(dtype)) if library == "fastbp" else (lambda: None)

    def loss(self):
        return float(self.estimator.loss_)


# (library, workload kind) -> Runner. A new competitor (scikit-learn, say) adds its rows
# here and its import name to LIBRARIES; the parent skips libraries that are not installed.
RUNNERS = {
    ("fastbp", "mlp"): lambda spec, variant: NumpyMLP(spec, variant, _load_fastbp(),
                                                      {"verbose": False}),
    ("fastbp", "softmax"): lambda spec, variant: NumpySoftmax(spec, variant, _load_fastbp()),
    ("reference", "mlp"): lambda spec, variant: NumpyMLP(spec, variant, _load_reference(), {}),
    ("reference", "softmax"): lambda spec, variant: NumpySoftmax(spec, variant,
                                                                 _load_reference()),
    ("torch", "mlp"): TorchMLP,
    ("torch", "softmax"): TorchSoftmax,
    ("jax", "mlp"): JaxMLP,
    ("blas", "gemm"): Gemm,
    ("fastbp", "sklearn"): lambda spec, variant: SklearnFit(spec, "fastbp"),
    ("sklearn", "sklearn"): lambda spec, variant: SklearnFit(spec, "sklearn"),
}
LIBRARIES = {"fastbp": "fastbp", "reference": "numpy", "torch": "torch", "jax": "jax",
             "blas": "scipy", "sklearn": "sklearn"}


def runner(library, spec, variant):
    """The Runner of ``library`` for a workload ``spec`` (a dict) and ``variant``."""
    make = RUNNERS.get((library, spec["kind"]))
    if make is None:
        raise ValueError(f"bench worker: {library} has no {spec['kind']} runner")
    return make(spec, variant)


# --------------------------------------------------------------------- the loop

def serve(library, requests, answers):
    runners = {}
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return
        try:
            if message[0] == "quit":
                return
            if message[0] == "setup":
                _, key, spec, variant = message
                runners[key] = runner(library, spec, variant)
                runners[key].warm()
                answer = None
            elif message[0] == "run":
                answer = runners[message[1]].run()
            elif message[0] == "imported":   # which of these libraries this process holds
                answer = sorted(name for name in message[1] if name in sys.modules)
            elif message[0] == "weights":   # as a timed run starts: after a reset
                runners[message[1]].reset()
                answer = runners[message[1]].weights()
            else:
                raise ValueError(f"bench worker: unknown request {message[0]!r}")
            reply = ("ok", answer)
        except Exception as error:   # the parent reports it and goes on without us
            reply = ("error", f"{type(error).__name__}: {error}")
        pickle.dump(reply, answers)
        answers.flush()


def process(library, workload):
    """One whole process: import the library, build, train one step, print the loss."""
    spec = PROCESS_SPECS[workload]
    r = runner(library, spec, PROCESS_VARIANT.get(library, "train"))
    r.reset()
    r.call()
    print(f"loss {r.loss():.6g}")


# The whole-process workloads: XOR's first full-batch epoch, digits' first Adam step.
PROCESS_SPECS = {
    "xor": dict(kind="mlp", data="xor", sizes=[2, 8, 4, 1], acts=["Relu", "Sigmoid", "Sigmoid"],
                dtype="float64", loss="MSE", optim="SGD", lr=0.6, epochs=1, batch=None),
    "digits": dict(kind="mlp", data="random", rows=32, sizes=[64, 128, 64, 10],
                   acts=["Relu", "Relu", "Softmax"], dtype="float32",
                   loss="CategoricalCrossentropy", optim="Adam", lr=1e-3, epochs=1, batch=32),
}
PROCESS_VARIANT = {"jax": "step"}


def main(argv):
    if argv[0] == "--process":
        return process(argv[1], argv[2])
    # The protocol owns the real stdout; anything the library prints goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(argv[0], sys.stdin.buffer, answers)


if __name__ == "__main__":
    main(sys.argv[1:])
