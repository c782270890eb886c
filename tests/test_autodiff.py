"""Gradients as graphs (issue 19): second and third derivatives against PyTorch.

Every node spec of the oracle is differentiated twice, on every backend, in
float64, on hypothesis-drawn inputs: ``grad`` of <grad(sum(f * u)), v> against
``torch.autograd.grad(create_graph=True)``; elementwise chains three times; random
graphs as in test_differential; ``jvp`` against ``torch.func.jvp``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import _arithmetic_of, _torch_inputs, all_specs, as_case, torch, values

import miniflow
from miniflow import (Add, Exp, Input, Mul, NotTwiceDifferentiableError, Sum, Tanh, evaluate,
                      grad, hessian, hvp, jacobian, jvp, run, vjp)

SPECS = all_specs()
EXAMPLES = int(os.environ.get("MINIFLOW_FUZZ", "0"))
PER_SPEC = settings(max_examples=EXAMPLES or 4, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])

#: Specs whose node is not twice differentiable: grad of grad must raise naming it.
NOT_TWICE = {}

#: Specs drawn at singular points, where the first derivative is a convention (Std's 0
#: at a flat slice, Pow's 0 for d/dp at x = 0, ELU at nan) rather than a derivative:
#: there miniflow's second derivative and PyTorch's hand-written double-backward formulas
#: may differ (nan on one side), so only the elements finite on both sides are compared.
SINGULAR = {"x ** y at zero", "Std", "Std (flat slices)", "Std (n <= correction)",
            "Std (empty axes)", "ELU non-finite"}


def _float64_backend(backend):
    probe = backend.asarray(np.zeros(1))
    if not backend.xp.isdtype(probe.dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


def _values(backend, nodes_and_feed, outputs):
    feed = nodes_and_feed
    result = run(outputs[0], feed, backend=backend.name, extras=outputs[1:])
    return [np.asarray(backend.to_numpy(a), dtype=np.float64)
            for a in [result.value, *result.extras]]


def second_order_with_torch(build, torch_fn, arrays, backend, rtol=1e-6, atol=1e-8, seed=0,
                            finite_only=False):
    """Assert grad and grad-of-grad of sum(f * u) equal PyTorch's (float64) on ``backend``."""
    arrays = [np.asarray(a) for a in arrays]
    rng = np.random.default_rng(seed)
    tensors = _torch_inputs(arrays)
    floating = [k for k, a in enumerate(arrays) if a.dtype.kind == "f"]
    if not floating:
        return
    with _arithmetic_of(backend):
        out = torch_fn(*tensors)
        upstream = rng.standard_normal(tuple(out.shape))
        directions = [rng.standard_normal(arrays[k].shape) for k in floating]
        xs = [tensors[k] for k in floating]
        if not out.requires_grad:
            return
        s = (out * torch.tensor(upstream)).sum()
        first = torch.autograd.grad(s, xs, create_graph=True, allow_unused=True)
        inner = sum(((g * torch.tensor(v)).sum() for g, v in zip(first, directions)
                     if g is not None and g.requires_grad), torch.zeros((), dtype=torch.float64))
        second = (torch.autograd.grad(inner, xs, allow_unused=True) if inner.requires_grad
                  else [None] * len(xs))

    nodes = [Input(name=f"x{k}") for k in range(len(arrays))]
    u, vs = Input(name="u"), [Input(name=f"v{k}") for k in floating]
    wrt = [nodes[k] for k in floating]
    s_node = Sum(Mul(build(*nodes), u))
    g_nodes = grad(s_node, wrt)
    h_nodes = grad(Add(*[Sum(Mul(g, v)) for g, v in zip(g_nodes, vs)])
                   if len(vs) > 1 else Sum(Mul(g_nodes[0], vs[0])), wrt)
    feed = {n: backend.asarray(a) for n, a in zip(nodes, arrays)}
    feed[u] = backend.asarray(upstream)
    feed.update({v: backend.asarray(d) for v, d in zip(vs, directions)})
    got = _values(backend, feed, g_nodes + h_nodes)
    # force=True: PyTorch returns some zero gradients as ZeroTensors, which refuse .numpy().
    want = ([np.zeros(arrays[k].shape) if g is None else g.detach().numpy(force=True)
             for k, g in zip(floating, first)]
            + [np.zeros(arrays[k].shape) if h is None else h.detach().numpy(force=True)
               for k, h in zip(floating, second)])
    for k, (a, b) in enumerate(zip(got, want)):
        order = "first" if k < len(wrt) else "second"
        assert a.shape == b.shape, f"{order} derivative {k}: shape {a.shape} != {b.shape}"
        if finite_only:
            both = np.isfinite(a) & np.isfinite(b)
            a, b = a[both], b[both]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                                   err_msg=f"{order} derivative wrt input {k % len(wrt)}")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_second_derivative_matches_pytorch(spec, backend):
    _float64_backend(backend)

    @PER_SPEC
    @given(drawn=spec.inputs)
    def check(drawn):
        case = as_case(drawn)
        build = lambda *n: spec.build(*n, **case.kwargs)  # noqa: E731
        if spec.name in NOT_TWICE:
            with pytest.raises(NotTwiceDifferentiableError, match=NOT_TWICE[spec.name]):
                second_order_with_torch(build, lambda *t: spec.torch_fn(*t, **case.kwargs),
                                        case.arrays, backend)
            return
        second_order_with_torch(build, lambda *t: spec.torch_fn(*t, **case.kwargs),
                                case.arrays, backend, rtol=max(spec.rtol * 100, 1e-6),
                                atol=max(spec.atol * 100, 1e-8), finite_only=spec.name in SINGULAR)

    check()


