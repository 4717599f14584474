r"""The run configuration: every setting of a training run, its presets, one place that checks.

A :class:`RunConfig` is the whole recipe of a run (model, data, optimiser, schedule, warm-up,
augmentation, seed); :func:`minialex.recipe.fit` turns one into a trained model. Three presets
are named instances, picked by :func:`preset_for` from the dataset and the device:

- :data:`CPU_PRESET`: Fashion-MNIST on a CPU, the ``mini`` AlexNet at the images' own 28x28,
  sized to finish on two cores in minutes;
- :data:`GPU_PRESET`: Fashion-MNIST on a GPU, d2l.ai's AlexNet (``fmnist``) at 224x224;
- :data:`IMAGES_PRESET`: an image folder (ImageNet layout) on any device, the paper's recipe
  (Sec. 5: SGD, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 on plateaus; Sec. 4.1:
  random crops, flips, PCA colour noise, mean subtraction) with the departures below.

Departures from the paper, each one setting away from it (``init="paper"``,
``normalize=False``, ``warmup=0`` give the paper's exact recipe):

- ``init="kaiming"`` (He et al., 2015): the paper's N(0, 0.01) shrinks the signal ~1e-4-fold
  over eight layers (see :mod:`minialex.models`), so a short run barely moves the convolutions;
- ``warmup``: the learning rate rises linearly from ``lr / warmup`` to ``lr`` over the first
  ``warmup`` steps (Goyal et al., 2017), at most a fifth of the run's planned steps. Kaiming's
  scale carried through fc8 starts the logits large (a first loss ~9 where chance is 2.3), and
  at the full rate with momentum 0.9 the first steps overshoot until the ReLUs die (measured on
  ``fmnist`` and ``small``); a warm-up meets those first, largest gradients with a small step.
  ``init="xavier"`` (d2l.ai's) starts at chance instead and needs no warm-up on the large
  variants, but leaves ``mini`` nearly still;
- ``normalize=True`` for image folders: inputs divided by the pixel std, the unit scale that
  Xavier and Kaiming init assume (the paper fed 0..255 levels minus the mean);
- ``image_size=None`` for image folders: prepared at the model's input side times 256/224
  (the paper's 256 for 224 crops), so a crop sees 87.5% of the image's side whatever the model.

A preset's learning rate is for its batch size: a run that sets another batch size and no
learning rate gets the preset's rate scaled by the same factor (:func:`scaled_to_batch`; the
linear scaling rule of Goyal et al., 2017). At the paper's batch of 128 that is the paper's 0.01;
at batch 16 on a CPU, 0.00125. Measured on the ``paper`` model: batch 16 at 0.01 spiked and, in
PyTorch as in minialex, fell back towards chance within 200 steps.

>>> CPU_PRESET.model, CPU_PRESET.init, CPU_PRESET.warmup > 0
('mini', 'kaiming', True)
>>> preset_for("/data/photos", "cpu").model
'paper'
>>> RunConfig(model="small", dataset="/data/photos").prepared_size
74
>>> RunConfig(lr=-1).check()
Traceback (most recent call last):
    ...
minialex.config.SettingError: lr: expected a finite number > 0, got -1
"""
from __future__ import annotations

import dataclasses
import os

from . import finetune
from .checks import is_int, is_real
from .data.augment import CROP_SIZE as PAPER_CROP  # Sec. 4.1: 224x224 patches of...
from .data.augment import IMAGE_SIZE as PAPER_IMAGE_SIZE  # ... the 256x256 images (Sec. 2)
from .models import ACTIVATIONS, INITS, LRN_POSITIONS, POOLS, VARIANTS
from .optim import MOMENTUM, WEIGHT_DECAY

FASHION_MNIST = "fashion-mnist"
SCHEDULES = ("plateau", "step", "none")
DROPOUT_MODES = ("inverted", "paper")
FREEZE = (None, "features")
PREPROCESSING = ("weights", "dataset")


