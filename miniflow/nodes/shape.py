"""Shape nodes: reshaping, reordering, joining and indexing; values move, none change.

Each backward moves the gradient back to where forward took the value from, with
standard operations only (reshape, permute, concat, slicing): no item
assignment, which JAX lacks, and no fancy-index scatter, which drops repeats.
"""
from __future__ import annotations

import math
import numbers
import operator

from ..errors import GraphError, NodeError, ShapeError
from ..graph import Node
from ._common import as_int, as_int_tuple, inverse_permutation, index_range, is_integer_like


def _nodes_list(kind, nodes):
    if isinstance(nodes, Node) or not isinstance(nodes, (list, tuple)):
        raise GraphError(f"{kind} takes a list of nodes: {kind}([x, y], axis=0)")
    return nodes


def _axis_in(axis, ndim, what="axis"):
    """``axis`` as a non-negative position among ``ndim`` axes, or ShapeError."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what} {axis} is out of range for {ndim} axes")
    return axis % ndim


class Reshape(Node):
    """y = x with shape ``shape`` (one entry may be -1: whatever the size leaves).

    The gradient is reshaped back to x's shape.
    """

    arity = 1

    def __init__(self, x, shape, name=None):
        try:
            shape = (as_int(shape, "Reshape shape", -1),)
        except GraphError:
            shape = as_int_tuple(shape, "Reshape shape", -1)
        if shape.count(-1) > 1:
            raise GraphError(f"Reshape: shape must be integers >= 0 with at most one -1, "
                             f"got {shape}")
        super().__init__(x, name=name)
        self.shape = shape

    def forward(self, ctx, x):
        return ctx.xp.reshape(x, self.shape)

    def backward(self, ctx, grad):
        return (ctx.xp.reshape(grad, ctx.inputs[0].shape),)

    def shape_problem(self, x_shape):
        return f"cannot reshape {x_shape} (size {math.prod(x_shape)}) into {self.shape}"


class Flatten(Node):
    """y = x with the axes from ``start_axis`` on merged into one: (N, C, H, W) -> (N, C*H*W)."""

    arity = 1

    def __init__(self, x, start_axis=1, name=None):
        super().__init__(x, name=name)
        self.start_axis = as_int(start_axis, "Flatten start_axis")

    def forward(self, ctx, x):
        start = _axis_in(self.start_axis, max(x.ndim, 1), "start_axis")
        # The size is spelled out: -1 is ambiguous when an axis is empty.
        return ctx.xp.reshape(x, tuple(x.shape[:start]) + (math.prod(x.shape[start:]),))

    def backward(self, ctx, grad):
        return (ctx.xp.reshape(grad, ctx.inputs[0].shape),)


class Transpose(Node):
    """y = x with its axes permuted: y.shape[k] = x.shape[axes[k]] (reversed when ``axes`` is None).

    Negative axes count from the end, as in NumPy. The gradient is permuted back
    by the inverse permutation. ``x.T`` is ``Transpose(x)``.
    """

    arity = 1

    def __init__(self, x, axes=None, name=None):
        super().__init__(x, name=name)
        self.axes = None if axes is None else as_int_tuple(axes, "Transpose axes")

    def _axes(self, shape):
        """The permutation for an input of ``shape``, non-negative (not every library takes -1)."""
        ndim = len(shape)
        if self.axes is None:
            return tuple(reversed(range(ndim)))
        if len(self.axes) != ndim or any(not -ndim <= a < ndim for a in self.axes) \
                or len({a % ndim for a in self.axes}) != ndim:
            raise ShapeError(f"axes {self.axes} are not a permutation of the {ndim} axes of "
                             f"{tuple(shape)}")
        return tuple(a % ndim for a in self.axes)

    def forward(self, ctx, x):
        return ctx.xp.permute_dims(x, self._axes(x.shape))

    def backward(self, ctx, grad):
        axes = self._axes(ctx.inputs[0].shape)
        inverse = inverse_permutation(axes)
        return (ctx.xp.permute_dims(grad, inverse),)


def permute_dims(x, axes):
    """``Transpose(x, axes)``, under the Array API's name."""
    return Transpose(x, axes)


