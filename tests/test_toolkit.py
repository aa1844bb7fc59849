"""Issue 3: cross-entropy losses, Momentum/RMSProp/Adam, mini-batches, save/load, data."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import data, layers, loss, optim
from fastbp.reference import layers as RL_
from fastbp.reference import loss as RLoss
from fastbp.reference import optim as ROpt
from conftest import RTOL

OPTIMS = [("SGD", {"lr": 0.05}), ("Momentum", {"lr": 0.02, "beta": 0.8}),
          ("RMSProp", {"lr": 0.005}), ("Adam", {"lr": 0.01})]


def _mlp(mod, n_out, out_act, seed):
    rng = np.random.default_rng(seed)
    return [mod.Linear(16, init="he", rng=rng), mod.Tanh(), mod.Linear(8, init="xavier", rng=rng),
            mod.Relu(), mod.Linear(n_out, rng=rng), out_act(mod)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kw", OPTIMS)
@pytest.mark.parametrize("pair", ["softmax_cce", "sigmoid_bce", "softmax_mse"])
def test_minibatch_training_matches_reference(pair, name, kw, dtype):
    x, y = data.spirals(n_per_class=30, seed=1)
    if pair == "sigmoid_bce":
        y = y[:, :1]
    out_act = (lambda m: m.Sigmoid()) if pair == "sigmoid_bce" else (lambda m: m.Softmax())
    lf, lr_ = {"softmax_cce": (loss.CategoricalCrossentropy, RLoss.CategoricalCrossentropy),
               "sigmoid_bce": (loss.BinaryCrossentropy, RLoss.BinaryCrossentropy),
               "softmax_mse": (loss.MSE, RLoss.MSE)}[pair]
    fast = layers.Model(_mlp(layers, y.shape[1], out_act, 4), dtype=dtype)
    ref = RL_.Model(_mlp(RL_, y.shape[1], out_act, 4), dtype=dtype)
    h_fast = fast.train(x, y, getattr(optim, name)(**kw), lf(), epochs=6, batch_size=16,
                        seed=9, verbose=False)
    h_ref = ref.train(x, y, getattr(ROpt, name)(**kw), lr_(), epochs=6, batch_size=16,
                      seed=9)
    rtol = 1e-9 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(h_fast, h_ref, rtol=rtol)
    np.testing.assert_allclose(fast.predict(x), ref(x), rtol=rtol, atol=rtol)


def test_adam_first_three_steps_worked_by_hand():
    """One parameter, gradients 1, -2, 0.5; lr 0.1, betas (0.9, 0.999), eps 1e-8."""
    net = layers.Model([layers.Linear(1)])
    net(np.ones((1, 1)))
    net.params[:] = [1.0, 0.0]  # w, b
    opt = optim.Adam(lr=0.1)
    # Step 1: m = 0.1, v = 0.001*1 = 0.001; m_hat = 1, v_hat = 1 -> step 0.1*1/(1+1e-8)
    # Step 2: m = 0.09 - 0.2 = -0.11; v = 0.000999 + 0.004 = 0.004999
    #   m_hat = -0.11/0.19 = -0.578947..., v_hat = 0.004999/0.001999 = 2.500750...
    #   step = 0.1 * -0.578947 / (1.581376 + 1e-8) = -0.0366103...
    # Step 3: m = -0.099 + 0.05 = -0.049; v = 0.004994001 + 0.00025 = 0.005244001
    #   m_hat = -0.049/0.271 = -0.180812, v_hat = 0.005244001/0.002997001 = 1.749750
    #   step = 0.1 * -0.180812 / 1.322781 = -0.0136691... -> w = 0.9502794
    expected_w = [1 - 0.1 / (1 + 1e-8)]
    expected_w.append(expected_w[-1] + 0.1 * (0.11 / 0.19) / (np.sqrt(0.004999 / 0.001999) + 1e-8))
    expected_w.append(expected_w[-1] + 0.1 * (0.049 / 0.271) /
                      (np.sqrt(0.005244001 / 0.002997001) + 1e-8))
    np.testing.assert_allclose(expected_w, [0.9, 0.9366103, 0.9502794], atol=2e-7)
    for g, want in zip([1.0, -2.0, 0.5], expected_w):
        net.grads[:] = [g, 0.0]
        opt.step(net)
        np.testing.assert_allclose(net.params[0], want, rtol=1e-12)
    assert opt.t == 3


def test_optimizer_state_survives_across_train_calls():
    x, y = data.spirals(n_per_class=20, seed=2)
    one = layers.Model(_mlp(layers, 3, lambda m: m.Softmax(), 1))
    two = layers.Model(_mlp(layers, 3, lambda m: m.Softmax(), 1))
    o1, o2 = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    one.train(x, y, o1, loss.CategoricalCrossentropy(), epochs=4, verbose=False)
    two.train(x, y, o2, loss.CategoricalCrossentropy(), epochs=2, verbose=False)
    two.train(x, y, o2, loss.CategoricalCrossentropy(), epochs=2, verbose=False)
    np.testing.assert_array_equal(one.params, two.params)
    assert o2.t == 4


@pytest.mark.parametrize("n_out", [1, 10])
def test_init_options_have_the_documented_scale(n_out):
    rng = np.random.default_rng(0)
    he, xavier = layers.Linear(400, init="he", rng=rng), layers.Linear(400, init="xavier",
                                                                      rng=rng)
    he(np.ones((1, 500)))
    xavier(np.ones((1, 500)))
    assert abs(he.w.std() - np.sqrt(2 / 500)) < 0.02 * np.sqrt(2 / 500)
    a = np.sqrt(6 / 900)
    assert abs(xavier.w.std() - a / np.sqrt(3)) < 0.02 * a and np.abs(xavier.w).max() <= a
    assert not he.b.any() and not xavier.b.any()


def test_digits_are_scikit_learns_digits_split_by_the_fixed_permutation():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    (x, y), (xt, yt) = data.digits(test_fraction=0.25)
    order = np.random.default_rng(20240611).permutation(1797)
    test, train = order[:449], order[449:]                  # round(1797 * 0.25) = 449
    np.testing.assert_array_equal(x, bunch.data[train] / 16.0)
    np.testing.assert_array_equal(xt, bunch.data[test] / 16.0)
    np.testing.assert_array_equal(y.argmax(1), bunch.target[train])
    np.testing.assert_array_equal(yt.argmax(1), bunch.target[test])
    assert x.dtype == y.dtype == np.float64 and y.sum() == len(y)


def test_digits_fall_back_to_load_digits_when_the_data_file_moves(monkeypatch):
    pytest.importorskip("sklearn")
    direct = data.digits()
    monkeypatch.setattr(data.os.path, "isfile", lambda path: False)
    through_load_digits = data.digits()
    for a, b in zip(direct, through_load_digits):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_digits_are_read_without_importing_scikit_learn(tmp_path):
    pytest.importorskip("sklearn")
    code = ("import sys\nfrom fastbp import data\n(x, y), _ = data.digits()\n"
            "print(x.shape, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True, timeout=120).stdout
    assert out.split("\n")[0] == "(1438, 64) False"


def test_digits_reaches_95_percent_held_out_accuracy():
    (x, y), (xt, yt) = data.digits()
    assert x.shape == (1438, 64) and xt.shape == (359, 64) and 0 <= x.min() and x.max() <= 1
    rng = np.random.default_rng(0)
    net = layers.Model([layers.Linear(128, init="he", rng=rng), layers.Relu(),
                        layers.Linear(64, init="he", rng=rng), layers.Relu(),
                        layers.Linear(10, init="xavier", rng=rng), layers.Softmax()],
                       dtype=np.float32)
    hist = net.train(x, y, optim.Adam(lr=1e-3), loss.CategoricalCrossentropy(), epochs=30,
                     batch_size=32, seed=0, validation_data=(xt, yt), verbose=False)
    assert net.predict(xt).dtype == np.float32
    acc = np.mean(net.predict(xt).argmax(1) == yt.argmax(1))
    assert acc >= 0.95, acc
    assert hist.history["val_accuracy"][-1] == pytest.approx(acc)
    assert len(hist.history["val_loss"]) == 30


def test_predict_batches_and_evaluate():
    x, y = data.spirals(n_per_class=20, seed=3)
    net = layers.Model(_mlp(layers, 3, lambda m: m.Softmax(), 2))
    full = net.predict(x)
    np.testing.assert_allclose(net.predict(x, batch_size=7), full, rtol=1e-12)
    ref = RLoss.CategoricalCrossentropy()(full, y)
    assert net.evaluate(x, y, loss.CategoricalCrossentropy()) == pytest.approx(ref, rel=1e-12)


def test_keyword_aliases_of_the_later_series():
    x, y = data.xor()
    np.random.seed(0)
    a = layers.Model([layers.Linear(4), layers.Tanh(), layers.Linear(1)])
    ha = a.train(x, y, optimizer=optim.Momentum(lr=0.1), loss_fn=loss.MSE(), epochs=5,
                 verbose=False)
    np.random.seed(0)
    b = layers.Model([layers.Linear(4), layers.Tanh(), layers.Linear(1)])
    hb = b.train(x, y, optim=optim.Momentum(lr=0.1), loss=loss.MSE(), epochs=5, verbose=False)
    assert ha == hb
    with pytest.raises(TypeError, match="either optim= or optimizer="):
        a.train(x, y, optim=optim.SGD(), optimizer=optim.SGD(), verbose=False)


# ------------------------------------------------------------------ save / load

def _trained(dtype=np.float64, epochs=3):
    x, y = data.spirals(n_per_class=20, seed=5)
    net = layers.Model(_mlp(layers, 3, lambda m: m.Softmax(), 3), dtype=dtype)
    opt = optim.Adam(lr=0.01)
    net.train(x, y, opt, loss.CategoricalCrossentropy(), epochs=epochs, verbose=False)
    return net, opt, x, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_save_load_predicts_bitwise_identically(tmp_path, dtype):
    net, opt, x, _ = _trained(dtype)
    path = tmp_path / "model.npz"
    fastbp.save(net, path)
    back = fastbp.load(path)
    assert back.dtype == dtype and back.params.dtype == dtype
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert [type(l).__name__ for l in back.layers] == [type(l).__name__ for l in net.layers]
    # the original's names work too
    layers.save(net, tmp_path / "m2")
    np.testing.assert_array_equal(layers.load(tmp_path / "m2").predict(x), net.predict(x))


def test_resuming_from_saved_optimizer_state_equals_training_straight_through(tmp_path):
    straight, _, x, y = _trained(epochs=6)
    half, opt, _, _ = _trained(epochs=3)
    fastbp.save(half, tmp_path / "ckpt.npz", opt)
    resumed = fastbp.load(tmp_path / "ckpt.npz")
    opt2 = fastbp.load_optimizer(tmp_path / "ckpt.npz")
    assert opt2.t == 3 and opt2.lr == 0.01
    resumed.train(x, y, opt2, loss.CategoricalCrossentropy(), epochs=3, verbose=False)
    np.testing.assert_array_equal(resumed.params, straight.params)


def test_pickle_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(fastbp.ModelFileError, match="pickle"):
        fastbp.load(path)
    assert not marker.exists()
    # an npz whose entry is an object array (pickled inside) is refused too
    np.savez(tmp_path / "obj.npz", __fastbp__=np.array([Evil()], dtype=object))
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(tmp_path / "obj.npz")
    assert not marker.exists()


def test_truncated_corrupted_and_misshapen_files_are_refused(tmp_path):
    net, _, _, _ = _trained()
    good = tmp_path / "good.npz"
    fastbp.save(net, good)
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(fastbp.ModelFileError, match="truncated or corrupted"):
        fastbp.load(tmp_path / "trunc.npz")
    flipped = bytearray(raw)
    flipped[len(raw) // 3: len(raw) // 3 + 64] = b"\x00" * 64
    (tmp_path / "corrupt.npz").write_bytes(bytes(flipped))
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(tmp_path / "corrupt.npz")
    with np.load(good) as d:
        arrays = dict(d)
    arrays["layer0.w"] = arrays["layer0.w"][:, :3]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(fastbp.ModelFileError, match=r"'layer0.w' has shape \(2, 3\)"):
        fastbp.load(tmp_path / "shape.npz")
    del arrays["layer2.b"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(fastbp.ModelFileError, match="missing"):
        fastbp.load(tmp_path / "missing.npz")


def test_custom_layers_cannot_be_saved(tmp_path):
    class Mine(layers.Activation):
        def __call__(self, x):
            return x

        def backward(self, g):
            return g
    net = layers.Model([layers.Linear(2), Mine()])
    net(np.ones((1, 2)))
    with pytest.raises(TypeError, match="custom layers cannot be saved"):
        fastbp.save(net, tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


def test_save_is_atomic_when_the_writer_is_killed(tmp_path):
    """A process killed in the middle of a save leaves the previous file loadable."""
    net, _, x, _ = _trained()
    path = tmp_path / "model.npz"
    fastbp.save(net, path)
    before = path.read_bytes()
    code = f"""
