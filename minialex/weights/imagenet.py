"""ImageNet's 1,000 class names, as the pretrained AlexNets number their outputs.

``imagenet_classes.txt`` (shipped with the package) holds one name per line in class-index
order after a one-line ``#`` header naming its source: the classes of ILSVRC-2012 are its
WordNet synsets sorted by id (``n01440764`` tench first), the order both torchvision's and
Caffe's ImageNet models use, and the names are torchvision's ``_IMAGENET_CATEGORIES`` (a short
readable name per synset, unique).

>>> classes = imagenet_classes()
>>> len(classes), classes[0], classes[207], classes[999]
(1000, 'tench', 'golden retriever', 'toilet tissue')
"""
from __future__ import annotations

import functools
import pathlib

CLASSES_FILE = pathlib.Path(__file__).with_name("imagenet_classes.txt")
NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple:
    """The 1,000 class names; ``imagenet_classes()[i]`` is the name of output ``i``."""
    lines = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    names = tuple(line for line in lines if line and not line.startswith("#"))
    if len(names) != NUM_CLASSES:
        raise ValueError(f"imagenet_classes: {CLASSES_FILE} holds {len(names)} names, "
                         f"{NUM_CLASSES} expected; the installation is damaged")
    return names
