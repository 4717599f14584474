r"""The paper's SGD with momentum and weight decay, and learning-rate schedules.

Update (Krizhevsky et al. 2012, Sec. 5), for every parameter w with gradient g = dL/dw averaged
over the batch, learning rate \epsilon, momentum m = 0.9 and weight decay \lambda = 0.0005:

.. math::

    v \leftarrow m\,v - \lambda\,\epsilon\,w - \epsilon\,g, \qquad w \leftarrow w + v

PyTorch's ``torch.optim.SGD`` keeps a velocity without the learning rate in it,
:math:`u \leftarrow m\,u + (g + \lambda w)`, :math:`w \leftarrow w - \epsilon\,u`. With a
constant \epsilon the two are the same update (:math:`v = -\epsilon u` at every step). They
differ when \epsilon changes: PyTorch's next step rescales the whole accumulated velocity to the
new rate at once, while the paper's velocity keeps the steps taken at the old rate and lets them
decay by m per step. Right after a division by 10, the paper's update is still mostly the old
momentum; PyTorch's is already ten times smaller.

Schedules change ``optimizer.lr`` between epochs: :class:`ReduceLROnPlateau` divides it by 10
when the validation error stops improving, as the paper did three times before stopping, and
:class:`StepLR` divides it every ``step_size`` epochs. :class:`LinearWarmup` changes it within
the first steps of a run: a departure from the paper (Goyal et al., 2017, "Accurate, Large
Minibatch SGD", Sec. 2.2), so that the first and largest gradients meet a small step. A warm-up
covers at most :data:`MAX_WARMUP_SHARE` of the steps a run plans (:meth:`LinearWarmup.fit_to`):
one longer than the run would leave the rate below its target to the end.

All state (``state_dict``) is plain data: Python numbers and strings, and NumPy arrays, so it can
be saved with ``np.savez`` or JSON without pickle.

>>> import numpy as np
>>> from minialex import Parameter
>>> w = Parameter(np.array([1.0, -2.0]))
>>> opt = SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
>>> w.grad = np.array([0.5, 0.25])
>>> opt.step()          # v = -0.01*0.1*w - 0.1*g
>>> w.data
array([ 0.949, -2.023])
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import backend, cpu
from .checks import is_real, non_negative_int, positive_int
from .tensor import Tensor

MOMENTUM = 0.9          # paper Sec. 5
WEIGHT_DECAY = 5e-4     # paper Sec. 5
MAX_WARMUP_SHARE = 0.2  # of a run's planned steps: most of the run is at the rate it asks for


def _check(owner: str, name: str, value, ok: bool, expected: str) -> float:
    if not (is_real(value) and ok):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return float(value)


def _require_keys(owner: str, state, keys) -> None:
    """Refuse a state dict that lacks any of ``keys``, naming them all, before anything is set."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner}.load_state_dict: missing key(s) {', '.join(missing)}")


