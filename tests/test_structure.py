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

And the tiers of docs/ARCHITECTURE.md (d): every module sits in a tier and imports only its own
tier and the lower ones its row allows; CuPy, PyTorch, mpi4py and the repository's scripts are
imported only where the document says.
"""
import ast
import fnmatch
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
    assert len(source.splitlines()) <= 195      # with --pretrained and --data-parallel
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


# -- (d) the tiers of docs/ARCHITECTURE.md, over the real import graph ---------------------------
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# tier -> (rank, modules, the tiers it may import besides its own). A module is named relative to
# minialex ("" is the package's __init__); a package's name covers every module in it. Tiers of
# one rank stand side by side and import nothing of each other. docs/ARCHITECTURE.md holds the
# same table; test_the_architecture_document_shows_this_table keeps the two equal.
TIERS = {
    "base": (0, {"backend", "checks", "windows", "progress"}, set()),
    "autograd": (1, {"tensor", "ops", "module", "testing"}, {"base"}),
    "fast": (1, {"cpu", "cuda"}, {"base"}),
    "data": (1, {"data"}, {"base"}),
    "storage": (1, {"checkpoint", "rundir"}, {"base"}),
    "layers": (2, {"layers", "functional", "nn"}, {"base", "autograd", "fast"}),
    "models": (3, {"", "models", "optim", "summary"}, {"base", "autograd", "fast", "layers"}),
    "training": (4, {"watch", "extensions", "train", "lr_finder", "distributed", "towers"},
                 {"base", "autograd", "layers", "models", "data", "storage"}),
    "weights": (4, {"weights"}, {"base", "autograd", "layers", "models", "storage"}),
    "application": (5, {"config", "recipe", "report", "visualize", "predict", "ablations",
                        "finetune"},
                    {"base", "autograd", "fast", "data", "storage", "layers", "models",
                     "training", "weights"}),
}
# Packages that only some modules may import (at any depth, lazily too): package -> patterns of
# the modules that may. CuPy is reached through backend.require_cupy() everywhere else; mpi4py
# starts MPI when imported; PyTorch is only ever a test's reference.
RESTRICTED_IMPORTS = {
    "cupy": ("minialex.backend",),
    "cupyx": ("minialex.backend",),
    "mpi4py": ("minialex.distributed*",),     # distributed.py, a distributed/ package or _mpi.py
    "torch": (),
    "torchvision": (),
    # the repository's scripts and tests use minialex, never the other way round
    "examples": (), "benchmarks": (), "tests": (), "tools": (), "conftest": (),
}
ADD_IT = ("add it to the table in docs/ARCHITECTURE.md and to TIERS in tests/test_structure.py "
          "(or move it into a tier's package)")


def tier_of(name: str, tiers=TIERS):
    """The tier holding module ``name`` (``minialex.x.y``), or None; the longest entry wins."""
    relative = name.removeprefix("minialex").removeprefix(".")
    best = None
    for tier, (_, modules, _) in tiers.items():
        for entry in modules:
            if relative == entry or (entry and relative.startswith(entry + ".")):
                if best is None or len(entry) > len(best[1]):
                    best = (tier, entry)
    return best and best[0]


def tier_violations(graph: dict, tiers=TIERS) -> list:
    """One line per import that breaks the tiers: a higher tier, or a sibling not listed."""
    problems = []
    for name in sorted(graph):
        tier = tier_of(name, tiers)
        if tier is None:
            problems.append(f"{name} is in no tier: {ADD_IT}")
            continue
        rank, _, may_import = tiers[tier]
        for target in sorted(graph[name]):
            other = tier_of(target, tiers)
            if other is None or other == tier or other in may_import:
                continue            # an unknown target is reported as a module of its own
            rule = (f"tier {tier} may import only {sorted(may_import | {tier})}"
                    if tiers[other][0] <= rank else "a module never imports a higher tier")
            problems.append(f"{name} (tier {tier}, rank {rank}) imports {target} (tier {other}, "
                            f"rank {tiers[other][0]}): {rule}")
    return problems


def external_imports(tree) -> list:
    """(line, top-level package) of every import at any depth, and of import_module("x") and
    __import__("x") calls with a literal name; relative imports are minialex's own."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (called in DYNAMIC_IMPORTS and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)):
                found.append((node.lineno, first.value.split(".")[0]))
    return found


