"""Run under mpiexec by tests/test_mpi.py: ``mpiexec -n P python mpi_scenarios.py GROUP``.

One launch runs a whole group of scenarios (each launch costs a process start and a
Numba cache load). Rank 0 trains the single-process oracle in the same process and
prints one line ``RESULTS {json}``; the fault group prints one ``RESULT`` line per rank
and scenario, then ends with a deliberate failure on one rank (the job must abort).
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp import layers, loss, optim

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
F, O, EPOCHS = 5, 3, 6
OPTIMIZERS = {"SGD": lambda **kw: optim.SGD(lr=0.05, **kw),
              "Momentum": lambda **kw: optim.Momentum(lr=0.02, **kw),
              "RMSProp": lambda **kw: optim.RMSProp(lr=0.01, **kw),
              "Adam": lambda **kw: optim.Adam(lr=0.01, **kw)}


class Scale(layers.Layer):
    """A custom layer with parameters (x * w + b, elementwise): the layer-by-layer path."""

    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call = 0, fail_on_call

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError(f"Scale: deliberate failure on rank {RANK}, call {self.calls}")
        if not hasattr(self, "w"):
            rng = np.random.default_rng(7 + RANK)   # differs per rank: the broadcast fixes it
            self.w, self.b = rng.uniform(0.5, 1.5, (1, x.shape[1])), np.zeros(x.shape[1])
        self.x = x
        return x * self.w + self.b

    def backward(self, grad):
        self.w_gradient = (grad * self.x).sum(0, keepdims=True)
        self.b_gradient = grad.sum(0)
        return grad * self.w


def make_model(kind, seed, custom=False, fail_on_call=None):
    rng = np.random.default_rng(seed)
    stack = [Scale(fail_on_call)] if custom else []
    stack += [layers.Linear(6, init="he", rng=rng), layers.Tanh(),
              layers.Linear(O, init="xavier", rng=rng)]
    if kind == "cce":
        stack.append(layers.Softmax())
    return layers.Model(stack, dtype=np.float64)


def make_loss(kind, **kw):
    return loss.CategoricalCrossentropy(**kw) if kind == "cce" else loss.MSE(**kw)


def shards(sizes, kind, seed=0):
    """Every rank's shard (all ranks build all of them, the same way)."""
    out = []
    for r, n in enumerate(sizes):
        rng = np.random.default_rng(seed + 100 * r)
        x = rng.normal(size=(n, F))
        y = np.eye(O)[rng.integers(0, O, n)] if kind == "cce" else rng.normal(size=(n, O))
        out.append((x, y))
    return out


