"""The executor's contracts: run() and hooks, weak numbers, fed nodes, plans, the node contract."""
import gc
import subprocess
import sys
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

import miniflow
from miniflow import (Constant, CrossEntropyWithSoftmax, DummyGrad, Hook, Input, Linear, Mean, Mul,
                      Node, Sigmoid, Sum, accuracy, evaluate, gradcheck, run, value_and_grad)
from miniflow.errors import FeedError, GraphError, MiniflowError, NodeError
from miniflow.graph import Plan, PlanCache, Step


def floats(backend, values, dtype=np.float64):
    return backend.asarray(np.asarray(values, dtype=dtype))


# -- the node contract ------------------------------------------------------------

class SumsTooMuch(Node):
    """Forward sums; backward forgets to spread the gradient back: shape () for any input."""

    arity = 1

    def forward(self, ctx, x):
        return ctx.xp.sum(x)

    def backward(self, ctx, grad):
        return (grad,)


def test_a_gradient_summed_to_a_scalar_never_slips_through(backend):
    x = Input("x")
    with pytest.raises(NodeError, match=r"SumsTooMuch 'bad': backward returned a gradient of "
                                        r"shape \(\) for input 0 \(Input 'x'\) of shape \(2,\)"):
        value_and_grad(SumsTooMuch(x, name="bad"), {x: floats(backend, [1.0, 2.0])}, x)


class ReturnsShape(Node):
    """x * 1 whose backward returns whatever ``make(xp, grad)`` gives."""

    arity = 2

    def __init__(self, x, y, make):
        super().__init__(x, y)
        self.make = make

    def forward(self, ctx, x, y):
        return x * y

    def backward(self, ctx, grad):
        return self.make(ctx.xp, grad)


