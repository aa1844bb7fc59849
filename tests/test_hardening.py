"""Issue 10, hardening round 2: state that stays consistent (Ctrl-C, shared or changed
layers, shared optimizers, threads), the fused pairs at saturation against the reference,
loss and val_loss on one scale, files that cannot hurt, messages instead of tracebacks.

Whatever can crash, hang or needs signals or environment variables runs in a child
process (``cwd=tmp_path``, so the source folder cannot shadow the installed package).
"""
import gc
import io
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import data, layers, loss, optim
from fastbp.reference import layers as R
from fastbp.reference import loss as RL
from fastbp.reference import optim as RO
from conftest import LayerwiseSGD, assert_close, run_scripts


def _child(tmp_path, code, env=None, timeout=300):
    """Run ``code`` in a fresh interpreter and return its stdout; fail unless it exits 0."""
    full_env = dict(os.environ, PYTHONFAULTHANDLER="1", **(env or {}))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                         env=full_env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (f"child exited with {out.returncode}\n--- stdout\n"
                                 f"{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-5000:]}")
    return out.stdout


def _data(n=24, n_in=3, n_out=2, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), np.eye(n_out)[rng.integers(0, n_out, n)]


def _linear(units, n_in, seed, dtype=np.float64):
    """A built Linear with weights from ``seed`` (not from the global generator)."""
    lin = layers.Linear(units, init="xavier", rng=np.random.default_rng(seed))
    lin.build(n_in, dtype)
    lin.b = np.random.default_rng(seed + 100).standard_normal(units) * 0.1
    return lin


def _reference_of(model):
    """A reference Model with the same layers and current weights as fastbp ``model``."""
    stack = []
    for layer in model.layers:
        if isinstance(layer, layers.Linear):
            ref = R.Linear(layer.units, dtype=model.dtype)
            ref.w, ref.b, ref.initialized = layer.w.copy(), layer.b.copy(), True
            stack.append(ref)
        else:
            stack.append(getattr(R, type(layer).__name__)())
    return R.Model(stack, dtype=model.dtype)


def _linear_weights(model):
    return [a for l in model.layers if hasattr(l, "w") for a in (l.w, l.b)]


# ================================================== 1. Ctrl-C leaves a consistent state

INTERRUPT_CODE = """
    import signal, threading, time
    import numpy as np
    from fastbp import layers, loss, optim

    class Tanh2(layers.Activation):   # a custom layer: the layer-by-layer path
        def __call__(self, x):
            self.out = np.tanh(x)
            return self.out
        def backward(self, g):
            return g * (1 - self.out ** 2)

    def net():   # "large": 50,000 parameters, trained a compiled step per call
        rng = np.random.default_rng(0)
        act = Tanh2() if PATH == "layerwise" else layers.Tanh()
        return layers.Model([layers.Linear(4096 if PATH == "large" else 16, init="he",
                                           rng=rng), act,
                             layers.Linear(3, init="xavier", rng=rng), layers.Softmax()])

    rows = 4096 if PATH == "large" else 256
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, 8))
    y = np.eye(3)[rng.integers(0, 3, rows)]
    kw = dict(loss=loss.CategoricalCrossentropy(), batch_size=32, shuffle=False,
              verbose=False)
    steps_per_epoch = rows // 32

    m, opt = net(), optim.Adam(lr=1e-3)
    m.train(x, y, optim=opt, epochs=1, **kw)          # compile before Ctrl-C is armed

    def ctrl_c():   # once a second epoch is done (however busy the machine), a bit later
        while opt.t < 2 * steps_per_epoch:
            time.sleep(0.01)
        time.sleep(0.2)
        signal.raise_signal(signal.SIGINT)
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        m.train(x, y, optim=opt, epochs=10**7, **kw)
        raise SystemExit("training was not interrupted")
    except KeyboardInterrupt:
        pass
    done = 1 + len(m.history)   # epochs completed, the first call's included
    # Large models and the layer-by-layer path stop after the running step: the steps
    # of an unfinished epoch are in the weights and in t, not in the History.
    partial = opt.t - done * steps_per_epoch
    assert done > 1 and 0 <= partial < steps_per_epoch, (done, opt.t)
    assert PATH != "plan" or partial == 0
    assert all(np.isfinite(m.history))
    m.train(x, y, optim=opt, epochs=3, **kw)           # resume

    straight, opt2 = net(), optim.Adam(lr=1e-3)
    straight.train(x, y, optim=opt2, epochs=done, **kw)
    if partial:   # the same steps of the unfinished epoch: its first rows, in order
        straight.train(x[:partial * 32], y[:partial * 32], optim=opt2, epochs=1, **kw)
    straight.train(x, y, optim=opt2, epochs=3, **kw)
    assert opt2.t == opt.t
    np.testing.assert_allclose(m.params, straight.params, rtol=1e-12, atol=0)
    for a, b in zip(opt.state["flat"], opt2.state["flat"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    print("ok", done)
"""


INTERRUPT_PATHS = ["plan", "layerwise", "large"]


@pytest.fixture(scope="module")
def interrupted_children(tmp_path_factory):
    """Each path's child's output. "plan" runs first, alone: on an empty Numba cache it
    compiles the plan kernel that "large" uses too; then the other two run at once."""
    codes = [f"PATH = {path!r}\n" + textwrap.dedent(INTERRUPT_CODE) for path in INTERRUPT_PATHS]
    where = tmp_path_factory.mktemp("interrupt")
    outs = run_scripts(codes[:1], where, timeout=300) + \
        run_scripts(codes[1:], where, timeout=300)
    return dict(zip(INTERRUPT_PATHS, outs))


@pytest.mark.parametrize("path", INTERRUPT_PATHS)
def test_ctrl_c_leaves_weights_state_t_and_history_describing_the_same_steps(
        interrupted_children, path):
    assert interrupted_children[path].startswith("ok")


def test_a_second_ctrl_c_interrupts_at_once_and_handlers_are_restored(tmp_path):
    code = """
        import signal
        import numpy as np
        from fastbp import layers, loss, optim

        class Stuck(layers.Activation):   # a custom layer that asks for two Ctrl-C
            def __call__(self, x):
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                return x
            def backward(self, g):
                return g

        m = layers.Model([layers.Linear(2), Stuck()])
        try:
            m.train(np.ones((4, 3)), np.ones((4, 2)), epochs=5, verbose=False)
        except KeyboardInterrupt:
            print("interrupted", len(m.history))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    """
    assert _child(tmp_path, code).split() == ["interrupted", "0"]


# ====================================== 2. a Linear belongs to one model; layers may change

def test_a_linear_already_in_another_model_is_refused_by_name():
    x, y = _data()
    lin = layers.Linear(2)
    a = layers.Model([lin])
    a.train(x, y, epochs=2, verbose=False)
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\(2\)\) already belongs to "
                                         r"another Model.*use a new Linear"):
        layers.Model([lin])
    np.testing.assert_array_equal(a.predict(x), a(x))  # a is untouched
    del a
    gc.collect()
    layers.Model([lin])  # free again once its model is gone


