"""Training: the plain epoch loop, top-k metrics, the Trainer's logs, divergence, the schedule
stopping a run, resuming without logging an epoch twice, and real learning."""
import io
import json
import os
import signal

import numpy as np
import pytest

import minialex
from minialex import Tensor, backend, checkpoint, nn
from minialex.data import ArrayDataset, Loader, fashion_mnist
from minialex.data.transforms import GreyAugmenter
from minialex.extensions import Extension, LearningRate
from minialex.models import alexnet
from minialex.optim import SGD, ReduceLROnPlateau
from minialex.train import (
    Trainer,
    evaluate,
    evaluate_ten_crop,
    topk_counts,
    train_one_epoch,
)
from minialex.watch import TrainingDiverged

from conftest import TOL
from support import make_trainer, tiny_data, tiny_net


# -- the plain loop ----------------------------------------------------------------------------
def test_train_one_epoch_is_the_four_line_loop_over_every_batch():
    minialex.manual_seed(0)
    model = tiny_net()
    optimizer = SGD(model.parameters(), lr=0.05)
    loader = Loader(tiny_data(), 8, transform=lambda x: x.astype(np.float32) / 255)
    before = evaluate(model, loader)["loss"]
    losses = []
    running = train_one_epoch(model, loader, optimizer, before_update=losses.append)
    assert running.steps == 5 and running.images == 40 and len(losses) == 5
    assert running.loss_sum == pytest.approx(8 * sum(losses))
    for _ in range(20):
        train_one_epoch(model, loader, optimizer)
    assert evaluate(model, loader)["loss"] < before


def test_train_one_epoch_stops_before_the_update_when_asked():
    minialex.manual_seed(0)
    model = tiny_net()
    optimizer = SGD(model.parameters(), lr=0.05)
    loader = Loader(tiny_data(), 8, transform=lambda x: x.astype(np.float32) / 255)
    weights = {k: v.copy() for k, v in model.state_dict().items()}

    def refuse(loss):
        raise TrainingDiverged("planted")

    with pytest.raises(TrainingDiverged):
        train_one_epoch(model, loader, optimizer, before_update=refuse)
    assert all(np.array_equal(weights[k], v) for k, v in model.state_dict().items())
    running = train_one_epoch(model, loader, optimizer, after_step=lambda r: r.steps == 2)
    assert running.steps == 2


@pytest.mark.parametrize("label", [-1, 10, 15])
@pytest.mark.parametrize("loader_checks", [None, 20])
def test_the_loop_refuses_a_label_outside_the_classes_before_any_update(label, loader_checks):
    # a loader that checked the labels against another class count (20 for a 10-class net)
    # vouches for nothing: the loop checks them itself
    minialex.manual_seed(0)
    model = tiny_net()
    optimizer = SGD(model.parameters(), lr=0.05)
    data = tiny_data(16)
    data.labels[5] = label
    loader = Loader(data, 8, transform=lambda x: x.astype(np.float32) / 255,
                    num_classes=loader_checks)
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    if loader_checks is not None and 0 <= label < loader_checks:
        expected = rf"^cross_entropy: label {label} is out of range \[0, 10\)"
    else:
        expected = rf"label {label} is out of range \[0, {loader_checks or 10}\)"
    with pytest.raises(ValueError, match=expected):
        train_one_epoch(model, loader, optimizer)
    assert all(np.array_equal(weights[k], v) for k, v in model.state_dict().items())


# -- top-k -------------------------------------------------------------------------------------
def topk_correct(logits, labels, ks):
    return backend.to_numpy(topk_counts(logits, labels, ks)).tolist()


def topk_reference(logits, labels, k):
    """Count rows whose label is in the k largest, one row at a time (no ties in the input)."""
    return sum(int(label in np.argsort(-row)[:k]) for row, label in zip(logits, labels))


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_topk_matches_sorting(k):
    rng = np.random.default_rng(k)
    logits = rng.permuted(np.tile(np.arange(7.0), (30, 1)), axis=1)    # no ties within a row
    labels = rng.integers(0, 7, 30)
    assert topk_correct(logits, labels, (k,)) == [topk_reference(logits, labels, k)]