@pytest.mark.parametrize("x_shape, grad_shape", [
    ((2,), (3,)),        # another size on an axis that was not broadcast
    ((3, 2), (2, 3)),    # transposed
    ((2, 1), (2,)),      # fewer axes than the input
    ((1, 3), (2, 1, 4)),  # stretched, but to a size the forward never had
])
def test_only_axes_that_were_broadcast_are_summed(x_shape, grad_shape, backend):
    x, y = Input("x"), Input("y")
    out = DummyGrad(ReturnsShape(x, y, lambda xp, g: (xp.ones(grad_shape, dtype=g.dtype), None)))
    feed = {x: floats(backend, np.ones(x_shape)), y: floats(backend, 1.0), out: 1.0}
    with pytest.raises(NodeError, match=rf"a gradient of shape {re_shape(grad_shape)} for input 0 "
                                        rf"\(Input 'x'\) of shape {re_shape(x_shape)}"):
        value_and_grad(out, feed, x, backend=backend.name)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_broadcast_gradients_are_summed_back(backend, to_numpy):
    x, y = Input("x"), Input("y")
    xv, yv = np.arange(6.0).reshape(2, 3), np.array([[1.0], [2.0]])
    value, (gx, gy) = value_and_grad(Sum(x * y), {x: floats(backend, xv),
                                                  y: floats(backend, yv)}, (x, y))
    np.testing.assert_allclose(to_numpy(gx), np.broadcast_to(yv, (2, 3)))
    np.testing.assert_allclose(to_numpy(gy), xv.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("returned, message", [
    (lambda xp, g: g, r"must return a tuple of 2 gradients .* it returned a \w+, not a tuple"),
    (lambda xp, g: (g,), r"must return a tuple of 2 gradients .* it returned 1 entries"),
    (lambda xp, g: (g, g, g), r"it returned 3 entries"),
    (lambda xp, g: (1.0, None), r"a gradient of a float, not an array for input 0"),
    (lambda xp, g: (None, None), r"returned no gradient for input 0 \(Input 'x'\)"),
])
def test_a_backward_rule_must_return_one_gradient_per_input(returned, message, backend):
    x, y = Input("x"), Input("y")
    node = ReturnsShape(x, y, returned)
    with pytest.raises(NodeError, match=message):
        value_and_grad(Sum(node), {x: floats(backend, [1.0, 2.0]), y: floats(backend, 2.0)}, x)


# -- weak numbers -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_numbers_take_the_dtype_of_the_arrays_they_meet(dtype, backend, to_numpy):
    x = Input("x")
    xv = np.array([0.3, 1.7, -2.2, 5.0], dtype)
    graphs = {
        "x * 0.1": (lambda: Sum(x * 0.1), lambda v: np.sum(v * dtype(0.1))),
        "1 - x": (lambda: Sum(1 - x), lambda v: np.sum(dtype(1) - v)),
        "x / 3": (lambda: Sum(x / 3), lambda v: np.sum(v / dtype(3))),
        "Constant(2.0) * x": (lambda: Sum(Constant(2.0) * x), lambda v: np.sum(dtype(2) * v)),
        "np.float64(1e-4) * x": (lambda: Sum(np.float64(1e-4) * x),
                                 lambda v: np.sum(dtype(1e-4) * v)),
    }
    for name, (build, reference) in graphs.items():
        value = evaluate(build(), {x: backend.asarray(xv)}, backend=backend.name)
        assert to_numpy(value).dtype == dtype, name
        # To a few units in the last place of dtype: a number rounded to float32 is ~1e-8 off.
        np.testing.assert_allclose(to_numpy(value), reference(xv),
                                   rtol=4 * np.finfo(dtype).eps, err_msg=name)


def test_a_float64_graph_stays_float64_in_its_gradients(backend, to_numpy):
    x = Input("x")
    value, grad = value_and_grad(Sum(x * 0.1), {x: floats(backend, [1.0, 1.0, 1.0, 1.0])}, x,
                                 backend=backend.name)
    assert to_numpy(value) == np.sum(np.ones(4) * 0.1)  # 0.4 in float64, not float32's
    assert to_numpy(grad).dtype == np.float64 and to_numpy(grad).tolist() == [0.1] * 4


def test_nodes_always_receive_arrays_of_the_backend(backend):
    seen = []

    class Spy(Mul):
        def forward(self, ctx, x, y):
            seen.extend([x, y])
            return super().forward(ctx, x, y)

    x = Input()
    evaluate(Spy(x, 2.5), {x: floats(backend, [1.0], np.float32)}, backend=backend.name)
    evaluate(Spy(3, x), {x: floats(backend, [1.0], np.float32)}, backend=backend.name)
    assert len(seen) == 4 and all(backend.owns(v) for v in seen)
    assert all(backend.xp.isdtype(v.dtype, backend.xp.float32) for v in seen)


def test_numpy_values_on_the_left_build_the_same_graph():
    x = Input()
    for left in (np.float64(1e-4) * x, np.ones(2) * x, np.float32(2) - x, np.ones((2, 2)) @ x):
        assert isinstance(left, Node) and left.inputs[1] is x
        assert isinstance(left.inputs[0], Constant)
    value = evaluate(np.array([1.0, 2.0]) * x, {x: np.array([3.0, 4.0])})
    assert value.tolist() == [3.0, 8.0]


def test_integer_arithmetic_gives_the_same_dtype_on_every_backend(backend, to_numpy):
    i, j, f = Input(), Input(), Input()
    ints = {i: backend.asarray(np.array([1, 2, 3])), j: backend.asarray(np.array([2, 4, 4]))}
    # True division of integers gives the default float, float32 (NumPy alone says float64).
    assert to_numpy(evaluate(i / j, ints, backend=backend.name)).dtype == np.float32
    assert to_numpy(evaluate(i / 2, ints, backend=backend.name)).tolist() == [0.5, 1.0, 1.5]
    assert to_numpy(evaluate(i / 2, ints, backend=backend.name)).dtype == np.float32
    # An integer next to a float64 array takes its dtype.
    mixed = {i: ints[i], f: floats(backend, [2.0, 4.0, 8.0])}
    assert to_numpy(evaluate(i / f, mixed, backend=backend.name)).dtype == np.float64
    # A Python int beside integers stays an integer.
    plus = to_numpy(evaluate(i + 1, ints, backend=backend.name))
    assert plus.tolist() == [2, 3, 4] and plus.dtype.kind == "i"


def test_a_number_alone_becomes_float32():
    assert evaluate(Constant(2.0), {}).dtype == np.float32
    assert evaluate(Constant(2) + Constant(0.5), {}).dtype == np.float32


def test_weak_numbers_pass_gradcheck(backend):
    assert gradcheck(lambda x: Sum((1 - x) * 0.5 + x / 3), [[0.5, -1.5], [2.0, 0.25]],
                     backend=backend.name)


def test_fed_python_numbers_still_become_float32():
    x = Input()
    value, grad = value_and_grad(Sum(x * 2.0), {x: [1, 2]}, x)
    assert value.dtype == np.float32 and grad.dtype == np.float32


# -- integer and boolean values have no gradient ---------------------------------

@pytest.mark.parametrize("values", [np.array([1, 2]), np.array([True, False])])
def test_differentiating_with_respect_to_integers_or_booleans_is_an_error(values, backend):
    x = Input("counts")
    with pytest.raises(GraphError, match=rf"wrt\[0\]: cannot differentiate with respect to "
                                         rf"Input 'counts': its value has dtype \S*"
                                         rf"({values.dtype.name})"):
        value_and_grad(Sum(x), {x: backend.asarray(values)}, x, backend=backend.name)


# -- feeding a node that is not an Input -----------------------------------------------

class CountingSigmoid(Sigmoid):
    calls = 0

    def forward(self, ctx, x):
        CountingSigmoid.calls += 1
        return super().forward(ctx, x)


def test_a_fed_node_replaces_its_computation(backend, to_numpy):
    x, w = Input("x"), Input("w")
    hidden = CountingSigmoid(x, name="h")
    loss = Sum(hidden * w)
    hv, wv = np.array([0.25, 0.5]), np.array([3.0, -1.0])
    CountingSigmoid.calls = 0
    value, (g_w, g_h) = value_and_grad(loss, {hidden: floats(backend, hv),
                                              w: floats(backend, wv)}, (w, hidden),
                                       backend=backend.name)
    assert CountingSigmoid.calls == 0  # nothing above the fed node runs: x needs no feed
    np.testing.assert_allclose(to_numpy(value), np.sum(hv * wv))
    np.testing.assert_allclose(to_numpy(g_w), hv)
    np.testing.assert_allclose(to_numpy(g_h), wv)
    # The same graph, nothing fed in the middle: another plan, x needed again.
    xv = np.array([0.0, 1.0])
    value = evaluate(loss, {x: floats(backend, xv), w: floats(backend, wv)}, backend=backend.name)
    np.testing.assert_allclose(to_numpy(value), np.sum(wv / (1 + np.exp(-xv))), rtol=1e-12)
    assert CountingSigmoid.calls == 1
    with pytest.raises(GraphError, match="Input 'x' is missing from feed_dict"):
        evaluate(loss, {w: floats(backend, wv)}, backend=backend.name)


def test_gradients_above_a_fed_node_are_an_error():
    x, w = Input("x"), Input("w")
    hidden = Sigmoid(x, name="h")
    loss = Sum(hidden * w)
    with pytest.raises(GraphError, match=r"wrt\[0\]: Sum#\d+ depends on Input 'x' only through "
                                         r"fed nodes.*Sigmoid 'h'"):
        value_and_grad(loss, {hidden: [0.5], w: [1.0], x: [0.0]}, x)


def test_an_input_used_beside_the_fed_node_is_still_needed():
    x = Input("x")
    hidden = Sigmoid(x, name="h")
    out = Sum(hidden * x)
    with pytest.raises(GraphError, match="Input 'x' is missing"):
        evaluate(out, {hidden: [0.5]})
    value, grad = value_and_grad(out, {hidden: [0.5], x: [4.0]}, x)
    assert value == 2.0 and grad.tolist() == [0.5]  # d/dx (h x) with h fixed


def test_a_fed_constant_is_replaced():
    x = Input()
    two = Constant(2.0, name="two")
    assert evaluate(Sum(x * two), {x: [1.0, 2.0], two: 10.0}) == 30.0
    assert evaluate(Sum(x * two), {x: [1.0, 2.0]}) == 6.0


# -- bad call arguments ------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda x, out: value_and_grad(out, None, x), FeedError, "feed_dict must be a dict"),
    (lambda x, out: value_and_grad(out, {x: 1.0}, None), GraphError,
     r"wrt must be a Node or a sequence of Nodes .* not NoneType"),
    (lambda x, out: value_and_grad(out, {x: 1.0}, 3), GraphError, r"not int 3"),
    (lambda x, out: value_and_grad(out, {x: 1.0}, [[x]]), GraphError,
     r"wrt\[0\] must be a Node, not list"),
    (lambda x, out: value_and_grad([out], {x: 1.0}, x), GraphError,
     "the output must be a Node, not list"),
    (lambda x, out: evaluate("out", {x: 1.0}), GraphError, "the output must be a Node, not str"),
    (lambda x, out: evaluate(out, {x: 1.0, "x": 2.0}), FeedError,
     r"feed_dict keys must be Nodes, not str 'x'"),
    (lambda x, out: evaluate(out, {(1, 2): 2.0}), FeedError, r"keys must be Nodes, not tuple"),
    (lambda x, out: run(out, {x: 1.0}, extras=[3]), GraphError, r"extras\[0\] must be a Node"),
])
def test_bad_call_arguments_say_what_was_expected(call, error, message):
    x = Input("x")
    with pytest.raises(error, match=message) as caught:
        call(x, Sum(x * x))
    assert isinstance(caught.value, MiniflowError)