class MatrixTranspose(Node):
    """y = x with its last two axes swapped (``x.mT``): each matrix of a stack transposed."""

    arity = 1

    def forward(self, ctx, x):
        if x.ndim < 2:
            raise ShapeError(f"needs at least two axes to swap, got shape {tuple(x.shape)}")
        return ctx.xp.matrix_transpose(x)

    def backward(self, ctx, grad):
        return (ctx.xp.matrix_transpose(grad),)


class ExpandDims(Node):
    """y = x with a new axis of size 1 at position ``axis``; the gradient drops it again."""

    arity = 1

    def __init__(self, x, axis=0, name=None):
        super().__init__(x, name=name)
        self.axis = as_int(axis, "ExpandDims axis")

    def forward(self, ctx, x):
        _axis_in(self.axis, x.ndim + 1)
        return ctx.xp.expand_dims(x, axis=self.axis)

    def backward(self, ctx, grad):
        return (ctx.xp.reshape(grad, ctx.inputs[0].shape),)


class Squeeze(Node):
    """y = x without its axes of size 1 (only ``axis``, an int or a tuple, when given)."""

    arity = 1

    def __init__(self, x, axis=None, name=None):
        super().__init__(x, name=name)
        if axis is not None:
            try:
                axis = (as_int(axis, "Squeeze axis"),)
            except GraphError:
                axis = as_int_tuple(axis, "Squeeze axis")
        self.axis = axis

    def forward(self, ctx, x):
        if self.axis is None:
            drop = {k for k, n in enumerate(x.shape) if n == 1}
        else:
            drop = {_axis_in(a, x.ndim) for a in self.axis}
            if any(x.shape[k] != 1 for k in drop):
                raise ShapeError(f"cannot squeeze axes {self.axis} of shape {tuple(x.shape)}: "
                                 f"their size is not 1")
        return ctx.xp.reshape(x, tuple(n for k, n in enumerate(x.shape) if k not in drop))

    def backward(self, ctx, grad):
        return (ctx.xp.reshape(grad, ctx.inputs[0].shape),)


class Concat(Node):
    """y = the inputs joined along an existing ``axis``; each gets back its slice of the gradient."""

    arity = (1, None)

    def __init__(self, nodes, axis=0, name=None):
        super().__init__(*_nodes_list("Concat", nodes), name=name)
        self.axis = as_int(axis, "Concat axis")

    def forward(self, ctx, *values):
        return ctx.xp.concat(ctx.backend.promote(*values), axis=self.axis)

    def backward(self, ctx, grad):
        axis = self.axis % grad.ndim
        ends = list(_cumulative(v.shape[axis] for v in ctx.inputs))
        return tuple(grad[(slice(None),) * axis + (slice(end - v.shape[axis], end), ...)]
                     for v, end in zip(ctx.inputs, ends))

    def shape_problem(self, *shapes):
        return _joining_problem("concatenate", shapes, self.axis, same_ndim_only=False)


class Stack(Node):
    """y = the inputs (all of one shape) stacked along a new ``axis``; each gets back its slice."""

    arity = (1, None)

    def __init__(self, nodes, axis=0, name=None):
        super().__init__(*_nodes_list("Stack", nodes), name=name)
        self.axis = as_int(axis, "Stack axis")

    def forward(self, ctx, *values):
        return ctx.xp.stack(ctx.backend.promote(*values), axis=self.axis)

    def backward(self, ctx, grad):
        axis = self.axis % grad.ndim
        return tuple(grad[(slice(None),) * axis + (k, ...)] for k in range(len(ctx.inputs)))

    def shape_problem(self, *shapes):
        return _joining_problem("stack", shapes, self.axis, same_ndim_only=True)


def _cumulative(sizes):
    total = 0
    for n in sizes:
        total += n
        yield total


def _joining_problem(verb, shapes, axis, same_ndim_only):
    described = ", ".join(str(s) for s in shapes)
    if len({len(s) for s in shapes}) > 1:
        return f"cannot {verb} shapes {described}: they have different numbers of axes"
    ndim = len(shapes[0]) + (1 if same_ndim_only else 0)
    if not -ndim <= axis < ndim:
        return f"cannot {verb} shapes {described} along axis {axis}: out of range"
    if same_ndim_only and len(set(shapes)) > 1:
        return f"cannot {verb} shapes {described}: they must all be equal"
    if not same_ndim_only and len({s[:axis % ndim] + s[axis % ndim + 1:] for s in shapes}) > 1:
        return f"cannot {verb} shapes {described} along axis {axis}: the other axes differ"
    return None  # the shapes fit: the failure was something else, which the error names