# -- third order on elementwise chains ----------------------------------------------

UNARY = [s for s in SPECS if s.elementwise and s.arity == 1]


def _into(domain, node, tensor):
    if domain == "positive":
        return miniflow.Sigmoid(node) * 2 + 0.1, torch.sigmoid(tensor) * 2 + 0.1
    if domain == "unit":
        return Tanh(node) * 0.9, torch.tanh(tensor) * 0.9
    return node, tensor


@st.composite
def chains(draw):
    steps = draw(st.lists(st.sampled_from(UNARY), min_size=1, max_size=3))
    # Away from the kinks hypothesis likes (ReLU's, ELU's 0, Clip's bounds): there the
    # second derivative is one-sided, and PyTorch and miniflow may take different sides.
    x = draw(values(draw(st.sampled_from([(), (3,), (2, 2)])), -1.5, 1.5,
                    avoid=(0.0, 0.5, -0.5, 1.0, -1.0), margin=1e-2))
    return steps, x


@settings(PER_SPEC, max_examples=EXAMPLES or 25)
@given(chain=chains())
def _third_order(backend, chain):
    steps, x = chain
    node = X = Input(name="x")
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tensor = t
    for spec in steps:
        node, tensor = _into(spec.domain, node, tensor)
        node, tensor = spec.build(node), spec.torch_fn(tensor)
    rng = np.random.default_rng(1)
    v = rng.standard_normal(x.shape)
    with _arithmetic_of(backend):
        s = tensor.sum()
        (g1,) = (torch.autograd.grad(s, t, create_graph=True) if s.requires_grad
                 else (torch.zeros_like(t),))
        (g2,) = (torch.autograd.grad((g1 * torch.tensor(v)).sum(), t, create_graph=True,
                                     allow_unused=True) if g1.requires_grad else (None,))
        g3 = (torch.autograd.grad((g2 * torch.tensor(v)).sum(), t, allow_unused=True)[0]
              if g2 is not None and g2.requires_grad else None)
    V = Input(name="v")
    d1 = grad(Sum(node), X)
    d2 = grad(Sum(d1 * V), X)
    d3 = grad(Sum(d2 * V), X)
    feed = {X: backend.asarray(x), V: backend.asarray(v)}
    got = _values(backend, feed, [d1, d2, d3])
    for k, (a, b) in enumerate(zip(got, [g1, g2, g3])):
        want = np.zeros(x.shape) if b is None else b.detach().numpy(force=True)
        both = np.isfinite(a) & np.isfinite(want)
        np.testing.assert_allclose(a[both], want[both], rtol=1e-5, atol=1e-7,
                                   err_msg=f"derivative {k + 1} of {[s.name for s in steps]}")


