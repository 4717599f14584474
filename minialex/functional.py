"""The functional API, with PyTorch's names and argument order: ``minialex.functional as F``.

Each function lives with its math in ``minialex/layers/``; this module only gathers them.
"""
from .layers.activation import average_softmax, log_softmax, relu, softmax, tanh
from .layers.adaptive_pool import adaptive_avg_pool2d
from .layers.conv import conv2d
from .layers.dropout import dropout
from .layers.linear import flatten, linear
from .layers.loss import cross_entropy, nll_loss
from .layers.lrn import local_response_norm
from .layers.pool import avg_pool2d, max_pool2d

__all__ = ["adaptive_avg_pool2d", "average_softmax", "avg_pool2d", "conv2d", "cross_entropy",
           "dropout", "flatten", "linear", "local_response_norm", "log_softmax", "max_pool2d",
           "nll_loss", "relu", "softmax", "tanh"]
