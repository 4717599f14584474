"""The paper's SGD update, its saved state, and the learning-rate schedules."""
import io
import math

import numpy as np
import pytest

import minialex
from minialex import Module, Parameter, checkpoint
from minialex.cpu import threads, update
from minialex.data import Loader
from minialex.data import transforms as T
from minialex.extensions import Extension, LearningRate
from minialex.optim import MOMENTUM, SGD, WEIGHT_DECAY, LinearWarmup, ReduceLROnPlateau, StepLR
from minialex.train import Trainer

from conftest import TOL
from support import tiny_data, tiny_net

W0 = np.array([1.0, -2.0])
G1, G2 = np.array([0.5, 0.25]), np.array([-1.0, 0.5])
M, WD = MOMENTUM, 0.01   # the paper's momentum; weight decay 20x the paper's, to show its term


def two_steps(lr1, lr2, **kwargs):
    w = Parameter(W0.copy())
    opt = SGD([w], lr=lr1, momentum=M, weight_decay=WD, **kwargs)
    w.grad = G1
    opt.step()
    opt.lr = lr2
    w.grad = G2
    opt.step()
    return w, opt


def test_two_steps_match_the_hand_computed_update():
    w, opt = two_steps(0.1, 0.05)
    # step 1, lr 0.1:  v1 = -WD*0.1*w0 - 0.1*g1 = [-0.001 - 0.05, 0.002 - 0.025]
    v1 = np.array([-0.051, -0.023])
    w1 = np.array([0.949, -2.023])
    # step 2, lr 0.05: v2 = 0.9*v1 - WD*0.05*w1 - 0.05*g2
    #                     = [-0.0459 - 0.0004745 + 0.05, -0.0207 + 0.0010115 - 0.025]
    v2 = np.array([0.0036255, -0.0446885])
    w2 = np.array([0.9526255, -2.0676885])
    np.testing.assert_allclose(W0 + v1, w1, **TOL["float64_exact"])    # the sums above
    np.testing.assert_allclose(w1 + v2, w2, **TOL["float64_exact"])
    np.testing.assert_allclose(opt.velocity[0], v2, **TOL["float64_exact"])
    np.testing.assert_allclose(w.data, w2, **TOL["float64_exact"])


def pytorch_form(lr1, lr2):
    """torch.optim.SGD's formulation: u <- m u + (g + wd w); w <- w - lr u."""
    w, u = W0.copy(), np.zeros(2)
    for lr, g in ((lr1, G1), (lr2, G2)):
        u = M * u + (g + WD * w)
        w = w - lr * u
    return w


def test_equals_pytorchs_formulation_only_while_lr_is_constant():
    np.testing.assert_allclose(two_steps(0.1, 0.1)[0].data, pytorch_form(0.1, 0.1),
                               **TOL["float64_exact"])
    changed = two_steps(0.1, 0.05)[0].data
    assert (np.abs(changed - pytorch_form(0.1, 0.05)) > 1e-2).all()    # apart by 0.023, 0.010
    np.testing.assert_allclose(pytorch_form(0.1, 0.05), [0.9755755, -2.0573385],
                               **TOL["float64_exact"])


def test_update_is_in_place_keeps_dtype_and_skips_params_without_grad():
    a = Parameter(np.ones((2, 3), dtype=np.float32))
    b = Parameter(np.ones(4, dtype=np.float32))
    data = a.data
    opt = SGD([a, b], lr=0.5)
    a.grad = np.full((2, 3), 2.0, dtype=np.float32)
    opt.step()
    assert a.data is data and a.dtype == np.float32
    np.testing.assert_allclose(a.data, 1 - 0.5 * (2 + WEIGHT_DECAY), **TOL["float32_unit"])
    assert np.array_equal(b.data, np.ones(4)) and opt.velocity[1] is None
    opt.zero_grad()
    assert a.grad is None


class Tiny(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.ones(3))
        self.bias = Parameter(np.zeros(1))


