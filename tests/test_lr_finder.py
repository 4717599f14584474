"""The learning-rate range test: exponential rates, a suggestion at the falling side, nothing
left behind in the model, optimiser, random streams or loader."""
import errno
import math
import os
import signal

import numpy as np
import pytest

import minialex
from minialex import backend, lr_finder, nn
from minialex.data import ArrayDataset, Loader
from minialex.data import transforms as T
from minialex.lr_finder import figure, format_table, lr_range_test, plot
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


class ProbeSGD(SGD):
    """An optimiser whose step makes the loss a known function of its rate: it ignores the
    gradients and sets the bias of class 0 (the label of every image) to
    ``-(log10(lr) - log10(BEST_LR))^2``, so the loss after a step at ``lr`` is
    ``log(e^s + 9) - s`` with that ``s``, lowest at ``lr = BEST_LR``. ``ctrl_c_at``: send the
    process a Ctrl-C during that step (1-based)."""
    BEST_LR = 1e-3

    def __init__(self, model, ctrl_c_at=None):
        super().__init__(model.parameters(), lr=0.03, momentum=0.0, weight_decay=0.0)
        self.bias, self.applied, self.ctrl_c_at = model[1].bias, [], ctrl_c_at

    def step(self):
        self.applied.append(self.lr)
        if len(self.applied) == self.ctrl_c_at:
            os.kill(os.getpid(), signal.SIGINT)
        self.bias.data[...] = 0
        self.bias.data[0] = self.bias_after(self.lr)

    @classmethod
    def bias_after(cls, lr):
        return -(math.log10(lr) - math.log10(cls.BEST_LR)) ** 2

    @classmethod
    def loss_after(cls, lr):
        s = cls.bias_after(lr)
        return math.log(math.exp(s) + 9) - s


def probe_setup(ctrl_c_at=None):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for p in model.parameters():
        p.data[...] = 0                          # every class scores 0: loss ln 10
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    loader = Loader(ArrayDataset(images, np.zeros(64, np.int64)), 8, transform=T.ToFloat())
    return model, ProbeSGD(model, ctrl_c_at), loader


def test_each_rate_is_paired_with_the_loss_its_update_led_to():
    # rates 1e-5, 10^-4.5, ..., 1: the loss after the update at 1e-3 (the 5th) is the lowest
    model, optimizer, loader = probe_setup()
    result = lr_range_test(model, loader, optimizer, start_lr=1e-5, end_lr=1.0, steps=11,
                           smoothing=1.0, diverge=1e9)        # smoothing 1: the raw losses
    lrs = result["lrs"]
    np.testing.assert_allclose(lrs, 10.0 ** np.arange(-5, 0.25, 0.5), **TOL["float64_exact"])
    assert optimizer.applied == lrs                           # every rate, end_lr included
    np.testing.assert_allclose(result["losses"], [ProbeSGD.loss_after(lr) for lr in lrs],
                               **TOL[np.float32])
    assert result["initial_loss"] == pytest.approx(math.log(10), rel=1e-6)
    assert result["smoothed"] == result["losses"]
    assert result["min_loss_lr"] == pytest.approx(ProbeSGD.BEST_LR)
    assert result["suggested_lr"] == pytest.approx(ProbeSGD.BEST_LR / 10)
    assert not result["stopped_early"]


def test_the_smoothed_loss_is_the_debiased_average_from_the_loss_before_any_update():
    model, optimizer, loader = probe_setup()
    result = lr_range_test(model, loader, optimizer, start_lr=1e-5, end_lr=1.0, steps=11,
                           smoothing=0.3, diverge=1e9)
    average, expected = 0.0, []
    for n, loss in enumerate([result["initial_loss"], *result["losses"]], start=1):
        average = 0.3 * loss + 0.7 * average
        expected.append(average / (1 - 0.7 ** n))
    np.testing.assert_allclose(result["smoothed"], expected[1:], **TOL["float64_exact"])


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C (KeyboardInterrupt), also where the tests run with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_test_at_once_and_leaves_nothing_behind(python_ctrl_c, capsys):
    # a test cut short suggests nothing: Ctrl-C reaches the caller (an example exits 130)
    model, optimizer, loader = probe_setup(ctrl_c_at=3)
    loader_state = loader.state_dict()
    with pytest.raises(KeyboardInterrupt):
        lr_range_test(model, loader, optimizer, steps=50)
    assert len(optimizer.applied) == 3 and capsys.readouterr().out == ""
    assert all(not p.data.any() for p in model.parameters())         # the weights put back
    assert optimizer.lr == 0.03 and loader.state_dict() == loader_state


def test_a_plot_cut_short_leaves_the_picture_before(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    result = {"lrs": [1e-3, 1e-2, 1e-1], "smoothed": [2.3, 2.0, 2.2], "suggested_lr": 1e-3}
    path = tmp_path / "lr.png"
    path.write_bytes(b"the picture before")

    def savefig_then_fail(self, target, **options):
        target.write(b"\x89PNG half a picture")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lr_finder.Figure, "savefig", savefig_then_fail)
    with pytest.raises(OSError, match="No space left"):
        plot(result, path)
    assert path.read_bytes() == b"the picture before" and os.listdir(tmp_path) == ["lr.png"]


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


@pytest.mark.parametrize("smoothed, losses, diverged", [
    # README's folder: the curve lives between 2 and 9.5, the diverged point is at 58.8
    ([9.48, 6.89, 3.86, 2.35, 2.04, 2.30, 58.76], None, 58.76),
    # an infinite loss has no smoothed value: every smoothed point is the curve's
    ([9.48, 6.89, 3.86, 2.35, 2.04, 2.30], [9.5, 6.5, 3.5, 2.2, 2.0, 2.4, np.inf], np.inf)])
def test_the_plot_leaves_the_diverged_point_off_its_axis_and_marks_it(smoothed, losses, diverged):
    pytest.importorskip("matplotlib")
    lrs = list(np.geomspace(1e-5, 1.0, 7))
    result = {"lrs": lrs, "smoothed": smoothed, "losses": losses or smoothed,
              "suggested_lr": 3e-3, "stopped_early": True}
    ax = figure(result).axes[0]
    low, high = ax.get_ylim()
    assert low < 2.04 and 9.48 < high < 10.0        # the curve fills the axis
    curve, mark = ax.get_lines()[0], ax.get_lines()[1]
    np.testing.assert_array_equal(curve.get_ydata(), [9.48, 6.89, 3.86, 2.35, 2.04, 2.30])
    assert mark.get_xdata()[0] == lrs[-1] and mark.get_ydata()[0] == high
    assert f"diverged (loss {diverged:.3g})" in mark.get_label()
    # a test that did not diverge keeps every point on its axis, and marks none
    calm = figure({**result, "smoothed": smoothed[:6], "lrs": lrs[:6], "stopped_early": False})
    assert calm.axes[0].get_ylim()[1] > 9.48 and len(calm.axes[0].get_lines()) == 2  # + line