def test_third_derivative_of_elementwise_chains_matches_pytorch(backend):
    _float64_backend(backend)
    _third_order(backend)


# -- random graphs, as in test_differential ---------------------------------------------

def test_second_derivative_of_random_graphs_matches_pytorch(backend):
    from test_differential import moderate, random_graph

    _float64_backend(backend)

    @settings(PER_SPEC, max_examples=EXAMPLES or 20)
    @given(graph=random_graph(moderate))
    def check(graph):
        arrays, build_pair = graph
        steering = [torch.tensor(a) for a in arrays]
        second_order_with_torch(lambda *nodes: build_pair(list(nodes), steering)[0],
                                lambda *tensors: build_pair([Input() for _ in tensors],
                                                            list(tensors))[1],
                                arrays, backend, rtol=1e-5, atol=1e-7, finite_only=True)

    check()


# -- jvp, hvp, jacobian, hessian -------------------------------------------------------

def test_jvp_matches_torch_func_jvp(backend):
    _float64_backend(backend)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    ta, tb = rng.standard_normal((3, 4)), rng.standard_normal(4)
    A, B, TA, TB = Input(name="a"), Input(name="b"), Input(name="ta"), Input(name="tb")
    out = Tanh(A * B) + Exp(B) * 0.5
    product = jvp(out, [A, B], [TA, TB])
    feed = {n: backend.asarray(v) for n, v in zip((A, B, TA, TB), (a, b, ta, tb))}
    got = np.asarray(backend.to_numpy(evaluate(product, feed, backend=backend.name)))
    _, want = torch.func.jvp(lambda x, y: torch.tanh(x * y) + torch.exp(y) * 0.5,
                             (torch.tensor(a), torch.tensor(b)),
                             (torch.tensor(ta), torch.tensor(tb)))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


def test_jvp_of_an_mlp_matches_torch_func_jvp():
    rng = np.random.default_rng(1)
    X, W = Input(name="X"), Input(name="W")
    x, w, t = rng.standard_normal((5, 3)), rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    T = Input(name="t")
    out = miniflow.Softmax(miniflow.ReLU(X @ W) + X @ W * 0.1, axis=-1)
    got = evaluate(jvp(out, W, T), {X: x, W: w, T: t})
    _, want = torch.func.jvp(
        lambda w_: torch.softmax(torch.relu(torch.tensor(x) @ w_) + torch.tensor(x) @ w_ * 0.1,
                                 dim=-1), (torch.tensor(w),), (torch.tensor(t),))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


def test_hessian_and_jacobian_match_torch(backend):
    _float64_backend(backend)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4)
    X = Input(name="x")
    f = Sum(Exp(X) * miniflow.Sin(X)) + Sum(X * X) * Sum(X)
    feed = {X: backend.asarray(x)}
    got = np.asarray(backend.to_numpy(hessian(f, feed, X, backend=backend.name)))
    fn = lambda t: (torch.exp(t) * torch.sin(t)).sum() + (t * t).sum() * t.sum()  # noqa: E731
    want = torch.autograd.functional.hessian(fn, torch.tensor(x))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)

    y = Tanh(miniflow.Outer(X, X))
    got = np.asarray(backend.to_numpy(jacobian(y, feed, X, backend=backend.name)))
    want = torch.autograd.functional.jacobian(lambda t: torch.tanh(torch.outer(t, t)),
                                              torch.tensor(x))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


def test_hvp_matches_torch_on_an_mlp_loss(backend):
    _float64_backend(backend)
    rng = np.random.default_rng(3)
    X, y, W1, W2 = Input(name="X"), Input(name="y"), Input(name="W1"), Input(name="W2")
    V1, V2 = Input(name="V1"), Input(name="V2")
    loss = miniflow.CrossEntropyWithSoftmax(miniflow.Tanh(X @ W1) @ W2, y)
    x, labels = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    w1, w2 = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    v1, v2 = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    products = hvp(loss, [W1, W2], [V1, V2])
    feed = {n: backend.asarray(a) for n, a in zip((X, y, W1, W2, V1, V2),
                                                   (x, labels, w1, w2, v1, v2))}
    got = _values(backend, feed, products)

    def fn(a, b):
        return torch.nn.functional.cross_entropy(torch.tanh(torch.tensor(x) @ a) @ b,
                                                 torch.tensor(labels))
    _, want = torch.autograd.functional.hvp(fn, (torch.tensor(w1), torch.tensor(w2)),
                                            (torch.tensor(v1), torch.tensor(v2)))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-12)


