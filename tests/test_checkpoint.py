"""Checkpoints: pickle-free round trip, atomic writes, clean refusals, exact resumption."""
import copy
import dataclasses
import os
import signal

import numpy as np
import pytest

import minialex
from minialex import backend, checkpoint, extensions, recipe
from minialex.config import CPU_PRESET
from minialex.models import alexnet

from support import make_trainer


# -- the file format ---------------------------------------------------------------------------
def test_round_trip_of_a_nested_tree(tmp_path):
    rng_state = np.random.default_rng(5).bit_generator.state      # holds 128-bit ints
    tree = {"weights": {"features.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
                        "idx": np.array([1, 2], np.int64), "mask": np.array([True, False])},
            "velocity": {0: np.ones(2), "1": None},               # int and str keys stay apart
            "history": [{"loss": 0.5, "best": True}, {"loss": float("nan"), "best": False}],
            "pair": (1, "two"), "best": float("inf"), "rng": rng_state, "note": "ok",
            "scalar": np.float32(0.25)}
    checkpoint.save(tmp_path / "c.npz", tree)
    back = checkpoint.load(tmp_path / "c.npz")
    assert back["weights"]["features.0.weight"].dtype == np.float32
    for key in ("features.0.weight", "idx", "mask"):
        np.testing.assert_array_equal(back["weights"][key], tree["weights"][key])
    assert set(back["velocity"]) == {0, "1"} and back["velocity"]["1"] is None
    assert back["history"][0] == {"loss": 0.5, "best": True}
    assert np.isnan(back["history"][1]["loss"])
    assert back["pair"] == (1, "two") and back["best"] == float("inf")
    assert back["rng"] == rng_state and back["scalar"] == 0.25 and back["note"] == "ok"


