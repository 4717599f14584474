"""Data, models and runners that several test modules share (not a test module itself)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

import minialex
from minialex import nn
from minialex.data import ArrayDataset, Loader, fashion_mnist
from minialex.data import transforms as T
from minialex.data.idx import write_idx
from minialex.models import alexnet
from minialex.optim import MOMENTUM, SGD, WEIGHT_DECAY, StepLR
from minialex.train import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_alexnet.py"


def learnable_fashion_mnist(directory, n_train=300, n_test=80, seed=0):
    """The four IDX files, named as the real ones, of 28x28 images a small net learns in a few
    steps: class k is a bright horizontal band at rows 2k..2k+7 under noise."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.int64)
        rows = np.arange(28)
        band = (rows[None, :] >= 2 * labels[:, None]) & (rows[None, :] < 2 * labels[:, None] + 8)
        images += 180 * band[:, :, None]
        image_name, label_name = fashion_mnist.FILES[split]
        write_idx(os.path.join(directory, image_name + ".gz"), images.clip(0, 255).astype(np.uint8))
        write_idx(os.path.join(directory, label_name + ".gz"), labels)
    return str(directory)


def tiny_net(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                         nn.Flatten(), nn.Linear(width * 16, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 10))


def tiny_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
                        rng.integers(0, 10, n))


def make_trainer(out_dir, epochs, model_seed=0, width=4, **options):
    """Everything seeded as the recipe does: model, shuffling, augmentation, dropout."""
    minialex.manual_seed(model_seed)
    model = tiny_net(width)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    augment = np.random.default_rng(2)
    transform = T.Compose([T.ToFloat(), T.RandomCrop(None, 1, generator=augment),
                           T.RandomHorizontalFlip(0.5, generator=augment)])
    train = Loader(tiny_data(), 8, shuffle=True, generator=np.random.default_rng(1),
                   transform=transform)
    val = Loader(tiny_data(16, seed=1), 16, transform=T.ToFloat())
    options = {"scheduler": StepLR(optimizer, 1, gamma=0.5), "print_freq": 0,
               "stream": open(os.devnull, "w"), **options}
    return Trainer(model, optimizer, train, val, epochs=epochs, out_dir=out_dir, **options)


# Each class: a dominant colour (scaled per image) and its own stripe direction, under noise.
PHOTO_CLASSES = {"apple": (190, 40, 40), "leaf": (50, 160, 60), "sky": (60, 90, 200)}
CORRUPT = "train/apple/broken.jpg"


def synthetic_photos(root, n_train=30, n_val=12, seed=0):
    """ImageFolder of 80x100 and 100x80 JPEGs and PNGs, plus one file that is not an image."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, (name, colour) in enumerate(PHOTO_CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (80, 100) if i % 2 else (100, 80)       # landscape and portrait
                yy, xx = np.mgrid[:h, :w]
                stripes = (np.sin(yy / 3), np.sin(xx / 3), np.sin((xx + yy) / 4))[k]
                x = (np.array(colour) * rng.uniform(0.6, 1.2) + 40 * stripes[..., None]
                     + rng.normal(0, 30, (h, w, 3)))
                image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
                image.save(folder / (f"{i}.png" if i % 3 == 0 else f"{i}.jpg"))
    (root / CORRUPT).write_bytes(b"\xff\xd8 truncated before any JPEG segment")
    return root


def run_example(*argv, timeout=300, env=None):
    """``examples/train_alexnet.py argv`` in a fresh process; the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def dying_alexnet(*args, **kwargs):
    """``alexnet(...)`` far from chance for 3 steps (class 0 scores 10 above the rest), then
    dead: all logits 0, the loss exactly ln(classes). Patched over ``recipe.alexnet`` to plant a
    run that stalls at chance after its warm-up."""
    model, calls = alexnet(*args, **kwargs), []
    forward = model.forward
    shift = np.where(np.arange(model.num_classes) == 0, 10.0, 0.0).astype(np.float32)

    def forward_then_die(x):
        calls.append(1)
        y = forward(x)
        return y + shift if len(calls) <= 3 else y * 0.0

    model.forward = forward_then_die
    return model
