"""The planned NumPy step's fast paths: updates applied inside kernels (NumPy's BLAS
gemm with beta = 1), elementwise passes in blocks of rows, the cached seed.

Each is checked against value_and_grad followed by a plain update, in float64
(to rounding) and float32, on shapes that take the fast path and shapes or
feeds that must not.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import miniflow
from miniflow import (CrossEntropyWithSoftmax, DummyGrad, Input, Linear, ReLU, Sigmoid,
                      value_and_grad)
from miniflow.backends import numpy_planned
from miniflow.backends.numpy_planned import numpy_gemm

from test_compile import mlp


def feed_for(images, labels, params, batch, features, hidden, classes=10, dtype=np.float64,
             seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((features, hidden)) / np.sqrt(features),
              rng.standard_normal(hidden) / 3,
              rng.standard_normal((hidden, classes)) / np.sqrt(hidden),
              rng.standard_normal(classes) / 3]
    feed = {p: v.astype(dtype) for p, v in zip(params, values)}
    feed[images] = (rng.standard_normal((batch, features)) * 2).astype(dtype)
    feed[labels] = rng.integers(0, classes, batch)
    return feed


def sgd_by_hand(loss, feed, params, lr):
    """value_and_grad, then param - lr * grad: what step.sgd must give."""
    value, grads = value_and_grad(loss, feed, params)
    return value, [feed[p] - lr * g for p, g in zip(params, grads)]


def assert_three_steps_match_by_hand(step, loss, feed, params, lr):
    for _ in range(3):
        want_value, want_params = sgd_by_hand(loss, feed, params, lr)
        value, updated = step.sgd(feed, lr)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        for got, want in zip(updated, want_params):
            np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_sgd_steps_match_value_and_grad_then_update(activation, dtype, rtol):
    images, labels, params, loss = mlp(activation)
    step = miniflow.compile(loss, params, backend="numpy")
    feed = feed_for(images, labels, params, batch=33, features=40, hidden=24, dtype=dtype)
    for k, lr in enumerate([0.1, 0.1, 0.05, 0.2]):  # the first call compiles; lr changes
        feed[images] = feed[images][::-1].copy()  # a new batch array each step
        want_value, want_params = sgd_by_hand(loss, feed, params, lr)
        value, updated = step.sgd(feed, lr)
        np.testing.assert_allclose(value, want_value, rtol=rtol)
        for p, got, want in zip(params, updated, want_params):
            assert got is feed[p]  # updated in place
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


def test_kernels_apply_the_updates_where_they_can():
    images, labels, params, loss = mlp("sigmoid")
    step = miniflow.compile(loss, params, backend="numpy")
    feed = feed_for(images, labels, params, batch=8, features=6, hidden=5)
    step.sgd(feed, 0.1)
    ((entry, _),) = step._compiled.values()
    assert sorted(w for _, _, w in entry["applied"]) == [0, 1, 2, 3]
    # value_and_grad after sgd: real gradients again, equal to the uncompiled ones.
    value, grads = step(feed)
    want_value, want_grads = value_and_grad(loss, feed, params)
    np.testing.assert_allclose(value, want_value, rtol=1e-12)
    for g, w in zip(grads, want_grads):
        assert g.strides != (0,) * g.ndim  # a real array, not the "already applied" zeros
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)


def test_a_weight_read_twice_is_updated_after_backward():
    """A weight two nodes read: its gradient is the sum of both, so no kernel may
    update it alone (and the first node's backward must read it unchanged)."""
    x, labels, w, b1, b2 = Input("x"), Input("labels"), Input("w"), Input("b1"), Input("b2")
    hidden = Sigmoid(Linear(x, w, b1))
    loss = CrossEntropyWithSoftmax(Linear(hidden, w, b2), labels)  # w is square
    params = [w, b1, b2]
    rng = np.random.default_rng(3)
    feed = {x: rng.standard_normal((9, 6)), w: rng.standard_normal((6, 6)) / 3,
            b1: rng.standard_normal(6), b2: rng.standard_normal(6), labels: rng.integers(0, 6, 9)}
    step = miniflow.compile(loss, params, backend="numpy")
    assert_three_steps_match_by_hand(step, loss, feed, params, 0.3)
    ((entry, _),) = step._compiled.values()
    assert 0 not in [w for _, _, w in entry["applied"]]


def test_a_weight_sharing_memory_with_the_data_is_updated_after_backward():
    """The images are a view of the first weight: updating the weight inside
    backward would change what the rest of backward reads."""
    images, labels, params, loss = mlp("relu")
    feed = feed_for(images, labels, params, batch=6, features=6, hidden=6)
    feed[images] = feed[params[0]][:, :]  # the same memory, another array
    step = miniflow.compile(loss, params, backend="numpy")
    assert_three_steps_match_by_hand(step, loss, feed, params, 0.2)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_blocks_of_rows_give_the_whole_arrays_results(monkeypatch, activation):
    """Elementwise kernels over arrays larger than a block work block by block."""
    monkeypatch.setattr(numpy_planned, "BLOCK_ELEMENTS", 50)  # blocks of 2 rows of 24
    images, labels, params, loss = mlp(activation)
    step = miniflow.compile(loss, params, backend="numpy")
    feed = feed_for(images, labels, params, batch=11, features=7, hidden=24)
    feed[images][3, :] = -feed[images][3, :]
    for _ in range(2):
        value, grads = step(feed)
        want_value, want_grads = value_and_grad(loss, feed, params)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)
    ((entry, _),) = step._compiled.values()
    activation_kernel = entry["kernels"][[type(k).__name__ for k in entry["kernels"]].index(
        f"{'ReLU' if activation == 'relu' else 'Sigmoid'}Kernel")]
    assert len(activation_kernel.blocks) == 6


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("layout", ["contiguous", "strided rows", "strided columns"])
def test_large_linear_outputs_add_the_product_to_the_bias(monkeypatch, layout, dtype, rtol):
    """Past BLOCK_ELEMENTS outputs, BLAS adds x @ w to the copied bias (and past as many
    weights, x^T g to the weight in sgd); data it cannot describe (columns apart in
    memory) take NumPy's product and the added rows."""
    monkeypatch.setattr(numpy_planned, "BLOCK_ELEMENTS", 50)  # 11 x 24 outputs: past it
    images, labels, params, loss = mlp("sigmoid")
    step = miniflow.compile(loss, params, backend="numpy")
    feed = feed_for(images, labels, params, batch=11, features=7, hidden=24, dtype=dtype)
    data = feed[images]
    if layout == "strided rows":  # every other row of a larger array: BLAS takes it
        data = np.repeat(data, 2, axis=0)[::2]
    elif layout == "strided columns":  # every other column: BLAS cannot
        data = np.repeat(data, 2, axis=1)[:, ::2]
    feed[images] = data
    for _ in range(3):
        value, grads = step(feed)
        want_value, want_grads = value_and_grad(loss, feed, params)
        np.testing.assert_allclose(value, want_value, rtol=rtol)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 1e-3)
    if dtype == np.float64:
        assert_three_steps_match_by_hand(step, loss, feed, params, 0.2)
    ((entry, _),) = step._compiled.values()
    first = next(k for k in entry["kernels"] if type(k).__name__ == "LinearKernel")
    assert (first.bias_then_product is not None) == (numpy_gemm() is not None)
    assert (first.gemm is not None) == (numpy_gemm() is not None)  # the update inside it
    assert (first.bias_rows is not None) == (layout == "strided columns"
                                            or numpy_gemm() is None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_elements", [None, 8], ids=["whole", "blocks"])
def test_relu_kernel_gives_value_and_grads_bits(monkeypatch, dtype, block_elements):
    """The kernel's max(x, 0) is x's bits under a mask: the very bits of eager's
    np.maximum for signed zeros, nans, infinities and subnormals, and its gradient
    eager's select."""
    if block_elements is not None:
        monkeypatch.setattr(numpy_planned, "BLOCK_ELEMENTS", block_elements)
    tiny = np.finfo(dtype).smallest_subnormal
    special = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, tiny, -tiny, 1.5, -2.5,
                        np.finfo(dtype).max, -np.finfo(dtype).max], dtype)
    rng = np.random.default_rng(4)
    # 7 rows: blocks of 2 rows and a last one of 1.
    xs = np.concatenate([special, rng.standard_normal(16).astype(dtype)]).reshape(7, 4)
    x = Input("x")
    head = DummyGrad(ReLU(x))
    upstream = rng.standard_normal((7, 4)).astype(dtype)
    upstream[0, :2] = np.inf
    feed = {x: xs, head: upstream}
    step = miniflow.compile(head, [x], backend="numpy")
    want_value, (want_grad,) = value_and_grad(head, feed, [x])
    for _ in range(2):
        value, (grad,) = step(feed)
        np.testing.assert_array_equal(value.view(f"u{value.itemsize}"),
                                      want_value.view(f"u{value.itemsize}"))
        np.testing.assert_array_equal(grad.view(f"u{grad.itemsize}"),
                                      want_grad.view(f"u{grad.itemsize}"))
    ((entry, _),) = step._compiled.values()
    kernel, = [k for k in entry["kernels"] if type(k).__name__ == "ReLUKernel"]
    assert len(kernel.blocks) == (1 if block_elements is None else 4)


