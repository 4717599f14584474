r"""The paper's two towers on two devices, in one process: model parallel, as cuda-convnet ran it.

Krizhevsky et al. (2012), Sec. 3.2: "we spread the net across two GPUs ... the GPUs communicate
only in certain layers". Each GPU held half of every layer's kernels (its *tower*); conv2, conv4
and conv5 read only their own tower's maps (``groups=2`` in the one-device ``paper`` model),
while conv3 and the fully connected layers read both towers'. :func:`two_towers` splits a
``paper`` (or ``mini``) model so: tower ``t`` on ``devices[t]`` holds output rows
``[t*OC/2, (t+1)*OC/2)`` of every convolution and fully connected layer (weight and bias; for a
grouped convolution these are exactly group ``t``'s kernels), and the activations cross between
devices only

- at the input, copied to both towers (conv1 reads the whole image);
- before conv3, fc6, fc7 and fc8, where each tower gathers the other's maps (or units) behind its
  own, in channel order;
- at each local response normalisation: minialex's one-device net normalises across all of a
  layer's maps (channel ``c`` sums over ``c - n/2 .. c + n/2``), so the window of a map beside a
  tower's edge reaches into the other tower, and each tower borrows the ``n // 2`` maps beside its
  edge (a halo, 2 maps for the paper's n = 5). cuda-convnet normalised within each GPU's maps
  instead; the halo is what makes the towers compute exactly what the one-device net computes;
- at the output, where fc8's two halves meet on ``devices[0]``.

``TwoTowers.last_exchanges`` names these crossings for the last forward pass. The backward pass
crosses at the same places in the other direction (:class:`ToDevice` copies the gradient back).

On the same weights the towers compute what the one-device net computes: the forward pass, the
gradients and an SGD step, to float rounding (each tower runs its half of every product, the
same sums). Dropout draws its masks per tower, so a training step matches with dropout off.
``state_dict()`` joins the halves under the one-device names (``features.0.weight``, ...), so a
checkpoint loads into either form; :meth:`TwoTowers.named_splits` pairs each one-device name
with its two tower Parameters. :class:`TowersSGD` trains them and saves (and loads) its
momentum in the one-device SGD's form, so a run resumes in either form from the other's
checkpoint.

>>> import minialex
>>> from minialex.models import alexnet
>>> minialex.manual_seed(0)
>>> net = alexnet("mini", dropout=0.0)
>>> towers = two_towers(net, ("cpu", "cpu"))
>>> x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
>>> bool(np.allclose(towers(x).data, net(x).data, atol=1e-6))
True
>>> list(towers.state_dict()) == list(net.state_dict())
True
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import backend, nn
from .data.shards import share_bounds
from .layers.conv import conv2d
from .layers.linear import linear
from .module import Module, Parameter
from .optim import SGD, saved_velocities
from .tensor import Function, Tensor

TOWERS = 2


class ToDevice(Function):
    """``y = x`` on another device. Gradient: ``gx = gy`` copied back to ``x``'s device."""

    def __init__(self, device):
        self.device = device

    def forward(self, x):
        self.source = backend.device_of(x)
        return backend.to_device(x, self.device)

    def backward(self, gy):
        return backend.to_device(gy, self.source)


class Concatenate(Function):
    r"""``y = [x_0, x_1, ...]`` joined along ``axis``. Gradient: each ``gx_k`` is ``gy``'s slice
    at ``x_k``'s place, :math:`gx_k = gy[\ldots, o_k : o_k + n_k]`."""

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, *xs):
        self.ends = np.cumsum([x.shape[self.axis] for x in xs]).tolist()
        return backend.get_array_module(xs[0]).concatenate(xs, axis=self.axis)

    def backward(self, gy):
        index = [slice(None)] * gy.ndim
        parts = []
        for start, end in zip([0] + self.ends[:-1], self.ends):
            index[self.axis] = slice(start, end)
            parts.append(gy[tuple(index)])
        return tuple(parts)


def two_towers(model, devices=("gpu:0", "gpu:1")) -> "TwoTowers":
    """The two-tower form of an AlexNet whose grouped convolutions have ``groups=2``
    (``paper``, ``mini``), its weights copied (and split) onto ``devices``."""
    return TwoTowers(model, devices)


