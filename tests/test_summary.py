"""model_summary(): per-layer output shapes, parameter counts and memory, against published
tables (the paper's Fig. 2, torchsummary and Keras summaries of the same nets)."""
import numpy as np
import pytest

from minialex import backend, nn
from minialex.layers.dropout import PAPER_P
from minialex.models import POOL, alexnet
from minialex.summary import Row, model_summary

# torchsummary's table of the ``small`` net built in PyTorch (3x65x65 input, 2 classes), row by
# row.
TORCHSUMMARY_SMALL = [
    ("Conv2d", (48, 55, 55), 17_472), ("ReLU", (48, 55, 55), 0), ("MaxPool2d", (48, 27, 27), 0),
    ("Conv2d", (128, 27, 27), 153_728), ("ReLU", (128, 27, 27), 0),
    ("MaxPool2d", (128, 13, 13), 0),
    ("Conv2d", (192, 13, 13), 221_376), ("ReLU", (192, 13, 13), 0),
    ("Conv2d", (192, 13, 13), 331_968), ("ReLU", (192, 13, 13), 0),
    ("Conv2d", (128, 13, 13), 221_312), ("ReLU", (128, 13, 13), 0),
    ("MaxPool2d", (128, 6, 6), 0),
    ("Linear", (2048,), 9_439_232), ("ReLU", (2048,), 0), ("Dropout", (2048,), 0),
    ("Linear", (2048,), 4_196_352), ("ReLU", (2048,), 0), ("Dropout", (2048,), 0),
    ("Linear", (2,), 4_098),
]
TORCHSUMMARY_SMALL_FOOTER = ["Total params: 14,585,538", "Trainable params: 14,585,538",
                   "Non-trainable params: 0", "Input size (MiB): 0.05",
                   "Forward/backward pass size (MiB): 5.52", "Params size (MiB): 55.64",
                   "Estimated Total Size (MiB): 61.21"]

# Keras's model.summary() of a one-channel AlexNet (1x224x224 input, no conv padding in conv1,
# 1000 classes); Keras fuses the ReLU into Conv2D/Dense, so it has no ReLU rows.
KERAS_224 = [
    ("Conv2d", (96, 54, 54), 11_712), ("MaxPool2d", (96, 26, 26), 0),
    ("Conv2d", (256, 26, 26), 614_656), ("MaxPool2d", (256, 12, 12), 0),
    ("Conv2d", (384, 12, 12), 885_120), ("Conv2d", (384, 12, 12), 1_327_488),
    ("Conv2d", (256, 12, 12), 884_992), ("MaxPool2d", (256, 5, 5), 0),
    ("Flatten", (6400,), 0), ("Linear", (4096,), 26_218_496), ("Dropout", (4096,), 0),
    ("Linear", (4096,), 16_781_312), ("Dropout", (4096,), 0), ("Linear", (1000,), 4_097_000),
]

# The paper's net (Krizhevsky et al. 2012, Sec. 3.5 and Fig. 2) at 227x227 input: output shapes
# (C, H, W) and parameters per layer.
PAPER = [
    ("features.0", (96, 55, 55), 34_944), ("features.3", (96, 27, 27), 0),
    ("features.4", (256, 27, 27), 307_456), ("features.7", (256, 13, 13), 0),
    ("features.8", (384, 13, 13), 885_120), ("features.10", (384, 13, 13), 663_936),
    ("features.12", (256, 13, 13), 442_624), ("features.14", (256, 6, 6), 0),
    ("classifier.0", (4096,), 37_752_832), ("classifier.3", (4096,), 16_781_312),
    ("classifier.6", (1000,), 4_097_000),
]
# Neurons per layer in the paper's Fig. 2 after conv2..conv5 (conv1's 253,440 is the paper's
# well-known slip: 55*55*96 = 290,400).
PAPER_FIG2 = {"features.4": 186_624, "features.8": 64_896, "features.10": 64_896,
              "features.12": 43_264, "classifier.0": 4096, "classifier.3": 4096,
              "classifier.6": 1000}


