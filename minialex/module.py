"""``Module``, ``Parameter`` and ``Sequential``: containers that own weights, as in PyTorch.

A Module registers every ``Parameter`` and sub-Module assigned to it as an attribute, in
assignment order, so ``named_parameters()`` and ``state_dict()`` give PyTorch's dotted names
(``features.0.weight``) and weights can be exchanged with PyTorch by name and shape.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import backend
from .tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimiser updates; requires grad by default."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models. Subclasses set attributes in ``__init__`` and define
    ``forward``; calling the module calls ``forward``."""

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               f"assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(name, module) for this module and every descendant, depth first, in order."""
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs, e.g. ``("features.0.weight", p)``."""
        for name, module in self.named_modules(prefix):
            for pname, p in module._parameters.items():
                yield (f"{name}.{pname}" if name else pname), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- mode, gradients, device -------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter in place; returns the module itself."""
        for p in self.parameters():
            p.data = backend.to_device(p.data, device or backend.device_of(p.data), dtype)
            if p.grad is not None:
                p.grad = None  # a gradient from the old device/dtype no longer matches
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def apply(self, fn):
        for m in self.modules():
            fn(m)
        return self

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameter name -> raw array (shared with the module, not copied)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the parameters, keeping each parameter's device and dtype.

        Every problem is collected first and reported in one error, so nothing is half-loaded:
        mis-shaped keys always raise; missing and unexpected keys raise when ``strict``.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model "
                      f"{tuple(p.shape)}" for k, p in own.items()
                      if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(p.shape)]
        problems = []
        if mismatched:
            problems.append("shape mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for k, p in own.items():
            if k in state_dict:
                value = state_dict[k]
                value = value.data if isinstance(value, Tensor) else value
                if not backend.is_gpu_array(value):
                    value = np.asarray(value)
                copied = backend.to_device(value, backend.device_of(p.data), p.dtype)
                with backend.device_scope(p.data):
                    # always a new array: later steps must not write into the caller's state
                    p.data = copied.copy() if copied is value else copied
        return missing, unexpected

    # -- printing ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in
                 self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; children are named ``0``, ``1``, ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*items[index])
        return items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
