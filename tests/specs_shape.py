"""Oracle specs of the shape and indexing nodes (see tests/oracle.py).

PyTorch rejects negative slice steps, so indexing is compared with a gather of
the positions NumPy's rules pick (``index_select`` per axis), an independent route.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniflow import (Concat, ExpandDims, Flatten, Pad, Reshape, Split, Squeeze, Stack, Take,
                      Transpose)
from oracle import Case, OpSpec, shapes, values


@st.composite
def reshape_case(draw):
    shape = draw(shapes())
    size = math.prod(shape)
    targets = [(size,), tuple(reversed(shape)), (1, size), (size, 1, 1)]
    if size:
        targets += [(-1,), (1, -1), tuple(reversed(shape))[:-1] + (-1,)] if shape else [(-1,)]
    return Case((draw(values(shape)),), {"shape": draw(st.sampled_from(targets))})


@st.composite
def flatten_case(draw):
    shape = draw(shapes(min_dims=1))
    return Case((draw(values(shape)),), {"start_axis": draw(st.integers(-len(shape),
                                                                       len(shape) - 1))})


@st.composite
def transpose_case(draw):
    shape = draw(shapes())
    # Each axis written as it is or counting from the end (-1 for the last), as NumPy allows.
    axes = tuple(a - len(shape) if draw(st.booleans()) else a
                 for a in draw(st.permutations(range(len(shape)))))
    return Case((draw(values(shape)),), {"axes": axes})


@st.composite
def expand_case(draw):
    shape = draw(shapes())
    return Case((draw(values(shape)),), {"axis": draw(st.integers(-len(shape) - 1, len(shape)))})


@st.composite
def squeeze_case(draw):
    shape = draw(shapes(min_side=1).flatmap(
        lambda s: st.lists(st.sampled_from([1, *s] if s else [1]), max_size=4).map(tuple)))
    ones = [k for k, n in enumerate(shape) if n == 1]
    axis = draw(st.one_of(st.none(), st.sampled_from(ones))) if ones else None
    return Case((draw(values(shape)),), {"axis": axis})


def torch_squeeze(t, axis):
    return t.squeeze() if axis is None else t.squeeze(axis)


@st.composite
def joining_case(draw, same_shape):
    shape = draw(shapes(min_dims=1))
    count = draw(st.integers(1, 3))
    axis = draw(st.integers(-len(shape) - same_shape, len(shape) - 1 + same_shape))
    arrays = []
    for _ in range(count):
        s = list(shape)
        if not same_shape:
            s[axis] = draw(st.integers(0, 3))
        arrays.append(draw(values(tuple(s))))
    return Case(tuple(arrays), {"axis": axis})


@st.composite
def split_case(draw):
    shape = draw(shapes(min_dims=1, min_side=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    sections = draw(st.one_of(
        st.sampled_from([d for d in range(1, n + 1) if n % d == 0]),
        st.lists(st.integers(0, n), max_size=3).map(sorted).map(tuple)))
    return Case((draw(values(shape)),), {"sections": sections, "axis": axis})


def mf_split(*xs, sections, axis):
    # Weight the parts differently so each part's gradient is checked on its own.
    parts = Split(xs[0], sections, axis)
    return Concat([p * (k + 1) for k, p in enumerate(parts)], axis=axis)


def torch_split(t, sections, axis):
    parts = torch.tensor_split(t, sections if isinstance(sections, int) else list(sections), axis)
    return torch.cat([p * (k + 1) for k, p in enumerate(parts)], dim=axis)


@st.composite
def pad_case(draw):
    shape = draw(shapes(min_dims=1))
    widths = tuple(draw(st.tuples(st.integers(0, 2), st.integers(0, 2))) for _ in shape)
    return Case((draw(values(shape)),), {"widths": widths, "value": draw(st.sampled_from(
        [0.0, -1.5]))})


def torch_pad(t, widths, value):
    return F.pad(t, [w for pair in reversed(widths) for w in pair], value=value)


@st.composite
def basic_key(draw, shape):
    """A NumPy basic index for ``shape``: ints, slices (any step), None and at most one ``...``."""
    key = []
    for n in shape:
        if n and draw(st.booleans()):
            key.append(draw(st.integers(-n, n - 1)))
        else:
            bound = st.one_of(st.none(), st.integers(-n - 2, n + 2))
            step = st.one_of(st.none(), st.integers(-3, 3).filter(bool))
            key.append(slice(draw(bound), draw(bound), draw(step)))
    for _ in range(draw(st.integers(0, 2))):
        key.insert(draw(st.integers(0, len(key))), None)
    if key and draw(st.booleans()):  # replace a run of full slices, or a suffix, by ...
        start = draw(st.integers(0, len(key)))
        stop = draw(st.integers(start, len(key)))
        if all(k is None or k == slice(None) or isinstance(k, slice) and k == slice(None, None)
               for k in key[start:stop]) and not any(k is None for k in key[start:stop]):
            key[start:stop] = [Ellipsis]
    return tuple(key)


@st.composite
def index_case(draw):
    shape = draw(shapes())
    return Case((draw(values(shape)),), {"key": draw(basic_key(shape))})


def torch_index(t, key):
    axes = sum(k is not None and k is not Ellipsis for k in key)
    if Ellipsis not in key:
        key = key + (Ellipsis,)
    at = key.index(Ellipsis)
    key = key[:at] + (slice(None),) * (t.ndim - axes) + key[at + 1:]
    axis = 0
    for k in key:
        if k is None:
            t = t.unsqueeze(axis)
            axis += 1
        elif isinstance(k, int):
            t = t.select(axis, k)
        else:
            positions = list(range(*k.indices(t.shape[axis])))
            t = t.index_select(axis, torch.tensor(positions, dtype=torch.long))
            axis += 1
    return t


@st.composite
def take_case(draw):
    shape = draw(shapes(min_dims=1, min_side=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    indices = draw(hnp.arrays(np.int64, draw(shapes(max_dims=2)),
                              elements=st.integers(0, shape[axis] - 1)))
    return Case((draw(values(shape)), indices), {"axis": axis})


def torch_take(t, indices, axis):
    return t[(slice(None),) * (axis % t.ndim) + (indices,)]


SPECS = [
    OpSpec("Reshape", Reshape, lambda t, shape: t.reshape(shape), reshape_case()),
    OpSpec("Flatten", Flatten, lambda t, start_axis: torch.flatten(t, start_axis), flatten_case()),
    OpSpec("Transpose", Transpose, lambda t, axes: t.permute(axes), transpose_case()),
    OpSpec("x.T", lambda x: x.T, lambda t: t.permute(tuple(reversed(range(t.ndim)))),
           st.builds(lambda a: (a,), shapes().flatmap(values))),
    OpSpec("x.mT", lambda x: x.mT, lambda t: t.mT,
           st.builds(lambda s: (s,), shapes(min_dims=2).flatmap(values))),
    OpSpec("ExpandDims", ExpandDims, lambda t, axis: t.unsqueeze(axis), expand_case()),
    OpSpec("Squeeze", Squeeze, torch_squeeze, squeeze_case()),
    OpSpec("Concat", lambda *xs, axis: Concat(list(xs), axis), lambda *ts, axis: torch.cat(ts, axis),
           joining_case(same_shape=False)),
    OpSpec("Stack", lambda *xs, axis: Stack(list(xs), axis),
           lambda *ts, axis: torch.stack(ts, axis), joining_case(same_shape=True)),
    OpSpec("Split", mf_split, torch_split, split_case()),
    OpSpec("Pad", Pad, torch_pad, pad_case()),
    OpSpec("x[...]", lambda x, key: x[key], torch_index, index_case()),
    OpSpec("Take", Take, torch_take, take_case()),
]