def test_topk_breaks_ties_by_class_index_and_counts_all_at_k_beyond_classes():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([1, 2, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 3, 4]
    assert topk_correct(logits[:1], labels[:1], (1,)) == [int(np.argmax(logits[0]) == labels[0])]


def test_a_network_with_equal_scores_is_right_only_on_class_0():
    labels = np.arange(10) % 5
    assert topk_correct(np.zeros((10, 5)), labels, (1, 5)) == [2, 10]


# -- ten-crop evaluation ----------------------------------------------------------------------
class Crops:
    """A dataset whose batches are already each image's 10 crops: (10, B, C, H, W)."""

    def __init__(self, crops, labels):
        self.crops, self.labels = crops, labels

    def __len__(self):
        return len(self.labels)

    def get_batch(self, indices):
        return self.crops[:, indices], self.labels[indices]


def test_evaluate_ten_crop_averages_the_softmax_of_each_images_crops():
    rng = np.random.default_rng(0)
    minialex.manual_seed(0)
    # dropout would make the scores random: passes only if evaluation runs in eval mode
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5))
    crops = (3 * rng.standard_normal((10, 7, 3, 2, 2))).astype(np.float32)
    W, b = model[1].weight.numpy().astype(np.float64), model[1].bias.numpy()
    probs = []                     # the reference, one image at a time
    for i in range(7):
        z = crops[:, i].reshape(10, 12) @ W.T + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs.append((e / e.sum(axis=1, keepdims=True)).mean(axis=0))
    probs = np.array(probs)
    labels = probs.argmax(axis=1)
    labels[::2] = (labels[::2] + 1) % 4                 # images 0, 2, 4, 6 are misclassified
    metrics = evaluate_ten_crop(model, Loader(Crops(crops, labels), 3))    # batches of 3, 3, 1
    assert metrics["images"] == 7 and model.training
    assert metrics["top1"] == 3 / 7 and metrics["top5"] == 1.0             # 4 classes
    np.testing.assert_allclose(metrics["loss"], -np.log(probs[np.arange(7), labels]).mean(),
                               **TOL["float32_relative"])


def test_evaluate_ten_crop_wants_batches_of_crops():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    single = Loader(ArrayDataset(np.zeros((2, 3, 2, 2), np.float32), np.zeros(2, np.int64)), 2)
    with pytest.raises(ValueError, match=r"expected batches of crops \(n_crops, N, C, H, W\)"):
        evaluate_ten_crop(model, single)


@pytest.mark.parametrize("label", [-1, 4])
def test_evaluation_refuses_labels_outside_the_classes_unless_the_loader_checked_them(label):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    labels = np.array([0, label, 1])
    crops = np.zeros((10, 3, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=rf"label {label} is out of range \[0, 4\)"):
        evaluate_ten_crop(model, Loader(Crops(crops, labels), 3))
    with pytest.raises(ValueError, match=rf"label {label} is out of range \[0, 4\)"):
        evaluate(model, Loader(ArrayDataset(crops[0], labels), 3))
    with pytest.raises(ValueError, match=rf"Loader: label {label} is out of range"):
        evaluate(model, Loader(ArrayDataset(crops[0], labels), 3, num_classes=4))


def test_ten_crop_evaluation_refuses_labels_that_are_not_integers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    crops = np.zeros((10, 3, 3, 2, 2), np.float32)
    with pytest.raises(TypeError, match="labels must be integers"):
        evaluate_ten_crop(model, Loader(Crops(crops, np.array([0.0, 3.7, 1.0])), 3))


# -- logs, summary, stopping -------------------------------------------------------------------
def test_fit_writes_one_metrics_line_per_epoch_and_a_summary(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, stream=io.StringIO(), print_freq=2)
    trainer.fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["lr"] == 0.05 and records[1]["lr"] == 0.025        # StepLR, gamma 0.5
    for key in ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                "train_images_per_second", "train_data_seconds", "train_compute_seconds"):
        assert key in records[0]
    assert (tmp_path / "last.npz").exists() and (tmp_path / "best.npz").exists()
    output = trainer.stream.getvalue()
    assert "epoch 1/2 [2/5] loss" in output and "img/s" in output and "ETA" in output
    assert "data" in output and "compute" in output and "lr 0.05" in output
    # each epoch's line is in metrics.jsonl before the checkpoint that includes it
    assert checkpoint.load(tmp_path / "last.npz")["trainer"]["history"] == records


