r"""Image folders: the ImageNet / torchvision ``ImageFolder`` layout, scanned and decoded.

Layout::

    PATH/train/<class>/<any sub-folders>/<image files>
    PATH/val/<class>/...
    PATH/test/<class>/...          (optional)

Classes are the sub-folder names of ``train/`` in sorted order; class ``i`` gets label ``i``
(``class_to_idx``). ``val/`` and ``test/`` use the same mapping, so each of their classes must
also be a class of ``train/``. An image file is any file whose extension Pillow can open
(``.jpg``, ``.png``, ``.webp``, ...); hidden files (``.DS_Store``, ``._x.jpg``) are ignored, other
files are ignored and counted. An empty class folder is an error that names it.

File names are whatever the operating system allows: a name that is not valid UTF-8 (a
Latin-1 ``été.jpg`` copied from an old disk) is kept as Python holds it, with surrogate
escapes (``'\udce9t\udce9.jpg'``), so it opens as any other and its bytes are hashed as they are
(:func:`minialex.data.cache.fingerprint`). Where a name is shown (class names, skipped files,
warnings) it goes through :func:`display_path`, which writes such bytes as ``\xe9``: text that
prints and encodes anywhere.

Scanning only lists files; decoding happens in :func:`load_rgb`, called by the preparation step
(:mod:`minialex.data.prepare`), which skips and counts a file that fails to decode.

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for split, cls in [("train", "cat"), ("train", "dog"), ("val", "dog")]:
    ...     (root / split / cls).mkdir(parents=True)
    ...     Image.new("RGB", (8, 6)).save(root / split / cls / "a.png")
    >>> folder = scan_image_folder(root)
    >>> folder.classes, folder.class_to_idx
    (('cat', 'dog'), {'cat': 0, 'dog': 1})
    >>> folder.samples["val"]
    (('val/dog/a.png', 1),)
    >>> import shutil; shutil.rmtree(root)
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings

import numpy as np
from PIL import Image, ImageOps

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
WHITE = (255, 255, 255)   # background under transparent pixels


def display_path(path) -> str:
    r"""``path`` as printable text: bytes of the name that are not valid UTF-8 appear as
    ``\xNN``; a valid name is unchanged.

    >>> display_path("summer/\udce9t\udce9 1.jpg"), display_path("été/été 1.jpg")
    ('summer/\\xe9t\\xe9 1.jpg', 'été/été 1.jpg')
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_extensions() -> frozenset:
    """Lower-case file extensions (with the dot) that the installed Pillow can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """What :func:`scan_image_folder` found.

    Attributes:
        root: the dataset folder.
        classes: class names (the folders' names as :func:`display_path` shows them), in the
            folders' sorted order; label ``i`` is ``classes[i]``.
        samples: split name -> ``((path relative to root, label), ...)`` in sorted path order,
            for the splits present (always ``train`` and ``val``; ``test`` when it exists).
        ignored: split name -> number of non-image files skipped while scanning.
    """
    root: pathlib.Path
    classes: tuple
    samples: dict
    ignored: dict

    @property
    def class_to_idx(self) -> dict:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def splits(self) -> tuple:
        return tuple(self.samples)


def _class_folders(split_dir: pathlib.Path) -> list:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: pathlib.Path, extensions: frozenset):
    """(relative paths of image files under class_dir, sorted; count of other files)."""
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.join(dirpath, name))
            else:
                others += 1
    return sorted(found), others


def scan_image_folder(root) -> ImageFolder:
    """List the images of an ImageFolder-layout dataset; errors name the offending folder.

    Raises:
        ValueError: ``train/`` or ``val/`` is missing, a split has no class folders, a class
            folder holds no image file, or a class of ``val/`` (or ``test/``) is not in ``train/``.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset: {str(root)!r} is not a directory")
    for split in REQUIRED_SPLITS:
        if not (root / split).is_dir():
            raise ValueError(f"dataset: {str(root)!r} has no {split}/ folder (expected "
                             f"train/ and val/, each with one sub-folder per class)")
    extensions = image_extensions()
    folders = _class_folders(root / "train")
    classes = tuple(display_path(name) for name in folders)
    twins = sorted({name for name in classes if classes.count(name) > 1})
    if twins:   # a literal backslash name and a non-UTF-8 one, e.g. "\\xe9t\\xe9" and b"\xe9t\xe9"
        raise ValueError(f"dataset: two class folders of {str(root / 'train')!r} show as the "
                         f"same name ({', '.join(twins)}); rename one")
    class_to_idx = {name: i for i, name in enumerate(folders)}
    samples, ignored = {}, {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        names = _class_folders(split_dir)
        if not names:
            loose = sum(1 for p in split_dir.iterdir() if p.is_file()
                        and p.suffix.lower() in extensions and not p.name.startswith("."))
            raise ValueError(f"dataset: {str(split_dir)!r} has no class sub-folders (expected "
                             f"one sub-folder per class, as in train/)"
                             + (f"; its {loose} image file(s) must go into the sub-folder of "
                                f"their class" if loose else ""))
        missing = [display_path(name) for name in names if name not in class_to_idx]
        if missing:
            raise ValueError(f"dataset: class folder(s) {missing} in {str(split_dir)!r} "
                             f"are not classes of {str(root / 'train')!r}, so they have no "
                             f"label (train/ has {', '.join(classes[:10])}"
                             f"{', ...' if len(classes) > 10 else ''})")
        entries, others = [], 0
        for name in names:
            files, skipped = _image_files(split_dir / name, extensions)
            if not files:
                raise ValueError(f"dataset: class folder {str(split_dir / name)!r} "
                                 f"holds no image file")
            others += skipped
            label = class_to_idx[name]
            entries.extend((os.path.relpath(f, root).replace(os.sep, "/"), label) for f in files)
        samples[split], ignored[split] = tuple(entries), others
        if others:
            warnings.warn(f"dataset: ignored {others} file(s) in {str(split_dir)!r} whose "
                          f"extension Pillow does not open", stacklevel=2)
    return ImageFolder(root=root, classes=classes, samples=samples, ignored=ignored)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha is flattened onto white, 16-bit grey scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            img.mode == "P" and "transparency" in img.info):
        # Transparent pixels often store black or arbitrary colour; show them as on a page.
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if img.mode.startswith("I"):
        # 16-bit greyscale (PNG, TIFF); Pillow's own conversion would clip at 255, not scale.
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def load_rgb(path, min_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB, upright as its EXIF orientation says.

    Greyscale, palette, CMYK, alpha and 16-bit images become 8-bit RGB (alpha over white).
    ``min_side`` lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8) as long as both sides stay
    at least ``min_side``: much faster for photos larger than needed, and the rescale to the
    final size follows anyway.

    Raises whatever Pillow raises for an unreadable file (``PIL.UnidentifiedImageError``,
    ``OSError`` for a truncated file, ...); the preparation step catches it and skips the file.
    """
    img = Image.open(path)
    try:
        if min_side:
            img.draft(None, (min_side, min_side))
        img.load()          # also closes the file of a single-frame image
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose a good image
            pass
        rgb = _to_rgb(img)
    except BaseException:
        img.close()
        raise
    if rgb is not img:
        img.close()
    return rgb


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """AlexNet's preprocessing (Krizhevsky et al. 2012, Sec. 2): shorter side to ``size``, then
    the central ``size`` square.

    Returns uint8 ``(size, size, 3)``. Bilinear (antialiased when shrinking, as Pillow does).
    The crop offset is ``(long - size) // 2``, so an odd margin leaves the extra pixel at the end.
    """
    w, h = img.size
    if w <= h:
        new_w, new_h = size, max(size, int(h * size / w + 0.5))
    else:
        new_w, new_h = max(size, int(w * size / h + 0.5)), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
