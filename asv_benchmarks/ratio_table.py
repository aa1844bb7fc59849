"""Print the README's asv ratio tables (reference time / fastbp time) from one results file.

    python asv_benchmarks/ratio_table.py .asv/results/<machine>/<commit>-<env>.json

Not a benchmark module (asv only collects time_/peakmem_/timeraw_ names from classes).
"""
import itertools
import json
import sys

KERNEL_ROWS = [  # (README label, benchmark, the operation's parameter value or None)
    ("Linear forward", "kernels.Linear.time_forward", None),
    ("Linear backward", "kernels.Linear.time_backward", None),
    *[(f"{a} {d}", f"kernels.Activation.time_{d}", a)
      for a in ("Relu", "Sigmoid", "Tanh", "Softmax") for d in ("forward", "backward")],
    *[(f"{l} value + gradient", "kernels.Loss.time_value_and_gradient", l)
      for l in ("MSE", "CategoricalCrossentropy", "BinaryCrossentropy")],
    *[(f"{o} update", "kernels.Optimizer.time_update", o)
      for o in ("SGD", "Momentum", "RMSProp", "Adam")],
]
TRAINING = [("XOR, the original run (`Xor.time_train`)", "training.Xor.time_train"),
            ("digits-sized epoch (`DigitsEpoch.time_epoch`)", "training.DigitsEpoch.time_epoch"),
            ("large step, float32 (`LargeStep.time_step`)", "training.LargeStep.time_step")]


def by_params(entry):
    """{tuple of parameter values: median} for one benchmark's result entry."""
    values, params = entry[0], entry[1]
    keys = itertools.product(*[[p.strip("'") for p in ps] for ps in params])
    return dict(zip(keys, values))


def fmt(seconds):
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def main(path):
    results = json.load(open(path))
    res = results["results"]
    print(f"commit {results['commit_hash']}\n")
    print("| training | fastbp | reference | ratio |\n|---|---|---|---|")
    for label, name in TRAINING:
        t = by_params(res[name])
        fast, ref = t[("fastbp",)], t[("reference",)]
        print(f"| {label} | {fmt(fast)} | {fmt(ref)} | **{ref / fast:.2f}** |")
    cols = [(s, d) for s in ("tiny", "medium", "large") for d in ("float32", "float64")]
    print("\n| kernels, ratio | " + " | ".join(f"{s} {d[-2:]}" for s, d in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, name, op in KERNEL_ROWS:
        t = by_params(res[name])
        mid = () if op is None else (op,)
        ratios = [t[(s, d) + mid + ("reference",)] / t[(s, d) + mid + ("fastbp",)]
                  for s, d in cols]
        print(f"| {label} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