# -- plans -------------------------------------------------------------------------

def many_inputs(count=14):
    inputs = [Input(f"x{k}") for k in range(count)]
    total = inputs[0]
    for node in inputs[1:]:
        total = total + node
    return inputs, Sum(total * total)


def test_wrt_in_another_order_shares_the_plan_and_keeps_the_callers_order():
    (x0, x1, *_), out = many_inputs(2)
    feed = {x0: np.array([1.0]), x1: np.array([2.0])}

    class Tag(Sigmoid):
        pass

    out2 = Sum(out * Tag(x1))
    _, (a0, a1) = value_and_grad(out2, feed, [x0, x1])
    _, (b1, b0) = value_and_grad(out2, feed, [x1, x0])
    assert (a0, a1) == (b0, b1) and a0 != a1
    assert Plan.for_(out2, (x0, x1)) is Plan.for_(out2, (x1, x0))


def test_the_plan_cache_is_bounded():
    inputs, out = many_inputs(6)
    feed = {node: np.array([1.0]) for node in inputs}
    rng = np.random.default_rng(0)

    def runs(count):
        for _ in range(count):
            chosen = [inputs[k] for k in rng.choice(len(inputs), rng.integers(1, 5), replace=False)]
            value_and_grad(out, feed, chosen)

    tracemalloc.start()
    try:
        runs(1_000)  # fills the cache
        filled = tracemalloc.get_traced_memory()[0]
        runs(9_000)  # over a thousand more signatures (wrt lists, order counts)
        grown = tracemalloc.get_traced_memory()[0] - filled
    finally:
        tracemalloc.stop()
    cache = out.plan_cache
    assert len(cache._calls) <= PlanCache.size and len(cache._plans) <= PlanCache.size
    # Which plans the cache holds changes; their number does not: nine times the runs
    # that filled it add less than filling it took.
    assert grown < filled, (grown, filled)