def test_row_blocks_cover_every_row_once():
    blocks = numpy_planned._row_blocks((1000, 100))
    rows = np.zeros(1000, int)
    for block in blocks:
        rows[block] += 1
    assert (rows == 1).all() and len(blocks) > 1
    assert numpy_planned._row_blocks(()) == [...]
    assert numpy_planned._row_blocks((5, 3)) == [...]


gemm_only = pytest.mark.skipif(numpy_gemm() is None,
                               reason="NumPy's BLAS gemm is not reachable here (not Linux, or "
                                      "a NumPy build without its own OpenBLAS)")


@gemm_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_adds_products_in_place(dtype):
    gemm = numpy_gemm()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((7, 4)).astype(dtype)
    c = rng.standard_normal((5, 4)).astype(dtype)
    want = c - 0.5 * a.T @ b
    assert gemm.add_product(c, a, b, -0.5, a_transposed=True)
    np.testing.assert_allclose(c, want, rtol=1e-5)
    # Rows apart in memory (a slice of columns) and a product without transpose.
    big = rng.standard_normal((5, 9)).astype(dtype)
    p, q = big[:, 2:9], rng.standard_normal((7, 3)).astype(dtype)
    out = np.zeros((8, 6), dtype)
    target = out[1:6, 2:5]
    assert gemm.add_product(target, p, q)
    np.testing.assert_allclose(out[1:6, 2:5], p @ q, rtol=1e-5)
    assert not out[0].any() and not out[:, :2].any() and not out[:, 5:].any()


