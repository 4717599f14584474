"""The package's shape, read from its source with ``ast``: imports at the top, and no cycles.

Two rules keep minialex readable from its imports alone:

(a) Every import is at module level. An import inside a function hides a dependency (and usually
    a cycle) from the reader; the one exception is CuPy, which ``backend.py`` imports lazily so
    that CPU-only installs work without it.
(b) The modules form a DAG, with one allowed cycle: ``tensor`` <-> ``ops`` (``Tensor``'s
    operators create ``ops`` Functions and ``ops`` subclasses ``tensor.Function``; ``tensor``
    imports ``ops`` on its last line, after ``Function`` exists).

And the layer files read as the math (c): each is short, holds no thread, scratch-buffer, BLAS
or cgroup code, and reaches the fast CPU code only through ``cpu.<op>`` in its one-line
dispatch; the fast code (``minialex/cpu/``, ``cuda.py``) imports no layer.
"""
import ast
import pathlib
import re
import subprocess
import sys

import pytest

from minialex import cpu

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minialex"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# mpi4py starts MPI when imported: minialex.distributed imports it only when a run asks for MPI
ALLOWED_LAZY_IMPORTS = {("minialex.backend", "cupy"),
                        ("minialex.distributed", "from mpi4py import MPI")}
ALLOWED_CYCLES = [{"minialex.tensor", "minialex.ops"}]
DYNAMIC_IMPORTS = {"import_module", "__import__"}  # importlib.import_module, __import__


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: pathlib.Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(p): p for p in SOURCES}


def nested_imports(tree):
    """(line, what) of each import, or importlib/__import__ call, inside a def or a class."""
    found = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inside = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                  ast.Lambda, ast.ClassDef))
            if inside and isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif inside and isinstance(child, ast.ImportFrom):
                names = ", ".join(alias.name for alias in child.names)
                found.append((child.lineno, f"from {'.' * child.level}{child.module or ''} "
                                            f"import {names}"))
            elif inside and isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in DYNAMIC_IMPORTS:
                    found.append((child.lineno, f"{name}(...)"))
            visit(child, inside)

    visit(tree, False)
    return found


def top_level_imports(tree):
    """Import statements that run when the module is imported: module level, including inside
    top-level ``if``/``try`` blocks, but not under ``if TYPE_CHECKING:``."""
    out = []

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody,
                              *(h.body for h in node.handlers)):
                    visit(block)

    visit(tree.body)
    return out


def imported_modules(name: str, path: pathlib.Path, node) -> set:
    """The minialex modules an import statement of module ``name`` makes Python run."""
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        if node.level:
            package = name if is_package(path) else name.rsplit(".", 1)[0]
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = base + ("." + node.module if node.module else "")
        else:
            base = node.module
        # `from pkg import sub` runs pkg.sub when sub is a module; a name runs only pkg.
        targets = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                   for alias in node.names}
    found = set()
    for target in targets:
        while target and target not in MODULES:  # a module, or the package it was taken from
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(*(imported_modules(name, path, node)
                                    for node in top_level_imports(tree)))
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def connect(v):
        # Recursive on purpose: the graph has a few dozen modules.
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def cycle_path(graph: dict, component: set) -> str:
    """One concrete loop through ``component``, e.g. ``a -> b -> a``, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in component)
        if nxt in seen:
            return " -> ".join(path[path.index(nxt):] + [nxt])
        path.append(nxt)
        seen.add(nxt)


# -- (a) imports at the top ------------------------------------------------------------------
def test_no_import_inside_a_function_except_lazy_cupy():
    offenders, lazy = [], set()
    for name, path in MODULES.items():
        for line, what in nested_imports(ast.parse(path.read_text(), filename=str(path))):
            if (name, what) in ALLOWED_LAZY_IMPORTS:
                lazy.add((name, what))
            else:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert offenders == [], "imports inside functions (move them to the top):\n" + "\n".join(
        offenders)
    assert lazy == ALLOWED_LAZY_IMPORTS, ("backend.py should import CuPy lazily, once (and "
                                          "distributed.py mpi4py)")


def test_nested_import_finder_sees_functions_classes_and_dynamic_imports():
    source = ("import os\n"
              "def f():\n    from . import cuda\n"
              "class A:\n    import json\n"
              "def g():\n    return importlib.import_module('x')\n")
    assert nested_imports(ast.parse(source)) == [(3, "from . import cuda"), (5, "json"),
                                                 (7, "import_module(...)")]


# -- (b) no import cycles but tensor <-> ops ---------------------------------------------------
def test_backend_is_a_leaf():
    assert import_graph()["minialex.backend"] == set()


def test_no_import_cycles_except_tensor_and_ops():
    graph = import_graph()
    found = [c for c in cycles(graph) if c not in ALLOWED_CYCLES]
    assert found == [], "import cycles:\n" + "\n".join(cycle_path(graph, c) for c in found)


def test_the_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "minialex.backend" in graph["minialex.cuda"]            # from . import backend
    assert "minialex.checks" in graph["minialex.layers.conv"]      # from ..checks import
    assert "minialex.tensor" in graph["minialex.layers.conv"]      # from ..tensor import
    assert {"minialex.tensor", "minialex.ops"} in cycles(graph)    # the allowed one is found


def test_cycle_finder_reports_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycle_path(graph, {"a", "b", "c"}) == "a -> b -> c -> a"


def test_tensor_and_ops_import_in_either_order():
    for first in ("minialex.ops", "minialex.tensor"):
        code = (f"import {first}, minialex.tensor as t\n"
                "assert (t.Tensor([1.0]) + 1.0).numpy().tolist() == [2.0]")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr


def test_the_example_is_flags_to_config_to_fit_with_no_logic_of_its_own():
    example = ROOT / "examples" / "train_alexnet.py"
    source = example.read_text()
    assert len(source.splitlines()) <= 180
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("minialex")}
    assert imported <= {"minialex", "minialex.data.augment", "minialex.models",
                        "minialex.watch"}, imported
    for name in ("Trainer(", "Loader(", "checkpoint.", "SGD(", "alexnet("):
        assert name not in source, f"the example does {name} itself"


# -- (c) the layer files are the math; the fast code lives in cpu/ and cuda.py -----------------
LAYER_SOURCES = sorted((PACKAGE / "layers").glob("*.py"))
MAX_LAYER_LINES = 250
# Modules that run or size threads, or reach the machine's cores and cgroups.
THREAD_MODULES = {"threading", "concurrent", "concurrent.futures", "threadpoolctl", "os",
                  "multiprocessing", "ctypes"}
# Names of thread, scratch, BLAS or cgroup code, as they would appear in a layer file.
THREAD_WORDS = re.compile(r"cpu_count|sched_getaffinity|cgroup|scratch|ThreadPool|threadpool|"
                          r"cpu_parallel|single_threaded_blas|piece_bounds|block_bounds|"
                          r"BLOCK_BYTES|threading|Thread\(")
# A measured figure in a comment ("0.83x as fast", "42 MB", "10-20% faster").
FIGURE = re.compile(r"#.*(\b\d+(\.\d+)?x\b|\b\d+(\.\d+)? ?[KMG]i?B\b|\d+%.*(fast|slow))")


def layer_imports(path):
    """(module name, imported names) of every import statement in a layer file, absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "minialex" if node.level == 2 else "minialex.layers" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.append((module, tuple(alias.name for alias in node.names)))
    return found