@pytest.mark.parametrize("entry", ["evaluate", "run", "run with extras"])
def test_a_forward_only_run_holds_only_the_values_still_to_be_read(entry):
    # A chain of 12 nodes, each value 8 MB: without gradients to come, a value is
    # dropped after its last reader, so the run peaks near what one node needs (its
    # input, its output and its temporaries), not twelve values
    # (as PyTorch under no_grad). keep_all and a backward pass keep every value.
    x = Input("x")
    chain, mid = x, None
    for k in range(12):
        chain = Sigmoid(chain) if k % 2 else chain * 1.5
        mid = chain if k == 5 else mid
    x_value = np.random.default_rng(0).standard_normal(1_000_000)
    extras = [mid] if entry == "run with extras" else []

    def peak(call):
        tracemalloc.start()
        try:
            result = call()
            return tracemalloc.get_traced_memory()[1] / 8e6, result
        finally:
            tracemalloc.stop()

    if entry == "evaluate":
        lean, value = peak(lambda: evaluate(chain, {x: x_value}))
    else:
        lean, result = peak(lambda: run(chain, {x: x_value}, extras=extras))
        value = result.value
        if extras:  # an extra is the run's result: kept
            expected_mid = x_value
            for k in range(6):
                expected_mid = 1 / (1 + np.exp(-expected_mid)) if k % 2 else expected_mid * 1.5
            np.testing.assert_allclose(result.extras[0], expected_mid)
    full, kept = peak(lambda: run(chain, {x: x_value}, keep_all=True))
    assert lean < 6, lean
    assert full > 11, full
    np.testing.assert_array_equal(value, kept.value)
    assert len(kept.values) == 12 + 1 + 6  # the chain, the fed x and the six 1.5s