def test_a_layer_used_twice_in_one_model_is_refused():
    t = layers.Linear(3)
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\(3\)\) is the same object as "
                                         r"layer 0.*new instance"):
        layers.Model([t, layers.Tanh(), t])
    r = layers.Relu()
    with pytest.raises(ValueError, match="layer 2 .*same object as layer 0"):
        layers.Model([r, layers.Linear(3), r])


def test_model_none_or_empty_is_refused_at_construction():
    with pytest.raises(TypeError, match="Model: layers must be a list of layers"):
        layers.Model(None)
    with pytest.raises(ValueError, match="Model: the layer list is empty"):
        layers.Model([])


def _train_both(model, x, y, epochs=4):
    """Train fastbp ``model`` and its reference twin with SGD; compare weights, history."""
    ref = _reference_of(model)
    got = model.train(x, y, optim=optim.SGD(lr=0.05), loss=loss.MSE(), epochs=epochs,
                      verbose=False)
    want = ref.train(x, y, optim=RO.SGD(lr=0.05), loss=RL.MSE(), epochs=epochs)
    assert_close(got, want, np.float64)
    for a, b in zip(_linear_weights(model), _linear_weights(ref)):
        assert_close(a, b, np.float64)
    assert_close(model.predict(x), ref(x), np.float64)
    np.testing.assert_array_equal(model.predict(x), model(x))


def test_a_linear_replaced_after_training_is_the_one_trained():
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    m.train(x, y, optim=optim.SGD(lr=0.05), epochs=3, verbose=False)
    old = m.layers[0]
    m.layers[0] = _linear(4, 3, 7)
    _train_both(m, x, y)
    assert np.shares_memory(m.layers[0].w, m.params)
    assert not np.shares_memory(old.w, m.params)
    layers.Model([old])  # taken out of m: free for another model
    other = layers.Model([_linear(4, 3, 3), layers.Tanh(), _linear(2, 4, 4)])
    m.layers[2] = other.layers[2]      # a Linear of another model, put in by hand
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\(2\)\) already belongs to "
                                         r"another Model"):
        m.predict(x)


def test_layers_appended_or_removed_after_training_rebuild_the_buffers():
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(3, 4, 1)])
    m.train(x, y[:, :1].repeat(3, 1), epochs=2, verbose=False)
    m.layers += [layers.Tanh(), _linear(2, 3, 2)]      # append, already built
    _train_both(m, x, y)
    assert m.params.size == (3 * 4 + 4) + (4 * 3 + 3) + (3 * 2 + 2)
    m.layers.append(layers.Linear(2))                  # append, built by the next call
    np.random.seed(3)
    assert m.predict(x).shape == (len(x), 2)
    _train_both(m, x, y)
    del m.layers[-2:]                                  # remove
    del m.layers[-1]
    _train_both(m, x, y[:, :1].repeat(3, 1))
    assert m.params.size == (3 * 4 + 4) + (4 * 3 + 3)


def test_a_linear_rebuilt_in_place_is_gathered_into_the_buffers_again():
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    m.train(x, y, epochs=2, verbose=False)
    m.layers[0].build(3)                 # new weights in a buffer of the layer's own
    m.layers[0].w = np.full((3, 4), 0.1)
    _train_both(m, x, y)
    assert np.shares_memory(m.layers[0].w, m.params)


def test_a_stateful_optimizer_refuses_a_model_whose_layers_changed():
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    m.train(x, y, optim=opt, epochs=2, verbose=False)
    m.layers[0] = _linear(4, 3, 5)
    with pytest.raises(ValueError, match="parameters were rebuilt.*new optimizer"):
        m.train(x, y, optim=opt, epochs=1, verbose=False)


# ================================= 3. the fused pairs agree with the reference at saturation

def _saturated_pair(out_layer, n_out, dtype=np.float64):
    lin = layers.Linear(n_out)
    lin.build(2, dtype)
    lin.w = [[40.0, -40.0], [0.0, 0.0]] if n_out == 2 else [[40.0], [0.0]]
    lin.b = np.zeros(n_out)
    return layers.Model([lin, out_layer()], dtype=dtype)


@pytest.mark.parametrize("out_layer, the_loss, y, want", [
    (layers.Softmax, "CategoricalCrossentropy", [[0, 1]], [[39.9, -39.9], [0, 0]]),
    (layers.Sigmoid, "BinaryCrossentropy", [[0]], [[39.9], [0]]),
])
@pytest.mark.parametrize("route", ["plan", "layerwise", "reference"])
def test_one_sgd_step_at_saturation_is_p_minus_y(out_layer, the_loss, y, want, route):
    """p = softmax([40, -40]) = [1, 4e-35] against y = [0, 1]: the gradient w.r.t. the
    logits is p - y = [1, -1], so w[0] moves by 0.1 (the clipped loss would give ~0)."""
    x, y = np.array([[1.0, 0.0]]), np.array(y, np.float64)
    m = _saturated_pair(out_layer, y.shape[1])
    if route == "reference":
        ref = _reference_of(m)
        ref.train(x, y, optim=RO.SGD(lr=0.1), loss=getattr(RL, the_loss)(), epochs=1)
        w = ref.layers[0].w
    else:
        opt = optim.SGD(lr=0.1) if route == "plan" else LayerwiseSGD(lr=0.1)
        m.train(x, y, optim=opt, loss=getattr(loss, the_loss)(), epochs=1, verbose=False)
        w = m.layers[0].w
    np.testing.assert_allclose(w, want, rtol=1e-12, atol=1e-12)


def _saturated_net(dtype):
    rng = np.random.default_rng(3)
    return layers.Model([layers.Linear(30, init="he", rng=rng), layers.Relu(),
                         layers.Linear(20, init="he", rng=rng), layers.Relu(),
                         layers.Linear(4, init="he", rng=rng), layers.Softmax()], dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_saturated_softmax_net_trains_alike_on_plan_layerwise_and_reference(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 6)) * 30       # logits in the hundreds: p < eps is common
    y = np.eye(4)[rng.integers(0, 4, 64)]
    nets = [_saturated_net(dtype) for _ in range(2)]
    probs = nets[0].predict(x)
    assert (probs < RL.clip_eps(dtype)).mean() > 0.2   # saturated from the start
    ref = _reference_of(nets[0])
    kw = dict(loss=loss.CategoricalCrossentropy(), epochs=20, batch_size=16, seed=0,
              verbose=False)
    h_plan = nets[0].train(x, y, optim=optim.SGD(lr=1e-3), **kw)
    h_slow = nets[1].train(x, y, optim=LayerwiseSGD(lr=1e-3), **kw)
    h_ref = ref.train(x, y, optim=RO.SGD(lr=1e-3), loss=RL.CategoricalCrossentropy(),
                      epochs=20, batch_size=16, seed=0)
    assert_close(h_plan, h_ref, dtype)
    assert_close(h_slow, h_ref, dtype)
    for a, b, c in zip(_linear_weights(nets[0]), _linear_weights(nets[1]),
                       _linear_weights(ref)):
        assert_close(a, c, dtype)
        assert_close(b, c, dtype)
    assert h_ref[-1] < 0.5 * h_ref[0]   # and the saturated net does learn


