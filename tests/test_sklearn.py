"""fastbp.sklearn against scikit-learn itself: the same model, attributes and errors.

scikit-learn is the oracle here: every expected number comes from fitting
sklearn.neural_network's estimator with the same parameters on the same data.
"""
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn import neural_network as sk
from sklearn.base import clone
from sklearn.datasets import make_classification, make_multilabel_classification, \
    make_regression
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastbp import sklearn as fs

RTOL = {np.float64: 1e-9, np.float32: 1e-4}


def _data(target, n=150, seed=0):
    """(X, y) for each output type, features scaled as a user would."""
    if target in ("binary", "multiclass"):
        X, y = make_classification(n_samples=n, n_features=6, n_informative=4,
                                   n_classes=2 if target == "binary" else 4,
                                   n_clusters_per_class=1, random_state=seed)
    elif target == "multilabel":
        X, y = make_multilabel_classification(n_samples=n, n_features=6, n_classes=3,
                                              random_state=seed)
    else:
        X, y = make_regression(n_samples=n, n_features=6, n_informative=4, noise=0.5,
                               n_targets=1 if target == "regression" else 3,
                               random_state=seed)
        y = y / np.std(y)
    return StandardScaler().fit_transform(X), y


def _pair(target, **params):
    cls = "MLPRegressor" if target in ("regression", "multioutput") else "MLPClassifier"
    return getattr(sk, cls)(**params), getattr(fs, cls)(**params)


def _fit_both(target, dtype=np.float64, fit=lambda est, X, y: est.fit(X, y), **params):
    X, y = _data(target)
    theirs, ours = _pair(target, **params)
    if dtype == np.float32:
        ours.set_params(dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            fit(theirs, X.astype(dtype), y)
        except ValueError as diverged:   # scikit-learn's run diverged: so must ours
            with pytest.raises(ValueError, match=str(diverged)[:40]):
                fit(ours, X.astype(dtype), y)
            return None, None, None
        fit(ours, X.astype(dtype), y)
    return theirs, ours, X.astype(dtype)


def assert_same_model(ours, theirs, X, dtype=np.float64):
    """Weights, loss curve, counters and outputs of two fitted estimators agree."""
    rtol = RTOL[np.dtype(dtype).type]
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    assert ours.n_layers_ == theirs.n_layers_ and ours.n_outputs_ == theirs.n_outputs_
    assert ours.out_activation_ == theirs.out_activation_
    assert len(ours.coefs_) == len(theirs.coefs_)
    for mine, ref in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert mine.shape == ref.shape and mine.dtype == ref.dtype
        np.testing.assert_allclose(mine, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol)
    if theirs.best_loss_ is None:
        assert ours.best_loss_ is None
    else:
        np.testing.assert_allclose(ours.best_loss_, theirs.best_loss_, rtol=rtol)
    if theirs.validation_scores_ is None:
        assert ours.validation_scores_ is None
    else:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_,
                                   rtol=rtol)
        np.testing.assert_allclose(ours.best_validation_score_,
                                   theirs.best_validation_score_, rtol=rtol)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X)) \
        if hasattr(theirs, "classes_") else \
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=rtol, atol=rtol)
    if hasattr(theirs, "classes_"):
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X),
                                   rtol=rtol, atol=rtol)


TARGETS = ["binary", "multiclass", "multilabel", "regression", "multioutput"]
SMALL = dict(hidden_layer_sizes=(7, 5), max_iter=6, random_state=3, batch_size=32,
             learning_rate_init=0.01)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_same_model_as_scikit_learn(solver, activation, target):
    theirs, ours, X = _fit_both(target, solver=solver, activation=activation, alpha=0.01,
                                **SMALL)
    assert_same_model(ours, theirs, X)


OPTIONS = {
    "no_shuffle": dict(shuffle=False),
    "alpha_0": dict(alpha=0.0),
    "large_alpha": dict(alpha=3.0),
    "odd_batch": dict(batch_size=23),
    "batch_auto": dict(batch_size="auto"),
    "early_stopping": dict(early_stopping=True, validation_fraction=0.2, max_iter=15,
                           n_iter_no_change=3),
    "tol_stopping": dict(tol=1e-2, n_iter_no_change=2, max_iter=40),
    "invscaling": dict(learning_rate="invscaling", power_t=0.3, learning_rate_init=0.05),
    "adaptive": dict(learning_rate="adaptive", tol=10.0, n_iter_no_change=1, max_iter=40),
    "no_nesterov": dict(nesterovs_momentum=False),
    "no_momentum": dict(momentum=0.0),
    "adam_betas": dict(beta_1=0.5, beta_2=0.9, epsilon=1e-4),
}