@pytest.mark.parametrize("how", ["list", "generator", "named"])
def test_params_as_list_generator_or_named_pairs(how):
    model = Tiny()
    params = {"list": model.parameters(), "generator": iter(model.parameters()),
              "named": model.named_parameters()}[how]
    opt = SGD(params, lr=0.1)
    assert opt.params[0] is model.weight and opt.params[1] is model.bias
    if how == "named":
        assert opt.names == ["weight", "bias"]


def save_and_load(state):
    """Through np.savez with allow_pickle=False: proves the state is plain data."""
    flat = {k: v for k, v in state.items() if k != "velocity"}
    flat.update({f"velocity/{k}": v for k, v in state["velocity"].items()})
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files if not k.startswith("velocity/")}
        loaded["velocity"] = {k.split("/")[1]: f[k] for k in f.files if k.startswith("velocity/")}
    return loaded


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((4, 2, 3)).astype(np.float32)
    start = rng.standard_normal((2, 3)).astype(np.float32)

    w = Parameter(start.copy())
    unused = Parameter(np.zeros(2, dtype=np.float32))
    opt = SGD([w, unused], lr=0.1)
    for g in grads[:2]:
        w.grad = g
        opt.step()
    opt.lr = 0.01
    state = opt.state_dict()
    assert set(state["velocity"]) == {"0"}            # the untouched parameter has no entry
    saved_w = w.data.copy()
    for g in grads[2:]:
        w.grad = g
        opt.step()
    assert not np.array_equal(state["velocity"]["0"], opt.velocity[0])  # state was a copy

    w2 = Parameter(saved_w)
    opt2 = SGD([w2, Parameter(np.zeros(2, dtype=np.float32))], lr=1.0, momentum=0.5,
               weight_decay=0.0)
    opt2.load_state_dict(save_and_load(state))
    assert (opt2.lr, opt2.momentum, opt2.weight_decay) == (0.01, 0.9, 5e-4)
    for g in grads[2:]:
        w2.grad = g
        opt2.step()
    assert np.array_equal(w2.data, w.data)
    assert opt2.velocity[1] is None


def test_load_state_dict_refuses_mismatches_cleanly():
    opt = SGD([Parameter(np.zeros((2, 3))), Parameter(np.zeros(4))], lr=0.1)
    good = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "num_params": 2, "velocity": {}}
    with pytest.raises(ValueError, match=r"velocity 1 \(1\) has shape \(3,\), the parameter "
                                         r"\(4,\)"):
        opt.load_state_dict({**good, "velocity": {"1": np.zeros(3)}})
    with pytest.raises(ValueError, match="missing key.*velocity"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "velocity"})
    with pytest.raises(ValueError, match="3 parameters"):
        opt.load_state_dict({**good, "num_params": 3})
    with pytest.raises(ValueError, match="index '7'"):
        opt.load_state_dict({**good, "velocity": {"7": np.zeros(4)}})
    assert opt.velocity == [None, None]                  # nothing half-loaded


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(lr=0.1, momentum=1.0), "momentum"), (dict(lr=0.1, momentum=-0.1), "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"SGD: {name} must be"):
        SGD([Parameter(np.zeros(1))], **kwargs)


def test_lr_setter_validates_and_empty_or_duplicate_params_are_refused():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = 0
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="item 0"):
        SGD([np.zeros(1)], lr=0.1)


def test_plateau_divides_by_ten_at_most_three_times_then_is_exhausted():
    opt = SGD([Parameter(np.zeros(1))], lr=0.01)
    plateau = ReduceLROnPlateau(opt)
    errors = [0.50, 0.40, 0.40, 0.30, 0.30, 0.29, 0.29, 0.20, 0.20, 0.20]
    lrs, reduced = [], []
    for e in errors:
        reduced.append(plateau.step(e))
        lrs.append(opt.lr)
        assert plateau.exhausted == (len(lrs) >= 9)
    assert reduced == [False, False, True, False, True, False, True, False, False, False]
    np.testing.assert_allclose(lrs, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5])
    assert plateau.num_reductions == 3


