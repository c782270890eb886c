"""The per-node profile: times that add up, shares, the table, per-node synchronisation."""
import numpy as np
import pytest

from miniflow import Constant, CrossEntropyWithSoftmax, Input, Linear, Mul, ReLU, Sum
from miniflow.backends.numpy_backend import NumpyBackend
from miniflow.graph import Plan
from miniflow.profile import NodeTime, Profile, profile


def mlp(sizes, batch, seed=0):
    """A two-layer classifier, its parameters, and a NumPy feed for it."""
    x, labels = Input("images"), Input("labels")
    w1, b1, w2, b2 = (Input(name) for name in ("fc1.w", "fc1.b", "fc2.w", "fc2.b"))
    fc1 = Linear(x, w1, b1, name="fc1")
    loss = CrossEntropyWithSoftmax(Linear(ReLU(fc1), w2, b2, name="fc2"), labels, name="loss")
    rng = np.random.default_rng(seed)
    feed = {x: rng.random((batch, sizes[0]), dtype=np.float32),
            labels: rng.integers(0, sizes[2], batch),
            w1: (rng.standard_normal(sizes[:2]) * 0.05).astype(np.float32),
            b1: np.zeros(sizes[1], np.float32),
            w2: (rng.standard_normal(sizes[1:]) * 0.05).astype(np.float32),
            b2: np.zeros(sizes[2], np.float32)}
    return loss, fc1, [w1, b1, w2, b2], feed


def test_node_times_account_for_the_nodes_that_ran():
    # How close the nodes' sum comes to the measured step, and which node is the
    # slowest, depend on the machine's load: bench/claims.py reports them.
    loss, _, params, feed = mlp((784, 256, 10), batch=128)
    prof = profile(loss, feed, wrt=params, repeat=5)
    plan = Plan.for_(loss, tuple(params))
    assert {row.node for row in prof.rows} == {n for n in plan.nodes if type(n) is not Input}
    assert all(row.forward_ms >= 0 and row.backward_ms >= 0 for row in prof.rows)
    assert prof.step_ms > 0 and prof.hooked_step_ms > 0
    totals = [row.total_ms for row in prof.rows]
    assert prof.nodes_ms == pytest.approx(sum(totals))
    assert sum(row.share for row in prof.rows) == pytest.approx(1.0)
    assert [row.share for row in prof.rows] == pytest.approx([t / sum(totals) for t in totals])
    assert totals == sorted(totals, reverse=True)
    assert prof.overhead_ms == pytest.approx(max(0.0, prof.hooked_step_ms - prof.step_ms))


def test_every_node_that_runs_a_rule_has_a_row(backend):
    loss, _, params, feed = mlp((6, 4, 3), batch=5)
    fed = {node: backend.asarray(value) for node, value in feed.items()}
    prof = profile(loss, fed, wrt=params[2:], repeat=2, warmup=1)  # only fc2's parameters
    assert prof.backend == backend.name
    plan = Plan.for_(loss, tuple(params[2:]))
    ops = [node for node in plan.nodes if type(node) is not Input]
    assert {row.node for row in prof.rows} == set(ops)
    shapes = {row.node.name: row.shape for row in prof.rows}
    assert shapes["fc1"] == (5, 4) and shapes["fc2"] == (5, 3) and shapes["loss"] == ()
    with_backward = {plan.nodes[step.index] for step in plan.backward_steps}
    for row in prof.rows:
        assert row.forward_ms > 0
        assert (row.backward_ms > 0) == (row.node in with_backward)  # fc1 is not differentiated
        assert prof.get(row.node) is row
    assert prof.get(params[0]) is None  # fed Inputs run no rule


def test_forward_only_profile_of_a_non_scalar_output():
    x = Input("x")
    two = Constant(np.full((1,), 2.0, np.float32), name="two")
    out = Mul(ReLU(x), two) * 0.5
    prof = profile(out, {x: np.ones((3, 4), np.float32)}, wrt=(), repeat=2, warmup=0)
    # The array constant runs its rule; the number 0.5 is weak: its consumer converts it.
    assert len(prof.rows) == 4 and all(row.backward_ms == 0 for row in prof.rows)
    assert prof.get(out).shape == (3, 4) and prof.get(two).shape == (1,)
    assert prof.get(out.inputs[1]) is None


