"""fastbp.sklearn.MLPClassifier against scikit-learn's own (``impl``): the same fit.

Workloads and data come from ``fastbp._sklearn_bench``. setup compiles fastbp's kernels
on a tiny problem (``warm_up``), so the timed fit never compiles and the large setup
stays cheap. Skipped when scikit-learn is not installed in the benchmark environment.
"""
from fastbp import _sklearn_bench as W

NAMES = {"digits": "digits (128, 64) adam 200 it",
         "classification_50k": "make_classification 50000x100 (256, 256) adam 20 it"}


class MLPClassifierFit:
    """fit of MLPClassifier: adam, batch "auto", random_state 0, float64."""
    params = [["fastbp", "sklearn"], list(NAMES)]
    param_names = ["impl", "workload"]
    timeout = 600
    number, repeat = 1, 3

    def setup(self, impl, workload):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        if impl == "fastbp":
            W.warm_up()
        X, y = W.workload_data(NAMES[workload])
        ours, theirs = W._estimators(NAMES[workload], X.dtype)
        self.fit = W._fit_fn(ours if impl == "fastbp" else theirs, X, y)

    def time_fit(self, impl, workload):
        self.fit()
