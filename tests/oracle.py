"""PyTorch autograd as an independent oracle for miniflow's values and gradients.

A node family describes each of its nodes once, as an :class:`OpSpec`: how to
build it from miniflow nodes, the same function in PyTorch, and a hypothesis
strategy for inputs where both are defined and smooth. The differential tests
(``tests/test_differential.py``) then check every spec on every backend, alone
and composed into random graphs, against PyTorch in float64.

Family modules are ``tests/specs_<family>.py``, each with a ``SPECS`` list.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

torch = __import__("pytest").importorskip("torch")

from miniflow import DummyGrad, Input, value_and_grad  # noqa: E402


@dataclass(frozen=True)
class OpSpec:
    """One node, described for the oracle.

    Attributes
    ----------
    name : str
        Shown in test ids.
    build : callable
        ``build(*input_nodes) -> Node``.
    torch_fn : callable
        ``torch_fn(*tensors) -> tensor``, the same function in PyTorch.
    inputs : hypothesis strategy
        Draws a tuple of NumPy float64 (or integer, for labels/indices) arrays,
        inside the function's domain and away from its kinks; or a :class:`Case`
        when the node also takes drawn parameters (an axis, a shape).
    elementwise : bool
        True for a shape-preserving unary node or a broadcasting binary node
        that random graphs may chain: its inputs are any real values drawn by
        ``values`` of the given shapes (``domain`` says which).
    domain : str
        For elementwise specs: "real", "positive" (x > 0) or "unit" (|x| < 1),
        so random graphs can map their intermediates into it.
    rtol, atol : float
        Tolerances against PyTorch (float64 both sides).
    arity : int
        How many inputs an elementwise spec takes (random graphs need it).
    """

    name: str
    build: Callable
    torch_fn: Callable
    inputs: st.SearchStrategy
    elementwise: bool = False
    domain: str = "real"
    rtol: float = 1e-7
    atol: float = 1e-9
    arity: int = field(default=1)


@dataclass(frozen=True)
class Case:
    """Drawn inputs plus drawn keyword parameters, passed to both ``build`` and ``torch_fn``."""

    arrays: tuple
    kwargs: dict = field(default_factory=dict)


def as_case(drawn) -> Case:
    return drawn if isinstance(drawn, Case) else Case(tuple(drawn))


# -- strategies shared by the family modules ---------------------------------------

def shapes(min_dims=0, max_dims=3, min_side=0, max_side=4):
    """Array shapes, scalars and empty axes included by default."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def values(shape, low=-3.0, high=3.0, avoid=(), margin=1e-3):
    """float64 arrays in [low, high], at least ``margin`` away from each point of ``avoid``."""
    def keep_away(x):
        for point in avoid:
            close = np.abs(x - point) < margin
            x = np.where(close, point + np.where(x >= point, margin, -margin) * 2, x)
        return x

    elements = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float64, shape, elements=elements).map(keep_away)


@st.composite
def unary(draw, low=-3.0, high=3.0, avoid=(), shape=None):
    """One float64 array of a random shape."""
    return (draw(values(shape if shape is not None else draw(shapes()), low, high, avoid)),)


@st.composite
def broadcasting(draw, count=2, low=-3.0, high=3.0, avoid=()):
    """``count`` float64 arrays whose shapes broadcast together."""
    drawn = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3, max_side=4))
    return tuple(draw(values(s, low, high, avoid)) for s in drawn.input_shapes)


# -- the comparison -------------------------------------------------------------------

def _torch_inputs(arrays):
    return [torch.tensor(a, dtype=torch.float64, requires_grad=True) if a.dtype.kind == "f"
            else torch.tensor(a) for a in arrays]


def check_spec(spec: OpSpec, drawn, backend, seed=0):
    """Compare one drawn case of ``spec`` with PyTorch on ``backend``."""
    case = as_case(drawn)
    compare_with_torch(lambda *n: spec.build(*n, **case.kwargs),
                       lambda *t: spec.torch_fn(*t, **case.kwargs),
                       case.arrays, backend, rtol=spec.rtol, atol=spec.atol, seed=seed)


@functools.lru_cache(maxsize=None)
def flushes_subnormals(backend) -> bool:
    """Whether ``backend``'s arithmetic takes subnormal floats (below ~2.2e-308) as zeros.

    JAX on CPU does, by design: XLA runs with the processor's flush-to-zero and
    denormals-are-zero modes (jax-ml/jax#16200, "sharp bits"), so there
    5e-324 > 0 is False and ReLU's gradient at 5e-324 is 0. No node can compute
    otherwise on such a backend.
    """
    smallest = np.array([np.nextafter(0.0, 1.0)])
    return bool(np.asarray(backend.to_numpy(backend.asarray(smallest) * 1.0))[0] == 0)


@contextlib.contextmanager
def _arithmetic_of(backend):
    """PyTorch computing with ``backend``'s floating-point mode (flushing subnormals or not)."""
    if not flushes_subnormals(backend):
        yield
        return
    if not torch.set_flush_denormal(True):
        __import__("pytest").skip(f"{backend.name} flushes subnormals to zero, and PyTorch "
                                  "cannot on this processor")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def compare_with_torch(build, torch_fn, arrays, backend, rtol=1e-7, atol=1e-9, seed=0,
                       upstream=None):
    """Assert that miniflow's value and gradients equal PyTorch's (float64) on ``backend``.

    The output is checked through ``sum(output * upstream)`` with a random
    upstream gradient, so every element of every gradient matters. Where the
    backend flushes subnormals to zero (JAX on CPU), PyTorch computes so too.
    ``upstream`` (a number: inf, nan...) replaces the random upstream gradient, so that
    non-finite gradients meet every rule's selects and products as in PyTorch.
    """
    arrays = [np.asarray(a) for a in arrays]
    tensors = _torch_inputs(arrays)
    with _arithmetic_of(backend):
        expected = torch_fn(*tensors)
        upstream = (np.random.default_rng(seed).standard_normal(tuple(expected.shape))
                    if upstream is None else np.full(tuple(expected.shape), upstream))
        differentiable = [t for t in tensors if t.requires_grad]
        if differentiable and expected.requires_grad:
            torch_grads = torch.autograd.grad(expected, differentiable, torch.tensor(upstream),
                                              allow_unused=True)
        else:
            torch_grads = [None] * len(differentiable)

    nodes = [Input(name=f"x{k}") for k in range(len(arrays))]
    head = DummyGrad(build(*nodes))
    feed = {node: backend.asarray(a) for node, a in zip(nodes, arrays)}
    feed[head] = backend.asarray(upstream)
    wrt = [node for node, a in zip(nodes, arrays) if a.dtype.kind == "f"]
    value, grads = value_and_grad(head, feed, wrt, backend=backend.name)

    got = np.asarray(backend.to_numpy(value), dtype=np.float64)
    want = expected.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg="value")
    for k, (grad, reference, node) in enumerate(zip(grads, torch_grads, wrt)):
        got = np.asarray(backend.to_numpy(grad), dtype=np.float64)
        want = (np.zeros(got.shape) if reference is None else reference.numpy())
        assert got.shape == want.shape, f"gradient of {node.label}: shape {got.shape} != {want.shape}"
        np.testing.assert_allclose(got, want, rtol=rtol * 10, atol=atol * 10,
                                   err_msg=f"gradient of {node.label}")


def all_specs() -> list[OpSpec]:
    """Every ``SPECS`` entry of every ``tests/specs_*.py`` module."""
    found = []
    here = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if info.name.startswith("specs_"):
            found.extend(importlib.import_module(info.name).SPECS)
    return found
