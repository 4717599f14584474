"""Pretrained weights in and out: torchvision's and Caffe's AlexNets, and ImageNet's classes.

- :func:`load_pretrained` ``(path) -> (model, preprocessing)``: torchvision's
  ``alexnet-owt-7be5be79.pth`` into ``alexnet("owt")``, Caffe's ``bvlc_alexnet.caffemodel``
  into ``alexnet("paper")`` (:mod:`minialex.weights.pretrained`);
- :class:`Preprocessing`: what pixels the weights expect (:mod:`.preprocessing`);
- :func:`save_torchvision`: a model's state_dict as a file ``torch.load(weights_only=True)``
  reads;
- :func:`imagenet_classes`: the 1,000 names of the outputs (:mod:`.imagenet`).

File formats, each read without its framework: :mod:`.torch_format` (with
:mod:`.safe_pickle`) and :mod:`.caffe_format` (with :mod:`.protobuf`).
"""
from .imagenet import imagenet_classes
from .preprocessing import CAFFE, TORCHVISION, Preprocessing
from .pretrained import (
    detect_format,
    load_caffe,
    load_pretrained,
    load_torchvision,
    lrn_constants,
    save_torchvision,
    set_lrn_constants,
)
from .safe_pickle import UnsafePickleError

__all__ = ["CAFFE", "TORCHVISION", "Preprocessing", "UnsafePickleError", "detect_format",
           "imagenet_classes", "load_caffe", "load_pretrained", "load_torchvision",
           "lrn_constants", "save_torchvision", "set_lrn_constants"]