@gemm_only
def test_gemm_declines_what_it_cannot_describe():
    gemm = numpy_gemm()
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    c = np.zeros((4, 3))
    assert not gemm.add_product(c, a[:, ::-1], b, a_transposed=True)  # columns reversed
    assert not gemm.add_product(c, a.astype(np.float32), b, a_transposed=True)  # dtypes
    frozen = np.zeros((4, 3))
    frozen.flags.writeable = False
    assert not gemm.add_product(frozen, a, b, a_transposed=True)
    assert not c.any() and not frozen.any()


def test_jax_step_never_copies_good_labels_to_the_host_and_refuses_bad_ones():
    """The compiled JAX program counts the labels out of range itself: labels in range
    are never brought to the host, and a bad array is still refused."""
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from miniflow.errors import NodeError

    images, labels, params, loss = mlp("relu")
    feed = feed_for(images, labels, params, batch=7, features=5, hidden=4, classes=5,
                    dtype=np.float32)
    feed = {node: jnp.asarray(value) for node, value in feed.items()}
    step = miniflow.compile(loss, params, backend="jax.numpy")
    step(feed)  # compiles (the ordinary run checks these labels)
    looked = []
    real = type(step)._host

    def host(self, array):
        looked.append(array)
        return real(self, array)

    step._host = host.__get__(step)
    step(feed)
    step({**feed, labels: jnp.asarray(np.asarray(feed[labels]).copy())})
    assert looked == []
    bad = np.asarray(feed[labels]).copy()
    bad[2] = 5
    with pytest.raises(NodeError, match=r"labels.* must lie in \[0, 5\)"):
        step({**feed, labels: jnp.asarray(bad)})


def _entry(step):
    ((entry, _),) = step._compiled.values()
    return entry


def _shared_weight_graph():
    """The second layer reads the first's (square) weight again: a fan-out gradient."""
    x, labels, w, b1, b2 = Input("x"), Input("labels"), Input("w"), Input("b1"), Input("b2")
    loss = CrossEntropyWithSoftmax(Linear(Sigmoid(Linear(x, w, b1)), w, b2), labels)
    rng = np.random.default_rng(5)
    feed = {x: rng.standard_normal((9, 6)), w: rng.standard_normal((6, 6)) / 3,
            b1: rng.standard_normal(6), b2: rng.standard_normal(6),
            labels: rng.integers(0, 6, 9)}
    return loss, [w, b1, b2], feed, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("graph", ["relu", "sigmoid", "tanh", "shared weight"])
