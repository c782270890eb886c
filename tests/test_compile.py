"""miniflow.compile: compiled steps agree with value_and_grad on every node and backend.

Backends: numpy (planned executor), jax.numpy (jax.jit) and torch (torch.compile;
with its quick "aot_eager" compiler for the node matrix, which traces the same
rules through dynamo and AOT autograd, and once with the default inductor on
the MLP). JAX and torch tests skip where the library is not installed.
"""
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import miniflow
from miniflow import (CompileError, CrossEntropyWithSoftmax, DummyGrad, Input, Linear, ReLU,
                      Sigmoid, Sum, Tanh, compilable, value_and_grad)
from miniflow.backends import get_backend
from miniflow.errors import NodeError

sys.path.insert(0, str(Path(__file__).parent))
from oracle import all_specs, as_case  # noqa: E402

SPECS = all_specs()
COMPILED = ["numpy", "jax.numpy", "torch", "cupy"]  # cupy: where a GPU is usable
# aot_eager: dynamo and AOT autograd trace the rules as inductor would see them, in
# seconds rather than a C++ build per graph.
QUICK_OPTIONS = {"torch": {"backend": "aot_eager"}}
EXAMPLES = int(os.environ.get("MINIFLOW_FUZZ", "0"))
NODE_EXAMPLES = settings(max_examples=EXAMPLES or 4, deadline=None, derandomize=not EXAMPLES,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@pytest.fixture(params=COMPILED)
def compiled_backend(request):
    reason = compilable(request.param)
    if reason:
        pytest.skip(reason)
    if request.param == "jax.numpy":
        import jax

        jax.config.update("jax_enable_x64", True)  # the node matrix runs in float64
    return get_backend(request.param)


def host(backend, array):
    if isinstance(array, (np.ndarray, np.generic)):
        return np.array(array, dtype=np.float64)
    return np.array(backend.to_numpy(array), dtype=np.float64)


def assert_same(backend, got, want, rtol=1e-6, atol=1e-9):
    got_value, got_grads = got
    want_value, want_grads = want
    np.testing.assert_allclose(host(backend, got_value), host(backend, want_value),
                               rtol=rtol, atol=atol)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        assert tuple(g.shape) == tuple(w.shape)
        np.testing.assert_allclose(host(backend, g), host(backend, w), rtol=rtol, atol=atol)


def copied(backend, result):
    """(value, grads) on the host: compiled gradients may be buffers reused next call."""
    value, grads = result
    return host(backend, value), [host(backend, g) for g in grads]


# -- every node, random shapes (scalars, size-1 and empty axes included) ---------------

def _examples(backend, examples):
    """torch.compile takes a second or more per graph even with aot_eager: in a default
    run its node matrix draws a quarter as many cases (MINIFLOW_FUZZ sets them all)."""
    if backend.name == "torch" and not EXAMPLES:
        return settings(examples, max_examples=max(1, examples.max_examples // 4))
    return examples


def _same_options(a: dict, b: dict) -> bool:
    """Whether two cases' keyword arguments are equal (arrays among them, as BatchNorm's)."""
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) or isinstance(b[k], np.ndarray)
        else a[k] == b[k] for k in a)


def _changed_values(arrays):
    """The same shapes, other values: floats moved a little (inside every spec's domain:
    positive stays positive, (-1, 1) stays inside), labels and indices as they were."""
    return [a * 0.9 + 0.01 if a.dtype.kind == "f" else a for a in arrays]


def _assert_same_as_eager(backend, step, head, nodes, arrays, wrt, upstream_seed=0):
    """step(feed) against value_and_grad on the same feed, to float64 rounding."""
    feed = {node: backend.asarray(a) for node, a in zip(nodes, arrays)}
    if head.gradient_is_fed:
        shape = tuple(miniflow.evaluate(head.inputs[0], feed, backend=backend).shape)
        feed[head] = backend.asarray(np.random.default_rng(upstream_seed).standard_normal(shape))
    try:
        want = copied(backend, value_and_grad(head, feed, wrt, backend=backend))
    except Exception as exc:
        # A case the executor rejects (or a node's own bug): the compiled step
        # must fail the same way, not compile something else.
        with pytest.raises(type(exc)):
            step(feed)
        return
    got = copied(backend, step(feed))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9, atol=1e-12)
    assert len(got[1]) == len(want[1])
    for g, w in zip(got[1], want[1]):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_node_compiles_to_the_same_values(spec, compiled_backend):
    """Every option of every node: the first call (which compiles), the compiled call,
    new values, and new shapes (a second signature) all give what eager gives."""
    backend = compiled_backend

    @_examples(backend, NODE_EXAMPLES)
    @given(drawn=spec.inputs, again=spec.inputs)
    def check(drawn, again):
        case, other = as_case(drawn), as_case(again)
        arrays = [np.asarray(a) for a in case.arrays]
        nodes = [Input(name=f"x{k}") for k in range(len(arrays))]
        head = DummyGrad(spec.build(*nodes, **case.kwargs))
        wrt = [node for node, a in zip(nodes, arrays) if a.dtype.kind == "f"]
        step = miniflow.compile(head, wrt, backend=backend,
                                options=QUICK_OPTIONS.get(backend.name))
        for _ in range(2):  # the first call compiles; the second runs what was compiled
            _assert_same_as_eager(backend, step, head, nodes, arrays, wrt)
        _assert_same_as_eager(backend, step, head, nodes, _changed_values(arrays), wrt, 1)
        others = [np.asarray(a) for a in other.arrays]
        # A new shape is one more compile: torch's, seconds each, only in long runs.
        if (EXAMPLES or backend.name != "torch") and _same_options(other.kwargs, case.kwargs) \
                and [a.dtype for a in others] == [a.dtype for a in arrays]:
            _assert_same_as_eager(backend, step, head, nodes, others, wrt, 2)

    check()