def test_plateau_patience_relative_threshold_and_max_mode():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    plateau = ReduceLROnPlateau(opt, patience=1, threshold=1e-3)
    # 0.4996 is within 0.1% of 0.5: not an improvement
    assert [plateau.step(e) for e in [0.5, 0.4996, 0.4996, 0.3]] == [False, False, True, False]
    opt.lr = 1.0
    accuracy = ReduceLROnPlateau(opt, mode="max")
    assert [accuracy.step(a) for a in [0.5, 0.6, 0.6]] == [False, False, True]
    assert opt.lr == pytest.approx(0.1)


def test_plateau_state_round_trip_continues_identically():
    opt_a, opt_b = (SGD([Parameter(np.zeros(1))], lr=0.01) for _ in range(2))
    a = ReduceLROnPlateau(opt_a, patience=1)
    for e in [0.5, 0.5, 0.5, 0.4]:
        a.step(e)
    b = ReduceLROnPlateau(opt_b)
    b.load_state_dict({k: np.asarray(v) for k, v in a.state_dict().items()})
    opt_b.lr = opt_a.lr
    assert b.state_dict() == a.state_dict()
    for e in [0.4, 0.4, 0.4, 0.4, 0.4, 0.4]:
        assert a.step(e) == b.step(e)
    assert opt_a.lr == opt_b.lr and a.num_reductions == b.num_reductions == 3
    assert a.exhausted and b.exhausted


@pytest.mark.parametrize("kwargs, name", [
    (dict(factor=1.0), "factor"), (dict(patience=-1), "patience"),
    (dict(threshold=-0.1), "threshold"), (dict(max_reductions=1.5), "max_reductions"),
    (dict(mode="avg"), "mode"),
])
def test_plateau_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ReduceLROnPlateau(SGD([Parameter(np.zeros(1))], lr=0.1), **kwargs)


def test_step_lr_and_its_state():
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    schedule = StepLR(opt, step_size=2)
    lrs = []
    for _ in range(3):
        schedule.step(0.5)   # a metric is accepted and ignored
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.1, 0.01, 0.01])
    resumed = StepLR(opt, step_size=5, gamma=0.5)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.step() and opt.lr == pytest.approx(1e-3)
    assert not resumed.exhausted
    with pytest.raises(ValueError, match="step_size"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        StepLR(opt, step_size=1, gamma=0.0)


@pytest.mark.parametrize("make", [lambda opt: ReduceLROnPlateau(opt),
                                  lambda opt: StepLR(opt, step_size=2),
                                  lambda opt: LinearWarmup(opt, steps=3)],
                         ids=["ReduceLROnPlateau", "StepLR", "LinearWarmup"])
def test_a_schedule_refuses_a_state_without_a_key_and_changes_nothing(make):
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    schedule = make(opt)
    state = schedule.state_dict()
    dropped = sorted(state)[-1]
    before = dict(vars(schedule))
    name = type(schedule).__name__
    with pytest.raises(ValueError, match=rf"^{name}.load_state_dict: missing key\(s\) {dropped}$"):
        schedule.load_state_dict({k: v for k, v in state.items() if k != dropped})
    assert vars(schedule) == before
    schedule.load_state_dict(state)                   # the whole state still loads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_parameters_update_chunk_by_chunk_with_the_bits_of_the_whole_array_update(
        monkeypatch, dtype):
    # The CPU update runs over chunks of the flattened arrays in threads (four here, whatever
    # the machine has); each element must meet the operations of the formula in the docstring's
    # order: v <- m v - lr (wd w + g), w <- w + v, as whole arrays in the same dtype.
    monkeypatch.setattr(threads, "cpu_threads", lambda: 4)
    monkeypatch.setattr(threads, "INLINE_WORK", 0)  # pieces of chunks in threads at any size
    rng = np.random.default_rng(0)
    shape = (3, update.STEP_CHUNK + 7)  # chunk edges inside rows, a short last chunk
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    w = Parameter(w0.copy())
    opt = SGD([w], lr=0.01, momentum=M, weight_decay=WEIGHT_DECAY)
    expected, v = w0.copy(), np.zeros_like(w0)
    for step, g in enumerate(grads):
        opt.lr = 0.01 / (1 + step)
        w.grad = g
        opt.step()
        d = (WEIGHT_DECAY * expected + g) * opt.lr
        v = v * M - d
        expected = expected + v
        np.testing.assert_array_equal(w.data, expected)
        np.testing.assert_array_equal(opt.velocity[0], v)
    assert not np.array_equal(w.data, w0)