# ================================================ 4. optimizer state bound to its model

@pytest.mark.parametrize("name", ["Momentum", "RMSProp", "Adam"])
def test_a_stateful_optimizer_refuses_a_second_model_like_the_reference(name):
    x, y = _data()
    a = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    b = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    ra, rb = _reference_of(a), _reference_of(b)
    opt, ropt = getattr(optim, name)(lr=0.01), getattr(RO, name)(lr=0.01)
    a.train(x, y, optim=opt, epochs=2, verbose=False)
    ra.train(x, y, optim=ropt, epochs=2)
    before = b.predict(x)
    with pytest.raises(ValueError, match=rf"{name}\(lr=0.01[,)].*already holds the state "
                                         rf"of another model.*one optimizer per model"):
        b.train(x, y, optim=opt, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="another model"):
        rb.train(x, y, optim=ropt, epochs=1)
    np.testing.assert_array_equal(b.predict(x), before)   # refused before any step
    mse = loss.MSE()
    mse(b(x), y)
    with pytest.raises(ValueError, match="another model"):
        opt(b, mse)                                   # called directly, as the original
    # reset() hands it to b, which then trains exactly as with a new optimizer
    opt.reset()
    b.train(x, y, optim=opt, epochs=3, verbose=False)
    fresh = getattr(RO, name)(lr=0.01)
    rb.train(x, y, optim=fresh, epochs=3)
    for p, q in zip(_linear_weights(b), _linear_weights(rb)):
        assert_close(p, q, np.float64)


def test_sgd_keeps_no_state_and_may_serve_several_models():
    x, y = _data()
    a = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    b = layers.Model([_linear(4, 3, 2), layers.Tanh(), _linear(2, 4, 3)])
    ra, rb = _reference_of(a), _reference_of(b)
    opt, ropt = optim.SGD(lr=0.1), RO.SGD(lr=0.1)
    for m, r in ((a, ra), (b, rb), (a, ra)):
        m.train(x, y, optim=opt, epochs=2, verbose=False)
        r.train(x, y, optim=ropt, epochs=2)
        for p, q in zip(_linear_weights(m), _linear_weights(r)):
            assert_close(p, q, np.float64)


def test_loaded_optimizer_state_must_match_the_model(tmp_path):
    x, y = _data()
    a = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    a.train(x, y, optim=opt, epochs=2, verbose=False)
    fastbp.save(a, tmp_path / "a.npz", opt)
    other = layers.Model([_linear(5, 3, 0), layers.Tanh(), _linear(2, 5, 1)])
    with pytest.raises(ValueError, match="state is for 26 parameters, the model has 32"):
        other.train(x, y, optim=fastbp.load_optimizer(tmp_path / "a.npz"), epochs=1,
                    verbose=False)
    resumed = fastbp.load(tmp_path / "a.npz")    # the matching model resumes exactly
    resumed.train(x, y, optim=fastbp.load_optimizer(tmp_path / "a.npz"), epochs=2,
                  verbose=False)
    a.train(x, y, optim=opt, epochs=2, verbose=False)
    np.testing.assert_array_equal(resumed.params, a.params)


def test_save_refuses_optimizer_state_that_load_could_not_read_back(tmp_path):
    """State of another dtype (load refuses such a file) or of another model is refused
    before anything is written: a good file already at the path stays as it was."""
    x, y = _data()
    trained = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    trained.train(x, y, optim=opt, epochs=2, verbose=False)
    fastbp.save(trained, tmp_path / "good.npz", opt)
    before = (tmp_path / "good.npz").read_bytes()
    same_layout32 = layers.Model([_linear(4, 3, 0, np.float32), layers.Tanh(),
                                  _linear(2, 4, 1, np.float32)], dtype=np.float32)
    with pytest.raises(ValueError, match=r"Adam\(lr=0.01, .*\) has trained another model "
                                         r"\(2 steps"):
        fastbp.save(same_layout32, tmp_path / "good.npz", opt)
    loaded = fastbp.load_optimizer(tmp_path / "good.npz")   # bound to no model yet
    with pytest.raises(ValueError, match=r"holds float64 state, the model is float32"):
        fastbp.save(same_layout32, tmp_path / "good.npz", loaded)
    assert (tmp_path / "good.npz").read_bytes() == before
    back = fastbp.load(tmp_path / "good.npz")
    np.testing.assert_array_equal(back.params, trained.params)
    with pytest.raises(TypeError, match=r"the first argument must be a fastbp Model, got str"):
        fastbp.save("hello", tmp_path / "h.npz")


# ============================================================ 5. predict from many threads

THREADS_CODE = """
    import threading
    import numpy as np
    from fastbp import layers, loss

    class Tanh2(layers.Activation):
        def __call__(self, x):
            self.out = np.tanh(x)
            return self.out
        def backward(self, g):
            return g * (1 - self.out ** 2)

    rng = np.random.default_rng(0)
    for act in (layers.Tanh, Tanh2):   # compiled plan, then layer by layer
        m = layers.Model([layers.Linear(256, init="he", rng=rng), act(),
                          layers.Linear(256, init="he", rng=rng), layers.Relu(),
                          layers.Linear(10, rng=rng), layers.Softmax()])
        xs = [rng.standard_normal((200 + 37 * i, 64)) for i in range(4)]
        ys = [np.eye(10)[rng.integers(0, 10, len(x))] for x in xs]
        serial = [m.predict(x) for x in xs]
        serial_loss = [m.evaluate(x, y, loss.CategoricalCrossentropy()) for x, y in zip(xs, ys)]
        shared_loss = loss.CategoricalCrossentropy()
        got, errors = {}, []

        def work(i):
            try:
                for r in range(20):
                    got[i, r] = (m.predict(xs[i]), m.evaluate(xs[i], ys[i], shared_loss))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        bad = sum(not np.array_equal(p, serial[i]) or v != serial_loss[i]
                  for (i, r), (p, v) in got.items())
        print(act.__name__, bad, len(got))
"""


def test_predict_and_evaluate_from_four_threads_equal_serial_results_exactly(tmp_path):
    out = _child(tmp_path, THREADS_CODE).split()
    assert out == ["Tanh", "0", "80", "Tanh2", "0", "80"]
    # model(x) keeps activations for backward: its docstring says it is not thread-safe
    assert "not thread-safe" in " ".join(layers.Model.__call__.__doc__.split())
    assert "many threads" in " ".join(layers.Model.predict.__doc__.split())


# ================================================== 6. what determinism holds, in float32

FLOAT32_CODE = """
    import hashlib
    import numpy as np
    from fastbp import layers, loss, optim

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 256)]
    net = layers.Model([layers.Linear(512, init="he", rng=rng), layers.Relu(),
                        layers.Linear(10, rng=rng), layers.Softmax()], dtype=np.float32)
    net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=2,
              batch_size=128, seed=0, verbose=False)
    print(hashlib.sha256(net.params.tobytes()).hexdigest())
"""


