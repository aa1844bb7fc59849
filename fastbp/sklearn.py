"""scikit-learn's MLPClassifier and MLPRegressor, trained through fastbp's compiled plan.

Change one import::

    from fastbp.sklearn import MLPClassifier   # was: from sklearn.neural_network import ...

Same parameters and defaults, same fitted attributes, and the same model: with the same
``random_state`` and data, the weights match scikit-learn's to rounding. The estimator
re-expresses scikit-learn's stochastic solvers with fastbp's building blocks:

- Glorot-uniform weights drawn from the same ``RandomState`` in the same order;
- the same early-stopping split and per-epoch shuffle (both draw from that generator);
- Linear layers with the hidden activation, then Softmax (multiclass), Sigmoid (binary,
  multilabel) or Identity (regression), each ending in a mean-reduced loss
  (CategoricalCrossentropy, BinaryCrossentropy, SquaredError), probabilities clipped at
  machine epsilon as scikit-learn's log-loss does;
- ``alpha`` is the optimizers' ``weight_decay`` (weights only, divided by the batch rows
  as scikit-learn does); sgd is Nesterov / Momentum, adam is AdamLR (scikit-learn's form);
- one compiled epoch per call, so the learning-rate schedules, ``tol`` /
  ``n_iter_no_change`` stopping and early stopping run between epochs, in Python, as in
  scikit-learn.

scikit-learn is imported here only: ``import fastbp`` never imports it.
"""
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils import shuffle as shuffled_copy
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from . import loss as L
from . import optim as O
from ._checks import float_dtype
from .model import Model
from .modules import Identity, Linear, Relu, Sigmoid, Softmax, Tanh
from .plan import epoch_runner

__all__ = ["MLPClassifier", "MLPRegressor"]

HIDDEN = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": Relu}
# output activation name -> (layer, mean-reduced loss whose gradient w.r.t. the logits is
# output - y, as scikit-learn back-propagates)
OUTPUT = {"softmax": (Softmax, L.CategoricalCrossentropy),
          "logistic": (Sigmoid, L.BinaryCrossentropy),
          "identity": (Identity, L.SquaredError)}
PREDICT_ROWS = 4096   # predict in batches: buffers stay small for large X


def _lbfgs_refused():
    return ValueError(
        "solver='lbfgs' is not offered by fastbp.sklearn: scikit-learn's L-BFGS is driven "
        "by scipy.optimize, which calls back into Python for the loss and gradient of the "
        "whole data set at every step and never runs the mini-batch epochs fastbp "
        "compiles. Use solver='adam' or 'sgd' here, or sklearn.neural_network's estimator "
        "for lbfgs.")


