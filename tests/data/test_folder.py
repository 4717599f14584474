"""ImageFolder scanning and decoding (minialex/data/folder.py) on files written here with Pillow."""
import os

import numpy as np
import pytest
from PIL import Image

from minialex.data.folder import display_path, load_rgb, resize_center_crop, scan_image_folder


def save(path, array_or_image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (array_or_image if isinstance(array_or_image, Image.Image)
           else Image.fromarray(array_or_image))
    img.save(path, **kwargs)
    return path


def tiny(color=(10, 20, 30), size=(9, 7)):
    return Image.new("RGB", size, color)


def test_scan_sorts_classes_and_shares_train_mapping(tmp_path):
    for rel in ["train/zebra/1.png", "train/ant/b.jpg", "train/ant/a.png", "train/moth/x/deep.png",
                "val/zebra/v.png", "val/ant/v.png", "test/moth/t.png"]:
        save(tmp_path / rel, tiny())
    (tmp_path / "train/ant/notes.txt").write_text("not an image")
    (tmp_path / "train/ant/.DS_Store").write_bytes(b"\0")
    (tmp_path / "train/.hidden_class").mkdir()

    with pytest.warns(UserWarning, match="ignored 1 file"):
        folder = scan_image_folder(tmp_path)

    assert folder.classes == ("ant", "moth", "zebra")
    assert folder.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}
    assert folder.splits == ("train", "val", "test")
    assert folder.samples["train"] == (("train/ant/a.png", 0), ("train/ant/b.jpg", 0),
                                       ("train/moth/x/deep.png", 1), ("train/zebra/1.png", 2))
    assert folder.samples["val"] == (("val/ant/v.png", 0), ("val/zebra/v.png", 2))
    assert folder.samples["test"] == (("test/moth/t.png", 1),)
    assert folder.ignored == {"train": 1, "val": 0, "test": 0}


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    save(tmp_path / "train/cat/a.png", tiny())
    (tmp_path / "train/dog").mkdir()
    (tmp_path / "train/dog/readme.txt").write_text("no images here")
    save(tmp_path / "val/cat/a.png", tiny())
    with pytest.raises(ValueError, match=r"train/dog.*holds no image"):
        scan_image_folder(tmp_path)


def test_val_class_missing_from_train_is_an_error_naming_it(tmp_path):
    save(tmp_path / "train/cat/a.png", tiny())
    save(tmp_path / "val/cat/a.png", tiny())
    save(tmp_path / "val/unicorn/a.png", tiny())
    with pytest.raises(ValueError, match=r"unicorn.*not classes of .*no label .train/ has cat.$"):
        scan_image_folder(tmp_path)


@pytest.mark.parametrize("loose", [0, 2])
def test_a_split_without_class_folders_is_an_error_saying_what_it_needs(tmp_path, loose):
    save(tmp_path / "train/cat/a.png", tiny())
    (tmp_path / "val").mkdir()
    for i in range(loose):                          # images put straight into val/
        save(tmp_path / f"val/{i}.png", tiny())
    with pytest.raises(ValueError) as info:
        scan_image_folder(tmp_path)
    message = str(info.value)
    assert f"{str(tmp_path / 'val')!r} has no class sub-folders (expected one sub-folder per " \
           f"class, as in train/)" in message
    assert ("its 2 image file(s) must go into the sub-folder of their class" in message) == \
        bool(loose)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_split_is_an_error_naming_it(tmp_path, missing):
    for split in {"train", "val"} - {missing}:
        save(tmp_path / split / "cat/a.png", tiny())
    with pytest.raises(ValueError, match=f"no {missing}/ folder"):
        scan_image_folder(tmp_path)


def _rgb_of(path):
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_greyscale_palette_cmyk_alpha_and_16bit_become_rgb(tmp_path):
    grey = save(tmp_path / "grey.png", Image.new("L", (5, 4), 77))
    palette = save(tmp_path / "pal.png", Image.new("RGB", (5, 4), (200, 0, 0)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=4))
    cmyk = save(tmp_path / "cmyk.jpg", Image.new("RGB", (16, 16), (30, 160, 220)).convert("CMYK"),
                quality=95)
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (0, 0, 255, 255)      # opaque blue on the left
    rgba[:, 3:] = (0, 0, 0, 0)          # transparent "black" on the right
    alpha = save(tmp_path / "alpha.png", Image.fromarray(rgba, "RGBA"))
    deep = save(tmp_path / "deep.png", Image.fromarray(np.full((3, 3), 65535, np.uint16)))

    assert (_rgb_of(grey) == 77).all()
    assert (_rgb_of(palette) == (200, 0, 0)).all()
    assert np.abs(_rgb_of(cmyk) - (30, 160, 220)).max() <= 12
    a = _rgb_of(alpha)
    assert (a[:, :3] == (0, 0, 255)).all() and (a[:, 3:] == 255).all()   # flattened onto white
    assert (_rgb_of(deep) == 255).all()                                  # 16-bit white stays white


