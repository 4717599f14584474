"""Fine-tuning from pretrained weights: conv1 adapted by its rule, fc8 replaced for the folder's
classes, frozen features left bit-identical, and the weights' preprocessing used for training,
recorded in the checkpoint, and used again by evaluate and predict."""
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import minialex
from minialex import checkpoint, finetune, predict, recipe
from minialex import config as cfg
from minialex.data.folder import load_rgb, resize_center_crop
from minialex.models import alexnet
from minialex.tensor import Tensor, no_grad
from minialex.train import train_one_epoch
from minialex.watch import TrainingStalled
from minialex.weights import CAFFE, TORCHVISION, imagenet_classes, save_torchvision

from support import PHOTO_CLASSES as CLASSES
from support import ROOT, learnable_fashion_mnist, synthetic_photos


def run_example(script, *argv):
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, argv)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """A `mini` checkpoint of Fashion-MNIST-like grey images (1 input channel, 10 classes)."""
    root = tmp_path_factory.mktemp("grey")
    data = learnable_fashion_mnist(root / "fmnist", n_train=200, n_test=40)
    config = cfg.CPU_PRESET.replace(val_size=40, batch_size=32, limit_test=40, print_freq=0,
                                    warmup=2, epochs=1)
    recipe.fit(config, out=str(root / "run"), data_dir=data, stream=io.StringIO())
    return root / "run" / "last.npz"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return synthetic_photos(root / "photos", n_train=16, n_val=10), root / "cache"


@pytest.fixture(scope="module")
def owt_file(tmp_path_factory):
    """torchvision's AlexNet as a .pth file (random weights, ImageNet's 1,000 outputs), with
    fc8's bias making class 207 win every image by far."""
    minialex.manual_seed(0)
    model = alexnet("owt", init="torch")
    bias = np.zeros(1000, np.float32)
    bias[207] = 50.0
    model.classifier[6].bias.data = bias
    path = tmp_path_factory.mktemp("owt") / "alexnet-owt-test.pth"
    save_torchvision(path, model)
    return path


def test_grey_weights_start_an_rgb_model_that_gives_the_grey_response(grey):
    source = finetune.load_source(grey)
    assert source.kind == "minialex" and source.model.in_channels == 1
    assert source.preprocessing is None        # minialex's own: the new data's statistics
    config = finetune.settle(cfg.IMAGES_PRESET.replace(dataset="photos"), source)
    assert config.model == "mini"
    minialex.manual_seed(3)
    model, notes = finetune.start_model(source, config, in_channels=3, num_classes=4)
    assert any("conv1 adapted from 1 to 3 input channels" in n for n in notes)
    theirs, ours = source.model.state_dict(), model.state_dict()
    np.testing.assert_array_equal(ours["features.0.weight"],
                                  np.repeat(theirs["features.0.weight"], 3, axis=1) / 3)
    for name in theirs:                      # everything else as trained, but fc8
        if not name.startswith(("features.0.weight", "classifier.6")):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert ours["classifier.6.weight"].shape == (4, 256) and model.num_classes == 4
    assert 0.008 < ours["classifier.6.weight"].std() < 0.012
    assert not ours["classifier.6.bias"].any()
    # a grey image as RGB: the same features as the grey network's
    g = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with no_grad():
        rgb = model.eval().features(Tensor(np.repeat(g, 3, axis=1))).data
        expected = source.model.features(Tensor(g)).data
    np.testing.assert_allclose(rgb, expected, rtol=1e-4, atol=1e-5)


def test_conv1_rules_both_ways_and_refusal():
    w = np.random.default_rng(0).normal(size=(4, 3, 5, 5)).astype(np.float32)
    summed, note = finetune.adapt_conv1(w, 1)
    np.testing.assert_allclose(summed[:, 0], w.sum(axis=1), rtol=1e-6)
    assert "summed" in note
    assert finetune.adapt_conv1(w, 3) == (w, None)
    with pytest.raises(ValueError, match="conv1 takes 3 input channels and the data has 4"):
        finetune.adapt_conv1(w, 4)