@pytest.mark.parametrize("how", ["plain", "wrt the output", "dummy", "fed", "extras", "extra above"])
def test_a_graph_nobody_references_is_freed_without_the_cycle_collector(how):
    gc.collect()
    gc.disable()
    try:
        x, w = Input("x"), Input("w")
        hidden = Sigmoid(x * w)
        out = Sum(hidden * 2.0)
        feed = {x: np.ones(3), w: np.ones(3)}
        if how == "plain":
            value_and_grad(out, feed, [w, x])
        elif how == "wrt the output":
            value_and_grad(out, feed, [out, w])
        elif how == "dummy":
            out = DummyGrad(hidden)
            value_and_grad(out, {**feed, out: np.ones(3)}, w)
        elif how == "fed":
            value_and_grad(out, {hidden: np.ones(3)}, hidden)
        elif how == "extras":
            run(out, feed, w, extras=[hidden, Mean(x)], keep_all=True)
        else:
            run(out, feed, w, extras=[out * 3.0])
        refs = [weakref.ref(node) for node in (x, w, hidden, out)]
        del x, w, hidden, out, feed
        assert [ref() for ref in refs] == [None] * 4
    finally:
        gc.enable()


def test_a_plan_is_a_list_of_named_steps():
    X, W, b, labels = Input("X"), Input("W"), Input("b"), Input("labels")
    loss = CrossEntropyWithSoftmax(Linear(X, W, b, name="fc"), labels, name="loss")
    plan = Plan.for_(loss, (W,))
    assert all(isinstance(step, Step) for step in plan.steps)
    assert [plan.nodes[s.index] for s in plan.forward_steps] == [loss.inputs[0], loss]
    fc = plan.steps[plan.position(loss.inputs[0])]
    assert fc.needs_input_grad == (False, True, False)
    assert fc.grad_targets == ((1, plan.position(W)),)
    assert [plan.nodes[s.index].label for s in plan.backward_steps] == ["CrossEntropyWithSoftmax "
                                                                         "'loss'", "Linear 'fc'"]
    assert "Linear 'fc'" in repr(fc)


# -- run(): results, hooks, training, randomness, extra outputs --------------------

def mlp(backend):
    X, W, b, labels = Input("X"), Input("W"), Input("b"), Input("labels")
    logits = Linear(X, W, b, name="fc")
    loss = CrossEntropyWithSoftmax(logits, labels, name="loss")
    rng = np.random.default_rng(3)
    feed = {X: backend.asarray(rng.standard_normal((4, 3)).astype(np.float32)),
            W: backend.asarray(rng.standard_normal((3, 2)).astype(np.float32)),
            b: backend.asarray(np.zeros(2, np.float32)),
            labels: backend.asarray(np.array([0, 1, 1, 0]))}
    return loss, logits, (X, W, b, labels), feed


