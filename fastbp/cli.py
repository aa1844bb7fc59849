"""The ``fastbp`` command: ``fastbp xor``, ``fastbp train digits``, ``fastbp bench``."""
import argparse
import gc
import math
import os
import sys

import numpy as np


# argparse types: a bad value is a usage error (exit 2), never a traceback.
def _int_at_least(low, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be an integer <= {high}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


# What --plot can write (matplotlib's Agg canvas): the file name's suffix picks it.
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _warn_if_worse(history):
    """One line on stderr when training ended with a higher loss than its first epoch."""
    if history[-1] > history[0]:
        print(f"fastbp: warning: the loss rose from {history[0]:.4g} (epoch 1) to "
              f"{history[-1]:.4g} (epoch {len(history)}); training made the model worse: "
              f"lower --lr", file=sys.stderr)


def xor(args):
    from . import layers, loss, optim
    x = np.array([[0, 1], [0, 0], [1, 1], [0, 1] if args.original_data else [1, 0]])
    y = np.array([[1], [0], [0], [1]])
    np.random.seed(args.seed)
    net = layers.Model([layers.Linear(8), layers.Relu(), layers.Linear(4), layers.Sigmoid(),
                        layers.Linear(1), layers.Sigmoid()])
    history = net.train(x, y, optim=optim.SGD(lr=0.6), loss=loss.MSE(), epochs=args.epochs,
                        verbose=not args.quiet)
    print(f"final loss {history[-1]:.6f}")
    _warn_if_worse(history)
    for row, p in zip(x, net.predict(x)[:, 0]):
        print(f"{row[0]} xor {row[1]} -> {p:.4f} ({int(p > 0.5)})")


OPTIMIZERS = {"sgd": "SGD", "momentum": "Momentum", "rmsprop": "RMSProp", "adam": "Adam"}


def _world(args):
    """MPI.COMM_WORLD with --distributed (mpi4py imported only then), else None."""
    if not args.distributed:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise SystemExit('--distributed needs mpi4py: pip install "fastbp[mpi]", then run '
                         'mpiexec -n 2 fastbp train digits --distributed')
    return MPI.COMM_WORLD


def train(args):
    from . import data, io, layers, loss, optim
    from .training import accuracy
    comm = _world(args)
    if args.dataset == "digits":
        (x, y), (x_test, y_test) = data.digits()
        hidden = [128, 64]
    else:
        x, y = data.spirals(seed=args.seed)
        order = np.random.default_rng(args.seed).permutation(len(x))
        n_test = len(x) // 5
        (x_test, y_test), (x, y) = (x[order[:n_test]], y[order[:n_test]]), \
            (x[order[n_test:]], y[order[n_test:]])
        hidden = [64, 64]
    if comm is not None:   # each rank trains on its contiguous share of the rows
        x, y = data.shard(x, y, comm)
    lead = comm is None or comm.Get_rank() == 0   # the one rank that prints
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    stack = []
    for units in hidden:
        stack += [layers.Linear(units, init="he", rng=rng), layers.Relu()]
    stack += [layers.Linear(y.shape[1], init="xavier", rng=rng), layers.Softmax()]
    net = layers.Model(stack, dtype=dtype)
    opt = getattr(optim, OPTIMIZERS[args.optimizer])(lr=args.lr)
    history = net.train(x, y, optim=opt, loss=loss.CategoricalCrossentropy(),
                        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                        validation_data=(x_test, y_test), verbose=not args.quiet,
                        comm=comm)
    acc = accuracy(net.predict(x_test), y_test)
    if comm is not None and lead:
        print(f"{comm.Get_size()} ranks, {len(x)} rows and batch {args.batch_size} each "
              f"(rank 0)")
    if lead:
        print(f"{args.dataset}: {x.shape[1]}-{'-'.join(map(str, hidden))}-{y.shape[1]} "
              f"{dtype.name}, {args.optimizer} lr {args.lr}, "
              f"batch {min(args.batch_size, len(x))}, {args.epochs} epochs: final loss "
              f"{history[-1]:.4f}, test accuracy {100 * acc:.2f}% ({len(x_test)} held-out "
              f"samples)")
        _warn_if_worse(history)
    if args.save:
        io.save(net, args.save, opt, comm=comm)
        if lead:
            print(f"saved model and optimizer state to {args.save}")
    if args.plot and lead:
        _plot(history, args.plot)
        print(f"wrote {args.plot}")


def _check_plot_path(parser, path):
    """Before training: matplotlib is there, it can write this kind of file, and
    ``path`` can be written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error('--plot needs matplotlib: pip install "fastbp[plot]"')
    if _plot_format(path) not in PLOT_FORMATS:
        parser.error(f"--plot {path}: cannot write a .{_plot_format(path)} file; name it "
                     f"with one of {', '.join('.' + f for f in PLOT_FORMATS)} (no suffix: "
                     f"PNG)")
    _check_writable(parser, "--plot", path)


def _plot_format(path):
    return os.path.splitext(path)[1][1:].lower() or "png"


def _check_writable(parser, option, path):
    """Before training, so that a long run never ends unable to keep its result."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK) \
            or (os.path.exists(path) and not os.access(path, os.W_OK)):
        parser.error(f"{option} {path}: cannot write there (no such folder, a folder, or "
                     f"no permission)")


def _plot(history, path):
    """Loss per sample (train and test, as History reports them) and test accuracy, by
    epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(history) + 1)
    a.plot(epochs, np.array(history), label="train")
    a.plot(epochs, np.array(history.history["val_loss"]), label="test")
    a.set(xlabel="epoch", ylabel="cross-entropy per sample", yscale="log")
    a.legend()
    b.plot(epochs, 100 * np.array(history.history["val_accuracy"]))
    b.set(xlabel="epoch", ylabel="test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format=_plot_format(path))   # exactly at path, as --save


def _check_before_running(args):
    """What would otherwise fail after the work (a model trained for nothing) or with a
    traceback: usage errors (exit 2) of the subcommand, before anything runs."""
    parser = args.parser
    if getattr(args, "plot", None):
        _check_plot_path(parser, args.plot)
    if getattr(args, "save", None):
        _check_writable(parser, "--save", args.save)
        if args.plot and os.path.realpath(args.plot) == os.path.realpath(args.save):
            parser.error(f"--save and --plot name the same file ({args.save}); the plot "
                         f"would overwrite the saved model")
    if getattr(args, "dataset", None) == "digits":
        from .data import scikit_learn_spec
        if scikit_learn_spec() is None:
            parser.error('the digits data set ships with scikit-learn: pip install '
                         '"fastbp[digits]" (or pip install scikit-learn)')
    if args.command == "bench":
        from .bench import OPTIONAL, WORKLOADS
        unknown = [name for name in args.workloads if name not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from "
                         f"{' '.join(n for n in WORKLOADS if n not in OPTIONAL)} or the "
                         f"scikit-learn fits {' '.join(sorted(OPTIONAL))}")


def bench(args):
    from . import bench as _bench
    return _bench.main(args)


def warmup(args):
    from ._warmup import warmup as _warmup
    if args.report:
        print(_warmup(report=True))
    else:
        print(f"compiled in {_warmup():.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("xor", help="train the original 2-8-4-1 XOR network")
    p.add_argument("--epochs", type=_int_at_least(1), default=400)
    p.add_argument("--seed", type=_int_at_least(0, 2**32 - 1), default=1,
                   help="np.random.seed before building")
    p.add_argument("--original-data", action="store_true",
                   help="the original example's inputs (its 4th row repeats [0, 1])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=xor, parser=p)
    p = sub.add_parser("train", help="train an MLP on a built-in dataset")
    p.add_argument("dataset", choices=["digits", "spirals"])
    p.add_argument("--epochs", type=_int_at_least(1), default=20)
    p.add_argument("--batch-size", type=_int_at_least(1), default=32)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="weights and shuffling")
    p.add_argument("--save", metavar="PATH", help="save model + optimizer state (.npz)")
    p.add_argument("--plot", metavar="PATH",
                   help="write a loss/accuracy curve (PNG; .pdf, .svg or .jpg by the suffix)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI (mpiexec -n P fastbp train ... "
                        "--distributed): each rank trains on its share of the rows, "
                        "--batch-size is per rank; needs the mpi extra")
    p.set_defaults(run=train, parser=p)
    p = sub.add_parser("bench", help="time the speed workloads against the competitors, "
                       "each library in its own worker process")
    p.add_argument("workloads", nargs="*", help="subset of: xor digits digits-adam medium "
                   "medium64 large32 large64 softmax layerwise train-overhead process "
                   "(default: all of these), or the scikit-learn fits, which run only "
                   "when named: sklearn-digits sklearn-50k sklearn-digits32 sklearn-50k32")
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    p.add_argument("--rounds", type=_int_at_least(1), help="interleaved rounds")
    p.add_argument("--cold", action="store_true",
                   help="also time whole processes (`fastbp xor`, `fastbp train digits "
                   "--epochs 1`) with an empty and a warm Numba cache, and the "
                   "competitors' first steps")
    p.set_defaults(run=bench, parser=p)
    p = sub.add_parser("warmup", help="compile every kernel now (kept in Numba's cache)")
    p.add_argument("--report", action="store_true",
                   help="print each kernel and signature with its compile or load seconds")
    p.set_defaults(run=warmup, parser=p)
    args = parser.parse_args(argv)
    _check_before_running(args)
    try:
        return args.run(args)
    except FloatingPointError as e:  # divergence: one clear line, no traceback
        parser.exit(1, f"fastbp: {e}\n")


def command():
    """The ``fastbp`` console script: main() in a process that is the command's own.

    Everything alive at this point (the modules of Python, NumPy, Numba and fastbp) lives
    as long as the process. Freezing it keeps the cyclic garbage collector from scanning
    those objects again and again while Numba loads its registries and the cached kernels
    (hundreds of thousands of allocations): a warm ``fastbp xor`` went from 1.91 s to
    1.51 s here (median of 10 interleaved processes). Only the command does this; a
    library import never touches the user's collector.
    """
    gc.freeze()
    return main()


if __name__ == "__main__":
    sys.exit(command())
