"""Every layer's forward and backward on the GPU path stay on the device: on the CuPy stand-in
(tests/cupy_standin.py), which counts host<->device copies, not one device-to-host copy.

A layer that took its data to the host and back (``cupy.asnumpy`` and ``cupy.asarray``) would
still give the right numbers, so its own device test would pass; only this count shows it. Each
device-to-host copy waits for the GPU to finish all it was given, so one per layer would stall
every training step. The list of layers is checked against the Modules that minialex/layers/
defines, so a new layer cannot be left out.
"""
import importlib
import inspect
import pathlib

import numpy as np
import pytest

from minialex import Module, Tensor, nn
from minialex.layers.loss import cross_entropy

LAYERS_DIR = pathlib.Path(__file__).resolve().parents[2] / "minialex" / "layers"

# name -> (module, input shape); every Module of minialex/layers/ but the loss (below)
LAYERS = {
    "Conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    "Linear": (lambda: nn.Linear(12, 5), (3, 12)),
    "Flatten": (lambda: nn.Flatten(), (2, 3, 4, 4)),
    "MaxPool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    "LocalResponseNorm": (lambda: nn.LocalResponseNorm(), (2, 7, 5, 5)),
    "ReLU": (lambda: nn.ReLU(), (3, 10)),
    "Tanh": (lambda: nn.Tanh(), (3, 10)),
    "Softmax": (lambda: nn.Softmax(dim=1), (3, 10)),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=1), (3, 10)),
    "Dropout": (lambda: nn.Dropout(0.5), (3, 10)),
}


def layer_modules():
    """The names of the Module classes defined in minialex/layers/*.py (private ones aside)."""
    names = set()
    for path in LAYERS_DIR.glob("[!_]*.py"):
        module = importlib.import_module(f"minialex.layers.{path.stem}")
        names |= {name for name, value in vars(module).items()
                  if inspect.isclass(value) and issubclass(value, Module) and value is not Module
                  and value.__module__ == module.__name__ and not name.startswith("_")}
    return names


def test_every_layer_module_is_in_the_list():
    assert layer_modules() == set(LAYERS) | {"CrossEntropyLoss"}


def on_device(array):
    return Tensor(array).to("gpu").data


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_makes_no_copy_between_host_and_device(standin, name):
    """Not one copy either way once the layer has run once: a first call may upload what it
    keeps for later calls (adaptive pooling's matrices), never what every step needs anew."""
    make, shape = LAYERS[name]
    layer = make().double().to("gpu")
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal(shape), requires_grad=True).to("gpu")
    y = layer(x)                                      # the first call, uncounted
    gy = on_device(rng.standard_normal(y.shape))
    y.backward(gy)
    standin.TRANSFERS.reset()
    x.grad = None
    y = layer(x)
    y.backward(gy)
    assert x.grad is not None, name
    assert (standin.TRANSFERS.d2h, standin.TRANSFERS.h2d) == (0, 0), standin.TRANSFERS


def test_cross_entropy_makes_no_device_to_host_copy(standin):
    """With labels checked on the host already (``check_labels=False``, as a GPU Loader does);
    checking their range on the device reads it back, as cross_entropy's docstring says."""
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((4, 10)), requires_grad=True).to("gpu")
    labels = on_device(np.array([0, 3, 9, 2]))
    standin.TRANSFERS.reset()
    loss = cross_entropy(x, labels, check_labels=False)
    loss.backward()
    assert x.grad is not None and standin.TRANSFERS.d2h == 0, standin.TRANSFERS