def test_float32_is_bitwise_repeatable_for_a_fixed_blas_thread_count(tmp_path):
    blas = ["1", "1", "2", "2"]   # two processes per BLAS thread count, all at once
    envs = [{"OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OMP_NUM_THREADS": n}
            for n in blas]
    runs = run_scripts([textwrap.dedent(FLOAT32_CODE)] * 4, tmp_path, envs)
    assert runs[0] == runs[1] and runs[2] == runs[3], runs


# ========================================= 7. loss and val_loss per sample, on one scale

@pytest.mark.parametrize("make_loss, out", [(loss.CategoricalCrossentropy, layers.Softmax),
                                            (loss.BinaryCrossentropy, layers.Sigmoid),
                                            (loss.MSE, layers.Sigmoid)])
def test_loss_and_val_loss_are_both_per_sample(make_loss, out):
    """Full batch with the training set as validation set: the loss of epoch e + 1 is taken
    before its update, so it is the validation loss after epoch e, on the same scale."""
    x, y = _data(n=40)
    m = layers.Model([_linear(5, 3, 0), layers.Tanh(), _linear(2, 5, 1), out()])
    ref = _reference_of(m)
    first = make_loss()(ref(x), y)   # the reference's loss of the untrained model
    h = m.train(x, y, optim=optim.SGD(lr=0.01), loss=make_loss(), epochs=4,
                validation_data=(x, y), verbose=False)
    assert_close(h[1:], h.history["val_loss"][:-1], np.float64)
    scale = 1 if make_loss is loss.MSE else len(x)
    assert_close(h[0], first / scale, np.float64)


def test_minibatch_epoch_loss_is_the_mean_over_samples_like_the_reference():
    x, y = _data(n=50)   # batches of 16, 16, 16, 2
    m = layers.Model([_linear(5, 3, 0), layers.Tanh(), _linear(2, 5, 1), layers.Softmax()])
    ref = _reference_of(m)
    h = m.train(x, y, optim=optim.SGD(lr=0.01), loss=loss.CategoricalCrossentropy(),
                epochs=3, batch_size=16, seed=2, verbose=False)
    hr = ref.train(x, y, optim=RO.SGD(lr=0.01), loss=RL.CategoricalCrossentropy(),
                   epochs=3, batch_size=16, seed=2)
    assert_close(h, hr, np.float64)
    assert 0.3 < h[0] < 3   # per sample: about log(2) for two classes, not 16 * that


# ====================================================================== 12. API misuse

@pytest.mark.parametrize("kwargs, match", [
    (dict(optim=optim.SGD), r"optim must be an instance, not the class SGD; pass an "
                            r"instance, e.g. optim.SGD\(lr=0.01\)"),
    (dict(optimizer=optim.Adam), r"not the class Adam.*optim.SGD\(lr=0.01\)"),
    (dict(loss=loss.MSE), r"loss must be an instance, not the class MSE.*loss.MSE\(\)"),
])
def test_classes_instead_of_instances_are_refused_with_the_fix(kwargs, match):
    x, y = _data()
    with pytest.raises(TypeError, match=match):
        layers.Model([layers.Linear(2)]).train(x, y, epochs=1, verbose=False, **kwargs)
    with pytest.raises(TypeError, match=r"^evaluate: loss must be an instance.*loss.MSE\(\)"):
        layers.Model([layers.Linear(2)]).evaluate(x, y, loss=loss.MSE)


@pytest.mark.parametrize("seed, error", [("abc", TypeError), (-1, ValueError)])
def test_a_bad_seed_names_train_and_what_a_seed_can_be(seed, error):
    x, y = _data()
    with pytest.raises(error, match=r"^train: seed must be None, an integer >= 0, or a "
                                    r"NumPy Generator or SeedSequence, got "):
        layers.Model([layers.Linear(2)]).train(x, y, batch_size=4, seed=seed, verbose=False)


class _FortranLayer(layers.Layer):
    """A custom Linear whose w is Fortran-ordered."""

    def __init__(self, w):
        self.w = np.asfortranarray(w)
        self.b = np.zeros(w.shape[1])

    def __call__(self, x):
        self.x = x
        return x @ self.w + self.b

    def backward(self, g):
        self.w_gradient, self.b_gradient = self.x.T @ g, g.sum(0)
        return g @ self.w.T


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_custom_layer_with_fortran_ordered_w_is_updated_like_the_reference(name):
    x, y = _data()
    w = np.random.default_rng(5).standard_normal((3, 2))
    m = layers.Model([_FortranLayer(w)])
    ref = R.Model([R.Linear(2)])
    ref.layers[0].w, ref.layers[0].b, ref.layers[0].initialized = w.copy(), np.zeros(2), True
    h = m.train(x, y, optim=getattr(optim, name)(lr=0.05), epochs=3, verbose=False)
    hr = ref.train(x, y, optim=getattr(RO, name)(lr=0.05), epochs=3)
    assert_close(h, hr, np.float64)
    assert_close(m.layers[0].w, ref.layers[0].w, np.float64)
    assert not np.allclose(m.layers[0].w, w)


def test_a_custom_layer_with_a_strided_w_is_refused_about_memory_order():
    x, y = _data()
    layer = _FortranLayer(np.zeros((3, 2)))
    layer.w = np.zeros((3, 4))[:, ::2]
    with pytest.raises(TypeError, match=r"w that is not contiguous in memory.*"
                                        r"np.ascontiguousarray"):
        layers.Model([layer]).train(x, y, epochs=1, verbose=False)


class _ScaleLayer(layers.Layer):
    """y = x * w + b for one feature; ``edit(layer)`` breaks it after construction."""

    def __init__(self, edit=None):
        self.w, self.b = np.ones((1, 1)), np.zeros(1)
        self.edit = edit

    def __call__(self, x):
        self.x = x
        return x * self.w + self.b

    def backward(self, g):
        self.w_gradient = np.sum(g * self.x, keepdims=True)
        self.b_gradient = g.sum(0)
        if self.edit:
            self.edit(self)
        return g * self.w


@pytest.mark.parametrize("edit, error, match", [
    # Python numbers and lists were updated as copies, so the layer never trained.
    (lambda s: setattr(s, "w", 1.0), TypeError, r"layer 0 \(_ScaleLayer\): w is a float, "
                                                r"which the optimizer cannot update in place"),
    (lambda s: setattr(s, "w", [[1.0]]), TypeError, r"w is a list, which the optimizer"),
    (lambda s: setattr(s, "b_gradient", np.ones((2, 3))), ValueError,
     r"b_gradient has shape \(2, 3\), which does not fit b's shape \(1,\)"),
    (lambda s: setattr(s, "w_gradient", np.ones((1, 1)) * 1j), TypeError,
     r"w_gradient must be real numbers, got dtype complex128"),
    (lambda s: delattr(s, "b_gradient"), AttributeError,
     r"backward did not set b_gradient"),
    (lambda s: delattr(s, "b"), AttributeError,
     r"a Layer without a parameter 'b'; a layer with no parameters should subclass "
     r"layers.Activation"),
], ids=["w-float", "w-list", "b_gradient-shape", "w_gradient-complex", "no-b_gradient",
        "no-b"])
