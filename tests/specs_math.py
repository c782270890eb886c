"""Oracle specs of the math and comparison nodes (see tests/oracle.py).

Nodes whose value is data (comparisons, ArgMax, integer casts) are compared
through a differentiable use of it: a ``Where`` condition, or the value cast
to float64 beside ``0 * Sum(x)`` (so the gradient, 0, is checked too).
"""

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniflow import (ArcCos, ArcCosh, ArcSin, ArcSinh, ArcTan, ArcTan2, ArcTanh, ArgMax, ArgMin,
                      Cast, Ceil, Cosh, Equal, Exp2, Floor, FloorDivide, Greater, GreaterEqual,
                      Less, LessEqual, Log2, Log10, LogAddExp, NotEqual, Remainder, Round, Sign,
                      Sinh, Sum, Tan, Trunc, Where)
from oracle import Case, OpSpec, broadcasting, shapes, unary, values

SPECIAL = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.5])

def as_data(build):
    """A node whose value is data, made a float64 output whose gradient (0) is checked."""
    return lambda x, *rest, **kw: Cast(build(x, *rest, **kw), "float64") + 0 * Sum(x)

def torch_as_data(fn):
    return lambda t, *rest, **kw: fn(t, *rest, **kw).double() + 0 * t.sum()

def _special(name, build, torch_fn):
    """Non-finite and boundary inputs: value and gradient as PyTorch's (nan where its nan)."""
    return OpSpec(f"{name} at special values", build, torch_fn, st.just((SPECIAL.copy(),)))

@st.composite
def with_ties(draw, count=2):
    drawn = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3, max_side=4))
    return tuple(draw(hnp.arrays(np.float64, s, elements=st.sampled_from([-1.0, 0.0, 1.0, 2.0])))
                 for s in drawn.input_shapes)

@st.composite
def divisors(draw):
    """a and b broadcasting, b away from 0 and a / b away from integers (kinks of floor)."""
    a, b = draw(broadcasting(low=0.3, high=3.0))
    sign = draw(hnp.arrays(np.float64, b.shape, elements=st.sampled_from([-1.0, 1.0])))
    a = draw(values(a.shape, -6.0, 6.0))
    b = b * sign
    ratio = a / b
    near = np.abs(ratio - np.round(ratio)) < 1e-3
    return np.where(near, a + 0.01 * np.abs(b), a), b

@st.composite
def arg_case(draw):
    shape = draw(shapes(min_dims=0, min_side=1))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1))) if shape else None
    keepdims = draw(st.booleans()) if axis is not None else False
    return Case((draw(values(shape)),), {"axis": axis, "keepdims": keepdims})

def torch_arg(fn):
    def call(t, axis, keepdims):
        return fn(t) if axis is None else fn(t, dim=axis, keepdim=keepdims)
    return call

@st.composite
def cast_case(draw):
    return Case(draw(unary()), {"dtype": draw(st.sampled_from(["float32", "float64",
                                                                np.float64]))})

def torch_cast(t, dtype):
    return t.to(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)

def _unary(name, node, fn, strategy=None, elementwise=True, domain="real", **kw):
    return OpSpec(name, node, fn, unary() if strategy is None else strategy, elementwise=elementwise, domain=domain,
                  **kw)

