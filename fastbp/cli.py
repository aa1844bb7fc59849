"""The ``fastbp`` command: ``fastbp xor``, ``fastbp train digits``, ``fastbp bench``."""
import argparse
import sys

import numpy as np


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
    for row, p in zip(x, net(x)[:, 0]):
        print(f"{row[0]} xor {row[1]} -> {p:.4f} ({int(p > 0.5)})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("xor", help="train the original 2-8-4-1 XOR network")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--seed", type=int, default=1, help="np.random.seed before building")
    p.add_argument("--original-data", action="store_true",
                   help="the original example's inputs (its 4th row repeats [0, 1])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=xor)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
