"""The learning-rate range test: exponential rates, a suggestion at the falling side, nothing
left behind in the model, optimiser, random streams or loader."""
import numpy as np
import pytest

import minialex
from minialex import backend
from minialex.data import Loader
from minialex.data import transforms as T
from minialex.lr_finder import format_table, lr_range_test, plot
from minialex.optim import SGD

from conftest import TOL
from support import tiny_data, tiny_net


def setup():
    minialex.manual_seed(0)
    model = tiny_net()
    optimizer = SGD(model.parameters(), lr=0.03)
    augment = np.random.default_rng(5)
    loader = Loader(tiny_data(64), 8, shuffle=True, generator=np.random.default_rng(1),
                    transform=T.Compose([T.ToFloat(), T.RandomHorizontalFlip(generator=augment)]))
    return model, optimizer, loader


def test_rates_grow_exponentially_and_the_suggestion_is_the_minimum_over_10():
    model, optimizer, loader = setup()
    result = lr_range_test(model, loader, optimizer, start_lr=1e-4, end_lr=1e8, steps=30)
    lrs = np.array(result["lrs"])
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (1e8 / 1e-4) ** (1 / 29), **TOL["float64_exact"])
    assert lrs[0] == pytest.approx(1e-4)
    at_min = int(np.argmin(result["smoothed"]))
    assert result["min_loss_lr"] == lrs[at_min]
    assert result["suggested_lr"] == pytest.approx(lrs[at_min] / 10)
    # rates up to 1e8 diverge: the test stops before reaching them
    assert result["stopped_early"] and len(lrs) < 30
    table = format_table(result)
    assert "<- lowest" in table and "suggested lr:" in table and "diverged" in table


def test_the_model_optimiser_streams_and_loader_are_left_as_they_were():
    model, optimizer, loader = setup()
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    rng, loader_state = backend.get_rng_state(), loader.state_dict()
    lr_range_test(model, loader, optimizer, steps=12)
    assert all(np.array_equal(v, weights[k]) for k, v in model.state_dict().items())
    assert optimizer.lr == 0.03 and all(v is None for v in optimizer.velocity)
    assert backend.get_rng_state() == rng and loader.state_dict() == loader_state


def test_bad_ranges_are_refused():
    model, optimizer, loader = setup()
    with pytest.raises(ValueError, match="expected 0 < start_lr < end_lr"):
        lr_range_test(model, loader, optimizer, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        lr_range_test(model, loader, optimizer, steps=1)


def test_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path):
    result = {"lrs": [1e-3, 1e-2, 1e-1], "smoothed": [2.3, 2.0, 2.2], "suggested_lr": 1e-3}
    path = plot(result, tmp_path / "lr.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert path is None
    else:
        assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