def test_fit_from_a_minialex_checkpoint_replaces_fc8_for_the_folders_classes(grey, photos,
                                                                            tmp_path):
    folder, cache = photos
    config = cfg.resolve({"dataset": str(folder), "pretrained": str(grey), "image_size": 32,
                          "batch_size": 8, "print_freq": 0, "epochs": 1}, "cpu")
    # the fine-tuning preset: a tenth of the folder preset's rate (at batch 8), no warm-up
    assert config.warmup == 0 and config.schedule == "step"
    assert config.lr == pytest.approx(cfg.IMAGES_PRESET.lr / 10 * 8 / 128)
    out = io.StringIO()
    summary = recipe.fit(config.replace(lr=0.02, epochs=6), out=str(tmp_path / "run"),
                         cache=str(cache), workers=0, stream=out,
                         overrides={"pretrained": str(grey)})
    text = out.getvalue()
    assert f"fine-tuning from {grey}; fc8 replaced: 10 classes -> 3" in text
    assert "conv1 adapted from 1 to 3 input channels" in text
    assert summary["model"] == "mini" and summary["classes"] == list(CLASSES)
    tree = checkpoint.load(tmp_path / "run" / "last.npz")
    assert tree["model"]["classifier.6.weight"].shape == (3, 256)
    assert tree["model"]["features.0.weight"].shape[1] == 3
    assert tree["preprocessing"] is None and tree["config"]["pretrained"] == str(grey)
    with pytest.raises(ValueError, match=r"pretrained: `model` small \(the weights': mini\) "
                                         r"contradicts"):
        recipe.fit(config.replace(model="small", image_size=74), out=str(tmp_path / "other"),
                   cache=str(cache), workers=0, stream=io.StringIO(),
                   overrides={"model": "small"})


def test_freeze_features_leaves_conv_weights_bit_identical_while_the_classifier_moves(grey,
                                                                                      photos):
    folder, cache = photos
    config = cfg.resolve({"dataset": str(folder), "pretrained": str(grey), "image_size": 32,
                          "batch_size": 8, "freeze": "features", "lr": 0.05}, "cpu")
    source = finetune.load_source(grey)
    data = recipe.load_data(config, cache=str(cache), workers=0)
    run = recipe.build(config, data, origin=source.origin(), pretrained=source)
    assert "features frozen" in run.notes[-1]
    features = {id(p) for p in run.model.features.parameters()}
    assert not features & {id(p) for p in run.optimizer.params}      # no update, no decay
    before = {k: v.copy() for k, v in run.model.state_dict().items()}
    train_one_epoch(run.model, run.train_loader, run.optimizer)
    after = run.model.state_dict()
    for name in before:
        if name.startswith("features."):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
            assert dict(run.model.named_parameters())[name].grad is None, name
        else:
            assert not np.array_equal(after[name], before[name]), name
    with pytest.raises(ValueError, match="freeze: frozen layers need trained weights"):
        cfg.RunConfig(freeze="features").check()


