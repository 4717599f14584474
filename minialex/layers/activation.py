r"""Element-wise and row-wise activations: ReLU, tanh, softmax, log-softmax.

Notation: ``x`` input, ``y`` output, ``gy`` = dL/dy, ``gx`` = dL/dx; for softmax the sums run
over the axis ``dim`` (the classes), every other axis indexing independent rows.

Forward and Gradient:

- ReLU (AlexNet Sec. 3.1): :math:`y = \max(0, x)`, :math:`gx = gy\,[y > 0]`. At the kink
  ``x = 0`` the subgradient 0 is used (as micrograd's ``> 0`` and PyTorch do), so a unit with
  zero input passes no gradient. Backward needs only the saved output ``y``.
- tanh: :math:`y = \tanh x`, :math:`gx = gy\,(1 - y^2)`.
- softmax: :math:`y_i = e^{x_i - M} / \sum_j e^{x_j - M}` with :math:`M = \max_j x_j`
  (subtracting the max changes nothing mathematically but keeps every exponent <= 0, so logits
  of 1e4 do not overflow). From :math:`\partial y_j / \partial x_i = y_j(\delta_{ij} - y_i)`,
  :math:`gx_i = \sum_j gy_j\, y_j(\delta_{ij} - y_i) = y_i\,(gy_i - \sum_j gy_j y_j)`.
- log-softmax: :math:`y_i = x_i - M - \log \sum_j e^{x_j - M}`. From
  :math:`\partial y_j / \partial x_i = \delta_{ij} - \mathrm{softmax}(x)_i`,
  :math:`gx_i = gy_i - e^{y_i} \sum_j gy_j`.

- average_softmax (evaluation only, no gradient): the mean over crops of the softmax of each
  crop's logits, :math:`\bar p_n = \frac{1}{n_{crops}} \sum_r \mathrm{softmax}(x_{r,n})`, the
  paper's averaging of its 10 test patches (Krizhevsky et al. 2012, Sec. 4.1).

Shape:
    any shape -> the same shape; average_softmax: (n_crops * N, K) crop-major or
    (n_crops, N, K) -> (N, K). softmax and log_softmax take ``dim`` (default -1, the last
    axis: the classes of an (N, classes) batch). PyTorch asks for ``dim`` explicitly; its
    deprecated implicit choice is 1 for inputs of 2 or more dimensions.

Paper: Krizhevsky et al. (2012), Sec. 3.1 (ReLU trains a CIFAR-10 net six times faster than
tanh) and Sec. 3.5 (1000-way softmax on fc8).

GPU: kernels/relu.cu (relu_backward); CPU: ``minialex.cpu.relu_forward``/``relu_backward``
(slices in threads). tanh and softmax are plain array code on both devices.
"""
from __future__ import annotations

import numpy as np

from .. import cpu, cuda
from ..backend import get_array_module, is_gpu_array
from ..checks import check_float, is_int, positive_int
from ..module import Module
from ..tensor import Function, Tensor


# -- ReLU: the plain version, then the Function ---------------------------------------------
def relu_forward(x):
    """``y = max(0, x)``."""
    return np.maximum(x, 0)


def relu_backward(y, gy):
    """``gx = gy [y > 0]``: the subgradient 0 at the kink, as a product like the kernel's."""
    return np.multiply(gy, y > 0)


class ReLUFunction(Function):
    """``y = max(0, x)``; keeps ``y`` only. No double backward."""

    def forward(self, x):
        fast = cuda if is_gpu_array(x) else cpu
        # C order, as relu_backward's kernel expects (a ufunc keeps a transposed input's order).
        self.y = fast.relu_forward(get_array_module(x).ascontiguousarray(x))
        return self.y

    def backward(self, gy):
        fast = cuda if is_gpu_array(gy) else cpu
        return fast.relu_backward(self.y, get_array_module(gy).ascontiguousarray(gy))