def table(s):
    return [(r.type, r.output_shape[1:], r.params) for r in s.rows]


def test_small_reproduces_the_torchsummary_table_totals_and_memory():
    s = model_summary(alexnet("small"), (3, 65, 65))
    assert table(s) == TORCHSUMMARY_SMALL
    assert [r.name for r in s.rows][:3] == ["features.0", "features.1", "features.2"]
    assert s.rows[-1].name == "classifier.6"
    assert s.total_params == s.trainable_params == 14_585_538
    assert s.param_bytes == 4 * 14_585_538
    assert s.input_bytes == 4 * 3 * 65 * 65
    text = str(s)
    for line in TORCHSUMMARY_SMALL_FOOTER:
        assert line in text
    assert "features.0        Conv2d" in text and "[-1, 48, 55, 55]" in text


def test_paper_shapes_and_parameters_per_layer():
    s = model_summary(alexnet("paper"), (3, 227, 227))
    rows = {r.name: r for r in s.rows}
    assert [(name, rows[name].output_shape[1:], rows[name].params) for name, _, _ in PAPER] \
        == PAPER
    for name, neurons in PAPER_FIG2.items():
        assert int(np.prod(rows[name].output_shape[1:])) == neurons
    assert s.total_params == 60_965_224


def test_keras_one_channel_net():
    pool = POOL
    model = nn.Sequential(
        nn.Conv2d(1, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(**pool),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(**pool),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(**pool),
        nn.Flatten(), nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(PAPER_P),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(PAPER_P), nn.Linear(4096, 1000))
    s = model_summary(model, (1, 224, 224))
    assert [row for row in table(s) if row[0] != "ReLU"] == KERAS_224
    assert s.total_params == 50_820_776
    assert s.rows[0].name == "0"


def test_batch_and_dtype_scale_the_activation_memory_only():
    model = alexnet("mini")
    one, three = model_summary(model, (1, 28, 28)), model_summary(model, (1, 28, 28), batch_size=3)
    assert three.activation_bytes == 3 * one.activation_bytes
    assert three.rows[0].output_shape == (3, 32, 28, 28)
    assert three.param_bytes == one.param_bytes == 4 * one.total_params
    assert one.activation_bytes == 4 * sum(int(np.prod(r.output_shape)) for r in one.rows)
    double = model_summary(model.double(), (1, 28, 28), dtype=np.float64)
    assert double.activation_bytes == 2 * one.activation_bytes
    assert double.param_bytes == 2 * one.param_bytes


def test_summary_leaves_model_mode_forwards_and_random_stream_alone():
    model = alexnet("mini")
    state = backend.get_rng_state()
    model_summary(model, (1, 28, 28))
    assert model.training and all(m.training for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())
    assert backend.get_rng_state() == state    # eval mode: dropout drew nothing
    model.eval()
    model_summary(model, (1, 28, 28))
    assert not any(m.training for m in model.modules())


def test_summary_of_a_single_layer():
    s = model_summary(nn.Conv2d(3, 8, 3), (3, 5, 5))
    assert s.rows == [Row("Conv2d", "Conv2d", (1, 8, 3, 3), 8 * 3 * 9 + 8)]


def test_too_small_input_names_the_failing_layer_and_the_expected_input():
    with pytest.raises(ValueError, match=r"features\.\d+ \(\w+\).*expects input \(3, 65, 65\), "
                                         r"got \(3, 20, 20\)"):
        model_summary(alexnet("small"), (3, 20, 20))


def test_wrong_channels_name_expected_and_actual():
    with pytest.raises(ValueError, match=r"expects input \(1, 28, 28\), got \(3, 28, 28\)"):
        model_summary(alexnet("mini"), (3, 28, 28))


@pytest.mark.parametrize("shape", [(3, 0, 28), (3, 28.0, 28), 28, ()])
def test_bad_input_shape_is_refused(shape):
    with pytest.raises(ValueError, match="input_shape"):
        model_summary(alexnet("mini"), shape)