class SettingError(ValueError):
    """One setting's value is out of its range; ``name`` names it, ``problem`` says what was
    expected. (Settings that conflict with each other raise a plain ValueError.)"""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; the defaults are those of :data:`CPU_PRESET`'s dataset.

    Recipe (fixed by a checkpoint: a resumed run keeps these, see :data:`RESUME_KEEPS`):
        dataset: ``"fashion-mnist"`` or the path of an image folder.
        model: an AlexNet variant of :data:`minialex.models.VARIANTS`.
        batch_size, lr, momentum, weight_decay: SGD's, per step.
        init: weight initialisation (:data:`minialex.models.INITS`).
        warmup: steps of linear learning-rate warm-up (0: none, the paper's); a run uses at
            most a fifth of its planned steps (``epochs`` x steps per epoch) for it.
        schedule: ``"plateau"`` (divide by 10 when the validation error stops improving, at
            most 3 times, then stop: the paper's), ``"step"`` (divide by 10 every
            ``step_size`` epochs) or ``"none"``.
        patience: epochs without improvement that the plateau schedule lets pass before it
            divides; None: :attr:`plateau_patience`'s share of ``epochs``.
        threshold: the plateau schedule's relative threshold (an improvement must beat the
            best error by ``threshold`` times it); None: by one standard error of the
            validation error, sqrt(p (1 - p) / n) at the best error p on n images.
        crop_padding, flip: Fashion-MNIST augmentation (random crops after zero padding, flips).
        random_crop, pca, subtract_mean, normalize: image-folder augmentation and scaling.
        image_size: side of the prepared images; None: :attr:`prepared_size`.
        lrn_position, dropout, dropout_mode: model options.
        activation, pool, lrn: the paper's Sec. 3 choices, switchable for ablations
            (:mod:`minialex.models`): ``"relu"``/``"tanh"``, ``"overlapping"``/
            ``"non-overlapping"``, LRN on/off (None: the variant's own).
        val_size: Fashion-MNIST training images held out for validation.
        limit_train, limit_test: use only the first N images (None: all).
        seed: weights, shuffling, dropout and augmentation all follow from it.
        stall_steps: steps of loss at chance (after warm-up) that stop a run; 0: never.
        pretrained: a weights file to start from instead of random weights (torchvision's or
            Caffe's AlexNet, or a minialex checkpoint); the model is the file's, fc8 is
            replaced for the data's classes (:mod:`minialex.finetune`), and a run that does not
            set them takes :func:`finetuning`'s preset.
        freeze: ``"features"``: the convolutional layers of the ``pretrained`` weights get no
            gradient, no update and no weight decay; None: every layer trains.
        preprocessing: ``"weights"``: the ``pretrained`` weights' own input preparation
            (torchvision's, Caffe's), when they have one; ``"dataset"``: minialex's, from the
            image folder's statistics.

    Per invocation (free to change on resume):
        epochs: epochs in all, counting those already done.
        ten_crop: also report the paper's 10-crop test accuracy.
        print_freq: progress line every N steps (0: per epoch only).
    """
    dataset: str = FASHION_MNIST
    model: str = "mini"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    init: str = "kaiming"
    warmup: int = 100
    schedule: str = "step"
    step_size: int = 4
    patience: int | None = None
    threshold: float | None = None
    crop_padding: int = 0
    flip: bool = False
    random_crop: bool = True
    pca: bool = True
    subtract_mean: bool = True
    normalize: bool = True
    image_size: int | None = None
    lrn_position: str = "paper"
    dropout: float = 0.5
    dropout_mode: str = "inverted"
    activation: str = "relu"
    pool: str = "overlapping"
    lrn: bool | None = None
    val_size: int = 5000
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    stall_steps: int = 200
    pretrained: str | None = None
    freeze: str | None = None
    preprocessing: str = "weights"
    ten_crop: bool = False
    print_freq: int = 50

    @property
    def is_folder(self) -> bool:
        return self.dataset != FASHION_MNIST

    @property
    def prepared_size(self) -> int:
        """The side image folders are prepared at: ``image_size``, or the model's input side
        scaled as the paper's 224 is to 256 (256 itself for the 224x224 and 227x227 models)."""
        if self.image_size is not None:
            return self.image_size
        side = VARIANTS[self.model].input_size
        if side >= PAPER_CROP:       # the paper's own 256 for its 224 (really 227) crops
            return max(PAPER_IMAGE_SIZE, side)
        return round(side * PAPER_IMAGE_SIZE / PAPER_CROP)

    @property
    def plateau_patience(self) -> int:
        """``patience``, or one epoch per 20 planned and at least 1: a single noisy epoch never
        divides the rate, two in a row may in a short run, and a 90-epoch run lets 4 pass and
        divides at the fifth (its three divisions and the stop then take 20 epochs without
        progress in all, room for the paper's three divisions in some 90 epochs, Sec. 5)."""
        return self.patience if self.patience is not None else max(1, self.epochs // 20)

    def replace(self, **changes) -> "RunConfig":
        """A checked copy with ``changes`` (None values are ignored: "not given")."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"RunConfig: unknown setting(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes).check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> "RunConfig":
        """Raise one ValueError naming the first bad setting; returns self."""
        def need(name, ok, expected):
            if not ok:
                raise SettingError(name, f"expected {expected}, got {getattr(self, name)!r}")

        def count(name, low):
            value = getattr(self, name)
            need(name, is_int(value) and value >= low,
                 "a positive integer" if low == 1 else f"an integer >= {low}")

        def real(name, ok, expected):
            value = getattr(self, name)
            need(name, is_real(value) and ok(value), expected)

        need("dataset", isinstance(self.dataset, str) and self.dataset != "", "a dataset name "
             "or folder")
        need("model", self.model in VARIANTS, f"one of {', '.join(VARIANTS)}")
        need("init", self.init in INITS, f"one of {', '.join(INITS)}")
        need("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        need("lrn_position", self.lrn_position in LRN_POSITIONS,
             f"one of {', '.join(LRN_POSITIONS)}")
        need("dropout_mode", self.dropout_mode in DROPOUT_MODES,
             f"one of {', '.join(DROPOUT_MODES)}")
        need("activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        need("pool", self.pool in POOLS, f"one of {', '.join(POOLS)}")
        need("pretrained", self.pretrained is None or (isinstance(self.pretrained, str)
                                                       and self.pretrained != ""),
             "None or a weights file")
        need("freeze", self.freeze in FREEZE, "None or 'features'")
        need("preprocessing", self.preprocessing in PREPROCESSING,
             f"one of {', '.join(PREPROCESSING)}")
        if self.freeze and not self.pretrained:
            raise ValueError("freeze: frozen layers need trained weights; set `pretrained`")
        need("lrn", self.lrn is None or isinstance(self.lrn, bool), "True, False or None")
        for name in ("epochs", "batch_size", "step_size"):
            count(name, 1)
        for name in ("warmup", "crop_padding", "val_size", "seed", "stall_steps", "print_freq"):
            count(name, 0)
        for name in ("limit_train", "limit_test", "image_size"):
            if getattr(self, name) is not None:
                count(name, 1)
        if self.patience is not None:
            count("patience", 0)
        if self.threshold is not None:
            real("threshold", lambda v: 0 <= v < 1, "a number in [0, 1)")
        real("lr", lambda v: v > 0, "a finite number > 0")
        real("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
        real("weight_decay", lambda v: v >= 0, "a finite number >= 0")
        real("dropout", lambda v: 0 <= v < 1, "a number in [0, 1)")
        for name in ("flip", "random_crop", "pca", "subtract_mean", "normalize", "ten_crop"):
            need(name, isinstance(getattr(self, name), bool), "True or False")
        if self.is_folder and VARIANTS[self.model].input_size > self.prepared_size:
            crop = VARIANTS[self.model].input_size
            raise ValueError(f"image_size: `model` {self.model} takes {crop}x{crop} crops, "
                             f"larger than the {self.prepared_size}x{self.prepared_size} prepared "
                             f"images; use `image_size` {crop} or more")
        if self.ten_crop and not self.is_folder:
            raise ValueError("ten_crop: needs an image folder (`dataset` PATH)")
        return self


# Fashion-MNIST on a CPU: sized for two cores. Five epochs at ~700 images/s (measured on a
# 2-core AMD EPYC, see benchmarks/RESULTS.md): four at lr 0.02, one at 0.002 (the paper's
# divide-by-10, on a fixed step: five epochs give no plateau worth waiting for). Batch 64 runs as
# many images/s as 128 there and takes twice the steps. No augmentation: five epochs of 55,000
# images underfit rather than overfit.
CPU_PRESET = RunConfig()
# Fashion-MNIST on a GPU: d2l.ai's AlexNet at 224x224 (d2l.ai Sec. 8.1), batch 128, the paper's
# lr 0.01 with its plateau schedule, flips.
GPU_PRESET = RunConfig(model="fmnist", epochs=10, batch_size=128, lr=0.01, schedule="plateau",
                       step_size=1, flip=True, warmup=100)
# An image folder: the paper's recipe (Sec. 5), ~90 epochs or fewer when the plateau schedule
# is exhausted, with the departures listed in the module docstring.
IMAGES_PRESET = RunConfig(dataset="images", model="paper", epochs=90, batch_size=128, lr=0.01,
                          schedule="plateau", step_size=1, flip=True, warmup=100)
PRESETS = {"cpu": CPU_PRESET, "gpu": GPU_PRESET, "images": IMAGES_PRESET}

# Fine-tuning (a run with `pretrained`): the dataset's preset with the changes below. The
# features already work, so the step is smaller and the run shorter, as in Caffe's fine-tuning
# example (models/finetune_flickr_style: base_lr 0.001, a tenth of its ImageNet solver's 0.01,
# one division by 10 in the run). fc8 starts new but small (N(0, 0.01): the loss starts at
# chance), so nothing overshoots and no warm-up is needed.
FINETUNE_LR_DIVISOR = 10
FINETUNE_EPOCHS = 10
FINETUNE_STEP_SIZE = 7     # lr / 10 for the last 3 of the 10 epochs


def finetuning(preset: "RunConfig") -> "RunConfig":
    """``preset`` for a run that starts from trained weights: a tenth of its learning rate,
    10 epochs, divided by 10 once after 7 (``schedule="step"``), no warm-up.

    >>> config = finetuning(IMAGES_PRESET)
    >>> config.lr, config.epochs, config.schedule, config.step_size, config.warmup
    (0.001, 10, 'step', 7, 0)
    """
    return preset.replace(lr=preset.lr / FINETUNE_LR_DIVISOR, epochs=FINETUNE_EPOCHS,
                          schedule="step", step_size=FINETUNE_STEP_SIZE, warmup=0)

# What a checkpoint fixes about its run: on resume these come from the checkpoint.
RESUME_KEEPS = tuple(f.name for f in dataclasses.fields(RunConfig)
                     if f.name not in ("epochs", "ten_crop", "print_freq"))


def preset_name(dataset: str, device: str) -> str:
    """``"images"`` for a folder, else ``"gpu"`` or ``"cpu"`` by the device."""
    if dataset not in (None, FASHION_MNIST):
        return "images"
    return "gpu" if device.startswith("gpu") else "cpu"


def preset_for(dataset: str | None, device: str) -> RunConfig:
    """The preset of ``dataset`` (None: Fashion-MNIST) on ``device``, for that dataset."""
    preset = PRESETS[preset_name(dataset, device)]
    return preset if dataset in (None, FASHION_MNIST) else preset.replace(dataset=dataset)


def scaled_to_batch(preset: RunConfig, batch_size: int) -> RunConfig:
    """``preset`` at ``batch_size``, its learning rate scaled by ``batch_size / preset.batch_size``
    (the gradient's noise grows as the batch shrinks; the step shrinks with it).

    >>> config = scaled_to_batch(IMAGES_PRESET, 16)
    >>> config.batch_size, config.lr
    (16, 0.00125)
    """
    return preset.replace(batch_size=batch_size, lr=preset.lr * batch_size / preset.batch_size)


def resolve(given: dict, device: str, saved: dict | None = None) -> RunConfig:
    """The run's settings from flags ``given`` (None: not given), the checkpoint's ``saved``
    settings when resuming, and the preset.

    A resumed run keeps the settings it started with (:data:`RESUME_KEEPS`): a flag that
    contradicts one of them is refused with one ValueError naming every such flag and the
    checkpoint's value; a flag that repeats it is fine, and ``epochs``, ``ten_crop`` and
    ``print_freq`` are free. A new run's batch size given without a learning rate scales the
    preset's rate (:func:`scaled_to_batch`)."""
    saved = dict(saved or {})
    dataset = saved.get("dataset") or given.get("dataset")
    base = preset_for(dataset, device)
    if saved.get("pretrained") or given.get("pretrained"):
        base = finetuning(base)
        variant = None if saved else finetune.variant_of(given["pretrained"])
        if variant in VARIANTS:     # the weights' model, which sizes the prepared images
            base = base.replace(model=variant)
    if not saved and given.get("batch_size") is not None and given.get("lr") is None:
        base = scaled_to_batch(base, given["batch_size"])
    settings, contradictions = {}, []
    for key in (f.name for f in dataclasses.fields(RunConfig)):   # in declared order
        value = given.get(key)
        if key in saved and key in RESUME_KEEPS:
            if value is not None and not _same_setting(key, value, saved):
                contradictions.append(f"`{key}` {value} (the checkpoint's: {saved[key]})")
            settings[key] = saved[key]
        elif key == "epochs" and value is None and "epochs" in saved:
            settings[key] = saved["epochs"]
        else:
            settings[key] = value
    if contradictions:
        raise ValueError(f"resume: {', '.join(contradictions)} "
                         f"{'contradicts' if len(contradictions) == 1 else 'contradict'} the "
                         f"checkpoint, and a resumed run keeps the settings it started with; "
                         f"leave {'it' if len(contradictions) == 1 else 'them'} out, or start a "
                         f"new run with another `out`")
    return base.replace(**settings)


def _same_setting(key, value, saved) -> bool:
    """Whether flag ``value`` says what the checkpoint's ``saved[key]`` says: the same folder
    however it is spelt, or the image size that ``image_size=None`` stood for."""
    if key == "dataset" and FASHION_MNIST not in (value, saved[key]):
        return os.path.realpath(value) == os.path.realpath(saved[key])
    if key == "image_size" and saved[key] is None and saved.get("model") in VARIANTS:
        return value == RunConfig(dataset="folder", model=saved["model"]).prepared_size
    return value == saved[key]
