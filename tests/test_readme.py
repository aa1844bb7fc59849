"""The README's Python examples run as written, and say what they print."""
import pathlib
import re

from conftest import run_scripts

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_examples_run_and_match_their_comments(tmp_path):
    blocks = _python_blocks()
    assert len(blocks) == 4
    drop_in, series, toolkit, estimators = run_scripts(blocks, tmp_path)
    out = drop_in
    loss = float(out.split()[0])
    assert loss < 0.002                         # "loss ~0.001"
    preds = [float(v) for v in re.findall(r"[0-9.]+(?:e-?\d+)?", out.split(None, 1)[1])]
    assert [round(p, 2) for p in preds] == [0.97, 0.04, 0.03, 0.97]
    assert series.split()[-4:] == ["[0", "1", "1", "0]"]    # "[0 1 1 0]"
    assert (tmp_path / "model").exists()
    assert 0.95 <= float(toolkit.strip()) <= 0.99   # "~0.97"
    assert (tmp_path / "digits.npz").exists()
    params, score = estimators.strip().splitlines()
    assert params == "{'mlpclassifier__hidden_layer_sizes': (64,)}"
    assert 0.94 <= float(score) <= 0.98         # "0.96"
