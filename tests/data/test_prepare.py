"""The cached preparation (minialex/data/prepare.py, cache.py) on a small Pillow-written folder."""
import json
import os
import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from minialex.data import prepare as prep
from minialex.data.folder import load_rgb, resize_center_crop

from conftest import TOL
from support import run_example


def save(path, img, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(path, **kwargs)
    return path


def photo(h, w, seed):
    """A smooth random colour field (photo-like), uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(30, 220, 3) + 40 * np.stack(
        [np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x - y], axis=-1)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    """train: 2 classes x 4 files (JPEG/PNG, odd sizes, portrait/landscape, greyscale, CMYK,
    palette, EXIF-rotated) plus one corrupt file; val: 2 classes x 1."""
    root = tmp_path / "photos"
    exif = Image.Exif()
    exif[0x0112] = 6
    save(root / "train/cat/a_corrupt.jpg", photo(40, 30, 0))
    (root / "train/cat/a_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    save(root / "train/cat/b_portrait.png", photo(301, 150, 1))
    save(root / "train/cat/c_grey.jpg", Image.fromarray(photo(120, 203, 2)).convert("L"))
    save(root / "train/cat/d_exif.jpg", photo(90, 140, 3), exif=exif, quality=95)
    save(root / "train/dog/a_landscape.jpg", photo(203, 401, 4), quality=95)
    save(root / "train/dog/b_cmyk.jpg", Image.fromarray(photo(77, 99, 5)).convert("CMYK"))
    save(root / "train/dog/c_palette.png", Image.fromarray(photo(64, 64, 6)).convert("P"))
    save(root / "train/dog/d_small.png", photo(33, 47, 7))
    save(root / "val/cat/v.png", photo(50, 70, 8))
    save(root / "val/dog/v.jpg", photo(70, 50, 9))
    return root


def run(root, cache, **kwargs):
    kwargs = {"size": 32, "workers": 0, "progress": False, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prep.prepare(root, cache_dir=cache, **kwargs)


def expected_row(root, rel, size):
    return resize_center_crop(load_rgb(root / rel, min_side=size), size)


def test_prepares_every_readable_file_and_skips_the_corrupt_one(dataset, tmp_path):
    with pytest.warns(UserWarning, match=r"skipping unreadable image 'train/cat/a_corrupt.jpg'"):
        ds = prep.prepare(dataset, size=256, cache_dir=tmp_path / "cache", workers=2,
                          progress=False)

    assert ds.classes == ("cat", "dog") and ds.splits == ("train", "val")
    assert ds.images["train"].shape == (7, 256, 256, 3) and ds.images["train"].dtype == np.uint8
    assert isinstance(ds.images["train"], np.memmap)
    assert [rel for rel, _ in ds.skipped["train"]] == ["train/cat/a_corrupt.jpg"]
    assert ds.meta["splits"]["train"]["count"] == 7 and ds.skipped["val"] == []
    # The corrupt file was first: its row holds another image, and files() says which.
    files = ds.files("train")
    assert sorted(files) == sorted(str(p.relative_to(dataset)) for p in
                                   (dataset / "train").rglob("*") if p.is_file()
                                   and "corrupt" not in p.name)
    for row, rel in enumerate(files):
        assert ds.labels["train"][row] == ("dog" in rel)
        np.testing.assert_array_equal(ds.images["train"][row], expected_row(dataset, rel, 256))
    assert ds.labels["val"].tolist() == [0, 1]


def test_shorter_side_256_and_central_crop_exactly(dataset, tmp_path):
    ds = run(dataset, tmp_path / "cache", size=256)
    row = ds.files("train").index("train/cat/b_portrait.png")
    # Independent reference: 150x301 -> 256 x round(301 * 256 / 150) = 256x514, rows 129..384.
    src = Image.open(dataset / "train/cat/b_portrait.png").convert("RGB")
    ref = np.asarray(src.resize((256, 514), Image.Resampling.BILINEAR).crop((0, 129, 256, 385)))
    np.testing.assert_array_equal(ds.images["train"][row], ref)


def test_exif_rotated_file_is_stored_upright(dataset, tmp_path):
    ds = run(dataset, tmp_path / "cache", size=64)
    row = ds.files("train").index("train/cat/d_exif.jpg")
    stored = photo(90, 140, 3)                       # landscape as stored; EXIF says rotate 90 cw
    upright = Image.fromarray(np.rot90(stored, k=-1).copy())
    ref = resize_center_crop(upright, 64).astype(int)
    assert np.abs(ds.images["train"][row].astype(int) - ref).mean() < 3


def test_mean_image_and_rgb_pca_match_a_direct_computation(dataset, tmp_path):
    ds = run(dataset, tmp_path / "cache")
    x = np.asarray(ds.images["train"], dtype=np.float64)
    np.testing.assert_allclose(ds.mean, x.mean(axis=0), **TOL["grey_levels"])
    assert ds.mean.shape == (32, 32, 3) and ds.mean.dtype == np.float32

    cov = np.cov((x / 255).reshape(-1, 3).T, bias=True)
    w, v = np.linalg.eigh(cov)
    np.testing.assert_allclose(ds.eigvals, w[::-1], **TOL["float32_relative"])
    assert ds.eigvals[0] > ds.eigvals[1] > ds.eigvals[2] > 0
    # Same eigenvectors up to sign, orthonormal, and they rebuild the covariance.
    np.testing.assert_allclose(np.abs(np.sum(ds.eigvecs * v[:, ::-1], axis=0)), 1,
                               **TOL["float32_relative"])
    np.testing.assert_allclose(ds.eigvecs @ np.diag(ds.eigvals) @ ds.eigvecs.T, cov,
                               **TOL["float32_unit"])


def count_decodes(monkeypatch):
    calls = []
    real = prep._decode_file

    def counting(path, size):
        calls.append(path)
        return real(path, size)
    monkeypatch.setattr(prep, "_decode_file", counting)
    return calls


def test_second_run_reuses_the_cache_without_decoding(dataset, tmp_path, monkeypatch):
    calls = count_decodes(monkeypatch)
    first = run(dataset, tmp_path / "cache")
    assert len(calls) == 10 and not first.reused
    stamp = os.stat(first.path / "train_images.npy").st_mtime_ns
    second = run(dataset, tmp_path / "cache")
    assert len(calls) == 10 and second.reused and second.path == first.path
    assert os.stat(second.path / "train_images.npy").st_mtime_ns == stamp
    np.testing.assert_array_equal(second.images["train"], first.images["train"])


@pytest.mark.parametrize("change", ["touch", "add", "size_flag"])
def test_a_changed_dataset_is_prepared_again(dataset, tmp_path, monkeypatch, change):
    first = run(dataset, tmp_path / "cache")
    calls = count_decodes(monkeypatch)
    if change == "touch":
        path = dataset / "val/cat/v.png"
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "add":
        save(dataset / "val/cat/w.png", photo(40, 40, 10))
    second = run(dataset, tmp_path / "cache", size=16 if change == "size_flag" else 32)
    assert not second.reused and second.path != first.path and len(calls) >= 10
    assert second.images["val"].shape[0] == (3 if change == "add" else 2)
    # The superseded cache of the same folder and size is gone; another size is kept.
    assert first.path.exists() == (change == "size_flag")


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_preparation_leaves_nothing_that_looks_complete(dataset, tmp_path,
                                                                     monkeypatch, workers):
    # Ctrl-C halfway: in the decoder itself (in-process), or in the parent while the worker
    # pool is busy (parallel).
    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == (4 if workers == 0 else 1):
            raise KeyboardInterrupt
        return real(*args)
    if workers == 0:
        real = prep._decode_file
        monkeypatch.setattr(prep, "_decode_file", interrupt)
    else:
        real = prep.Progress.update
        monkeypatch.setattr(prep.Progress, "update", interrupt)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run(dataset, cache, workers=workers)
    assert list(cache.iterdir()) == []            # the temp folder was removed

    monkeypatch.undo()
    ds = run(dataset, cache, workers=workers)
    assert not ds.reused and ds.images["train"].shape[0] == 7


def test_leftovers_of_a_killed_run_are_never_loaded(dataset, tmp_path):
    cache = tmp_path / "cache"
    ds = run(dataset, cache)
    name = ds.path.name
    (ds.path / prep.MARKER).unlink()            # as if killed before the marker was written
    dead_tmp = cache / f"{name}.tmp-999999999"   # a temp folder whose process is gone
    dead_tmp.mkdir()
    with pytest.raises(ValueError, match="not a complete prepared dataset"):
        prep.load_prepared(ds.path)

    again = run(dataset, cache)
    assert not again.reused and (again.path / prep.MARKER).is_file()
    assert not dead_tmp.exists()


def test_parallel_workers_give_the_same_cache_as_one_process(dataset, tmp_path):
    serial = run(dataset, tmp_path / "serial", workers=0)
    parallel = run(dataset, tmp_path / "parallel", workers=2)
    for split in ("train", "val"):
        np.testing.assert_array_equal(parallel.images[split], serial.images[split])
        np.testing.assert_array_equal(parallel.labels[split], serial.labels[split])
    np.testing.assert_allclose(parallel.mean, serial.mean, **TOL["float32_relative"])
    np.testing.assert_allclose(parallel.eigvals, serial.eigvals, **TOL["float32_relative"])


def test_cache_is_plain_npy_and_json(dataset, tmp_path):
    ds = run(dataset, tmp_path / "cache")
    for path in ds.path.iterdir():
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    meta = json.loads((ds.path / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["size"] == 32
    assert np.asarray(meta["rgb_eigvecs"]).shape == (3, 3)


@pytest.mark.parametrize("kwargs, match", [({"size": 0}, "size"), ({"size": 2.5}, "size"),
                                           ({"workers": -1}, "workers")])
def test_bad_arguments_are_rejected(dataset, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prep.prepare(dataset, cache_dir=tmp_path / "cache", progress=False, **kwargs)


def test_a_split_is_a_loader_dataset(dataset, tmp_path):
    from minialex.data.augment import Augmenter
    from minialex.data.loader import Loader

    ds = run(dataset, tmp_path / "cache", size=32)
    train = ds.split("train")
    assert len(train) == 7 and len(train.head(3)) == 3
    augmenter = Augmenter.from_prepared(ds, crop=24, generator=np.random.default_rng(0))
    loader = Loader(train, batch_size=4, shuffle=True, generator=np.random.default_rng(1),
                    transform=augmenter.train)
    batches = list(loader)
    assert [x.shape for x, _ in batches] == [(4, 3, 24, 24), (3, 3, 24, 24)]
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == sorted(
        ds.labels["train"].tolist())
    with pytest.raises(ValueError, match="no split 'test'"):
        ds.split("test")


@pytest.mark.parametrize("holes", [[], [0], [3, 9], [9], [2, 5, 6], list(range(10))])
def test_failed_rows_are_filled_from_the_end_and_the_header_says_the_kept_count(tmp_path,
                                                                                  holes):
    target = prep._NpyTarget(tmp_path / "x.npy", 10, (2, 3))
    rows = target.rows()
    rows[:] = np.arange(10, dtype=np.uint8)[:, None, None]
    del rows
    order = target.compact(holes)
    kept = sorted(set(range(10)) - set(holes))
    assert sorted(order.tolist()) == kept
    stayed = [r for r in range(len(kept)) if r not in holes]
    assert order[stayed].tolist() == stayed                        # only failed rows are moved
    stored = np.load(tmp_path / "x.npy")
    assert stored.shape == (len(kept), 2, 3)
    np.testing.assert_array_equal(stored[:, 0, 0], order)          # row r holds sample order[r]
    assert os.path.getsize(tmp_path / "x.npy") == target.offset + stored.nbytes


def test_a_header_for_fewer_rows_fits_the_room_left_for_more(tmp_path):
    big = prep._NpyTarget(tmp_path / "x.npy", 10**7, (1,))      # sparse: nothing is written
    assert big.offset % 64 == 0
    big.compact(list(range(1, 10**7)))                            # 8 digits down to 1
    assert np.load(tmp_path / "x.npy").shape == (1, 1)
    with pytest.raises(ValueError, match="needs .* bytes, 64 asked for"):
        prep.npy_header((10**7, 256, 256, 3), np.uint8, 64)


# -- any file name the OS allows -------------------------------------------------------------------
LATIN1_CLASS = b"\xe9t\xe9 cr\xe8me"          # not UTF-8: Python holds it with surrogate escapes


def odd_names_folder(root):
    """Two classes, one of them a Latin-1 folder name, whose files have spaces and bytes that
    are not UTF-8 in their names, plus one unreadable such file; written through os.fsdecode."""
    rng = np.random.default_rng(0)
    for split, n in ((b"train", 8), (b"val", 4)):
        for k, cls in enumerate((b"chat noir", LATIN1_CLASS)):
            for i in range(n):
                name = (b"photo %d \xff\xfe.png" if i % 2 else b"my  holiday %d.jpg") % i
                x = np.clip(rng.normal(60 + 120 * k, 25, (40, 50, 3)), 0, 255).astype(np.uint8)
                save(pathlib.Path(os.fsdecode(os.path.join(os.fsencode(root), split, cls,
                                                           name))), x)
    broken = os.path.join(os.fsencode(root), b"train", b"chat noir", b"broken \xe9.jpg")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8 truncated")
    return root


def test_non_utf8_and_space_laden_names_are_prepared_like_any_other(tmp_path):
    root = odd_names_folder(tmp_path / "odd")
    with pytest.warns(UserWarning, match=r"skipping unreadable image 'train/chat noir/broken "
                                         r"\\xe9.jpg'"):
        ds = prep.prepare(root, size=32, cache_dir=tmp_path / "cache", workers=0,
                          progress=False)
    assert ds.classes == ("chat noir", "\\xe9t\\xe9 cr\\xe8me")      # printable, in name order
    assert len(ds.labels["train"]) == 16 and len(ds.labels["val"]) == 8
    assert ds.skipped["train"][0][0] == "train/chat noir/broken \\xe9.jpg"
    json.dumps(ds.meta, ensure_ascii=False).encode("utf-8")       # meta.json text encodes
    # every row is its file: the names in *_files.json open the files they came from
    for row, rel in enumerate(ds.files("train")):
        np.testing.assert_array_equal(ds.images["train"][row], expected_row(root, rel, 32))
        assert ds.labels["train"][row] == (os.fsencode(rel).split(b"/")[1] == LATIN1_CLASS)
    assert sum(b"\xff\xfe" in os.fsencode(rel) for rel in ds.files("train")) == 8
    # the fingerprint hashes the names' bytes: found again, and a touched file is seen
    assert run(root, tmp_path / "cache").reused
    touched = os.path.join(os.fsencode(root), b"val", LATIN1_CLASS, b"photo 1 \xff\xfe.png")
    os.utime(touched, ns=(1, 1))
    assert not run(root, tmp_path / "cache").reused


def test_the_example_trains_on_non_utf8_names_and_prints_them_readably(tmp_path):
    """As a user runs it, stdout strictly UTF-8: nothing that names a file may crash it."""
    root = odd_names_folder(tmp_path / "odd")
    result = run_example("--dataset", root, "--model", "mini", "--image-size", "32",
                         "--cache", tmp_path / "cache", "--workers", "0", "--device", "cpu",
                         "--batch-size", "8", "--print-freq", "0", "--epochs", "1",
                         "--warmup", "1", "--out", tmp_path / "run",
                         env={"PYTHONIOENCODING": "utf-8:strict"})
    # two steps cannot promise learning: the run may end at chance (exit 1, its own message)
    assert result.returncode == 0 or (result.returncode == 1 and "the run ended at chance"
                                      in result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert ("2 classes (chat noir, \\xe9t\\xe9 cr\\xe8me); 1 unreadable file(s) skipped "
            "(train/chat noir/broken \\xe9.jpg)") in result.stdout
    assert "epoch 1/1: train loss" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"] == ["chat noir", "\\xe9t\\xe9 cr\\xe8me"]
    assert summary["steps"] == 2
