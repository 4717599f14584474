r"""Pretrained AlexNets in and out: ``load_pretrained(path) -> (model, preprocessing)``.

Two ImageNet AlexNets exist as files, and each loads into the minialex variant of its shape:

- torchvision's ``alexnet-owt-7be5be79.pth`` (a ``torch.save`` state_dict, top-1 56.5% /
  top-5 79.1% per torchvision's documentation) into ``alexnet("owt")``, whose parameter names
  are torchvision's (``features.0.weight`` ... ``classifier.6.bias``);
- Caffe's ``bvlc_alexnet.caffemodel`` (57.1% / 80.2% per the Caffe model zoo) into
  ``alexnet("paper")``: grouped conv2, conv4, conv5 (``groups=2``, weights ``(out, in/2, KH,
  KW)`` in both), LRN where the file's layer list puts it (bvlc_alexnet: conv-ReLU-LRN-pool,
  the paper's order; CaffeNet's ``bvlc_reference_caffenet``: conv-ReLU-pool-LRN) with Caffe's
  constants (``alpha`` divided by ``local_size`` and ``k = 1``, as in PyTorch, where the paper
  has ``k = 2``), and fc6 ``(4096, 9216)`` over the ``(C, H, W)``-ordered pool5 output.

:func:`load_pretrained` tells the formats apart by content (a zip archive, the legacy
``torch.save`` magic number, a protocol buffer with layers), never by the file's extension.
The model comes back in evaluation mode with its :class:`Preprocessing` (also as
``model.preprocessing``): torchvision's RGB 0..1 pixels normalised per channel, 224 crops;
Caffe's BGR 0..255 pixels minus the mean pixel (104, 117, 123), 227 crops. Fed the other
preprocessing, either net runs and silently misclassifies.

Out again: :func:`save_torchvision` writes a model's state_dict in ``torch.save``'s zip format,
so that ``torch.load(path, weights_only=True)`` reads it straight into torchvision's
``alexnet()`` for an ``owt`` model (any minialex model's state_dict loads the same way into a
PyTorch module of the same names and shapes).

Weights cannot ship with minialex; users bring the files. Nothing from a file runs: the pickle
inside a PyTorch file is read by :mod:`minialex.weights.safe_pickle`.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from .. import nn
from ..models import VARIANTS, alexnet
from . import caffe_format, torch_format
from .preprocessing import CAFFE, TORCHVISION, Preprocessing

TORCHVISION_VARIANT, CAFFE_VARIANT = "owt", "paper"
# minialex checkpoints are zip archives too (.npz): recognised to point at the right loader
NPZ_META = "__meta__.npy"
HEAD_BYTES = 512


def detect_format(path) -> str:
    """``"torch"`` (either ``torch.save`` format) or ``"caffe"``, from the file's content;
    ``ValueError`` naming the file for anything else."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"load_pretrained: {path} is a directory, not a weights file")
    with open(path, "rb") as f:   # the first bytes only: a caffemodel is 240 MB
        head = f.read(HEAD_BYTES)
    kind = torch_format.torch_format_of(head)
    if kind == "zip" and _is_npz(path):
        raise ValueError(f"load_pretrained: {path} is a minialex checkpoint, not foreign "
                         f"weights; open it with minialex.checkpoint.load")
    if kind is not None:
        return "torch"
    if caffe_format.looks_like_caffemodel(head, os.path.getsize(path)):
        return "caffe"
    raise ValueError(f"load_pretrained: {path} is neither a PyTorch file (zip or legacy "
                     f"torch.save) nor a Caffe caffemodel (starts with {head[:8]!r})")