class TwoTowers(Module):
    """``model`` split into two towers on ``devices`` (see the module docstring)."""

    def __init__(self, model, devices=("gpu:0", "gpu:1")):
        super().__init__()
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        groups = sorted({c.groups for c in convs})
        if not hasattr(model, "features") or not set(groups) <= {1, TOWERS} \
                or TOWERS not in groups or getattr(model, "avgpool", None) is not None:
            raise ValueError(f"two_towers: expected an AlexNet whose grouped convolutions have "
                             f"groups=2 (variant 'paper' or 'mini'), got "
                             f"{getattr(model, 'variant', type(model).__name__)!r} with conv "
                             f"groups {groups}")
        if not isinstance(devices, (tuple, list)) or len(devices) != TOWERS:
            raise ValueError(f"two_towers: devices must be two device names, got {devices!r}")
        object.__setattr__(self, "devices", tuple(backend.parse_device(d) for d in devices))
        object.__setattr__(self, "model", model)    # its layers' settings; not a child
        object.__setattr__(self, "_splits", OrderedDict())
        object.__setattr__(self, "last_exchanges", [])
        for name in ("input_shape", "input_size", "variant", "num_classes"):
            object.__setattr__(self, name, getattr(model, name, None))   # read by recipes
        self._check_halos(model)
        self.tower0, self.tower1 = Module(), Module()
        for name, p in model.named_parameters():
            parts = []
            for t, (tower, device) in enumerate(zip((self.tower0, self.tower1), self.devices)):
                start, stop = share_bounds(p.shape[0], t, TOWERS)
                half = backend.to_numpy(p.data)[start:stop].copy()   # never the model's memory
                half = Parameter(backend.to_device(half, device))
                setattr(tower, name.replace(".", "_"), half)
                parts.append(half)
            self._splits[name] = parts

    @staticmethod
    def _check_halos(model):
        """Each tower must hold the ``size // 2`` maps its neighbour's LRN windows borrow."""
        maps = None
        for i, layer in enumerate(model.features):
            if isinstance(layer, nn.Conv2d):
                maps = layer.out_channels
            elif isinstance(layer, nn.LocalResponseNorm) and maps is not None \
                    and maps // TOWERS < layer.size // 2:
                raise ValueError(f"two_towers: features.{i}, an LRN of size {layer.size}, "
                                 f"reaches {layer.size // 2} maps into the other tower, but each "
                                 f"tower holds only {maps // TOWERS} of its {maps} maps")

    # -- weights under the one-device names ------------------------------------------------
    def named_splits(self):
        """(one-device name, [tower 0's Parameter, tower 1's]) pairs, in the model's order."""
        return iter(self._splits.items())

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """The one-device model's state_dict: each tensor's halves joined, as NumPy copies."""
        return OrderedDict((name, np.concatenate([backend.to_numpy(p.data) for p in parts]))
                           for name, parts in self._splits.items())

    def load_state_dict(self, state_dict):
        """Load a one-device state_dict (or this one's), each tensor split between the towers;
        every name and shape is checked before anything is loaded."""
        shapes = {name: (sum(p.shape[0] for p in parts),) + tuple(parts[0].shape[1:])
                  for name, parts in self._splits.items()}
        got = {name: tuple(np.shape(value)) for name, value in state_dict.items()}
        if got != shapes:
            wrong = sorted(set(got) ^ set(shapes)) or [n for n in shapes if got[n] != shapes[n]]
            raise ValueError(f"TwoTowers.load_state_dict: expected the one-device model's "
                             f"names and shapes; these differ: {', '.join(wrong)}")
        for name, parts in self._splits.items():
            value = state_dict[name]
            full = backend.to_numpy(value.data if isinstance(value, Tensor) else value)
            for t, part in enumerate(parts):
                start, stop = share_bounds(full.shape[0], t, TOWERS)
                part.data = backend.to_device(np.array(full[start:stop]), self.devices[t],
                                              part.dtype)

    def to(self, device=None, dtype=None):
        if device is not None:
            raise ValueError(f"TwoTowers: the towers live on {self.devices}; to move them, "
                             f"build the towers again on other devices")
        return super().to(dtype=dtype)

    def train(self, mode: bool = True):
        self.model.train(mode)      # dropout's mode lives in the model's layers
        return super().train(mode)

    # -- the forward pass --------------------------------------------------------------------
    def forward(self, x):
        if not isinstance(x, Tensor):
            x = Tensor(x)
        self.last_exchanges.clear()
        parts = [self._copy(x, d, "input") for d in self.devices]
        whole = True        # each part holds the whole input, not a tower's channels
        for i, layer in enumerate(self.model.features):
            name = f"features.{i}"
            if isinstance(layer, nn.Conv2d):
                if layer.groups == 1 and not whole:
                    parts = self._gathered(parts, name)
                parts = [conv2d(p, *self._weights(name, t), layer.stride, layer.padding)
                         for t, p in enumerate(parts)]
                whole = False
            elif isinstance(layer, nn.LocalResponseNorm):
                parts = self._normalised(layer, parts, name)
            else:               # ReLU, tanh, max-pool: each tower on its own maps
                parts = [layer(p) for p in parts]
        parts = [p.reshape(p.shape[0], -1) for p in parts]   # channel-major, tower 0 first
        for i, layer in enumerate(self.model.classifier):
            name = f"classifier.{i}"
            if isinstance(layer, nn.Linear):
                parts = [linear(p, *self._weights(name, t))
                         for t, p in enumerate(self._gathered(parts, name))]
            else:               # ReLU, tanh, dropout
                parts = [layer(p) for p in parts]
        return self._joined(parts, self.devices[0], "output")

    def _weights(self, name, t):
        return self._splits[f"{name}.weight"][t], self._splits[f"{name}.bias"][t]

    def _copy(self, x, device, where):
        if backend.device_of(x.data) == device:
            return x
        self.last_exchanges.append(where)
        return ToDevice(device)(x)

    def _joined(self, parts, device, where):
        return Concatenate(axis=1)(*(self._copy(p, device, where) for p in parts))

    def _gathered(self, parts, where):
        """Both towers' maps (or units), in channel order, on each tower's device."""
        return [self._joined(parts, device, where) for device in self.devices]

    def _normalised(self, lrn, parts, where):
        """LRN across the maps of both towers: each borrows the maps its edge windows reach."""
        low, high = parts
        C = low.shape[1]
        back, ahead = lrn.size // 2, (lrn.size - 1) // 2    # the window c - back .. c + ahead
        below = [low, self._copy(high[:, :ahead], self.devices[0], where)] if ahead else [low]
        above = [self._copy(low[:, C - back:], self.devices[1], where), high] if back else [high]
        y_low = lrn(Concatenate(axis=1)(*below) if ahead else low)
        y_high = lrn(Concatenate(axis=1)(*above) if back else high)
        return [y_low[:, :C], y_high[:, back:]]

    def extra_repr(self):
        return f"variant={getattr(self.model, 'variant', None)!r}, devices={self.devices}"


