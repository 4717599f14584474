"""Grey-batch transforms (minialex/data/transforms.py); the rest are in tests/test_data.py."""
import numpy as np

from minialex.data import transforms as T


def test_one_matrix_cache_serves_several_output_sizes():
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    matrices = {}
    for size in (4, 6, 4):
        out = T.resize_bilinear(x, size, matrices)
        assert out.shape == (2, 1, size, size)
        np.testing.assert_array_equal(out, T.resize_bilinear(x, size))
    assert len(matrices) == 2
