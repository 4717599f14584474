"""IDX files, Fashion-MNIST discovery and splits, batch transforms, the prefetching loader."""
import gzip
import json
import os
import threading

import numpy as np
import pytest

from minialex.data import ArrayDataset, Loader, fashion_mnist, read_idx, write_idx
from minialex.data import transforms as T

from conftest import TOL


# -- IDX ---------------------------------------------------------------------------------------
def idx_bytes(array, code):
    """IDX encoding written out by hand from the format description (not via write_idx)."""
    header = bytes([0, 0, code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)])
def test_idx_reads_hand_written_files_gzip_or_raw(tmp_path, compress, dtype, code):
    array = (np.arange(2 * 3 * 5) * 7 % 251 - (0 if dtype == np.uint8 else 100)).astype(dtype)
    array = array.reshape(2, 3, 5)
    body = idx_bytes(array, code)
    path = tmp_path / "x-idx3"                      # no .gz suffix: told from the content
    path.write_bytes(gzip.compress(body) if compress else body)
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_idx_write_read_round_trip(tmp_path, name):
    labels = np.random.default_rng(0).integers(0, 10, 17).astype(np.uint8)
    write_idx(tmp_path / name, labels)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else
                                                  b"\x00\x00")
    np.testing.assert_array_equal(read_idx(tmp_path / name), labels)


def test_idx_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*bad magic"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_size_mismatch_names_the_file(tmp_path, compress):
    body = idx_bytes(np.zeros((4, 3, 3), np.uint8), 0x08)[:-5]      # five bytes short
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(body) if compress else body)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: IDX size mismatch"):
        read_idx(path)


