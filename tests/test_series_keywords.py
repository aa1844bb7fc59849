"""Issue 13: the later scripts of the from-scratch series spell the optimizer keywords
their own way (RMSProp(beta=, epsilon=), Adam(epsilon=)); fastbp and its reference accept
them as aliases of fastbp's names and keep fastbp's names everywhere they show."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp
from fastbp import layers, optim
from fastbp.reference import optim as RO

SERIES_SCRIPT = textwrap.dedent("""
    from fastbp import layers, loss, optim
    import numpy as np

    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    y = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])

    np.random.seed(0)
    net = layers.Model([
        layers.Linear(8), layers.Relu(),
        layers.Linear(4), layers.Sigmoid(),
        layers.Linear(2), layers.Softmax(),
    ])
    net.train(x, y, optim=optim.RMSProp(lr=0.02, beta=0.9, epsilon=1e-10),
              loss=loss.MSE(), epochs=200, verbose=False)
    layers.save(net, "model")
    again = layers.load("model")
    print(repr(net(x).tolist()))
    print(repr(again(x).tolist()))
""")


def test_the_series_example_solves_xor_and_reloads_identically(tmp_path):
    out = subprocess.run([sys.executable, "-c", SERIES_SCRIPT], cwd=tmp_path, timeout=300,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    before, after = (np.array(eval(line)) for line in out[-2:])
    assert before.argmax(1).tolist() == [0, 1, 1, 0]          # XOR solved
    assert (before.max(1) > 0.8).all()
    np.testing.assert_array_equal(after, before)               # the file keeps every bit
    assert (tmp_path / "model").exists()                      # saved at exactly that path


@pytest.mark.parametrize("module", [optim, RO], ids=["fastbp", "reference"])
def test_aliases_set_the_same_hyper_parameters(module):
    a = module.RMSProp(lr=0.02, beta=0.9, epsilon=1e-10)
    b = module.RMSProp(lr=0.02, alpha=0.9, eps=1e-10)
    assert (a.alpha, a.eps) == (b.alpha, b.eps) == (0.9, 1e-10)
    c = module.Adam(lr=0.01, epsilon=1e-7)
    assert c.eps == 1e-7 and module.Adam(lr=0.01).eps == 1e-8
    assert module.RMSProp().alpha == 0.99 and module.RMSProp().eps == 1e-8
    assert module.Momentum(lr=0.01, beta=0.5).beta == 0.5


@pytest.mark.parametrize("module", [optim, RO], ids=["fastbp", "reference"])
@pytest.mark.parametrize("make", [lambda m: m.RMSProp(alpha=0.9, beta=0.9),
                                  lambda m: m.RMSProp(eps=1e-8, epsilon=1e-8),
                                  lambda m: m.Adam(eps=1e-8, epsilon=1e-8)])
def test_both_spellings_at_once_is_a_type_error(module, make):
    with pytest.raises(TypeError, match="not both|one name only"):
        make(module)


def test_aliases_train_like_fastbps_names_and_match_the_reference():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    y = np.array([[0], [1], [1], [0]], float)
    from fastbp import loss
    from fastbp.reference import layers as R
    from fastbp.reference import loss as RL
    runs = []
    for mod, opt in ((layers, optim.RMSProp(lr=0.02, beta=0.9, epsilon=1e-10)),
                     (layers, optim.RMSProp(lr=0.02, alpha=0.9, eps=1e-10)),
                     (R, RO.RMSProp(lr=0.02, beta=0.9, epsilon=1e-10))):
        np.random.seed(0)
        net = mod.Model([mod.Linear(4), mod.Tanh(), mod.Linear(1), mod.Sigmoid()])
        kw = {"verbose": False} if mod is layers else {}
        runs.append(net.train(x, y, opt, (loss if mod is layers else RL).MSE(), epochs=30,
                              **kw))
    assert runs[0] == runs[1]
    np.testing.assert_allclose(runs[0], runs[2], rtol=1e-10)


def test_repr_and_saved_files_use_fastbps_names(tmp_path):
    opt = optim.RMSProp(lr=0.02, beta=0.9, epsilon=1e-10)
    assert repr(opt) == "RMSProp(lr=0.02, alpha=0.9, eps=1e-10)"
    assert repr(optim.Adam(epsilon=1e-7)) == \
        "Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-07)"
    net = layers.Model([layers.Linear(2)])
    net(np.ones((1, 3)))
    fastbp.save(net, tmp_path / "m.npz", opt)
    back = fastbp.load_optimizer(tmp_path / "m.npz")
    assert repr(back) == repr(opt)
    with np.load(tmp_path / "m.npz") as f:
        meta = f["__fastbp__"].tobytes().decode()
    assert '"hyper": {"lr": 0.02, "alpha": 0.9, "eps": 1e-10' in meta
    assert "epsilon" not in meta and "beta" not in meta