# -- tanh, softmax and log-softmax: plain array code on both devices ------------------------
class TanhFunction(Function):
    """``y = tanh(x)``; keeps ``y`` only. No double backward."""

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class SoftmaxFunction(Function):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``dim``; keeps ``y``. No double backward."""

    def __init__(self, dim=-1):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=self.dim, keepdims=True))
        self.y = e / e.sum(axis=self.dim, keepdims=True)
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


class LogSoftmaxFunction(Function):
    """``y = x - max - log(sum(exp(x - max)))`` along ``dim``; keeps ``y``. No double backward."""

    def __init__(self, dim=-1):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        shifted = x - x.max(axis=self.dim, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=self.dim, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


# -- functional -----------------------------------------------------------------------------
def _int_dim(op, dim):
    """``dim`` as an int after checking it is one; its range depends on the input."""
    if not is_int(dim):
        raise TypeError(f"{op}: dim must be an int, got dim={dim!r}")
    return int(dim)


def _check_dim(op, x, dim):
    """``dim`` as a non-negative axis of ``x``, after checking x and dim."""
    ndim = len(check_float(op, "input", x))
    dim = _int_dim(op, dim)
    if ndim == 0 or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim={dim} is out of range for input of shape {tuple(x.shape)}")
    return dim % ndim


def relu(x) -> Tensor:
    """``max(0, x)`` element-wise (gradient 0 where x <= 0).

    >>> relu(Tensor(np.array([-1.0, 0.0, 2.0], dtype=np.float32))).numpy()
    array([0., 0., 2.], dtype=float32)
    """
    check_float("relu", "input", x)
    return ReLUFunction()(x)


def tanh(x) -> Tensor:
    """Hyperbolic tangent element-wise.

    >>> tanh(Tensor(np.array([0.0, 100.0]))).numpy()
    array([0., 1.])
    """
    check_float("tanh", "input", x)
    return TanhFunction()(x)


def softmax(x, dim=-1) -> Tensor:
    """Softmax along ``dim`` (default -1); each slice along ``dim`` sums to 1.

    >>> softmax(Tensor(np.array([[0.0, np.log(3.0)], [1e4, 1e4]]))).numpy()
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    return SoftmaxFunction(_check_dim("softmax", x, dim))(x)


def log_softmax(x, dim=-1) -> Tensor:
    """``log(softmax(x))`` along ``dim`` (default -1), computed without forming softmax.

    >>> log_softmax(Tensor(np.array([[1e4, 1e4 - np.log(3.0)]]))).numpy().round(4)
    array([[-0.2877, -1.3863]])
    """
    return LogSoftmaxFunction(_check_dim("log_softmax", x, dim))(x)


def average_softmax(logits, n_crops: int = 10):
    """Softmax averaged over crops: ``(n_crops * N, K)`` crop-major or ``(n_crops, N, K)``
    logits -> ``(N, K)`` probabilities. An evaluation helper on raw arrays (a Tensor's data is
    taken), returning an array of the same array module; it records no graph.

    >>> average_softmax(np.log(np.array([[1.0, 3.0], [3.0, 1.0]])), n_crops=2)
    array([[0.5, 0.5]])
    """
    x = logits.data if isinstance(logits, Tensor) else logits
    shape = check_float("average_softmax", "logits", x)
    n_crops = positive_int("average_softmax", "n_crops", n_crops)
    if len(shape) == 2:
        if shape[0] % n_crops:
            raise ValueError(f"average_softmax: logits has {shape[0]} rows, not a multiple of "
                             f"n_crops={n_crops}")
        x = x.reshape(n_crops, shape[0] // n_crops, shape[1])
    if x.ndim != 3 or x.shape[0] != n_crops:
        raise ValueError(f"average_softmax: logits must be ({n_crops}*N, K) or ({n_crops}, N, K), "
                         f"got shape {shape}")
    return SoftmaxFunction(-1).forward(x).mean(axis=0)


# -- modules --------------------------------------------------------------------------------
class ReLU(Module):
    """``max(0, x)``. ``inplace`` is accepted so PyTorch model code ports unchanged; minialex
    always returns a new tensor (overwriting an input that another op saved would corrupt its
    gradient).

    >>> ReLU()(Tensor(np.array([-2.0, 3.0]))).numpy()
    array([0., 3.])
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        return relu(x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Tanh(Module):
    """Hyperbolic tangent (the paper's slower-training baseline)."""

    def forward(self, x):
        return tanh(x)


class Softmax(Module):
    """Softmax along ``dim`` (default -1).

    >>> Softmax(dim=1)
    Softmax(dim=1)
    """

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = _int_dim(type(self).__name__, dim)

    def forward(self, x):
        return softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax along ``dim`` (default -1)."""

    def forward(self, x):
        return log_softmax(x, self.dim)

