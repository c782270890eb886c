"""More elementwise functions: trigonometric, hyperbolic, logarithms, rounding and remainders.

Gradients as PyTorch defines them; the step functions (Floor, Ceil, Round,
Trunc, Sign, FloorDivide) have gradient 0, their derivative almost everywhere.
"""
from __future__ import annotations

import math

from ..graph import Node
from ._common import broadcast_problem

_LN2, _LN10 = math.log(2.0), math.log(10.0)


class _Unary(Node):
    arity = 1


class _Binary(Node):
    arity = 2

    def shape_problem(self, *shapes):
        return broadcast_problem(*shapes)


class Tan(_Unary):
    """y = tan(x); dy/dx = 1 + y²."""

    def forward(self, ctx, x):
        y = ctx.xp.tan(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * (1 + y * y),)


class Sinh(_Unary):
    """y = sinh(x); dy/dx = cosh(x)."""

    def forward(self, ctx, x):
        return ctx.xp.sinh(x)

    def backward(self, ctx, grad):
        return (grad * ctx.xp.cosh(ctx.inputs[0]),)


class Cosh(_Unary):
    """y = cosh(x); dy/dx = sinh(x)."""

    def forward(self, ctx, x):
        return ctx.xp.cosh(x)

    def backward(self, ctx, grad):
        return (grad * ctx.xp.sinh(ctx.inputs[0]),)


class ArcSin(_Unary):
    """y = asin(x); dy/dx = 1 / √(1 - x²) (inf at ±1, nan outside, as in PyTorch)."""

    def forward(self, ctx, x):
        return ctx.xp.asin(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / ctx.xp.sqrt(1 - x * x),)


class ArcCos(_Unary):
    """y = acos(x); dy/dx = -1 / √(1 - x²)."""

    def forward(self, ctx, x):
        return ctx.xp.acos(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (-grad / ctx.xp.sqrt(1 - x * x),)


class ArcTan(_Unary):
    """y = atan(x); dy/dx = 1 / (1 + x²)."""

    def forward(self, ctx, x):
        return ctx.xp.atan(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / (1 + x * x),)


class ArcSinh(_Unary):
    """y = asinh(x); dy/dx = 1 / √(x² + 1)."""

    def forward(self, ctx, x):
        return ctx.xp.asinh(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / ctx.xp.sqrt(x * x + 1),)


class ArcCosh(_Unary):
    """y = acosh(x) for x >= 1; dy/dx = 1 / √(x² - 1) (inf at 1, as in PyTorch)."""

    def forward(self, ctx, x):
        return ctx.xp.acosh(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / ctx.xp.sqrt(x * x - 1),)


class ArcTanh(_Unary):
    """y = atanh(x) for |x| < 1; dy/dx = 1 / (1 - x²)."""

    def forward(self, ctx, x):
        return ctx.xp.atanh(x)

    def backward(self, ctx, grad):
        (x,) = ctx.inputs
        return (grad / (1 - x * x),)


class ArcTan2(_Binary):
    """y = atan2(a, b), the angle of the point (b, a); broadcasting like NumPy.

    dy/da = b / (a² + b²), dy/db = -a / (a² + b²) (nan at the origin, as in PyTorch).
    """

    def forward(self, ctx, a, b):
        a, b = ctx.inputs = ctx.backend.promote(a, b)
        return ctx.xp.atan2(a, b)

    def backward(self, ctx, grad):
        a, b = ctx.inputs
        need_a, need_b = ctx.needs_input_grad
        scaled = grad / (a * a + b * b)
        return scaled * b if need_a else None, -scaled * a if need_b else None


class Log2(_Unary):
    """y = log₂(x); dy/dx = 1 / (x ln 2)."""

    def forward(self, ctx, x):
        return ctx.xp.log2(x)

    def backward(self, ctx, grad):
        return (grad / (ctx.inputs[0] * _LN2),)


class Log10(_Unary):
    """y = log₁₀(x); dy/dx = 1 / (x ln 10)."""

    def forward(self, ctx, x):
        return ctx.xp.log10(x)

    def backward(self, ctx, grad):
        return (grad / (ctx.inputs[0] * _LN10),)


class Exp2(_Unary):
    """y = 2^x; dy/dx = y ln 2."""

    def forward(self, ctx, x):
        y = ctx.xp.pow(ctx.xp.asarray(2.0, dtype=x.dtype), x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return (grad * y * _LN2,)


class LogAddExp(_Binary):
    """y = log(exp(a) + exp(b)), without overflow; dy/da = exp(a - y), dy/db = exp(b - y)."""

    def forward(self, ctx, a, b):
        a, b = ctx.inputs = ctx.backend.promote(a, b)
        y = ctx.xp.logaddexp(a, b)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        xp, (a, b), (y,) = ctx.xp, ctx.inputs, ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return (grad * xp.exp(a - y) if need_a else None,
                grad * xp.exp(b - y) if need_b else None)


class _Step(_Unary):
    """A piecewise-constant function: its gradient is 0 (where it exists), as in PyTorch."""

    function = None

    def forward(self, ctx, x):
        return getattr(ctx.xp, self.function)(x)

    def backward(self, ctx, grad):
        return (ctx.xp.zeros_like(grad),)


class Floor(_Step):
    """y = ⌊x⌋, the largest integer <= x; gradient 0."""

    function = "floor"


class Ceil(_Step):
    """y = ⌈x⌉, the smallest integer >= x; gradient 0."""

    function = "ceil"


class Round(_Step):
    """y = x rounded to the nearest integer, halves to even (as NumPy and PyTorch); gradient 0."""

    function = "round"


class Trunc(_Step):
    """y = x rounded towards 0; gradient 0."""

    function = "trunc"


class Sign(_Step):
    """y = -1, 0 or 1 as x < 0, x = 0 or x > 0, and 0 at nan (as PyTorch; NumPy gives nan);
    gradient 0."""

    def forward(self, ctx, x):
        xp = ctx.xp
        if not xp.isdtype(x.dtype, "real floating"):
            return xp.sign(x)
        return xp.where(xp.isnan(x), xp.zeros((), dtype=x.dtype), xp.sign(x))


class Remainder(_Binary):
    """y = a mod b with the sign of b (Python's and PyTorch's ``%``): a - b ⌊a / b⌋.

    dy/da = 1, dy/db = -⌊a / b⌋, as PyTorch defines them.
    """

    def forward(self, ctx, a, b):
        a, b = ctx.inputs = ctx.backend.promote(a, b)
        return ctx.xp.remainder(a, b)

    def backward(self, ctx, grad):
        xp, (a, b) = ctx.xp, ctx.inputs
        need_a, need_b = ctx.needs_input_grad
        return grad if need_a else None, -grad * xp.floor_divide(a, b) if need_b else None


class FloorDivide(_Binary):
    """y = ⌊a / b⌋ (``//``); gradient 0 for both (PyTorch's ``div(rounding_mode="floor")``)."""

    def forward(self, ctx, a, b):
        a, b = ctx.backend.promote(a, b)
        return ctx.xp.floor_divide(a, b)

    def backward(self, ctx, grad):
        zeros = ctx.xp.zeros_like(grad)
        need_a, need_b = ctx.needs_input_grad
        return zeros if need_a else None, zeros if need_b else None