def test_idx_truncated_gzip_names_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    data = gzip.compress(idx_bytes(noise, 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.gz: corrupt or truncated gzip"):
        read_idx(path)


# -- Fashion-MNIST discovery and splits --------------------------------------------------------
def fake_fashion_mnist(directory, n_train=60, n_test=20, gz=True, seed=0):
    """The four IDX files with random content, as the real ones are named."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fashion_mnist.FILES[split]
        write_idx(os.path.join(directory, images + suffix),
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(os.path.join(directory, labels + suffix),
                  (np.arange(n) % 10).astype(np.uint8))
    return directory


@pytest.fixture
def no_system_data(monkeypatch):
    """Make the search ignore /usr/share/datasets, so tests see only their own files."""
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIRS", ())


def test_missing_data_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIRS", (str(tmp_path / "system"),))
    (tmp_path / "mine").mkdir()
    write_idx(tmp_path / "mine" / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist.load_fashion_mnist(tmp_path / "mine")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "mine") in message and str(tmp_path / "system") in message
    assert "missing train-labels-idx1-ubyte" in message and "no such directory" in message
    assert "apt-get install dataset-fashion-mnist" in message and "`data_dir`" in message


@pytest.mark.parametrize("gz", [True, False])
def test_split_is_a_seeded_disjoint_hold_out(tmp_path, no_system_data, gz):
    root = fake_fashion_mnist(tmp_path / "fashion-mnist", gz=gz)   # found under data_dir/...
    data = fashion_mnist.load_fashion_mnist(tmp_path, val_size=15, split_seed=3)
    assert data.root == str(root)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == np.uint8
    all_images = fashion_mnist.read_idx(os.path.join(root, "train-images-idx3-ubyte"
                                                     + (".gz" if gz else "")))
    rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}   # noqa: E731
    assert rows(data.train.images).isdisjoint(rows(data.val.images))
    assert rows(data.train.images) | rows(data.val.images) == rows(all_images)
    again = fashion_mnist.load_fashion_mnist(tmp_path, val_size=15, split_seed=3)
    np.testing.assert_array_equal(again.val.labels, data.val.labels)
    other = fashion_mnist.load_fashion_mnist(tmp_path, val_size=15, split_seed=4)
    assert not np.array_equal(other.val.images, data.val.images)
    pixels = data.train.images / 255.0
    np.testing.assert_allclose([data.mean, data.std], [pixels.mean(), pixels.std()],
                               **TOL["float64_exact"])


def test_label_count_mismatch_names_both_files(tmp_path, no_system_data):
    fake_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="t10k-labels.*19 labels for 20 images"):
        fashion_mnist.load_fashion_mnist(tmp_path, val_size=5)


def test_val_size_is_checked(tmp_path, no_system_data):
    fake_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"val_size: expected an int in \[0, 60\)"):
        fashion_mnist.load_fashion_mnist(tmp_path, val_size=60)


# -- transforms --------------------------------------------------------------------------------
def bilinear_reference(img, OH, OW):
    """Direct bilinear sampling with half-pixel centres, one output pixel at a time."""
    H, W = img.shape
    out = np.zeros((OH, OW))
    for i in range(OH):
        for j in range(OW):
            y = min(max((i + 0.5) * H / OH - 0.5, 0.0), H - 1)
            x = min(max((j + 0.5) * W / OW - 0.5, 0.0), W - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * ((1 - dx) * img[y0, x0] + dx * img[y0, x1])
                         + dy * ((1 - dx) * img[y1, x0] + dx * img[y1, x1]))
    return out


@pytest.mark.parametrize("size", [(11, 7), (3, 2), (5, 5), (1, 9)])
def test_resize_matches_direct_bilinear(size):
    x = np.random.default_rng(0).random((2, 3, 5, 4))
    y = T.Resize(size)(x)
    assert y.shape == (2, 3) + size and y.dtype == np.float64
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(y[n, c], bilinear_reference(x[n, c], *size),
                                       **TOL[np.float64])


def test_resize_rows_sum_to_one_and_same_size_is_identity():
    A = T.bilinear_matrix(28, 224)
    np.testing.assert_allclose(A.sum(axis=1), 1.0, **TOL[np.float64])
    x = np.ones((1, 1, 6, 6), np.float32)
    assert T.resize_bilinear(x, 6) is x


def test_resize_uint8_becomes_float32():
    x = np.full((1, 1, 2, 2), 200, np.uint8)
    y = T.Resize(4)(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 200.0, **TOL[np.float32])


def test_to_float_and_normalize():
    x = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1, 1)
    y = T.Compose([T.ToFloat(), T.Normalize([0.0, 0.2, 0.5], [1.0, 0.5, 0.25])])(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.ravel(), [0.0, 0.0, 2.0], **TOL[np.float32])


def test_flip_is_an_exact_mirror_of_the_chosen_images():
    x = np.random.default_rng(1).random((16, 2, 3, 5))
    flip = T.RandomHorizontalFlip(0.5, np.random.default_rng(0))
    y = flip(x)
    chosen = flip.last_flipped
    assert 0 < chosen.sum() < 16
    np.testing.assert_array_equal(y[chosen], x[chosen][..., ::-1])
    np.testing.assert_array_equal(y[~chosen], x[~chosen])


def test_random_crop_offsets_in_bounds_and_equal_to_slicing():
    x = np.random.default_rng(2).random((50, 2, 6, 7))
    crop = T.RandomCrop(None, padding=2, generator=np.random.default_rng(0))
    y = crop(x)
    top, left = crop.last_offsets
    assert y.shape == x.shape
    assert top.min() >= 0 and top.max() <= 4 and left.min() >= 0 and left.max() <= 4
    assert {0, 4} <= set(top.tolist())                       # both extremes get drawn
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for n in range(50):
        np.testing.assert_array_equal(y[n], padded[n, :, top[n]:top[n] + 6,
                                                   left[n]:left[n] + 7])


def test_random_crop_smaller_window_without_padding():
    x = np.arange(2 * 1 * 5 * 5).reshape(2, 1, 5, 5)
    crop = T.RandomCrop((3, 2), generator=np.random.default_rng(0))
    y = crop(x)
    top, left = crop.last_offsets
    assert y.shape == (2, 1, 3, 2) and top.max() <= 2 and left.max() <= 3
    np.testing.assert_array_equal(y[1, 0], x[1, 0, top[1]:top[1] + 3, left[1]:left[1] + 2])
    with pytest.raises(ValueError, match="RandomCrop: a 6x6 crop does not fit a 5x5 image"):
        T.RandomCrop(6)(x)


def test_augmentation_is_reproducible_with_the_same_generator():
    x = np.random.default_rng(3).integers(0, 256, (8, 1, 10, 10), dtype=np.uint8)

    def run(seed):
        train = T.GreyAugmenter(16, 0.3, 0.4, crop_padding=2, flip=True,
                                generator=np.random.default_rng(seed)).train
        return np.concatenate([train(x), train(x)])

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_eval_pipeline_normalises_then_resizes():
    x = np.random.default_rng(4).integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    evaluate = T.GreyAugmenter(8, 0.25, 0.5).eval
    expected = T.resize_bilinear((x / 255.0 - 0.25) / 0.5, 8)
    np.testing.assert_allclose(evaluate(x), expected, **TOL["float32_unit"])


# -- loader ------------------------------------------------------------------------------------
def numbered(n):
    return ArrayDataset(np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1), np.arange(n))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_covers_every_sample_once_per_epoch_shuffled(prefetch):
    loader = Loader(numbered(23), 5, shuffle=True, generator=np.random.default_rng(0),
                    prefetch=prefetch)
    assert len(loader) == 5
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        for x, y in batches:
            np.testing.assert_array_equal(x.ravel(), y)          # images travel with labels
        order = np.concatenate([y for _, y in batches])
        assert sorted(order.tolist()) == list(range(23))
        epochs.append(order)
    assert not np.array_equal(epochs[0], np.arange(23))
    assert not np.array_equal(epochs[0], epochs[1])
    again = Loader(numbered(23), 5, shuffle=True, generator=np.random.default_rng(0),
                   prefetch=2 - prefetch)
    np.testing.assert_array_equal(np.concatenate([y for _, y in again]), epochs[0])


def test_loader_in_order_drop_last_and_start():
    loader = Loader(numbered(10), 4, drop_last=True)
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    shuffled = Loader(numbered(10), 3, shuffle=True, generator=np.random.default_rng(7))
    state = shuffled.generator.bit_generator.state
    full = [y.tolist() for _, y in shuffled.epoch()]
    shuffled.generator.bit_generator.state = state
    assert [y.tolist() for _, y in shuffled.epoch(start=2)] == full[2:]


def random_loader(kind, prefetch, shuffle_seed=0, augment_seed=1):
    """A shuffling loader with a random transform: the grey pipeline or the RGB Augmenter."""
    rng = np.random.default_rng(9)
    augment = np.random.default_rng(augment_seed)
    if kind == "grey":
        images = rng.integers(0, 256, (23, 1, 6, 6), dtype=np.uint8)
        transform = T.GreyAugmenter(6, 0.5, 0.25, crop_padding=2, flip=True,
                                    generator=augment).train
    else:
        from minialex.data.augment import Augmenter
        images = rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
        transform = Augmenter(images.mean(axis=0), np.array([0.1, 0.01, 0.001]), np.eye(3),
                              crop=5, generator=augment).train    # the Augmenter keeps the state
    return Loader(ArrayDataset(images, np.arange(23)), 5, shuffle=True, transform=transform,
                  generator=np.random.default_rng(shuffle_seed), prefetch=prefetch)


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for (x, y), (x0, y0) in zip(got, want):
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("kind", ["grey", "rgb"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_state_resumes_an_epoch_mid_way_exactly(kind, prefetch):
    reference = random_loader(kind, prefetch)
    epochs = [list(reference.epoch()) for _ in range(3)]

    interrupted = random_loader(kind, prefetch)
    list(interrupted.epoch())
    batches = interrupted.epoch()
    seen = [next(batches), next(batches)]
    state = json.loads(json.dumps(interrupted.state_dict()))       # JSON-able
    batches.close()                                                # Ctrl-C: still in progress
    assert_same_batches(seen, epochs[1][:2])
    assert json.loads(json.dumps(interrupted.state_dict())) == state

    resumed = random_loader(kind, 2 - prefetch, shuffle_seed=5, augment_seed=6)   # other seeds
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed.epoch(start=2)), epochs[1][2:])
    assert_same_batches(list(resumed.epoch()), epochs[2])

    interrupted.load_state_dict(interrupted.state_dict())          # continuing in-process
    assert_same_batches(list(interrupted.epoch(start=2)), epochs[1][2:])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_state_after_a_complete_epoch_gives_the_next_one(prefetch):
    reference = random_loader("grey", prefetch)
    epochs = [list(reference.epoch()) for _ in range(2)]
    done = random_loader("grey", prefetch)
    list(done.epoch())
    resumed = random_loader("grey", prefetch, shuffle_seed=5, augment_seed=6)
    resumed.load_state_dict(done.state_dict())
    assert_same_batches(list(resumed.epoch()), epochs[1])


def test_loader_state_without_randomness_and_mismatches():
    plain = Loader(numbered(4), 2, transform=T.ToFloat())
    assert plain.state_dict() == {"shuffle": None, "transform": None}
    plain.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="has a shuffle state but this loader's generator is "
                                         "None"):
        plain.load_state_dict(random_loader("grey", 0).state_dict())
    with pytest.raises(ValueError, match="has no transform state"):
        shuffle_only = {"shuffle": random_loader("grey", 0).state_dict()["shuffle"],
                        "transform": None}
        random_loader("grey", 0).load_state_dict(shuffle_only)


def test_loader_applies_transform_in_the_calling_thread():
    seen = []

    def transform(x):
        seen.append(threading.current_thread() is threading.main_thread())
        return x * 2

    loader = Loader(numbered(6), 4, transform=transform)
    assert [x.ravel().tolist() for x, _ in loader] == [[0, 2, 4, 6], [8, 10]]
    assert seen == [True, True]


def test_loader_reraises_dataset_errors_and_stops_its_thread():
    class Broken(ArrayDataset):
        def get_batch(self, indices):
            if indices[0] >= 4:
                raise OSError("disk went away")
            return super().get_batch(indices)

    data = numbered(12)
    loader = Loader(Broken(data.images, data.labels), 4)
    before = threading.active_count()
    with pytest.raises(OSError, match="disk went away"):
        list(loader)
    it = Loader(numbered(100), 1, prefetch=3).epoch()
    next(it)
    it.close()                                              # leaving early ends the thread
    assert threading.active_count() == before


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Loader(numbered(3), 0)
    with pytest.raises(ValueError, match="shuffle=True needs a numpy.random.Generator"):
        Loader(numbered(3), 2, shuffle=True)
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        ArrayDataset(np.zeros((3, 1, 2, 2)), np.zeros(4))


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    from minialex.data import fashion_mnist
    with pytest.raises(FileNotFoundError, match="data_dir: no such directory"):
        fashion_mnist.find_files(tmp_path / "typo")