# -- rules that select by value, at the points where the selection changes -------------------

#: Each rule's first-derivative form selects by where x is 0 (PyTorch's, so that inf from
#: above meets what it meets there); differentiated again, it must take the form whose
#: derivative is right there, as PyTorch's create_graph does. Random draws rarely hit 0.
AT_ZEROS = [
    ("ELU at 0", lambda x: miniflow.ELU(x), torch.nn.functional.elu, [0.0, -0.5, 0.5]),
    ("CumProd [0, 0]", lambda x: miniflow.CumProd(x, 0), lambda t: torch.cumprod(t, 0),
     [0.0, 0.0]),
    ("CumProd zeros inside", lambda x: miniflow.CumProd(x, -1),
     lambda t: torch.cumprod(t, -1), [[2.0, 0.0, 3.0, 0.0, -1.5], [0.5, -2.0, 0.0, 4.0, 1.0]]),
    ("Prod of two zeros", lambda x: miniflow.Prod(x), torch.prod, [[0.0, 2.0], [-3.0, 0.0]]),
    ("Prod of one zero", lambda x: miniflow.Prod(x), torch.prod, [[0.0, 2.0], [-3.0, 0.5]]),
]


@pytest.mark.parametrize("build, torch_fn, x", [case[1:] for case in AT_ZEROS],
                         ids=[case[0] for case in AT_ZEROS])
def test_second_derivative_where_a_rule_selects_by_zeros_matches_pytorch(build, torch_fn, x,
                                                                           backend):
    _float64_backend(backend)
    for seed in range(3):
        second_order_with_torch(build, torch_fn, [np.array(x)], backend, rtol=1e-12,
                                atol=1e-14, seed=seed)