class TowersSGD(SGD):
    """:class:`~minialex.optim.SGD` over the towers' Parameters (each update on its tower's
    device) whose ``state_dict`` is that of the one-device model's SGD: velocity ``i`` is
    parameter ``i`` of the one-device model, its towers' halves joined (:meth:`TwoTowers.
    named_splits`); ``load_state_dict`` splits them again. A checkpoint's optimiser state
    therefore moves between the two forms as its weights do."""

    def __init__(self, towers, lr, momentum=None, weight_decay=None):
        options = {k: v for k, v in (("momentum", momentum), ("weight_decay", weight_decay))
                   if v is not None}
        self.splits = [(name, parts) for name, parts in towers.named_splits()]
        super().__init__([(f"{name} (tower {t})", p) for name, parts in self.splits
                          for t, p in enumerate(parts)], lr, **options)

    def state_dict(self) -> dict:
        state = super().state_dict()
        halves, joined = state["velocity"], {}
        for i in range(len(self.splits)):
            parts = [halves.get(str(TOWERS * i + t)) for t in range(TOWERS)]
            if all(v is not None for v in parts):   # both halves step together
                joined[str(i)] = np.concatenate(parts)
        return {**state, "num_params": len(self.splits), "velocity": joined}

    def load_state_dict(self, state):
        n = state.get("num_params", len(self.splits)) if isinstance(state, dict) else None
        if n is None or int(n) != len(self.splits):
            raise ValueError(f"TowersSGD.load_state_dict: state is for {n} parameters, the "
                             f"one-device model has {len(self.splits)}")
        halves = {}
        for key, v in saved_velocities("TowersSGD", state.get("velocity", {}), len(self.splits)):
            name, parts = self.splits[key]
            whole = (sum(p.shape[0] for p in parts),) + tuple(parts[0].shape[1:])
            if tuple(np.shape(v)) != whole:
                raise ValueError(f"TowersSGD.load_state_dict: velocity {key} ({name}) has shape "
                                 f"{tuple(np.shape(v))}, the parameter {whole}")
            v = backend.to_numpy(v)
            for t in range(TOWERS):
                start, stop = share_bounds(whole[0], t, TOWERS)
                halves[str(TOWERS * key + t)] = v[start:stop]
        super().load_state_dict({**state, "num_params": len(self.params), "velocity": halves})
