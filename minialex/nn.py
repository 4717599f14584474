"""Layers as Modules, with PyTorch's names: ``from minialex import nn``."""
from .layers.activation import LogSoftmax, ReLU, Softmax, Tanh
from .layers.adaptive_pool import AdaptiveAvgPool2d
from .layers.conv import Conv2d
from .layers.dropout import Dropout
from .layers.linear import Flatten, Linear
from .layers.loss import CrossEntropyLoss
from .layers.lrn import LocalResponseNorm
from .layers.pool import AvgPool2d, MaxPool2d
from .module import Module, Parameter, Sequential

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "Conv2d", "CrossEntropyLoss", "Dropout", "Flatten",
           "Linear", "LocalResponseNorm", "LogSoftmax", "MaxPool2d", "Module", "Parameter",
           "ReLU", "Sequential", "Softmax", "Tanh"]
