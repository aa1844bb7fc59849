"""Imports flow one way: the import graph of fastbp/ and kernels/ (imports inside functions
included) has no cycle, and every edge points down the stack the README's Layout shows."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Where each source folder is installed (pyproject.toml maps kernels/ to fastbp.kernels).
PACKAGES = {"fastbp": ROOT / "fastbp", "fastbp.kernels": ROOT / "kernels"}

# The stack, bottom first; a module may import only modules of a lower rank, or of its
# own rank when the README lists them side by side (the losses and the optimizers both
# use the layers, say). Every module must be listed: a new one has to take a place.
STACK = [
    ["fastbp.kernels.config", "fastbp.kernels.cache"],
    ["fastbp.kernels.nn"],
    ["fastbp.kernels.ahead"],
    ["fastbp.kernels"],
    ["fastbp.reference.modules", "fastbp.reference.loss"],
    ["fastbp.reference.optim"],
    ["fastbp.reference.model"],
    ["fastbp.reference.layers", "fastbp.reference"],
    ["fastbp._checks", "fastbp.compile_log"],
    ["fastbp.modules", "fastbp.loss"],
    ["fastbp.optim", "fastbp.pairs"],
    ["fastbp.plan"],
    ["fastbp.distributed"],
    ["fastbp.training"],
    ["fastbp.model"],
    ["fastbp.io"],
    ["fastbp.layers", "fastbp.data"],
    ["fastbp.sklearn"],
    ["fastbp._sklearn_bench"],
    ["fastbp._warmup", "fastbp.breakeven", "fastbp.bench", "fastbp._bench_workers",
     "fastbp.mpi_bench"],
    ["fastbp.cli", "fastbp"],
]
FACADES = {"fastbp.layers", "fastbp", "fastbp.reference.layers", "fastbp.reference"}


def modules_of(packages):
    """{module name: path} for every .py file under the given {package: folder}."""
    found = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package] + parts)
            if name not in found:   # fastbp/kernels does not exist; kernels/ is that package
                found[name] = path
    return found


def import_graph(modules):
    """{module: {imported module of ``modules``}}, from every import statement anywhere in
    the file (module level, functions, classes) and every ``importlib.import_module`` /
    ``__import__`` call with a constant name."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module
                for alias in node.names:   # `from pkg import submodule` imports it
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                targets.add(str(node.args[0].value))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph):
    """One cycle as a list [a, b, ..., a], or None."""
    state = {}   # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


GRAPH = import_graph(modules_of(PACKAGES))


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_place_in_the_stack():
    listed = [name for rank in STACK for name in rank]
    assert sorted(listed) == sorted(GRAPH), "add new modules to STACK (and the README)"


def test_every_import_points_down_the_stack():
    rank = {name: i for i, names in enumerate(STACK) for name in names}
    upward = [f"{a} (rank {rank[a]}) imports {b} (rank {rank[b]})"
              for a, targets in GRAPH.items() for b in targets if rank[b] > rank[a]]
    assert not upward, "\n".join(upward)


def test_nothing_below_a_facade_imports_it():
    users = {b: sorted(a for a, targets in GRAPH.items() if b in targets) for b in FACADES}
    internal = {"fastbp.layers": ["fastbp"], "fastbp.reference.layers": ["fastbp.reference"]}
    for facade, importers in users.items():
        allowed = internal.get(facade, [])
        below = [a for a in importers if a not in allowed and a not in
                 ("fastbp.cli", "fastbp.bench", "fastbp._bench_workers", "fastbp._warmup",
                  "fastbp")]
        assert not below, f"{facade} is a facade, imported from below by {below}"


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The test above can fail: a back-edge inside a function is a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import importlib\n\ndef g():\n"
                              "    importlib.import_module('pkg.a')\n")
    graph = import_graph(modules_of({"pkg": pkg}))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("def g():\n    pass\n")
    assert find_cycle(import_graph(modules_of({"pkg": pkg}))) is None


@pytest.mark.parametrize("facade", ["layers", "loss", "optim"])
def test_the_original_public_names_are_still_there(facade):
    import fastbp
    names = {"layers": ["Layer", "Activation", "Model", "Linear", "Relu", "Sigmoid", "Tanh",
                        "Softmax", "save", "load"],
             "loss": ["MSE", "CategoricalCrossentropy", "BinaryCrossentropy"],
             "optim": ["SGD", "Momentum", "RMSProp", "Adam"]}[facade]
    module = getattr(fastbp, facade)
    assert all(callable(getattr(module, n)) for n in names)
