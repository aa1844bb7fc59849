"""Cold start, each sample in a fresh Python process (``timeraw_``): importing fastbp, and
the first training call of the original XOR example with an empty and with a warm Numba
cache. The import and the model building run in the untimed setup code of the process,
so the training benchmarks time that one ``train`` call."""
from .common import XOR_NET, XOR_X, XOR_Y

# Code run in the fresh process; no backslashes or triple quotes (asv embeds it in one).
BUILD_XOR = f"""
import numpy as np
from fastbp import layers, loss, optim
x, y = np.array({XOR_X}, np.float64), np.array({XOR_Y}, np.float64)
np.random.seed(0)
stack = []
for units, activation in {XOR_NET}:
    stack += [layers.Linear(units), getattr(layers, activation)()]
model = layers.Model(stack)
"""
TRAIN_XOR = ("model.train(x, y, optim=optim.SGD(lr=0.6), loss=loss.MSE(), epochs=400, "
             "verbose=False)")

# Numba reads NUMBA_CACHE_DIR when it is imported: set it first, to a new directory.
EMPTY_CACHE = """
import atexit, os, shutil, tempfile
cache = tempfile.mkdtemp(prefix="fastbp-asv-numba-")
atexit.register(shutil.rmtree, cache, True)
os.environ["NUMBA_CACHE_DIR"] = cache
"""

# Another process trains once, filling the default cache; this one then loads from it.
WARM_CACHE = f"""
import subprocess, sys, textwrap
subprocess.run([sys.executable, "-c", textwrap.dedent('''{BUILD_XOR}
{TRAIN_XOR}
''')], check=True)
"""


class ColdStart:
    rounds = 1           # every sample is already a fresh process
    repeat = (1, 5, 30.0)  # (min, max, seconds): up to 5 imports, 1-3 cold compiles
    warmup_time = 0
    timeout = 300        # a cold compile takes ~10 s on 2 idle cores, far more when busy

    def timeraw_import_fastbp(self):
        return "import fastbp"

    def timeraw_first_train_empty_cache(self):
        return TRAIN_XOR, EMPTY_CACHE + BUILD_XOR

    def timeraw_first_train_warm_cache(self):
        return TRAIN_XOR, WARM_CACHE + BUILD_XOR