def union(all_shards, batch):
    """The oracle's rows: at step s, the rows every rank takes at step s, rank by rank
    (steps = the fewest batches of any rank, as the distributed rule says)."""
    steps = min(-(-len(x) // batch) for x, _ in all_shards)
    rows = [(x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch])
            for s in range(steps) for x, y in all_shards]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def digest(model):
    parts = [model.params.tobytes()] + [np.asarray(getattr(l, n)).tobytes()
                                        for l in model.layers if isinstance(l, Scale)
                                        for n in ("w", "b")]
    return hashlib.sha256(b"".join(parts)).hexdigest()


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def compare(name, kind, opt_name, sizes, batch, custom=False, validation=False,
            opt_kw=None, loss_kw=None):
    """Train distributed and (rank 0) the single-process oracle; rank 0 returns numbers.
    opt_kw / loss_kw: options of the optimizer (weight_decay) and loss (reduction, eps)."""
    opt_kw, loss_kw = opt_kw or {}, loss_kw or {}
    all_shards = shards(sizes, kind)
    x, y = all_shards[RANK]
    val = shards([20], kind, seed=99)[0] if validation else None
    net = make_model(kind, seed=1 + RANK, custom=custom)   # rank 0's weights must win
    history = net.train(x, y, OPTIMIZERS[opt_name](**opt_kw), make_loss(kind, **loss_kw),
                        EPOCHS, batch_size=batch, shuffle=False, verbose=False,
                        validation_data=val, comm=COMM)
    digests = COMM.gather(digest(net), root=0)
    histories = COMM.gather(list(history), root=0)
    if RANK != 0:
        return None
    xu, yu = union(all_shards, batch or max(sizes))   # batch None: every shard, full
    oracle = make_model(kind, seed=1, custom=custom)
    expected = oracle.train(xu, yu, OPTIMIZERS[opt_name](**opt_kw), make_loss(kind, **loss_kw),
                            EPOCHS, batch_size=batch and SIZE * batch, shuffle=False,
                            verbose=False,
                            validation_data=val)
    result = {"params_rel": rel(net.params, oracle.params),
              "loss_rel": rel(history, expected),
              "ranks_identical": len(set(digests)) == 1,
              "histories_identical": all(h == histories[0] for h in histories),
              "epochs": len(history), "rows_per_epoch": len(xu)}
    if custom:
        scale, scale0 = net.layers[0], oracle.layers[0]
        result["custom_rel"] = max(rel(scale.w, scale0.w), rel(scale.b, scale0.b))
    if validation:
        result["val_loss_rel"] = rel(history.history["val_loss"],
                                     expected.history["val_loss"])
    return result


def diverged(custom):
    """SGD at lr = 1e100 (MSE, batch 4) overflows within a few steps: every rank stops
    before the step whose union loss is not finite, as one process does on the union."""
    all_shards = shards([12] * SIZE, "mse")
    x, y = all_shards[RANK]

    def run(model, x, y, **kw):
        opt = optim.SGD(lr=1e100)
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                model.train(x, y, opt, loss.MSE(), EPOCHS, shuffle=False, verbose=False,
                            **kw)
            except FloatingPointError as err:
                return opt.t, str(err).split(" (optimizer")[0]
        return opt.t, "no error"

    net = make_model("mse", seed=1 + RANK, custom=custom)
    t, message = run(net, x, y, batch_size=4, comm=COMM)
    digests = COMM.gather(digest(net), root=0)
    if RANK != 0:
        return None
    oracle = make_model("mse", seed=1, custom=custom)
    t0, message0 = run(oracle, *union(all_shards, 4), batch_size=SIZE * 4)
    return {"params_rel": rel(net.params, oracle.params), "t": [t, t0],
            "messages": [message, message0], "ranks_identical": len(set(digests)) == 1,
            "finite": bool(np.isfinite(net.params).all())}


def shuffled_and_saved(folder):
    """Shuffling (per-rank generators) keeps ranks identical; save(comm=) writes once."""
    x, y = shards([30] * SIZE, "cce")[RANK]
    net = make_model("cce", seed=1 + RANK)
    opt = optim.Adam(lr=0.01)
    net.train(x, y, opt, make_loss("cce"), 3, batch_size=4, seed=5, verbose=False,
              comm=COMM)
    path = os.path.join(folder, "model.npz")
    fastbp.save(net, path, opt, comm=COMM)
    same = np.array_equal(fastbp.load(path).predict(x), net.predict(x))
    digests = COMM.gather(digest(net), root=0)
    loaded = COMM.gather(same, root=0)
    if RANK == 0:
        return {"ranks_identical": len(set(digests)) == 1, "loaded_equal": all(loaded),
                "files": sorted(os.listdir(folder))}


def equivalence():
    results = {}
    for kind in ("mse", "cce"):
        for opt_name in OPTIMIZERS:
            results[f"{opt_name}-{kind}"] = compare(f"{opt_name}-{kind}", kind, opt_name,
                                                    [12] * SIZE, batch=4,
                                                    validation=opt_name == "SGD")
    results["custom-Adam-mse"] = compare("custom", "mse", "Adam", [12] * SIZE, 4,
                                         custom=True)
    results["fullbatch-RMSProp-cce"] = compare("full", "cce", "RMSProp", [7] * SIZE, None)
    # Options that apply to the union batch as a whole (weight decay, reduction="mean"), a
    # loss's own clip, on the compiled path and layer by layer; shards of unequal size, so
    # that the ranks' rows differ in the last step.
    for path, custom in (("plan", False), ("custom", True)):
        for opts in ("decay", "mean", "mean-decay"):
            opt_kw = {"weight_decay": 0.3} if "decay" in opts else {}
            loss_kw = {"reduction": "mean"} if "mean" in opts else {}
            results[f"{path}-{opts}-Adam-cce"] = compare(
                opts, "cce", "Adam", [12, 10] if SIZE == 2 else [12] * SIZE, 4,
                custom=custom, opt_kw=opt_kw, loss_kw=loss_kw)
    results["plan-eps-SGD-cce"] = compare("eps", "cce", "SGD", [12] * SIZE, 4,
                                          loss_kw={"eps": 0.2})
    results["plan-decay-SGD-mse"] = compare("decay", "mse", "SGD", [12] * SIZE, 4,
                                            opt_kw={"weight_decay": 0.3})
    results["diverge-plan"], results["diverge-custom"] = diverged(False), diverged(True)
    folder = tempfile.mkdtemp() if RANK == 0 else None
    results["shuffle-save"] = shuffled_and_saved(COMM.bcast(folder, root=0))
    return results


def uneven():
    results = {}
    for name, sizes in (("partial", [10, 11, 12]), ("drop", [8, 9, 13])):
        for kind, opt_name in (("mse", "Adam"), ("cce", "Momentum")):
            results[f"{name}-{opt_name}-{kind}"] = compare(name, kind, opt_name, sizes, 4)
    return results


def report(scenario, run):
    try:
        run()
        text = "no error"
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
    print(f"RESULT rank={RANK} scenario={scenario} {text}", flush=True)
    COMM.Barrier()   # the next scenario starts together (and proves nobody hangs)


def faults():
    def train(x, y, lr=0.01, **kw):
        make_model("mse", 1).train(x, y, optim.SGD(lr=lr), loss.MSE(), 3, batch_size=4,
                                   verbose=False, comm=COMM, **kw)
    x, y = shards([12] * SIZE, "mse")[RANK]
    bad = x.copy()
    bad[3, 2] = np.nan
    report("nan_input", lambda: train(bad if RANK == 1 else x, y))
    report("wrong_columns", lambda: train(np.hstack([x, x[:, :1]]) if RANK == 1 else x, y))
    report("diverge_one_rank", lambda: train(x, y * 1e300 if RANK == 1 else y))
    built = make_model("mse", 1)
    built(x)
    nowhere = os.path.join(tempfile.gettempdir(), "fastbp-no-such-dir", "model.npz")
    report("save_fails", lambda: fastbp.save(built, nowhere, comm=COMM))
    # Last: an exception inside training on rank 1 only. The job must abort, not hang.
    net = make_model("mse", 1, custom=True, fail_on_call=5 if RANK == 1 else None)
    net.train(x, y, optim.SGD(lr=0.01), loss.MSE(), 3, batch_size=4, verbose=False,
              comm=COMM)
    print(f"RESULT rank={RANK} scenario=custom_raises no error", flush=True)


def main(group):
    if group == "faults":
        return faults()
    try:
        out = {"equivalence": equivalence, "uneven": uneven}[group]()
    except BaseException:   # a bug here must end the job, not leave a rank waiting
        import traceback
        traceback.print_exc()
        COMM.Abort(1)
    if RANK == 0:
        print("RESULTS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
