"""Issue 6, reliability and safety: bad input fails with clear typed errors; every memory
layout gives the same bits and no input is modified; numerical extremes stay finite and
quiet; divergence is reported; threads, processes, thread counts and an unwritable cache
change no bit and crash nothing; random stacks match the reference; memory stays flat.

Whatever can crash the interpreter (threads, processes, the cache) runs in a child
process, with ``cwd=tmp_path`` so that the source folder ``fastbp/`` cannot shadow the
installed package.
"""
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastbp
from fastbp import kernels as K
from fastbp import layers, loss, optim
from fastbp.reference import layers as R
from fastbp.reference import loss as RL
from fastbp.reference import optim as RO
from conftest import LayerwiseSGD, assert_close, run_scripts

DTYPES = [np.float64, np.float32]


def _net(seed=0, dtype=np.float64, n_out=2, out=layers.Softmax):
    rng = np.random.default_rng(seed)
    return layers.Model([layers.Linear(6, init="he", rng=rng), layers.Tanh(),
                         layers.Linear(n_out, init="xavier", rng=rng), out()], dtype=dtype)


def _data(n=12, n_in=3, n_out=2, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), np.eye(n_out)[rng.integers(0, n_out, n)]


def _built(seed=0, dtype=np.float64):
    net = _net(seed, dtype)
    net(_data()[0])
    return net


