"""Placement on a machine with two GPUs, shown on the CuPy stand-in's two devices.

CuPy allocates every new array on the *current* device, whatever device its operands live on,
and the stand-in refuses an operand on another device (as CuPy does without peer access). Device
0 stays current throughout, so each test shows that work asked for on ``gpu:1`` allocates there
and nowhere else: ``ALLOCATIONS`` counts the buffers made on each device.
"""
import numpy as np
import pytest

import minialex
from minialex import backend, nn
from minialex.data import Loader
from minialex.data import transforms as T
from minialex.data.augment import Augmenter
from minialex.optim import SGD
from minialex.summary import model_summary
from minialex.tensor import Tensor
from minialex.train import evaluate, train_one_epoch

from support import tiny_data, tiny_net


def devices(arrays):
    return {backend.device_of(a) for a in arrays}


@pytest.fixture
def two_gpus(standin):
    """The stand-in with device 0 current; returns its per-device allocation counts."""
    assert standin.cuda.runtime.getDeviceCount() == 2
    return standin.ALLOCATIONS


def only_gpu1_allocates(allocations, before):
    assert allocations[0] == before[0], f"{allocations[0] - before[0]} buffer(s) on gpu:0"
    assert allocations[1] > before[1]


def test_tensor_to_lands_on_the_device_asked_for(two_gpus, standin):
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    before = list(two_gpus)
    moved = [x.to("gpu:1"), x.to("gpu:1", dtype=np.float64), x.to("gpu:0").to("gpu:1"),
             x.to("gpu:1").to(dtype=np.float64), x.to("gpu:1").to("gpu:1", np.float16)]
    assert [t.device for t in moved] == ["gpu:1"] * 5
    assert [t.dtype for t in moved] == [np.float32, np.float64, np.float32, np.float64,
                                        np.float16]
    np.testing.assert_array_equal(moved[1].numpy(), x.numpy())
    assert two_gpus[1] - before[1] == 7 and two_gpus[0] - before[0] == 1   # the gpu:0 hop
    assert standin.cuda.runtime.getDevice() == 0


def test_module_to_and_load_state_dict_keep_the_parameters_on_their_device(two_gpus):
    net = tiny_net().to("gpu:1")
    saved = {k: backend.to_numpy(v) * 2 for k, v in net.state_dict().items()}
    net.load_state_dict(saved)                                            # from the host
    assert devices(net.state_dict().values()) == {"gpu:1"}
    net.load_state_dict({k: backend.to_device(v, "gpu:0") for k, v in saved.items()})
    assert devices(net.state_dict().values()) == {"gpu:1"}               # from another GPU
    net.double()
    assert devices(net.state_dict().values()) == {"gpu:1"}
    before = list(two_gpus)
    net.load_state_dict(net.state_dict())          # its own arrays: copied, on gpu:1
    x = Tensor(np.random.default_rng(0).random((2, 1, 8, 8))).to("gpu:1")
    y = net(x)
    y.sum().backward()
    assert y.device == "gpu:1" and devices(p.grad for p in net.parameters()) == {"gpu:1"}
    only_gpu1_allocates(two_gpus, before)
    np.testing.assert_array_equal(backend.to_numpy(net.state_dict()["0.weight"]),
                                  saved["0.weight"])


def test_the_optimiser_state_lives_with_each_parameter(two_gpus):
    net = tiny_net().to("gpu:1")
    optimizer = SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = list(two_gpus)
    for p in net.parameters():
        p.grad = backend.to_device(np.ones(p.shape, p.dtype), "gpu:1")
    optimizer.step()
    assert devices(optimizer.velocity) == {"gpu:1"}
    only_gpu1_allocates(two_gpus, before)
    restored = SGD(net.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(optimizer.state_dict())
    assert devices(restored.velocity) == {"gpu:1"}
    restored.step()
    assert devices(p.data for p in net.parameters()) == {"gpu:1"}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_batches_and_their_transforms_are_made_on_the_device(two_gpus, prefetch):
    transform = T.Compose([T.ToFloat(), T.RandomCrop(None, 1), T.RandomHorizontalFlip(),
                           T.Normalize(0.5, 0.25), T.Resize(12)])
    loader = Loader(tiny_data(), 8, shuffle=True, generator=np.random.default_rng(1),
                    transform=transform, device="gpu:1", prefetch=prefetch)
    before = list(two_gpus)
    batches = list(loader.epoch())
    assert len(batches) == 5 and devices(a for batch in batches for a in batch) == {"gpu:1"}
    assert batches[0][0].shape == (8, 1, 12, 12)
    only_gpu1_allocates(two_gpus, before)


def test_a_bare_transform_runs_on_the_loaders_device(two_gpus):
    loader = Loader(tiny_data(16), 8, transform=T.Normalize(0.5, 0.25), device="gpu:1",
                    prefetch=0)
    before = list(two_gpus)
    batches = list(loader.epoch())
    assert devices(a for batch in batches for a in batch) == {"gpu:1"}
    only_gpu1_allocates(two_gpus, before)


def test_augmenter_copies_its_statistics_to_each_device_it_serves(two_gpus):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    eigvecs = np.linalg.qr(rng.standard_normal((3, 3)))[0].astype(np.float32)
    augmenter = Augmenter(images.mean(axis=0), np.ones(3, np.float32), eigvecs, crop=32,
                          generator=np.random.default_rng(1))
    before = list(two_gpus)
    on_gpu1 = backend.to_device(images, "gpu:1")
    outputs = [augmenter.train(on_gpu1), augmenter.eval(on_gpu1), augmenter.ten_crop(on_gpu1)]
    assert devices(outputs) == {"gpu:1"}
    only_gpu1_allocates(two_gpus, before)
    assert devices(augmenter.eval(backend.to_device(images, "gpu:0"))[None]) == {"gpu:0"}


def test_a_training_step_on_gpu1_allocates_only_there(two_gpus):
    minialex.manual_seed(0)
    model = tiny_net().to("gpu:1")
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = Loader(tiny_data(), 8, shuffle=True, generator=np.random.default_rng(1),
                    device="gpu:1", prefetch=2,
                    transform=T.Compose([T.ToFloat(), T.RandomHorizontalFlip()]))
    before = list(two_gpus)
    running = train_one_epoch(model, loader, optimizer, after_step=lambda r: r.steps == 2)
    assert running.steps == 2 and np.isfinite(running.loss_sum)
    assert devices(p.data for p in model.parameters()) == {"gpu:1"}
    assert devices(optimizer.velocity) == {"gpu:1"}
    only_gpu1_allocates(two_gpus, before)


def test_a_model_summary_and_an_evaluation_on_gpu1_allocate_only_there(two_gpus):
    minialex.manual_seed(0)
    model = tiny_net().to("gpu:1")
    before = list(two_gpus)
    table = model_summary(model, (1, 8, 8))
    assert table.total_params == model.num_parameters()
    loader = Loader(tiny_data(16), 8, device="gpu:1", transform=T.ToFloat(), num_classes=10)
    assert evaluate(model, loader)["images"] == 16
    only_gpu1_allocates(two_gpus, before)


def test_an_op_between_two_gpus_is_refused_by_name(two_gpus):
    a, b = (Tensor(np.ones((1, 2), np.float32)).to(f"gpu:{i}") for i in (0, 1))
    with pytest.raises(RuntimeError, match=r"Add: inputs live on different devices \['gpu:0', "
                                           r"'gpu:1'\]"):
        a + b
    with pytest.raises(RuntimeError, match="different devices"):
        nn.Linear(2, 2).to("gpu:0")(b)
