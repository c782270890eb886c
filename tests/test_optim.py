"""Optimizers and learning-rate schedules, on every backend."""
import math

import numpy as np
import pytest

from miniflow import CrossEntropyWithSoftmax, Input, Linear, Mean, ShapeError, value_and_grad
from miniflow.optim import (OPTIMIZERS, SGD, Adam, ConstantLR, CosineDecay, Momentum,
                            OneCycle, OptimizerError, RMSprop, StepDecay, make_optimizer,
                            make_schedule)


# -- schedules -------------------------------------------------------------------------

def test_constant_schedule_never_changes():
    schedule = ConstantLR(0.3)
    assert [schedule(step) for step in (0, 1, 10**6)] == [0.3, 0.3, 0.3]


def test_step_decay_drops_by_gamma_every_step_size_steps():
    schedule = StepDecay(1.0, step_size=10, gamma=0.5)
    assert [schedule(step) for step in (0, 9, 10, 19, 20, 35)] == [1, 1, 0.5, 0.5, 0.25, 0.125]


def test_cosine_decay_halves_at_midpoint_and_reaches_zero():
    schedule = CosineDecay(0.1, total_steps=100)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(25) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert schedule(50) == pytest.approx(0.05)
    assert schedule(100) == pytest.approx(0.0, abs=1e-15)
    assert schedule(150) == pytest.approx(0.0, abs=1e-15)  # stays at 0 past the end
    values = [schedule(step) for step in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_make_schedule_by_name():
    assert make_schedule("constant", 0.2, 90)(89) == 0.2
    step = make_schedule("step", 1.0, 90)  # drops after each third of the run
    assert (step(29), step(30), step(60)) == pytest.approx((1.0, 0.1, 0.01))
    assert make_schedule("cosine", 1.0, 90)(45) == pytest.approx(0.5)
    with pytest.raises(OptimizerError, match="unknown schedule 'linear'.*constant, step, cosine"):
        make_schedule("linear", 0.1, 10)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_a_non_positive_or_non_numeric_lr_is_refused(lr):
    with pytest.raises(OptimizerError, match="learning rate must be a positive number"):
        SGD({Input("w"): np.zeros(2, np.float32)}, lr=lr)
    with pytest.raises(OptimizerError, match="learning rate"):
        CosineDecay(lr, 10)


def test_schedule_settings_are_checked():
    with pytest.raises(OptimizerError, match="total_steps must be a positive integer"):
        CosineDecay(0.1, 0)
    with pytest.raises(OptimizerError, match="gamma must lie in"):
        StepDecay(0.1, 10, gamma=1.5)


# -- hand-computed steps on every backend ----------------------------------------------

def _one_param(backend, value):
    node = Input("w")
    return node, {node: np.asarray(value, dtype=np.float32)}


def _grad(backend, value):
    return backend.asarray(np.asarray(value, dtype=np.float32))


def test_sgd_step(backend, to_numpy):
    node, params = _one_param(backend, [1.0, -2.0])
    opt = SGD(params, lr=0.5, backend=backend)
    opt.step([_grad(backend, [2.0, 4.0])])
    np.testing.assert_allclose(to_numpy(opt.params[node]), [0.0, -4.0])


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_first_steps(backend, to_numpy, nesterov):
    node, params = _one_param(backend, [1.0])
    opt = Momentum(params, lr=0.1, momentum=0.9, nesterov=nesterov, backend=backend)
    opt.step([_grad(backend, [1.0])])  # v = 1
    opt.step([_grad(backend, [2.0])])  # v = 0.9 * 1 + 2 = 2.9
    if nesterov:  # p -= lr * (g + mu * v)
        expected = 1.0 - 0.1 * (1 + 0.9 * 1) - 0.1 * (2 + 0.9 * 2.9)
    else:  # p -= lr * v
        expected = 1.0 - 0.1 * 1 - 0.1 * 2.9
    np.testing.assert_allclose(to_numpy(opt.params[node]), [expected], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(opt.velocity[node]), [2.9], rtol=1e-6)


def test_adam_first_steps(backend, to_numpy):
    node, params = _one_param(backend, [1.0, 1.0])
    opt = Adam(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, backend=backend)
    g1, g2 = np.array([0.5, -2.0]), np.array([1.0, 1.0])
    opt.step([_grad(backend, g1)])
    # The first step is lr * sign(g): m_hat = g and v_hat = g**2.
    np.testing.assert_allclose(to_numpy(opt.params[node]), [0.99, 1.01], rtol=1e-6)
    opt.step([_grad(backend, g2)])
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.99 * 0.01 * g1**2 + 0.01 * g2**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.99**2)
    expected = np.array([0.99, 1.01]) - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(to_numpy(opt.params[node]), expected, rtol=1e-5)


