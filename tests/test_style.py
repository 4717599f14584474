"""House-style checks that keep the code readable as it grows: only the backend imports CuPy,
no monkeypatching of Tensor, no message-less raise, every layer file documents its math, shapes
and kernel, and every test that takes the gpu fixture carries the gpu mark."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minialex"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# Layer files; __init__.py is not a layer.
LAYER_FILES = sorted(p for p in (PACKAGE / "layers").glob("*.py") if not p.name.startswith("_"))


def test_only_backend_imports_cupy():
    importers = [p.relative_to(ROOT).as_posix() for p in SOURCES
                 if re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)]
    assert importers == ["minialex/backend.py"]


def test_tensor_is_not_monkeypatched():
    offenders = [p.name for p in SOURCES
                 if re.search(r"setattr\(Tensor|Tensor\.__\w+__ *=", p.read_text())]
    assert offenders == []


def test_no_message_less_raise():
    offenders = [f"{p.name}:{i}" for p in SOURCES
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"raise [A-Z]\w*(\(\))?\s*$", line)
                 and "KeyboardInterrupt" not in line]  # re-raising Ctrl-C needs no message
    assert offenders == []


@pytest.mark.parametrize("path", LAYER_FILES, ids=lambda p: p.name)
def test_layer_docstring_has_math_shape_and_kernel_pointer(path):
    source = path.read_text()
    doc = re.match(r'\s*r?"""(.*?)"""', source, re.S)
    assert doc, f"{path.name} must open with a module docstring"
    for word in ("Gradient", "Shape", "kernels/"):
        assert word in doc.group(1), f"{path.name}: docstring lacks {word!r}"


def test_there_are_layer_files():
    assert {p.stem for p in LAYER_FILES} >= {"conv", "lrn", "pool", "dropout", "linear",
                                              "activation", "loss"}


def test_every_test_that_takes_the_gpu_fixture_is_selected_by_the_gpu_mark():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
         "-p", "no:cacheprovider", "tests/core", "tests/data"],
        capture_output=True, text=True, cwd=ROOT).stdout
    for test in ("test_module.py::test_module_to_gpu_and_back",
                 "test_tensor.py::test_ops_on_gpu_match_cpu",
                 "test_augment.py::test_gpu_augmentation_matches_cpu_given_the_same_draws"):
        assert test in collected, collected
