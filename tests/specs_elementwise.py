"""Oracle specs of the elementwise nodes (see tests/oracle.py)."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniflow import (ELU, GELU, Abs, Add, Clip, Cos, Div, Exp, Expm1, LeakyReLU, Log, Log1p,
                      LogSigmoid, Maximum, Minimum, Mul, Neg, Pow, ReLU, Sigmoid, Sin, Softplus,
                      Sqrt, Square, StopGradient, Sub, Tanh, Where)
from oracle import Case, OpSpec, broadcasting, shapes, unary, values


@st.composite
def with_ties(draw, count=2):
    """Broadcasting arrays of a few values only, so equal elements (ties) are common."""
    drawn = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3, max_side=4))
    return tuple(draw(hnp.arrays(np.float64, s, elements=st.sampled_from([-1.0, 0.0, 1.0])))
                 for s in drawn.input_shapes)


@st.composite
def clip_case(draw):
    """x, with bounds drawn too; elements hit the bounds exactly or stay clear of them."""
    low = draw(st.sampled_from([None, -1.0, 0.5]))
    # low > high too (-2.0 < low): torch.clamp gives high everywhere, with gradient 0.
    high = draw(st.sampled_from([None, 1.0, 2.0, -2.0] if low is not None else [1.0, 2.0]))
    bounds = [b for b in (low, high) if b is not None]
    x = draw(st.one_of(values(draw(shapes()), avoid=bounds),
                       hnp.arrays(np.float64, draw(shapes()), elements=st.sampled_from(
                           [-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0]))))
    return Case((x,), {"low": low, "high": high})


def nonfinite(count=1):
    """``count`` broadcasting arrays of nan, infinities, zeros of both signs and a few
    numbers: the conventions of the selecting rules (ReLU's x <= 0, abs's sign) at nan."""
    special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -0.5, 3.0])
    return hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3, max_side=4).flatmap(
        lambda drawn: st.tuples(*(hnp.arrays(np.float64, s, elements=special)
                                  for s in drawn.input_shapes)))


@st.composite
def where_case(draw):
    shape_c, shape_a, shape_b = draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, max_dims=3, max_side=4)).input_shapes
    return (draw(hnp.arrays(np.bool_, shape_c)), draw(values(shape_a)), draw(values(shape_b)))


@st.composite
def alpha_case(draw, low=0.0, high=3.0):
    return Case(draw(unary(avoid=(0.0,))), {"alpha": draw(st.floats(low, high))})


def _gelu_spec(approximate):
    return OpSpec(f"GELU {approximate}", lambda x: GELU(x, approximate=approximate),
                  lambda t: F.gelu(t, approximate=approximate), unary(low=-10, high=10),
                  elementwise=True)


SPECS = [
    OpSpec("Add", Add, torch.add, broadcasting(), elementwise=True, arity=2),
    OpSpec("Add three", Add, lambda x, y, z: x + y + z, broadcasting(count=3), elementwise=True,
           arity=3),
    OpSpec("Sub", Sub, torch.sub, broadcasting(), elementwise=True, arity=2),
    OpSpec("Mul", Mul, torch.mul, broadcasting(), elementwise=True, arity=2),
    OpSpec("Mul three", Mul, lambda x, y, z: x * y * z, broadcasting(count=3), elementwise=True,
           arity=3),
    OpSpec("Div", Div, torch.div, broadcasting(low=0.2, high=3.0), elementwise=True,
           domain="positive", arity=2),
    OpSpec("Neg", Neg, torch.neg, unary(), elementwise=True),
    OpSpec("Sigmoid", Sigmoid, torch.sigmoid, unary(low=-30, high=30), elementwise=True),
    OpSpec("Sigmoid wide", Sigmoid, torch.sigmoid, unary(low=-700, high=700)),
    OpSpec("Tanh", Tanh, torch.tanh, unary(), elementwise=True),
    OpSpec("ReLU", ReLU, torch.relu, unary(avoid=(0.0,)), elementwise=True),
    OpSpec("Exp", Exp, torch.exp, unary(), elementwise=True),
    OpSpec("Log", Log, torch.log, unary(low=1e-3, high=5.0), elementwise=True, domain="positive"),
    OpSpec("Pow", Pow, torch.pow, broadcasting(low=0.2, high=3.0), elementwise=True,
           domain="positive", arity=2),
    OpSpec("x ** 3", lambda x: x ** 3, lambda t: t ** 3, unary(), elementwise=True),
    OpSpec("2 ** x", lambda x: 2 ** x, lambda t: 2 ** t, unary(), elementwise=True),
    OpSpec("x ** y at zero", lambda x, y: x ** y, torch.pow,
           st.tuples(hnp.arrays(np.float64, 4, elements=st.sampled_from([0.0, 1.0, 2.0])),
                     hnp.arrays(np.float64, 4, elements=st.sampled_from([0.0, 1.0, 2.0, 3.0])))),
    OpSpec("Square", Square, torch.square, unary(), elementwise=True),
    OpSpec("Sqrt", Sqrt, torch.sqrt, unary(low=1e-2, high=5.0), elementwise=True,
           domain="positive"),
    OpSpec("Abs", Abs, torch.abs, unary(avoid=(0.0,)), elementwise=True),
    OpSpec("abs at zero", abs, torch.abs, st.just((np.array([-1.0, 0.0, 2.0]),))),
    OpSpec("Log1p", Log1p, torch.log1p, unary(low=-0.9, high=5.0), elementwise=True,
           domain="positive"),
    OpSpec("Expm1", Expm1, torch.expm1, unary(), elementwise=True),
    OpSpec("Sin", Sin, torch.sin, unary(), elementwise=True),
    OpSpec("Cos", Cos, torch.cos, unary(), elementwise=True),
    OpSpec("Maximum", Maximum, torch.maximum, broadcasting(), elementwise=True, arity=2),
    OpSpec("Minimum", Minimum, torch.minimum, broadcasting(), elementwise=True, arity=2),
    OpSpec("Maximum ties", Maximum, torch.maximum, with_ties()),
    OpSpec("Minimum ties", Minimum, torch.minimum, with_ties()),
    OpSpec("Clip", Clip, lambda t, low, high: torch.clamp(t, min=low, max=high), clip_case()),
    OpSpec("Where", Where, torch.where, where_case()),
    OpSpec("StopGradient", StopGradient, lambda t: t.detach(), unary(), elementwise=True),
    OpSpec("Softplus", Softplus, F.softplus, unary(low=-40, high=40), elementwise=True),
    OpSpec("LogSigmoid", LogSigmoid, F.logsigmoid, unary(low=-40, high=40), elementwise=True),
    OpSpec("LeakyReLU", LeakyReLU, lambda t, alpha: F.leaky_relu(t, alpha), alpha_case()),
    OpSpec("LeakyReLU default", LeakyReLU, F.leaky_relu, unary(avoid=(0.0,)), elementwise=True),
    OpSpec("ELU", ELU, lambda t, alpha: F.elu(t, alpha), alpha_case()),
    OpSpec("ELU default", ELU, F.elu, unary(avoid=(0.0,)), elementwise=True),
    # At nan and the infinities, the gradient conventions of PyTorch's selecting rules.
    OpSpec("ReLU non-finite", ReLU, torch.relu, nonfinite()),
    OpSpec("LeakyReLU non-finite", LeakyReLU, F.leaky_relu, nonfinite()),
    OpSpec("ELU non-finite", ELU, F.elu, nonfinite()),
    OpSpec("Abs non-finite", Abs, torch.abs, nonfinite()),
    OpSpec("Clip non-finite", lambda x: Clip(x, -1.0, 2.0), lambda t: torch.clamp(t, -1.0, 2.0),
           nonfinite()),
    OpSpec("Maximum non-finite", Maximum, torch.maximum, nonfinite(2)),
    OpSpec("Minimum non-finite", Minimum, torch.minimum, nonfinite(2)),
    _gelu_spec("none"),
    _gelu_spec("tanh"),
]