SPECS = [
    _unary("Tan", Tan, torch.tan, unary(low=-1.3, high=1.3), elementwise=False),
    _unary("Sinh", Sinh, torch.sinh),
    _unary("Cosh", Cosh, torch.cosh),
    _unary("ArcSin", ArcSin, torch.asin, unary(low=-0.95, high=0.95), domain="unit"),
    _unary("ArcCos", ArcCos, torch.acos, unary(low=-0.95, high=0.95), domain="unit"),
    _unary("ArcTan", ArcTan, torch.atan),
    OpSpec("ArcTan2", ArcTan2, torch.atan2, broadcasting(low=0.2, high=3.0), elementwise=True,
           domain="positive", arity=2),
    OpSpec("ArcTan2 signs", ArcTan2, torch.atan2, st.tuples(
        values((3, 4), avoid=(0.0,), margin=0.1), values((4,), avoid=(0.0,), margin=0.1))),
    _unary("ArcSinh", ArcSinh, torch.asinh),
    _unary("ArcCosh", ArcCosh, torch.acosh, unary(low=1.05, high=6.0), elementwise=False),
    _unary("ArcTanh", ArcTanh, torch.atanh, unary(low=-0.95, high=0.95), domain="unit"),
    _unary("Log2", Log2, torch.log2, unary(low=1e-2, high=5.0), domain="positive"),
    _unary("Log10", Log10, torch.log10, unary(low=1e-2, high=5.0), domain="positive"),
    _unary("Exp2", Exp2, torch.exp2),
    OpSpec("LogAddExp", LogAddExp, torch.logaddexp, broadcasting(low=-40, high=40),
           elementwise=True, arity=2),
    _unary("Floor", Floor, torch.floor),
    _unary("Ceil", Ceil, torch.ceil),
    _unary("Round", Round, torch.round),
    _unary("Trunc", Trunc, torch.trunc),
    _unary("Sign", Sign, torch.sign),
    OpSpec("Round halves to even", Round, torch.round,
           st.just((np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]),))),
    OpSpec("Remainder", Remainder, torch.remainder, divisors()),
    OpSpec("x % 2", lambda x: x % 2, lambda t: torch.remainder(t, 2),
           unary(low=-5, high=5, avoid=(-4.0, -2.0, 0.0, 2.0, 4.0))),
    OpSpec("FloorDivide", FloorDivide, lambda a, b: torch.div(a, b, rounding_mode="floor"),
           divisors()),
    OpSpec("x // 2", lambda x: x // 2, lambda t: torch.div(t, 2, rounding_mode="floor"),
           unary(low=-5, high=5)),
    *[_special(name, node, fn) for name, node, fn in [
        ("Tan", Tan, torch.tan), ("Sinh", Sinh, torch.sinh), ("Cosh", Cosh, torch.cosh),
        ("ArcSin", ArcSin, torch.asin), ("ArcCos", ArcCos, torch.acos),
        ("ArcTan", ArcTan, torch.atan), ("ArcSinh", ArcSinh, torch.asinh),
        ("ArcCosh", ArcCosh, torch.acosh), ("ArcTanh", ArcTanh, torch.atanh),
        ("Log2", Log2, torch.log2), ("Log10", Log10, torch.log10), ("Exp2", Exp2, torch.exp2),
        ("Floor", Floor, torch.floor), ("Ceil", Ceil, torch.ceil), ("Round", Round, torch.round),
        ("Trunc", Trunc, torch.trunc), ("Sign", Sign, torch.sign)]],
    # Comparisons, through the Where they steer; ties are common in the drawn values.
    *[OpSpec(f"Where({name})", lambda x, y, node=node: Where(node(x, y), x, y),
             lambda x, y, fn=fn: torch.where(fn(x, y), x, y), with_ties())
      for name, node, fn in [("Less", Less, torch.lt), ("LessEqual", LessEqual, torch.le),
                             ("Greater", Greater, torch.gt),
                             ("GreaterEqual", GreaterEqual, torch.ge),
                             ("Equal", Equal, torch.eq), ("NotEqual", NotEqual, torch.ne)]],
    OpSpec("x < y operators", lambda x, y: Where(x < y, x * 2, y) + Where(x >= 1.0, x, 0.0),
           lambda x, y: torch.where(x < y, x * 2, y) + torch.where(x >= 1.0, x, 0.0),
           with_ties()),
    OpSpec("ArgMax", as_data(ArgMax), torch_as_data(torch_arg(torch.argmax)), arg_case()),
    OpSpec("ArgMin", as_data(ArgMin), torch_as_data(torch_arg(torch.argmin)), arg_case()),
    OpSpec("Cast", Cast, torch_cast, cast_case(), rtol=1e-6, atol=1e-7),
    OpSpec("Cast to int64", as_data(lambda x: Cast(x, "int64")),
           torch_as_data(lambda t: t.to(torch.int64)), unary(low=-5, high=5)),
    OpSpec("astype bool", as_data(lambda x: x.astype(np.bool_)),
           torch_as_data(lambda t: t.to(torch.bool)), with_ties(count=1)),
]