def test_schedule_sets_each_steps_rate(backend, to_numpy):
    node, params = _one_param(backend, [0.0])
    opt = SGD(params, lr=StepDecay(1.0, step_size=1, gamma=0.5), backend=backend)
    for _ in range(3):
        opt.step([_grad(backend, [1.0])])
    np.testing.assert_allclose(to_numpy(opt.params[node]), [-(1 + 0.5 + 0.25)])
    assert opt.lr == 0.125 and opt.step_count == 3


def test_state_lives_on_the_params_backend(backend):
    node, params = _one_param(backend, [1.0, 2.0])
    opt = Adam(params, backend=backend)
    opt.step({node: _grad(backend, [1.0, 1.0])})
    assert backend.owns(opt.params[node]) and backend.owns(opt.m[node])
    assert backend.owns(opt.v[node])


def test_the_callers_arrays_are_never_modified():
    node, params = _one_param(None, [1.0, 2.0])
    original = params[node].copy()
    opt = Momentum(params, lr=0.1)
    opt.step([np.ones(2, np.float32)])
    np.testing.assert_array_equal(params[node], original)
    assert opt.params[node] is not params[node]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_functional_updates_never_write_into_an_array(name):
    """Read-only arrays stand in for immutable ones (JAX): any in-place write would raise."""
    node = Input("w")
    opt = make_optimizer(name, {node: np.ones(3, np.float32)}, 0.1, weight_decay=0.01,
                         clip_norm=1.0)
    opt.in_place = False  # as on a backend whose arrays cannot be written
    for _ in range(2):
        state = [getattr(opt, slot)[node] for slot in opt.slots]
        for array in [opt.params[node], *state]:
            array.flags.writeable = False
        gradient = np.ones(3, np.float32)
        gradient.flags.writeable = False
        opt.step([gradient])
    assert (opt.params[node] < 1).all()


def _reference_steps(name, params, grads_per_step, lr, weight_decay, clip_norm):
    """Each rule as PyTorch documents it, in plain NumPy: the optimizer's expected values."""
    params = [p.copy() for p in params]
    states = [{} for _ in params]
    mu, (b1, b2), alpha, eps = 0.9, (0.9, 0.999), 0.99, 1e-8
    for t, grads in enumerate(grads_per_step, start=1):
        rate = lr(t - 1)
        if clip_norm is not None:  # torch.nn.utils.clip_grad_norm_
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * min(1.0, clip_norm / (norm + 1e-6)) for g in grads]
        for p, g, state in zip(params, grads, states):
            g = g + weight_decay * p
            if name == "sgd":
                p -= rate * g
            elif name in ("momentum", "nesterov"):
                buf = state["buf"] = mu * state["buf"] + g if "buf" in state else g.copy()
                p -= rate * (g + mu * buf if name == "nesterov" else buf)
            elif name == "adam":
                m = state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
                v = state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
                m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                p -= rate * m_hat / (np.sqrt(v_hat) + eps)
            else:
                s = state["s"] = alpha * state.get("s", 0) + (1 - alpha) * g * g
                p -= rate * g / (np.sqrt(s) + eps)
    return params


