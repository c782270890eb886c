"""What the oracle cannot see of the op library (issue 20): boolean values, identity
equality of nodes, training-only behaviour and the errors' wording."""
import numpy as np
import pytest

from miniflow import (ArgMax, Cast, Diagonal, Dropout, Einsum, Input, Less, Prod, Repeat, Sort,
                      Sum, Tile, TopK, Tril, evaluate, gradcheck, run, value_and_grad)
from miniflow.errors import GraphError, ShapeError


def test_comparisons_are_boolean_nodes_and_nodes_stay_dict_keys(backend, to_numpy):
    x, y = Input("x"), Input("y")
    feed = {x: backend.asarray(np.array([1.0, 2.0, 3.0])), y: backend.asarray(np.array([2.0]))}
    cases = {x < y: [True, False, False], x <= y: [True, True, False], x > y: [False, False, True],
             x >= y: [False, True, True], x.eq(y): [False, True, False],
             x.ne(y): [True, False, True], 2.5 < x: [False, False, True]}
    for node, want in cases.items():  # nodes as dict keys: hashing and == are identity
        got = to_numpy(evaluate(node, feed, backend=backend.name))
        assert got.dtype == np.bool_ and got.tolist() == want, node.label
    assert (x == y) is False and (x != y) is True and (x == x) is True
    assert {x: 1, y: 2}[x] == 1


def test_comparisons_and_indices_end_the_gradient():
    x = Input("x")
    with pytest.raises(GraphError, match="not differentiable"):
        value_and_grad(Sum(Cast(Less(x, 0.0), "float64")), {x: np.ones(2)}, [x])
    with pytest.raises(GraphError, match="not differentiable"):
        value_and_grad(Sum(Cast(ArgMax(x), "float64")), {x: np.ones(2)}, [x])
    # To a floating dtype the gradient flows, converted to x's dtype.
    _, (g,) = value_and_grad(Sum(x.astype("float32")), {x: np.ones(2)}, [x])
    assert g.dtype == np.float64 and g.tolist() == [1.0, 1.0]


def test_dropout_of_everything_gives_zeros_in_training(backend, to_numpy):
    x = Input("x")
    result = run(Sum(Dropout(x, 1.0) * 3), {x: backend.asarray(np.ones((4, 3)))},
                 wrt=[x], training=True, rng=0, backend=backend.name)
    assert float(to_numpy(result.value)) == 0.0
    assert to_numpy(result.grads[0]).tolist() == np.zeros((4, 3)).tolist()
    with pytest.raises(GraphError, match=r"\[0, 1\]"):
        Dropout(x, 1.5)


@pytest.mark.parametrize("build, shape", [
    (lambda x: Prod(x, axis=1), (3, 4)), (lambda x: Einsum("ij,jk->ik", x, x.T), (2, 3)),
    (lambda x: Einsum("ii->i", x), (3, 3)), (lambda x: Diagonal(x, 1), (3, 4)),
    (lambda x: Tril(x, -1), (3, 3)), (lambda x: Sort(x, axis=0), (4, 2)),
    (lambda x: TopK(x, 2), (2, 5)), (lambda x: Tile(x, (2, 1, 2)), (2, 3)),
    (lambda x: Repeat(x, 2, axis=0), (2, 3))])
def test_gradients_match_central_differences(build, shape, backend):
    rng = np.random.default_rng(0)
    assert gradcheck(build, rng.standard_normal(shape) + 0.5, backend=backend.name)


def test_shape_errors_name_the_node_and_the_shapes():
    a, b = Input("a"), Input("b")
    with pytest.raises(ShapeError, match=r"Einsum.*'j' has sizes 3 and 4"):
        evaluate(Einsum("ij,jk->ik", a, b), {a: np.ones((2, 3)), b: np.ones((4, 2))})
    with pytest.raises(ShapeError, match=r"has 1 axes but 'ij' names 2"):
        evaluate(Einsum("ij->i", a), {a: np.ones(3)})
    with pytest.raises(GraphError, match="names 2 operands"):
        Einsum("ij,jk", a)
    with pytest.raises(ShapeError, match="k = 5 is more than the 3"):
        evaluate(TopK(a, 5), {a: np.ones(3)})
    with pytest.raises(ShapeError, match="at least two axes"):
        evaluate(Tril(a), {a: np.ones(3)})
    with pytest.raises(GraphError, match="complex"):
        Cast(a, "complex128")


# -- shapes that cannot work: an error naming the node and the shape, on every backend ----

def _new_nodes_with_bad_shapes():
    import miniflow as mf

    a = (2, 3)
    binary = [mf.ArcTan2, mf.LogAddExp, mf.Remainder, mf.FloorDivide, mf.Less, mf.LessEqual,
              mf.Greater, mf.GreaterEqual, mf.Equal, mf.NotEqual]
    cases = [(lambda x, y, kind=kind: kind(x, y, name="bad"), [a, (4,)]) for kind in binary]
    on_axis_5 = [lambda x: mf.Prod(x, axis=5, name="bad"), lambda x: mf.CumProd(x, 5, name="bad"),
                 lambda x: mf.Sort(x, axis=5, name="bad"), lambda x: mf.ArgSort(x, axis=5, name="bad"),
                 lambda x: mf.TopK(x, 1, axis=5, name="bad"), lambda x: mf.ArgMax(x, axis=5, name="bad"),
                 lambda x: mf.ArgMin(x, axis=5, name="bad"), lambda x: mf.Flip(x, axis=5, name="bad"),
                 lambda x: mf.Roll(x, 1, axis=5, name="bad"),
                 lambda x: mf.Repeat(x, 2, axis=5, name="bad"),
                 lambda x: mf.Diagonal(x, axis1=0, axis2=5, name="bad")]
    cases += [(build, [a]) for build in on_axis_5]
    cases += [(lambda x: mf.TopK(x, 4, name="bad"), [a]),  # k beyond the axis
              (lambda x: mf.Tril(x, name="bad"), [(3,)]),  # not a matrix
              (lambda x: mf.Triu(x, name="bad"), [(3,)]),
              (lambda x: mf.BroadcastTo(x, (4, 3, 5), name="bad"), [a]),
              (lambda x: mf.Tile(x, (2, -1), name="bad"), [a])]
    return cases


@pytest.mark.parametrize("case", range(len(_new_nodes_with_bad_shapes())))
def test_new_nodes_name_themselves_and_the_shape_when_it_cannot_work(case, backend):
    from miniflow import Input, MiniflowError, evaluate

    build, shapes = _new_nodes_with_bad_shapes()[case]
    inputs = [Input(f"x{k}") for k in range(len(shapes))]
    try:
        node = build(*inputs)
    except MiniflowError as exc:  # refused when built: as clear, and earlier
        assert "bad" in str(exc) or type(exc).__name__ == "GraphError"
        return
    feed = {x: backend.asarray(np.ones(s)) for x, s in zip(inputs, shapes)}
    with pytest.raises(MiniflowError) as error:
        evaluate(node, feed, backend=backend.name)
    message = str(error.value)
    assert "'bad'" in message, message
    assert any(str(tuple(s)) in message for s in shapes), message
