"""Runs that stop learning say so: planted dead networks, spikes and NaN, through LossWatch, the
Trainer (stop before the update, last good checkpoint kept and resumable) and recipe.fit."""
import io
import json
import math

import numpy as np
import pytest

from minialex import checkpoint, recipe
from minialex.config import CPU_PRESET
from minialex.watch import LossWatch, TrainingDiverged, TrainingStalled, above_chance, chance_loss

from support import dying_alexnet, learnable_fashion_mnist, make_trainer


# -- LossWatch on its own ----------------------------------------------------------------------
def test_a_loss_at_chance_for_stall_steps_in_a_row_stops_after_the_warmup_only():
    watch = LossWatch(10, warmup=5, stall_steps=4)
    watch.check(0, 9.4)                        # a large init starts above chance
    for step in range(1, 8):                   # 5 warm-up steps are not counted, then 3
        watch.check(step, chance_loss(10) + 0.01)
    with pytest.raises(TrainingStalled) as info:
        watch.check(8, chance_loss(10) - 0.01, "epoch 2, step 1/5")
    message = str(info.value)
    assert "within 2% of ln(10) = 2.303 for 4 steps, up to epoch 2, step 1/5" in message
    # settings by name, as RunConfig spells them: a library user never reads a flag
    assert "try a lower `lr`, a longer `warmup`, or `find_lr`" in message and "--" not in message


def test_a_run_that_starts_at_chance_and_stays_is_slow_not_dead():
    watch = LossWatch(10, stall_steps=3)       # e.g. the paper's N(0, 0.01) init, early on
    for step in range(50):
        watch.check(step, chance_loss(10) - 0.001)
    assert watch.at_chance == 0 and not watch.left_chance


def test_one_step_away_from_chance_resets_the_count():
    watch = LossWatch(10, stall_steps=3)
    for step, loss in enumerate([2.30, 2.30, 1.9, 2.30, 2.30, 1.5, 2.30]):
        watch.check(step, loss)
    assert watch.at_chance == 1


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_a_non_finite_loss_diverges(loss):
    with pytest.raises(TrainingDiverged, match=f"the loss is {loss} at step 3"):
        LossWatch(10).check(2, loss)


def test_a_spike_warns_and_is_recorded_but_does_not_stop():
    watch = LossWatch(10)
    for step in range(6):
        assert watch.check(step, 0.5) is None
    warning = watch.check(6, 9.0)
    assert "loss spike at step 7: 9, more than 10x the recent median 0.5" in warning
    assert watch.spikes == [(6, 9.0, 0.5)]
    tiny = LossWatch(10)
    for step in range(6):
        tiny.check(step, 0.01)
    assert tiny.check(6, 0.5) is None          # 50x the median, but far below chance: noise
    state = watch.state_dict()
    other = LossWatch(10)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.state_dict() == state


def test_above_chance_needs_two_binomial_standard_deviations():
    assert not above_chance(0.12, 500, 10) and above_chance(0.13, 500, 10)
    assert above_chance(0.6, 36, 3) and not above_chance(0.4, 36, 3)


@pytest.mark.parametrize("classes, images", [(2, 100), (3, 36), (10, 500), (1000, 50_000)])
def test_above_chance_starts_just_past_two_standard_deviations_of_a_binomial(classes, images):
    # the bar is p + 2 sqrt(p (1 - p) / n): at 2 classes the (1 - p) term alone moves it from
    # 0.641 to 0.600, so 0.62 of 100 images is above chance only with the term
    p = 1 / classes
    bar = p + 2 * math.sqrt(p * (1 - p) / images)
    assert above_chance(bar + 1e-9, images, classes) and not above_chance(bar - 1e-9, images,
                                                                          classes)
    if classes == 2:            # the bar is 0.6, which the +-1e-9 checks above straddle
        assert not above_chance(0.59, images, classes)
        assert above_chance(0.61, images, classes)


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_the_stall_band_is_relative_to_ln_c(classes):
    # band 2% of ln C: 0.014 wide at 2 classes, 0.138 at 1000; an absolute 0.02 would take
    # ln 2 + 0.015 as chance and ln 1000 + 0.1 as learning
    chance, band = chance_loss(classes), 0.02
    for loss, near in ((chance * (1 + 0.99 * band), True), (chance * (1 - 0.99 * band), True),
                       (chance * (1 + 1.01 * band), False), (chance * (1 - 1.01 * band), False)):
        assert _stalls(classes, loss, band) == near, (loss, near)
    if classes == 2:
        assert not _stalls(classes, chance + 0.015)
    if classes == 1000:
        assert _stalls(classes, chance + 0.1)