class _BaseMLP(BaseEstimator):
    """The part shared by MLPClassifier and MLPRegressor (scikit-learn's names)."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dtype": "no_validation",   # checked by fastbp's float_dtype
    }

    # -- set-up ------------------------------------------------------------------------

    def _set_params(self, values):
        """Store the constructor's arguments unchanged, as scikit-learn requires (both
        estimators' ``__init__`` list them explicitly, for ``get_params``)."""
        for name in self._get_param_names():
            setattr(self, name, values[name])
    def _layer_units(self, n_features):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [n_features] + [int(s) for s in sizes] + [self.n_outputs_]

    def _initialize(self, layer_units, dtype, random_state):
        """scikit-learn's fresh start: counters, output activation, Glorot weights."""
        self.n_iter_, self.t_ = 0, 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        # Glorot uniform; sqrt(2 / ...) for the logistic activation. W then b, layer by layer.
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            w = random_state.uniform(-bound, bound, (fan_in, fan_out))
            b = random_state.uniform(-bound, bound, fan_out)
            self.coefs_.append(w.astype(dtype, copy=False))
            self.intercepts_.append(b.astype(dtype, copy=False))
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = self.best_validation_score_ = None

    def _model(self, dtype):
        """A fastbp Model holding coefs_ and intercepts_ (copied into its flat buffer)."""
        out_layer = OUTPUT[self.out_activation_][0]
        stack = []
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            linear = Linear(w.shape[1])
            linear.allocate(w.shape[0], dtype)     # draws nothing
            linear.w, linear.b = w, b
            last = i == len(self.coefs_) - 1
            stack += [linear, out_layer() if last else HIDDEN[self.activation]()]
        model = Model(stack, dtype=dtype)
        model.build(self.coefs_[0].shape[0])
        return model

    def _unpack(self, model):
        linear = model.linear_layers
        self.coefs_ = [layer.w.copy() for layer in linear]
        self.intercepts_ = [layer.b.copy() for layer in linear]

    def _optimizer_for(self):
        if self.solver == "adam":
            return O.AdamLR(self.learning_rate_init, self.beta_1, self.beta_2,
                            self.epsilon, weight_decay=self.alpha)
        cls = O.Nesterov if self.nesterovs_momentum else O.Momentum
        return cls(self.learning_rate_init, self.momentum, weight_decay=self.alpha)

    # -- fit -----------------------------------------------------------------------------
    def _fit(self, X, y, incremental):
        self._validate_params()
        if self.solver == "lbfgs":
            raise _lbfgs_refused()
        if getattr(self, "loss", "squared_error") != "squared_error" and \
                not is_classifier(self):
            raise ValueError(f"loss={self.loss!r} is not offered by fastbp.sklearn (only "
                             f"'squared_error'); use sklearn.neural_network.MLPRegressor")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        dtype = self._fit_dtype(X, first_pass)
        X, y = self._validate_input(X, y, incremental, reset=first_pass, dtype=dtype)
        y = np.asarray(y.reshape(-1, 1) if y.ndim == 1 else y)
        self.n_outputs_ = y.shape[1]
        layer_units = self._layer_units(X.shape[1])
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, dtype, random_state)
        elif [c.shape for c in self.coefs_] != list(zip(layer_units[:-1], layer_units[1:])):
            raise ValueError(f"{type(self).__name__}: the data has {X.shape[1]} features and "
                             f"{self.n_outputs_} outputs, the fitted layers are "
                             f"{[c.shape for c in self.coefs_]}; refit without warm_start")
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._optimizer_for()
        self._fit_stochastic(X, y, random_state, incremental, dtype)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed.")
        return self

    def _split(self, X, y, random_state, incremental):
        """(X_train, y_train, X_val, y_val): scikit-learn's early-stopping split."""
        if not self.early_stopping:
            return X, y, None, None
        if incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, random_state=random_state, test_size=self.validation_fraction,
            stratify=stratify)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        if is_classifier(self):
            y_val = self._label_binarizer.inverse_transform(y_val)
        return X_train, y_train, X_val, y_val

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped")
        return int(np.clip(self.batch_size, 1, n_samples))

    def _fit_dtype(self, X, first_pass):
        """The dtype: ``self.dtype``, or by default as scikit-learn picks it (float32 data
        trains in float32, anything else in float64), and a warm start or later
        ``partial_fit`` keeps the fitted one."""
        if self.dtype is not None:
            return float_dtype(self.dtype, type(self).__name__)
        if not first_pass:
            return self.coefs_[0].dtype
        return np.dtype(np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64)

    def _fit_stochastic(self, X, y, random_state, incremental, dtype):
        X_train, y_train, X_val, y_val = self._split(X, y, random_state, incremental)
        n_samples = X_train.shape[0]
        batch_size = self._batch_size(n_samples)
        model = self._model(dtype)
        # partial_fit / warm_start: a new Model holds the fitted weights; the optimizer's
        # moments and step count carry over to it (an optimizer binds to one Model).
        self._optimizer.load_state_dict(self._optimizer.state_dict())
        # probabilities clipped at machine epsilon inside the logarithms, as scikit-learn
        loss = OUTPUT[self.out_activation_][1](reduction="mean", eps=np.finfo(dtype).eps)
        # C-contiguous and writable: a read-only input (a memmap) is copied once here, so
        # the kernels never compile a second, read-only signature of the plan for it.
        x, y_train = (np.require(a, dtype, ["C_CONTIGUOUS", "WRITEABLE"])
                      for a in (X_train, y_train))
        run_epoch = epoch_runner(model, x, y_train, batch_size, self._optimizer, loss)
        sample_idx = np.arange(n_samples)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                # the same permutation of the previous order that scikit-learn draws
                order = None
                if self.shuffle:
                    sample_idx = order = shuffled_copy(sample_idx, random_state=random_state)
                self.loss_ = run_epoch([order])[0]
                self.n_iter_ += 1
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(model, X_val, y_val)
                self._iteration_ends()
                if self._no_improvement_count > self.n_iter_no_change:
                    if self._stop():
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and "
                                  "the optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        self._unpack(model)
        if self.early_stopping:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts

    def _update_no_improvement_count(self, model, X_val, y_val):
        if self.early_stopping:
            self._unpack(model)
            score = self._score(X_val, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _iteration_ends(self):
        """sgd's invscaling schedule: lr = learning_rate_init / (t_ + 1) ** power_t."""
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._optimizer.lr = float(self.learning_rate_init) / \
                (self.t_ + 1) ** self.power_t

    def _stop(self):
        """True to stop; sgd's adaptive schedule divides lr by 5 instead, until 1e-6."""
        what = "Validation score" if self.early_stopping else "Training loss"
        msg = (f"{what} did not improve more than tol={self.tol:f} for "
               f"{self.n_iter_no_change} consecutive epochs.")
        if self.solver == "sgd" and self.learning_rate == "adaptive":
            if self._optimizer.lr > 1e-6:
                self._optimizer.lr /= 5.0
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % self._optimizer.lr)
                return False
            msg += " Learning rate too small."
        if self.verbose:
            print(msg + " Stopping.")
        return True

    # -- predict -------------------------------------------------------------------------
    def _forward(self, X, check_input=True):
        """The output layer's values for X, (n_samples, n_outputs_), in fit's dtype."""
        dtype = self.coefs_[0].dtype
        if check_input:
            X = validate_data(self, X, reset=False, dtype=dtype)
        model = self._model(dtype)
        return model.predict(np.ascontiguousarray(X, dtype),
                             batch_size=max(1, min(PREDICT_ROWS, len(X))))

    def _score_with(self, X, y, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred)

    def fit(self, X, y):
        """Fit the model to data matrix X (n_samples, n_features) and targets y.

        Returns self.
        """
        return self._fit(X, y, incremental=False)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 "%s is not stochastic." % self.solver)
        return True


