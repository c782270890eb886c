"""Every node against PyTorch autograd in float64, alone and in random graphs, on every backend.

``MINIFLOW_FUZZ=N`` raises the number of hypothesis examples per test for a
long local run (``MINIFLOW_FUZZ=2000 pytest tests/test_differential.py``);
CI runs the default, a few hundred graphs in all.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oracle import all_specs, as_case, check_spec, compare_with_torch, torch, values

from miniflow import Add, Input, Sigmoid, Sum, Tanh

SPECS = all_specs()
EXAMPLES = int(os.environ.get("MINIFLOW_FUZZ", "0"))
PER_SPEC = settings(max_examples=EXAMPLES or 15, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])
GRAPHS = settings(PER_SPEC, max_examples=EXAMPLES or 60)


def _float64_backend(backend):
    probe = backend.asarray(np.zeros(1))
    if not backend.xp.isdtype(probe.dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_node_matches_pytorch(spec, backend):
    _float64_backend(backend)

    @PER_SPEC
    @given(drawn=spec.inputs)
    def check(drawn):
        check_spec(spec, drawn, backend)

    check()


# -- random graphs ------------------------------------------------------------------

ELEMENTWISE = [s for s in SPECS if s.elementwise]
OTHERS = [s for s in SPECS if not s.elementwise]


def _into_domain(pair, domain):
    """Map an intermediate (node, tensor) into a spec's domain with smooth, bounded maps."""
    node, tensor = pair
    if domain == "positive":
        return Sigmoid(node) * 2 + 0.1, torch.sigmoid(tensor) * 2 + 0.1
    if domain == "unit":
        return Tanh(node) * 0.9, torch.tanh(tensor) * 0.9
    if tensor.numel() and float(tensor.detach().abs().max()) > 10:
        return Tanh(node) * 3, torch.tanh(tensor) * 3  # keep chained Exp/Mul from overflowing
    return pair


def moderate(shape):
    return values(shape, -2.0, 2.0)


def tiny(shape):
    """The bottom of float64's range: subnormals, the smallest normals (whose products are
    subnormal), zeros of both signs, among a few ordinary values."""
    return hnp.arrays(np.float64, shape, elements=st.one_of(
        st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, -1e-310, 1.0, -0.5]),
        st.floats(-1e-300, 1e-300)))


@st.composite
def random_graph(draw, leaf_values=moderate):
    """A random graph: shared leaves, a chain of elementwise nodes, side branches of the others.

    Returns (leaf arrays, build(*leaf_nodes) -> scalar node, torch_fn(*tensors) -> scalar).
    The recipe is drawn once and replayed for miniflow and for PyTorch. Leaves are
    reused by several nodes, so their gradients must sum.
    """
    count = draw(st.integers(1, 3))
    leaf_shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3,
                                                         max_side=3)).input_shapes
    leaves = [draw(leaf_values(s)) for s in leaf_shapes]
    steps = [(draw(st.sampled_from(ELEMENTWISE)),
              [draw(st.integers(0, 1_000)) for _ in range(3)]) for _ in range(draw(st.integers(1, 6)))]
    branches = [(spec, as_case(draw(spec.inputs)))
                for spec in draw(st.lists(st.sampled_from(OTHERS), max_size=2))] if OTHERS else []
    arrays = leaves + [a for _, case in branches for a in case.arrays]

    def build_pair(mf_inputs, torch_inputs):
        pool = list(zip(mf_inputs[:count], torch_inputs[:count]))
        unused = set(range(count))
        for spec, picks in steps:
            chosen = [p % len(pool) for p in picks[:spec.arity]]
            unused.difference_update(chosen)
            operands = [_into_domain(pool[p], spec.domain) for p in chosen]
            unused.add(len(pool))
            pool.append((spec.build(*[n for n, _ in operands]),
                         spec.torch_fn(*[t for _, t in operands])))
        # Every result nobody consumed (the last one, untouched leaves) reaches the output.
        ends = sorted(unused)
        node, tensor = Sum(pool[ends[0]][0]), pool[ends[0]][1].sum()
        for k in ends[1:]:
            node, tensor = Add(node, Sum(pool[k][0])), tensor + pool[k][1].sum()
        rest_mf, rest_t = mf_inputs[count:], torch_inputs[count:]
        for spec, case in branches:
            k = len(case.arrays)
            branch_node = spec.build(*rest_mf[:k], **case.kwargs)
            branch_tensor = spec.torch_fn(*rest_t[:k], **case.kwargs)
            rest_mf, rest_t = rest_mf[k:], rest_t[k:]
            node, tensor = Add(node, Sum(branch_node)), tensor + branch_tensor.sum()
        return node, tensor

    return arrays, build_pair


@pytest.mark.skipif(not ELEMENTWISE, reason="no elementwise specs")
@pytest.mark.parametrize("leaf_values", [moderate, tiny])
def test_random_graphs_match_pytorch(leaf_values, backend):
    _check_random_graphs(leaf_values, backend)


@pytest.mark.skipif(not ELEMENTWISE, reason="no elementwise specs")
@pytest.mark.parametrize("upstream", [np.inf, -np.inf, np.nan])
def test_random_graphs_with_a_non_finite_upstream_gradient_match_pytorch(upstream, backend):
    """inf or nan fed as the output's gradient: every rule's selects (ReLU's 0 where
    x <= 0) and products (inf * 0 = nan) must meet it as PyTorch's do."""
    _check_random_graphs(moderate, backend, upstream,
                         settings(GRAPHS, max_examples=EXAMPLES // 4 or 20))


def _check_random_graphs(leaf_values, backend, upstream=None, examples=None):
    """Random graphs, with leaves of moderate size or at the subnormal scale.

    Their side branches draw from every non-elementwise spec: negative axes, Clip
    with low > high, empty and n <= correction reductions, -inf pooling windows.

    Subnormals: where the backend flushes them to zero (JAX on CPU), the oracle
    does too (see oracle.flushes_subnormals); elsewhere they are computed exactly.
    """
    _float64_backend(backend)

    @(examples or GRAPHS if leaf_values is moderate
      else settings(GRAPHS, max_examples=EXAMPLES // 4 or 30))
    @given(graph=random_graph(leaf_values))
    def check(graph):
        arrays, build_pair = graph
        # Both sides replay one recipe; its domain choices follow the values, which are
        # the same arrays on both sides, so miniflow and PyTorch build the same function.
        steering = [torch.tensor(a) for a in arrays]
        compare_with_torch(lambda *nodes: build_pair(list(nodes), steering)[0],
                           lambda *tensors: build_pair([Input() for _ in tensors],
                                                       list(tensors))[1],
                           arrays, backend, rtol=1e-6, atol=1e-8, upstream=upstream)

    check()
