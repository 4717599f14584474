"""The run configuration: presets, one place of checks, the paper's recipe one setting away,
and how flags, a checkpoint's settings and the preset combine."""
import dataclasses

import pytest

from minialex import config as cfg
from minialex.config import (
    CPU_PRESET,
    GPU_PRESET,
    IMAGES_PRESET,
    PAPER_CROP,
    PAPER_IMAGE_SIZE,
    RunConfig,
    resolve,
)
from minialex.layers.dropout import PAPER_P
from minialex.models import VARIANTS
from minialex.optim import MOMENTUM, WEIGHT_DECAY


def test_presets_are_checked_instances_picked_by_dataset_and_device():
    for preset in cfg.PRESETS.values():
        assert preset.check() is preset
    assert cfg.preset_for(None, "cpu") is CPU_PRESET
    assert cfg.preset_for("fashion-mnist", "gpu:0") is GPU_PRESET
    folder = cfg.preset_for("/photos", "gpu")
    assert folder == dataclasses.replace(IMAGES_PRESET, dataset="/photos")


def test_every_departure_from_the_paper_is_one_setting_away():
    paper = IMAGES_PRESET.replace(init="paper", normalize=False, warmup=0)
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.schedule) == (
        0.01, MOMENTUM, WEIGHT_DECAY, "plateau")                      # paper Sec. 5
    assert paper.random_crop and paper.flip and paper.pca and paper.subtract_mean   # Sec. 4.1
    assert paper.batch_size == 128 and paper.model == "paper" and paper.dropout == PAPER_P
    assert RunConfig(dataset="/p", model="owt").prepared_size == PAPER_IMAGE_SIZE   # Sec. 4.1


@pytest.mark.parametrize("model", list(VARIANTS))
def test_folders_are_prepared_at_the_models_input_over_0_875(model):
    size = RunConfig(dataset="/p", model=model).prepared_size
    side = VARIANTS[model].input_size
    if side >= PAPER_CROP:
        assert size == PAPER_IMAGE_SIZE        # the paper's 256, also for its 227 arithmetic
    else:
        assert abs(side / size - PAPER_CROP / PAPER_IMAGE_SIZE) < 0.01


@pytest.mark.parametrize("changes,message", [
    (dict(lr=0), "lr: expected a finite number > 0, got 0"),
    (dict(lr=float("nan")), "lr: expected a finite number > 0"),
    (dict(momentum=1.0), "momentum: expected a number in [0, 1), got 1.0"),
    (dict(epochs=0), "epochs: expected a positive integer, got 0"),
    (dict(warmup=-1), "warmup: expected an integer >= 0, got -1"),
    (dict(patience=-1), "patience: expected an integer >= 0, got -1"),
    (dict(patience=1.5), "patience: expected an integer >= 0, got 1.5"),
    (dict(threshold=1.0), "threshold: expected a number in [0, 1), got 1.0"),
    (dict(threshold=-0.01), "threshold: expected a number in [0, 1), got -0.01"),
    (dict(batch_size=2.5), "batch_size: expected a positive integer, got 2.5"),
    (dict(flip="yes"), "flip: expected True or False, got 'yes'"),
    (dict(model="vgg"), "model: expected one of paper, one-tower"),
    (dict(init="glorot"), "init: expected one of kaiming, xavier, torch, paper"),
    (dict(schedule="cosine"), "schedule: expected one of plateau, step, none"),
    (dict(ten_crop=True), "ten_crop: needs an image folder"),
    (dict(dataset="/p", model="small", image_size=32),
     "`model` small takes 65x65 crops, larger than the 32x32 prepared images"),
])
def test_bad_settings_are_one_error_naming_the_setting(changes, message):
    with pytest.raises(ValueError) as info:
        CPU_PRESET.replace(**changes)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("epochs, patience", [(1, 1), (4, 1), (12, 1), (39, 1), (40, 2),
                                             (90, 4), (200, 10)])
def test_the_plateau_waits_one_epoch_per_twenty_planned_and_at_least_one(epochs, patience):
    assert IMAGES_PRESET.replace(epochs=epochs).plateau_patience == patience
    assert IMAGES_PRESET.replace(epochs=epochs, patience=0).plateau_patience == 0   # as given
    assert IMAGES_PRESET.threshold is None       # one standard error of the validation error


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting.*colour"):
        CPU_PRESET.replace(colour=True)


def test_flags_win_over_the_preset_and_none_means_not_given():
    config = resolve({"lr": 0.5, "epochs": None, "model": None}, "cpu")
    assert config.lr == 0.5 and config.epochs == CPU_PRESET.epochs


def test_resuming_keeps_the_checkpoints_recipe_and_frees_only_per_invocation_settings():
    saved = CPU_PRESET.replace(batch_size=32, lr=0.1, epochs=2).to_dict()
    saved["device"] = "cpu"                        # extra keys in a checkpoint are ignored
    config = resolve({"batch_size": 32, "epochs": 5, "print_freq": 0, "lr": 0.1}, "cpu",
                     saved)                        # repeating the checkpoint's values is fine
    assert config.batch_size == 32 and config.lr == 0.1
    assert config.epochs == 5 and config.print_freq == 0        # per invocation: free
    assert resolve({}, "cpu", saved).epochs == 2


@pytest.mark.parametrize("given,named", [
    ({"model": "small"}, "`model` small (the checkpoint's: mini) contradicts the checkpoint"),
    ({"dataset": "/photos"}, "`dataset` /photos (the checkpoint's: fashion-mnist)"),
    ({"batch_size": 64, "lr": 0.5, "epochs": 9},
     "`batch_size` 64 (the checkpoint's: 32), `lr` 0.5 (the checkpoint's: 0.1) contradict the"),
])
def test_a_flag_contradicting_the_checkpoint_is_refused_by_name(given, named):
    saved = CPU_PRESET.replace(batch_size=32, lr=0.1).to_dict()
    with pytest.raises(ValueError) as info:
        resolve(given, "cpu", saved)
    message = str(info.value)
    assert message.startswith("resume: ") and named in message and "\n" not in message
    assert "epochs" not in message and "another `out`" in message and "--" not in message


def test_a_flag_that_spells_the_checkpoints_setting_differently_is_no_contradiction(tmp_path):
    saved = RunConfig(dataset=str(tmp_path), model="small").to_dict()      # image_size None
    same = {"dataset": str(tmp_path) + "/", "image_size": 74, "model": "small"}
    assert resolve(same, "cpu", saved).prepared_size == 74
    with pytest.raises(ValueError, match="`image_size` 96 .the checkpoint's: None"):
        resolve({"image_size": 96}, "cpu", saved)


def test_a_folders_checkpoint_resumes_with_the_folder_preset_on_any_device():
    saved = IMAGES_PRESET.replace(dataset="/photos", model="small").to_dict()
    config = resolve({}, "gpu", saved)
    assert config.dataset == "/photos" and config.model == "small" and config.schedule == "plateau"


def test_a_batch_size_given_alone_scales_the_presets_learning_rate():
    folder = "/data/photos"
    assert resolve({"dataset": folder, "batch_size": 16}, "cpu").lr == pytest.approx(0.00125)
    assert resolve({"dataset": folder, "batch_size": 16, "lr": 0.01}, "cpu").lr == 0.01
    assert resolve({"dataset": folder}, "cpu").lr == IMAGES_PRESET.lr
    saved = IMAGES_PRESET.replace(dataset=folder, batch_size=16, lr=0.003).to_dict()
    assert resolve({"batch_size": 16}, "cpu", saved).lr == 0.003   # a resumed run keeps its own
