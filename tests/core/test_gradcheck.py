"""The gradient checker passes correct backwards and, above all, fails wrong ones."""
import numpy as np
import pytest

import minialex
from minialex import Function, GradcheckError, Tensor, gradcheck

from conftest import GRADCHECK


class SquareWithWrongBackward(Function):
    """y = x^2 with a deliberately wrong gradient (x instead of 2x)."""
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return gy * self.x


class FlippedBackward(Function):
    """y = 3x but the gradient comes back reversed: invisible to an all-ones gy."""
    def forward(self, x):
        return 3 * x

    def backward(self, gy):
        return 3 * gy[::-1]


def test_checker_fails_on_wrong_backward_and_says_where():
    x = Tensor(np.linspace(0.5, 1.5, 5), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"worst at input 0\[\d\]: analytic .* numeric"):
        gradcheck(lambda x: SquareWithWrongBackward()(x), [x])


def test_checker_catches_a_permuted_gradient_thanks_to_random_gy():
    x = Tensor(np.linspace(0.5, 1.5, 5), requires_grad=True)
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: FlippedBackward()(x), [x])
    # with gy = ones the same bug would have passed: the reason gy is random
    gradcheck(lambda x: FlippedBackward()(x), [x], gy=np.ones(5))


def test_checker_reports_worst_element_on_success():
    x = Tensor(np.linspace(0.5, 1.5, 6).reshape(2, 3), requires_grad=True)
    w = Tensor(np.linspace(-1, 1, 3), requires_grad=True)
    report = gradcheck(lambda x: (x * w).exp(), [x], params=[("w", w)])
    assert report.checked == 9
    assert report.max_abs_error < 1e-7
    assert report.worst_tensor in ("input 0", "w")
    assert "worst at" in str(report)


def test_checker_checks_module_parameters_by_name():
    class Scale(minialex.Module):
        def __init__(self):
            super().__init__()
            self.weight = minialex.Parameter(np.array([2.0, -1.0]))
        def forward(self, x):
            return SquareWithWrongBackward()(x * self.weight)
    m = Scale()
    x = Tensor(np.array([0.7, 1.3]))
    with pytest.raises(GradcheckError, match=r"weight\["):
        gradcheck(m, [x], params=m.named_parameters())


def test_checker_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2, [Tensor(np.ones(2, np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda x: x * 2, [Tensor(np.ones(2))])


class NaNBackward(Function):
    def forward(self, x):
        return 2 * x

    def backward(self, gy):
        g = 2 * gy
        g[0] = np.nan
        return g


def test_checker_fails_on_nan_gradients():
    x = Tensor(np.linspace(0.5, 1.5, 4), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"worst at input 0\[0\]: analytic nan"):
        gradcheck(lambda x: NaNBackward()(x), [x])


def test_report_maxima_cover_every_checked_tensor():
    x = Tensor(np.linspace(0.5, 1.5, 3), requires_grad=True)
    w = Tensor(np.linspace(1.0, 2.0, 3), requires_grad=True)
    report = gradcheck(lambda x: x * w, [x], params=[("w", w)], **GRADCHECK)
    assert report.max_abs_error < GRADCHECK["atol"] and report.checked == 6
