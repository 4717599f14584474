"""AlexNet variants: parameter counts, structure, names, init."""
import math

import numpy as np
import pytest

import minialex
from minialex import nn
from minialex.layers.loss import cross_entropy
from minialex.layers.lrn import PAPER_ALPHA, PAPER_BETA, PAPER_K, PAPER_SIZE
from minialex.models import VARIANTS, alexnet
from minialex.optim import SGD

# Expected totals: counted from the paper's Fig. 2 (two towers, and the same net on one device
# with CaffeNet's widths), torchvision's alexnet(), torchsummary's table of the ``small`` net,
# and d2l.ai's Fashion-MNIST AlexNet.
PARAM_COUNTS = {
    ("paper", 1000): 60_965_224,
    ("one-tower", 1000): 62_378_344,
    ("owt", 1000): 61_100_840,
    ("small", 2): 14_585_538,
    ("fmnist", 10): 46_764_746,
}
# Paper (Krizhevsky et al. 2012, Fig. 2), per layer: conv1..conv5, fc6..fc8.
PAPER_LAYER_PARAMS = [34_944, 307_456, 885_120, 663_936, 442_624, 37_752_832, 16_781_312,
                      4_097_000]
# torchvision.models.alexnet().state_dict(): names and shapes, in order.
TORCHVISION_ALEXNET = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]
DEFAULTS = {  # variant: (input_size, in_channels, num_classes)
    "paper": (227, 3, 1000), "one-tower": (227, 3, 1000), "owt": (224, 3, 1000),
    "small": (65, 3, 2), "fmnist": (224, 1, 10), "mini": (28, 1, 10),
}

_built = {}


def built(variant):
    """Big models are built once per test session (each costs about a second)."""
    if variant not in _built:
        minialex.manual_seed(0)
        _built[variant] = alexnet(variant)
    return _built[variant]


def layer_types(sequential):
    return [type(m).__name__ for m in sequential]


def weighted(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("variant, classes", list(PARAM_COUNTS), ids=lambda v: str(v))
def test_parameter_count_matches_oracle(variant, classes):
    model = built(variant)
    assert model.num_classes == classes
    assert model.num_parameters() == PARAM_COUNTS[variant, classes]


def test_paper_per_layer_parameters_and_towers():
    model = built("paper")
    layers = weighted(model)
    assert [m.num_parameters() for m in layers] == PAPER_LAYER_PARAMS
    assert [m.groups for m in layers[:5]] == [1, 2, 1, 2, 2]


@pytest.mark.parametrize("variant", list(DEFAULTS))
def test_variant_defaults(variant):
    model = built(variant) if variant != "mini" else alexnet("mini")
    size, channels, classes = DEFAULTS[variant]
    assert (model.input_size, model.in_channels, model.num_classes) == (size, channels, classes)
    assert model.input_shape == (channels, size, size)
    assert model.variant == variant
    assert set(VARIANTS) == set(DEFAULTS)


def test_mini_parameter_count_and_forward_backward():
    model = alexnet("mini")
    assert model.num_parameters() == 285_322
    x = minialex.Tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28))
                        .astype(np.float32))
    y = model(x)
    assert y.shape == (2, 10)
    y.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_num_classes_and_in_channels_change_only_their_layers():
    model = alexnet("small", num_classes=10, in_channels=1)
    assert model.num_parameters() == (14_585_538 - 4_098 + (2048 * 10 + 10)
                                      - 2 * 11 * 11 * 48)
    assert model.classifier[6].weight.shape == (10, 2048)
    assert model.features[0].weight.shape == (48, 1, 11, 11)


def test_owt_state_dict_names_and_shapes_are_torchvisions():
    model = built("owt")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == TORCHVISION_ALEXNET
    assert layer_types(model.classifier) == ["Dropout", "Linear", "ReLU", "Dropout", "Linear",
                                             "ReLU", "Linear"]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert "LocalResponseNorm" not in layer_types(model.features)


def test_paper_layer_order_and_dropout_on_fc6_fc7_outputs():
    model = alexnet("mini")
    assert layer_types(model.features) == [
        "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
        "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
        "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    # the paper drops fc6's and fc7's outputs (Sec. 4.2; d2l.ai's and Caffe's order), not pool5's
    # as torchvision does
    assert layer_types(model.classifier) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU",
                                             "Dropout", "Linear"]
    assert [m.groups for m in model.features if isinstance(m, nn.Conv2d)] == [1, 2, 1, 2, 2]
    assert model.avgpool is None


def test_caffe_lrn_position_puts_lrn_after_the_pool_and_keeps_names():
    paper, caffe = alexnet("mini"), alexnet("mini", lrn_position="caffe")
    assert layer_types(caffe.features)[:8] == [
        "Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm",
        "Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]
    assert list(caffe.state_dict()) == list(paper.state_dict())
    assert caffe(np.zeros((1, 1, 28, 28), dtype=np.float32)).shape == (1, 10)


def test_lrn_uses_the_papers_constants():
    lrn = alexnet("mini").features[2]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K)
    assert lrn.convention == "paper"


def test_dropout_mode_and_rate_reach_the_layers():
    model = alexnet("mini", dropout_mode="paper", dropout=0.3)
    drops = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [(d.p, d.mode) for d in drops] == [(0.3, "paper"), (0.3, "paper")]