def _params_doc(extra=""):
    return f"""
    Parameters
    ----------
    {extra}hidden_layer_sizes, activation, solver ('sgd', 'adam'; 'lbfgs' raises
    ValueError), alpha, batch_size, learning_rate, learning_rate_init, power_t,
    max_iter, shuffle, random_state, tol, verbose, warm_start, momentum,
    nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
    n_iter_no_change, max_fun : as scikit-learn's, with its defaults (max_fun is
    accepted and unused: it only concerns lbfgs).
    dtype : numpy float dtype or None, default None
        The dtype the model trains in; float32 halves memory and is faster. None picks
        it as scikit-learn does: float32 for float32 X, else float64.
    """


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron classifier: scikit-learn's, trained by fastbp.

    Binary, multiclass (softmax output) and multilabel (logistic outputs) targets.
    Fitted attributes as scikit-learn's: classes_, coefs_ (list of (n_in, n_out) arrays),
    intercepts_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, n_iter_, n_layers_, n_outputs_, out_activation_,
    n_features_in_, feature_names_in_.
    """ + _params_doc()

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dtype=None):
        self._set_params(locals())

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = validate_data(self, X, y, multi_output=True, dtype=dtype, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        f"warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _score(self, X, y):
        return self._score_with(X, y, accuracy_score)

    def predict(self, X):
        """Class labels for X (n_samples, n_features): (n_samples,) or, multilabel,
        (n_samples, n_classes)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y); ``classes`` (all labels) is required on the first call."""
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None and getattr(self, "classes_", None) is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError("`classes=%r` is not the same as on last call to "
                                 "partial_fit, was: %r" % (classes, self.classes_))
        elif classes is not None:   # the first call
            self.classes_ = unique_labels(classes)
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes)."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """log of predict_proba, (n_samples, n_classes)."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron regressor: scikit-learn's, trained by fastbp.

    Identity output and the halved squared error; single and multi-output targets.
    Fitted attributes as scikit-learn's (see MLPClassifier, without classes_).
    """ + _params_doc("loss : 'squared_error' only ('poisson' raises ValueError).\n    ")

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints,
                                    "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dtype=None):
        self._set_params(locals())

    def _output_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=dtype,
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _score(self, X, y):
        return self._score_with(X, y, r2_score)

    def predict(self, X):
        """Predictions for X (n_samples, n_features): (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current weights."""
        return self._fit(X, y, incremental=True)
