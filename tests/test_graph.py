"""Graph structure: operator overloading, cached plans, shared sub-expressions, big graphs."""
import numpy as np
import pytest

from miniflow import (Add, Constant, CrossEntropyWithSoftmax, DummyGrad, Input, Linear, MatMul,
                      Mul, Neg, Node, Sigmoid, Sub, Sum, value_and_grad)
from miniflow.errors import GraphError
from miniflow.graph import Plan, topological_order


def structure(node):
    """A nested tuple of node types: equal for graphs built the same way."""
    if isinstance(node, Constant):
        return ("Constant", float(np.asarray(node.value)))
    return (type(node).__name__,) + tuple(structure(i) for i in node.inputs)


def test_operators_build_the_same_graphs_as_explicit_nodes():
    x, y, z, X, W, b = (Input() for _ in range(6))
    assert structure(x * y + x * z) == structure(Add(Mul(x, y), Mul(x, z)))
    assert structure(X @ W + b) == structure(Add(MatMul(X, W), b))
    assert structure(x - y) == structure(Sub(x, y))
    assert structure(-x) == structure(Neg(x))
    assert structure(2 * x + 1) == structure(Add(Mul(Constant(2), x), Constant(1)))
    assert structure(1 - x) == structure(Sub(Constant(1), x))
    assert structure(x / 2) == ("Div", ("Input",), ("Constant", 2.0))


def test_operator_graph_computes_the_lab_example():
    x, y, z = Input(), Input(), Input()
    f = DummyGrad(x * y + x * z)
    loss, grads = value_and_grad(f, {x: 3, y: 4, z: -5, f: 0.5}, (x, y, z))
    assert loss == -3 and grads == [-0.5, 1.5, 1.5]


def test_constants_follow_the_backend(backend, to_numpy):
    x = Input()
    value, grad = value_and_grad(Sum(2 * x + 1), {x: [1.0, 2.0]}, x, backend=backend.name)
    assert to_numpy(value) == 8 and to_numpy(grad).tolist() == [2, 2]


def test_names_label_nodes():
    assert Linear(Input(), Input(), Input(), name="fc1").label == "Linear 'fc1'"
    assert Input().label.startswith("Input#")
    assert repr(Input(name="x")) == "<Input 'x'>"


def test_nodes_are_hashable_by_identity_and_comparison_builds_nothing():
    a, b = Input(), Input()
    assert a == a and a != b and len({a, b, a}) == 2


def test_plan_is_computed_once_per_output_and_wrt(monkeypatch):
    x, w, b = Input(), Input(), Input()
    out = Sum(Linear(x, w, b))
    feed = {x: np.ones((2, 3), np.float32), w: np.ones((3, 4), np.float32),
            b: np.zeros(4, np.float32)}
    orderings = []
    real = topological_order
    monkeypatch.setattr("miniflow.graph.topological_order", 
                        lambda *roots, **options: orderings.append(roots) or real(*roots, **options))
    for _ in range(5):
        value_and_grad(out, feed, (w, b))
    assert len(orderings) == 1
    value_and_grad(out, feed, (x,))
    assert len(orderings) == 2  # another wrt: another plan
    assert Plan.for_(out, (w, b)) is Plan.for_(out, (w, b))


class CountingMul(Mul):
    """Mul that counts how often its rules run."""

    forward_calls = backward_calls = 0

    def forward(self, ctx, x, y):
        CountingMul.forward_calls += 1
        return super().forward(ctx, x, y)

    def backward(self, ctx, grad):
        CountingMul.backward_calls += 1
        return super().backward(ctx, grad)


def test_shared_subexpressions_are_computed_once_and_gradients_summed():
    x, y = Input(), Input()
    shared = CountingMul(x, y)
    # f = (xy)(xy) + (xy) = (xy)^2 + xy: df/dx = (2xy + 1) y
    f = shared * shared + shared
    CountingMul.forward_calls = CountingMul.backward_calls = 0
    value, (gx, gy) = value_and_grad(f, {x: 2.0, y: 3.0}, (x, y))
    assert value == 42
    assert gx == (2 * 6 + 1) * 3 and gy == (2 * 6 + 1) * 2
    assert CountingMul.forward_calls == 1 and CountingMul.backward_calls == 1


def test_a_diamond_doubles_the_gradient():
    x = Input()
    value, grad = value_and_grad(x + x, {x: 1.5}, x)
    assert value == 3 and grad == 2


def test_only_the_gradients_wrt_needs_are_computed():
    seen = {}

    class SpyLinear(Linear):
        def backward(self, ctx, grad):
            seen["needs"] = ctx.needs_input_grad
            return super().backward(ctx, grad)

    X, W, b, labels = Input(), Input(), Input(), Input()
    loss = CrossEntropyWithSoftmax(SpyLinear(X, W, b), labels)
    feed = {X: np.ones((4, 3), np.float32), W: np.ones((3, 2), np.float32),
            b: np.zeros(2, np.float32), labels: [0, 1, 1, 0]}
    _, (gW,) = value_and_grad(loss, feed, [W])
    assert seen["needs"] == (False, True, False)  # no d loss / d X, no d loss / d b
    assert gW.shape == (3, 2)


def test_nodes_not_on_a_path_from_wrt_do_not_run_backward():
    class Explodes(Sigmoid):
        def backward(self, ctx, grad):
            raise AssertionError("backward ran for a branch no wrt depends on")

    x, c = Input(), Input()
    out = Sum(x * Explodes(c))
    _, grad = value_and_grad(out, {x: [1.0, 2.0], c: [0.0, 0.0]}, x)
    np.testing.assert_allclose(grad, [0.5, 0.5])


def test_a_chain_of_10000_nodes_needs_no_recursion():
    x = Input()
    node = x
    for _ in range(10_000):
        node = node + 1.0
    value, grad = value_and_grad(node, {x: 0.0}, x)
    assert value == 10_000 and grad == 1
    assert len(topological_order(node)) == 20_001


def test_a_cycle_is_named():
    x = Input(name="x")
    a = Sigmoid(x, name="a")
    b = Sigmoid(a, name="b")
    a.inputs = (b,)  # only possible by mutating a built graph
    with pytest.raises(GraphError, match=r"cycle: .*Sigmoid 'a'.*Sigmoid 'b'"):
        value_and_grad(Sum(b), {x: 1.0}, x)


def test_dummygrad_must_be_last():
    x = Input()
    with pytest.raises(GraphError, match="must be the last node"):
        value_and_grad(Sum(DummyGrad(x)), {x: 1.0}, x)


def test_custom_node_subclass_needs_rules():
    class NoRules(Node):
        pass

    x = Input()
    with pytest.raises(Exception, match="has no forward rule"):
        value_and_grad(NoRules(x), {x: 1.0}, x)