def test_an_imported_torch_file_fine_tunes_with_its_preprocessing_kept_for_evaluate_and_predict(
        owt_file, photos, tmp_path):
    folder, cache = photos
    config = cfg.resolve({"dataset": str(folder), "pretrained": str(owt_file), "batch_size": 4,
                          "limit_train": 8, "limit_test": 4, "print_freq": 0, "epochs": 1,
                          "freeze": "features"}, "cpu")
    out = io.StringIO()
    # one step of a random net tested on 4 images: whether it ends "at chance" is not the point
    with contextlib.suppress(TrainingStalled):
        recipe.fit(config, out=str(tmp_path / "run"), cache=str(cache), workers=0, stream=out)
    assert "fc8 replaced: 1000 classes -> 3" in out.getvalue()
    assert "torchvision's: RGB, 256 -> 224, mean (0.485, 0.456, 0.406)" in out.getvalue()
    last = tmp_path / "run" / "last.npz"
    tree = checkpoint.load(last)
    assert tree["architecture"] == "owt" and tree["preprocessing"] == TORCHVISION.to_dict()
    assert tree["model"]["classifier.6.weight"].shape == (3, 4096)

    # evaluate: the test transform is torchvision's normalisation of the centre crop
    run, _ = recipe.load_checkpoint(last, cache=str(cache), workers=0)
    assert run.preprocessing == TORCHVISION
    images, _ = run.data.test.get_batch(np.arange(2))
    centre = images[:, 16:240, 16:240]
    np.testing.assert_allclose(run.test_loader.transform(images), TORCHVISION.normalize(centre),
                               rtol=1e-5, atol=1e-5)
    # predict: a file prepared the same way
    path = folder / "val" / "sky" / "1.jpg"
    classifier = predict.Classifier.from_checkpoint(last, cache=str(cache), workers=0)
    with load_rgb(path) as image:
        x = TORCHVISION.normalize(resize_center_crop(image, 256)[None, 16:240, 16:240])
    with no_grad():
        logits = run.model(Tensor(x)).data[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    found, _ = classifier.classify([str(path)], k=3)
    assert [name for name, _ in found[0].top][0] == list(CLASSES)[int(np.argmax(expected))]
    np.testing.assert_allclose(sorted(p for _, p in found[0].top), np.sort(expected),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prep", [TORCHVISION, CAFFE], ids=["torchvision", "caffe"])
def test_the_augmenters_evaluation_is_the_preprocessings_normalisation(prep):
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    augmenter = finetune.PreprocessedAugmenter(prep, crop=32, random_crop=False, flip=False)
    np.testing.assert_allclose(augmenter.eval(images), prep.normalize(images[:, 4:36, 4:36]),
                               rtol=1e-5, atol=1e-4)
    ten = augmenter.ten_crop(images)
    np.testing.assert_allclose(ten[4], augmenter.eval(images), rtol=1e-6, atol=1e-6)


def test_a_checkpoints_origin_gives_a_rebuilt_model_cafes_lrn_constants(grey, photos):
    constants = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "convention": "pytorch"}
    origin = finetune.Origin(CAFFE, constants)
    restored = finetune.Origin.from_tree(json.loads(json.dumps(origin.state())))
    assert restored == origin
    folder, cache = photos
    config = cfg.IMAGES_PRESET.replace(dataset=str(folder), model="mini", image_size=32)
    run = recipe.build(config, recipe.load_data(config, cache=str(cache), workers=0),
                       origin=restored)
    norm = run.model.features[2]
    assert (norm.k, norm.convention) == (1.0, "pytorch") and run.preprocessing == CAFFE


def test_retrieval_within_one_folder_leaves_each_query_out_of_its_neighbours():
    from minialex import visualize
    from minialex.data import ArrayDataset
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(3, axis=3)
    found = ArrayDataset(images, np.array([0, 0, 0, 1, 1, 1]))
    near = visualize.retrieval(found, found, queries=None, k=2, exclude_self=True)
    assert not (near["neighbours"] == near["queries"][:, None]).any()
    # 0: 1, 2 / 1: 0, 2 / 2: 1, 3 / 3: 2, 4 / 4: 3, 5 / 5: 4, 3 (ties by index)
    assert near["share"] == pytest.approx((2 + 2 + 1 + 1 + 2 + 2) / 12)


def test_predict_with_imported_weights_prints_imagenet_labels(owt_file, photos):
    folder, _ = photos
    done = run_example("predict.py", "--weights", owt_file, folder / "val" / "sky" / "1.jpg",
                       "--top", "2")
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[0]
    assert line.startswith(f"{folder / 'val' / 'sky' / '1.jpg'}: {imagenet_classes()[207]} ")
    assert "1 file(s) classified, 0 skipped" in done.stderr


def test_report_draws_fig_3_and_4_from_imported_weights(owt_file, photos, tmp_path):
    folder, _ = photos
    done = run_example("report.py", tmp_path / "figures", "--weights", owt_file, "--images",
                       folder / "val", "--neighbours", "2")
    assert done.returncode == 0, done.stderr
    assert "conv1: 64 filters, 1 tower(s) of 64" in done.stdout
    assert "same-class share of the 2 nearest among 30 images of 3 class(es)" in done.stdout
    for name in ("filters.png", "retrieval.png", "retrieval_pixels.png"):
        assert (tmp_path / "figures" / name).exists()