class Pad(Node):
    """y = x with ``value`` added around it: ``widths[k] = (before, after)`` for axis k.

    The gradient is the slice of the output's gradient where x sits.
    """

    arity = 1

    def __init__(self, x, widths, value=0.0, name=None):
        try:
            pairs = [tuple(pair) for pair in widths]
        except TypeError:
            pairs = None
        if pairs is None or isinstance(widths, (str, bytes)) \
                or any(len(pair) != 2 or isinstance(pair, (str, bytes)) for pair in pairs):
            raise GraphError(f"Pad widths must be one (before, after) pair per axis, got "
                             f"{widths!r}")
        # Integers only: int(1.5) would pad by 1 and int('2') by 2 without a word.
        widths = tuple(as_int_tuple(pair, "Pad widths", 0) for pair in pairs)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise GraphError(f"Pad value must be a number, got {value!r}")
        super().__init__(x, name=name)
        self.widths, self.value = widths, value

    def forward(self, ctx, x):
        xp = ctx.xp
        if len(self.widths) != x.ndim:
            raise ShapeError(f"{len(self.widths)} (before, after) pairs for an input of shape "
                             f"{tuple(x.shape)}: need one per axis")
        for axis, (before, after) in enumerate(self.widths):
            edge = tuple(x.shape[:axis]), tuple(x.shape[axis + 1:])
            x = xp.concat([xp.full(edge[0] + (before,) + edge[1], self.value, dtype=x.dtype), x,
                           xp.full(edge[0] + (after,) + edge[1], self.value, dtype=x.dtype)],
                          axis=axis)
        return x

    def backward(self, ctx, grad):
        shape = ctx.inputs[0].shape
        return (grad[tuple(slice(b, b + n) for (b, _), n in zip(self.widths, shape))],)


# -- indexing -----------------------------------------------------------------------------

def _check_key(key):
    """The key as a tuple, its integers (NumPy's too) as Python ints; GraphError if unusable."""
    key = key if isinstance(key, tuple) else (key,)
    checked = []
    for k in key:
        if isinstance(k, slice):
            if not all(b is None or is_integer_like(b) for b in (k.start, k.stop, k.step)) \
                    or (k.step is not None and operator.index(k.step) == 0):
                raise GraphError(f"slice {k} must have integer bounds and a nonzero step")
            k = slice(*(None if b is None else operator.index(b)
                        for b in (k.start, k.stop, k.step)))
        elif is_integer_like(k):
            k = operator.index(k)
        elif not (k is None or k is Ellipsis):
            raise GraphError(f"a node is indexed with ints, slices, None and ..., not "
                             f"{type(k).__name__} ({k!r}); use Take for an index array")
        checked.append(k)
    key = tuple(checked)
    if sum(k is Ellipsis for k in key) > 1:
        raise GraphError("an index can have only one ...")
    return key


def _expand(key, ndim):
    """The key with ``...`` expanded and trailing ``:`` added: one int or slice per axis, plus Nones."""
    axes = sum(k is not None and k is not Ellipsis for k in key)
    if axes > ndim:
        raise ShapeError(f"too many indices ({axes}) for {ndim} axes")
    key = key if Ellipsis in key else key + (Ellipsis,)
    at = key.index(Ellipsis)
    return key[:at] + (slice(None),) * (ndim - axes) + key[at + 1:]


def _positions(entry, n):
    """The positions an int or a slice takes from an axis of size n, as a range."""
    if isinstance(entry, int):
        if not -n <= entry < n:
            raise ShapeError(f"index {entry} is out of range for an axis of size {n}")
        return range(entry % n, entry % n + 1)
    return range(*entry.indices(n))


