"""``model_summary(model, input_shape)``: each layer's output shape and parameter count, and
memory, as a table in the style of torchsummary.

One forward pass on zeros of shape ``(batch_size, *input_shape)`` runs under ``no_grad`` in eval
mode (so dropout draws no random numbers and the random streams are left as they were). Every
leaf module (one with no children) has its ``forward`` wrapped for that pass, recording what it
returns, so the rows come in execution order and are named by the module's dotted name
(``features.0``). Operations done in a model's own ``forward`` rather than by a module (the
flatten before AlexNet's classifier) have no row, as in torchsummary.

Memory, as torchsummary estimates it (in MiB, so the figures can be compared with its tables):

- input: the input batch;
- activations: the sum of every layer output for the batch (``activation_bytes``), counted twice
  for training (forward values kept plus the gradients of the same size in backward);
- parameters: ``param_bytes`` (gradients and optimiser state come on top).

>>> import minialex
>>> from minialex.models import alexnet
>>> s = minialex.model_summary(alexnet("mini"), (1, 28, 28))
>>> s.rows[0]
Row(name='features.0', type='Conv2d', output_shape=(1, 32, 28, 28), params=832)
>>> s.total_params, s.activation_bytes
(285322, 542632)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import backend
from .checks import is_int, positive_int
from .module import Module
from .tensor import no_grad

MIB = 1024 ** 2


class Row(NamedTuple):
    name: str             # dotted module name, e.g. "features.0"
    type: str             # class name, e.g. "Conv2d"
    output_shape: tuple   # full shape, batch first
    params: int           # parameters the module owns


@dataclass
class Summary:
    """What :func:`model_summary` measured; ``str()`` renders the table."""
    model_name: str
    input_shape: tuple    # full shape, batch first
    dtype: np.dtype
    rows: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    input_bytes: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0

    @property
    def training_bytes(self) -> int:
        """Input, activations twice (values and gradients) and parameters, as torchsummary."""
        return self.input_bytes + 2 * self.activation_bytes + self.param_bytes

    def __str__(self):
        width = 78
        lines = [f"{self.model_name} on input {self.input_shape} {np.dtype(self.dtype).name}",
                 "-" * width,
                 f"{'Layer':<18}{'Type':<20}{'Output Shape':>24}{'Param #':>16}",
                 "=" * width]
        for row in self.rows:
            shape = "[" + ", ".join(["-1", *map(str, row.output_shape[1:])]) + "]"
            lines.append(f"{row.name:<18}{row.type:<20}{shape:>24}{row.params:>16,}")
        lines += ["=" * width,
                  f"Total params: {self.total_params:,}",
                  f"Trainable params: {self.trainable_params:,}",
                  f"Non-trainable params: {self.total_params - self.trainable_params:,}",
                  "-" * width,
                  f"Input size (MiB): {self.input_bytes / MIB:.2f}",
                  f"Forward/backward pass size (MiB): {2 * self.activation_bytes / MIB:.2f}",
                  f"Params size (MiB): {self.param_bytes / MIB:.2f}",
                  f"Estimated Total Size (MiB): {self.training_bytes / MIB:.2f}",
                  "-" * width]
        return "\n".join(lines)


class _LayerError(ValueError):
    """A leaf layer failed during the summary pass; already names the layer."""


def model_summary(model: Module, input_shape, batch_size: int = 1,
                  dtype=np.float32) -> Summary:
    """Run ``model`` once on zeros of ``(batch_size, *input_shape)`` and tabulate its layers.

    ``input_shape`` excludes the batch, e.g. ``(3, 227, 227)``. The input is created on the
    device of the model's first parameter. Raises ``ValueError`` naming the layer that failed
    (and the model's expected input where it has an ``input_shape`` attribute) when the input
    does not fit the model.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model_summary: model must be a Module, got {type(model).__name__}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(is_int(n) and n >= 1 for n in shape):
        raise ValueError(f"model_summary: input_shape must be a tuple of positive ints (without "
                         f"the batch), got {input_shape!r}")
    positive_int("model_summary", "batch_size", batch_size)

    params = list({id(p): p for p in model.parameters()}.values())  # shared ones once
    first = params[0].data if params else np.zeros(0)
    with backend.device_scope(first):  # on the parameters' GPU, not the current one
        x = backend.get_array_module(first).zeros((batch_size, *shape), dtype=dtype)
    variant = getattr(model, "variant", None)
    title = type(model).__name__ + (f"({variant!r})" if variant is not None else "")
    result = Summary(title, x.shape, np.dtype(dtype),
                     total_params=sum(p.size for p in params),
                     trainable_params=sum(p.size for p in params if p.requires_grad),
                     input_bytes=x.nbytes,
                     param_bytes=sum(p.size * p.dtype.itemsize for p in params))

    leaves = {}
    for name, module in model.named_modules():
        if not module._modules and id(module) not in leaves:
            leaves[id(module)] = (name or type(module).__name__, module)
    modes = [(m, m.training) for m in model.modules()]
    try:
        for name, module in leaves.values():
            object.__setattr__(module, "forward", _recording(name, module, result))
        model.eval()
        with no_grad():
            model(x)
    except (ValueError, TypeError) as exc:
        expected = getattr(model, "input_shape", None)
        hint = (f"; {type(model).__name__} expects input {tuple(expected)}, got {shape}"
                if expected is not None else "")
        if isinstance(exc, _LayerError):
            raise ValueError(f"{exc}{hint}") from exc
        raise ValueError(f"model_summary: input {shape} does not fit {type(model).__name__}: "
                         f"{exc}{hint}") from exc
    finally:
        for _, module in leaves.values():
            module.__dict__.pop("forward", None)
        for module, mode in modes:
            object.__setattr__(module, "training", mode)
    return result


def _recording(name, module, result):
    """``module.forward`` wrapped to append a Row to ``result`` (or name the layer on failure)."""
    forward = type(module).forward.__get__(module)

    def wrapped(x, *args, **kwargs):
        try:
            y = forward(x, *args, **kwargs)
        except (ValueError, TypeError) as exc:
            raise _LayerError(f"model_summary: layer {name} ({type(module).__name__}) failed on "
                              f"input of shape {tuple(x.shape)}: {exc}") from exc
        nbytes = math.prod(y.shape) * y.dtype.itemsize
        result.rows.append(Row(name, type(module).__name__, tuple(y.shape),
                               sum(p.size for p in module._parameters.values())))
        result.activation_bytes += nbytes
        return y

    return wrapped