def test_a_custom_layer_the_optimizer_cannot_update_is_refused_by_name(edit, error, match):
    x, y = _data()
    x = x[:, :1]
    with pytest.raises(error, match=match):
        layers.Model([_ScaleLayer(edit)]).train(x, 3 * x, epochs=1, verbose=False)


def test_a_custom_layer_with_array_parameters_trains_like_the_reference():
    """The same layer, unbroken, trains: the refusals above are about the values only."""
    x, _ = _data()
    x = x[:, :1]
    layer = _ScaleLayer()
    h = layers.Model([layer]).train(x, 3 * x, optim=optim.SGD(lr=0.005), epochs=20,
                                    verbose=False)
    # By hand: the original MSE gradient is 2 e / O per element (O = 1 output here), not
    # divided by the rows, so dL/dw = sum(2 e x) and dL/db = sum(2 e).
    w, b = 1.0, 0.0
    for _ in range(20):
        e = x * w + b - 3 * x
        w, b = w - 0.005 * float(np.sum(2 * e * x)), b - 0.005 * float(np.sum(2 * e))
    np.testing.assert_allclose([layer.w[0, 0], layer.b[0]], [w, b], rtol=1e-12)
    assert h[-1] < h[0]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, 1, float("nan"), "0.2", True])
def test_digits_refuses_a_test_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"digits: test_fraction must be a number in \[0, 1\)"):
        data.digits(test_fraction=fraction)


# ============================================ 9. loading validates before it reads anything

def _saved(tmp_path, with_optimizer=True, dtype=np.float64):
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0, dtype), layers.Tanh(), _linear(2, 4, 1, dtype),
                      layers.Softmax()], dtype=dtype)
    opt = optim.Adam(lr=0.01)
    m.train(x, y, optim=opt, loss=loss.CategoricalCrossentropy(), epochs=2, verbose=False)
    path = tmp_path / "good.npz"
    fastbp.save(m, path, opt if with_optimizer else None)
    return path


def _entries(path):
    """{entry name: array} of an .npz, read with NumPy itself (the test's own reader)."""
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _meta(entries):
    return json.loads(entries["__fastbp__"].tobytes().decode())


def _rewrite(tmp_path, entries, meta=None, name="bad.npz"):
    entries = dict(entries)
    if meta is not None:
        entries["__fastbp__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / name, **entries)
    return tmp_path / name


def _refused(path, match, optimizer=None):
    with pytest.raises(fastbp.ModelFileError, match=match):
        fastbp.load(path, optimizer)


def test_a_npy_file_and_a_text_file_get_a_clear_model_file_error(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    _refused(tmp_path / "a.npy", "is a single .npy array, not a fastbp model file")
    (tmp_path / "t.npz").write_text("just some text\n")
    with pytest.raises(fastbp.ModelFileError, match="not a fastbp model file") as info:
        fastbp.load(tmp_path / "t.npz")
    assert "pickle" not in str(info.value)
    (tmp_path / "e.npz").write_bytes(b"")
    _refused(tmp_path / "e.npz", "not a fastbp model file")
    with pytest.raises(fastbp.ModelFileError, match="not a fastbp model file"):
        fastbp.load_optimizer(tmp_path / "t.npz")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["layers"][0].update(units="abc"), r"layer 0 \(Linear\) units must be an "
                                                   r"integer >= 1, got 'abc'"),
    (lambda m: m["layers"][0].update(units=0), "units must be an integer >= 1, got 0"),
    (lambda m: m["layers"][0].update(n_in=2.5), "n_in must be an integer >= 1, got 2.5"),
    (lambda m: m["layers"][0].update(init="magic"), "init 'magic' is not one of"),
    (lambda m: m["layers"][1].update(type="Gelu"), "unknown layer type 'Gelu' at layer 1"),
    (lambda m: m["layers"].append(7), "malformed architecture: layer 4 is 7"),
    (lambda m: m.update(layers=[]), "'layers' must be a non-empty list"),
    (lambda m: m.update(dtype="int8"), "dtype 'int8' is not float32 or float64"),
    (lambda m: m.update(version=2), "format version 2 is not supported"),
    (lambda m: m["optimizer"].update(type="Lion"), "unknown optimizer 'Lion'"),
    (lambda m: m["optimizer"].update(t=-1), "t must be an integer >= 0, got -1"),
    (lambda m: m["optimizer"]["hyper"].update(lr="fast"), "Adam hyper-parameters must be"),
    (lambda m: m["optimizer"]["hyper"].update(beta1=2.0), r"bad Adam hyper-parameters"),
    (lambda m: m["optimizer"].update(state={"flat": 5}), r"Adam state must be"),
    (lambda m: m["optimizer"].update(state={"0.w": 2}), r"Adam state must be"),
])
def test_hand_edited_architectures_are_refused_with_model_file_error(tmp_path, edit, match):
    entries = _entries(_saved(tmp_path))
    meta = _meta(entries)
    edit(meta)
    path = _rewrite(tmp_path, entries, meta)
    _refused(path, match)
    with pytest.raises(fastbp.ModelFileError, match=match):
        fastbp.load_optimizer(path)


def test_inconsistent_widths_are_refused_at_load_not_at_predict(tmp_path):
    entries = _entries(_saved(tmp_path, with_optimizer=False))
    meta = _meta(entries)
    meta["layers"][2].update(n_in=5)
    entries["layer2.w"] = np.zeros((5, 2))
    _refused(_rewrite(tmp_path, entries, meta), r"layer 2 \(Linear\) takes 5 inputs but the "
                                                r"layer before it gives 4")


def test_a_huge_architecture_in_a_small_file_allocates_nothing(tmp_path):
    entries = _entries(_saved(tmp_path, with_optimizer=False))
    meta = _meta(entries)
    meta["layers"] = [{"type": "Linear", "units": 10**6, "n_in": 10**6}]
    path = _rewrite(tmp_path, {"__fastbp__": entries["__fastbp__"],
                               "layer0.w": entries["layer0.w"],
                               "layer0.b": entries["layer0.b"]}, meta)
    assert path.stat().st_size < 4000
    _refused(path, r"'layer0.w' has shape \(3, 4\) and dtype float64, the architecture "
                   r"needs \(1000000, 1000000\)")


def _header_claiming(path, name, shape):
    """Rewrite ``path`` so entry ``name`` has a .npy header claiming ``shape`` (8 bytes of
    data), keeping its other entries."""
    entries = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            entries[info.filename] = zf.read(info)
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    entries[name] = buf.getvalue() + b"\x00" * 8
    with zipfile.ZipFile(path, "w") as zf:
        for entry, raw in entries.items():
            zf.writestr(entry, raw)


