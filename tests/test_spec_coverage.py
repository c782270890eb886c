"""Every node the library exports is checked against PyTorch by some OpSpec (tests/specs_*.py)."""
import functools
import inspect

from hypothesis import Phase, find, settings

import miniflow.nodes as nodes
from miniflow import Input
from miniflow.graph import Node, topological_order
from oracle import as_case, all_specs

# Justified exemptions: nodes no OpSpec can build.
EXEMPT = {
    # The oracle wraps every spec's output in DummyGrad (the upstream gradient is fed
    # through it), so every spec covers it.
    "DummyGrad",
}


@functools.lru_cache(maxsize=None)
def _covered():
    """The node classes each spec's graph contains, built from one drawn case (no shrinking)."""
    once = settings(phases=[Phase.generate], max_examples=1, database=None)
    found = set()
    for spec in all_specs():
        case = as_case(find(spec.inputs, lambda _: True, settings=once))
        out = spec.build(*[Input() for _ in case.arrays], **case.kwargs)
        found.update(type(n) for n in topological_order(out))
    return found


def test_every_exported_node_has_an_opspec():
    exported = {getattr(nodes, name) for name in nodes.__all__}
    exported = {c for c in exported if inspect.isclass(c) and issubclass(c, Node)}
    missing = sorted(c.__name__ for c in exported - _covered() if c.__name__ not in EXEMPT)
    assert not missing, f"nodes without an OpSpec in tests/specs_*.py: {missing}"


def test_the_coverage_check_sees_nodes_built_by_operators_and_functions():
    """Specs written with operators and helper functions count for the nodes they build."""
    covered = _covered()
    assert {"Index", "MatrixTranspose", "SplitPart", "Less", "Remainder"} <= {
        c.__name__ for c in covered}