GRAPH_EXAMPLES = settings(NODE_EXAMPLES, max_examples=EXAMPLES or 25)


def test_random_graphs_compile_to_the_same_values(compiled_backend):
    """Random graphs with fan-out, shared leaves and nodes used twice by one consumer
    (tests/test_differential.py's generator), compiled against eager."""
    from oracle import torch

    if torch is None:
        pytest.skip("the random-graph generator builds its PyTorch twin: needs torch")
    from test_differential import random_graph

    backend = compiled_backend

    @_examples(backend, GRAPH_EXAMPLES)
    @given(graph=random_graph())
    def check(graph):
        arrays, build_pair = graph
        steering = [torch.tensor(a) for a in arrays]
        nodes = [Input(name=f"leaf{k}") for k in range(len(arrays))]
        output = build_pair(nodes, steering)[0]
        wrt = [node for node, a in zip(nodes, arrays) if np.asarray(a).dtype.kind == "f"]
        step = miniflow.compile(output, wrt, backend=backend,
                                options=QUICK_OPTIONS.get(backend.name))
        arrays = [np.asarray(a) for a in arrays]
        for _ in range(2):
            _assert_same_as_eager(backend, step, output, nodes, arrays, wrt)
        _assert_same_as_eager(backend, step, output, nodes, _changed_values(arrays), wrt)

    check()


# -- defects found by comparing compiled with eager, each pinned --------------------------