def _is_npz(path) -> bool:
    """Whether the zip archive at ``path`` is a minialex checkpoint (False if it is not a
    readable zip at all: the torch reader then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return NPZ_META in archive.namelist()
    except torch_format.CORRUPT_ZIP:
        return False


def load_pretrained(path, *, channel_order: str | None = None) -> tuple:
    """``(model, preprocessing)`` for the torchvision or Caffe AlexNet weights at ``path``.

    ``channel_order``: Caffe's weights take BGR input; ``"RGB"`` reverses conv1's input
    channels so that the model takes RGB like every other minialex model (the preprocessing
    says which). torchvision's weights are RGB and take only ``None`` or ``"RGB"``.
    """
    if detect_format(path) == "caffe":
        return load_caffe(path, channel_order=channel_order or "BGR")
    if channel_order not in (None, "RGB"):
        raise ValueError(f"load_pretrained: torchvision's weights take RGB input; "
                         f"channel_order must be None or 'RGB', got {channel_order!r}")
    return load_torchvision(path)


def load_torchvision(path) -> tuple:
    """``(alexnet("owt"), TORCHVISION)`` from a ``torch.save`` file of torchvision's AlexNet
    state_dict (either format; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and
    DataParallel's ``module.`` prefix are accepted). The number of classes is fc8's."""
    path = os.fspath(path)
    state = _state_dict_in(torch_format.load_state_dict(path), path)
    fc8 = state.get("classifier.6.weight")
    conv1 = state.get("features.0.weight")
    if fc8 is None or conv1 is None or np.ndim(fc8) != 2 or np.ndim(conv1) != 4:
        raise ValueError(f"load_torchvision: {path} is not torchvision's AlexNet: no "
                         f"features.0.weight (64, 3, 11, 11) or classifier.6.weight "
                         f"(classes, 4096) among its {len(state)} tensors "
                         f"({', '.join(map(str, list(state)[:4]))}"
                         f"{', ...' if len(state) > 4 else ''})")
    _check_ends(TORCHVISION_VARIANT, conv1, fc8, "load_torchvision", path)
    model = alexnet(TORCHVISION_VARIANT, num_classes=fc8.shape[0], in_channels=conv1.shape[1])
    _load_into(model, state, path)
    return _finish(model, TORCHVISION)


def _check_ends(variant: str, conv1, fc8, caller: str, path) -> None:
    """Refuse, before the model is built, a conv1 or fc8 weight that is not the shape
    ``alexnet(variant)`` gives them for the file's channels and classes (fc8 may be Caffe's
    legacy ``(1, 1, classes, hidden)``). Every other layer of the model is fixed and these two
    grow with the file's numbers: a crafted ``(1, C, 1, 1)`` conv1 would make the model
    allocate 96 * 121 times the file's values."""
    spec = VARIANTS[variant]
    out, kernel = spec.convs[0][:2]
    problems = []
    if not (np.ndim(conv1) == 4 and conv1.shape[0] == out and conv1.shape[1] > 0
            and conv1.shape[2:] == (kernel, kernel)):
        problems.append(f"conv1's weight is {np.shape(conv1)}, not ({out}, channels, "
                        f"{kernel}, {kernel})")
    if not (np.ndim(fc8) >= 2 and fc8.shape[-1] == spec.hidden and fc8.shape[-2] > 0
            and all(d == 1 for d in fc8.shape[:-2])):
        problems.append(f"fc8's weight is {np.shape(fc8)}, not (classes, {spec.hidden})")
    if problems:
        raise ValueError(f"{caller}: {path} does not fit alexnet({variant!r}): "
                         f"{'; '.join(problems)}")