import os, numpy as np, fastbp
from fastbp import layers
net = layers.Model([layers.Linear(512), layers.Linear(512)])
net(np.ones((1, 512)))
real = np.savez
def dying(f, **arrays):
    f.write(b"PK partial write")
    f.flush()
    os._exit(9)
np.savez = dying
fastbp.save(net, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 9
    assert path.read_bytes() == before
    np.testing.assert_array_equal(fastbp.load(path).predict(x), net.predict(x))


def test_data_helpers():
    x, y = data.xor()
    np.testing.assert_array_equal(y[:, 0], [0, 1, 1, 0])
    xs, ys = data.spirals(n_per_class=50, n_classes=4, seed=1)
    assert xs.shape == (200, 2) and ys.shape == (200, 4)
    np.testing.assert_array_equal(ys.sum(0), [50] * 4)
    np.testing.assert_array_equal(data.spirals(seed=1)[0], data.spirals(seed=1)[0])
    state = np.random.get_state()[1].copy()
    data.spirals(seed=2)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched


def test_one_hot_rows_and_its_refusals():
    np.testing.assert_array_equal(data.one_hot([2, 0, 1, 2]), np.eye(3)[[2, 0, 1, 2]])
    np.testing.assert_array_equal(data.one_hot(np.array([1.0, 0.0]), 4),
                                  [[0, 1, 0, 0], [1, 0, 0, 0]])
    # NumPy indexing wrapped -1 to the last class and truncated 0.7 to 0; now refused
    for labels, n, match in [([-1, 0], None, "label -1 at index 0 is not a class in"),
                             ([-1, 0], 3, r"label -1 at index 0 is not a class in \[0, 3\)"),
                             ([0, 5], 3, r"label 5 at index 1 is not a class in \[0, 3\)"),
                             ([0.7, 1.9], None, "whole numbers"),
                             ([], None, "non-empty 1-D"),
                             ([[0, 1]], None, "non-empty 1-D"),
                             ([0, 1], 0, "n_classes must be an integer >= 1")]:
        with pytest.raises(ValueError, match=match):
            data.one_hot(labels, n)


def test_spirals_and_digits_refuse_arguments_that_give_no_usable_data():
    for kwargs, match in [(dict(noise=float("nan")), "noise must be a finite number >= 0"),
                          (dict(noise=-1), "noise must be a finite number >= 0"),
                          (dict(n_per_class=-1), "n_per_class must be an integer >= 1"),
                          (dict(n_classes=0), "n_classes must be an integer >= 1")]:
        with pytest.raises(ValueError, match="spirals: " + match):
            data.spirals(**kwargs)
    with pytest.raises(ValueError, match="holds out all 1797 images"):
        data.digits(0.9999)   # in [0, 1), but it left an empty training set
    (x_train, _), (x_test, _) = data.digits(0.5)
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 898
