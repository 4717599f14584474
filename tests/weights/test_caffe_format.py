"""Caffe's caffemodel into alexnet("paper") (minialex/weights/caffe_format.py, protobuf.py,
pretrained.py), on files these tests write with a small protocol-buffer writer in both of
Caffe's layouts: ``layer`` (field 100, LayerParameter) and the model zoo's ``layers`` (field
2, V1LayerParameter), with packed and unpacked floats, new and legacy 4-D blob shapes."""

import numpy as np
import pytest

from minialex.weights import caffe_format, detect_format, load_pretrained, protobuf

from conftest import TOL
from protobuf_writer import f_bytes, f_float, f_varint, key, varint


def unpacked_floats(number, values) -> bytes:
    """One 32-bit field per value (tag byte, 4 bytes), built vectorised."""
    values = np.asarray(values, "<f4").ravel()
    records = np.empty((len(values), 5), np.uint8)
    records[:, 0] = key(number, protobuf.FIXED32)[0]
    records[:, 1:] = values.view(np.uint8).reshape(-1, 4)
    return records.tobytes()


def blob(array, legacy: bool) -> bytes:
    if legacy:   # num, channels, height, width padded with leading 1s; floats unpacked
        dims = (1,) * (4 - array.ndim) + array.shape
        return b"".join(f_varint(n, d) for n, d in zip((1, 2, 3, 4), dims)) + unpacked_floats(
            5, array)
    shape = f_bytes(1, b"".join(varint(d) for d in array.shape))
    return f_bytes(7, shape) + f_bytes(5, np.asarray(array, "<f4").tobytes())


V1_ENUM = {name: number for number, name in caffe_format.V1_TYPES.items()}


def layer(spec, v1: bool) -> bytes:
    """``spec``: dict(name, type, blobs=[...], group=, lrn=dict(local_size, alpha, beta, k))."""
    numbers = caffe_format.V1_LAYER if v1 else caffe_format.LAYER
    out = f_bytes(numbers["name"], spec["name"].encode())
    out += (f_varint(numbers["type"], V1_ENUM[spec["type"]]) if v1
            else f_bytes(numbers["type"], spec["type"].encode()))
    if spec.get("group", 1) != 1 or spec["type"] == "Convolution":
        conv = f_varint(1, spec["blobs"][0].shape[0]) + f_varint(5, spec.get("group", 1))
        out += f_bytes(numbers["convolution_param"], conv)
    if "lrn" in spec:
        lrn = spec["lrn"]
        out += f_bytes(numbers["lrn_param"], f_varint(1, lrn["local_size"]) + f_float(
            2, lrn["alpha"]) + f_float(3, lrn["beta"]) + f_float(5, lrn["k"]))
    for array in spec.get("blobs", ()):
        out += f_bytes(numbers["blobs"], blob(array, legacy=v1))
    return out


def caffemodel(specs, v1: bool) -> bytes:
    return f_bytes(1, b"AlexNet") + b"".join(
        f_bytes(caffe_format.NET_LAYERS_V1 if v1 else caffe_format.NET_LAYER, layer(s, v1))
        for s in specs)


def test_writer_and_reader_agree_on_the_wire_format():
    assert varint(150) == bytes([0x96, 0x01]) and varint(1) == b"\x01"
    message = f_varint(1, 150) + f_bytes(2, b"hi") + unpacked_floats(5, [1.5, -2.0, 3.25])
    got = [(n, w, bytes(v) if w == protobuf.LENGTH else v) for n, w, v in
           protobuf.fields(message)]
    assert got[:2] == [(1, 0, 150), (2, 2, b"hi")]
    assert got[2][:2] == (5, 5) and np.frombuffer(got[2][2], "<f4").tolist() == [1.5, -2, 3.25]
    assert protobuf.as_int64(protobuf.read_varint(varint(-3), 0)[0]) == -3


# -- AlexNet as Caffe lays it out ---------------------------------------------------------------
# (name, out, kernel, stride, pad, group): bvlc_alexnet's deploy.prototxt
CONVS = [("conv1", 96, 11, 4, 0, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
         ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2)]
LRN = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
CLASSES = 10