@pytest.mark.parametrize("path", LAYER_SOURCES, ids=lambda p: p.name)
def test_a_layer_file_is_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LAYER_LINES


@pytest.mark.parametrize("path", LAYER_SOURCES, ids=lambda p: p.name)
def test_a_layer_file_holds_no_thread_scratch_blas_or_cgroup_code(path):
    imports = layer_imports(path)
    assert [m for m, _ in imports if m in THREAD_MODULES or m.split(".")[0] in THREAD_MODULES] \
        == []
    # minialex.cpu only as the module whose public ops the one-line dispatch names
    assert [(m, names) for m, names in imports if m.startswith("minialex.cpu")] == []
    public = set(cpu.__all__)
    used = set(re.findall(r"\bcpu\.(\w+)", path.read_text()))
    assert used <= public, used - public
    assert THREAD_WORDS.findall(path.read_text()) == []


@pytest.mark.parametrize("path", LAYER_SOURCES + sorted((PACKAGE / "cpu").glob("*.py")),
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_measured_figure_in_a_comment(path):
    lines = [line for line in path.read_text().splitlines() if FIGURE.search(line)]
    assert lines == []


def test_the_fast_code_imports_no_layer():
    graph = import_graph()
    fast = [name for name in graph if name == "minialex.cuda" or name.startswith("minialex.cpu")]
    assert "minialex.cpu.conv" in fast
    assert {name: sorted(m for m in graph[name] if m.startswith("minialex.layers"))
            for name in fast} == {name: [] for name in fast}


def test_nothing_outside_layers_imports_a_private_layer_module():
    graph = import_graph()
    offenders = [(name, m) for name, targets in graph.items() for m in targets
                 if m.startswith("minialex.layers._") and not name.startswith("minialex.layers")]
    scripts = [p for folder in ("benchmarks", "examples", "tools", "tests")
               for p in (ROOT / folder).rglob("*.py")]
    offenders += [(p.relative_to(ROOT).as_posix(), "layers._")
                  for p in scripts if re.search(r"layers(\.| import )_\w", p.read_text())]
    assert offenders == []


def test_the_structure_checks_see_what_they_forbid():
    assert THREAD_WORDS.search("from ..cpu.threads import cpu_parallel")
    assert FIGURE.search("x = 1  # 0.83x as fast on 2 cores") and FIGURE.search("# 42 MB")
    assert FIGURE.search("# this order runs 10-20% faster")
    assert not FIGURE.search("# cut top-1 error by 0.4% (Sec. 3.4)")
