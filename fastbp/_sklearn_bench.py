"""The scikit-learn comparison workloads for ``fastbp bench`` and asv (issue 14).

Each workload is a pair of zero-argument fit functions, fastbp.sklearn's estimator and
scikit-learn's own with the same parameters and data, so both fit the same model. Data
is made when the workloads are built (not inside the timed call); ``warm_up`` compiles
fastbp's kernels for a workload's dtype on a tiny problem, so no timed fit compiles.
"""
import warnings

import numpy as np

__all__ = ["sklearn_workloads", "workload_data", "WORKLOADS", "warm_up"]

# name -> estimator parameters (solver adam, batch "auto", random_state 0 for all)
WORKLOADS = {
    "digits (128, 64) adam 200 it": dict(hidden_layer_sizes=(128, 64), max_iter=200),
    "make_classification 50000x100 (256, 256) adam 20 it":
        dict(hidden_layer_sizes=(256, 256), max_iter=20),
}


def workload_data(name, dtype=np.float64):
    """(X, y) of a workload: digits scaled to [0, 1], or make_classification 50,000 x 100,
    10 classes (features drawn from random_state 0)."""
    from sklearn.datasets import load_digits, make_classification
    if name.startswith("digits"):
        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(dtype), y
    X, y = make_classification(n_samples=50_000, n_features=100, n_informative=30,
                               n_classes=10, random_state=0)
    return X.astype(dtype), y


def _estimators(name, dtype):
    from sklearn.neural_network import MLPClassifier as Theirs

    from .sklearn import MLPClassifier as Ours
    params = dict(WORKLOADS[name], solver="adam", batch_size="auto", random_state=0)
    return Ours(dtype=dtype, **params), Theirs(**params)


def _fit_fn(estimator, X, y):
    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # ConvergenceWarning at max_iter, by design
            return estimator.fit(X, y)
    return fit


def warm_up(dtype=np.float64):
    """Compile fastbp's kernels for ``dtype`` on a tiny fit (about a second when cached)."""
    from .sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5)).astype(dtype)
    y = np.arange(40) % 3
    _fit_fn(MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0,
                          dtype=dtype), X, y)()


def sklearn_workloads(dtype=np.float64):
    """{workload name: {"fastbp": fit, "scikit-learn": fit}}: zero-argument functions that
    each run one full ``fit`` (data made here, once; scikit-learn trains in the data's
    dtype, so float32 compares float32 with float32)."""
    out = {}
    for name in WORKLOADS:
        X, y = workload_data(name, dtype)
        ours, theirs = _estimators(name, dtype)
        out[name] = {"fastbp": _fit_fn(ours, X, y), "scikit-learn": _fit_fn(theirs, X, y)}
    return out
