"""The paper's two towers on two devices compute what the one-device net computes
(minialex/towers.py): forward, gradients, an SGD step, and interchangeable state_dicts; and
examples/train_alexnet.py trains them with --towers."""
import re
import subprocess
import sys

import numpy as np
import pytest

import minialex
from minialex import backend, checkpoint, nn
from minialex import functional as F
from minialex.models import alexnet
from minialex.optim import SGD
from minialex.tensor import Tensor
from minialex.towers import TowersSGD, two_towers

from conftest import TOL
from mpi_jobs import ROOT, SKIP_INSIDE_MPI, environment
from support import SCRIPT, learnable_fashion_mnist

# where the paper's net crosses towers (Sec. 3.2), and the LRN halos
CROSSINGS = ["input", "features.2", "features.2", "features.6", "features.6", "features.8",
             "features.8", "classifier.0", "classifier.0", "classifier.3", "classifier.3",
             "classifier.6", "classifier.6", "output"]


def batch(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, n))


def one_step(model, parameters, x, y):
    loss = F.cross_entropy(model(Tensor(x)), y)
    optimizer = SGD(parameters, lr=0.1)
    optimizer.zero_grad()
    loss.backward()
    grads = {id(p): backend.to_numpy(p.grad) for p in parameters}
    optimizer.step()
    return float(loss.item()), grads


def joined_grads(towers, grads):
    return {name: np.concatenate([grads[id(p)] for p in parts])
            for name, parts in towers.named_splits()}


def lrn_layers(net):
    return [m for m in net.features if isinstance(m, nn.LocalResponseNorm)]


def check_towers_follow_the_net(devices, dtype, tol, lrn_size=None):
    minialex.manual_seed(0)
    net = alexnet("mini", dropout=0.0).to(dtype=dtype)     # LRN, groups=2: the paper's shape
    if lrn_size is not None:      # and alpha 1, where a map missing from a window shows
        for lrn in lrn_layers(net):
            lrn.size, lrn.alpha = lrn_size, 1.0
    towers = two_towers(net, devices)
    for name, parts in towers.named_splits():
        assert [backend.device_of(p.data) for p in parts] == list(towers.devices), name
    x, y = batch(6, dtype)
    x_there = backend.to_device(x, towers.devices[0])     # the batch on tower 0's device
    np.testing.assert_allclose(backend.to_numpy(towers(x_there).data), net(x).data, **tol)
    assert backend.device_of(towers(x_there).data) == towers.devices[0]
    assert towers.last_exchanges == (CROSSINGS if devices[0] != devices[1] else [])

    loss_net, grads_net = one_step(net, net.parameters(), x, y)
    loss_towers, grads_towers = one_step(towers, towers.parameters(), x_there, y)
    np.testing.assert_allclose(loss_towers, loss_net, **tol)
    want = {name: grads_net[id(p)] for name, p in net.named_parameters()}
    for name, g in joined_grads(towers, grads_towers).items():
        np.testing.assert_allclose(g, want[name], **tol, err_msg=name)
    for name, w in towers.state_dict().items():
        np.testing.assert_allclose(w, net.state_dict()[name], **tol, err_msg=name)


def test_two_towers_on_the_cpu_compute_the_one_device_net_forward_and_a_step():
    check_towers_follow_the_net(("cpu", "cpu"), np.float64, TOL["float64_exact"])


def test_an_lrn_of_even_size_borrows_its_uneven_halos_the_right_way_round():
    # size 4: the window of map c is c-2 .. c+1, so tower 1 borrows 2 maps and tower 0 one;
    # at an odd size both borrow n // 2 and swapping them would pass unseen
    check_towers_follow_the_net(("cpu", "cpu"), np.float64, TOL["float64_exact"], lrn_size=4)


def test_a_tower_with_fewer_maps_than_its_lrn_halo_is_refused():
    minialex.manual_seed(0)
    net = alexnet("mini")
    lrn_layers(net)[0].size = 40          # features.0 has 32 maps: 16 per tower, 20 borrowed
    with pytest.raises(ValueError, match=r"two_towers: features.\d+, an LRN of size 40, reaches "
                                         r"20 maps into the other tower, but each tower holds "
                                         r"only 16 of its 32 maps"):
        two_towers(net, ("cpu", "cpu"))


