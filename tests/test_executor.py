"""Running graphs: backend choice, feeds, results, threads."""
import subprocess
import sys
import threading

import numpy as np

from miniflow import (CrossEntropyWithSoftmax, DummyGrad, Input, Linear, Sigmoid, Sum, evaluate,
                      value_and_grad)
from miniflow.backends import available_backends, get_backend


def mlp_loss():
    X, W, b, labels = Input("X"), Input("W"), Input("b"), Input("labels")
    loss = CrossEntropyWithSoftmax(Sigmoid(Linear(X, W, b)), labels)
    return loss, (X, W, b, labels)


def test_backend_is_inferred_from_the_fed_arrays(backend):
    x = Input()
    fed = backend.asarray(np.array([1.0, 2.0], np.float32))
    value, grad = value_and_grad(Sum(x * x), {x: fed}, x)
    assert backend.owns(value) and backend.owns(grad)


def test_python_data_infers_numpy_and_becomes_float32():
    x = Input()
    value, grad = value_and_grad(Sum(x), {x: [1, 2, 3]}, x)
    assert isinstance(grad, np.ndarray) and grad.dtype == np.float32
    assert np.asarray(value).dtype == np.float32


def test_integer_labels_stay_integer(backend):
    seen = {}

    class Spy(CrossEntropyWithSoftmax):
        def forward(self, ctx, logits, labels):
            seen["labels"] = labels
            return super().forward(ctx, logits, labels)

    logits, labels = Input(), Input()
    value_and_grad(Spy(logits, labels), {logits: [[1.0, 2.0]], labels: [1]}, logits,
                   backend=backend.name)
    assert backend.xp.isdtype(seen["labels"].dtype, "integral")


def test_a_backend_array_is_not_copied(backend):
    x = Input()
    fed = backend.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    out = DummyGrad(x)  # passes its input through: the value *is* the fed array
    value, _ = value_and_grad(out, {x: fed, out: 1.0}, x, backend=backend.name)
    assert value is fed


def test_values_and_gradients_come_back_on_the_chosen_backend(backend, to_numpy):
    loss, (X, W, b, labels) = mlp_loss()
    rng = np.random.default_rng(1)
    feed = {X: rng.standard_normal((4, 3)).astype(np.float32),
            W: rng.standard_normal((3, 2)).astype(np.float32),
            b: np.zeros(2, np.float32), labels: np.array([0, 1, 1, 0])}
    value, grads = value_and_grad(loss, feed, (W, b), backend=backend.name)
    assert backend.owns(value) and all(backend.owns(g) for g in grads)
    reference, ref_grads = value_and_grad(loss, feed, (W, b), backend="numpy")
    np.testing.assert_allclose(to_numpy(value), reference, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-7)


def test_backend_may_be_the_module_itself():
    import array_api_strict

    x = Input()
    value = evaluate(Sum(x), {x: [1.0, 2.0]}, backend=array_api_strict)
    assert type(value).__module__.startswith("array_api_strict")
    assert get_backend(np).name == "numpy"


def test_single_wrt_node_gives_a_single_gradient():
    x = Input()
    _, grad = value_and_grad(Sum(x * x), {x: [3.0]}, x)
    assert grad.tolist() == [6.0]


def test_extra_feeds_are_ignored():
    x, unused = Input(), Input()
    assert evaluate(Sum(x), {x: [1.0], unused: "not even an array"}) == 1


def test_the_same_graph_runs_on_two_backends_in_two_threads():
    loss, (X, W, b, labels) = mlp_loss()
    rng = np.random.default_rng(2)
    feed = {X: rng.standard_normal((64, 20)).astype(np.float32),
            W: rng.standard_normal((20, 5)).astype(np.float32),
            b: rng.standard_normal(5).astype(np.float32), labels: rng.integers(0, 5, 64)}
    expected = value_and_grad(loss, feed, (W, b))
    names = ["numpy", "array_api_strict"] + [n for n in available_backends() if n == "torch"]
    failures, barrier = [], threading.Barrier(len(names))

    def run(name):
        backend = get_backend(name)
        barrier.wait()
        for _ in range(30):
            value, grads = value_and_grad(loss, feed, (W, b), backend=name)
            try:
                np.testing.assert_allclose(backend.to_numpy(value), expected[0], rtol=1e-5)
                for got, want in zip(grads, expected[1]):
                    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-4, atol=1e-6)
            except AssertionError as exc:
                failures.append((name, exc))
                return

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_import_does_not_import_cupy_or_torch():
    # What keeps `import miniflow` cheap is importing no heavy library; how long it
    # takes is bench/claims.py's to report, since a busy machine stretches any time.
    code = ("import sys, miniflow; "
            "print(*(name in sys.modules for name in ('cupy', 'torch', 'jax', 'dask')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 4


def test_cupy_backend_is_only_imported_when_asked_for():
    code = ("import sys, miniflow; from miniflow import Input, Sum, evaluate; x = Input(); "
            "evaluate(Sum(x), {x: [1.0]}); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
