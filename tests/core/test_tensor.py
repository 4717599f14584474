"""The autograd core: operators, broadcasting, graph recording and freeing, no_grad."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, gradcheck, no_grad

from conftest import GRADCHECK, TOL

rng = np.random.default_rng(0)


def leaf(shape, low=-1.0, high=1.0):
    return Tensor(rng.uniform(low, high, shape), requires_grad=True)


# shape pairs that broadcast, including leading-dim and size-1 stretching
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)),
                   ((1,), (2, 3)), ((), (2, 2))]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv"])
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS)
def test_binary_ops_gradcheck_with_broadcasting(op, shapes):
    a, b = leaf(shapes[0]), leaf(shapes[1], 0.5, 1.5)  # b away from 0 for division
    fns = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "div": lambda a, b: a / b, "radd": lambda a, b: 2.0 + a * b,
           "rsub": lambda a, b: 2.0 - a * b, "rmul": lambda a, b: 3.0 * (a / b),
           "rdiv": lambda a, b: 1.0 / b + a}
    report = gradcheck(fns[op], [a, b], **GRADCHECK)
    assert report.checked == a.size + b.size
    y = fns[op](a, b)
    assert y.shape == np.broadcast_shapes(shapes[0], shapes[1])


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_reductions_gradcheck(shape, data):
    x = leaf(tuple(shape))
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keepdims = data.draw(st.booleans())
    gradcheck(lambda x: x.sum(axis=axis, keepdims=keepdims), [x], **GRADCHECK)
    gradcheck(lambda x: x.mean(axis=axis, keepdims=keepdims), [x], **GRADCHECK)
    np.testing.assert_allclose(x.mean(axis=axis, keepdims=keepdims).data,
                               x.data.mean(axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)),
                                    ((2, 3), (3,)), ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_gradcheck(shapes):
    a, b = leaf(shapes[0]), leaf(shapes[1])
    gradcheck(lambda a, b: a @ b, [a, b], **GRADCHECK)
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)


def test_unary_shape_and_index_ops_gradcheck():
    x = leaf((2, 3, 4), 0.5, 2.0)
    cases = [lambda x: -x, lambda x: x.exp(), lambda x: x.log(), lambda x: x ** 3,
             lambda x: x ** -0.5, lambda x: x.reshape(4, 6), lambda x: x.reshape(-1),
             lambda x: x.transpose(2, 0, 1), lambda x: x.T, lambda x: x[1],
             lambda x: x[:, 1:, ::2], lambda x: x[..., -1], lambda x: x[[0, 1, 1]],
             lambda x: x[x.data > 1.0]]
    for fn in cases:
        gradcheck(fn, [x], **GRADCHECK)


def test_numpy_array_on_the_left_defers_to_tensor():
    a = leaf((2, 3))
    y = np.ones((2, 3)) * a + np.ones(3)
    assert isinstance(y, Tensor) and y.creator is not None
    gradcheck(lambda a: np.full((2, 3), 2.0) / (a + 3.0) - np.ones((2, 2)) @ a, [a], **GRADCHECK)


def test_repeated_index_gradients_add_up():
    x = Tensor(np.zeros(3), requires_grad=True)
    x[[0, 0, 2]].sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 1.0])


def test_grad_accumulates_until_zeroed():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])
    x.zero_grad()
    assert x.grad is None


def test_tensor_used_twice_gets_both_contributions():
    x = Tensor(np.array([3.0]), requires_grad=True)
    y = x * x + x
    y.backward(np.array([1.0]))
    np.testing.assert_array_equal(x.grad, [7.0])


def test_deep_graph_does_not_hit_recursion_limit():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(20000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


def test_graph_is_freed_after_backward():
    x = Tensor(np.ones(2), requires_grad=True)
    h = x * 2.0
    loss = (h * h).sum()
    loss.backward()
    assert vars(loss.creator) == {} and vars(h.creator) == {}
    with pytest.raises(RuntimeError, match="freed"):
        loss.backward()


def test_graph_recorded_only_when_an_input_requires_grad():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2), requires_grad=True)
    assert (a * 2.0).creator is None and not (a * 2.0).requires_grad
    assert (a * b).creator is not None
    with no_grad():
        y = a * b
    assert y.creator is None and not y.requires_grad
    assert minialex.is_grad_enabled()


def test_no_grad_as_decorator_restores_state():
    @no_grad()
    def f(t):
        assert not minialex.is_grad_enabled()
        return t * 2.0
    assert f(Tensor(np.ones(1), requires_grad=True)).creator is None
    assert minialex.is_grad_enabled()


def test_dtypes_follow_pytorch_defaults():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float64
    assert (Tensor(np.ones(2, np.float32)) * 2.5).dtype == np.float32
    assert Tensor(np.ones(3)).sum().dtype == np.float64  # 0-d reductions keep float64
    assert Tensor([1, 2]).dtype.kind == "i"


def test_inspection_helpers():
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.device == "cpu"
    assert isinstance(t.numpy(), np.ndarray)
    assert "requires_grad=True" in repr(t)
    assert t.detach().creator is None and not t.detach().requires_grad
    assert t.to(dtype=np.float32).dtype == np.float32
    assert t.sum().item() == 15.0


def test_bad_input_errors_name_the_problem():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()
    with pytest.raises(RuntimeError, match="scalar"):
        (Tensor(np.ones(2), requires_grad=True) * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected \(2,\)"):
        (Tensor(np.ones(2), requires_grad=True) * 2.0).backward(np.ones(3))
    with pytest.raises(ValueError, match="inner dimensions"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot reshape"):
        Tensor(np.ones(6)).reshape(4, 2)
    with pytest.raises(ValueError, match="permutation"):
        Tensor(np.ones((2, 3))).transpose(0, 0)
    with pytest.raises(ValueError, match="axis"):
        Tensor(np.ones((2, 3))).sum(axis=2)
    with pytest.raises(IndexError, match=r"shape \(2, 3\)"):
        Tensor(np.ones((2, 3)))[5]
    with pytest.raises(ValueError, match="device"):
        Tensor(np.ones(1)).to("tpu")


def test_gpu_request_without_gpu_says_which_piece_is_missing():
    if minialex.gpu_available():
        pytest.skip("a GPU is usable here; the no-GPU message cannot be shown")
    with pytest.raises(RuntimeError, match="a GPU was asked for but cannot be used: .*"
                                           "(CuPy is not installed|driver|no GPU is visible)"):
        Tensor(np.ones(1)).to("gpu")


def test_ops_on_gpu_match_cpu(gpu):
    x = rng.uniform(0.5, 1.5, (3, 4))
    w = rng.uniform(-1, 1, (4, 2))
    def f(x, w):
        return ((x @ w).exp().sum(axis=0) / x[1:].mean()).log()
    xc, wc = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    xg, wg = (Tensor(x).to("gpu"), Tensor(w).to("gpu"))
    xg.requires_grad = wg.requires_grad = True
    yc, yg = f(xc, wc), f(xg, wg)
    assert yg.device.startswith("gpu")
    np.testing.assert_allclose(yg.numpy(), yc.numpy(), **TOL[np.float64])
    gy = rng.standard_normal(yc.shape)
    yc.backward(gy)
    yg.backward(Tensor(gy).to("gpu").data)
    np.testing.assert_allclose(xg.grad.get(), xc.grad, **TOL[np.float64])
    np.testing.assert_allclose(wg.grad.get(), wc.grad, **TOL[np.float64])
    gradcheck(f, [xg, wg], **GRADCHECK)
    with pytest.raises(RuntimeError, match="different devices"):
        xc + xg


def test_python_scalars_take_the_tensor_dtype_without_rounding():
    assert (Tensor(np.ones(1)) * 0.8).data.item() == 0.8
    assert (0.1 + Tensor(np.zeros(1))).data.item() == 0.1
    assert (Tensor(np.ones(1, np.float32)) / 3.0).dtype == np.float32


def test_leaf_gradients_never_share_an_array():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    gy = np.arange(3.0)
    (a + b).backward(gy)
    assert a.grad is not b.grad and a.grad is not gy
    a.grad *= 10  # a user's in-place change stays in a
    np.testing.assert_array_equal(b.grad, gy)