class SGD:
    """Stochastic gradient descent with the paper's momentum and weight decay (see the module
    docstring). ``params``: Parameters (a list or generator) or ``named_parameters()`` pairs.

    ``step()`` updates every parameter whose ``grad`` is set, in place on ``p.data`` (NumPy or
    CuPy), and skips those whose ``grad`` is None; ``lr`` may be changed between steps.
    """

    def __init__(self, params, lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY):
        self.params, self.names = [], []
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) and len(item) == 2 else (str(i), item)
            if not isinstance(p, Tensor):
                raise TypeError(f"SGD: params must be Parameters or (name, Parameter) pairs, "
                                f"item {i} is {type(p).__name__}")
            if any(p is q for q in self.params):
                raise ValueError(f"SGD: parameter {name} appears twice; it would be updated twice")
            self.params.append(p)
            self.names.append(name)
        if not self.params:
            raise ValueError("SGD: params is empty; pass model.parameters()")
        self.lr = lr
        self.momentum = _check("SGD", "momentum", momentum,
                               is_real(momentum) and 0 <= momentum < 1, "in [0, 1)")
        self.weight_decay = _check("SGD", "weight_decay", weight_decay,
                                   is_real(weight_decay) and weight_decay >= 0, ">= 0")
        self.velocity = [None] * len(self.params)   # v per parameter, created at its first step

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check("SGD", "lr", value, is_real(value) and value > 0, "a finite number > 0")

    def step(self):
        lr, m, wd = self._lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.shape != p.shape:
                raise ValueError(f"SGD: gradient of {self.names[i]} has shape {g.shape}, the "
                                 f"parameter {p.shape}")
            with backend.device_scope(p.data):   # the velocity and d live with the weight
                self._update(i, p.data, g, lr, m, wd)

    def _update(self, i, w, g, lr, m, wd):
        v = self.velocity[i]
        if v is None:
            v = self.velocity[i] = backend.get_array_module(w).zeros_like(w)
        if backend.is_gpu_array(w) or not (w.flags.c_contiguous and v.flags.c_contiguous):
            _momentum_step(w, g, v, lr, m, wd)
        else:
            cpu.chunked_update(_momentum_step, w, g, v, lr, m, wd)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """``{"lr", "momentum", "weight_decay", "num_params", "velocity"}``; ``velocity`` maps the
        parameter's index (as a string, in ``params`` order) to a NumPy copy of its velocity, for
        the parameters that have taken a step (the others have no entry)."""
        return {"lr": self._lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "num_params": len(self.params),
                "velocity": {str(i): np.array(backend.to_numpy(v), copy=True)
                             for i, v in enumerate(self.velocity) if v is not None}}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output; everything is checked before anything is set.
        Velocities move to each parameter's device and dtype."""
        _require_keys("SGD", state, ("lr", "momentum", "weight_decay", "velocity"))
        n = state.get("num_params", len(self.params))
        if int(n) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: state is for {int(n)} parameters, this "
                             f"optimizer has {len(self.params)}")
        velocity = [None] * len(self.params)
        for i, v in saved_velocities("SGD", state["velocity"], len(self.params)):
            p = self.params[i]
            if tuple(np.shape(v)) != tuple(p.shape):
                raise ValueError(f"SGD.load_state_dict: velocity {i} ({self.names[i]}) has shape "
                                 f"{tuple(np.shape(v))}, the parameter {tuple(p.shape)}")
            # a copy: steps write into the velocity, never into the caller's array
            velocity[i] = backend.to_device(np.array(backend.to_numpy(v), dtype=p.dtype),
                                            backend.device_of(p.data))
        # numbers may come back from np.load as 0-d arrays
        lr, m, wd = (float(state[k]) for k in ("lr", "momentum", "weight_decay"))
        momentum = _check("SGD", "momentum", m, 0 <= m < 1, "in [0, 1)")
        weight_decay = _check("SGD", "weight_decay", wd, wd >= 0, ">= 0")
        self.lr = lr
        self.momentum, self.weight_decay, self.velocity = momentum, weight_decay, velocity

    def __repr__(self):
        return (f"SGD(lr={self._lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"{len(self.params)} parameters)")


def saved_velocities(owner: str, saved, n: int):
    """(index, velocity) for each saved velocity of a state_dict's ``velocity`` (a dict keyed by
    the parameter's index as a string, or a list), after checking each index is one of 0..n-1;
    parameters that never stepped (no entry, or None) are left out."""
    saved = dict(enumerate(saved)) if isinstance(saved, (list, tuple)) else saved
    for key, v in saved.items():
        if v is None:
            continue
        if not str(key).isdigit() or int(key) >= n:
            raise ValueError(f"{owner}.load_state_dict: velocity index {key!r} is not one of "
                             f"0..{n - 1}")
        yield int(key), v