class Index(Node):
    """y = x[key], basic indexing: ints, slices (any step), None and ``...`` (``x[1:, None]``).

    The gradient is zero except where x's values were taken; it is built from
    concatenated zero blocks, standard on every backend.
    """

    arity = 1

    def __init__(self, x, key, name=None):
        super().__init__(x, name=name)
        self.key = _check_key(key)

    def forward(self, ctx, x):
        xp, tokens = ctx.xp, _expand(self.key, x.ndim)
        ranges = [_positions(t, n) for t, n in zip([t for t in tokens if t is not None], x.shape)]
        # Take ascending slices, then flip: not every library accepts a negative step.
        ascending = tuple(slice(0, 0) if not r else slice(r.start, r.stop, r.step) if r.step > 0
                          else slice(r[-1], r[0] + 1, -r.step) for r in ranges)
        y = x[ascending]
        flipped = tuple(k for k, r in enumerate(ranges) if r.step < 0 and len(r) > 1)
        if flipped:
            y = xp.flip(y, axis=flipped)
        # Ints drop their axis, Nones add one of size 1.
        lengths, shape = iter(ranges), []
        for t in tokens:
            n = 1 if t is None else len(next(lengths))
            if not isinstance(t, int):
                shape.append(n)
        return xp.reshape(y, tuple(shape)) if tuple(shape) != tuple(y.shape) else y

    def backward(self, ctx, grad):
        shape = ctx.inputs[0].shape
        entries = [t for t in _expand(self.key, len(shape)) if t is not None]
        return (_scatter_basic(ctx.xp, grad, shape, entries),)

    def shape_problem(self, x_shape):
        return f"cannot index shape {x_shape} with {self.key}"


def _scatter_basic(xp, grad, shape, entries):
    """The gradient of x[entries] (one int or slice per axis of x), of x's ``shape``."""
    ranges = [_positions(e, n) for e, n in zip(entries, shape)]
    # Drop the axes None added and restore those an int removed: both have size 1.
    grad = xp.reshape(grad, tuple(len(r) for r in ranges))
    for axis, (r, n) in enumerate(zip(ranges, shape)):
        if len(r) != n or (n > 1 and r.step != 1):
            grad = _place_along(xp, grad, axis, n, r)
    return grad


def _place_along(xp, grad, axis, n, taken):
    """Put the slices of ``grad`` along ``axis`` at the positions ``taken``; zeros elsewhere."""
    def zeros(size):
        return xp.zeros(grad.shape[:axis] + (size,) + grad.shape[axis + 1:], dtype=grad.dtype)

    if len(taken) == 0:
        return zeros(n)
    if taken.step < 0:  # the same positions, read in increasing order
        grad, taken = xp.flip(grad, axis=axis), taken[::-1]
    if taken.step > 1:  # step - 1 zeros after each value, then the trailing ones cut off
        spread = xp.expand_dims(grad, axis=axis + 1)
        gap = xp.zeros(spread.shape[:axis + 1] + (taken.step - 1,) + spread.shape[axis + 2:],
                       dtype=grad.dtype)
        grad = xp.reshape(xp.concat([spread, gap], axis=axis + 1),
                          grad.shape[:axis] + (len(taken) * taken.step,) + grad.shape[axis + 1:])
        grad = grad[(slice(None),) * axis + (slice(0, taken[-1] - taken[0] + 1), ...)]
    return xp.concat([zeros(taken[0]), grad, zeros(n - taken[-1] - 1)], axis=axis)


