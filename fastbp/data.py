"""Built-in datasets: xor(), spirals() (synthetic) and digits() (scikit-learn's 8x8 digits)."""
import importlib.util
import os

import numpy as np


def one_hot(labels, n_classes=None):
    """(N,) class labels, integers in [0, n_classes) -> (N, n_classes) float64 one-hot
    rows. ``n_classes`` defaults to the largest label + 1. Negative, fractional and
    too large labels are refused (NumPy indexing would wrap or truncate them)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"one_hot: labels must be a non-empty 1-D sequence of class "
                         f"numbers, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and
                                        not np.array_equal(arr, np.round(arr))):
        raise ValueError(f"one_hot: labels must be whole numbers (class 0, 1, ...); the "
                         f"first are {arr[:5].tolist()}")
    labels = arr.astype(np.int64)
    if n_classes is None:
        n_classes = int(labels.max()) + 1
    elif isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or \
            n_classes < 1:
        raise ValueError(f"one_hot: n_classes must be an integer >= 1, got {n_classes!r}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise ValueError(f"one_hot: label {labels[bad[0]]} at index {bad[0]} is not a class "
                         f"in [0, {n_classes})")
    return np.eye(n_classes)[labels]


def xor():
    """The XOR truth table: x (4, 2), y (4, 1), float64."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    return x, (x[:, :1] != x[:, 1:]).astype(np.float64)


def spirals(n_per_class=100, n_classes=3, noise=0.2, seed=0):
    """Interleaved 2-D spirals, one arm per class: x (N, 2), one-hot y (N, n_classes).

    Drawn from ``np.random.default_rng(seed)``; the global generator is not touched.
    """
    for name, value in (("n_per_class", n_per_class), ("n_classes", n_classes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"spirals: {name} must be an integer >= 1, got {value!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or \
            not 0 <= noise < np.inf:
        raise ValueError(f"spirals: noise must be a finite number >= 0 (the standard "
                         f"deviation of the angle's noise), got {noise!r}")
    rng = np.random.default_rng(seed)
    radius = np.tile(np.linspace(0.0, 1.0, n_per_class), n_classes)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    angle = (labels * 2 * np.pi / n_classes + radius * 4
             + rng.normal(0, noise, n_per_class * n_classes))
    x = np.column_stack([radius * np.sin(angle), radius * np.cos(angle)])
    return x, one_hot(labels, n_classes)


def digits(test_fraction=0.2):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

    Pixels scaled to [0, 1], labels one-hot over 10 classes, split by a fixed permutation
    (the same on every machine): returns ``(x_train, y_train), (x_test, y_test)``.
    Needs scikit-learn (``pip install "fastbp[digits]"``). ``test_fraction`` is in
    [0, 1): the share of the 1797 images held out.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)) \
            or not 0 <= test_fraction < 1:
        raise ValueError(f"digits: test_fraction must be a number in [0, 1) (the share held "
                         f"out for testing, e.g. 0.2), got {test_fraction!r}")
    table = _digits_table()
    x = table[:, :-1] / 16.0
    y = one_hot(table[:, -1], 10)
    order = np.random.default_rng(20240611).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    if n_test >= len(x):
        raise ValueError(f"digits: test_fraction={test_fraction!r} holds out all {len(x)} "
                         f"images and leaves none for training; use a smaller fraction")
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def scikit_learn_spec():
    """scikit-learn's module spec, or None when it is not installed (nothing imported)."""
    try:
        return importlib.util.find_spec("sklearn")    # finds the package, runs nothing
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules["sklearn"] = None
        return None


def _digits_table():
    """The (1797, 65) float64 table behind scikit-learn's ``load_digits`` (64 pixels, then
    the label). Read from scikit-learn's package data directly when it is where scikit-learn
    keeps it, as ``load_digits`` reads it: importing scikit-learn takes ~1.5 s here, about
    half of a warm ``fastbp train digits --epochs 1``. Otherwise through ``load_digits``."""
    spec = scikit_learn_spec()
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or ():
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return np.loadtxt(path, delimiter=",")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('fastbp.data.digits() reads the digits that ship with '
                          'scikit-learn; install it with: pip install "fastbp[digits]" '
                          '(or pip install scikit-learn)') from e
    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target]).astype(np.float64)


def shard(x, y, comm):
    """This rank's contiguous share of (x, y) for ``Model.train(..., comm=comm)``.

    Rank r of p gets rows ``[r * n // p, (r + 1) * n // p)``: the shares differ by at
    most one row and, in rank order, are the whole data set. Every rank must pass the
    same x, y. ``comm``: an mpi4py communicator (only its rank and size are read).
    Returns views ``x[lo:hi], y[lo:hi]``.
    """
    x, y = np.asarray(x), np.asarray(y)
    rank, size = comm.Get_rank(), comm.Get_size()
    n = len(x)
    if len(y) != n:
        raise ValueError(f"shard: x has {n} rows but y has {len(y)}; they must match")
    if n < size:
        raise ValueError(f"shard: {n} rows cannot be split over {size} ranks (every rank "
                         f"needs at least one row); use fewer ranks or more data")
    lo, hi = rank * n // size, (rank + 1) * n // size
    return x[lo:hi], y[lo:hi]