def test_hvp_of_several_nodes_broadcasts_vectors_and_differentiates_again(backend):
    # Several wrt nodes take the packed route (one product with the packed gradient):
    # a vector that broadcasts to its node's shape, an empty node, and a third order.
    _float64_backend(backend)
    rng = np.random.default_rng(5)
    A, B, C = Input(name="A"), Input(name="B"), Input(name="C")
    VA, VB, VC = Input(name="VA"), Input(name="VB"), Input(name="VC")
    f = Sum(Tanh(A * B)) * Sum(Exp(B)) + Sum(C * C) * Sum(A * A)
    a, b, c = rng.standard_normal((3, 4)), rng.standard_normal(4), np.zeros((0,))
    va, vb, vc = rng.standard_normal((3, 4)), rng.standard_normal(1), np.zeros((0,))
    products = hvp(f, [A, B, C], [VA, VB, VC])
    third = grad(Sum(products[0] * products[0]) + Sum(products[1]), [A, B])
    feed = {n: backend.asarray(v) for n, v in zip((A, B, C, VA, VB, VC), (a, b, c, va, vb, vc))}
    got = _values(backend, feed, [*products, *third])

    ta, tb, tc = (torch.tensor(v, requires_grad=True) for v in (a, b, c))
    tf = torch.tanh(ta * tb).sum() * torch.exp(tb).sum() + (tc * tc).sum() * (ta * ta).sum()
    first = torch.autograd.grad(tf, (ta, tb, tc), create_graph=True)
    inner = sum((g * torch.tensor(v).expand_as(g)).sum() for g, v in zip(first, (va, vb, vc)))
    want = list(torch.autograd.grad(inner, (ta, tb, tc), create_graph=True))
    want += torch.autograd.grad((want[0] * want[0]).sum() + want[1].sum(), (ta, tb))
    assert [g.shape for g in got] == [(3, 4), (4,), (0,), (3, 4), (4,)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_gradients_with_respect_to_inner_nodes_differentiate_again(backend):
    # wrt nodes computed inside the graph (h, s), as torch.autograd.grad(..., h) on a
    # non-leaf tensor: their HVP, and grad of grad with respect to them and to the Inputs.
    _float64_backend(backend)
    rng = np.random.default_rng(6)
    X, W, V1, V2, U = (Input(name=n) for n in ("X", "W", "V1", "V2", "U"))
    h, s = Tanh(X @ W, name="h"), miniflow.Sin(X, name="s")
    f = Sum(h * h * h) + Sum(s * s * s) * Sum(h)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    v1, v2, u = rng.standard_normal((3, 2)), rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    products = hvp(f, [h, s], [V1, V2])
    outer = grad(Sum(grad(f, h) * U), [W, X, h])
    # (Not d/dh of outer[0], d/dW: PyTorch counts there the uses of h's value inside
    # Tanh's own backward, which miniflow counts with h's inputs; the totals agree.)
    third = [*grad(Sum(outer[0] * outer[0]), [W, X]), grad(Sum(outer[2] * outer[2]), h)]
    feed = {n: backend.asarray(a) for n, a in zip((X, W, V1, V2, U), (x, w, v1, v2, u))}
    got = _values(backend, feed, [*products, *outer, *third])

    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    th, ts = torch.tanh(tx @ tw), torch.sin(tx)
    tf = (th ** 3).sum() + (ts ** 3).sum() * th.sum()
    first = torch.autograd.grad(tf, (th, ts), create_graph=True)
    inner = (first[0] * torch.tensor(v1)).sum() + (first[1] * torch.tensor(v2)).sum()
    want = list(torch.autograd.grad(inner, (th, ts), retain_graph=True))
    second = torch.autograd.grad((first[0] * torch.tensor(u)).sum(), (tw, tx, th),
                                 create_graph=True)
    want += second
    want += torch.autograd.grad((second[0] ** 2).sum(), (tw, tx), retain_graph=True)
    want += torch.autograd.grad((second[2] ** 2).sum(), (th,))
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_hvp_names_a_vector_that_does_not_fit_its_node():
    A, B, VA, VB = Input(name="A"), Input(name="B"), Input(name="VA"), Input(name="VB")
    products = hvp(Sum(A * B), [A, B], [VA, VB])
    feed = {A: np.ones((2, 3)), B: np.ones(3), VA: np.ones((3, 2)), VB: np.ones(3)}
    with pytest.raises(miniflow.ShapeError, match=r"VA.*\(3, 2\).*\(2, 3\).*'A'"):
        evaluate(products[0], feed)


# -- the lab, drawings, compile, errors, the eager path -----------------------------------

def test_the_lab_gradient_is_a_graph_and_differentiates_again():
    x, y, z = Input(name="x"), Input(name="y"), Input(name="z")
    f = x * y + x * z
    gx, gy, gz = grad(f, [x, y, z])
    feed = {x: 3.0, y: 4.0, z: -5.0}
    assert [float(evaluate(g, feed)) for g in (gx, gy, gz)] == [-1.0, 3.0, 3.0]
    assert [float(evaluate(g, feed)) for g in grad(gx, [x, y, z])] == [0.0, 1.0, 1.0]
    dot = miniflow.to_dot(gx)
    assert "d Add" in dot and "Input 'x'" in dot


def test_vjp_with_a_cotangent_and_the_executor_path_unchanged():
    x = Input(name="x")
    u = Input(name="u")
    out = Exp(x) * 2
    got = evaluate(vjp(out, x, u), {x: np.array([0.0, 1.0]), u: np.array([1.0, -1.0])})
    np.testing.assert_allclose(got, [2.0, -2 * np.e])
    # A plain value_and_grad never meets the tracing machinery.
    from miniflow import autodiff
    assert getattr(autodiff._STATE, "tracer", None) is None
    value, g = miniflow.value_and_grad(Sum(out), {x: np.array([0.0, 1.0])}, x)
    np.testing.assert_allclose(g, [2.0, 2 * np.e])


def test_a_rule_that_reads_values_is_not_twice_differentiable_and_says_which():
    class Peek(miniflow.Node):
        arity = 1

        def forward(self, ctx, x):
            return x * 2

        def backward(self, ctx, grad):
            return (grad * float(ctx.xp.sum(ctx.inputs[0])),)

    x = Input(name="x")
    g = grad(Sum(Peek(x, name="peek") * x), x)
    # Peek's rule (not its true derivative): x * sum(x) from it, plus 2x from the product.
    np.testing.assert_allclose(evaluate(g, {x: np.array([1.0, 2.0])}), [5.0, 10.0])
    with pytest.raises(NotTwiceDifferentiableError, match="Peek 'peek'"):
        evaluate(grad(Sum(g), x), {x: np.array([1.0, 2.0])})


@pytest.mark.parametrize("name", ["numpy", "jax.numpy"])
def test_a_gradient_penalty_compiles(name):
    reason = miniflow.compilable(name)
    if reason:
        pytest.skip(reason)
    if name == "jax.numpy":
        import jax
        jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(4)
    X, W, y = Input(name="X"), Input(name="W"), Input(name="y")
    loss = miniflow.CrossEntropyWithSoftmax(Tanh(X @ W), y)
    (dx,) = grad(loss, [X])
    penalized = loss + 0.5 * Sum(dx * dx)  # double backprop: d penalty / d W is second order
    feed = {X: rng.standard_normal((4, 3)), W: rng.standard_normal((3, 5)),
            y: rng.integers(0, 5, 4)}
    want_value, want_grad = miniflow.value_and_grad(penalized, feed, W)
    step = miniflow.compile(penalized, W, backend=name)
    value, got = step(feed)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got), want_grad, rtol=1e-9, atol=1e-12)


