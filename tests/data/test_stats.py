"""Mean image and RGB PCA from additive sums (minialex/data/stats.py)."""
import numpy as np

from minialex.data.stats import Sums, rgb_pca

from conftest import TOL


def test_sums_add_up_over_any_split_of_the_images():
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    whole = Sums.of(x)
    parts = Sums.of(x[:2]) + Sums.of(x[2:3]) + Sums.of(x[3:])
    np.testing.assert_array_equal(parts.pixel_sum, whole.pixel_sum)
    np.testing.assert_array_equal(parts.rgb_outer, whole.rgb_outer)
    assert parts.count == whole.count == 7 and whole.n_pixels == 7 * 5 * 4
    np.testing.assert_allclose(whole.mean_image(), x.mean(axis=0), **TOL["grey_levels"])


def test_pca_is_the_eigen_decomposition_of_the_covariance_of_pixels_over_255():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 200, (3, 6, 6, 1))
    x = np.clip(grey + rng.integers(0, 50, (3, 6, 6, 3)), 0, 255).astype(np.uint8)
    eigvals, eigvecs = Sums.of(x).pca()
    cov = np.cov((x / 255.0).reshape(-1, 3).T, bias=True)
    np.testing.assert_allclose(eigvecs @ np.diag(eigvals) @ eigvecs.T, cov, **TOL["float64_exact"])
    assert eigvals[0] > eigvals[1] > eigvals[2] > 0
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(3), **TOL["float64_exact"])
    assert (eigvecs[np.abs(eigvecs).argmax(axis=0), range(3)] > 0).all()   # the sign rule
    rgb = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_array_equal(rgb_pca(rgb.sum(axis=0), rgb.T @ rgb, len(rgb))[0], eigvals)