def _stalls(classes, loss, band=0.02) -> bool:
    """Whether ``loss`` for two steps, after one away from chance, stops the run as stalled
    (``stall_steps=2``), through LossWatch.check as the trainer calls it."""
    watch = LossWatch(classes, stall_steps=2, band=band)
    watch.check(0, 3 * chance_loss(classes))          # away from chance first
    assert watch.check(1, loss) is None               # one step at chance is not a stall yet
    counted = watch.at_chance
    try:
        watch.check(2, loss)
    except TrainingStalled:
        assert counted == 1
        return True
    assert counted == 0
    return False


# -- planted failures in a real Trainer --------------------------------------------------------
def plant(trainer, at_call, change, until=math.inf):
    """Make the model's forward pass return ``change(logits)`` on its calls number ``at_call``
    to ``until`` (5 training and 1 validation call per epoch of ``make_trainer``)."""
    forward, calls = trainer.model.forward, []

    def planted(x):
        calls.append(1)
        y = forward(x)
        return change(y) if at_call <= len(calls) <= until else y

    trainer.model.forward = planted


def test_a_dead_network_stops_keeps_the_last_good_checkpoint_and_that_resumes(tmp_path):
    # band 1e-4: only the planted exact ln 10 counts (random labels keep the loss near chance)
    trainer = make_trainer(tmp_path, epochs=1, watch=LossWatch(10, stall_steps=3, band=1e-4))
    trainer.fit()                                        # epoch 1: good, saved
    before = (tmp_path / "last.npz").read_bytes()
    plant(trainer, 1, lambda y: y * 0.0)                 # logits all 0: loss exactly ln 10
    trainer.epochs = 3
    with pytest.raises(TrainingStalled) as info:
        trainer.fit()
    message = str(info.value)
    assert "training stalled at chance" in message and "epoch 2, step 3/5" in message
    assert "last.npz keeps the last good state, from the end of epoch 1" in message
    assert (tmp_path / "last.npz").read_bytes() == before
    resumed = make_trainer(tmp_path, epochs=3, watch=LossWatch(10, stall_steps=3, band=1e-4))
    resumed.load_state(checkpoint.load(tmp_path / "last.npz"))
    assert resumed.fit() == "completed" and resumed.epoch == 3


def test_a_spike_is_printed_once_and_the_run_goes_on(tmp_path):
    log = io.StringIO()
    trainer = make_trainer(tmp_path, epochs=2, watch=LossWatch(10), stream=log)
    # epoch 2, step 2, once: class 0 scores 1000 above the rest, so the loss is ~1000 while the
    # gradient (softmax minus one-hot) stays bounded and the weights are not thrown off
    shift = np.where(np.arange(10) == 0, 1000.0, 0.0).astype(np.float32)
    plant(trainer, 8, lambda y: y + shift, until=8)
    assert trainer.fit() == "completed"
    assert log.getvalue().count("warning: loss spike at epoch 2, step 2/5") == 1
    assert len(trainer.warnings) == 1 and "recent median" in trainer.warnings[0]


def test_a_nan_loss_stops_before_the_update_naming_where(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1, watch=LossWatch(10))
    plant(trainer, 2, lambda y: y * float("nan"))
    weights = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="the loss is nan at epoch 1, step 2/5"):
        trainer.fit()
    after = trainer.model.state_dict()
    changed = [k for k, v in after.items() if not np.array_equal(v, weights[k])]
    assert changed                          # step 1 was taken; step 2's update was not
    assert not (tmp_path / "last.npz").exists()


# -- through recipe.fit: the summary says why ---------------------------------------------------
def test_fit_records_why_a_run_stopped_in_the_summary(tmp_path, monkeypatch):
    data_dir = learnable_fashion_mnist(tmp_path / "data", n_train=200, n_test=40)

    monkeypatch.setattr(recipe, "alexnet", dying_alexnet)
    config = CPU_PRESET.replace(val_size=40, batch_size=16, limit_test=40, print_freq=0,
                                warmup=2, stall_steps=5, epochs=1)
    with pytest.raises(TrainingStalled):
        recipe.fit(config, out=str(tmp_path / "run"), data_dir=data_dir, stream=io.StringIO())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"].startswith("stalled at chance: training stalled at chance")
    assert summary["steps"] == 7          # 3 away from chance, then 5 at it: the 8th stops
    assert summary["final_lr"] == pytest.approx(config.lr)