def _torch_steps(name, params, grads_per_step, lr, weight_decay, clip_norm):
    """The same run through torch.optim (float64)."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    common = dict(lr=lr(0), weight_decay=weight_decay)
    optimizer = {
        "sgd": lambda: torch.optim.SGD(tensors, **common),
        "momentum": lambda: torch.optim.SGD(tensors, momentum=0.9, **common),
        "nesterov": lambda: torch.optim.SGD(tensors, momentum=0.9, nesterov=True, **common),
        "adam": lambda: torch.optim.Adam(tensors, betas=(0.9, 0.999), eps=1e-8, **common),
        "rmsprop": lambda: torch.optim.RMSprop(tensors, alpha=0.99, eps=1e-8, **common),
    }[name]()
    for step, grads in enumerate(grads_per_step):
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.tensor(g)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(tensors, clip_norm)
        optimizer.step()
    return [tensor.detach().numpy() for tensor in tensors]


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "rmsprop"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_and_functional_updates_agree_bit_for_bit_and_match_the_reference(
        name, weight_decay, clip_norm, schedule, dtype):
    """Both paths run one rule: they must agree to the bit, on every option, and give
    the rule's documented numbers (a NumPy transcription, and torch.optim in float64)."""
    assert set(OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adam", "rmsprop"}, \
        "a new optimizer needs a reference rule here"
    rng = np.random.default_rng(3)
    nodes = (Input("w"), Input("b"))
    starts = [rng.standard_normal(shape).astype(dtype) for shape in ((4, 5), (3,))]
    kept = [start.copy() for start in starts]
    lr = make_schedule(schedule, 0.05, 6)
    in_place, functional = (make_optimizer(name, dict(zip(nodes, starts)), lr,
                                           weight_decay=weight_decay, clip_norm=clip_norm)
                            for _ in range(2))
    functional.in_place = False  # the path JAX's immutable arrays take
    assert in_place.in_place
    arrays = [in_place.params[node] for node in nodes]
    grads_per_step = [[rng.standard_normal(start.shape).astype(dtype) for start in starts]
                      for _ in range(6)]
    for grads in grads_per_step:
        in_place.step(grads)
        functional.step(grads)
        for node in nodes:
            np.testing.assert_array_equal(in_place.params[node], functional.params[node])
            assert in_place.params[node].dtype == functional.params[node].dtype == dtype
            for slot in in_place.slots:
                np.testing.assert_array_equal(getattr(in_place, slot)[node],
                                              getattr(functional, slot)[node])
    # Written in place: the same arrays throughout, and the caller's are untouched.
    assert all(in_place.params[node] is array for node, array in zip(nodes, arrays))
    for start, original in zip(starts, kept):
        np.testing.assert_array_equal(start, original)

    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-14)
    references = [_reference_steps(name, [s.astype(np.float64) for s in starts],
                                   [[g.astype(np.float64) for g in grads]
                                    for grads in grads_per_step],
                                   lr, weight_decay, clip_norm)]
    if dtype == np.float64:
        references.append(_torch_steps(name, starts, grads_per_step, lr, weight_decay,
                                       clip_norm))
    for expected in references:
        for node, value in zip(nodes, expected):
            np.testing.assert_allclose(in_place.params[node], value, rtol=rtol, atol=atol)


def test_jax_arrays_are_updated_functionally():
    pytest.importorskip("jax")
    node = Input("w")
    opt = make_optimizer("adam", {node: np.ones(3, np.float32)}, 0.1, backend="jax.numpy")
    assert not opt.in_place
    opt.step([opt.xp.ones(3)])
    assert (np.asarray(opt.params[node]) < 1).all()


# -- convergence -----------------------------------------------------------------------