@pytest.mark.parametrize("target", ["multiclass", "multioutput"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_give_scikit_learn_numbers(option, solver, target):
    params = {**SMALL, "solver": solver, "activation": "tanh", "alpha": 1e-3}
    params.update(OPTIONS[option])
    theirs, ours, X = _fit_both(target, **params)
    assert theirs is not None, "scikit-learn's fit diverged: pick other settings"
    assert_same_model(ours, theirs, X)
    if option in ("tol_stopping", "adaptive"):
        assert theirs.n_iter_ < params["max_iter"]   # the stopping rule did act
    if option == "early_stopping":
        assert len(ours.validation_scores_) == ours.n_iter_


@pytest.mark.parametrize("target", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_float32_matches_scikit_learn_to_1e_4(solver, target):
    theirs, ours, X = _fit_both(target, np.float32, solver=solver, activation="relu",
                                alpha=0.01, **SMALL)
    assert theirs.coefs_[0].dtype == np.float32
    assert_same_model(ours, theirs, X, np.float32)


@pytest.mark.parametrize("target", ["multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_matches(solver, target):
    def fit(est, X, y):
        kw = {} if target == "regression" else \
            {"classes": np.unique(y) if y.ndim == 1 else np.arange(y.shape[1])}
        est.partial_fit(X[:60], y[:60], **kw)
        est.partial_fit(X[60:], y[60:])
        est.partial_fit(X, y)
    params = {**SMALL, "solver": solver, "activation": "relu"}
    theirs, ours, X = _fit_both(target, fit=fit, **params)
    assert ours.n_iter_ == 1
    assert_same_model(ours, theirs, X)


@pytest.mark.parametrize("target", ["multiclass", "regression"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_warm_start_matches(solver, target):
    def fit(est, X, y):
        est.fit(X, y)
        est.set_params(max_iter=4)
        est.fit(X[::-1], y[::-1])
    params = {**SMALL, "solver": solver, "activation": "logistic", "warm_start": True}
    theirs, ours, X = _fit_both(target, fit=fit, **params)
    assert len(ours.loss_curve_) == 10
    assert_same_model(ours, theirs, X)


def test_random_state_instance_is_drawn_from_as_scikit_learn_does():
    X, y = _data("multiclass")
    theirs, ours = _pair("multiclass", **{**SMALL, "random_state": None})
    theirs.set_params(random_state=np.random.RandomState(5)).fit(X, y)
    ours.set_params(random_state=np.random.RandomState(5)).fit(X, y)
    assert_same_model(ours, theirs, X)


def test_convergence_warning_when_max_iter_is_reached():
    X, y = _data("binary")
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(6\\) reached"):
        fs.MLPClassifier(**SMALL).fit(X, y)


def test_lbfgs_and_poisson_are_refused_with_the_reason():
    X, y = _data("binary")
    with pytest.raises(ValueError, match="lbfgs.*not offered"):
        fs.MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="poisson.*not offered"):
        fs.MLPRegressor(loss="poisson").fit(X, y.astype(float))
    fs.MLPClassifier(max_fun=5, **SMALL).fit(X, y)   # accepted, unused


def test_bad_input_gets_scikit_learns_errors():
    X, y = _data("multiclass")
    with pytest.raises(NotFittedError):
        fs.MLPClassifier().predict(X)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fs.MLPClassifier(**SMALL).fit(bad, y)
    with pytest.raises(TypeError, match="[Ss]parse data was passed"):
        fs.MLPClassifier(**SMALL).fit(sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="alpha"):
        fs.MLPClassifier(alpha=-1).fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        fs.MLPClassifier(hidden_layer_sizes=(3, 0)).fit(X, y)
    est = fs.MLPClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :4])
    with pytest.raises(ValueError, match="classes must be passed"):
        fs.MLPClassifier().partial_fit(X, y)
    with pytest.raises(TypeError, match="dtype"):
        fs.MLPClassifier(dtype=np.int32, **{k: v for k, v in SMALL.items()}).fit(X, y)


def test_pipeline_grid_search_clone_and_pickle():
    X, y = _data("multiclass")
    pipe = make_pipeline(StandardScaler(), fs.MLPClassifier(**SMALL))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=3).fit(X, y)
    assert search.best_params_["mlpclassifier__alpha"] in (1e-4, 1e-1)
    scores = cross_val_score(fs.MLPRegressor(**SMALL), *_data("regression"), cv=3)
    assert scores.shape == (3,)
    est = search.best_estimator_[-1]
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "coefs_")
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))


def test_same_parameters_and_defaults_as_scikit_learn():
    for name in ("MLPClassifier", "MLPRegressor"):
        theirs, ours = getattr(sk, name)().get_params(), getattr(fs, name)().get_params()
        assert ours.pop("dtype") is None   # as scikit-learn picks it (see below)
        assert ours == theirs


@pytest.mark.parametrize("data_dtype", [np.float32, np.float64, np.int64])
def test_the_default_dtype_follows_the_data_as_scikit_learn_s_does(data_dtype):
    """float32 X trained in float64 before (dtype defaulted to float64): predictions
    3e-7 off scikit-learn's. Now float32 X trains in float32, anything else in float64,
    as scikit-learn's own fit does; a warm start keeps the fitted dtype."""
    X, y = _data("multiclass")
    X = (X * 10).astype(data_dtype)
    theirs = sk.MLPClassifier(solver="sgd", **SMALL).fit(X, y)
    ours = fs.MLPClassifier(solver="sgd", **SMALL).fit(X, y)
    want = np.float32 if data_dtype == np.float32 else np.float64
    assert theirs.coefs_[0].dtype == want and ours.coefs_[0].dtype == want
    assert_same_model(ours, theirs, X, want)
    ours.set_params(warm_start=True, max_iter=2).fit(X.astype(np.float64), y)
    assert ours.coefs_[0].dtype == want


def test_import_fastbp_does_not_import_scikit_learn():
    code = "import sys, fastbp; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir()).stdout   # not the repo root
    assert out.strip() == "False"


# scikit-learn's own estimator checks (about 15 s of CPU). Expected failures: none. The
# skipped ones are skipped by scikit-learn itself: the pandas and array-API checks when
# those are not installed, and decision_function checks (MLPClassifier has none).
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([fs.MLPClassifier(max_iter=60, random_state=0),
                          fs.MLPRegressor(max_iter=60, random_state=0)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_larger_sweep(option, solver, activation, target):
    params = {**SMALL, "hidden_layer_sizes": (16, 9, 5), "max_iter": 12,
              "solver": solver, "activation": activation, "alpha": 1e-3}
    params.update(OPTIONS[option])
    theirs, ours, X = _fit_both(target, **params)
    if theirs is not None:   # else both raised the same divergence error
        assert_same_model(ours, theirs, X)