def test_paper_init_std_and_bias_pattern():
    model = alexnet("small", init="paper")
    layers = weighted(model)
    for layer in layers:
        w = layer.weight.numpy()
        assert w.dtype == np.float32
        assert abs(w.std() - 0.01) < 0.01 * 0.05, layer
        assert abs(w.mean()) < 0.01 * 0.05
    biases = [float(np.unique(m.bias.numpy()).item()) for m in layers]
    assert biases == [0, 1, 0, 1, 1, 1, 1, 0]  # conv2, conv4, conv5, fc6, fc7 start at 1


def test_kaiming_init_is_the_default_and_uses_grouped_fan_in():
    model = alexnet("mini")
    for layer in weighted(model)[:-1]:   # fc8 has only 2,560 weights: std too noisy to test
        w = layer.weight.numpy()
        fan_in = math.prod(w.shape[1:])  # conv: in_channels / groups * KH * KW
        assert abs(w.std() / math.sqrt(2 / fan_in) - 1) < 0.06, layer
        assert not layer.bias.numpy().any()


def test_xavier_init_is_glorot_uniform_over_grouped_fans():
    model = alexnet("small", init="xavier")
    for layer in weighted(model):
        w = layer.weight.numpy()
        fan_in = math.prod(w.shape[1:])                  # in_channels / groups * KH * KW
        fan_out = w.shape[0] * math.prod(w.shape[2:])    # out_channels * KH * KW
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound, layer
        assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.1, layer   # U(-a, a): std a/sqrt3
        assert not layer.bias.numpy().any()


def test_torch_init_is_pytorchs_default_for_weights_and_biases():
    model = alexnet("mini", init="torch")
    for layer in weighted(model):
        w, b = layer.weight.numpy(), layer.bias.numpy()
        bound = 1 / math.sqrt(math.prod(w.shape[1:]))    # kaiming_uniform_(a=sqrt(5))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound, layer
        assert np.abs(b).max() <= bound and b.std() > 0, layer


def test_same_seed_same_model_other_seed_other_model():
    minialex.manual_seed(7)
    a = alexnet("mini").state_dict()
    minialex.manual_seed(7)
    b = alexnet("mini").state_dict()
    minialex.manual_seed(8)
    c = alexnet("mini").state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.0.weight"], c["features.0.weight"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(variant="vgg"), "paper, one-tower, owt, small, fmnist, mini"),
    (dict(variant="mini", lrn_position="before"), "lrn_position"),
    (dict(variant="mini", init="glorot"), "init"),
    (dict(variant="mini", num_classes=0), "num_classes"),
    (dict(variant="mini", in_channels=2.0), "in_channels"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alexnet(**kwargs)


def test_wrong_input_size_or_channels_names_the_expected_input():
    model = alexnet("small")
    with pytest.raises(ValueError, match=r"expects 4608.*65x65"):
        model(np.zeros((1, 3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, 65, 65\)"):
        model(np.zeros((1, 1, 65, 65), dtype=np.float32))


def test_mini_learns_a_fixed_batch_with_the_papers_sgd():
    model = alexnet("mini", dropout=0.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, 16)
    opt = SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0], losses


# -- ablation switches (paper Sec. 3): activation, pool, lrn -----------------------------------
def test_tanh_replaces_every_relu_and_starts_from_the_same_weights():
    minialex.manual_seed(3)
    relu = alexnet("mini")
    minialex.manual_seed(3)
    tanh = alexnet("mini", activation="tanh")
    kinds = [type(m).__name__ for m in tanh.modules()]
    assert "ReLU" not in kinds and kinds.count("Tanh") == 7     # conv1-5, fc6, fc7
    assert layer_types(tanh.features) == [k.replace("ReLU", "Tanh")
                                          for k in layer_types(relu.features)]
    for (name, a), (_, b) in zip(relu.named_parameters(), tanh.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    relu.eval(), tanh.eval()
    assert np.abs(tanh(x).data).max() > 0
    assert not np.allclose(tanh(x).data, relu(x).data)


def test_non_overlapping_pools_are_2x2_stride_2_and_fc6_follows_the_map_size():
    model = alexnet("mini", pool="non-overlapping")
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    assert all((p.kernel_size, p.stride) in ((2, 2), ((2, 2), (2, 2))) for p in pools)
    assert model.flat_features == 64 * 3 * 3        # 28 -> 14 -> 7 -> 3 (overlapping: 2x2)
    assert alexnet("mini").flat_features == 64 * 2 * 2
    assert model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape == (2, 10)


def test_non_overlapping_pools_keep_the_papers_map_sizes_and_parameter_count():
    # 55 -> 27 -> 13 -> 6 with z = 3 or z = 2 at s = 2: the paper's comparison changes nothing else
    model = alexnet("paper", pool="non-overlapping")
    assert model.flat_features == built("paper").flat_features == 256 * 6 * 6
    assert model.num_parameters() == PARAM_COUNTS["paper", 1000]


@pytest.mark.parametrize("variant, lrn, count", [("mini", None, 2), ("mini", False, 0),
                                                 ("mini", True, 2), ("small", None, 0),
                                                 ("small", True, 2)])
def test_lrn_switch_overrides_the_variants_own(variant, lrn, count):
    model = alexnet(variant, lrn=lrn)
    norms = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    assert len(norms) == count
    assert model.num_parameters() == alexnet(variant).num_parameters()   # LRN has no weights


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="sigmoid"), "activation must be one of"),
    (dict(pool="average"), "pool must be one of"),
    (dict(lrn=1), "lrn must be True, False or None"),
])
def test_bad_ablation_switches_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alexnet("mini", **kwargs)