def test_replayed_calls_give_the_interpreters_bits(graph, dtype):
    """After its first call a fully planned step replays the interpreter's passes: the
    same numbers, bit for bit, as the interpreter running the same kernels."""
    if graph == "shared weight":
        loss, params, feed, _ = _shared_weight_graph()
    else:
        images, labels, params, loss = mlp(graph)
        feed = feed_for(images, labels, params, batch=13, features=8, hidden=12)
    feed = {n: v.astype(dtype) if v.dtype.kind == "f" else v for n, v in feed.items()}
    replayed, interpreted = (miniflow.compile(loss, params, backend="numpy") for _ in range(2))
    feeds = [feed, {n: v.copy() for n, v in feed.items()}]
    for k, lr in enumerate([0.1, 0.1, 0.05, None, 0.2]):
        results = []
        for step, fed in zip((replayed, interpreted), feeds):
            if k == 1:
                _entry(interpreted)["replay"] = None  # from here on, the interpreter only
            results.append(step(fed) if lr is None else step.sgd(fed, lr))
        (value, got), (want_value, want) = results
        assert value.tobytes() == np.asarray(want_value).tobytes()
        for g, w in zip(got, want):
            assert g.tobytes() == w.tobytes()
    assert _entry(replayed)["replay"].checked  # the replay ran


def test_a_replayed_call_with_bad_labels_fails_as_the_interpreter_does():
    loss, params, feed, labels = _shared_weight_graph()
    step = miniflow.compile(loss, params, backend="numpy")
    for _ in range(2):
        step.sgd(feed, 0.1)
    assert _entry(step)["replay"].checked
    before = [feed[p].copy() for p in params]
    feed[labels] = feed[labels].copy()
    feed[labels][4] = 6
    with pytest.raises(miniflow.NodeError) as replayed:
        step.sgd(feed, 0.1)
    with pytest.raises(miniflow.NodeError) as eager:
        value_and_grad(loss, feed, params)
    assert str(replayed.value) == str(eager.value)
    assert "CrossEntropyWithSoftmax" in str(replayed.value)
    for p, b in zip(params, before):  # forward failed: nothing was updated
        np.testing.assert_array_equal(feed[p], b)


def test_a_node_without_a_kernel_keeps_the_interpreter():
    images, labels, params, loss = mlp("relu")
    loss = miniflow.Mean(miniflow.Exp(loss))  # no planned kernel for either
    step = miniflow.compile(loss, params, backend="numpy")
    feed = feed_for(images, labels, params, batch=5, features=4, hidden=3)
    assert_three_steps_match_by_hand(step, loss, feed, params, 0.1)
    assert _entry(step)["replay"] is None


@given(st.data())
@settings(max_examples=25, deadline=None, derandomize=True)
def test_random_planned_chains_replay_as_eager_and_as_the_interpreter(data):
    """Random chains of nodes that all have kernels (so calls after the first replay):
    Linear layers of random widths (size 1 included), a random activation or none
    after each, a weight shared by two layers where the shapes allow, float32/64.
    Each replayed sgd step equals value_and_grad then the update (to rounding) and
    the interpreter running the same kernels (bit for bit)."""
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    depth = data.draw(st.integers(1, 4))
    widths = data.draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    batch = data.draw(st.integers(1, 7))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x, labels = Input("x"), Input("labels")
    feed = {x: rng.standard_normal((batch, widths[0])).astype(dtype),
            labels: rng.integers(0, widths[-1], batch)}
    params, weights, value = [], {}, x
    for layer, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        w = weights.get((n_in, n_out)) if data.draw(st.booleans()) else None
        if w is None:
            w = weights[(n_in, n_out)] = Input(f"w{layer}")
            params.append(w)
            feed[w] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
        b = Input(f"b{layer}")
        params.append(b)
        feed[b] = rng.standard_normal(n_out).astype(dtype)
        value = Linear(value, w, b)
        if layer < depth - 1:
            activation = data.draw(st.sampled_from([None, ReLU, Sigmoid, miniflow.Tanh]))
            value = value if activation is None else activation(value)
    loss = CrossEntropyWithSoftmax(value, labels)
    replayed, interpreted = (miniflow.compile(loss, params, backend="numpy") for _ in range(2))
    feeds = [feed, {n: v.copy() for n, v in feed.items()}]
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for k in range(3):
        want_value, want_params = sgd_by_hand(loss, feeds[0], params, 0.1)
        if k == 1:
            _entry(interpreted)["replay"] = None
        (value, got), (same_value, same) = (step.sgd(f, 0.1) for step, f in
                                            zip((replayed, interpreted), feeds))
        np.testing.assert_allclose(value, want_value, rtol=rtol, atol=rtol)
        assert np.asarray(value).tobytes() == np.asarray(same_value).tobytes()
        for g, w, s in zip(got, want_params, same):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
            assert g.tobytes() == s.tobytes()
    assert _entry(replayed)["replay"].checked
