"""Module bookkeeping: names, state_dict round trips, modes, errors."""
import numpy as np
import pytest

from minialex import Module, Parameter, Sequential, Tensor


class Affine(Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = Parameter(np.full((n_out, n_in), 0.5))
        self.bias = Parameter(np.zeros(n_out))

    def forward(self, x):
        return x @ self.weight.T + self.bias


class Net(Module):
    def __init__(self):
        super().__init__()
        self.features = Sequential(Affine(4, 3), Affine(3, 2))
        self.head = Affine(2, 1)

    def forward(self, x):
        return self.head(self.features(x))


def test_parameter_names_follow_pytorch_dotted_paths_in_order():
    names = [n for n, _ in Net().named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.1.weight",
                     "features.1.bias", "head.weight", "head.bias"]
    assert list(Net().state_dict()) == names


def test_state_dict_round_trip_and_copy_semantics():
    a, b = Net(), Net()
    for p in a.parameters():
        p.data = np.random.default_rng(1).standard_normal(p.shape)
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert pa.data is not pb.data  # loading copies


def test_load_state_dict_reports_every_problem_at_once():
    net = Net()
    state = dict(net.state_dict())
    state.pop("head.bias")
    state["features.0.weight"] = np.zeros((9, 9))
    state["extra.weight"] = np.zeros(1)
    with pytest.raises(ValueError) as err:
        net.load_state_dict(state)
    msg = str(err.value)
    assert "features.0.weight: checkpoint (9, 9), model (3, 4)" in msg
    assert "missing keys head.bias" in msg and "unexpected keys extra.weight" in msg
    before = net.features[0].weight.data.copy()
    np.testing.assert_array_equal(net.features[0].weight.data, before)  # nothing half-loaded
    state["features.0.weight"] = np.ones((3, 4))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["head.bias"] and unexpected == ["extra.weight"]
    with pytest.raises(TypeError, match="mapping"):
        net.load_state_dict([1, 2])


def test_train_eval_zero_grad_and_dtype_moves():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    net.double()
    out = net(Tensor(np.ones((5, 4))))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters())
    assert net.num_parameters() == 4 * 3 + 3 + 3 * 2 + 2 + 2 + 1


def test_sequential_indexing_and_repr():
    seq = Sequential(Affine(2, 2), Affine(2, 1))
    assert len(seq) == 2 and isinstance(seq[1], Affine)
    assert len(seq[:1]) == 1
    assert "(0): Affine()" in repr(seq)
    with pytest.raises(TypeError, match="expected a Module"):
        seq.append(3)


def test_forgetting_super_init_is_a_clear_error():
    class Broken(Module):
        def __init__(self):
            self.weight = Parameter(np.ones(1))
    with pytest.raises(RuntimeError, match=r"super\(\).__init__\(\)"):
        Broken()


def test_module_to_gpu_and_back(gpu):
    net = Net().to("gpu")
    assert all(p.device.startswith("gpu") for p in net.parameters())
    net.to("cpu")
    assert all(p.device == "cpu" for p in net.parameters())
