r"""AlexNet and its common variants: ``alexnet(variant, num_classes, in_channels, ...)``.

Every variant has the same shape of network: five convolutions with ReLU (local response
normalisation after the first two where the variant has it), three overlapping 3x3/2 max-pools
after conv1, conv2 and conv5, and three fully connected layers of which the first two are
followed by dropout. ``model.features`` holds the convolutional part and ``model.classifier``
the fully connected part, both ``Sequential``, so parameter names read as torchvision's
(``features.0.weight``, ``classifier.6.bias``).

| variant | input | conv channels (groups) | fc | LRN | params (classes) |
|---|---|---|---|---|---|
| ``paper`` | 3x227x227 | 96-256(2)-384-384(2)-256(2) | 4096 | yes | 60,965,224 (1000) |
| ``one-tower`` | 3x227x227 | 96-256-384-384-256 | 4096 | yes | 62,378,344 (1000) |
| ``owt`` | 3x224x224 | 64-192-384-256-256 | 4096 | no | 61,100,840 (1000) |
| ``small`` | 3x65x65 | 48-128-192-192-128 | 2048 | no | 14,585,538 (2) |
| ``fmnist`` | 1x224x224 | 96-256-384-384-256 | 4096 | no | 46,764,746 (10) |
| ``mini`` | 1x28x28 | 32-64(2)-96-96(2)-64(2) | 256 | yes | 285,322 (10) |

- ``paper``: Krizhevsky et al. (2012), Fig. 2. The two GPUs' towers are grouped convolutions:
  conv2, conv4 and conv5 see only their own tower's channels (``groups=2``), conv3 and the fully
  connected layers see both. The paper says 224x224 input; its arithmetic needs 227.
- ``one-tower``: the same net on one device (CaffeNet's channel counts, no groups).
- ``owt``: torchvision's ``alexnet`` ("one weird trick", Krizhevsky 2014): conv1 padding 2, no
  LRN, and an ``AdaptiveAvgPool2d((6, 6))`` (``model.avgpool``) before the classifier, with
  torchvision's layer order and names exactly, so its weights load by name.
- ``small``: a one-device net with the widths of one of the paper's two GPU towers (Fig. 2:
  48-128-192-192-128 kernels, fc layers of 2048 units), for 65x65 images and 2 classes: conv1
  stride 1, no groups, no LRN.
- ``fmnist``: d2l.ai's AlexNet for Fashion-MNIST upsampled to 224x224 (one channel, conv1
  padding 1, no groups, no LRN).
- ``mini``: a CPU-sized AlexNet for 28x28 one-channel images that keeps every ingredient of the
  paper (LRN after conv1 and conv2, overlapping pools, two towers, dropout on fc6 and fc7).

Dropout placement. The paper applies dropout to the outputs of fc6 and fc7, so every variant but
``owt`` orders its classifier Linear-ReLU-Dropout, Linear-ReLU-Dropout, Linear (fc weights at
``classifier.0``, ``.3``, ``.6``), as d2l.ai and Caffe's bvlc_alexnet do. torchvision puts dropout
*before* fc6 and fc7 instead (Dropout-Linear-ReLU, ..., fc weights at ``classifier.1``, ``.4``,
``.6``); ``owt`` keeps that order so that its state_dict matches torchvision's.

Ablation switches (paper Sec. 3), each defaulting to the paper's choice, so a default model is
unchanged:

- ``activation="relu"`` or ``"tanh"`` (Sec. 3.1): every ReLU, in the features and the
  classifier, becomes a tanh; the weights are drawn as for ReLU, so both start alike.
- ``pool="overlapping"`` (z = 3, s = 2) or ``"non-overlapping"`` (z = s = 2), Sec. 3.4. On
  ``paper`` both give 27-13-6 maps (as in the paper's comparison); where a pooled map's side is
  even, the non-overlapping pool keeps one more row and column (``mini``: 14-7-3 instead of
  13-6-2; ``fmnist``: 27-13-6 instead of 26-12-5), and fc6 grows to take them.
- ``lrn``: ``True`` or ``False`` puts LRN after conv1 and conv2, or leaves it out (Sec. 3.3),
  whatever the variant's table says; ``None`` (default) keeps the variant's own.

LRN position. ``lrn_position="paper"`` gives conv-ReLU-LRN-pool (paper Sec. 3.3);
``"caffe"`` gives CaffeNet's conv-ReLU-pool-LRN. Either way the convolutions keep their indices
(``features.0, 4, 8, 10, 12``). Variants without LRN (and ``lrn=False``) ignore the option.

Initialisation (``init``), with fan_in = in_channels/groups * KH * KW for a convolution and
in_features for a linear layer, fan_out = out_channels * KH * KW or out_features:

- ``"kaiming"`` (He et al., 2015), the default: weights ~ N(0, 2/fan_in); biases 0.
- ``"xavier"`` (Glorot & Bengio, 2010; d2l.ai's choice for this net): weights ~ U(-a, a),
  a = sqrt(6 / (fan_in + fan_out)); biases 0.
- ``"torch"``: PyTorch's default for ``Conv2d`` and ``Linear`` (so runs compare with an untouched
  torchvision model): weights and biases ~ U(-b, b), b = 1/sqrt(fan_in).
- ``"paper"`` (Sec. 5): every weight ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7
  (so the ReLUs start with positive input), 0 elsewhere.

With N(0, 0.01) a ReLU layer of fan-in n scales the second moment of its input by about
n * 1e-4 / 2, which is 0.02 to 0.46 for AlexNet's layers; over its eight layers the signal (and
the gradient flowing back) shrinks by a factor ~1e-4 in standard deviation (~3e-8 for ``mini``,
whose fan-ins are smaller). The paper's net trained anyway, with bias 1 keeping units alive and
a 90-epoch schedule, but a short run from scratch barely moves its convolutions. He's scale keeps
every layer's second moment constant, but carried through fc8 it starts the logits large (up to
~14 for ``fmnist``: a first loss ~9 against chance 2.3), and the first step at lr 0.01 with
momentum 0.9 overshoots until the ReLUs die: the training recipes (:mod:`minialex.config`)
pair Kaiming's scale with a learning-rate warm-up. Glorot's variance 2/(fan_in + fan_out) is
half of He's wherever fan_in ~ fan_out, and at conv1, whose fan_out (96 * 121) dwarfs its
fan_in (3 * 121), some 30 times smaller: compounded over the layers, the logits start near 0
and the loss at chance, so the paper's learning rate trains the large variants without a
warm-up; but the signal reaching the last layers is then so small that ``mini`` (small fan-ins,
LRN dividing by k^0.75 = 1.7 twice) barely moves in its first hundred steps.

Attributes of the returned model: ``variant``, ``input_size`` (H = W the variant expects),
``in_channels``, ``num_classes``, ``input_shape`` (``(in_channels, input_size, input_size)``).

>>> import minialex
>>> from minialex.models import alexnet
>>> minialex.manual_seed(0)
>>> model = alexnet("mini")
>>> model.input_shape, model.num_classes, model.num_parameters()
((1, 28, 28), 10, 285322)
>>> [name for name, _ in model.named_parameters()][:4]
['features.0.weight', 'features.0.bias', 'features.4.weight', 'features.4.bias']
>>> model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
(2, 10)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import backend, nn
from .checks import output_size, positive_int
from .module import Module

LRN_POSITIONS = ("paper", "caffe")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}     # Sec. 3.1: ReLU against the saturating tanh
INITS = ("kaiming", "xavier", "torch", "paper")
POOL = dict(kernel_size=3, stride=2)    # overlapping pooling, z = 3, s = 2 (paper Sec. 3.4)
POOLS = {"overlapping": POOL, "non-overlapping": dict(kernel_size=2, stride=2)}  # z = s = 2
PAPER_BIAS_ONE = (1, 3, 4, 5, 6)        # conv2, conv4, conv5, fc6, fc7 (0-based over 8 layers)


@dataclass(frozen=True)
class _Spec:
    """One variant: convs as (out_channels, kernel, stride, padding, groups)."""
    input_size: int
    in_channels: int
    num_classes: int
    convs: tuple
    hidden: int                 # width of fc6 and fc7
    lrn: bool                   # LRN after conv1 and conv2
    avgpool: int | None = None  # torchvision's AdaptiveAvgPool2d((6, 6)) before the classifier
    torchvision_order: bool = False


VARIANTS = {
    "paper": _Spec(227, 3, 1000, ((96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1),
                                  (384, 3, 1, 1, 2), (256, 3, 1, 1, 2)), 4096, lrn=True),
    "one-tower": _Spec(227, 3, 1000, ((96, 11, 4, 0, 1), (256, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                                      (384, 3, 1, 1, 1), (256, 3, 1, 1, 1)), 4096, lrn=True),
    "owt": _Spec(224, 3, 1000, ((64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                                (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)), 4096, lrn=False,
                 avgpool=6, torchvision_order=True),
    "small": _Spec(65, 3, 2, ((48, 11, 1, 0, 1), (128, 5, 1, 2, 1), (192, 3, 1, 1, 1),
                              (192, 3, 1, 1, 1), (128, 3, 1, 1, 1)), 2048, lrn=False),
    "fmnist": _Spec(224, 1, 10, ((96, 11, 4, 1, 1), (256, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                                 (384, 3, 1, 1, 1), (256, 3, 1, 1, 1)), 4096, lrn=False),
    "mini": _Spec(28, 1, 10, ((32, 5, 1, 2, 1), (64, 5, 1, 2, 2), (96, 3, 1, 1, 1),
                              (96, 3, 1, 1, 2), (64, 3, 1, 1, 2)), 256, lrn=True),
}


class AlexNet(Module):
    """features -> (avgpool) -> flatten -> classifier; see the module docstring for variants."""

    def __init__(self, variant="paper", num_classes=None, in_channels=None, *,
                 lrn_position="paper", dropout_mode="inverted", dropout=0.5, init=None,
                 activation="relu", pool="overlapping", lrn=None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"alexnet: unknown variant {variant!r}; choose one of "
                             f"{', '.join(VARIANTS)}")
        if lrn_position not in LRN_POSITIONS:
            raise ValueError(f"alexnet: lrn_position must be one of {LRN_POSITIONS}, got "
                             f"{lrn_position!r}")
        init = INITS[0] if init is None else init
        if init not in INITS:
            raise ValueError(f"alexnet: init must be one of {INITS} or None, got {init!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"alexnet: activation must be one of {tuple(ACTIVATIONS)}, got "
                             f"{activation!r}")
        if pool not in POOLS:
            raise ValueError(f"alexnet: pool must be one of {tuple(POOLS)}, got {pool!r}")
        if lrn is not None and not isinstance(lrn, bool):
            raise ValueError(f"alexnet: lrn must be True, False or None (the variant's), got "
                             f"{lrn!r}")
        spec = VARIANTS[variant]
        lrn = spec.lrn if lrn is None else lrn
        act, pooling = ACTIVATIONS[activation], POOLS[pool]
        num_classes = spec.num_classes if num_classes is None else num_classes
        in_channels = spec.in_channels if in_channels is None else in_channels
        self.variant, self.input_size = variant, spec.input_size
        self.num_classes = positive_int("alexnet", "num_classes", num_classes)
        self.in_channels = positive_int("alexnet", "in_channels", in_channels)

        layers, channels, size = [], self.in_channels, spec.input_size
        for i, (out, kernel, stride, padding, groups) in enumerate(spec.convs):
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=padding,
                                 groups=groups), act()]
            channels, size = out, output_size(size, kernel, stride, padding)
            norm = [nn.LocalResponseNorm()] if lrn and i < 2 else []
            down = [nn.MaxPool2d(**pooling)] if i in (0, 1, 4) else []
            size = output_size(size, pooling["kernel_size"], pooling["stride"], 0) if down else size
            layers += norm + down if lrn_position == "paper" else down + norm
        self.features = nn.Sequential(*layers)
        if spec.avgpool:
            self.avgpool = nn.AdaptiveAvgPool2d((spec.avgpool, spec.avgpool))
            size = spec.avgpool
        else:
            self.avgpool = None
        self.flat_features = channels * size * size   # what fc6 expects per image

        hidden = spec.hidden
        fc6, fc7 = nn.Linear(self.flat_features, hidden), nn.Linear(hidden, hidden)
        fc8 = nn.Linear(hidden, self.num_classes)
        if spec.torchvision_order:
            classifier = [nn.Dropout(dropout, mode=dropout_mode), fc6, act(),
                          nn.Dropout(dropout, mode=dropout_mode), fc7, act(), fc8]
        else:
            classifier = [fc6, act(), nn.Dropout(dropout, mode=dropout_mode),
                          fc7, act(), nn.Dropout(dropout, mode=dropout_mode), fc8]
        self.classifier = nn.Sequential(*classifier)
        initialize(self, init)

    @property
    def input_shape(self) -> tuple:
        return (self.in_channels, self.input_size, self.input_size)

    def forward(self, x):
        return self.classifier(self._flat_features(x))

    def fc7(self, x):
        """fc8's input, ``(N, hidden)``: fc7's output after its ReLU (and the dropout that follows
        it in training mode). The paper compares images by the Euclidean distance between these
        vectors (Sec. 6.1, Fig. 4)."""
        return self.classifier[:-1](self._flat_features(x))

    def _flat_features(self, x):
        """The convolutional features of ``x`` (and avgpool), flattened to fc6's input."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AlexNet({self.variant!r}): expected input (N, {self.in_channels}, "
                             f"{self.input_size}, {self.input_size}), got shape {tuple(x.shape)}")
        y = self.features(x)
        if self.avgpool is not None:
            y = self.avgpool(y)
        if math.prod(y.shape[1:]) != self.flat_features:
            raise ValueError(f"AlexNet({self.variant!r}): a {x.shape[2]}x{x.shape[3]} input gives "
                             f"{tuple(y.shape[1:])} features but fc6 expects "
                             f"{self.flat_features}; feed {self.input_size}x{self.input_size} "
                             f"images")
        return y.reshape(y.shape[0], -1)

    def extra_repr(self):
        return (f"variant={self.variant!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}")