# -- a backend's fast paths stay out of recorded graphs ------------------------------

@pytest.mark.parametrize("images, kwargs", [
    # 72 rows of columns: the bias gradient takes NumPy's blocked column_sums path.
    ((2, 3, 6, 6), {"padding": 1, "bias": True}),
    ((1, 3, 6, 6), {"padding": "same", "bias": True}),
    ((2, 2, 8, 8), {"padding": 0, "bias": False, "pool": True}),  # tiled 2x2 max pooling
])
def test_second_derivative_through_the_cnn_shapes_fast_paths_serve(images, kwargs, backend):
    """Shapes large enough for NumPy's fast paths (blocked bias sums, padding, tiled
    pooling): grad of grad still records the Array-API rules and matches PyTorch."""
    _float64_backend(backend)
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal(images)
    w = rng.standard_normal((4, images[1], 3, 3)) * 0.3
    arrays = [x, w] + ([rng.standard_normal(4)] if kwargs["bias"] else [])
    pad, pool = kwargs["padding"], kwargs.get("pool", False)

    def build(*nodes):
        out = miniflow.Conv2D(nodes[0], nodes[1], nodes[2] if len(nodes) > 2 else None,
                              padding=pad)
        return miniflow.MaxPool2D(out, 2) if pool else out

    def torch_fn(*t):
        out = F.conv2d(t[0], t[1], t[2] if len(t) > 2 else None, padding=pad)
        return F.max_pool2d(out, 2) if pool else out

    second_order_with_torch(build, torch_fn, arrays, backend, rtol=1e-6, atol=1e-8)


def test_every_fast_path_a_node_looks_up_is_hidden_from_graph_recording():
    """Nodes reach a backend's optional fast paths by name (getattr(ctx.backend, ...));
    the tracing backend of gradients-as-graphs must hide each one (Backend.FAST_PATHS)."""
    import re
    from pathlib import Path

    from miniflow.autodiff import TracingBackend
    from miniflow.backends import get_backend
    from miniflow.backends.base import Backend

    source = "".join(p.read_text() for p in
                     (Path(miniflow.__file__).parent / "nodes").glob("*.py"))
    looked_up = set(re.findall(r'getattr\(ctx\.backend, "(\w+)"', source)) - {"writable_arrays"}
    assert looked_up, "the rule found no fast path to check"
    assert looked_up <= set(Backend.FAST_PATHS)
    tracing = TracingBackend(get_backend("numpy"))
    for name in Backend.FAST_PATHS:
        assert hasattr(get_backend("numpy"), name)
        assert not hasattr(tracing, name)
