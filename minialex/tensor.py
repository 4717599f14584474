r"""The autograd core: ``Tensor``, ``Function``, ``no_grad`` and ``backward``.

A ``Tensor`` wraps a raw array (NumPy or CuPy) and, when it was made by a differentiable op from
inputs that require grad, remembers that op as its ``creator``. Each op is a :class:`Function`
whose ``forward(*arrays)`` and ``backward(*grads)`` work on raw arrays, so its math reads as
plain array code. ``loss.backward()`` sorts the recorded graph once (iteratively, so deep graphs do
not hit Python's recursion limit), then calls each op's ``backward`` in reverse topological
order, accumulating into ``.grad`` of the leaves, and frees the graph as it goes.

Ops are first-order only: a ``backward`` computes on arrays, not Tensors, so there is no double
backward.
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from . import backend

_grad_enabled = True


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) in which ops record no graph, e.g. for evaluation."""

    def __enter__(self):
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def _as_array(value, dtype=None):
    """Raw array from a Tensor, an array or a Python number.

    Arrays (and NumPy scalars, which 0-d reductions return) keep their dtype; Python floats and
    lists of them become float32, as in PyTorch.
    """
    if isinstance(value, Tensor):
        value = value.data
    if backend.is_gpu_array(value):
        # not cupy.asarray: it copies an array of another GPU to the current one
        return backend.to_device(value, backend.device_of(value), dtype)
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        return array if dtype is None else array.astype(dtype, copy=False)
    array = np.asarray(value, dtype=dtype)
    if dtype is None and array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