def test_a_non_contiguous_gradient_or_weight_still_updates_every_element():
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((300, 500)).astype(np.float32)
    g = rng.standard_normal((500, 300)).astype(np.float32).T    # a transposed view
    w = Parameter(w0.copy())
    opt = SGD([w], lr=0.1, momentum=M, weight_decay=WD)
    w.grad = g
    opt.step()
    np.testing.assert_allclose(w.data, w0 - 0.1 * (WD * w0 + g), rtol=1e-6, atol=1e-7)
    strided = Parameter(np.zeros((4, 6), dtype=np.float32)[:, ::2])   # non-contiguous data
    opt = SGD([strided], lr=0.5, momentum=M, weight_decay=0.0)
    strided.grad = np.ones((4, 3), dtype=np.float32)
    opt.step()
    np.testing.assert_array_equal(strided.data, np.full((4, 3), -0.5, dtype=np.float32))


@pytest.mark.parametrize("mode, best, counts, does_not", [
    # threshold 0.1 of best: relative, so the bar moves with the metric's scale
    ("min", 0.5, 0.449, 0.451),      # < 0.45 = 0.5 - 0.1 * 0.5 (an absolute 0.1 would ask < 0.4)
    ("min", 5.0, 4.49, 4.51),        # < 4.5 (an absolute 0.1 would take 4.51 as well)
    ("max", 0.5, 0.551, 0.549),      # > 0.55 (an absolute 0.1 would ask > 0.6)
    ("max", 5.0, 5.51, 5.49),        # > 5.5 (an absolute 0.1 would take 5.49 as well)
])
def test_plateau_threshold_is_relative_to_the_best_value_on_either_side(mode, best, counts,
                                                                        does_not):
    for metric, improves in ((counts, True), (does_not, False)):
        opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        plateau = ReduceLROnPlateau(opt, threshold=0.1, mode=mode)
        plateau.step(best)
        assert plateau.step(metric) is (not improves), (metric, improves)
        assert plateau.best == (metric if improves else best)


# -- schedules that fit the run: the warm-up's share, the plateau's margin and patience --------
@pytest.mark.parametrize("steps, planned, expected", [
    (100, 40, 8), (100, 48, 9), (9, 48, 9), (10, 48, 9), (20, 100, 20), (21, 100, 20),
    (5, 4, 0), (3, 0, 0), (0, 100, 0)])
def test_a_warmup_is_cut_to_a_fifth_of_the_planned_steps_and_then_runs_at_the_target(
        steps, planned, expected):
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    warmup = LinearWarmup(opt, steps)
    assert warmup.fit_to(planned) is (expected < steps)
    assert warmup.steps == expected == min(steps, planned // 5) and warmup.requested == steps
    lrs = []
    for _ in range(planned + 3):
        warmup.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs[:expected], 0.1 * np.arange(1, expected + 1) / expected)
    np.testing.assert_allclose(lrs[expected:], 0.1)