def alexnet_specs(rng, order: str, lrn=LRN):
    """bvlc_alexnet's layers (``order="paper"``: conv-ReLU-LRN-pool) or CaffeNet's
    (``"caffe"``: conv-ReLU-pool-LRN), with random blobs of Caffe's shapes."""
    specs, channels = [{"name": "data", "type": "Data"}], 3
    for i, (name, out, k, _, _, group) in enumerate(CONVS):
        w = rng.standard_normal((out, channels // group, k, k)).astype(np.float32)
        w *= np.float32(np.sqrt(2.0 / w[0].size))
        specs += [{"name": name, "type": "Convolution", "group": group,
                   "blobs": [w, rng.uniform(-0.1, 0.1, out).astype(np.float32)]},
                  {"name": f"relu{i + 1}", "type": "ReLU"}]
        norm = [{"name": f"norm{i + 1}", "type": "LRN", "lrn": lrn}] if i < 2 else []
        pool = [{"name": f"pool{i + 1}", "type": "Pooling"}] if i in (0, 1, 4) else []
        specs += norm + pool if order == "paper" else pool + norm
        channels = out
    fan_in = 256 * 6 * 6
    for i, out in enumerate((4096, 4096, CLASSES)):
        w = (rng.standard_normal((out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        specs.append({"name": f"fc{i + 6}", "type": "InnerProduct",
                      "blobs": [w, rng.uniform(-0.1, 0.1, out).astype(np.float32)]})
        if i < 2:
            specs += [{"name": f"relu{i + 6}", "type": "ReLU"},
                      {"name": f"drop{i + 6}", "type": "Dropout"}]
        fan_in = out
    return specs + [{"name": "prob", "type": "Softmax"}]


# -- a plain NumPy Caffe: each layer of the list, as Caffe computes it ---------------------------
def windows(x, k, stride):
    """(N, C, OH, OW, k, k) views of x's k x k windows at ``stride``."""
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride]


def caffe_forward(specs, x):
    x = x.astype(np.float64)
    conv_geometry = {name: (stride, pad) for name, _, _, stride, pad, _ in CONVS}
    for spec in specs:
        kind = spec["type"]
        if kind == "Convolution":
            w, b = (a.astype(np.float64) for a in spec["blobs"])
            stride, pad = conv_geometry[spec["name"]]
            g, k = spec["group"], w.shape[-1]
            x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            cin, cout = x.shape[1] // g, w.shape[0] // g
            x = np.concatenate([np.einsum("nchwij,ocij->nohw",
                                          windows(x[:, i * cin:(i + 1) * cin], k, stride),
                                          w[i * cout:(i + 1) * cout], optimize=True)
                                for i in range(g)], axis=1) + b[:, None, None]
        elif kind == "ReLU":
            x = np.maximum(x, 0)
        elif kind == "LRN":   # x / (k + alpha/n * sum over the n channels around c of x^2)^beta
            n, p = spec["lrn"]["local_size"], spec["lrn"]["local_size"] // 2
            sq = np.pad(x ** 2, ((0, 0), (p, p), (0, 0), (0, 0)))
            window = sum(sq[:, j:j + x.shape[1]] for j in range(n))
            lrn = spec["lrn"]
            x = x / (lrn["k"] + lrn["alpha"] / n * window) ** lrn["beta"]
        elif kind == "Pooling":
            x = windows(x, 3, 2).max(axis=(-2, -1))
        elif kind == "InnerProduct":
            w, b = (a.astype(np.float64) for a in spec["blobs"])
            x = x.reshape(len(x), -1) @ w.T + b
    return x


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-60, 60, (2, 3, 227, 227)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("v1, order", [(False, "paper"), (True, "caffe")],
                         ids=["layer-bvlc_alexnet", "V1-layers-caffenet"])
def test_caffemodel_loads_into_paper_and_gives_caffes_outputs(tmp_path, images, v1, order):
    rng = np.random.default_rng(0)
    specs = alexnet_specs(rng, order)
    path = tmp_path / "bvlc_alexnet.caffemodel"
    path.write_bytes(caffemodel(specs, v1))
    assert detect_format(path) == "caffe"

    model, preprocessing = load_pretrained(path)
    assert model.variant == "paper" and not model.training and model.num_classes == CLASSES
    assert preprocessing.source == "caffe" and preprocessing.channel_order == "BGR"
    assert preprocessing.crop == 227 and preprocessing.mean == (104.0, 117.0, 123.0)
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == (["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] if order == "paper"
                     else ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"])
    # every blob where it belongs, bit for bit: conv2, conv4, conv5 grouped (out, in/2, k, k)
    learned = [s for s in specs if s.get("blobs")]
    names = ["features.0", "features.4", "features.8", "features.10", "features.12",
             "classifier.0", "classifier.3", "classifier.6"]
    state = model.state_dict()
    for name, spec in zip(names, learned):
        np.testing.assert_array_equal(state[f"{name}.weight"], spec["blobs"][0], err_msg=name)
        np.testing.assert_array_equal(state[f"{name}.bias"], spec["blobs"][1], err_msg=name)
    assert state["features.4.weight"].shape == (256, 48, 5, 5)

    expected = caffe_forward(specs, images)
    logits = model(images).numpy()
    # float32 through eight layers against float64: compared in units of the largest logit
    # (~100 here), as the float32 rounding of the sums is relative to it
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits / scale, expected / scale, **TOL[np.float32])

    if not v1:   # RGB on request: conv1 takes the channels reversed, the mean follows
        rgb_model, rgb = load_pretrained(path, channel_order="RGB")
        assert rgb.channel_order == "RGB" and rgb.mean == (123.0, 117.0, 104.0)
        rgb_logits = rgb_model(np.ascontiguousarray(images[:, ::-1])).numpy()
        np.testing.assert_allclose(rgb_logits / scale, logits / scale, **TOL[np.float32])


@pytest.mark.slow
def test_caffes_lrn_constants_replace_the_papers(tmp_path):
    """Caffe divides alpha by local_size and has k = 1; a file's own constants are used."""
    rng = np.random.default_rng(0)
    odd = dict(local_size=3, alpha=2e-4, beta=0.5, k=1.5)
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel(alexnet_specs(rng, "paper", lrn=odd), v1=False))
    model, _ = load_pretrained(path)
    lrns = [m for m in model.modules() if type(m).__name__ == "LocalResponseNorm"]
    assert len(lrns) == 2
    for m in lrns:
        assert (m.size, m.convention, m.beta, m.k) == (3, "pytorch", 0.5, 1.5)
        assert m.alpha == pytest.approx(2e-4, rel=1e-6)    # stored as a float32


def test_a_caffemodel_that_is_not_alexnet_is_refused_naming_its_layers(tmp_path):
    rng = np.random.default_rng(0)
    specs = [{"name": "conv1", "type": "Convolution",
              "blobs": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                        np.zeros(4, np.float32)]},
             {"name": "ip1", "type": "InnerProduct",
              "blobs": [np.zeros((2, 4), np.float32), np.zeros(2, np.float32)]}]
    path = tmp_path / "lenet.caffemodel"
    path.write_bytes(caffemodel(specs, v1=True))
    with pytest.raises(ValueError, match=r"lenet.caffemodel is not an AlexNet.*found conv1 "
                                         r"\(Convolution, 2 blobs\), ip1 \(InnerProduct"):
        load_pretrained(path)


def test_blob_shapes_both_ways_and_double_data():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    for legacy in (False, True):
        got = caffe_format._blob(memoryview(blob(array, legacy)), "b")
        np.testing.assert_array_equal(got.reshape(2, 3), array)
        assert got.shape == ((1, 1, 2, 3) if legacy else (2, 3))
    doubles = f_bytes(7, f_bytes(1, varint(3))) + f_bytes(8, np.array([1, 2, 3], "<f8").tobytes())
    np.testing.assert_array_equal(caffe_format._blob(memoryview(doubles), "b"), [1, 2, 3])
    with pytest.raises(protobuf.ProtobufError, match=r"shape \(2, 2\) holds 3 values"):
        caffe_format._blob(memoryview(f_bytes(7, f_bytes(1, varint(2) + varint(2)))
                                      + f_bytes(5, bytes(12))), "b")


def test_mean_binaryproto_is_read_as_bgr_chw(tmp_path):
    mean = np.random.default_rng(0).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob(mean[None], legacy=True))
    np.testing.assert_array_equal(caffe_format.read_mean_binaryproto(path), mean)


def test_v0_truncated_and_unknown_files_are_refused(tmp_path):
    v0 = tmp_path / "old.caffemodel"
    v0.write_bytes(f_bytes(2, f_bytes(1, f_bytes(1, b"conv1"))))
    with pytest.raises(ValueError, match=r"old.caffemodel: a caffemodel of Caffe's V0 format"):
        caffe_format.read_caffemodel(v0)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(caffemodel(alexnet_specs(np.random.default_rng(0), "paper")[:3], False)[:-7])
    with pytest.raises(ValueError, match=r"cut.caffemodel: not a readable caffemodel"):
        caffe_format.read_caffemodel(cut)
    other = tmp_path / "photo.jpg"
    other.write_bytes(b"\xff\xd8\xff\xe0 not weights at all")
    with pytest.raises(ValueError, match=r"photo.jpg is neither a PyTorch file .* nor a Caffe"):
        load_pretrained(other)
