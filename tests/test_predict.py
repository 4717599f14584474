"""Using a trained checkpoint on image files: top-k names and probabilities (centre crop or the
paper's 10 crops) equal to the evaluation pipeline's, unreadable files skipped and counted, the
command line, and one clear line for a missing checkpoint."""
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minialex import predict, recipe
from minialex.config import CPU_PRESET, IMAGES_PRESET
from minialex.report import collect_predictions
from minialex.train import evaluate_ten_crop

from support import CORRUPT, ROOT, learnable_fashion_mnist, synthetic_photos
from support import PHOTO_CLASSES as CLASSES

SCRIPT = ROOT / "examples" / "predict.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `mini` checkpoint of an image folder (3 classes), and the folder and cache."""
    root = tmp_path_factory.mktemp("predict")
    photos = synthetic_photos(root / "photos", n_train=12, n_val=6)
    config = IMAGES_PRESET.replace(dataset=str(photos), model="mini", image_size=32,
                                   batch_size=12, print_freq=0, epochs=3, warmup=2)
    recipe.fit(config, out=str(root / "run"), cache=str(root / "cache"), workers=0,
               stream=io.StringIO())
    return root / "run" / "last.npz", photos, root / "cache"


def test_classifying_files_gives_what_evaluating_the_prepared_images_gives(trained):
    checkpoint, photos, cache = trained
    run, expected = predict.checkpoint_predictions(checkpoint, cache=cache, workers=0)
    files = [str(photos / rel) for rel in run.data.folder.files("val")]
    classifier = predict.Classifier.from_checkpoint(checkpoint, cache=cache, workers=0,
                                                    ten_crop=True)
    found, skipped = classifier.classify(files, k=5)
    assert skipped == [] and [p.path for p in found] == files
    assert classifier.classes == list(CLASSES)
    for item, probs in zip(found, expected.probs):
        assert len(item.top) == 3                           # only 3 classes to rank
        names, values = zip(*item.top)
        assert list(values) == sorted(values, reverse=True)
        np.testing.assert_allclose(values, np.sort(probs)[::-1], rtol=1e-5, atol=1e-6)
        assert names[0] == list(CLASSES)[int(np.argmax(probs))]
    ten, _ = classifier.classify(files[:4], k=2, ten_crop=True)
    assert [len(t.top) for t in ten] == [2] * 4
    assert all(0 < sum(p for _, p in t.top) <= 1 + 1e-6 for t in ten)


def test_ten_crops_of_files_give_what_the_ten_crop_evaluation_gives(trained):
    checkpoint, photos, cache = trained
    run = predict.load_run(checkpoint, cache=cache, workers=0, ten_crop=True)
    expected = evaluate_ten_crop(run.model, run.ten_crop_loader)
    files = [str(photos / rel) for rel in run.data.folder.files("val")]
    _, labels = run.data.test.get_batch(np.arange(len(run.data.test)))
    classifier = predict.Classifier(run)
    found, _ = classifier.classify(files, k=3, ten_crop=True)
    probs = np.array([[dict(item.top)[name] for name in CLASSES] for item in found])
    assert len(probs) == expected["images"] == len(files)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    loss = -np.log(probs[np.arange(len(labels)), labels]).mean()      # -log p[label]
    assert loss == pytest.approx(expected["loss"], rel=1e-4)
    assert (probs.argmax(axis=1) == labels).mean() == pytest.approx(expected["top1"])
    centre = classifier.probabilities(np.stack([classifier.load(f) for f in files]))
    assert not np.allclose(centre, probs, atol=1e-4)     # the crops made a difference


def write_test_split_as_pngs(run, folder) -> list:
    """The test split's 28x28 grey images written as PNG files; their paths, in split order."""
    images, _ = run.data.test.get_batch(np.arange(len(run.data.test)))
    files = [str(folder / f"{i}.png") for i in range(len(images))]
    for path, image in zip(files, images):
        Image.fromarray(image[0]).save(path)
    return files


def test_a_fashion_mnist_png_gets_the_probabilities_evaluation_gives(tmp_path):
    """The `fmnist` model takes 224x224 inputs made from 28x28 images: a file must become the
    28x28 image first, then go through the evaluation transform, as the test split does."""
    data_dir = learnable_fashion_mnist(tmp_path / "data", n_train=20, n_test=6)
    config = CPU_PRESET.replace(model="fmnist", limit_train=20, val_size=0, print_freq=0)
    run = recipe.build(config, recipe.load_data(config, data_dir=data_dir), "cpu")
    run.model.eval()
    expected = collect_predictions(run.model, run.test_loader, run.data.classes).probs
    files = write_test_split_as_pngs(run, tmp_path)
    classifier = predict.Classifier(run)
    assert classifier.size == 28 and run.model.input_size == 224
    np.testing.assert_allclose(classifier.probabilities(np.stack(
        [classifier.load(f) for f in files])), expected, rtol=1e-4, atol=1e-6)


def test_a_fashion_mnist_checkpoint_classifies_files_without_the_dataset(tmp_path, monkeypatch):
    data_dir = learnable_fashion_mnist(tmp_path / "data", n_train=300, n_test=20)
    config = CPU_PRESET.replace(val_size=60, batch_size=32, print_freq=0, epochs=1, warmup=4,
                                schedule="plateau")
    recipe.fit(config, out=str(tmp_path / "run"), data_dir=data_dir, stream=io.StringIO())
    run = predict.load_run(tmp_path / "run" / "last.npz", data_dir=data_dir)
    expected = collect_predictions(run.model, run.test_loader, run.data.classes).probs
    files = write_test_split_as_pngs(run, tmp_path)

    def no_files(*args, **kwargs):
        raise FileNotFoundError("Fashion-MNIST is not installed")
    monkeypatch.setattr(recipe, "load_fashion_mnist", no_files)
    found, skipped = predict.classify_files(tmp_path / "run" / "last.npz", files, k=10)
    assert skipped == [] and len(found) == len(files)
    for item, probs in zip(found, expected):
        top = dict(item.top)
        np.testing.assert_allclose([top[c] for c in run.data.classes], probs, rtol=1e-4,
                                   atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not installed"):   # the splits still need it
        predict.load_run(tmp_path / "run" / "last.npz")


def test_the_command_prints_top_classes_per_file_and_counts_unreadable_ones(trained, tmp_path):
    checkpoint, photos, cache = trained
    done = subprocess.run([sys.executable, str(SCRIPT), str(checkpoint), str(photos / "train"
                                                                               / "apple"),
                           "--cache", str(cache), "--top", "2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 12 and all(line.count("%") == 2 for line in lines)
    assert any(name in lines[0] for name in CLASSES)
    assert f"skipped 1 unreadable file(s): {photos / CORRUPT}" in done.stderr
    assert "12 file(s) classified, 1 skipped" in done.stderr

    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.npz"),
                              str(photos)], capture_output=True, text=True, timeout=120,
                             cwd=ROOT)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == f"predict.py: error: checkpoint {tmp_path / 'nope.npz'} not found\n"


def test_ten_crops_need_an_image_folder_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.npz not found"):
        predict.classify_files(tmp_path / "no_such.npz", [tmp_path])
    assert predict.top_classes(np.array([0.2, 0.5, 0.2, 0.1]), list("abcd"), 3) == [
        ("b", 0.5), ("a", 0.2), ("c", 0.2)]