def test_file_is_an_npz_of_plain_arrays_readable_without_pickle(tmp_path):
    checkpoint.save(tmp_path / "c.npz", {"w": np.zeros(3)})
    with np.load(tmp_path / "c.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["__meta__", "arrays/w"]
        assert archive["__meta__"].dtype == np.uint8
    with pytest.raises(TypeError, match="object array"):
        checkpoint.save(tmp_path / "d.npz", {"bad": np.array([{}], dtype=object)})


def test_missing_file_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nothing.npz"):
        checkpoint.load(tmp_path / "nothing.npz")


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "empty", "text", "plain-npz"])
def test_damaged_file_is_one_value_error_naming_the_path(tmp_path, damage):
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"w": np.arange(1000, dtype=np.float32), "epoch": 3})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flip-byte":
        path.write_bytes(data[:300] + bytes([data[300] ^ 0xFF]) + data[301:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a checkpoint")
    else:
        np.savez(path, w=np.zeros(2))
    with pytest.raises(ValueError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"epoch": 1, "w": np.ones(100)})
    before = path.read_bytes()

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(checkpoint.WriteError) as info:
        checkpoint.save(path, {"epoch": 2, "w": np.zeros(100)})
    assert str(info.value) == f"cannot write {path}: disk full"      # the file and the cause
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.npz"]              # the temporary file is gone
    assert checkpoint.load(path)["epoch"] == 1


def test_the_temporary_file_a_killed_save_leaves_is_removed_and_nothing_else(tmp_path):
    during = []
    checkpoint.atomic_write(tmp_path / "last.npz", lambda f: during.extend(os.listdir(tmp_path)))
    (partial,) = during                          # the name a save writes under, before its rename
    (tmp_path / partial).write_bytes(b"PK\x03\x04 half")      # as a kill -9 leaves it
    (tmp_path / "notes.tmp").write_text("the user's")
    assert checkpoint.remove_partial_files(tmp_path) == [str(tmp_path / partial)]
    assert sorted(os.listdir(tmp_path)) == ["last.npz", "notes.tmp"]


def test_a_directory_or_unreadable_file_is_named_as_such_not_as_corrupt(tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory, not a checkpoint "
                                                f"file, and holds no .npz"):
        checkpoint.load(tmp_path)
    checkpoint.save(tmp_path / "best.npz", {"epoch": 1})
    with pytest.raises(IsADirectoryError, match=r"pass one of its checkpoints \(best.npz\), "
                                                f"e.g. {tmp_path / 'best.npz'}$"):
        checkpoint.load(tmp_path)

    def no_permission(path, mode="r"):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", no_permission)    # root reads any file: simulate it
    with pytest.raises(PermissionError, match=f"^cannot read checkpoint {tmp_path / 'best.npz'}: "
                                              f"Permission denied$"):
        checkpoint.load(tmp_path / "best.npz")


# -- exact resumption through the Trainer ------------------------------------------------------
def weights(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    for va, vb in zip(a.optimizer.velocity, b.optimizer.velocity):
        np.testing.assert_array_equal(va, vb)
    assert a.optimizer.lr == b.optimizer.lr
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_resume_after_an_epoch_matches_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "a", epochs=2)
    assert straight.fit() == "completed"
    first = make_trainer(tmp_path / "b", epochs=1)
    first.fit()
    minialex.manual_seed(123)                     # resuming must not depend on the seed now
    resumed = make_trainer(tmp_path / "b", epochs=2, model_seed=7)
    resumed.load_state(checkpoint.load(tmp_path / "b" / "last.npz"))
    assert (resumed.epoch, resumed.step) == (1, 0)
    assert resumed.fit() == "completed"
    assert_same_run(straight, resumed)


def ctrl_c_during_forward(trainer, call):
    """Send the process a Ctrl-C during the model's ``call``-th forward pass (5 training and 1
    validation pass per epoch of ``make_trainer``)."""
    forward, calls = trainer.model.forward, []

    def forward_then_ctrl_c(x):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(x)

    trainer.model.forward = forward_then_ctrl_c


@pytest.mark.parametrize("call,saved_at", [
    (9, (1, 3)),        # epoch 2, step 3: saved mid-epoch
    (5, (1, 0)),        # epoch 1's last step: the epoch is finished first, then saved
])
def test_ctrl_c_saves_and_resumes_step_for_step(tmp_path, call, saved_at):
    straight = make_trainer(tmp_path / "a", epochs=2)
    straight.fit()
    stopped = make_trainer(tmp_path / "b", epochs=2)
    ctrl_c_during_forward(stopped, call)
    handler = signal.getsignal(signal.SIGINT)     # Python's own, or SIG_IGN under nohup
    assert stopped.fit() == "interrupted"
    saved = checkpoint.load(tmp_path / "b" / "last.npz")
    assert (saved["trainer"]["epoch"], saved["trainer"]["step"]) == saved_at
    assert signal.getsignal(signal.SIGINT) is handler          # fit put it back
    resumed = make_trainer(tmp_path / "b", epochs=2, model_seed=9)
    resumed.load_state(saved)
    assert resumed.fit() == "completed"
    assert_same_run(straight, resumed)


def test_a_checkpoint_from_before_the_loader_kept_its_state_is_named_as_such(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    tree = checkpoint.load(tmp_path / "last.npz")
    tree["rng"] = {"backend": tree["rng"]["backend"], "shuffle": None, "generators": {}}
    with pytest.raises(ValueError, match="written by minialex before 0.2.*cannot be resumed, "
                                         "but it can still be evaluated"):
        make_trainer(tmp_path / "x", epochs=1).load_state(tree, source="old.npz")


def test_checkpoint_of_another_architecture_is_refused_with_names_and_shapes(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    other = make_trainer(tmp_path / "x", epochs=1, width=6)
    with pytest.raises(ValueError) as info:
        other.load_state(checkpoint.load(tmp_path / "last.npz"), source="last.npz")
    message = str(info.value)
    assert message.startswith("last.npz: ")
    assert "0.weight: checkpoint (4, 1, 3, 3), model (6, 1, 3, 3)" in message
    assert "4.weight: checkpoint (16, 64), model (16, 96)" in message
    tree = checkpoint.load(tmp_path / "last.npz")
    tree["architecture"] = "mini"
    with pytest.raises(ValueError, match="checkpoint of architecture 'mini' cannot be loaded "
                                         "into a 'Sequential' model"):
        make_trainer(tmp_path / "y", epochs=1).load_state(tree)


def _velocity_of_another_shape(tree):
    velocity = tree["optimizer"]["velocity"]
    velocity["0"] = velocity["0"][:1]


def _loader_state_of_another_loader(tree):
    tree["rng"]["train_loader"] = {"x": 1}


# the parts after the model's weights (optimiser, loader, an extension's schedule) fail after
# the weights were loaded: the trainer puts back what it had
@pytest.mark.parametrize("path, damage, error", [
    (("trainer", "running"), None, "incomplete training state .*running"),
    (("trainer", "epoch"), None, "incomplete training state .*epoch"),
    (("rng", "backend"), None, "incomplete training state .*backend"),
    (("rng", "train_loader"), None, "incomplete training state .*train_loader"),
    (("optimizer", "velocity"), None, "SGD.load_state_dict: missing key.* velocity"),
    (None, _velocity_of_another_shape, "SGD.load_state_dict: velocity 0 .*shape"),
    (("scheduler", "step_size"), None, "StepLR.load_state_dict: missing key.* step_size"),
    (None, _loader_state_of_another_loader, "incomplete training state .*shuffle"),
])
def test_incomplete_training_state_is_refused_before_anything_changes(tmp_path, path, damage,
                                                                      error):
    make_trainer(tmp_path, epochs=1).fit()
    tree = checkpoint.load(tmp_path / "last.npz")
    if path:
        del tree[path[0]][path[1]]
    else:
        damage(tree)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    # not trained: every part differs from the checkpoint's (epoch, velocity, schedule, ...)
    fresh = make_trainer(tmp_path, epochs=1, model_seed=7)
    before = everything(fresh)
    with pytest.raises(ValueError, match=f"^last.npz: {error}"):
        fresh.load_state(tree, source="last.npz")
    assert_same(everything(fresh), before)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics     # no file changed either
    fresh.load_state(checkpoint.load(tmp_path / "last.npz"))       # the test's damage was all
    assert fresh.epoch == 1


def everything(trainer):
    """A trainer's whole state, part by part, as copies."""
    schedule = trainer.extension(extensions.LearningRate).scheduler
    return {"weights": weights(trainer), "optimizer": trainer.optimizer.state_dict(),
            "lr": trainer.optimizer.lr, "scheduler": schedule.state_dict(),
            "loader": trainer.train_loader.state_dict(), "rng": backend.get_rng_state(),
            "position": {name: copy.deepcopy(getattr(trainer, name))
                         for name in checkpoint.TRAINER_FIELDS},
            "running": dataclasses.asdict(trainer.running)}


def assert_same(got, want, where="trainer"):
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        assert got == want, where


def test_a_checkpoint_from_before_0_2_is_read_with_its_classes_and_normalisation(tmp_path):
    # before 0.2 the class names and Fashion-MNIST's mean and std were among the settings
    minialex.manual_seed(0)
    weights = alexnet("mini").state_dict()
    classes = [f"class {k}" for k in range(10)]
    tree = {"architecture": "mini", "model": weights,
            "config": {**CPU_PRESET.to_dict(), "classes": classes, "mean": 0.25, "std": 0.5},
            "rng": {"backend": None, "shuffle": None, "generators": {}}}
    checkpoint.save(tmp_path / "old.npz", tree)
    moved = checkpoint.migrate(checkpoint.load(tmp_path / "old.npz"))
    assert moved["classes"] == classes and moved["normalization"] == {"mean": 0.25, "std": 0.5}
    run, _ = recipe.load_checkpoint(tmp_path / "old.npz", splits=False)
    assert run.data.classes == classes and run.normalization == {"mean": 0.25, "std": 0.5}
    for name, value in run.model.state_dict().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_weights_of_another_architecture_are_refused_naming_what_differs(tmp_path):
    minialex.manual_seed(0)
    tree = {"architecture": "mini", "model": alexnet("mini").state_dict()}
    with pytest.raises(ValueError, match=r"^x.npz: checkpoint of architecture 'mini' cannot be "
                                         r"loaded into a 'small' model: .*features.0.weight: "
                                         r"checkpoint \(\d+, 1, \d+, \d+\), model"):
        checkpoint.load_weights(alexnet("small"), tree, "x.npz")
    with pytest.raises(ValueError, match="^x.npz: holds no model weights$"):
        checkpoint.load_weights(alexnet("mini"), {"architecture": "mini"}, "x.npz")