def _least_squares(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    true_w, true_b = np.array([[1.5], [-2.0], [0.5]], np.float32), np.array([0.3], np.float32)
    y = x @ true_w + true_b
    X, Y, W, B = Input("x"), Input("y"), Input("w"), Input("b")
    error = Linear(X, W, B) - Y
    loss = Mean(error * error)
    params = {W: np.zeros((3, 1), np.float32), B: np.zeros(1, np.float32)}
    data = {X: backend.asarray(x), Y: backend.asarray(y)}
    return loss, params, data, (true_w, true_b)


@pytest.mark.parametrize("name, lr", [("sgd", 0.1), ("momentum", 0.05), ("nesterov", 0.05),
                                      ("adam", 0.05)])
def test_each_optimizer_solves_least_squares(backend, to_numpy, name, lr):
    loss, params, data, (true_w, true_b) = _least_squares(backend)
    opt = make_optimizer(name, params, CosineDecay(lr, 300), backend=backend)
    for _ in range(300):
        value, grads = value_and_grad(loss, {**opt.params, **data}, opt.nodes, backend=backend)
        opt.step(grads)
    W, B = opt.nodes
    np.testing.assert_allclose(to_numpy(opt.params[W]), true_w, atol=2e-2)
    np.testing.assert_allclose(to_numpy(opt.params[B]), true_b, atol=2e-2)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_each_optimizer_fits_a_logistic_regression(backend, name):
    rng = np.random.default_rng(1)
    centers = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    labels = rng.integers(0, 3, size=150)
    points = (centers[labels] + 0.5 * rng.standard_normal((150, 2))).astype(np.float32)
    X, Y, W, B = Input("x"), Input("labels"), Input("w"), Input("b")
    loss = CrossEntropyWithSoftmax(Linear(X, W, B), Y)
    params = {W: np.zeros((2, 3), np.float32), B: np.zeros(3, np.float32)}
    data = {X: backend.asarray(points), Y: backend.asarray(labels)}
    opt = make_optimizer(name, params, 0.1, backend=backend)
    first = None
    for _ in range(100):
        value, grads = value_and_grad(loss, {**opt.params, **data}, opt.nodes, backend=backend)
        first = float(value) if first is None else first
        opt.step(grads)
    assert float(value) < 0.2 < first


# -- errors ------------------------------------------------------------------------------

def test_a_gradient_of_the_wrong_shape_names_the_parameter():
    node, params = _one_param(None, np.zeros((3, 2)))
    opt = SGD(params, lr=0.1)
    with pytest.raises(ShapeError, match=r"gradient for Input 'w' has shape \(2, 3\) but the "
                                         r"parameter has shape \(3, 2\)"):
        opt.step([np.zeros((2, 3), np.float32)])


def test_gradients_must_match_the_parameters_in_number():
    node, params = _one_param(None, [1.0])
    opt = SGD(params, lr=0.1)
    with pytest.raises(OptimizerError, match="expected 1 gradients"):
        opt.step([])
    with pytest.raises(OptimizerError, match="no gradient given for Input 'w'"):
        opt.step({})


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.9)])
def test_adam_betas_must_lie_in_zero_one(betas):
    with pytest.raises(OptimizerError, match=r"betas\[\d\] must lie in \[0, 1\)"):
        Adam({Input("w"): np.zeros(1, np.float32)}, betas=betas)


@pytest.mark.parametrize("momentum", [1.0, -0.5])
def test_momentum_must_lie_in_zero_one(momentum):
    with pytest.raises(OptimizerError, match=r"momentum must lie in \[0, 1\)"):
        Momentum({Input("w"): np.zeros(1, np.float32)}, lr=0.1, momentum=momentum)


def test_unknown_optimizer_and_empty_params():
    with pytest.raises(OptimizerError, match="unknown optimizer 'adagrad'.*sgd, momentum"):
        make_optimizer("adagrad", {Input("w"): np.zeros(1)}, 0.1)
    with pytest.raises(OptimizerError, match="non-empty dict"):
        SGD({}, lr=0.1)


def test_rmsprop_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    node = Input("w")
    start = rng.standard_normal(5)
    opt = RMSprop({node: start}, lr=0.01, alpha=0.9, weight_decay=0.1)
    tensor = torch.tensor(start, requires_grad=True)
    reference = torch.optim.RMSprop([tensor], lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1)
    for _ in range(4):
        gradient = rng.standard_normal(5)
        opt.step([gradient])
        tensor.grad = torch.tensor(gradient)
        reference.step()
    np.testing.assert_allclose(opt.params[node], tensor.detach().numpy(), rtol=1e-10)