def restricted_import_violations(sources: dict) -> list:
    """``sources``: module name -> (path, source text)."""
    problems = []
    for name, (path, text) in sorted(sources.items()):
        for line, package in external_imports(ast.parse(text, filename=str(path))):
            allowed = RESTRICTED_IMPORTS.get(package)
            if allowed is None or any(fnmatch.fnmatchcase(name, a) for a in allowed):
                continue
            who = f"only {' and '.join(allowed)} may" if allowed else "nothing in minialex may"
            problems.append(f"{path}:{line}: {name} imports {package}: {who} import {package}")
    return problems


def test_every_module_sits_in_a_tier_and_imports_only_the_tiers_below_it_allows():
    problems = tier_violations(import_graph())
    assert problems == [], ("imports that break the tiers of docs/ARCHITECTURE.md:\n"
                            + "\n".join(problems))


def test_cupy_torch_mpi4py_and_the_scripts_are_imported_only_where_allowed():
    sources = {name: (path.relative_to(ROOT), path.read_text()) for name, path in MODULES.items()}
    problems = restricted_import_violations(sources)
    assert problems == [], "restricted imports:\n" + "\n".join(problems)


def test_the_tier_table_is_a_ladder():
    """Each tier imports only tiers of a lower rank, every module is named once, and every
    entry names a module or package that exists (a stale entry hides nothing else)."""
    entries = [entry for _, modules, _ in TIERS.values() for entry in modules]
    assert len(entries) == len(set(entries))
    for tier, (rank, _, may_import) in TIERS.items():
        assert all(TIERS[other][0] < rank for other in may_import), tier
    relative = {name.removeprefix("minialex").removeprefix(".") for name in MODULES}
    stale = [e for e in entries if not any(r == e or r.startswith(e + ".") for r in relative)]
    assert stale == [], f"no such module in minialex/: {stale}"


def test_the_tier_checks_name_the_import_and_the_rule():
    graph = {"minialex.checks": {"minialex.train"},                 # base -> training: higher
             "minialex.cpu.pool": {"minialex.tensor"},              # fast -> autograd: sibling
             "minialex.layers.conv": {"minialex.cpu", "minialex.windows"},   # allowed
             "minialex.weights.new_format": {"minialex.checkpoint"},        # allowed
             "minialex.distributed": set(), "minialex": set(),
             "minialex.brand_new": set()}
    assert tier_violations(graph) == [
        "minialex.brand_new is in no tier: " + ADD_IT,
        "minialex.checks (tier base, rank 0) imports minialex.train (tier training, rank 4): "
        "a module never imports a higher tier",
        "minialex.cpu.pool (tier fast, rank 1) imports minialex.tensor (tier autograd, rank 1): "
        "tier fast may import only ['base', 'fast']",
    ]
    sources = {"minialex.windows": ("windows.py", "def f():\n    import cupy\n"),
               "minialex.backend": ("backend.py", "import cupy.cuda\n"),
               "minialex.checks": ("checks.py", "from torch import nn\n"),
               "minialex.ops": ("ops.py", "importlib.import_module('mpi4py.MPI')\n"),
               "minialex.distributed": ("distributed.py", "from mpi4py import MPI\n"),
               "minialex.distributed_nccl": ("distributed_nccl.py", "import mpi4py\n"),
               "minialex.train": ("train.py", "from examples import train_alexnet\n")}
    assert restricted_import_violations(sources) == [
        "checks.py:1: minialex.checks imports torch: nothing in minialex may import torch",
        "ops.py:1: minialex.ops imports mpi4py: only minialex.distributed* may import mpi4py",
        "train.py:1: minialex.train imports examples: nothing in minialex may import examples",
        "windows.py:2: minialex.windows imports cupy: only minialex.backend may import cupy",
    ]


def architecture_table() -> dict:
    """docs/ARCHITECTURE.md's tier table as TIERS: rows ``| rank | tier | modules | may import |``
    whose modules are written `backend.py`, `cpu/`, `__init__.py`."""
    table = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        modules = {re.sub(r"(\.py|/)$", "", m).replace("__init__", "")
                   for m in re.findall(r"`([^`]+)`", cells[2])}
        may_import = set(re.findall(r"\w+", cells[3])) - {"nothing"}
        table[cells[1].strip("*")] = (int(cells[0]), modules, may_import)
    return table


def test_the_architecture_document_shows_this_table():
    assert architecture_table() == TIERS