def test_a_warmup_is_never_lengthened_and_one_cut_short_behind_its_steps_ends_at_once():
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    warmup = LinearWarmup(opt, 10, planned_steps=1000)
    for _ in range(6):
        warmup.step()
    assert opt.lr == pytest.approx(0.06) and warmup.steps == 10
    assert not warmup.fit_to(10_000) and warmup.steps == 10     # more steps planned: as it was
    assert warmup.fit_to(35) and warmup.steps == 7              # one step of the ramp left
    warmup.step()
    assert opt.lr == pytest.approx(0.1)
    opt.lr, warmup = 0.1, LinearWarmup(opt, 10)
    for _ in range(6):
        warmup.step()
    assert warmup.fit_to(25) and not warmup.active   # 5 steps, 6 taken: the target from now on
    assert opt.lr == 0.1
    warmup.step()
    assert opt.lr == 0.1
    with pytest.raises(ValueError, match="planned_steps"):
        warmup.fit_to(-1)


class RateLog(Extension):
    """The rate of every update, as the optimiser held it when it stepped."""

    def __init__(self, stop_after=None):
        self.lrs, self.stop_after = [], stop_after

    def after_step(self, trainer):
        self.lrs.append(trainer.optimizer.lr)

    def end_epoch(self, trainer, record):
        if trainer.epoch == self.stop_after:
            trainer.request_stop("stopped by the test")


def warmed_up_run(epochs, images, batch, warmup, tree=None, stop_after=None):
    minialex.manual_seed(0)
    model = tiny_net()
    opt = SGD(model.parameters(), lr=0.05)
    train = Loader(tiny_data(images), batch, shuffle=True, generator=np.random.default_rng(1),
                   transform=T.ToFloat())
    rates, log = LearningRate(None, LinearWarmup(opt, warmup)), RateLog(stop_after)
    trainer = Trainer(model, opt, train, epochs=epochs, extensions=[rates, log])
    if tree is not None:
        trainer.load_state(tree)
        # fitted to the new plan already, for what a run prints before it trains
        assert rates.warmup.steps <= epochs * len(train) // 5
    trainer.fit()
    return trainer, rates, log.lrs


def ramp(lrs) -> int:
    """Updates made below the target rate 0.05 (a warm-up of S steps makes S - 1: its last
    step is at the target)."""
    return sum(lr < 0.05 * (1 - 1e-9) for lr in lrs)


@pytest.mark.parametrize("epochs, images, batch, warmup", [
    (1, 40, 8, 100), (3, 40, 8, 100), (4, 40, 4, 7), (2, 36, 8, 3), (5, 40, 40, 2),
    (2, 40, 8, 0), (12, 24, 8, 100)])