class Function:
    """One differentiable op. Subclasses define ``forward`` and ``backward`` over raw arrays.

    ``forward(*xs)`` returns one array; ``backward(gy)`` returns one gradient per input (``None``
    for an input that needs none). Whatever backward needs is kept on ``self`` by forward; it is
    dropped once backward has run. ``self.needs_input_grad`` tells backward which grads to compute.
    """

    def __call__(self, *inputs):
        tensors = [x if isinstance(x, Tensor) else None for x in inputs]
        like = next((t.data for t in tensors if t is not None), _as_array(inputs[0]))
        xp = backend.get_array_module(like)
        with backend.device_scope(like):  # operands made here and the result live with `like`
            arrays = []
            for x, t in zip(inputs, tensors):
                if t is None:  # a Python number takes the tensor operand's dtype, unrounded
                    scalar_dtype = like.dtype if _is_scalar(x) and like.dtype.kind == "f" else None
                    t = Tensor(xp.asarray(x if scalar_dtype else _as_array(x),
                                          dtype=scalar_dtype))
                arrays.append(t.data)
            backend.check_same_device(type(self).__name__, arrays)
            self.needs_input_grad = tuple(t is not None and t.requires_grad for t in tensors)
            y = self.forward(*arrays)
        out = Tensor(y)
        if _grad_enabled and any(self.needs_input_grad):
            out.requires_grad = True
            out.creator = self
            self.inputs = tensors
        return out

    def forward(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def backward(self, gy):
        raise NotImplementedError(f"{type(self).__name__}.backward is not written")


def _is_scalar(x) -> bool:
    return isinstance(x, numbers.Number) or (isinstance(x, (np.ndarray, np.generic))
                                              and x.ndim == 0)


class Tensor:
    """An array with an optional gradient. ``Tensor(array, requires_grad=False)``.

    Python numbers and lists become float32 (as in PyTorch); NumPy/CuPy arrays keep their dtype.
    """

    __array_ufunc__ = None  # so ndarray + Tensor defers to Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        self.data = _as_array(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require grad, "
                            f"got dtype {self.data.dtype}")
        self.creator = None

    # -- inspection --------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    T = property(lambda self: self.transpose())

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{dev}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (a host copy when the tensor lives on a GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self) -> "Tensor":
        """Same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device=None, dtype=None) -> "Tensor":
        """A copy on ``device`` and/or of ``dtype``; the result is a new leaf of the graph."""
        data = backend.to_device(self.data, self.device if device is None else device, dtype)
        if data is self.data:
            return self
        return Tensor(data, requires_grad=self.requires_grad)

    def zero_grad(self):
        self.grad = None

    # -- backward ----------------------------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) times ``grad`` into ``.grad`` of every leaf that needs it."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad "
                               "(no input of the ops that made it had requires_grad=True)")
        with backend.device_scope(self.data):  # gradients are allocated where the graph lives
            self._backward(grad)

    def _backward(self, grad):
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: grad can be omitted only for a scalar, "
                                   f"got shape {self.shape}")
            grad = xp.ones_like(self.data)
        grad = _as_array(grad, self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, expected {self.shape}")

        grads = {id(self): grad}
        handed_out = {id(grad)}  # the caller's array, then each leaf's: never share one
        for t in _topological_order(self):
            g = grads.pop(id(t), None)
            if t.creator is None:  # a leaf: accumulate for the user
                if g is not None and t.grad is None:
                    t.grad = g.copy() if id(g) in handed_out else g  # Add passes gy to both
                    handed_out.add(id(t.grad))
                elif g is not None:
                    with backend.device_scope(g):
                        t.grad = t.grad + g
                continue
            fn = t.creator
            if g is None:
                continue
            # a graph may span devices (minialex.towers): each op's backward, and each sum of
            # gradients, runs on the device of its operands
            with backend.device_scope(g):
                input_grads = fn.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for x, gx in zip(fn.inputs, input_grads):
                if x is None or gx is None or not x.requires_grad:
                    continue
                with backend.device_scope(gx):
                    grads[id(x)] = gx if id(x) not in grads else grads[id(x)] + gx
            vars(fn).clear()  # free the graph: drop the inputs and what forward saved

    # -- operators: each one line, delegating to a Function in minialex.ops (imported below) --
    def __add__(self, other): return ops.Add()(self, other)
    def __radd__(self, other): return ops.Add()(other, self)
    def __sub__(self, other): return ops.Sub()(self, other)
    def __rsub__(self, other): return ops.Sub()(other, self)
    def __mul__(self, other): return ops.Mul()(self, other)
    def __rmul__(self, other): return ops.Mul()(other, self)
    def __truediv__(self, other): return ops.Div()(self, other)
    def __rtruediv__(self, other): return ops.Div()(other, self)
    def __matmul__(self, other): return ops.MatMul()(self, other)
    def __rmatmul__(self, other): return ops.MatMul()(other, self)
    def __pow__(self, exponent): return ops.Pow(exponent)(self)
    def __neg__(self): return ops.Neg()(self)
    def __getitem__(self, index): return ops.GetItem(index)(self)
    def sum(self, axis=None, keepdims=False): return ops.Sum(axis, keepdims)(self)
    def mean(self, axis=None, keepdims=False): return ops.Mean(axis, keepdims)(self)
    def reshape(self, *shape): return ops.Reshape(*shape)(self)
    def transpose(self, *axes): return ops.Transpose(*axes)(self)
    def exp(self): return ops.Exp()(self)
    def log(self): return ops.Log()(self)


def _topological_order(root):
    """Tensors reachable from ``root`` through creators, each after every tensor that uses it.

    Iterative depth-first search with an explicit stack (no recursion limit on deep graphs).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, children_done = stack.pop()
        if children_done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t.creator is not None:
            if not hasattr(t.creator, "inputs"):
                raise RuntimeError("backward: this part of the graph was freed by an earlier "
                                   "backward; recompute the forward pass to backward again")
            for x in t.creator.inputs:
                if x is not None and x.requires_grad and id(x) not in visited:
                    stack.append((x, False))
    return reversed(order)


# The one import cycle in minialex: ops subclasses Function (defined above), and Tensor's
# operators create ops' Functions when they run. Importing ops last lets either module be
# imported first.
from . import ops  # noqa: E402