def test_an_entry_whose_header_claims_1e12_floats_is_refused_without_reading(tmp_path):
    path = _saved(tmp_path)
    entries = _entries(path)
    meta = _meta(entries)
    meta["layers"][0].update(n_in=10**6, units=10**6)
    meta["layers"][2].update(n_in=10**6)
    meta.pop("optimizer")
    path = _rewrite(tmp_path, {k: v for k, v in entries.items() if not k.startswith("opt")},
                    meta)
    _header_claiming(path, "layer0.w.npy", (10**6, 10**6))
    _refused(path, r"'layer0.w' declares \d+ bytes, its header and data take 8000000000")


def test_a_zip_bomb_in_an_unused_entry_is_refused_before_it_is_inflated(tmp_path):
    path = _saved(tmp_path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.npy", "w", force_zip64=True) as f:
            zero = bytes(1 << 20)
            for _ in range(64):           # 64 MB of zeros, about 64 KB compressed
                f.write(zero)
    assert path.stat().st_size < 2_000_000
    _refused(path, r"unexpected entries \['bomb.npy'\]")


def test_a_bomb_in_a_named_entry_is_refused_by_its_size(tmp_path):
    """bzip2 packs zeros far tighter than any real weights: 32 MB from a few hundred bytes
    is refused from the sizes alone (fastbp itself writes entries uncompressed)."""
    n = 2048
    meta = _meta(_entries(_saved(tmp_path, with_optimizer=False)))
    meta["layers"] = [{"type": "Linear", "units": n, "n_in": n, "init": "uniform"}]
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
        for name, arr in (("__fastbp__", np.frombuffer(json.dumps(meta).encode(), np.uint8)),
                          ("layer0.w", np.zeros((n, n))), ("layer0.b", np.zeros(n))):
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(f"{name}.npy", buf.getvalue())
    assert path.stat().st_size < 10_000
    _refused(path, rf"'layer0.w' claims {n * n * 8} bytes from \d+ stored")


def test_a_misshapen_optimizer_state_array_is_refused_at_load(tmp_path):
    entries = _entries(_saved(tmp_path))
    entries["optim.flat.0"] = entries["optim.flat.0"][:-1]
    path = _rewrite(tmp_path, entries)
    with pytest.raises(fastbp.ModelFileError, match=r"'optim.flat.0' has shape \(25,\)"):
        fastbp.load_optimizer(path)
    _refused(path, r"'optim.flat.0' has shape \(25,\)", optim.Adam())
    _refused(path, r"'optim.flat.0' has shape \(25,\)")   # also when only the model is read


def test_extra_entries_are_refused(tmp_path):
    entries = _entries(_saved(tmp_path))
    entries["notes"] = np.zeros(3)
    _refused(_rewrite(tmp_path, entries), r"unexpected entries \['notes.npy'\]")


# ============================================= 10. saving: mode, symbolic links, messages

def test_a_saved_file_gets_the_mode_np_save_gives(tmp_path):
    m = layers.Model([_linear(2, 3, 0)])
    old = os.umask(0o027)
    try:
        fastbp.save(m, tmp_path / "a.npz")
        np.save(tmp_path / "b.npy", np.ones(1))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.npz").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.npy").stat().st_mode) == 0o640
    os.chmod(tmp_path / "a.npz", 0o604)          # an existing file keeps its mode
    fastbp.save(m, tmp_path / "a.npz")
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o604


def test_saving_over_a_symbolic_link_writes_its_target(tmp_path):
    x, _ = _data()
    m = layers.Model([_linear(2, 3, 0)])
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.npz"
    fastbp.save(layers.Model([_linear(2, 3, 9)]), target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    fastbp.save(m, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(fastbp.load(target).predict(x), m.predict(x))
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz"]   # no temporary left


def test_save_errors_name_the_path_asked_for(tmp_path):
    m = layers.Model([_linear(2, 3, 0)])
    path = tmp_path / "no-such-folder" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        fastbp.save(m, path)
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)


# ======================================================= 11. the command line's messages

def _cli(capsys, *args):
    """(exit code, stdout, stderr) of ``fastbp args`` run in this process."""
    from fastbp import cli
    try:
        code = cli.main(list(args)) or 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, match", [
    (("xor", "--epochs", "0"), "argument --epochs: must be an integer >= 1, got 0"),
    (("xor", "--seed", "-1"), "argument --seed: must be an integer >= 0, got -1"),
    (("train", "digits", "--batch-size", "0"), "--batch-size: must be an integer >= 1"),
    (("train", "digits", "--lr", "0"), "argument --lr: must be a finite number > 0, got 0"),
    (("train", "digits", "--lr", "nan"), "argument --lr: must be a finite number > 0, got nan"),
    (("train", "digits", "--lr", "fast"), "argument --lr: 'fast' is not a number"),
    (("train", "spirals", "--seed", "-1"), "argument --seed: must be an integer >= 0"),
    (("bench", "--rounds", "-2"), "argument --rounds: must be an integer >= 1, got -2"),
    (("bench", "--rounds", "0"), "argument --rounds: must be an integer >= 1, got 0"),
    (("train", "spirals", "--plot", "no-such-folder/c.png"), "--plot no-such-folder/c.png: "
                                                            "cannot write there"),
    # It trained fully, then lost the model to a FileNotFoundError traceback.
    (("train", "spirals", "--save", "no-such-folder/m.npz"), "--save no-such-folder/m.npz: "
                                                            "cannot write there"),
    # These trained fully, then ended in a traceback (or overwrote the saved model).
    (("train", "spirals", "--plot", "c.xyz"), "--plot c.xyz: cannot write a .xyz file"),
    (("train", "spirals", "--save", "m.png", "--plot", "m.png"),
     "--save and --plot name the same file (m.png)"),
    # A traceback from NumPy's legacy seeding.
    (("xor", "--seed", str(2**32)), "argument --seed: must be an integer <= 4294967295"),
    (("bench", "nosuch"), "fastbp bench: error: unknown workload(s) nosuch; choose from xor"),
])
def test_bad_command_line_values_are_usage_errors(capsys, tmp_path, monkeypatch, args,
                                                 match):
    monkeypatch.chdir(tmp_path)   # relative paths land here, should a command run
    code, out, err = _cli(capsys, *args)
    assert code == 2 and match in err and "Traceback" not in err, err
    assert out == ""   # refused before any training or benchmark ran


def test_digits_without_scikit_learn_is_a_usage_error_before_training(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)   # as if it were not installed
    code, out, err = _cli(capsys, "train", "digits", "--epochs", "1")
    assert code == 2 and "Traceback" not in err and out == ""
    assert 'the digits data set ships with scikit-learn: pip install "fastbp[digits]"' in err