def test_resuming_cuts_metrics_back_to_the_checkpoint_so_no_epoch_is_logged_twice(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit()
    saved = checkpoint.load(tmp_path / "last.npz")
    trainer.epochs = 2
    trainer.fit()                 # as if killed after logging epoch 2, before saving it
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = make_trainer(tmp_path, epochs=2)
    resumed.load_state(saved)       # changes no file: a load that fails must leave them all
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    resumed.fit()                   # cuts epoch 2's line, then logs epoch 2 again
    epochs = [json.loads(line)["epoch"] for line in
              (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    # a line cut short by a kill while it was written counts as not written
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    done = make_trainer(tmp_path, epochs=2)
    done.load_state(checkpoint.load(tmp_path / "last.npz"))
    assert done.fit() == "completed"            # nothing left to train: only the cut
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3)
    forward, calls = trainer.model.forward, []

    def forward_nan_at_epoch_2_step_3(x):
        calls.append(1)
        y = forward(x)      # 5 training + 1 validation forwards per epoch
        return y * float("nan") if len(calls) == 9 else y

    trainer.model.forward = forward_nan_at_epoch_2_step_3
    trainer.epochs = 1
    trainer.fit()                                  # epoch 1 is good and saved
    before = (tmp_path / "last.npz").read_bytes()
    trainer.epochs = 3
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "training diverged: the loss is nan at epoch 2, step 3/5 (lr 0.025)" in message
    assert "last.npz keeps the last good state, from the end of epoch 1" in message
    assert "try a lower `lr`" in message and "--" not in message
    assert (tmp_path / "last.npz").read_bytes() == before
    assert checkpoint.load(tmp_path / "last.npz")["trainer"]["epoch"] == 1


def test_nan_validation_loss_stops_before_saving_a_best_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    forward, calls = trainer.model.forward, []

    def forward_nan_in_validation_of_epoch_2(x):
        calls.append(1)
        y = forward(x)      # 5 training + 1 validation forwards per epoch
        return y * float("nan") if len(calls) == 12 else y

    trainer.model.forward = forward_nan_in_validation_of_epoch_2
    trainer.epochs = 1
    trainer.fit()
    best_before = (tmp_path / "best.npz").read_bytes()
    trainer.epochs = 2
    with pytest.raises(TrainingDiverged, match="validation loss is nan after epoch 2"):
        trainer.fit()
    assert (tmp_path / "best.npz").read_bytes() == best_before


def test_an_exhausted_plateau_schedule_stops_the_run(tmp_path):
    trainer = make_trainer(tmp_path, epochs=5)
    trainer.optimizer.lr = 1e-30                   # nothing changes, so nothing improves
    schedule = trainer.extension(LearningRate)
    schedule.scheduler = ReduceLROnPlateau(trainer.optimizer, max_reductions=1)
    assert trainer.fit() == "schedule exhausted"
    assert trainer.epoch == 3                      # best, reduce, then exhausted
    assert trainer.stopped == "schedule exhausted"


# -- real data ---------------------------------------------------------------------------------
def real_fashion_mnist():
    try:
        return fashion_mnist.load_fashion_mnist(val_size=5000)
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed ({fashion_mnist.HOW_TO_GET}): {exc}")


def test_mini_alexnet_learns_on_a_slice_of_real_fashion_mnist():
    data = real_fashion_mnist()
    minialex.manual_seed(0)
    model = alexnet("mini")
    optimizer = SGD(model.parameters(), lr=0.02)
    grey = GreyAugmenter(28, data.mean, data.std)
    train_tf, eval_tf = grey.train, grey.eval
    train = Loader(data.train.head(1024), 64, shuffle=True, generator=np.random.default_rng(0),
                   transform=train_tf)
    val = Loader(data.val.head(256), 256, transform=eval_tf)
    trainer = Trainer(model, optimizer, train, val, epochs=2, print_freq=0,
                      stream=io.StringIO())
    before = evaluate(model, val)
    trainer.fit()                                  # 32 steps of 64 images
    after = trainer.history[-1]
    assert after["val_loss"] < 0.8 * before["loss"]
    assert after["val_top1"] > 0.3                 # chance is 0.1; 0.44 here
    assert trainer.history[1]["train_loss"] < trainer.history[0]["train_loss"]
    logits = model.eval()(Tensor(eval_tf(data.test.images[:4])))
    assert logits.shape == (4, 10)


# -- Ctrl-C ------------------------------------------------------------------------------------
class CtrlC(Extension):
    """Sends this process ``times`` Ctrl-Cs after step ``at`` of the run."""

    def __init__(self, at, times=1):
        self.at, self.times = at, times

    def after_step(self, trainer):
        if trainer.global_step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C (KeyboardInterrupt), also where the tests run with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("saves", [True, False])
def test_ctrl_c_speaks_of_a_checkpoint_only_where_one_is_written(tmp_path, saves):
    out, log = (tmp_path if saves else None), io.StringIO()
    trainer = make_trainer(out, epochs=1, stream=log)
    trainer.extensions.append(CtrlC(at=2))
    assert trainer.fit() == "interrupted"
    first = log.getvalue().splitlines()[1:]
    # the second Ctrl-C in epoch 2, when last.npz holds epoch 1 (5 steps an epoch)
    log = io.StringIO()
    trainer = make_trainer(out, epochs=2, stream=log)
    trainer.extensions.append(CtrlC(at=6, times=2))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    second = log.getvalue().splitlines()[-1]
    if saves:
        assert first == ["Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again "
                         "to stop at once)", f"interrupted at epoch 1, step 2; saved "
                                             f"{tmp_path / 'last.npz'}"]
        assert second == (f"stopped at once: nothing saved; {tmp_path / 'last.npz'} keeps the "
                          f"last good state, from the end of epoch 1")
    else:
        assert first == ["Ctrl-C: stopping after this step (Ctrl-C again to stop at once)",
                         "interrupted at epoch 1, step 2"]
        assert second == "stopped at once: nothing saved"


def test_a_trainer_that_leaves_ctrl_c_alone_raises_at_once_and_says_nothing(python_ctrl_c):
    log = io.StringIO()
    trainer = make_trainer(None, epochs=1, stream=log, catch_ctrl_c=False)
    trainer.extensions.append(CtrlC(at=2))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 2 and log.getvalue() == ""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- the seams for several processes -----------------------------------------------------------
class ZeroGradients(Extension):
    """Stands in for a gradient exchange: it sees the gradients before the optimiser does."""

    def __init__(self):
        self.calls = 0

    def after_backward(self, trainer):
        self.calls += 1
        for p in trainer.model.parameters():
            assert p.grad is not None
            p.grad[...] = 0


def test_after_backward_sees_the_gradients_before_the_optimiser_steps(tmp_path):
    trainer = make_trainer(None, epochs=1)
    trainer.optimizer.momentum = trainer.optimizer.weight_decay = 0.0
    zero = ZeroGradients()
    trainer.extensions.append(zero)
    weights = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert zero.calls == 5                  # one per step, and every update was of zeros
    assert all(np.array_equal(weights[k], v) for k, v in trainer.model.state_dict().items())


def test_only_rank_0_writes_files_and_prints(tmp_path):
    for rank in (0, 1):
        log = io.StringIO()
        make_trainer(tmp_path / str(rank), epochs=1, rank=rank, stream=log, print_freq=1).fit()
        written = sorted(p.name for p in (tmp_path / str(rank)).iterdir())
        assert written == (["best.npz", "last.npz", "metrics.jsonl"] if rank == 0 else [])
        assert ("epoch 1/1" in log.getvalue()) == (rank == 0)


def test_sums_are_reduced_over_processes_before_dividing(tmp_path):
    seen = []

    def twice(sums):                        # another process with the same sums as this one
        seen.append(len(sums))
        return 2 * np.asarray(sums)

    one = make_trainer(None, epochs=1)
    one.fit()
    two = make_trainer(None, epochs=1, reduce_sums=twice)
    two.fit()
    a, b = one.history[0], two.history[0]
    assert b["train_images"] == 2 * a["train_images"] == 80
    assert b["val_images"] == 2 * a["val_images"] == 32
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
        assert b[key] == pytest.approx(a[key]), key
    assert seen.count(2) == 5 and seen.count(4) == 2    # each step's loss; train and val sums


def test_the_watch_sees_the_loss_of_every_process(tmp_path):
    def another_diverged(sums):             # this process's loss is finite, another's is not
        return np.asarray(sums) + (np.array([np.nan, 1.0]) if len(sums) == 2 else 0)

    trainer = make_trainer(None, epochs=1, reduce_sums=another_diverged)
    with pytest.raises(TrainingDiverged, match="the loss is nan at epoch 1, step 1/5"):
        trainer.fit()