def test_run_returns_what_value_and_grad_and_evaluate_do(backend, to_numpy):
    loss, logits, (X, W, b, labels), feed = mlp(backend)
    result = run(loss, feed, [W, b], extras=[logits, Mean(X, axis=0)], keep_all=True)
    value, grads = value_and_grad(loss, feed, [W, b])
    assert result.backend is backend
    np.testing.assert_array_equal(to_numpy(result.value), to_numpy(value))
    for got, want in zip(result.grads, grads):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    np.testing.assert_array_equal(to_numpy(result.extras[0]), to_numpy(evaluate(logits, feed)))
    np.testing.assert_allclose(to_numpy(result.extras[1]), to_numpy(feed[X]).mean(axis=0),
                               rtol=1e-6)
    assert set(result.values) == {X, W, b, labels, logits, loss, result_extra(result)}
    assert set(result.gradients) == {W, b, logits, loss}
    assert run(loss, feed, W).grads.shape == (3, 2)  # one Node, one array
    assert run(loss, feed).grads == [] and run(loss, feed).values is None


def result_extra(result):
    return next(n for n in result.values if isinstance(n, Mean))


class Recorder(Hook):
    def __init__(self, name, events):
        self.name, self.events = name, events

    def forward_pre(self, node, ctx):
        self.events.append((self.name, "forward_pre", node))

    def forward_post(self, node, ctx, value):
        self.events.append((self.name, "forward_post", node, tuple(value.shape)))

    def backward_pre(self, node, ctx, grad):
        self.events.append((self.name, "backward_pre", node, tuple(grad.shape)))

    def backward_post(self, node, ctx, input_grads):
        self.events.append((self.name, "backward_post", node, len(input_grads)))


def test_hooks_see_every_rule_in_order(backend):
    loss, logits, (X, W, b, labels), feed = mlp(backend)
    events = []
    run(loss, feed, [W], hooks=[Recorder("a", events), Recorder("b", events)])
    assert events == [
        ("a", "forward_pre", logits), ("b", "forward_pre", logits),
        ("a", "forward_post", logits, (4, 2)), ("b", "forward_post", logits, (4, 2)),
        ("a", "forward_pre", loss), ("b", "forward_pre", loss),
        ("a", "forward_post", loss, ()), ("b", "forward_post", loss, ()),
        ("a", "backward_pre", loss, ()), ("b", "backward_pre", loss, ()),
        ("a", "backward_post", loss, 2), ("b", "backward_post", loss, 2),
        ("a", "backward_pre", logits, (4, 2)), ("b", "backward_pre", logits, (4, 2)),
        ("a", "backward_post", logits, 3), ("b", "backward_post", logits, 3),
    ]
    single = []
    run(loss, feed, hooks=Recorder("only", single))  # one hook, forward only
    assert [e[1] for e in single] == ["forward_pre", "forward_post"] * 2


class Dropout(Node):
    """What the node library's Dropout will do with ctx.training and ctx.random_uniform."""

    arity = 1

    def forward(self, ctx, x):
        if not ctx.training:
            return x
        keep = ctx.xp.astype(ctx.random_uniform(x.shape, x.dtype) >= 0.5, x.dtype)
        ctx.save(keep)
        return x * keep * 2

    def backward(self, ctx, grad):
        return (grad * ctx.saved[0] * 2 if ctx.training else grad,)


def test_training_and_the_run_generator_reach_nodes(backend, to_numpy):
    x = Input("x")
    out = Dropout(x)
    feed = {x: floats(backend, np.ones(64), np.float32)}
    assert to_numpy(run(out, feed).value).tolist() == [1.0] * 64  # not training: identity
    first = to_numpy(run(out, feed, training=True, rng=7).value)
    again = to_numpy(run(out, feed, training=True, rng=7).value)
    other = to_numpy(run(out, feed, training=True, rng=8).value)
    assert set(first.tolist()) == {0.0, 2.0} and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    generator = backend.make_rng(7)
    from_generator = to_numpy(run(out, feed, training=True, rng=generator).value)
    np.testing.assert_array_equal(from_generator, first)
    _, grad = value_and_grad(Sum(out), feed, x)  # value_and_grad does not train
    assert to_numpy(grad).tolist() == [1.0] * 64
    result = run(Sum(out), feed, x, training=True, rng=7)
    np.testing.assert_array_equal(to_numpy(result.grads), first)


