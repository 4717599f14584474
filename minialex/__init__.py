"""minialex: a from-scratch deep-learning engine that reproduces AlexNet (Krizhevsky et al., 2012).

NumPy on the CPU, CuPy with hand-written CUDA kernels on NVIDIA GPUs; one body of layer code.

>>> import minialex
>>> from minialex import nn, functional as F
>>> model = minialex.models.alexnet("paper")
>>> model.num_parameters()
60965224
"""
from . import functional, models, nn, optim
from .backend import gpu_available, manual_seed
from .module import Module, Parameter, Sequential
from .summary import model_summary
from .tensor import Function, Tensor, is_grad_enabled, no_grad
from .testing import GradcheckError, GradcheckReport, gradcheck

__version__ = "0.2.0"

__all__ = ["Function", "GradcheckError", "GradcheckReport", "Module", "Parameter", "Sequential",
           "Tensor", "functional", "gpu_available", "gradcheck", "is_grad_enabled",
           "manual_seed", "model_summary", "models", "nn", "no_grad", "optim"]