def _raises(exc, match, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises ``exc`` with a message matching ``match``, from fastbp
    itself (never a Numba typing error)."""
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert not type(info.value).__module__.startswith("numba"), info.value
    assert "numba" not in str(info.value).lower(), info.value
    return info.value


def _child(tmp_path, code, env=None, timeout=180):
    """Run ``code`` in a fresh interpreter (``env``: variables to set, None to unset);
    fail the test if it does not exit cleanly."""
    full_env = dict(os.environ, PYTHONFAULTHANDLER="1")
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                         env=full_env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (f"child exited with {out.returncode}\n--- stdout\n"
                                 f"{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-5000:]}")
    return out.stdout


# ============================================================== 1. bad input, clear errors

def test_feature_count_not_matching_a_built_linear_names_layer_and_shapes():
    net = _built()
    before = net.params.copy()
    x5 = np.ones((4, 5))
    # (the layer by layer path and the compiled plan may word it differently)
    msg = r"Linear\(6\).*(input has 5 features.*built for 3|built for 3.*receives 5)"
    _raises(ValueError, msg, net, x5)
    _raises(ValueError, msg, net.predict, x5)
    _raises(ValueError, msg, net.predict, x5, batch_size=2)
    _raises(ValueError, msg, net.evaluate, x5, np.ones((4, 2)))
    _raises(ValueError, "(Linear|Model).*5", net.train, x5, np.ones((4, 2)), verbose=False)
    np.testing.assert_array_equal(net.params, before)  # nothing was trained
    alone = layers.Linear(3)
    alone(np.ones((2, 4)))
    _raises(ValueError, r"Linear\(3\): input has 7 features but this layer was built "
                        r"for 4 \(w has shape \(4, 3\)\)", alone, np.ones((2, 7)))


def test_after_training_another_input_width_is_refused_by_name_and_trains_nothing():
    # A trained model has a cached plan; train() then skips build() while the plan fits
    # the input width. Another width must still reach build()'s named error.
    net = _built()
    x, y = _data()
    net.train(x, y, epochs=1, verbose=False)
    assert net._plan is not None and net._plan.n_in == 3
    before = net.params.copy()
    _raises(ValueError, r"Linear\(6\): input has 5 features but this layer was built for 3",
            net.train, np.ones((4, 5)), np.ones((4, 2)), verbose=False)
    np.testing.assert_array_equal(net.params, before)


@pytest.mark.parametrize("bad", ["x", "y"])
def test_validation_data_of_the_wrong_width_is_refused_before_any_training(bad):
    net = _built()
    before = net.params.copy()
    x, y = _data()
    x_val = np.ones((4, 5)) if bad == "x" else x[:4]
    y_val = np.ones((4, 3)) if bad == "y" else y[:4]
    _raises(ValueError, r"validation_data.*(\(4, 5\)|\(4, 3\))", net.train, x, y, epochs=3,
            validation_data=(x_val, y_val), verbose=False)
    np.testing.assert_array_equal(net.params, before)


Y_SHAPE_CODE = """
    import json, sys
    import numpy as np
    from fastbp import layers, loss

    lf, out, n_out = {"mse": (loss.MSE, layers.Softmax, 2),
                      "cce": (loss.CategoricalCrossentropy, layers.Softmax, 2),
                      "bce": (loss.BinaryCrossentropy, layers.Sigmoid, 1)}[sys.argv[1]]
    rng = np.random.default_rng(0)
    net = layers.Model([layers.Linear(6, rng=rng), layers.Tanh(),
                        layers.Linear(n_out, rng=rng), out()])
    x = rng.standard_normal((12, 3))
    net(x)
    before = net.params.copy()
    bad_y = np.zeros((12, n_out + 2))
    report = {"name": lf.__name__, "n_out": n_out, "errors": []}
    for kwargs in ({"loss": lf()}, {"loss": lf(), "batch_size": 5, "seed": 0},
                   {"loss_fn": lf()}):
        try:
            net.train(x, bad_y, epochs=2, verbose=False, **kwargs)
            report["errors"].append("no error")
        except Exception as e:
            report["errors"].append(f"{type(e).__name__}: {e}")
    report["unchanged"] = bool(np.array_equal(net.params, before))
    print(json.dumps(report))
"""


Y_SHAPE_KINDS = ["mse", "cce", "bce"]


@pytest.fixture(scope="module")
def y_shape_reports(tmp_path_factory):
    """The children's reports, one per kind; the three run at once."""
    codes = ["import sys; sys.argv[1:] = [%r]\n" % kind + textwrap.dedent(Y_SHAPE_CODE)
             for kind in Y_SHAPE_KINDS]
    outs = run_scripts(codes, tmp_path_factory.mktemp("y_shape"), timeout=180)
    return {kind: json.loads(out.strip().splitlines()[-1])
            for kind, out in zip(Y_SHAPE_KINDS, outs)}


@pytest.mark.parametrize("kind", Y_SHAPE_KINDS)
def test_y_shape_differing_from_the_prediction_names_loss_and_shapes(kind, y_shape_reports):
    # train runs in a child: a kernel fed a y of the wrong width could corrupt memory.
    report = y_shape_reports[kind]
    name, n_out = report["name"], report["n_out"]
    msg = (rf"{name}: y has shape \(\d+, {n_out + 2}\) but the prediction has shape "
           rf"\(\d+, {n_out}\)")
    for error in report["errors"]:
        assert re.match("ValueError: " + msg, error), report
    assert report["unchanged"], report

    lf = getattr(loss, name)
    net = _net(n_out=n_out, out=layers.Sigmoid if kind == "bce" else layers.Softmax)
    x, _ = _data()
    bad_y = np.zeros((len(x), n_out + 2))
    _raises(ValueError, msg, net.evaluate, x, bad_y, lf())
    _raises(ValueError, msg, lf(), net(x), bad_y)
    _raises(ValueError, r"x has 12 rows but y has 11", net.train, x, bad_y[:11, :n_out],
            loss=lf(), verbose=False)


BAD_RANKS = [np.ones(3), np.ones((2, 3, 3)), np.float64(2.0)]


@pytest.mark.parametrize("bad", BAD_RANKS, ids=["1-D", "3-D", "0-D"])
def test_wrong_rank_is_refused_everywhere(bad):
    net = _built()
    shape = str(np.shape(bad)).replace("(", r"\(").replace(")", r"\)")
    for fn, who in [(net, "Model"), (net.predict, "predict"),
                    (layers.Relu(), "Relu"), (layers.Softmax(), "Softmax"),
                    (layers.Linear(2), "Linear")]:
        _raises(ValueError, rf"{who}: x must be 2-D \(batch, features\), got shape {shape}",
                fn, bad)
    _raises(ValueError, rf"train: x must be 2-D.*{shape}", net.train, bad, np.ones((3, 2)),
            verbose=False)
    _raises(ValueError, rf"train: y must be 2-D.*{shape}.*reshape\(-1, 1\)", net.train,
            np.ones((3, 3)), bad, verbose=False)
    _raises(ValueError, rf"MSE: pred must be 2-D.*{shape}", loss.MSE(), bad, bad)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_empty_batch_is_refused(shape):
    net = _built()
    empty = np.ones(shape)
    msg = rf"is empty \(shape \({shape[0]}, {shape[1]}\)\)"
    for fn in (net, net.predict, layers.Relu(), layers.Linear(2),
               lambda a: net.evaluate(a, a), lambda a: loss.CategoricalCrossentropy()(a, a)):
        _raises(ValueError, msg, fn, empty)
    _raises(ValueError, "train: x " + msg, net.train, empty, np.ones((shape[0], 2)),
            verbose=False)


NON_REAL = {"complex": np.ones((3, 3), complex), "object": np.ones((3, 3), object),
            "string": np.full((3, 3), "1.0"), "bytes": np.full((3, 3), b"1"),
            "datetime": np.zeros((3, 3), "M8[s]"), "structured": np.zeros((3, 3), "f8,f8")}


@pytest.mark.parametrize("name", NON_REAL)
def test_complex_object_and_string_arrays_are_refused_with_the_dtype(name):
    bad = NON_REAL[name]
    net = _built()
    dtype = str(bad.dtype).replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    msg = rf"x must hold real numbers \(int, bool or float\), got dtype {dtype}"
    for fn, who in [(net, "Model"), (net.predict, "predict"), (layers.Sigmoid(), "Sigmoid"),
                    (layers.Linear(2), "Linear")]:
        _raises(TypeError, f"{who}: {msg}", fn, bad)
    _raises(TypeError, f"train: {msg}", net.train, bad, np.ones((3, 2)), verbose=False)
    _raises(TypeError, "train: y must hold real numbers", net.train, np.ones((3, 3)),
            bad[:, :2], verbose=False)
    _raises(TypeError, "BinaryCrossentropy: y must hold real numbers",
            loss.BinaryCrossentropy(), np.full((3, 3), 0.5), bad)
    grad_layer = layers.Tanh()
    grad_layer(np.ones((3, 3)))
    _raises(TypeError, "Tanh.backward: grad must be real numbers", grad_layer.backward, bad)


def test_masked_values_are_refused_not_silently_unmasked():
    """np.asarray drops a mask: the masked entries' stored values would be trained on."""
    net = _built()
    x = np.ma.masked_array(np.ones((3, 3)), mask=np.eye(3, dtype=bool))
    msg = r"x is a masked array with masked values, and the mask would be ignored"
    _raises(ValueError, f"train: {msg}", net.train, x, np.ones((3, 2)), verbose=False)
    _raises(ValueError, f"predict: {msg}", net.predict, x)
    unmasked = np.ma.masked_array(np.ones((3, 3)), mask=False)   # nothing hidden: taken
    np.testing.assert_array_equal(net.predict(unmasked), net.predict(np.ones((3, 3))))


def test_ragged_lists_and_backward_shape_are_refused_clearly():
    net = _built()
    _raises(ValueError, "Model: x is not a rectangular array", net, [[1.0, 2.0, 3.0], [1.0]])
    _raises(ValueError, "train: y is not a rectangular array", net.train, np.ones((2, 3)),
            [[1.0, 0.0], [1.0]], verbose=False)
    relu = layers.Relu()
    relu(np.ones((4, 2)))
    _raises(ValueError, r"Relu.backward: grad has shape \(4, 3\) but the last forward output "
                        r"had shape \(4, 2\)", relu.backward, np.ones((4, 3)))
    lin = layers.Linear(3)
    lin(np.ones((4, 2)))
    _raises(ValueError, r"Linear\(3\).backward: grad has shape \(4, 2\)", lin.backward,
            np.ones((4, 2)))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_in_inputs_are_refused_by_default_with_their_index(value):
    net = _built()
    x, y = _data()
    bad = x.copy()
    bad[2, 1] = value
    msg = r"contains NaN or Inf \(first at index \(2, 1\)\)"
    _raises(ValueError, "Model: x " + msg, net, bad)
    _raises(ValueError, "predict: x " + msg, net.predict, bad)
    _raises(ValueError, "train: x " + msg, net.train, bad, y, verbose=False)
    bad_y = y.copy()
    bad_y[2, 1] = value
    _raises(ValueError, "train: y " + msg, net.train, x, bad_y, verbose=False)
    _raises(ValueError, r"train \(validation_data\): x " + msg, net.train, x, y,
            validation_data=(bad, y), verbose=False)
    _raises(ValueError, "evaluate: y " + msg, net.evaluate, x, bad_y)


@pytest.mark.parametrize("rows", [4, 4096])   # either side of the quick check's vdot limit
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_quick_input_check_finds_nan_and_inf_and_lets_huge_finite_values_through(
        rows, dtype):
    """train() checks arrays it can use as they are with one sum (of squares when small):
    a NaN or Inf anywhere is still named, and finite values whose sum overflows still
    pass, the same array, with no warning."""
    from fastbp._checks import as_batch
    x = np.ones((rows, 3), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for huge in (np.finfo(dtype).max, -np.finfo(dtype).max):
            x[rows // 2:, 1] = huge
            assert as_batch(x, dtype, "train") is x
        for value in (np.nan, np.inf, -np.inf):
            bad = x.copy()
            bad[rows - 1, 2] = value
            with pytest.raises(ValueError, match=rf"train: x contains NaN or Inf \(first "
                                                 rf"at index \({rows - 1}, 2\)\)"):
                as_batch(bad, dtype, "train")


def test_values_too_large_for_float32_are_refused_not_turned_into_inf():
    net = _built(dtype=np.float32)
    x, y = _data()
    x[3, 0] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast"
        _raises(ValueError, r"train: x\[3, 0\] = 1e\+300 is too large for float32",
                net.train, x, y, verbose=False)
    assert np.isfinite(net.predict(np.full((1, 3), 1e30))).all()  # large but representable


HYPER = [
    (lambda: optim.SGD(lr=0), "SGD: lr must be a finite number > 0, got 0"),
    (lambda: optim.SGD(lr=-0.1), "SGD: lr must be a finite number > 0, got -0.1"),
    (lambda: optim.Adam(lr=float("nan")), "Adam: lr must be a finite number > 0, got nan"),
    (lambda: optim.RMSProp(lr=float("inf")), "RMSProp: lr must be a finite number > 0"),
    (lambda: optim.Momentum(lr=True), "Momentum: lr must be a finite number > 0"),
    (lambda: optim.Momentum(beta=1.0), r"Momentum: beta must be in \[0, 1\), got 1.0"),
    (lambda: optim.Momentum(beta=-0.1), r"Momentum: beta must be in \[0, 1\), got -0.1"),
    (lambda: optim.Adam(beta1=1), r"Adam: beta1 must be in \[0, 1\), got 1"),
    (lambda: optim.Adam(beta2=1.5), r"Adam: beta2 must be in \[0, 1\), got 1.5"),
    (lambda: optim.Adam(beta2=float("nan")), r"Adam: beta2 must be in \[0, 1\)"),
    (lambda: optim.RMSProp(alpha=1.0), r"RMSProp: alpha must be in \[0, 1\)"),
    (lambda: optim.Adam(eps=0), "Adam: eps must be a finite number > 0"),
    (lambda: _built().train(*_data(), epochs=0, verbose=False),
     "train: epochs must be an integer >= 1, got 0"),
    (lambda: _built().train(*_data(), epochs=2.5, verbose=False),
     "train: epochs must be an integer >= 1, got 2.5"),
    (lambda: _built().train(*_data(), batch_size=0, verbose=False),
     "train: batch_size must be an integer >= 1, got 0"),
    (lambda: _built().train(*_data(), batch_size=-3, verbose=False),
     "train: batch_size must be an integer >= 1, got -3"),
    (lambda: _built().predict(_data()[0], batch_size=0),
     "predict: batch_size must be an integer >= 1, got 0"),
    (lambda: layers.Linear(0), "Linear: units must be an integer >= 1, got 0"),
    (lambda: layers.Linear(3, init="glorot"), "Linear: init must be one of"),
]


@pytest.mark.parametrize("make,msg", HYPER, ids=[m for _, m in HYPER])
def test_bad_hyper_parameters_are_refused(make, msg):
    _raises(ValueError, msg, make)


def test_bad_types_of_model_parts_are_refused():
    _raises(TypeError, "Model: dtype must be float32 or float64, got int32", layers.Model,
            [layers.Linear(2)], dtype=np.int32)
    _raises(TypeError, "Model: dtype must be float32 or float64, got float16", layers.Model,
            [layers.Linear(2)], dtype=np.float16)
    _raises(TypeError, r"Model: layer 1 \(3\) needs __call__\(x\) and backward\(grad\)",
            layers.Model, [layers.Linear(2), 3])
    _raises(TypeError, "Linear: rng must be a numpy.random.Generator", layers.Linear, 2,
            rng=np.random.RandomState(0))
    _raises(TypeError, "train: pass either optim= or optimizer=", _built().train, *_data(),
            optim=optim.SGD(), optimizer=optim.SGD(), verbose=False)


# ============================================================== 2. any memory layout

def _layouts(a):
    """The same values as ``a`` (C order) in every layout fastbp must accept."""
    strided = np.zeros((2 * a.shape[0], 3 * a.shape[1]), a.dtype)
    strided[::2, ::3] = a
    read_only = a.copy()
    read_only.flags.writeable = False
    return {"C": a.copy(), "Fortran": np.asfortranarray(a), "sliced": strided[::2, ::3],
            "transposed": np.ascontiguousarray(a.T).T, "reversed": a[::-1].copy()[::-1],
            "read-only": read_only, "big-endian": a.astype(a.dtype.newbyteorder(">"))}


LAYOUTS = list(_layouts(np.ones((2, 2))))


def _train_and_predict(x, y, dtype, batch_size):
    net = _net(5, dtype)
    hist = net.train(x, y, optim.Adam(lr=0.01), loss.CategoricalCrossentropy(), epochs=3,
                     batch_size=batch_size, seed=3, verbose=False)
    return net, hist, net.predict(x), net(x), net.evaluate(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_trains_and_predicts_bit_for_bit_and_is_never_modified(layout, dtype):
    x, y = _data(n=20)
    xs, ys = _layouts(x)[layout], _layouts(y)[layout]
    x_copy, y_copy = xs.copy(), ys.copy()
    for batch_size in (None, 6):
        want = _train_and_predict(x.copy(), y.copy(), dtype, batch_size)
        got = _train_and_predict(xs, ys, dtype, batch_size)
        np.testing.assert_array_equal(got[0].params, want[0].params)
        assert got[1] == want[1]
        for g, w in zip(got[2:], want[2:]):
            np.testing.assert_array_equal(g, w)
    for given_, copy in ((xs, x_copy), (ys, y_copy)):
        np.testing.assert_array_equal(given_, copy)
        assert given_.dtype == copy.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_gives_the_same_bits_through_layers_and_losses_alone(layout, dtype):
    """Layers and losses alone work in their input's float dtype, whatever its layout or
    byte order."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 4)).astype(dtype)
    g = rng.standard_normal((9, 5)).astype(dtype)
    p = R.Softmax()(rng.standard_normal((9, 5))).astype(dtype)
    y = np.eye(5, dtype=dtype)[rng.integers(0, 5, 9)]
    xs, gs, ps, ys = (_layouts(a)[layout] for a in (x, g, p, y))
    copies = [a.copy() for a in (xs, gs, ps, ys)]

    def run(x, g, p, y):
        out = []
        lin = layers.Linear(5, init="he", rng=np.random.default_rng(1))
        lin.build(4, dtype)
        out += [lin(x), lin.backward(g), lin.w_gradient.copy(), lin.b_gradient.copy()]
        for act in (layers.Relu(), layers.Sigmoid(), layers.Tanh(), layers.Softmax()):
            out += [act(g), act.backward(g)]
        for lf in (loss.MSE(), loss.CategoricalCrossentropy(), loss.BinaryCrossentropy()):
            out += [np.float64(lf(p, y)), lf.backward()]
        return out

    want = run(x, g, p, y)
    for got_, want_ in zip(run(xs, gs, ps, ys), want):
        assert got_.dtype == want_.dtype
        np.testing.assert_array_equal(got_, want_)
    for given_, copy in zip((xs, gs, ps, ys), copies):
        np.testing.assert_array_equal(given_, copy)


# ============================================================== 3. numerical extremes

@contextlib.contextmanager
def _quiet():
    """Every floating-point exception (underflow included) is an error, and so is every
    warning."""
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_quietly_and_agree_with_the_reference(dtype):
    x = np.array([[-1000, -100, -30, 0, 30, 100, 1000]], dtype)
    g = np.ones_like(x)
    with _quiet():
        for fast, ref in ((layers.Sigmoid(), R.Sigmoid()), (layers.Tanh(), R.Tanh())):
            out, ref_out = fast(x), ref(x)
            dx, ref_dx = fast.backward(g), ref.backward(g)
            for a in (out, ref_out, dx, ref_dx):
                assert a.dtype == dtype and np.isfinite(a).all()
            assert_close(out, ref_out, dtype)
            assert_close(dx, ref_dx, dtype)
            low = 0.0 if isinstance(fast, layers.Sigmoid) else -1.0
            assert out[0, 0] == low and out[0, -1] == 1.0      # exactly saturated
            assert dx[0, 0] == 0.0 and dx[0, -1] == 0.0        # and flat there
            assert out[0, 3] == (0.5 if low == 0 else 0.0)
            assert dx[0, 3] == (0.25 if low == 0 else 1.0)
    # Short of saturation the value is the true one, not a clipped 0.
    assert_close(layers.Sigmoid()(x)[0, 2], np.exp(-30.0) / (1 + np.exp(-30.0)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_huge_logits_and_far_apart_rows(dtype):
    shifts = np.array([[1e4], [0.0], [-1e4], [5e3]])
    z = (np.array([[0.0, 1.0, 2.0]]) + shifts).astype(dtype)     # rows 1e4 apart
    spread = np.array([[1e4, 0.0, -1e4]], dtype)                  # 1e4 apart in one row
    want = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    g = np.arange(12, dtype=dtype).reshape(4, 3)
    with _quiet():
        for act in (layers.Softmax(), R.Softmax()):
            p = act(z)
            assert p.dtype == dtype and np.isfinite(p).all()
            assert_close(p, np.tile(want, (4, 1)), dtype)
            dz = act.backward(g)
            assert np.isfinite(dz).all()
            assert_close(dz, want * (g - (g * want).sum(1, keepdims=True)), dtype)
            np.testing.assert_array_equal(act(spread), [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_with_p_exactly_zero_or_one(dtype):
    eps = RL.clip_eps(dtype)
    p = np.array([[0.0, 1.0], [1.0, 0.0]], dtype)
    y = np.array([[1.0, 0.0], [1.0, 0.0]], dtype)
    # CCE: -log(eps) for the true class at p = 0, 0 for the true class at p = 1.
    cce_loss = -np.log(eps)
    cce_grad = [[-1 / eps, 0.0], [-1.0, 0.0]]
    # BCE (p clipped to [eps, 1 - eps]): each of the four terms costs -log(eps) or ~0.
    pc = np.clip(p.astype(np.float64), eps, 1 - eps)
    bce_loss = -np.sum(y * np.log(pc) + (1 - y) * np.log1p(-pc))
    bce_grad = (pc - y) / (pc * (1 - pc))
    assert bce_loss == pytest.approx(-2 * np.log(eps), rel=1e-4)
    with _quiet():
        for lf, want_loss, want_grad in ((loss.CategoricalCrossentropy, cce_loss, cce_grad),
                                         (loss.BinaryCrossentropy, bce_loss, bce_grad)):
            ref = getattr(RL, lf.__name__)()
            fast = lf()
            value, ref_value = fast(p, y), ref(p, y)
            grad, ref_grad = fast.backward(), ref.backward()
            assert np.isfinite([value, ref_value]).all()
            assert value == pytest.approx(want_loss, rel=1e-6)
            assert ref_value == pytest.approx(want_loss, rel=1e-6)
            assert grad.dtype == dtype and ref_grad.dtype == dtype
            assert_close(grad, want_grad, dtype)
            assert_close(ref_grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_a_nan_or_inf_prediction_is_nan_in_any_column(dtype):
    """0 * log(p) is NaN for p = NaN or +inf: a column with y = 0 does not hide an invalid
    prediction (the value was finite while the gradient was NaN), as the reference."""
    y = np.array([[0.0, 1.0, 0.0]], dtype)
    for bad in (np.nan, np.inf):
        p = np.array([[bad, 0.5, 0.5]], dtype)
        with _quiet(), np.errstate(invalid="ignore"):   # the reference's 0 * inf
            value, ref_value = loss.CategoricalCrossentropy()(p, y), \
                RL.CategoricalCrossentropy()(p, y)
        assert np.isnan(value) and np.isnan(ref_value), (bad, value, ref_value)
    p = np.array([[-np.inf, 0.5, 0.5]], dtype)   # clipped to eps: 0 * log(eps) = 0
    with _quiet():
        assert loss.CategoricalCrossentropy()(p, y) == pytest.approx(np.log(2), rel=1e-6)


def test_an_eps_that_would_not_clip_or_would_overflow_the_gradient_is_refused():
    """BCE: below ~1.1e-16, 1 - eps rounds to 1 and p = 1 gave a NaN loss (blamed on the
    learning rate in train). float32: an eps below float32's smallest normal number gave
    a finite loss with an infinite gradient."""
    _raises(ValueError, r"BinaryCrossentropy: eps=1e-17 is too small: 1 - eps rounds to 1",
            loss.BinaryCrossentropy, eps=1e-17)
    assert loss.BinaryCrossentropy(eps=1e-15).eps == 1e-15
    p32, y32 = np.array([[0.0, 1.0]], np.float32), np.array([[1.0, 0.0]], np.float32)
    cce = loss.CategoricalCrossentropy(eps=1e-300)
    _raises(ValueError, r"CategoricalCrossentropy: eps=1e-300 is below float32's smallest "
                        r"normal", cce, p32, y32)
    assert cce(p32.astype(np.float64), y32.astype(np.float64)) == \
        pytest.approx(-np.log(1e-300), rel=1e-12)   # fine in float64
    net = layers.Model([layers.Linear(2), layers.Softmax()], dtype=np.float32)
    _raises(ValueError, r"eps=1e-300 is below float32's smallest normal", net.train,
            np.ones((2, 3)), np.eye(2), loss=loss.CategoricalCrossentropy(eps=1e-300),
            verbose=False)


def test_values_too_large_for_a_float32_layer_or_loss_are_refused_by_name():
    """Standalone float32 layers and losses given float64 data: a finite value beyond
    float32 became inf with NumPy's nameless "overflow encountered in cast" warning (the
    model paths already refused it)."""
    big = np.array([[1e39, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # and no NumPy warning on the way
        _raises(ValueError, r"MSE: y\[0, 0\] = 1e\+39 is too large for float32 \(max "
                            r"3.4e\+38\); scale the data or use float64",
                loss.MSE(), np.zeros((1, 2), np.float32), big)
        lin = layers.Linear(1)
        lin(np.ones((1, 2), np.float32))
        _raises(ValueError, r"Linear: x\[0, 0\] = 1e\+39 is too large for float32",
                lin, big)
        sig = layers.Sigmoid()
        sig(np.zeros((1, 2), np.float32))
        _raises(ValueError, r"Sigmoid.backward: grad\[0, 0\] = 1e\+39 is too large",
                sig.backward, big)
        # A longdouble beyond float64 is named by its own value, and float64 is not
        # offered to a float64 model.
        huge = np.array([[np.longdouble("1e400"), 0]], np.longdouble)
        if np.isfinite(huge[0, 0]):   # longdouble wider than float64 here
            err = _raises(ValueError, r"x\[0, 0\] = 1e\+400 is too large for float64",
                          layers.Model([layers.Linear(1)]).predict, huge)
            assert "use float64" not in str(err)
    err = _raises(TypeError, r"got dtype object", layers.Model([layers.Linear(1)]).predict,
                  [[10**30, 1]])
    assert "np.asarray(x, np.float64)" in str(err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_output_pairs_at_saturation_give_exactly_p_minus_y(dtype):
    eps = RL.clip_eps(dtype)
    with _quiet():
        soft = layers.Model([layers.Softmax()], dtype=dtype)
        cce = loss.CategoricalCrossentropy()
        y = np.array([[0.0, 1.0], [0.0, 1.0]])
        value = cce(soft(np.array([[1e4, 0.0], [-1e4, 1e4]])), y)
        assert value == pytest.approx(-np.log(eps), rel=1e-6)
        np.testing.assert_array_equal(soft.backward(cce), [[1.0, -1.0], [0.0, 0.0]])
        sig = layers.Model([layers.Sigmoid()], dtype=dtype)
        bce = loss.BinaryCrossentropy()
        value = bce(sig(np.array([[1000.0, -1000.0, 0.0]])), np.array([[0.0, 1.0, 1.0]]))
        p = np.array([1 - eps, eps, 0.5])  # sigmoid(1000), sigmoid(-1000), clipped
        assert value == pytest.approx(-np.log1p(-p[0]) - np.log(p[1]) - np.log(p[2]),
                                      rel=1e-6)
        np.testing.assert_array_equal(sig.backward(bce), [[1.0, -1.0, -0.5]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_with_saturated_units_raises_nothing(dtype):
    x, y = _data(n=16)
    x = x * 1000
    net = layers.Model([layers.Linear(8, init="he", rng=np.random.default_rng(0)),
                        layers.Sigmoid(), layers.Linear(4, rng=np.random.default_rng(1)),
                        layers.Tanh(), layers.Linear(2, rng=np.random.default_rng(2)),
                        layers.Softmax()], dtype=dtype)
    with _quiet():
        hist = net.train(x, y, optim.Adam(lr=0.01), loss.CategoricalCrossentropy(),
                         epochs=3, batch_size=8, seed=0, verbose=False)
        assert np.isfinite(hist).all() and np.isfinite(net.predict(x)).all()


# ============================================================== 4. divergence

@pytest.mark.parametrize("dtype,batch_size,epoch", [(np.float64, None, 3),
                                                    (np.float32, None, 2),
                                                    (np.float64, 1, 2)])
def test_divergence_raises_floating_point_error_naming_epoch_and_lr(dtype, batch_size, epoch):
    """One weight, one bias, x = 1, y = 0, MSE, SGD: the prediction p becomes
    p (1 - 4 lr) after each step. With lr = 1e100, p goes 1 -> -4e100 -> 1.6e201, whose
    square overflows: the loss is inf at epoch 3 (at epoch 2 in float32, where -4e100
    itself is inf, and with two one-row batches per epoch)."""
    n = 1 if batch_size is None else 2
    net = layers.Model([layers.Linear(1)], dtype=dtype)
    net(np.ones((1, 1)))
    net.layers[0].w, net.layers[0].b = [[1.0]], [0.0]
    err = _raises(FloatingPointError, rf"loss became (inf|nan) at epoch {epoch} \(optimizer "
                                      r"SGD\(lr=1e\+100\)\)",
                  net.train, np.ones((n, 1)), np.zeros((n, 1)), optim.SGD(lr=1e100),
                  loss.MSE(), epochs=10, batch_size=batch_size, verbose=False)
    assert "Lower the learning rate" in str(err)
    assert ("use float64" in str(err)) == (dtype == np.float32)   # not to float64 models


# tiny: one Linear(1) (the tiny-net kernel); plan: 8-16-1 (the general compiled plan);
# steps: 8-4096-1, 41,000 parameters (a compiled call per step, the update from Python);
# layerwise: the plan's net with a custom optimizer (layer by layer, Python's loop).
DIVERGING = {"tiny": [], "plan": [16], "steps": [4096], "layerwise": [16]}


def _diverging_net(path):
    rng = np.random.default_rng(5)
    stack = []
    for units in DIVERGING[path]:
        stack += [layers.Linear(units, rng=rng), layers.Tanh()]
    return layers.Model(stack + [layers.Linear(1, rng=rng)])


@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("path", list(DIVERGING))
def test_divergence_stops_before_the_step_whose_loss_is_not_finite(path, batch_size):
    """SGD at lr = 1e100 overflows within a few steps. No path takes the step whose loss
    is Inf or NaN (its gradient would make the weights NaN): the weights and ``t`` are
    those of the steps before it, bit for bit those of a run of just those steps, and
    the History holds the epochs before."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((64, 8)), rng.standard_normal((64, 1))
    opt_type = LayerwiseSGD if path == "layerwise" else optim.SGD
    kw = dict(loss=loss.MSE(), batch_size=batch_size, shuffle=False, verbose=False)
    net, opt = _diverging_net(path), opt_type(lr=1e100)
    with np.errstate(over="ignore", invalid="ignore"):   # the layer-by-layer path's NumPy
        err = _raises(FloatingPointError, r"loss became (inf|nan) at epoch \d+", net.train,
                      x, y, optim=opt, epochs=50, **kw)
    epoch = int(re.search(r"at epoch (\d+)", str(err)).group(1))
    assert "step with that loss was not taken" in str(err)
    steps_per_epoch = 1 if batch_size is None else 4
    done = (epoch - 1) * steps_per_epoch   # steps of the completed epochs
    assert len(net.history) == epoch - 1
    assert done <= opt.t < done + steps_per_epoch and opt.t >= 1, (opt.t, epoch)
    assert np.isfinite(net.params).all()
    # The same steps, from the same start: the completed epochs, then the first rows of
    # the unfinished one (its steps before the one not taken).
    again, opt2 = _diverging_net(path), opt_type(lr=1e100)
    with np.errstate(over="ignore", invalid="ignore"):
        if epoch > 1:
            again.train(x, y, optim=opt2, epochs=epoch - 1, **kw)
        if opt.t > done:
            again.train(x[:(opt.t - done) * 16], y[:(opt.t - done) * 16], optim=opt2,
                        epochs=1, **kw)
    assert opt2.t == opt.t
    np.testing.assert_array_equal(net.params, again.params)


def test_a_model_that_only_outputs_nan_reports_divergence_at_epoch_1():
    net = layers.Model([layers.Linear(2), layers.Relu(), layers.Linear(1)])
    net(np.ones((1, 3)))
    net.params[:] = np.nan
    _raises(FloatingPointError, r"loss is nan at the weights train started from \(epoch 1, "
                                r"before any update\)", net.train, np.ones((4, 3)),
            np.zeros((4, 1)), verbose=False)


# ============================================================== 5. threads

THREADS_CODE = """
    import faulthandler, json, threading
    import numpy as np, numba
    from fastbp import kernels as K, layers, loss, optim
    faulthandler.dump_traceback_later(150, exit=True)   # a deadlock shows its stacks

    N, I = 512, 256
    assert N * I >= K.PARALLEL_MIN_ELEMENTS and N * 256 >= K.PARALLEL_MIN_ELEMENTS

    class Custom(optim.SGD):   # the layer-by-layer path: its row kernels go parallel here
        pass

    def run(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, I))
        y = np.eye(10)[rng.integers(0, 10, N)]
        net = layers.Model([layers.Linear(256, init="he", rng=rng), layers.Relu(),
                            layers.Linear(128, init="he", rng=rng), layers.Tanh(),
                            layers.Linear(10, rng=rng), layers.Softmax()])
        net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=2,
                  verbose=False)
        net.train(x, y, optim.SGD(lr=0.01), loss.MSE(), epochs=2, batch_size=256, seed=seed,
                  verbose=False)
        net.train(x, y, Custom(lr=0.01), loss.MSE(), epochs=2, batch_size=256, seed=seed,
                  verbose=False)
        return net.params.copy(), net.predict(x)

    seeds = range(4)
    one_by_one = [run(s) for s in seeds]
    results, errors = {}, []

    def work(s):
        try:
            results[s] = run(s)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    print(json.dumps({
        "layer": numba.threading_layer(),
        "alive": sum(t.is_alive() for t in threads),
        "errors": errors,
        "same": [bool(np.array_equal(results[s][0], one_by_one[s][0]) and
                      np.array_equal(results[s][1], one_by_one[s][1])) for s in seeds]}))
"""


def _threads_report(tmp_path, env=None):
    report = json.loads(_child(tmp_path, THREADS_CODE, env).strip().splitlines()[-1])
    assert report["alive"] == 0 and report["errors"] == [], report
    assert report["same"] == [True] * 4, report
    return report


def test_threads_training_at_once_match_one_by_one_under_tbb(tmp_path):
    report = _threads_report(tmp_path, {"NUMBA_THREADING_LAYER": None})
    if platform.machine().lower() in ("x86_64", "amd64"):  # where pyproject installs tbb
        assert report["layer"] == "tbb"
        assert K.THREADING_LAYER == "tbb"


def test_threads_do_not_crash_under_the_workqueue_layer(tmp_path):
    """Numba's workqueue layer aborts the process when two threads enter parallel kernels
    at once; fastbp must serialize its kernels there instead of crashing."""
    report = _threads_report(tmp_path, {"NUMBA_THREADING_LAYER": "workqueue"})
    assert report["layer"] == "workqueue"


# ============================================================== 6. processes

PROCESS_SCRIPT = """
    import hashlib, multiprocessing as mp, sys
    import numpy as np

    def train(seed):
        from fastbp import layers, loss, optim

        class Custom(optim.Adam):   # the layer-by-layer path: parallel row kernels here
            pass
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((512, 256))
        y = np.eye(10)[rng.integers(0, 10, 512)]
        net = layers.Model([layers.Linear(256, init="he", rng=rng), layers.Relu(),
                            layers.Linear(10, rng=rng), layers.Softmax()])
        net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=2,
                  batch_size=256, seed=seed, verbose=False)
        net.train(x, y, Custom(lr=1e-3), loss.CategoricalCrossentropy(), epochs=2,
                  batch_size=256, seed=seed, verbose=False)
        return hashlib.sha256(net.params.tobytes() + net.predict(x).tobytes()).hexdigest()

    if __name__ == "__main__":
        import numba
        parent = [train(s) for s in (1, 2)]       # parallel kernels ran in the parent
        numba.threading_layer()                   # raises if no parallel kernel ran
        for method in ("fork", "spawn"):
            pool = mp.get_context(method).Pool(2)
            children = pool.map(train, [1, 2])
            pool.close()
            pool.join()
            print(method, children == parent, flush=True)
"""


def test_training_in_forked_and_spawned_children_matches_the_parent(tmp_path):
    script = tmp_path / "processes.py"
    script.write_text(textwrap.dedent(PROCESS_SCRIPT))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=240, env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    assert out.returncode == 0, out.stderr[-5000:]
    assert out.stdout.split() == ["fork", "True", "spawn", "True"], out.stdout


# ============================================================== 7. determinism

def _big_run(seed, dtype=np.float64):
    rng = np.random.default_rng(100)
    x = rng.standard_normal((512, 256)).astype(dtype)
    y = np.eye(10)[rng.integers(0, 10, 512)]
    net = layers.Model([layers.Linear(256, init="he", rng=np.random.default_rng(seed)),
                        layers.Relu(), layers.Linear(10, rng=np.random.default_rng(seed)),
                        layers.Softmax()], dtype=dtype)
    hist = net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=3,
                     batch_size=300, seed=seed, verbose=False)
    return net.params.copy(), hist


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_gives_bitwise_identical_weights_run_after_run(dtype):
    assert 256 * 256 >= K.PARALLEL_MIN_ELEMENTS  # the large path: one compiled call per step
    first, again, other = _big_run(4, dtype), _big_run(4, dtype), _big_run(5, dtype)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]
    assert not np.array_equal(first[0], other[0])


THREAD_COUNT_CODE = """
    import hashlib, numba
    import numpy as np
    from fastbp import layers, loss, optim

    def run():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 256))
        y = np.eye(10)[rng.integers(0, 10, 512)]
        net = layers.Model([layers.Linear(256, init="he", rng=rng), layers.Relu(),
                            layers.Linear(128, rng=rng), layers.Tanh(),
                            layers.Linear(10, rng=rng), layers.Softmax()])
        net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=2,
                  batch_size=256, seed=0, verbose=False)
        return hashlib.sha256(net.params.tobytes()).hexdigest()

    digests = []
    for threads in (1, 2, 1):
        numba.set_num_threads(threads)
        digests.append(run())
    try:
        from threadpoolctl import threadpool_info
        blas = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
    except ImportError:
        blas = "unknown"
    print(" ".join(digests), blas)
"""


def test_numba_and_blas_thread_counts_do_not_change_a_bit(tmp_path):
    envs = [{"NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": blas_threads,
             "MKL_NUM_THREADS": blas_threads, "OMP_NUM_THREADS": blas_threads}
            for blas_threads in ("1", "2")]   # the two children run at once
    lines = [out.split() for out in run_scripts([textwrap.dedent(THREAD_COUNT_CODE)] * 2,
                                                tmp_path, envs, timeout=180)]
    digests = [d for line in lines for d in line[:3]]
    assert len(set(digests)) == 1, lines
    for line, blas_threads in zip(lines, ("1", "2")):
        assert line[3] in (f"[{blas_threads}]", "unknown"), line


# ============================================================== 9. the Numba cache

CACHE_CODE = """
    import numpy as np, fastbp
    from fastbp import layers
    from fastbp.kernels import config
    print(fastbp.__file__, config.CACHE)
    print(layers.Relu()(np.array([[-1.5, 2.5]])).tolist())
"""


def _blocked(tmp_path):
    """A path nobody can create (its parent is a regular file), even as root."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return blocker


def test_an_unwritable_numba_cache_dir_is_not_fatal(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(_blocked(tmp_path) / "cache")}
    out = _child(tmp_path, CACHE_CODE, env).splitlines()
    assert out[-1] == "[[0.0, 2.5]]"


@pytest.mark.slow
def test_with_no_writable_cache_anywhere_kernels_compile_in_memory(tmp_path):
    """A read-only install with a read-only home: Numba finds no cache folder at all and,
    left alone, refuses to define cache=True functions (import fastbp would fail)."""
    pkg = tmp_path / "site"
    src = os.path.dirname(fastbp.__file__)
    kernels_src = os.path.dirname(K.__file__)
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    shutil.copytree(src, pkg / "fastbp", ignore=ignore)
    if not (pkg / "fastbp" / "kernels").exists():     # editable install: kernels/ apart
        shutil.copytree(kernels_src, pkg / "fastbp" / "kernels", ignore=ignore)
    (pkg / "fastbp" / "kernels" / "__pycache__").write_text("")  # in-tree cache blocked
    blocked = _blocked(tmp_path)
    env = {"PYTHONPATH": str(pkg), "PYTHONDONTWRITEBYTECODE": "1",
           "NUMBA_CACHE_DIR": str(blocked / "cache"), "HOME": str(blocked / "home"),
           "XDG_CACHE_HOME": str(blocked / "xdg")}
    out = _child(tmp_path, CACHE_CODE, env, timeout=240).splitlines()
    assert out[-2] == f"{pkg / 'fastbp' / '__init__.py'} False"
    assert out[-1] == "[[0.0, 2.5]]"


# ============================================================== 10. property-based parity

TOKENS = st.one_of(st.integers(1, 12), st.sampled_from(["Relu", "Sigmoid", "Tanh", "Softmax"]))
OPTIMIZERS = {"SGD": dict(lr=0.1), "Momentum": dict(lr=0.1, beta=0.9),
              "RMSProp": dict(lr=0.01), "Adam": dict(lr=0.01)}


def _stack(mod, tokens, dtype, seed, init):
    made = []
    for i, t in enumerate(tokens):
        if isinstance(t, int):
            made.append(mod.Linear(t, init=init, rng=np.random.default_rng([seed, i])))
        else:
            made.append(getattr(mod, t)())
    return mod.Model(made, dtype=dtype)


def _reference_forward(model, x, relu_inputs):
    out = np.asarray(x, model.dtype)
    for layer in model.layers:
        if isinstance(layer, R.Relu):
            relu_inputs.append(np.abs(out).min())
        out = layer(out)
    return out


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(TOKENS, min_size=1, max_size=6).filter(
           lambda ts: any(isinstance(t, int) for t in ts)),
       dtype=st.sampled_from(DTYPES), rows=st.integers(1, 16), n_in=st.integers(1, 12),
       seed=st.integers(0, 2**16), init=st.sampled_from(["he", "xavier"]),
       opt_name=st.sampled_from(list(OPTIMIZERS)), loss_pick=st.integers(0, 1))
def test_random_stacks_match_the_reference(tokens, dtype, rows, n_in, seed, init, opt_name,
                                           loss_pick):
    widths = [t for t in tokens if isinstance(t, int)]
    n_out = widths[-1]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (rows, n_in))
    last = tokens[-1]
    if last == "Softmax" and loss_pick:
        lname, y = "CategoricalCrossentropy", np.eye(n_out)[rng.integers(0, n_out, rows)]
    elif last == "Sigmoid" and loss_pick:
        lname, y = "BinaryCrossentropy", (rng.random((rows, n_out)) < 0.5).astype(float)
    else:
        lname, y = "MSE", rng.standard_normal((rows, n_out))
    fast = _stack(layers, tokens, dtype, seed, init)
    ref = _stack(R, tokens, dtype, seed, init)
    relu_inputs = []
    ref_out = _reference_forward(ref, x, relu_inputs)
    # Away from Relu's kink, where a last-bit difference would flip the derivative.
    assume(all(m > (1e-5 if dtype == np.float32 else 1e-9) for m in relu_inputs))
    # The fused output pairs (p - y) equal the reference's chain while p is not clipped.
    if lname == "CategoricalCrossentropy":
        assume(ref_out[y == 1].min() > 100 * RL.clip_eps(dtype))
    if lname == "BinaryCrossentropy":
        assume(100 * RL.clip_eps(dtype) < ref_out.min() and ref_out.max() < 0.99)

    out = fast(x)
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype)

    fast_loss, ref_loss = getattr(loss, lname)(), getattr(RL, lname)()
    value = fast_loss(out, y)
    ref_value = ref_loss(ref_out, y.astype(dtype))
    assert_close(value, ref_value, dtype)
    dx = fast.backward(fast_loss)
    ref_dx = ref_loss.backward()
    for layer in reversed(ref.layers):
        ref_dx = layer.backward(ref_dx)
    assert_close(dx, ref_dx, dtype)
    fast_lin = [la for la in fast.layers if isinstance(la, layers.Linear)]
    ref_lin = [la for la in ref.layers if isinstance(la, R.Linear)]
    for f, r in zip(fast_lin, ref_lin):
        assert_close(f.w_gradient, r.w_gradient, dtype)
        assert_close(f.b_gradient, r.b_gradient, dtype)

    fast_opt = getattr(optim, opt_name)(**OPTIMIZERS[opt_name])
    ref_opt = getattr(RO, opt_name)(**OPTIMIZERS[opt_name])
    fast_loss(fast(x), y)
    ref_loss(ref(x), y.astype(dtype))
    fast_opt(fast, fast_loss)
    ref_opt(ref, ref_loss)
    for f, r in zip(fast_lin, ref_lin):
        assert f.w.dtype == dtype
        assert_close(f.w, r.w, dtype)
        assert_close(f.b, r.b, dtype)


# ============================================================== 11. memory

MEMORY_CODE = """
    import gc
    import numpy as np
    from fastbp import layers, loss, optim

    class MySGD(optim.SGD):      # a subclass: trained layer by layer, not as one plan
        pass

    def rss_kb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((640, 64))
    y = np.eye(10)[rng.integers(0, 10, 640)]
    for opt in (optim.Adam(lr=1e-3), MySGD(lr=0.01)):
        net = layers.Model([layers.Linear(128, init="he", rng=rng), layers.Relu(),
                            layers.Linear(64, init="he", rng=rng), layers.Relu(),
                            layers.Linear(10, rng=rng), layers.Softmax()])
        fit = lambda: net.train(x, y, opt, loss.CategoricalCrossentropy(), epochs=20,
                                batch_size=64, seed=0, verbose=False)   # 200 steps
        for _ in range(2):                      # warm-up: compile, first allocations
            fit()
            net.predict(x)
        gc.collect()
        before = rss_kb()
        for _ in range(10):                     # 2,000 steps
            fit()
            net.predict(x)
        gc.collect()
        print(type(opt).__name__, rss_kb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
def test_two_thousand_steps_do_not_grow_resident_memory(tmp_path):
    """A leak of one batch's activations per step (64 x 128 float64, 64 KiB) would grow
    the process by 128 MiB, a leak of 512 bytes per step by 1 MiB: the bound."""
    # One BLAS thread: on a busy machine, BLAS threads waiting for each other make small
    # products 10-50 times slower, and resident memory does not depend on them.
    lines = _child(tmp_path, MEMORY_CODE, {"OPENBLAS_NUM_THREADS": "1"}).split("\n")
    growth = dict(line.split() for line in lines if line.strip())
    assert set(growth) == {"Adam", "MySGD"}
    for name, kib in growth.items():
        assert int(kib) < 1024, growth


def test_backward_before_forward_and_non_objects_give_clear_errors():
    from fastbp import layers, loss, optim
    for layer in (layers.Relu(), layers.Softmax(), layers.Linear(3)):
        with pytest.raises(RuntimeError, match=r"backward was called before any forward"):
            layer.backward(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"MSE\(\).backward was called before"):
        loss.MSE().backward()
    net = layers.Model([layers.Linear(1)])
    x, y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(TypeError, match=r"optim must be an optimizer object .* got 'sgd'"):
        net.train(x, y, optim="sgd", verbose=False)
    with pytest.raises(TypeError, match=r"loss must be a loss object .* got 'mse'"):
        net.train(x, y, optim.SGD(), "mse", verbose=False)