def test_the_generator_belongs_to_the_backend(backend):
    generator = backend.make_rng(0)
    if backend.name == "torch":
        import torch

        assert isinstance(generator, torch.Generator)
    elif backend.name == "jax.numpy":
        import jax

        assert isinstance(generator.key, jax.Array)  # keys are values: split per draw
    else:
        assert isinstance(generator, np.random.Generator)
    sample = backend.random_uniform(generator, (3, 2), backend.xp.float64)
    assert backend.owns(sample) and tuple(sample.shape) == (3, 2)
    assert backend.xp.isdtype(sample.dtype, backend.xp.float64)


def test_an_extra_output_computed_from_the_output_is_returned():
    x = Input()
    out = Sum(x * x)
    twice = out * 2.0
    result = run(out, {x: [1.0, 2.0]}, x, extras=[twice])
    assert result.value == 5 and result.extras[0] == 10 and result.grads.tolist() == [2, 4]


def test_accuracy_uses_the_run():
    logits, labels = Input(), Input()
    loss = CrossEntropyWithSoftmax(logits, labels)
    assert accuracy(loss, {logits: [[0.0, 1.0], [1.0, 0.0]], labels: [1, 1]}) == 0.5


def test_context_lives_beside_node_and_is_reexported():
    from miniflow import executor, graph

    assert graph.Context is executor.Context is miniflow.Context


def test_profile_and_trace_use_the_public_run_api():
    root = Path(miniflow.__file__).parent
    for module in ("profile.py", "viz.py"):
        source = (root / module).read_text()
        assert "from .executor import _" not in source and "Plan" not in source, module


# -- backends load safely from two threads ------------------------------------------------

def test_two_backends_loading_at_once_in_two_threads():
    pytest.importorskip("torch")
    code = """
import threading
from miniflow.backends import get_backend
names, errors = ["torch", "array_api_strict"], []
barrier = threading.Barrier(2)
def load(name):
    barrier.wait()
    try:
        get_backend(name).xp
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
threads = [threading.Thread(target=load, args=(n,)) for n in names]
for t in threads: t.start()
for t in threads: t.join()
print(errors or "ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok", out.stdout


def test_an_error_in_a_hook_is_the_hooks_own(backend):
    class Broken(Hook):
        def backward_post(self, node, ctx, input_grads):
            raise KeyError("from the hook")

    x = Input("x")
    with pytest.raises(KeyError, match="from the hook"):
        run(Sum(x * x), {x: floats(backend, [1.0])}, x, hooks=[Broken()])


def test_gradcheck_refuses_a_build_that_is_not_a_graph():
    with pytest.raises(GraphError, match="build must return a Node, got float"):
        gradcheck(lambda x: 1.0, [1.0])


def test_wrt_a_node_only_an_extra_output_uses():
    x, side = Input("x"), Input("side")
    with pytest.raises(GraphError, match=r"wrt\[0\]: Sum#\d+ does not depend on Input 'side'"):
        run(Sum(x), {x: [1.0], side: [2.0]}, side, extras=[Mean(side)])


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_unbroadcast_sums_exactly_the_broadcast_axes(name):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from miniflow.backends import get_backend
    from miniflow.executor import unbroadcast

    backend = get_backend(name)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 3), max_size=3), st.lists(st.booleans(), max_size=3),
           st.lists(st.integers(0, 3), max_size=2), st.integers(0, 3))
    def check(shape, stretch, leading, stretched_to):
        shape = tuple(shape)
        # Broadcasting shape: leading axes, and some size-1 axes stretched.
        target = tuple(leading) + tuple(stretched_to if n == 1 and s else n
                                        for n, s in zip(shape, stretch + [False] * len(shape)))
        grad = np.arange(float(np.prod(target))).reshape(target)
        got = unbroadcast(backend.xp, backend.asarray(grad), shape)
        want = np.sum(grad, axis=tuple(range(len(leading))))
        want = np.sum(want, axis=tuple(k for k, n in enumerate(shape) if n == 1 and want.shape[k] != 1),
                      keepdims=True).reshape(shape)
        np.testing.assert_array_equal(backend.to_numpy(got), want)
        # A shape broadcasting cannot give is refused, never summed into shape.
        if shape and shape[-1] != 1:
            wrong = target[:-1] + (shape[-1] + 1,)
            assert unbroadcast(backend.xp, backend.asarray(np.zeros(wrong)), shape) is None

    check()