class ReduceLROnPlateau:
    r"""Multiply ``optimizer.lr`` by ``factor`` when the monitored metric (validation error, mode
    ``"min"``; or accuracy, mode ``"max"``) has not improved for more than ``patience`` epochs.

    An improvement must go past the best value so far by a margin: in mode ``"min"`` a value
    counts when it is below ``best - margin``, where ``margin = threshold * |best|`` (relative,
    as PyTorch's default), or, when the metric is a proportion measured on ``samples`` images,
    at least its standard error at the best value,

    .. math::

        \text{margin} = \max\Bigl(\text{threshold}\,|b|,\;
                                   \sqrt{b\,(1 - b) / n}\Bigr),

    so that a validation set's sampling noise (0.026 at an error of 0.3 on 300 images, 0.002
    on ImageNet's 50,000) is not taken for progress, nor its absence for a plateau.
    At most ``max_reductions`` reductions are made. The paper reduced
    the learning rate three times "prior to termination", i.e. it trained on at the last rate
    until that stalled too; accordingly ``exhausted`` becomes True at the first plateau after
    the last allowed reduction (where a fourth one would be due), and a trainer stops there.

    >>> from minialex import Parameter
    >>> opt = SGD([Parameter(np.zeros(1))], lr=0.01)
    >>> plateau = ReduceLROnPlateau(opt)
    >>> for error in [0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3]:
    ...     _ = plateau.step(error)
    >>> round(opt.lr, 8), plateau.num_reductions, plateau.exhausted
    (1e-05, 3, True)
    """

    def __init__(self, optimizer, factor=0.1, patience=0, threshold=1e-4, max_reductions=3,
                 mode="min", samples=None):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"ReduceLROnPlateau: optimizer must have an lr attribute, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.factor = _check("ReduceLROnPlateau", "factor", factor, is_real(factor) and
                             0 < factor < 1, "in (0, 1)")
        self.threshold = _check("ReduceLROnPlateau", "threshold", threshold, is_real(threshold)
                                and threshold >= 0, ">= 0")
        for name, value in (("patience", patience), ("max_reductions", max_reductions)):
            non_negative_int("ReduceLROnPlateau", name, value)
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.max_reductions, self.mode = int(patience), int(max_reductions), mode
        self.samples = None if samples is None else positive_int("ReduceLROnPlateau", "samples",
                                                                 samples)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.num_reductions = 0
        self.exhausted = False

    def _improved(self, metric: float) -> bool:
        if math.isinf(self.best):   # the first metric always counts (inf - inf would be nan)
            return True
        if self.mode == "min":
            return metric < self.best - self.margin
        return metric > self.best + self.margin

    @property
    def margin(self) -> float:
        """How far past ``best`` a metric must go to count as an improvement (0 before the
        first metric, which always counts)."""
        if not math.isfinite(self.best):
            return 0.0
        margin = abs(self.best) * self.threshold
        if self.samples is not None:
            p = min(max(self.best, 0.0), 1.0)
            margin = max(margin, math.sqrt(p * (1 - p) / self.samples))
        return margin

    def step(self, metric) -> bool:
        """Record one epoch's metric; returns True when the learning rate was reduced."""
        metric = float(metric)
        if math.isfinite(metric) and self._improved(metric):
            self.best, self.num_bad_epochs = metric, 0
            return False
        self.num_bad_epochs += 1
        if self.num_bad_epochs <= self.patience or self.exhausted:
            return False
        if self.num_reductions >= self.max_reductions:
            self.exhausted = True
            return False
        self.optimizer.lr = self.optimizer.lr * self.factor
        self.num_reductions += 1
        self.num_bad_epochs = 0
        return True

    def state_dict(self) -> dict:
        return {"factor": self.factor, "patience": self.patience, "threshold": self.threshold,
                "max_reductions": self.max_reductions, "mode": self.mode, "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "num_reductions": self.num_reductions,
                "exhausted": self.exhausted, "samples": self.samples}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output; a state saved before ``samples`` existed has
        none (a relative threshold only)."""
        _require_keys("ReduceLROnPlateau", state, [k for k in self.state_dict() if k != "samples"])
        samples = np.asarray(state.get("samples")).item()     # None, or a number, maybe 0-d
        restored = ReduceLROnPlateau(self.optimizer, float(state["factor"]),
                                     int(state["patience"]), float(state["threshold"]),
                                     int(state["max_reductions"]), str(state["mode"]),
                                     None if samples is None else int(samples))
        restored.best, restored.exhausted = float(state["best"]), bool(state["exhausted"])
        restored.num_bad_epochs = int(state["num_bad_epochs"])
        restored.num_reductions = int(state["num_reductions"])
        self.__dict__.update(restored.__dict__)


class StepLR:
    """Multiply ``optimizer.lr`` by ``gamma`` every ``step_size`` epochs; call ``step()`` once at
    the end of each epoch. It never stops a run (``exhausted`` is always False), and ``step``
    accepts and ignores a metric so a trainer can call every schedule the same way.

    >>> from minialex import Parameter
    >>> opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    >>> schedule = StepLR(opt, step_size=2)
    >>> [schedule.step() for epoch in range(4)]
    [False, True, False, True]
    >>> round(opt.lr, 8)
    0.001
    """

    exhausted = False

    def __init__(self, optimizer, step_size, gamma=0.1):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"StepLR: optimizer must have an lr attribute, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.step_size = positive_int("StepLR", "step_size", step_size)
        self.gamma = _check("StepLR", "gamma", gamma, is_real(gamma) and 0 < gamma <= 1,
                            "in (0, 1]")
        self.epoch = 0

    def step(self, metric=None) -> bool:
        """Count one epoch; returns True when the learning rate was reduced."""
        self.epoch += 1
        if self.epoch % self.step_size:
            return False
        self.optimizer.lr = self.optimizer.lr * self.gamma
        return True

    def state_dict(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma, "epoch": self.epoch}

    def load_state_dict(self, state):
        _require_keys("StepLR", state, self.state_dict())
        restored = StepLR(self.optimizer, int(state["step_size"]), float(state["gamma"]))
        restored.epoch = int(state["epoch"])
        self.__dict__.update(restored.__dict__)


class LinearWarmup:
    r"""Raise ``optimizer.lr`` linearly to its value over the first ``steps`` steps: the
    optimiser step number :math:`t = 0, 1, \ldots` uses :math:`\epsilon \min(1, (t+1)/T)`.
    Call :meth:`step` before each ``optimizer.step()``. ``steps=0`` changes nothing.

    Epoch schedules act on the *target* rate :math:`\epsilon`, not on the ramped one: wrap
    their ``step`` in :meth:`scheduling` so that a division by 10 during the warm-up divides
    the target and the ramp goes on towards the new one.

    ``planned_steps`` (the run's optimiser steps in all; see :meth:`fit_to`) shortens the
    warm-up to at most :data:`MAX_WARMUP_SHARE` of them; ``requested`` keeps ``steps`` as given.

    >>> from minialex import Parameter
    >>> opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    >>> warmup = LinearWarmup(opt, steps=4)
    >>> lrs = []
    >>> for t in range(6):
    ...     warmup.step()
    ...     lrs.append(round(opt.lr, 6))
    >>> lrs
    [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]
    """

    def __init__(self, optimizer, steps: int, planned_steps: int | None = None):
        self.optimizer = optimizer
        self.steps = self.requested = non_negative_int("LinearWarmup", "steps", steps)
        self.target = optimizer.lr
        self.taken = 0                      # optimiser steps seen so far
        if planned_steps is not None:
            self.fit_to(planned_steps)

    def fit_to(self, planned_steps: int) -> bool:
        """Shorten the warm-up to at most :data:`MAX_WARMUP_SHARE` of ``planned_steps``; True
        when it was shortened. It is never lengthened: a run resumed with more epochs keeps the
        warm-up it had (lengthening one under way would lower the rate it has reached)."""
        planned = non_negative_int("LinearWarmup", "planned_steps", planned_steps)
        longest = int(planned * MAX_WARMUP_SHARE)
        if self.steps <= longest:
            return False
        self.steps = longest
        if not self.active:         # the shortened ramp is over: from now on, the target
            self.optimizer.lr = self.target
        return True

    @property
    def active(self) -> bool:
        return self.taken < self.steps

    def step(self) -> None:
        """Set the rate of the next optimiser step."""
        if self.active:            # the last warm-up step sets the target itself
            self.optimizer.lr = self.target * (self.taken + 1) / self.steps
        self.taken += 1

    @contextlib.contextmanager
    def scheduling(self):
        """Let an epoch schedule see and change the target rate (see the class docstring)."""
        self.optimizer.lr = self.target
        try:
            yield
        finally:
            self.target = self.optimizer.lr
            if self.active and self.taken:    # the rate of the last step, on the new target
                self.optimizer.lr = self.target * self.taken / self.steps

    def state_dict(self) -> dict:
        return {"steps": self.steps, "target": self.target, "taken": self.taken}

    def load_state_dict(self, state):
        _require_keys("LinearWarmup", state, self.state_dict())
        self.steps, self.target, self.taken = (int(state["steps"]), float(state["target"]),
                                               int(state["taken"]))


def _momentum_step(w, g, v, lr, m, wd, d=None):
    """In place: v <- m v - wd lr w - lr g, then w <- w + v; ``d`` holds lr (wd w + g)."""
    d = np.multiply(w, wd, out=d) if d is not None else wd * w
    d += g
    d *= lr
    v *= m
    v -= d
    w += v

