"""The paper's two towers on two devices compute what the one-device net computes
(minialex/towers.py): forward, gradients, an SGD step, and interchangeable state_dicts."""
import numpy as np
import pytest

import minialex
from minialex import backend
from minialex import functional as F
from minialex.models import alexnet
from minialex.optim import SGD
from minialex.tensor import Tensor
from minialex.towers import two_towers

from conftest import TOL

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


def check_towers_follow_the_net(devices, dtype, tol):
    minialex.manual_seed(0)
    net = alexnet("mini", dropout=0.0).to(dtype=dtype)     # LRN, groups=2: the paper's shape
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
