"""Crops, flips, PCA colour noise, mean subtraction and 10-crop (minialex/data/augment.py),
as in Krizhevsky et al. 2012, Sec. 4.1."""
import numpy as np
import pytest

import minialex
from minialex import backend
from minialex.data import augment as aug
from minialex.data.stats import rgb_pca

from conftest import TOL

S, CROP = aug.IMAGE_SIZE, aug.CROP_SIZE


def images(n=3, size=S, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def pca_of(x):
    """RGB PCA of uint8 images, the way prepare computes it."""
    rgb = x.reshape(-1, 3).astype(np.float64)
    return rgb_pca(rgb.sum(axis=0), rgb.T @ rgb, len(rgb))


def crop_by_slicing(x, top, left, flip, crop=CROP):
    """Reference: one image at a time, plain slicing, then HWC -> CHW."""
    out = np.stack([x[n, t:t + crop, lt:lt + crop] for n, (t, lt) in enumerate(zip(top, left))])
    out = np.where(np.asarray(flip)[:, None, None, None], out[:, :, ::-1], out)
    return out.transpose(0, 3, 1, 2)


def test_random_offsets_stay_inside_and_cover_all_33x33():
    draws = aug.draw_augmentation(np.random.default_rng(1), 100_000, pca_std=None)
    assert draws.top.min() == 0 and draws.left.min() == 0
    assert draws.top.max() == S - CROP and draws.left.max() == S - CROP
    assert len(set(zip(draws.top.tolist(), draws.left.tolist()))) == 33 * 33
    assert abs(draws.flip.mean() - 0.5) < 0.01
    assert draws.alpha is None


def test_crops_and_flips_equal_direct_slicing():
    x = images()
    draws = aug.Draws(top=np.array([0, 32, 7]), left=np.array([32, 0, 19]),
                      flip=np.array([False, True, True]))
    out = aug.apply_augmentation(x, draws)
    assert out.shape == (3, 3, CROP, CROP) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, crop_by_slicing(x, draws.top, draws.left, draws.flip))


def test_a_flip_is_an_exact_mirror():
    x = images()
    rng = np.random.default_rng(2)
    top, left = rng.integers(0, 33, 3), rng.integers(0, 33, 3)
    plain = aug.apply_augmentation(x, aug.Draws(top, left, np.zeros(3, bool)))
    mirrored = aug.apply_augmentation(x, aug.Draws(top, left, np.ones(3, bool)))
    np.testing.assert_array_equal(mirrored, plain[..., ::-1])


