"""Whole training runs: parity with the reference, the original examples, custom layers."""
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import layers, loss, optim
from fastbp.reference import layers as RL_
from fastbp.reference import loss as RLoss
from fastbp.reference import optim as ROpt
from conftest import XOR_X, XOR_Y, XOR_Y2


def _stack(mod, out_units, out_act):
    return [mod.Linear(8), mod.Relu(), mod.Linear(4), mod.Sigmoid(), mod.Linear(out_units),
            out_act(mod)]


@pytest.mark.parametrize("out_units,out_act,y", [
    (1, lambda m: m.Sigmoid(), XOR_Y), (2, lambda m: m.Softmax(), XOR_Y2)])
def test_training_matches_reference_every_epoch(out_units, out_act, y):
    np.random.seed(3)
    fast = layers.Model(_stack(layers, out_units, out_act))
    fast_hist = fast.train(XOR_X, y, optim=optim.SGD(lr=0.6), loss=loss.MSE(), epochs=50,
                           verbose=False)
    np.random.seed(3)
    ref = RL_.Model(_stack(RL_, out_units, out_act))
    ref_hist = ref.train(XOR_X, y, optim=ROpt.SGD(lr=0.6), loss=RLoss.MSE(), epochs=50)
    np.testing.assert_allclose(fast_hist, ref_hist, rtol=1e-9)
    np.testing.assert_allclose(fast(XOR_X), ref(XOR_X), rtol=1e-9)


@pytest.mark.parametrize("out_units,out_act,y", [
    (1, lambda m: m.Sigmoid(), XOR_Y), (2, lambda m: m.Softmax(), XOR_Y2)])
def test_original_xor_examples_train(out_units, out_act, y):
    """The original scripts, imports swapped: seed 0, SGD lr 0.6, MSE, 400 epochs."""
    np.random.seed(0)
    net = layers.Model(_stack(layers, out_units, out_act))
    history = net.train(XOR_X, y, optim=optim.SGD(lr=0.6), loss=loss.MSE(), epochs=400,
                        verbose=False)
    assert len(history) == 400
    assert history[-1] < 0.005
    assert history[-1] < history[0] / 20
    pred = net(XOR_X)
    labels = (pred[:, 0] > 0.5) if out_units == 1 else pred.argmax(1)
    np.testing.assert_array_equal(labels, y[:, 0] if out_units == 1 else y.argmax(1))


class Swish(layers.Activation):
    """A user's own activation with its own NumPy __call__ and backward."""

    def __call__(self, x):
        self.x = x
        self.s = 1 / (1 + np.exp(-x))
        return x * self.s

    def backward(self, grad):
        return grad * (self.s + self.x * self.s * (1 - self.s))


class RefSwish(RL_.Activation):
    __call__, backward = Swish.__call__, Swish.backward


def test_custom_activation_trains_inside_a_fastbp_model():
    np.random.seed(5)
    net = layers.Model([layers.Linear(8), Swish(), layers.Linear(1), layers.Sigmoid()])
    hist = net.train(XOR_X, XOR_Y, optim=optim.SGD(lr=0.6), epochs=300, verbose=False)
    np.random.seed(5)
    ref = RL_.Model([RL_.Linear(8), RefSwish(), RL_.Linear(1), RL_.Sigmoid()])
    ref_hist = ref.train(XOR_X, XOR_Y, optim=ROpt.SGD(lr=0.6), loss=RLoss.MSE(), epochs=300)
    np.testing.assert_allclose(hist, ref_hist, rtol=1e-9)
    assert hist[-1] < hist[0] / 5


class Scale(layers.Layer):
    """A user's own Layer with parameters: y = x * w + b, elementwise over features."""

    def __call__(self, x):
        if not hasattr(self, "w"):
            self.w, self.b = np.ones(x.shape[1]), np.zeros(x.shape[1])
        self.x = x
        return x * self.w + self.b

    def backward(self, grad):
        self.w_gradient = (grad * self.x).sum(0)
        self.b_gradient = grad.sum(0)
        return grad * self.w


def test_custom_layer_with_parameters_is_updated_by_the_optimizer():
    np.random.seed(2)
    net = layers.Model([layers.Linear(4), Scale(), layers.Tanh(), layers.Linear(1)])
    net.train(XOR_X, XOR_Y, optim=optim.SGD(lr=0.1), epochs=1, verbose=False)
    scale = net.layers[1]
    # After one SGD step from w = 1: w = 1 - lr * dL/dw, so it has moved.
    assert not np.allclose(scale.w, 1.0)
    np.testing.assert_allclose(scale.w, 1 - 0.1 * scale.w_gradient)


def test_train_returns_loss_history_and_accepts_int_inputs():
    np.random.seed(0)
    net = layers.Model(_stack(layers, 1, lambda m: m.Sigmoid()))
    hist = net.train(XOR_X.astype(int), XOR_Y.astype(bool), epochs=3, verbose=False)
    assert isinstance(hist, list) and len(hist) == 3
    assert hist.history["loss"] is hist
    # Default optimizer: SGD(lr=0.01); the loss is that of MSE on the first prediction.
    np.random.seed(0)
    ref = RL_.Model(_stack(RL_, 1, lambda m: m.Sigmoid()))
    np.testing.assert_allclose(hist, ref.train(XOR_X, XOR_Y, epochs=3), rtol=1e-12)


def test_import_compiles_no_kernel_and_loads_no_progress_bar(tmp_path):
    """No kernel compiles at import; tqdm is imported by the first bar (a run with
    verbose=False never pays for it), as its console bar here, without asyncio."""
    code = ("import sys, fastbp, fastbp.kernels as K\n"
            "from numba.core.registry import CPUDispatcher\n"
            "from fastbp.kernels import nn\n"
            "d = [v for v in vars(nn).values() if isinstance(v, CPUDispatcher)]\n"
            "assert len(d) > 10, d\n"
            "print(sum(len(f.signatures) for f in d))\n"
            "print('tqdm' in sys.modules)\n"
            "import tqdm.std, fastbp.training\n"
            "bar = fastbp.training._tqdm()\n"
            "print(bar is tqdm.std.tqdm, 'asyncio' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.split("\n")[:3] == ["0", "False", "True False"]