def test_a_plot_path_without_a_suffix_is_written_exactly_there_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    from fastbp import cli
    from fastbp.training import History
    history = History()
    history += [1.0, 0.5]
    history.history.update(val_loss=[1.1, 0.6], val_accuracy=[0.5, 0.7])
    cli._plot(history, str(tmp_path / "curve"))   # matplotlib alone wrote curve.png
    assert os.listdir(tmp_path) == ["curve"]
    assert (tmp_path / "curve").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_divergence_on_the_command_line_is_one_line_and_a_non_zero_exit(capsys):
    code, out, err = _cli(capsys, "train", "spirals", "--quiet", "--epochs", "3",
                          "--lr", "1e30")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("fastbp: train: the loss became nan at epoch 1") and "diverged" in err


def test_training_that_made_the_loss_worse_warns_and_the_batch_shown_is_effective(capsys):
    code, out, err = _cli(capsys, "train", "spirals", "--quiet", "--epochs", "5",
                          "--optimizer", "sgd", "--lr", "3")
    first, last = (float(v) for v in re.search(r"loss rose from ([0-9.]+) \(epoch 1\) to "
                                               r"([0-9.]+) \(epoch 5\)", err).groups())
    assert code == 0 and last > first and len(err.strip().splitlines()) == 1
    code, out, err = _cli(capsys, "train", "spirals", "--quiet", "--epochs", "2",
                          "--batch-size", "100000")
    assert code == 0 and "batch 240," in out and "100000" not in out   # 240 training rows


# ====================================== audit 4: files, optimizer state, one model, threads

def _saved_adam(tmp_path):
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    m.train(x, y, optim=opt, epochs=2, verbose=False)
    path = tmp_path / "m.npz"
    fastbp.save(m, path, opt)
    return path


def _rewritten(path, edit_meta=None, text=None):
    """A copy of a model file with its architecture JSON edited (or replaced by text)."""
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    meta = json.loads(entries["__fastbp__"].tobytes())
    if edit_meta is not None:
        edit_meta(meta)
    entries["__fastbp__"] = np.frombuffer((text or json.dumps(meta)).encode(), np.uint8)
    out = path.with_name("edited.npz")
    np.savez(out, **entries)
    return out


def _set(keys, value):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, text", [
    (_set(["layers", 0, "n_in"], 2 ** 70), None),          # was OverflowError (int64)
    (_set(["layers", 0, "n_in"], 2 ** 62), None),          # int64 product wrapped to 0
    (_set(["optimizer", "state"], {"flat": 2.0}), None),    # was TypeError from range()
    (_set(["optimizer", "hyper", "lr"], 10 ** 400), None),  # was TypeError from isfinite
    (_set(["optimizer", "type"], ["Adam"]), None),          # was TypeError: unhashable
    (None, "[" * 100_000 + "]" * 100_000),                   # was RecursionError
])
def test_crafted_architecture_entries_raise_model_file_error(tmp_path, edit, text):
    bad = _rewritten(_saved_adam(tmp_path), edit, text)
    with pytest.raises(fastbp.ModelFileError, match=str(bad)):
        fastbp.load_optimizer(bad)


def test_a_corrupted_zip_directory_or_compressed_entry_is_a_model_file_error(tmp_path):
    path = _saved_adam(tmp_path)
    data_ = bytearray(path.read_bytes())
    central = data_.rfind(b"PK\x01\x02")
    data_[central + 6] ^= 0xFF   # "version needed to extract": zipfile's NotImplementedError
    (tmp_path / "flipped.npz").write_bytes(data_)
    with pytest.raises(fastbp.ModelFileError, match="corrupted"):
        fastbp.load(tmp_path / "flipped.npz")
    with np.load(path) as f:   # the same entries compressed: load reads such files too
        np.savez_compressed(tmp_path / "z.npz", **{k: f[k] for k in f.files})
    fastbp.load_optimizer(tmp_path / "z.npz")
    packed = (tmp_path / "z.npz").read_bytes()
    head = packed.find(b"PK\x03\x04")
    start = head + 30 + int.from_bytes(packed[head + 26:head + 28], "little") + \
        int.from_bytes(packed[head + 28:head + 30], "little")
    for i in range(start, start + 20):   # each byte of the first deflated stream
        broken = bytearray(packed)
        broken[i] ^= 0xFF
        (tmp_path / "zbad.npz").write_bytes(broken)
        with pytest.raises(fastbp.ModelFileError):   # was zlib.error for some bytes
            fastbp.load_optimizer(tmp_path / "zbad.npz")


def test_save_refuses_optimizer_state_that_training_would_refuse(tmp_path):
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    m.train(x, y, optim=opt, epochs=2, verbose=False)
    m.layers[2] = _linear(2, 4, 7)   # same shapes, new weights: the moments are stale
    with pytest.raises(ValueError, match="parameters were rebuilt"):
        m.train(x, y, optim=opt, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"save: Adam\(.*parameters were rebuilt"):
        fastbp.save(m, tmp_path / "m.npz", opt)
    assert not (tmp_path / "m.npz").exists()
    fastbp.save(m, tmp_path / "m.npz")   # the model alone is fine


def test_a_shared_sgd_is_saved_with_either_model_and_resumes_exactly(tmp_path):
    x, y = _data()
    sgd = optim.SGD(lr=0.1)
    a = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    b = layers.Model([_linear(7, 3, 2), layers.Tanh(), _linear(2, 7, 3)])
    a.train(x, y, optim=sgd, epochs=2, verbose=False)
    b.train(x, y, optim=sgd, epochs=2, verbose=False)
    fastbp.save(a, tmp_path / "a.npz", sgd)   # was "holds state for 37 parameters ..."
    resumed, opt = fastbp.load(tmp_path / "a.npz"), fastbp.load_optimizer(tmp_path / "a.npz")
    assert (type(opt), opt.lr, opt.t) == (optim.SGD, 0.1, sgd.t)
    resumed.train(x, y, optim=opt, epochs=3, verbose=False)
    a.train(x, y, optim=optim.SGD(lr=0.1), epochs=3, verbose=False)
    np.testing.assert_array_equal(resumed.params, a.params)


class _Gate(layers.Layer):
    """Identity with no parameters; its first forward waits until ``release`` is set."""

    def __init__(self):
        self.w, self.b = np.zeros((0, 0)), np.zeros(0)
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, x):
        self.entered.set()
        assert self.release.wait(60)
        return x

    def backward(self, g):
        self.w_gradient, self.b_gradient = np.zeros((0, 0)), np.zeros(0)
        return g


def test_one_model_trained_from_two_threads_at_once_is_refused():
    x, y = _data()
    gate = _Gate()
    m = layers.Model([_linear(4, 3, 0), gate, layers.Tanh(), _linear(2, 4, 1)])
    twin = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    first = threading.Thread(target=m.train, args=(x, y),
                             kwargs=dict(optim=optim.SGD(lr=0.1), epochs=2, verbose=False))
    first.start()
    assert gate.entered.wait(60)   # the first thread is inside train()
    with pytest.raises(RuntimeError, match="train: Model is already being trained"):
        m.train(x, y, optim=optim.SGD(lr=0.1), epochs=2, verbose=False)
    gate.release.set()
    first.join(60)
    # the refused call changed nothing: the weights are the first call's alone
    twin.train(x, y, optim=optim.SGD(lr=0.1), epochs=2, verbose=False)
    np.testing.assert_allclose(m.params, twin.params, rtol=1e-12)
    m.train(x, y, optim=optim.SGD(lr=0.1), epochs=1, verbose=False)   # free again