def test_exif_orientation_is_respected(tmp_path):
    # Stored landscape 300x200 with a white block in its top-left corner; EXIF orientation 6 says
    # "rotate 90 degrees clockwise to display", so the upright image is portrait 200x300 with
    # the block in its top-right corner.
    stored = np.zeros((200, 300, 3), np.uint8)
    stored[20:80, 20:80] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rotated.jpg", stored, exif=exif, quality=95)

    upright = np.asarray(load_rgb(path))
    assert upright.shape == (300, 200, 3)
    ys, xs = np.nonzero(upright[..., 0] > 128)
    assert abs(ys.mean() - 49.5) < 1 and abs(xs.mean() - 149.5) < 1


@pytest.mark.parametrize("content", [b"definitely not an image", "truncated"])
def test_unreadable_file_raises_from_load_rgb(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        save(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:400])
    else:
        path.write_bytes(content)
    with pytest.raises(Exception):
        load_rgb(path)


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return ys.mean(), xs.mean()


@pytest.mark.parametrize("w, h", [(150, 301), (401, 203), (97, 97)])
def test_shorter_side_becomes_size_and_crop_is_central(w, h):
    # Two white squares placed symmetrically about the image centre along the long axis: after a
    # central crop they must sit symmetrically about the crop's centre (127.5), and their
    # distance tells the scale (shorter side -> 256).
    img = np.zeros((h, w, 3), np.uint8)
    cy, cx, d, r = (h - 1) / 2, (w - 1) / 2, 30, 6
    offsets = [(-d, 0), (d, 0)] if h >= w else [(0, -d), (0, d)]
    sy, sx = 2 * r + h % 2, 2 * r + w % 2        # odd side on an odd axis: centred exactly
    for dy, dx in offsets:
        y0, x0 = int(cy + dy - (sy - 1) / 2), int(cx + dx - (sx - 1) / 2)
        img[y0:y0 + sy, x0:x0 + sx] = 255
    out = resize_center_crop(Image.fromarray(img), 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8

    scale = 256 / min(w, h)
    bright = out[..., 0] > 128
    half = bright.copy()
    if h >= w:
        half[128:] = False
        (y1, x1), (y2, x2) = _centroid(half), _centroid(bright & ~half)
        assert abs((y1 + y2) / 2 - 127.5) < 0.6 and abs(x1 - 127.5) < 0.6
        assert abs((y2 - y1) - 2 * d * scale) < 1.5
    else:
        half[:, 128:] = False
        (y1, x1), (y2, x2) = _centroid(half), _centroid(bright & ~half)
        assert abs((x1 + x2) / 2 - 127.5) < 0.6 and abs(y1 - 127.5) < 0.6
        assert abs((x2 - x1) - 2 * d * scale) < 1.5


def test_class_folders_whose_names_are_not_utf8_show_their_bytes(tmp_path):
    root = tmp_path / "ds"
    latin1 = os.fsdecode(b"\xe9t\xe9")                  # '\udce9t\udce9' as Python holds it
    for split in ("train", "val"):
        save(root / split / latin1 / os.fsdecode(b"\xff 1.png"), tiny())
        save(root / split / "chat noir" / "a b.png", tiny())
    folder = scan_image_folder(root)
    assert folder.classes == ("chat noir", "\\xe9t\\xe9")     # the order of the names
    assert folder.samples["val"] == (("val/chat noir/a b.png", 0),
                                     (f"val/{latin1}/" + os.fsdecode(b"\xff 1.png"), 1))
    assert display_path(folder.samples["val"][1][0]) == "val/\\xe9t\\xe9/\\xff 1.png"


def test_two_class_folders_that_show_as_one_name_are_refused(tmp_path):
    for name in (os.fsdecode(b"\xe9t\xe9"), "\\xe9t\\xe9"):   # Latin-1 bytes, and a backslash name
        for split in ("train", "val"):
            save(tmp_path / split / name / "a.png", tiny())
    with pytest.raises(ValueError, match=r"two class folders of .* show as the same name "
                                         r"\(\\xe9t\\xe9\); rename one"):
        scan_image_folder(tmp_path)
