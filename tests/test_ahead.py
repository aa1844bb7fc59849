"""Compiling ahead (fastbp.kernels.ahead): the helper process compiles exactly the leaf
kernels a plan loads afterwards, it runs only when the plan kernel is about to compile,
and it never outlives the plan call."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fastbp.kernels import ahead

# A child that trains with the helper run to completion *before* the plan call (so that
# the outcome does not depend on timing), and prints which fastbp kernels were loaded
# from the cache and which compiled.
SYNCHRONOUS = """
import contextlib, json, sys
import numpy as np
from fastbp import compile_log, layers, loss, optim
from fastbp.kernels import ahead

def helper_first(kind, args):
    assert ahead._spawn(kind, args).wait() == 0
    return contextlib.nullcontext()
ahead._helper = helper_first

x = np.random.default_rng(0).random((24, {width}))
y = np.eye(3)[np.arange(24) % 3]
net = layers.Model([layers.Linear({hidden}, rng=np.random.default_rng(1)), layers.Tanh(),
                    layers.Linear(3, rng=np.random.default_rng(2)), layers.Softmax()],
                   dtype=np.{dtype})
with compile_log.recording() as record:
    net.train(x, y, optim.{opt}(), loss.CategoricalCrossentropy(), epochs=2,
              batch_size={batch}, validation_data=(x, y), verbose=False)
rows = [r for r in record.rows if r["module"].startswith("fastbp")]
print(json.dumps({{"loaded": sorted({{r["kernel"] for r in rows if r["loaded"]}}),
                   "compiled": sorted({{r["kernel"] for r in rows if not r["loaded"]}})}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind, width, hidden, batch, dtype, opt, tail", [
    ("tiny", 2, 4, 4, "float64", "SGD",
     {"_update_range", "_bias_terms", "_tiny_backward", "_loss_rows", "_loss_value"}),
    ("plan", 20, 32, 8, "float32", "Adam",
     {"_update_range", "_bias_terms", "regularize_gradients", "matmul_nt", "matmul_tn",
      "_backward_cols", "_backward_rows", "weight_square_sum", "_loss_value",
      "_loss_rows", "loss_forward_backward"}),
])
def test_the_helper_compiles_the_leaves_the_plan_then_loads(tmp_path, kind, width, hidden,
                                                            batch, dtype, opt, tail):
    """Every leaf the tail function names is compiled with the plan's own argument types
    (and, for the general plan, the validation loss's): the training process loads each
    of them from the cache instead of compiling it."""
    code = SYNCHRONOUS.format(width=width, hidden=hidden, batch=batch, dtype=dtype, opt=opt)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert tail <= set(seen["loaded"]), seen
    assert not tail & set(seen["compiled"]), seen
    assert f"{kind}_train" in seen["compiled"]        # the plan kernel itself, here


class FakeDispatcher:
    overloads = {}


@pytest.fixture
def fresh(monkeypatch):
    """A process where no helper was started yet, with the cache check stubbed out."""
    monkeypatch.setattr(ahead, "_started", set())
    monkeypatch.setattr(ahead, "_in_cache", lambda dispatcher, args: False)
    monkeypatch.delenv("FASTBP_COMPILE_AHEAD", raising=False)
    for name in ahead._MPI_ENV:
        monkeypatch.delenv(name, raising=False)


def _sleeper(kind, args):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_the_helper_is_stopped_when_the_plan_call_returns(fresh, monkeypatch):
    started = []
    monkeypatch.setattr(ahead, "_spawn", lambda kind, args: started.append(
        _sleeper(kind, args)) or started[-1])
    t0 = time.perf_counter()
    with ahead.compiling("plan", FakeDispatcher(), ()):
        assert started and started[0].poll() is None     # running while the call runs
    assert started[0].poll() is not None                 # stopped, reaped
    assert time.perf_counter() - t0 < 30
    with ahead.compiling("plan", FakeDispatcher(), ()):  # once per kind and process
        pass
    assert len(started) == 1


def test_the_helper_is_stopped_when_the_plan_call_raises(fresh, monkeypatch):
    started = []
    monkeypatch.setattr(ahead, "_spawn", lambda kind, args: started.append(
        _sleeper(kind, args)) or started[-1])
    with pytest.raises(KeyboardInterrupt):
        with ahead.compiling("tiny", FakeDispatcher(), ()):
            raise KeyboardInterrupt
    assert started[0].poll() is not None


@pytest.mark.parametrize("setting", ["off", "compiled", "mpi"])
def test_no_helper_when_it_cannot_pay(fresh, monkeypatch, setting):
    monkeypatch.setattr(ahead, "_spawn", lambda kind, args: pytest.fail("spawned"))
    dispatcher = FakeDispatcher()
    if setting == "off":
        monkeypatch.setenv("FASTBP_COMPILE_AHEAD", "0")
    elif setting == "compiled":
        dispatcher.overloads = {"a signature": "compiled in this process"}
    else:
        monkeypatch.setenv("PMI_RANK", "0")
    with ahead.compiling("plan", dispatcher, ()):
        pass


def test_the_described_arguments_type_as_the_originals():
    """The helper rebuilds the plan's arguments from their description: same Numba types
    (dtype, rank, C layout; int, float, bool)."""
    import numba
    args = (3, np.zeros((2, 6), np.int64), np.ones(5, np.float32),
            np.ones((4, 3), np.float64)[:2], 1e-7, True, np.empty((1, 0), np.int64))
    tags = json.loads(json.dumps(ahead.describe(args)))
    assert [numba.typeof(a) for a in ahead.build(tags)] == [numba.typeof(a) for a in args]