def test_load_state_dict_refuses_state_this_optimizer_cannot_continue():
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    opt = optim.Adam(lr=0.01)
    m.train(x, y, optim=opt, epochs=2, verbose=False)
    good = opt.state_dict()
    moments = good["state"]["flat"]
    for bad, match in [({"t": 2, "state": {"flat": moments[:1]}}, "list of 2 arrays"),
                       ({"t": -5, "state": {}}, "integer >= 0"),
                       ({"t": 2.5, "state": {}}, "integer >= 0"),
                       ({"t": 2, "state": {"flat": [a[:, None] for a in moments]}}, "1-D"),
                       ({"t": 2, "state": {"flat": [a.astype(int) for a in moments]}},
                        "float32 or float64"),
                       ({"t": 2}, "keys 't' and 'state'")]:
        fresh = optim.Adam(lr=0.01)
        with pytest.raises(ValueError, match=match):
            fresh.load_state_dict(bad)
        assert fresh.t == 0 and fresh.state == {}   # nothing half-loaded
    # float32 moments for a float64 model: refused at the first step, not zeroed
    fresh = optim.Adam(lr=0.01)
    fresh.load_state_dict({"t": 2, "state": {"flat": [a.astype(np.float32) for a in moments]}})
    with pytest.raises(ValueError, match="its state is float32, the model is float64"):
        m.train(x, y, optim=fresh, epochs=1, verbose=False)


def test_a_learning_rate_too_large_for_a_float_is_a_value_error():
    assert optim.SGD(lr=2 ** 64).lr == float(2 ** 64)   # was TypeError from np.isfinite
    with pytest.raises(ValueError, match=r"SGD: lr must be a finite number > 0"):
        optim.SGD(lr=10 ** 400)


def test_bytes_paths_and_bad_loss_eps_or_model_dtype_get_named_errors(tmp_path):
    x, y = _data()
    m = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    path = os.fsencode(tmp_path / "m.npz")
    fastbp.save(m, path)   # was "Can't mix bytes and non-bytes"; load: no attribute 'seek'
    for got, saved in zip(_linear_weights(fastbp.load(path)), _linear_weights(m)):
        np.testing.assert_array_equal(got, saved)
    with pytest.raises(ValueError, match=r"SquaredError: eps must be in \(0, 0.5\), got 'x'"):
        loss.SquaredError(eps="x")   # was a raw '<' TypeError
    with pytest.raises(TypeError, match="Model: dtype must be float32 or float64, got 'floaty'"):
        layers.Model([layers.Linear(2)], dtype="floaty")   # was NumPy's message alone


def test_a_custom_loss_that_returns_no_number_is_named():
    class TextLoss:
        def __call__(self, pred, y):
            self.pred, self.y = pred, y
            return "oops"

        def backward(self):
            return self.pred - self.y

    class ArrayLoss(TextLoss):
        def __call__(self, pred, y):
            super().__call__(pred, y)
            return np.asarray(0.5 * np.sum((pred - y) ** 2))   # 0-d: a number, accepted

    x, y = _data()
    m = layers.Model([_linear(2, 3, 0)])
    with pytest.raises(TypeError, match=r"train: TextLoss\(pred, y\) returned 'oops' \(str\)"):
        m.train(x, y, optim.SGD(lr=0.01), TextLoss(), epochs=1, verbose=False)
    history = m.train(x, y, optim.SGD(lr=0.01), ArrayLoss(), epochs=1, verbose=False)
    pred = x @ _linear(2, 3, 0).w + _linear(2, 3, 0).b   # the weights before the step
    assert history[0] == pytest.approx(0.5 * np.sum((pred - y) ** 2))


# ==================================== audit 5: the from-scratch user's scripts, drop-in

def test_gradients_a_caller_keeps_are_not_overwritten_by_the_next_backward():
    """The original made new gradient arrays on every backward; scripts that sum them over
    batches or keep them in a list rely on that (fastbp's are views into one buffer)."""
    x, y = _data(n=6)
    sums, kept = [], []
    for lib_layers, lib_loss in ((layers, loss), (R, RL)):
        rng = np.random.default_rng(3)
        net = lib_layers.Model([lib_layers.Linear(4, init="he", rng=rng), lib_layers.Tanh(),
                                lib_layers.Linear(2, init="he", rng=rng)])
        mse, total, saved = lib_loss.MSE(), None, []
        for i in range(3):   # by hand, one row at a time, as the series' scripts do
            mse(net(x[i:i + 1]), y[i:i + 1])
            g = mse.backward()
            for layer in reversed(net.layers):
                g = layer.backward(g)
            dw = net.layers[0].w_gradient
            total = dw if total is None else total + dw
            saved.append(net.layers[2].b_gradient)
        sums.append(total)
        kept.append(saved)
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-12)   # was 2 g1 + g2 + ... off
    for got, want in zip(*kept):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not np.allclose(kept[0][0], kept[0][2])   # three different rows' gradients
    # train() keeps them too, and the optimizer still reads the current ones
    net = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    twin = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1)])
    net.train(x, y, optim.Adam(lr=0.01), epochs=1, verbose=False)
    held = net.layers[0].w_gradient
    before = held.copy()
    net.train(x, y, optim.Adam(lr=0.01), epochs=2, verbose=False)
    np.testing.assert_array_equal(held, before)
    twin.train(x, y, optim.Adam(lr=0.01), epochs=1, verbose=False)
    twin.train(x, y, optim.Adam(lr=0.01), epochs=2, verbose=False)
    np.testing.assert_array_equal(net.params, twin.params)
    np.testing.assert_array_equal(net.layers[0].w_gradient, twin.layers[0].w_gradient)


def test_a_trained_model_deep_copies_and_pickles_into_an_independent_model():
    import copy
    import pickle
    x, y = _data()
    net = layers.Model([_linear(4, 3, 0), layers.Tanh(), _linear(2, 4, 1), layers.Softmax()])
    net.train(x, y, optim.SGD(lr=0.1), loss.CategoricalCrossentropy(), epochs=3,
              verbose=False)
    best = copy.deepcopy(net)   # the copy was refused: "already belongs to another Model"
    thawed = pickle.loads(pickle.dumps(net))   # was: cannot pickle 'weakref.ReferenceType'
    expected = net.predict(x)
    for twin in (best, thawed):
        np.testing.assert_array_equal(twin.predict(x), expected)
        twin.train(x, y, optim.SGD(lr=0.1), loss.CategoricalCrossentropy(), epochs=2,
                   verbose=False)
    np.testing.assert_array_equal(net.predict(x), expected)   # the original is untouched
    np.testing.assert_array_equal(best.predict(x), thawed.predict(x))
    assert not np.array_equal(best.predict(x), expected)