def test_mean_image_is_cropped_and_flipped_with_each_image():
    x = images(seed=3)
    mean = np.random.default_rng(4).uniform(0, 255, (S, S, 3)).astype(np.float32)
    draws = aug.Draws(top=np.array([5, 30, 32]), left=np.array([31, 2, 0]),
                      flip=np.array([True, False, True]))
    out = aug.apply_augmentation(x, draws, mean=mean)
    centred = x.astype(np.float64) - mean          # the paper: subtract, then crop
    expected = crop_by_slicing(centred, draws.top, draws.left, draws.flip)
    np.testing.assert_allclose(out, expected, **TOL[np.float32])
    per_channel = aug.apply_augmentation(x, draws, mean=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(per_channel, crop_by_slicing(x - np.array([1.0, 2.0, 3.0]),
                                                            draws.top, draws.left, draws.flip),
                               **TOL[np.float32])


def test_pca_noise_has_the_papers_spread_and_shift():
    rng = np.random.default_rng(5)
    alphas = aug.draw_augmentation(rng, 100_000).alpha
    assert alphas.shape == (100_000, 3)
    assert abs(alphas.std() - aug.PCA_STD) < 0.002 and abs(alphas.mean()) < 0.002

    # Correlated colours, so the covariance has one dominant direction.
    base = rng.integers(0, 200, (4, S, S, 1))
    x = np.clip(base + rng.integers(0, 40, (4, S, S, 3)), 0, 255).astype(np.uint8)
    eigvals, eigvecs = pca_of(x)
    draws = aug.draw_augmentation(np.random.default_rng(6), 4)
    noisy = aug.apply_augmentation(x, draws, eigvals=eigvals, eigvecs=eigvecs)
    clean = aug.apply_augmentation(x, aug.Draws(draws.top, draws.left, draws.flip))
    shift = (noisy - clean).astype(np.float64)
    expected = 255 * (eigvecs @ (draws.alpha.astype(np.float64) * eigvals).T).T   # (N, 3)
    np.testing.assert_allclose(shift, np.broadcast_to(expected[:, :, None, None], shift.shape),
                               **TOL["grey_levels"])
    assert np.abs(eigvecs[:, 0] - 1 / np.sqrt(3)).max() < 0.05   # grey axis dominates


def test_same_seed_same_crops_flips_and_colour_noise():
    x = images(n=4)
    eigvals, eigvecs = pca_of(x)
    a, b, c = (aug.Augmenter(x.mean(axis=0), eigvals, eigvecs,
                             generator=np.random.default_rng(seed)).train(x) for seed in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    augmenter = aug.Augmenter(x.mean(axis=0), eigvals, eigvecs)   # draws from minialex's stream
    minialex.manual_seed(3)
    first, draws = augmenter.train(x), augmenter.last_draws
    minialex.manual_seed(3)
    np.testing.assert_array_equal(augmenter.train(x), first)
    np.testing.assert_array_equal(augmenter.apply(x, draws), first)


def test_ten_crop_is_corners_centre_and_their_mirrors():
    x = images(n=2, seed=9)
    mean = x.mean(axis=0)
    crops = aug.ten_crop(x, mean=mean)
    assert crops.shape == (10, 2, 3, CROP, CROP) and crops.flags.c_contiguous
    centred = x.astype(np.float64) - mean
    far, mid = S - CROP, (S - CROP) // 2
    places = {"top-left": (0, 0), "top-right": (0, far), "bottom-left": (far, 0),
              "bottom-right": (far, far), "centre": (mid, mid)}
    for k, name in enumerate(aug.TEN_CROPS):
        t, lt = places[name.replace(" mirrored", "")]
        direct = centred[:, t:t + CROP, lt:lt + CROP].transpose(0, 3, 1, 2)
        if name.endswith("mirrored"):
            direct = direct[..., ::-1]
        np.testing.assert_allclose(crops[k], direct, **TOL[np.float32], err_msg=name)
    rgb = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(aug.ten_crop(x, mean=rgb, scale=0.5),
                               (aug.ten_crop(x) - rgb[:, None, None]) * 0.5, **TOL[np.float32])
    for as_given in (list, tuple):     # a per-channel mean given as a plain sequence
        np.testing.assert_array_equal(aug.ten_crop(x, mean=as_given(rgb)),
                                      aug.ten_crop(x, mean=rgb))
    np.testing.assert_array_equal(aug.Augmenter(mean).ten_crop(x), crops)
    np.testing.assert_array_equal(aug.Augmenter(mean).eval(x), crops[4])


def test_works_on_a_read_only_memory_map(tmp_path):
    np.save(tmp_path / "x.npy", images(n=4))
    stored = np.load(tmp_path / "x.npy", mmap_mode="r")
    draws = aug.draw_augmentation(np.random.default_rng(11), 2, pca_std=None)
    out = aug.apply_augmentation(stored[[3, 1]], draws)
    np.testing.assert_array_equal(out, crop_by_slicing(stored[[3, 1]], draws.top, draws.left,
                                                       draws.flip))


@pytest.mark.parametrize("make, match", [
    (lambda x: (x[0], aug.center_draws(1)), r"expected \(N, H, W, C\)"),
    (lambda x: (x, aug.center_draws(2)), "2 draws for a batch of 3"),
    (lambda x: (x, aug.Draws(np.array([0, 0, 33]), np.zeros(3, int), np.zeros(3, bool))),
     "does not fit"),
    (lambda x: (x, aug.draw_augmentation(np.random.default_rng(0), 3)), "eigvals/eigvecs"),
])
def test_bad_inputs_are_rejected_at_the_boundary(make, match):
    x, draws = make(images())
    with pytest.raises(ValueError, match=match):
        aug.apply_augmentation(x, draws)


def test_gpu_augmentation_matches_cpu_given_the_same_draws(gpu):
    cupy = backend.require_cupy()
    x = images(n=5, seed=12)
    mean = x.mean(axis=0).astype(np.float32)
    eigvals, eigvecs = pca_of(x)
    draws = aug.draw_augmentation(np.random.default_rng(13), 5)
    cpu = aug.apply_augmentation(x, draws, mean=mean, eigvals=eigvals, eigvecs=eigvecs)
    dev = aug.apply_augmentation(cupy.asarray(x), draws, mean=cupy.asarray(mean),
                                 eigvals=eigvals, eigvecs=eigvecs)
    assert backend.is_gpu_array(dev) and dev.flags.c_contiguous
    np.testing.assert_allclose(dev.get(), cpu, **TOL[np.float32])
    np.testing.assert_allclose(aug.ten_crop(cupy.asarray(x), mean=mean).get(),
                               aug.ten_crop(x, mean=mean), **TOL[np.float32])