def _state_dict_in(obj, path) -> dict:
    """The name -> array mapping inside what torch.save wrote."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"load_torchvision: {path} holds a {type(obj).__name__} that is not "
                         f"a state_dict (a mapping of names to tensors)")
    prefix = "module."   # torch.nn.DataParallel's names
    if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _load_into(model, state, path) -> None:
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: the weights do not fit alexnet({model.variant!r}): "
                         f"{exc}") from None


def _finish(model, preprocessing: Preprocessing) -> tuple:
    model.eval()
    model.preprocessing = preprocessing
    return model, preprocessing


def load_caffe(path, *, channel_order: str = "BGR") -> tuple:
    """``(alexnet("paper"), CAFFE)`` from a caffemodel of the paper's AlexNet (bvlc_alexnet,
    or CaffeNet, whose LRN follows the pool): five convolutions and three inner products with
    blobs, in order. ``channel_order="RGB"`` reverses conv1's input channels (and the
    preprocessing's mean) so the model takes RGB."""
    path = os.fspath(path)
    if channel_order not in ("BGR", "RGB"):
        raise ValueError(f"load_caffe: channel_order must be 'BGR' or 'RGB', got "
                         f"{channel_order!r}")
    layers = caffe_format.read_caffemodel(path)
    convs = [layer for layer in layers if layer.type == "Convolution"]
    fcs = [layer for layer in layers if layer.type == "InnerProduct"]
    if len(convs) != 5 or len(fcs) != 3 or not all(
            len(layer.blobs) == 2 for layer in convs + fcs):
        found = ", ".join(f"{layer.name} ({layer.type}, {len(layer.blobs)} blobs)"
                          for layer in layers if layer.blobs)
        raise ValueError(f"load_caffe: {path} is not an AlexNet: 5 Convolution and 3 "
                         f"InnerProduct layers with a weight and a bias each expected, found "
                         f"{found or 'no layer with blobs'}")
    for layer in convs:
        if layer.blobs[0].ndim != 4:
            raise ValueError(f"load_caffe: {path}: layer {layer.name}'s weight has shape "
                             f"{layer.blobs[0].shape}, not (out, in / group, KH, KW)")
    _check_ends(CAFFE_VARIANT, convs[0].blobs[0], fcs[-1].blobs[0], "load_caffe", path)
    lrns = [i for i, layer in enumerate(layers) if layer.type == "LRN"]
    if any(layers[i].lrn != layers[lrns[0]].lrn for i in lrns):
        raise ValueError(f"load_caffe: {path}: its LRN layers differ ("
                         + "; ".join(f"{layers[i].name} {layers[i].lrn}" for i in lrns)
                         + "), and alexnet('paper') gives all its LRNs one set of constants")
    pools = [i for i, layer in enumerate(layers) if layer.type == "Pooling"]
    position = "caffe" if lrns and pools and pools[0] < lrns[0] else "paper"
    model = alexnet(CAFFE_VARIANT, num_classes=fcs[-1].blobs[0].shape[-2],
                    in_channels=convs[0].blobs[0].shape[1], lrn=bool(lrns),
                    lrn_position=position)
    if lrns:
        _use_caffe_lrn(model, layers[lrns[0]].lrn)
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d,
                                                                                nn.Linear))]
    state = {}
    for (name, module), layer in zip(named, convs + fcs):
        groups = getattr(module, "groups", 1)
        if layer.type == "Convolution" and layer.group != groups:
            raise ValueError(f"load_caffe: {path}: layer {layer.name} has group {layer.group}, "
                             f"alexnet('paper') has groups={groups} there")
        for blob, param in zip(layer.blobs, ("weight", "bias")):
            target = getattr(module, param).shape
            # legacy 4-D blobs pad an inner product's (out, in) to (1, 1, out, in)
            state[f"{name}.{param}"] = (blob.reshape(target) if blob.size == np.prod(target)
                                        and _squeezed(blob.shape) == _squeezed(target)
                                        else blob)
    preprocessing = CAFFE
    if channel_order == "RGB":
        state[named[0][0] + ".weight"] = state[named[0][0] + ".weight"][:, ::-1].copy()
        preprocessing = dataclasses.replace(CAFFE, channel_order="RGB",
                                            mean=CAFFE.mean[::-1], std=CAFFE.std[::-1])
    _load_into(model, state, path)
    return _finish(model, preprocessing)


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1)


LRN_CONSTANTS = ("size", "alpha", "beta", "k", "convention")


def _use_caffe_lrn(model, lrn: dict) -> None:
    """Give every LRN of ``model`` Caffe's constants ``lrn`` (Caffe divides alpha by
    local_size, PyTorch's convention)."""
    set_lrn_constants(model, {"size": int(lrn["local_size"]), "alpha": float(lrn["alpha"]),
                              "beta": float(lrn["beta"]), "k": float(lrn["k"]),
                              "convention": "pytorch"})


def lrn_constants(model) -> dict | None:
    """The constants of ``model``'s first LocalResponseNorm (``size``, ``alpha``, ``beta``,
    ``k``, ``convention``), or None when it has none: what a rebuilt model needs to compute as
    one loaded from Caffe does, since ``alexnet()`` gives its LRNs the paper's constants."""
    norms = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    return {attr: getattr(norms[0], attr) for attr in LRN_CONSTANTS} if norms else None


def set_lrn_constants(model, constants: dict) -> None:
    """Give every LocalResponseNorm of ``model`` the ``constants`` :func:`lrn_constants` gave."""
    checked = nn.LocalResponseNorm(int(constants["size"]), float(constants["alpha"]),
                                   float(constants["beta"]), float(constants["k"]),
                                   convention=constants["convention"])
    for module in model.modules():
        if isinstance(module, nn.LocalResponseNorm):
            # set in place: replacing the child would move it to the end of its Sequential
            for attr in LRN_CONSTANTS:
                setattr(module, attr, getattr(checked, attr))


def save_torchvision(path, model) -> None:
    """Write ``model``'s state_dict to ``path`` in ``torch.save``'s zip format, atomically;
    ``torch.load(path, weights_only=True)`` reads it (without PyTorch's pickle running
    anything) and an ``owt`` model's loads into torchvision's ``alexnet()`` unchanged."""
    torch_format.save_state_dict(path, model.state_dict())