class CountingBackend(NumpyBackend):
    """NumPy, counting the calls the profiler makes to wait for the device."""

    def __init__(self):
        super().__init__()
        self.synchronized = 0

    def synchronize(self, *arrays):
        self.synchronized += 1


def test_the_backend_is_synchronized_around_every_rule():
    loss, _, params, feed = mlp((6, 4, 3), batch=5)
    counting = CountingBackend()
    profile(loss, feed, wrt=params, backend=counting, repeat=3, warmup=1)
    plan = Plan.for_(loss, tuple(params))
    rules = len(plan.forward_steps) + len(plan.backward_steps)
    # Per step: a plain run and a timed run, each finished with one wait; the timed
    # run also waits before and after every rule.
    assert counting.synchronized == (1 + 3) * (2 + 2 * rules)


def test_table_lists_nodes_slowest_first_with_their_times():
    loss, _, params, feed = mlp((32, 16, 4), batch=8)
    prof = profile(loss, feed, wrt=params, repeat=3, warmup=1)
    table = prof.table()
    assert str(prof) == table and isinstance(prof, Profile)
    lines = table.splitlines()
    assert lines[0].startswith("Profile of CrossEntropyWithSoftmax 'loss' on numpy: median of 3")
    assert lines[1].split() == ["node", "shape", "fwd", "ms", "bwd", "ms", "share"]
    for row, line in zip(prof.rows, lines[3:]):
        assert line.startswith(row.node.label)
        assert f"{row.forward_ms:8.3f}  {row.backward_ms:8.3f}  {row.share:6.1%}" in line
        assert str(row.shape) in line
    assert "100.0%" in lines[3 + len(prof.rows) + 1]
    assert f"measured step without the hook: {prof.step_ms:.3f} ms" in table
    assert (f"hook overhead: {prof.overhead_ms:.3f} ms per step" in table
            or prof.overhead_ms == 0 and "hook overhead: too small to measure" in table)


def noisy_profile(step_ms, hooked_step_ms, forward_ms=(0.3, 0.2)):
    """A Profile as noise can leave it: figures set by hand, not measured."""
    a, b = Input("a"), Input("b")
    rows = [NodeTime(node=node, shape=(2, 3), forward_ms=ms, backward_ms=0.0,
                     share=ms / sum(forward_ms)) for node, ms in zip((a, b), forward_ms)]
    return Profile(output=b, backend="numpy", rows=rows, step_ms=step_ms,
                   hooked_step_ms=hooked_step_ms, repeat=5, warmup=1)


def test_noise_never_shows_a_negative_overhead_or_more_than_all_of_the_step():
    prof = noisy_profile(step_ms=0.4, hooked_step_ms=0.35)  # hooked steps "faster"
    assert prof.overhead_ms == 0.0
    table = prof.table()
    assert "-0." not in table and "hook overhead: too small to measure" in table
    assert "the nodes account for all of it (within noise)" in table  # 0.5 ms of 0.4
    prof = noisy_profile(step_ms=1.0, hooked_step_ms=1.25)
    assert "hook overhead: 0.250 ms per step" in prof.table()
    assert "the nodes account for 50.0% of it" in prof.table()


def test_jupyter_shows_a_table_and_the_repr_is_one_line():
    loss, _, params, feed = mlp((32, 16, 4), batch=8)
    prof = profile(loss, feed, wrt=params, repeat=2, warmup=0)
    text = repr(prof)
    assert "\n" not in text and len(text) < 200 and "loss" in text, text
    page = prof._repr_html_()
    assert page.startswith("<table>") and page.count("<tr>") == len(prof.rows) + 1
    for row in prof.rows:
        assert f"<td style='text-align:left'>{row.node.label}</td>" in page.replace(
            "&#x27;", "'")
        assert f"{row.share:.1%}" in page


def test_repeat_must_be_positive():
    x = Input("x")
    with pytest.raises(ValueError, match="repeat >= 1"):
        profile(Sum(x), {x: [1.0]}, wrt=x, repeat=0)