def test_lab_graph_with_fan_out_sums_both_gradients(compiled_backend):
    """x feeds two consumers: its gradient is the sum of both (y + z), not the first."""
    backend = compiled_backend
    x, y, z = Input("x"), Input("y"), Input("z")
    f = Sum(x * y + x * z)
    step = miniflow.compile(f, [x, y, z], backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    feed = {x: backend.asarray([3.0]), y: backend.asarray([4.0]), z: backend.asarray([-5.0])}
    for _ in range(3):
        value, grads = copied(backend, step(feed))
        assert value == -3.0
        assert [g.tolist() for g in grads] == [[-1.0], [3.0], [3.0]]


@pytest.mark.parametrize("options", [dict(reduction="sum"), dict(reduction="none"),
                                     dict(label_smoothing=0.3),
                                     dict(ignore_index=-100), dict(reduction="sum",
                                                                  ignore_index=2)])
def test_cross_entropy_options_compile_as_eager(compiled_backend, options):
    backend = compiled_backend
    images, labels, params, _ = mlp("relu")
    w1, b1, w2, b2 = params
    head = CrossEntropyWithSoftmax(Linear(ReLU(Linear(images, w1, b1)), w2, b2), labels,
                                   **options)
    if options.get("reduction") == "none":
        head = Sum(head * np.linspace(0.5, 1.5, 7, dtype=np.float32))
    feed = mlp_feed(backend, images, labels, params)
    marked = host(backend, feed[labels]).astype(np.int64)
    marked[::3] = options.get("ignore_index", marked[0])  # ignored labels, where asked
    feed[labels] = backend.asarray(marked)
    step = miniflow.compile(head, params, backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    want = copied(backend, value_and_grad(head, feed, params, backend=backend))
    for _ in range(2):
        assert_same(backend, step(feed), want, rtol=2e-5, atol=1e-6)


def test_relu_passes_back_zero_where_x_is_negative_even_for_inf(compiled_backend):
    backend = compiled_backend
    x = Input("x")
    head = DummyGrad(ReLU(x))
    xs = np.linspace(-2, 2, 2048, dtype=np.float32)
    xs[-1] = np.nan  # passes its gradient, as PyTorch's threshold_backward does
    feed = {x: backend.asarray(xs), head: backend.asarray(np.full(2048, np.inf, np.float32))}
    step = miniflow.compile(head, [x], backend=backend, options=QUICK_OPTIONS.get(backend.name))
    for _ in range(2):
        _, (grad,) = copied(backend, step(feed))
        assert (grad[:1024] == 0).all() and np.isinf(grad[1024:]).all()


def test_sigmoid_keeps_its_precision_far_below_zero(compiled_backend):
    backend = compiled_backend
    x = Input("x")
    loss = Sum(miniflow.Log(Sigmoid(x)))
    feed = {x: backend.asarray(np.array([-100.0, -20.0, 0.0, 30.0], np.float32))}
    step = miniflow.compile(loss, [x], backend=backend, options=QUICK_OPTIONS.get(backend.name))
    want = copied(backend, value_and_grad(loss, feed, [x], backend=backend))
    for _ in range(2):
        got = copied(backend, step(feed))
        # JAX on CPU flushes float32 subnormals (sigmoid(-100) = 3.7e-44) to 0, eagerly too.
        assert np.isfinite(got[0]) or backend.name == "jax.numpy"
        assert_same(backend, got, want, rtol=1e-6)


def test_label_checks_follow_each_node(compiled_backend):
    """Integer feeds are checked against the limit of the node that reads them: Take's
    table rows, the class axis of (N, C, d) logits, an ignored label, not logits.shape[-1]."""
    backend = compiled_backend
    options = QUICK_OPTIONS.get(backend.name)
    table, indices = Input("table"), Input("indices")
    lookup = Sum(miniflow.Take(table, indices))
    step = miniflow.compile(lookup, [table], backend=backend, options=options)
    feed = {table: backend.asarray(np.ones((6, 2))), indices: backend.asarray(np.array([0, 5, 5]))}
    for _ in range(2):  # indices >= table.shape[-1] (2) are valid rows
        _, grad = copied(backend, step(feed))
        assert grad[0].sum(axis=1).tolist() == [2, 0, 0, 0, 0, 4]  # 2 columns a row
    with pytest.raises(NodeError, match=r"\[0, 6\)"):
        step({**feed, indices: backend.asarray(np.array([0, 6]))})

    logits, labels = Input("logits"), Input("labels")
    loss = CrossEntropyWithSoftmax(logits, labels)  # (N, C, d): classes on axis 1
    step = miniflow.compile(loss, [logits], backend=backend, options=options)
    feed = {logits: backend.asarray(np.random.default_rng(0).standard_normal((2, 7, 3))),
            labels: backend.asarray(np.array([[6, 0, 4], [5, 5, 1]]))}  # >= d = 3: valid
    want = copied(backend, value_and_grad(loss, feed, [logits], backend=backend))
    for _ in range(2):
        assert_same(backend, step(feed), want, rtol=1e-9)
    with pytest.raises(NodeError, match=r"\[0, 7\)"):
        step({**feed, labels: backend.asarray(np.array([[7, 0, 0], [0, 0, 0]]))})

    ignoring = CrossEntropyWithSoftmax(logits, labels, ignore_index=-100)
    step = miniflow.compile(ignoring, [logits], backend=backend, options=options)
    feed[labels] = backend.asarray(np.array([[-100, 0, 4], [5, -100, 1]]))
    want = copied(backend, value_and_grad(ignoring, feed, [logits], backend=backend))
    for _ in range(2):
        assert_same(backend, step(feed), want, rtol=1e-9)
    with pytest.raises(NodeError, match="-99"):
        step({**feed, labels: backend.asarray(np.array([[-99, 0, 4], [5, 0, 1]]))})


# -- the MLP: the kernels the NumPy plan fuses, and the training step ---------------------

def mlp(activation, hidden=12, classes=5):
    images, labels = Input("images"), Input("labels")
    params = [Input(n) for n in ("w1", "b1", "w2", "b2")]
    w1, b1, w2, b2 = params
    act = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}[activation]
    loss = CrossEntropyWithSoftmax(Linear(act(Linear(images, w1, b1)), w2, b2), labels)
    return images, labels, params, loss


def mlp_feed(backend, images, labels, params, batch=7, features=9, hidden=12, classes=5,
             seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((features, hidden)) / 3, rng.standard_normal(hidden) / 3,
              rng.standard_normal((hidden, classes)) / 3, rng.standard_normal(classes) / 3]
    feed = {images: rng.standard_normal((batch, features)),
            **{p: v for p, v in zip(params, values)}}
    feed = {node: backend.asarray(v.astype(dtype)) for node, v in feed.items()}
    feed[labels] = backend.asarray(rng.integers(0, classes, batch))
    return feed


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_step_and_shape_change(compiled_backend, activation):
    backend = compiled_backend
    images, labels, params, loss = mlp(activation)
    step = miniflow.compile(loss, params, backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    for batch in (7, 7, 3, 7):  # a new batch size compiles again; the old one is kept
        feed = mlp_feed(backend, images, labels, params, batch=batch, seed=batch)
        want = copied(backend, value_and_grad(loss, feed, params, backend=backend))
        assert_same(backend, step(feed), want, rtol=2e-5, atol=1e-6)
    assert sorted(sig[0][0][0] for sig in step.signatures) == [3, 7]


def test_sgd_step_matches_value_and_grad_then_update(compiled_backend):
    backend = compiled_backend
    images, labels, params, loss = mlp("relu")
    lr = 0.1
    step = miniflow.compile(loss, params, backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    feed = mlp_feed(backend, images, labels, params)
    expected = [host(backend, feed[p]) for p in params]
    current = dict(feed)
    for _ in range(3):
        value, grads = value_and_grad(loss, {**feed, **{p: backend.asarray(
            e.astype(np.float32)) for p, e in zip(params, expected)}}, params, backend=backend)
        expected = [e - lr * host(backend, g) for e, g in zip(expected, grads)]
        got_value, new = step.sgd(current, lr)
        np.testing.assert_allclose(host(backend, got_value), host(backend, value), rtol=1e-5)
        current.update(zip(params, new))
    for p, e in zip(params, expected):
        np.testing.assert_allclose(host(backend, current[p]), e, rtol=1e-4, atol=1e-6)
    if backend.name != "jax.numpy":  # mutable arrays are updated where they lie
        assert all(current[p] is feed[p] for p in params)


def test_compiled_step_rejects_labels_out_of_range(compiled_backend):
    backend = compiled_backend
    images, labels, params, loss = mlp("relu")
    step = miniflow.compile(loss, params, backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    feed = mlp_feed(backend, images, labels, params)
    step(feed)  # compiled: the check below runs on the compiled path
    bad = np.arange(7) % 5
    bad[3] = 5
    with pytest.raises(NodeError, match=r"labels.* must lie in \[0, 5\)"):
        step({**feed, labels: backend.asarray(bad)})
    with pytest.raises(NodeError, match="labels.* must lie"):
        step({**feed, labels: backend.asarray(-bad)})


@pytest.mark.parametrize("classes, dtype, options, good, bad", [
    (5, np.uint8, dict(ignore_index=-100), [0, 4, 2], [0, 156, 2]),  # no uint8 is -100
    (200, np.int8, {}, [0, 127, 5], [0, -1, 5]),  # 200 classes: past int8's largest value
], ids=["uint8-ignore_index", "int8-200-classes"])
def test_labels_of_narrow_dtypes_are_checked_as_eager(compiled_backend, classes, dtype, options,
                                                      good, bad):
    """A limit or an ignored label the labels' dtype cannot hold is no constant to
    compare with: the compiled step checks what the dtype can hold, as eager does."""
    backend = compiled_backend
    logits, labels = Input("logits"), Input("labels")
    loss = CrossEntropyWithSoftmax(logits, labels, **options)
    scores = np.random.default_rng(0).standard_normal((3, classes))
    feed = {logits: backend.asarray(scores), labels: backend.asarray(np.array(good, dtype))}
    step = miniflow.compile(loss, [logits], backend=backend,
                            options=QUICK_OPTIONS.get(backend.name))
    want = copied(backend, value_and_grad(loss, feed, [logits], backend=backend))
    for _ in range(2):
        assert_same(backend, step(feed), want, rtol=1e-9)
    with pytest.raises(NodeError, match=f"labels.* must lie in \\[0, {classes}\\)"):
        step({**feed, labels: backend.asarray(np.array(bad, dtype))})


@pytest.mark.skipif(compilable("jax.numpy") is not None, reason="jax is not installed")
def test_jax_counts_labels_out_of_range_inside_the_program(monkeypatch):
    """The compiled program counts the labels out of range; the host looks at labels
    only when that count is not zero, then raises value_and_grad's error, before the
    step returns anything."""
    from miniflow.compile import CompiledStep

    looked = []  # the host's looks at the labels: its check, or a run of the rules
    bounds, check = CompiledStep._label_bounds, CompiledStep._check_labels
    monkeypatch.setattr(CompiledStep, "_label_bounds",
                        lambda self, fed: looked.append(1) or bounds(self, fed))
    monkeypatch.setattr(CompiledStep, "_check_labels",
                        lambda self, fed, b: looked.append(2) or check(self, fed, b))
    backend = get_backend("jax.numpy")
    images, labels, params, loss = mlp("relu")
    step = miniflow.compile(loss, params, backend=backend)
    feed = mlp_feed(backend, images, labels, params)
    step.sgd(feed, 0.1)  # compiles
    rng = np.random.default_rng(1)
    for _ in range(3):  # a new array each step, as batches are
        fresh = {**feed, labels: backend.asarray(rng.integers(0, 5, 7))}
        want = copied(backend, value_and_grad(loss, fresh, params, backend=backend))
        assert_same(backend, step(fresh), want, rtol=2e-5, atol=1e-6)
        step.sgd(fresh, 0.1)
    assert looked == []
    before = [host(backend, feed[p]) for p in params]
    for bad in ([0, 1, 2, 3, 4, 5, 0], [0, 1, -1, 3, 4, 0, 0]):
        with pytest.raises(NodeError, match=r"labels.* must lie in \[0, 5\)"):
            step.sgd({**feed, labels: backend.asarray(np.array(bad))}, 0.1)
        with pytest.raises(NodeError, match=r"labels.* must lie in \[0, 5\)"):
            step({**feed, labels: backend.asarray(np.array(bad))})
    for p, b in zip(params, before):
        np.testing.assert_array_equal(host(backend, feed[p]), b)
    unchecked = miniflow.compile(loss, params, backend=backend, check_labels=False)
    unchecked(feed)
    unchecked({**feed, labels: backend.asarray(np.array([0, 1, 2, 3, 4, 5, 0]))})  # not looked at
    assert looked == [1] * 4


def test_bad_feed_on_first_call_names_the_node(compiled_backend):
    backend = compiled_backend
    images, labels, params, loss = mlp("relu")
    step = miniflow.compile(loss, params, backend=backend)
    feed = mlp_feed(backend, images, labels, params)
    feed[images] = backend.asarray(np.zeros((7, 4), np.float32))
    with pytest.raises(miniflow.ShapeError, match="Linear"):
        step(feed)
    with pytest.raises(miniflow.GraphError, match="labels"):
        step({k: v for k, v in feed.items() if k is not labels})


@pytest.mark.skipif(compilable("torch") is not None, reason="torch is not installed")
def test_torch_inductor_compiles_the_mlp():
    """The default torch.compile (inductor, a C++ build on the CPU): slow once, then right."""
    backend = get_backend("torch")
    images, labels, params, loss = mlp("relu")
    feed = mlp_feed(backend, images, labels, params)
    step = miniflow.compile(loss, params, backend=backend)
    want = copied(backend, value_and_grad(loss, feed, params, backend=backend))
    assert_same(backend, step(feed), want, rtol=2e-5, atol=1e-6)


@pytest.mark.skipif(compilable("torch") is not None, reason="torch is not installed")
def test_torch_step_is_compiled_or_says_so(monkeypatch):
    """Dynamo runs a function uncompiled, silently, past its recompile limit: a step
    must not. New learning rates never recompile (lr is a tensor, not a constant), and
    a step that runs out of versions raises."""
    from miniflow.compile import TorchStep

    monkeypatch.setattr(TorchStep, "recompile_limit", 2)
    backend = get_backend("torch")
    images, labels, params, loss = mlp("relu")
    options = {"backend": "aot_eager", "dynamic": False}  # one version per shape
    step = miniflow.compile(loss, params, backend=backend, options=options)
    feed = mlp_feed(backend, images, labels, params)
    for lr in (0.1, 0.05, 0.02, 0.01, 0.005):
        step.sgd(feed, lr)
    with pytest.raises(CompileError, match="uncompiled"):
        for batch in (3, 4, 5, 6):
            step(mlp_feed(backend, images, labels, params, batch=batch))


# -- NumPy: the plan allocates nothing of the batch's size -----------------------------------

@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_planned_numpy_step_allocates_no_batch_sized_array(activation):
    backend = get_backend("numpy")
    batch, hidden = 128, 256
    images, labels, params, loss = mlp(activation, hidden=hidden, classes=10)
    feed = mlp_feed(backend, images, labels, params, batch=batch, features=50, hidden=hidden,
                    classes=10)
    step = miniflow.compile(loss, params, backend="numpy")
    for _ in range(2):
        step.sgd(feed, 0.01)

    def peak(run):
        tracemalloc.start()
        try:
            run()
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            run()
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()

    batch_array = batch * hidden * 4
    # What remains is NumPy's iterator buffer for the broadcast bias add (at most
    # 8192 elements, whatever the batch) and a few small Python objects.
    assert peak(lambda: step.sgd(feed, 0.01)) < min(batch_array / 2, 40_000)
    # The measurement sees what value_and_grad allocates: many such arrays.
    assert peak(lambda: value_and_grad(loss, feed, params)) > 2 * batch_array


def test_planned_numpy_uses_kernels_and_falls_back_for_other_nodes():
    from miniflow.compile import PLANNED_KERNELS

    images, labels, params, loss = mlp("relu")
    scaled = CrossEntropyWithSoftmax(Linear(images, params[0], params[1]) * 2.0, labels)
    feed = mlp_feed(get_backend("numpy"), images, labels, params, classes=12)
    step = miniflow.compile(scaled, params[:2], backend="numpy")
    want = copied(get_backend("numpy"), value_and_grad(scaled, feed, params[:2]))
    assert_same(get_backend("numpy"), step(feed), want, rtol=2e-5, atol=1e-6)
    ((entry, _),) = step._compiled.values()
    kinds = {type(k).__name__ for k in entry["kernels"]}
    assert {"LinearKernel", "CrossEntropyKernel"} <= kinds
    assert None in entry["kernels"]  # Mul runs its own rules
    assert Linear in PLANNED_KERNELS


# -- what cannot be compiled says so -----------------------------------------------------------

def test_backend_without_compiler_is_a_clear_error():
    images, labels, params, loss = mlp("relu")
    assert "no compiler" in compilable("array_api_strict")
    with pytest.raises(CompileError, match="array_api_strict.*value_and_grad"):
        miniflow.compile(loss, params, backend="array_api_strict")


# -- training: TrainConfig(compile=True) and `miniflow train --compile` ---------------------

@pytest.mark.parametrize("name", ["numpy", "jax.numpy"])
def test_compiled_training_matches_uncompiled(name):
    from miniflow.train import TrainConfig, train

    if compilable(name):
        pytest.skip(compilable(name))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 250)
    images = (np.eye(3, 12)[labels] * 2 + rng.standard_normal((250, 12))).astype(np.float32)
    config = dict(hidden=(8,), epochs=2, batch_size=64, lr=0.05, backend=name)  # last batch: 58
    plain = train(TrainConfig(**config), images, labels, images, labels, n_classes=3)
    compiled = train(TrainConfig(**config, compile=True), images, labels, images, labels,
                     n_classes=3)
    np.testing.assert_allclose([s.loss for s in compiled.history],
                               [s.loss for s in plain.history], rtol=1e-5)
    for a, b in zip(compiled.model.params.values(), plain.model.params.values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cli_compile_falls_back_with_a_one_line_notice(monkeypatch, capsys):
    from test_cli import fake_mnist

    from miniflow import cli

    monkeypatch.setattr(cli, "load_mnist", lambda *a, validation_size=0, **k: fake_mnist(200))
    args = ["train", "--hidden", "8", "--epochs", "1", "--quiet", "--compile"]
    assert cli.main(args + ["--backend", "array_api_strict"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    assert len(notices) == 1 and "array_api_strict" in notices[0] and "uncompiled" in notices[0]
    assert cli.main(args) == 0  # numpy compiles: no notice
    assert "--compile" not in capsys.readouterr().err


def test_readme_example_runs_and_learns():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    import re

    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
               if "miniflow.compile(" in b]
    namespace = {}
    exec(code, namespace)
    loss, feed, params = namespace["loss"], namespace["feed"], namespace["params"]
    assert namespace["feed"][params[0]] is namespace["new_params"][0]  # updated in place
    after, _ = value_and_grad(loss, feed, params)
    assert after < namespace["first"]