def _split_points(sections, n):
    if isinstance(sections, int):
        if sections <= 0 or n % sections:
            raise ShapeError(f"an axis of size {n} does not split into {sections} equal parts")
        return [n // sections * k for k in range(sections + 1)]
    return [0, *sections, n]


class SplitPart(Node):
    """Part ``part`` of x split along ``axis`` (see :func:`Split`); its gradient is zero elsewhere."""

    arity = 1

    def __init__(self, x, sections, part, axis=0, name=None):
        super().__init__(x, name=name)
        self.sections, self.part, self.axis = sections, part, axis

    def _entries(self, shape):
        axis = _axis_in(self.axis, len(shape))
        points = _split_points(self.sections, shape[axis])
        start, stop = points[self.part], points[self.part + 1]
        if not 0 <= start <= stop <= shape[axis]:
            raise ShapeError(f"split points {self.sections} do not fit an axis of size "
                             f"{shape[axis]}")
        return [slice(None)] * axis + [slice(start, stop)] + [slice(None)] * (len(shape) - axis - 1)

    def forward(self, ctx, x):
        return x[tuple(self._entries(x.shape))]

    def backward(self, ctx, grad):
        shape = ctx.inputs[0].shape
        return (_scatter_basic(ctx.xp, grad, shape, self._entries(shape)),)


def Split(x, sections, axis=0):
    """x cut along ``axis`` into a list of nodes.

    ``sections`` is a number of equal parts (the axis must divide evenly, checked
    when the graph runs) or the increasing positions to cut at, as in NumPy's
    ``split``: ``Split(x, [2, 5])`` gives x[:2], x[2:5], x[5:] along ``axis``.
    """
    if is_integer_like(sections):
        sections = as_int(sections, "Split sections", 1)
        count = sections
    else:
        try:
            sections = as_int_tuple(sections, "Split sections", 0)
        except GraphError:
            raise GraphError(f"Split sections must be a positive count or a list of positions, "
                             f"got {sections!r}") from None
        count = len(sections) + 1
    axis = as_int(axis, "Split axis")
    return [SplitPart(x, sections, k, axis) for k in range(count)]


class Take(Node):
    """y = x gathered along ``axis`` at integer ``indices`` (any shape): an embedding lookup.

    ``y.shape = x.shape[:axis] + indices.shape + x.shape[axis + 1:]``. The gradient
    sums the rows of the upstream gradient that took the same index: a one-hot
    (indices.size x x.shape[axis]) matrix product, standard everywhere and exact
    for repeated indices, at that matrix's memory cost (fine for vocabularies of
    thousands). A non-finite upstream value reaches only the rows that took it, as in
    PyTorch (the one-hot product sums finite values; two more count the infinities).
    Indices outside [0, x.shape[axis]) are an error, as in PyTorch's embedding.
    """

    arity = 2
    integer_inputs = (1,)

    def __init__(self, x, indices, axis=0, name=None):
        super().__init__(x, indices, name=name)
        self.axis = as_int(axis, "Take axis")

    def forward(self, ctx, x, indices):
        xp = ctx.xp
        axis = _axis_in(self.axis, x.ndim)
        n, flat = x.shape[axis], xp.reshape(indices, (-1,))
        matches = flat[:, None] == index_range(xp, n, flat.dtype)
        # A row of `matches` holds one True per valid index: one reduction checks them all.
        # A traced (compiled) step cannot look at values; its first, uncompiled call did.
        if not getattr(ctx, "tracing", False) and int(xp.count_nonzero(matches)) != flat.shape[0]:
            raise NodeError(f"indices must lie in [0, {n}) for axis {self.axis} of shape "
                            f"{tuple(x.shape)}")
        ctx.save(matches)
        if flat.dtype != xp.int32 and flat.dtype != xp.int64:
            flat = xp.astype(flat, xp.int64)  # PyTorch's index_select takes no other
        taken = xp.take(x, flat, axis=axis)
        return xp.reshape(taken, tuple(x.shape[:axis]) + tuple(indices.shape)
                          + tuple(x.shape[axis + 1:]))

    def index_limits(self, x_shape, indices_shape):
        if not -len(x_shape) <= self.axis < len(x_shape):
            return {}  # forward names the bad axis
        return {1: (x_shape[self.axis], None)}

    def backward(self, ctx, grad):
        xp, (x, _), (matches,) = ctx.xp, ctx.inputs, ctx.saved
        axis = self.axis % x.ndim
        rows = xp.reshape(grad, tuple(x.shape[:axis]) + (matches.shape[0],)
                          + tuple(x.shape[axis + 1:]))
        # A product with the one-hot matrix adds 0 * inf = nan into every row no index
        # took; PyTorch's index_add leaves those rows 0. So the matrix product sums the
        # finite values only, and two more count, per row, the +inf (or nan) and the -inf
        # (or nan) values that reached it: +inf where only the first, -inf where only the
        # second, nan where both (inf - inf, or a nan), as a sum of them would give.
        # Three products, not one over the three stacked: that stack's product copies
        # a transposed (3, ...) array, and took 5 times as long in NumPy.
        one_hot = xp.astype(matches, grad.dtype)

        def per_row(values):
            return xp.tensordot(values, one_hot, axes=([axis], [0]))

        zero = xp.zeros((), dtype=rows.dtype)
        total = per_row(xp.where(xp.isfinite(rows), rows, zero))
        up = per_row(xp.astype(xp.logical_not(rows < math.inf), rows.dtype))
        down = per_row(xp.astype(xp.logical_not(rows > -math.inf), rows.dtype))
        inf = xp.asarray(math.inf, dtype=total.dtype)
        total = xp.where(up > 0, xp.where(down > 0, xp.asarray(math.nan, dtype=total.dtype), inf),
                         xp.where(down > 0, -inf, total))
        return xp.moveaxis(total, -1, axis), None