def alexnet(variant="paper", num_classes=None, in_channels=None, *, lrn_position="paper",
            dropout_mode="inverted", dropout=0.5, init=None, activation="relu",
            pool="overlapping", lrn=None) -> AlexNet:
    """Build an AlexNet variant (``"paper"``, ``"one-tower"``, ``"owt"``, ``"small"``,
    ``"fmnist"``, ``"mini"``); ``None`` arguments take the variant's defaults.

    Weights are drawn from ``minialex.backend.rng_for(np)``, so ``minialex.manual_seed(s)``
    before the call gives the same model every time. The model is float32 on the CPU; move it
    with ``model.to("gpu")``.

    >>> alexnet("paper").num_parameters()
    60965224
    >>> alexnet("vgg")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: alexnet: unknown variant 'vgg'; choose one of paper, one-tower, owt, small,
        fmnist, mini
    """
    return AlexNet(variant, num_classes, in_channels, lrn_position=lrn_position,
                   dropout_mode=dropout_mode, dropout=dropout, init=init,
                   activation=activation, pool=pool, lrn=lrn)


def initialize(model: Module, init: str) -> Module:
    """Redraw every Conv2d and Linear of ``model`` in place with scheme ``init`` (see the
    module docstring); layers are counted in order, conv1 first."""
    if init not in INITS:
        raise ValueError(f"initialize: init must be one of {INITS}, got {init!r}")
    rng = backend.rng_for(np)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for index, layer in enumerate(layers):
        w = layer.weight
        fan_in = math.prod(w.shape[1:])                  # in_channels/groups * KH * KW
        fan_out = w.shape[0] * math.prod(w.shape[2:])    # out_channels * KH * KW
        # drawn on the CPU in float32 whatever the model's device, so a seed gives one model
        if init in ("xavier", "torch"):
            a = (math.sqrt(6.0 / (fan_in + fan_out)) if init == "xavier"
                 else 1.0 / math.sqrt(fan_in))
            weight = rng.uniform(-a, a, w.shape).astype(np.float32)
        else:
            std = 0.01 if init == "paper" else math.sqrt(2.0 / fan_in)
            weight = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(std)
        w.data = _like(weight, w)
        if getattr(layer, "bias", None) is not None:
            shape = layer.bias.shape
            if init == "torch":
                bias = rng.uniform(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), shape)
            else:
                bias = np.full(shape, 1.0 if init == "paper" and index in PAPER_BIAS_ONE else 0.0)
            layer.bias.data = _like(bias.astype(np.float32), layer.bias)
    return model


def _like(array: np.ndarray, p):
    """``array`` with the device and dtype of parameter ``p``."""
    return backend.to_device(array.astype(p.dtype, copy=False), backend.device_of(p.data))