def test_one_cycle_matches_pytorch():
    torch = pytest.importorskip("torch")
    total = 50
    schedule = OneCycle(0.003, total)
    tensor = torch.zeros(1, requires_grad=True)
    sgd = torch.optim.SGD([tensor], lr=0.003)
    reference = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.003, total_steps=total,
                                                    cycle_momentum=False)
    for step in range(total):
        assert schedule(step) == pytest.approx(sgd.param_groups[0]["lr"], rel=1e-9)
        sgd.step()
        reference.step()
    assert make_schedule("onecycle", 0.003, total)(10) == schedule(10)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam", "rmsprop"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_averages_decaying_into_subnormals_are_cleared_every_flush_every_steps(
        name, dtype):
    """A gradient that stays 0 lets its running average decay into the subnormal floats
    (slow on x86): both paths set such values to 0 on every FLUSH_EVERY-th step, and
    only below the smallest normal number; the parameters still follow torch.optim."""
    from miniflow.optim import FLUSH_EVERY

    tiny = np.finfo(dtype).smallest_normal
    node = Input("w")
    start = np.linspace(-1, 1, 6).astype(dtype)
    # Entry 0 gets one gradient of 2 * tiny then zeros, so its average is subnormal
    # long before step FLUSH_EVERY; entry 1 stays normal; the rest get gradients.
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(6).astype(dtype) for _ in range(2 * FLUSH_EVERY + 3)]
    first = grads[0].copy()
    first[:2] = (2 * tiny, 1.0)
    grads[0] = first
    for g in grads[1:]:
        g[:2] = 0
    in_place, functional = (make_optimizer(name, {node: start}, 0.01) for _ in range(2))
    functional.in_place = False
    slot = in_place.slots[0]  # velocity, m, square_avg: the average of g or of g**2
    seen = []
    for step, g in enumerate(grads, start=1):
        in_place.step([g])
        functional.step([g])
        value = getattr(in_place, slot)[node]
        np.testing.assert_array_equal(value, getattr(functional, slot)[node])
        np.testing.assert_array_equal(in_place.params[node], functional.params[node])
        seen.append(value[:2].copy())
    before, at = seen[FLUSH_EVERY - 2], seen[FLUSH_EVERY - 1]
    if name != "rmsprop":  # (2 tiny)**2 underflows to 0 at once: nothing left to clear
        assert 0 < abs(before[0]) < tiny, "the test needs a subnormal average to clear"
    assert at[0] == 0 and all(s[0] == 0 for s in seen[FLUSH_EVERY - 1:])
    assert abs(at[1]) >= tiny  # a normal value is kept, however small it became
    reference = _torch_steps(name, [start.astype(np.float64)], [[g.astype(np.float64)]
                                                                 for g in grads],
                             ConstantLR(0.01), 0.0, None)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(in_place.params[node], reference[0], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", ["momentum", "adam", "rmsprop"])
def test_subnormal_averages_are_cleared_on_every_backend(backend, to_numpy, name):
    """The clearing runs through the backend's own arrays (a boolean mask written in
    place, or a where): the same numbers as NumPy's on every backend."""
    from miniflow.optim import FLUSH_EVERY

    tiny = float(np.finfo(np.float32).smallest_normal)
    grads = [np.array([2 * tiny, 1.0, 0.5], np.float32)]
    grads += [np.array([0.0, 0.0, 0.25], np.float32)] * (FLUSH_EVERY + 2)
    node, params = _one_param(backend, [1.0, -1.0, 0.5])
    here = make_optimizer(name, params, 0.01, backend=backend)
    reference = make_optimizer(name, params, 0.01)  # NumPy
    for step, g in enumerate(grads, start=1):
        here.step([_grad(backend, g)])
        reference.step([g])
        slot = here.slots[0]
        # XLA on the CPU flushes subnormal results itself (JAX's averages are 0 at
        # once): values may differ below the smallest normal number, nowhere else.
        np.testing.assert_allclose(to_numpy(getattr(here, slot)[node]),
                                   getattr(reference, slot)[node], rtol=1e-6, atol=tiny)
        np.testing.assert_allclose(to_numpy(here.params[node]), reference.params[node],
                                   rtol=1e-6)
    assert to_numpy(getattr(here, here.slots[0])[node])[0] == 0