def test_the_towers_optimiser_state_is_the_one_device_optimisers():
    minialex.manual_seed(0)
    net = alexnet("mini", dropout=0.0).to(dtype=np.float64)
    towers = two_towers(alexnet("mini", dropout=0.0).to(dtype=np.float64), ("cpu", "cpu"))
    towers.load_state_dict(net.state_dict())
    x, y = batch(4, np.float64)
    one_device = SGD(net.parameters(), lr=0.1)
    split = TowersSGD(towers, lr=0.1)
    for _ in range(2):                       # two steps: the velocity carries the first
        for model, optimizer in ((net, one_device), (towers, split)):
            loss = F.cross_entropy(model(Tensor(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    state, want = split.state_dict(), one_device.state_dict()
    assert state["num_params"] == want["num_params"] == len(list(net.parameters()))
    assert state["velocity"].keys() == want["velocity"].keys()
    for i, v in want["velocity"].items():
        np.testing.assert_allclose(state["velocity"][i], v, **TOL["float64_exact"])

    resumed = TowersSGD(two_towers(alexnet("mini").to(dtype=np.float64), ("cpu", "cpu")), 0.5)
    resumed.load_state_dict(want)             # a one-device optimiser's state, split
    for i, v in resumed.state_dict()["velocity"].items():
        np.testing.assert_array_equal(v, want["velocity"][i])
    with pytest.raises(ValueError, match=r"velocity 0 \(features.0.weight\) has shape \(2,\)"):
        resumed.load_state_dict({**want, "velocity": {"0": np.zeros(2)}})


def test_two_towers_on_two_devices_exchange_only_where_the_paper_crosses(gpu):
    if backend.require_cupy().cuda.runtime.getDeviceCount() < 2:
        pytest.skip("two towers on two devices need two GPUs (the CuPy stand-in has two)")
    check_towers_follow_the_net(("gpu:0", "gpu:1"), np.float32, TOL[np.float32])


def test_the_paper_net_in_two_towers_keeps_its_names_and_outputs():
    minialex.manual_seed(0)
    net = alexnet("paper", dropout=0.0)
    towers = two_towers(net, ("cpu", "cpu"))
    state = towers.state_dict()
    assert list(state) == list(net.state_dict())
    for name, w in state.items():
        np.testing.assert_array_equal(w, net.state_dict()[name])
    x = np.random.default_rng(1).standard_normal((1, 3, 227, 227)).astype(np.float32)
    np.testing.assert_allclose(towers(x).data, net(x).data, **TOL[np.float32])


def test_a_state_dict_moves_between_the_forms():
    minialex.manual_seed(0)
    net, other = alexnet("mini"), alexnet("mini")
    towers = two_towers(other, ("cpu", "cpu"))
    towers.load_state_dict(net.state_dict())
    for name, w in towers.state_dict().items():
        np.testing.assert_array_equal(w, net.state_dict()[name])
    other.load_state_dict(towers.state_dict())
    with pytest.raises(ValueError, match="these differ: features.0.weight"):
        towers.load_state_dict({**net.state_dict(), "features.0.weight": np.zeros((1, 1))})


@pytest.mark.parametrize("variant", ["small", "owt"])
def test_a_net_without_the_paper_towers_is_refused(variant):
    minialex.manual_seed(0)
    with pytest.raises(ValueError, match=rf"two_towers: expected an AlexNet whose grouped "
                                         rf"convolutions have groups=2 .* got '{variant}'"):
        two_towers(alexnet(variant, num_classes=2), ("cpu", "cpu"))


@SKIP_INSIDE_MPI
def test_the_example_trains_the_paper_towers_on_two_devices_and_saves_one_device_weights(
        gpu, request, tmp_path):
    """``--model paper --towers gpu:0,gpu:1`` (on the CuPy stand-in's two devices where no
    two GPUs are usable): a few steps, then its checkpoint loads into a one-device paper net."""
    cupy = backend.require_cupy()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("two towers on two devices need two GPUs (the CuPy stand-in has two)")
    data_dir = learnable_fashion_mnist(tmp_path / "fmnist", n_train=12, n_test=4)
    script = [str(SCRIPT)]
    if getattr(cupy, "is_standin", False):
        script = [str(ROOT / "tests" / "cupy_standin.py"),
                  str(request.getfixturevalue("host_kernels").build_dir), str(SCRIPT)]
    run = subprocess.run(
        [sys.executable, *script, "--model", "paper", "--towers", "gpu:0,gpu:1", "--data-dir",
         data_dir, "--val-size", "0", "--limit-train", "4", "--batch-size", "2",
         "--limit-test", "2", "--epochs", "1", "--warmup", "0", "--lr", "0.001",
         "--schedule", "none", "--stall-steps", "0", "--print-freq", "1", "--no-flip",
         "--out", tmp_path / "run"], capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=environment())
    assert "epoch 1/1 [2/2] loss" in run.stdout, run.stdout + run.stderr
    if getattr(cupy, "is_standin", False):       # both devices held buffers
        held = re.search(r"buffers per device \[(\d+), (\d+)\]", run.stderr)
        assert held and min(map(int, held.groups())) > 0, run.stderr
    tree = checkpoint.load(tmp_path / "run" / "last.npz")
    net = alexnet("paper", num_classes=10, in_channels=1)
    checkpoint.load_weights(net, tree, "last.npz")          # the one-device names and shapes
    first = minialex.optim.SGD(net.parameters(), lr=0.001)
    first.load_state_dict(tree["optimizer"])                 # and the one-device optimiser's
    assert tree["architecture"] == "paper" and tree["trainer"]["global_step"] == 2
