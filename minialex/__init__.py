"""minialex: a from-scratch deep-learning engine that reproduces AlexNet (Krizhevsky et al., 2012).

NumPy on the CPU, CuPy with hand-written CUDA kernels on NVIDIA GPUs; one body of layer code.
"""
from .backend import gpu_available, manual_seed
from .tensor import Function, Tensor, is_grad_enabled, no_grad
from .module import Module, Parameter, Sequential
from .testing import GradcheckError, GradcheckReport, gradcheck

__version__ = "0.1.0"