def test_a_run_spends_at_most_a_fifth_of_its_planned_steps_warming_up(epochs, images, batch,
                                                                     warmup):
    trainer, rates, lrs = warmed_up_run(epochs, images, batch, warmup)
    planned = epochs * -(-images // batch)
    assert len(lrs) == planned == trainer.global_step
    steps = min(warmup, planned // 5)
    assert rates.warmup.steps == steps <= planned / 5
    np.testing.assert_allclose(lrs[:steps], 0.05 * np.arange(1, steps + 1) / max(steps, 1))
    assert ramp(lrs) == max(steps - 1, 0)
    assert lrs[-1] == pytest.approx(0.05)
    # what the summary reports: the highest rate an update used, and the last update's
    assert rates.max_lr == max(lrs) and rates.last_lr == lrs[-1]


@pytest.mark.parametrize("first_epochs, stop_after, then_epochs", [
    (2, 2, 6),      # 10 steps planned, warm-up 2; resumed for 30: still 2, never lengthened
    (6, 1, 2),      # 30 planned, warm-up 6 and 5 steps taken; resumed for 10: it ends at once
    (6, 1, 8),      # 30 planned, warm-up 6; resumed for 40: one more step of the ramp
    (12, 1, 12)])   # 60 planned, warm-up 12; resumed with the same plan: 7 more
def test_a_resumed_run_fits_its_warmup_to_the_new_plan_without_lengthening_it(
        tmp_path, first_epochs, stop_after, then_epochs):
    first, rates, before = warmed_up_run(first_epochs, 40, 8, 100, stop_after=stop_after)
    path = tmp_path / "last.npz"
    checkpoint.save(path, first.state())
    resumed, rates, after = warmed_up_run(then_epochs, 40, 8, 100, tree=checkpoint.load(path))
    taken, started = len(before), min(100, first_epochs * 5 // 5)
    steps = min(started, then_epochs * 5 // 5)
    assert rates.warmup.steps == steps
    assert ramp(before) == min(started - 1, taken) and ramp(after) == max(steps - 1 - taken, 0)
    assert len(before) + len(after) == then_epochs * 5 == resumed.global_step
    # the rates reached before the checkpoint count: they were saved with it
    assert rates.max_lr == max(before + after) and rates.last_lr == after[-1]


@pytest.mark.parametrize("mode, best", [("min", 0.3), ("min", 0.05), ("max", 0.7),
                                        ("max", 0.95)])
def test_an_improvement_counts_only_past_one_standard_error_of_the_best(mode, best):
    n = 300
    se = math.sqrt(best * (1 - best) / n)          # 0.026 at 0.3, 0.013 at 0.05
    toward = -1 if mode == "min" else 1
    for share, improves in ((0.99, False), (1.01, True)):
        opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        plateau = ReduceLROnPlateau(opt, mode=mode, samples=n)
        plateau.step(best)
        assert plateau.margin == pytest.approx(se)
        metric = best + toward * share * se
        assert plateau.step(metric) is (not improves), (metric, improves)
        assert plateau.best == (metric if improves else best)
        assert opt.lr == (1.0 if improves else pytest.approx(0.1))


def test_the_larger_margin_wins_the_relative_threshold_on_a_large_validation_set():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    plateau = ReduceLROnPlateau(opt, threshold=0.1, samples=10**6)   # se 0.0005 at 0.5
    plateau.step(0.5)
    assert plateau.margin == pytest.approx(0.05)
    assert plateau.step(0.451) and not plateau.step(0.449)
    assert ReduceLROnPlateau(opt).margin == 0.0          # no best yet: nothing to go past
    with pytest.raises(ValueError, match="samples"):
        ReduceLROnPlateau(opt, samples=0)


def test_patience_lets_that_many_epochs_pass_and_an_improvement_starts_the_count_again():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    plateau = ReduceLROnPlateau(opt, patience=2, samples=300)
    # margins: 0.029 at 0.5, 0.028 at 0.4; 0.49 and 0.48 are noise, 0.40 is progress
    errors = [0.50, 0.49, 0.48, 0.40, 0.41, 0.39, 0.395, 0.40, 0.40, 0.40]
    reduced = [plateau.step(e) for e in errors]
    assert reduced == [False, False, False, False, False, False, True, False, False, True]
    assert opt.lr == pytest.approx(0.01) and plateau.best == 0.40
    once = ReduceLROnPlateau(SGD([Parameter(np.zeros(1))], lr=1.0), patience=1, samples=300)
    assert [once.step(e) for e in (0.5, 0.51, 0.4, 0.45, 0.41)] == [False, False, False, False,
                                                                    True]


def test_the_margin_survives_the_state_and_an_older_state_without_samples_loads():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    a = ReduceLROnPlateau(opt, patience=1, samples=300)
    a.step(0.3)
    b = ReduceLROnPlateau(opt)
    b.load_state_dict({k: np.asarray(v) for k, v in a.state_dict().items()})
    assert b.samples == 300 and b.margin == a.margin and b.state_dict() == a.state_dict()
    older = {k: v for k, v in a.state_dict().items() if k != "samples"}
    b.load_state_dict(older)
    assert b.samples is None and b.margin == pytest.approx(0.3e-4)
