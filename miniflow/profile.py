"""Where the time of a step goes: forward and backward time of every node.

>>> prof = profile(model.loss, feed_dict, wrt=list(model.params))   # doctest: +SKIP
>>> print(prof)                                                     # doctest: +SKIP
>>> miniflow.viz.draw(model.loss, "hot.svg", profile=prof)          # doctest: +SKIP
"""
from __future__ import annotations

import html
import statistics
import time
from dataclasses import dataclass, field

from .executor import Hook, run
from .graph import Node

__all__ = ["profile", "Profile", "NodeTime"]


@dataclass(frozen=True)
class NodeTime:
    """The time of one node's rules per step (the median over the measured steps).

    Attributes
    ----------
    node : Node
        The node timed.
    shape : tuple of int
        The shape of the node's value.
    forward_ms, backward_ms : float
        Milliseconds per step in its forward and backward rule (0 when the
        step needed no backward rule of it).
    share : float
        Its fraction of the time of all nodes together (the shares sum to 1).
    """

    node: Node
    shape: tuple[int, ...]
    forward_ms: float
    backward_ms: float
    share: float

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass(repr=False)
class Profile:
    """Per-node times of a graph's steps, with the whole step's time to compare them to.

    Attributes
    ----------
    output : Node
        The node the steps computed.
    backend : str
        The backend they ran on.
    rows : list of NodeTime
        One per node that runs a rule (fed Inputs do not), slowest first.
    step_ms : float
        Wall time of a whole step measured without the timing hook (median
        over steps): the figure the per-node times should add up to, less what
        runs between nodes (feeding, summing gradients).
    hooked_step_ms : float
        Wall time of a whole step with the timing hook (median over steps).
    repeat, warmup : int
        Steps measured, and steps run before measuring.
    """

    output: Node
    backend: str
    rows: list[NodeTime]
    step_ms: float
    hooked_step_ms: float
    repeat: int
    warmup: int
    _by_node: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._by_node = {row.node: row for row in self.rows}

    def get(self, node: Node) -> NodeTime | None:
        """The times of ``node``, or None if it ran no rule (a fed Input, another graph)."""
        return self._by_node.get(node)

    @property
    def nodes_ms(self) -> float:
        """The per-node times added up, per step."""
        return sum(row.total_ms for row in self.rows)

    @property
    def overhead_ms(self) -> float:
        """What the timing hook itself costs per step (and per-node syncs, on a GPU).

        Never negative: where noise makes the hooked steps look faster than the
        plain ones, the hook cost too little to measure, and this is 0.
        """
        return max(0.0, self.hooked_step_ms - self.step_ms)

    def _summary_lines(self) -> list[str]:
        """The step time, what the nodes account for, and the hook's cost, as sentences."""
        covered = self.nodes_ms / self.step_ms if self.step_ms > 0 else 1.0
        # Noise can make the hooked per-node sum exceed the plain step; that means "all".
        coverage = ("all of it (within noise)" if covered >= 1
                    else f"{covered:.1%} of it; the rest runs between nodes")
        overhead = (f"{self.overhead_ms:.3f} ms per step" if self.overhead_ms > 0
                    else "too small to measure")
        return [f"measured step without the hook: {self.step_ms:.3f} ms; the nodes account "
                f"for {coverage}",
                f"hook overhead: {overhead} ({self.hooked_step_ms:.3f} ms per step with the "
                f"hook)"]

    def table(self) -> str:
        """The profile as a text table, slowest node first."""
        width = max([len("node"), *(len(row.node.label) for row in self.rows)])
        shapes = [str(row.shape) for row in self.rows]
        shape_width = max([len("shape"), *map(len, shapes)])
        header = (f"{'node':<{width}}  {'shape':<{shape_width}}  "
                  f"{'fwd ms':>8}  {'bwd ms':>8}  {'share':>6}")
        lines = [f"Profile of {self.output.label} on {self.backend}: median of {self.repeat} "
                 f"steps after {self.warmup} warm-up steps", header, "-" * len(header)]
        for row, shape in zip(self.rows, shapes):
            lines.append(f"{row.node.label:<{width}}  {shape:<{shape_width}}  "
                         f"{row.forward_ms:8.3f}  {row.backward_ms:8.3f}  {row.share:6.1%}")
        forward = sum(row.forward_ms for row in self.rows)
        backward = sum(row.backward_ms for row in self.rows)
        lines += [
            "-" * len(header),
            f"{'all nodes':<{width}}  {'':<{shape_width}}  {forward:8.3f}  {backward:8.3f}  "
            f"{1:6.1%}",
            *self._summary_lines(),
        ]
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (f"<Profile of {self.output.label} on {self.backend}: {len(self.rows)} nodes, "
                f"step {self.step_ms:.3f} ms; print() it for the table>")

    def _repr_html_(self) -> str:
        """The table, for Jupyter: one row per node, slowest first, with a bar for its share."""
        escape = html.escape
        rows = "".join(
            f"<tr><td style='text-align:left'>{escape(row.node.label)}</td>"
            f"<td style='text-align:left'>{escape(str(row.shape))}</td>"
            f"<td>{row.forward_ms:.3f}</td><td>{row.backward_ms:.3f}</td>"
            f"<td style='text-align:left'><span style='display:inline-block;height:0.8em;"
            f"width:{100 * row.share:.0f}px;background:#fb6a4a'></span> {row.share:.1%}</td>"
            f"</tr>" for row in self.rows)
        caption = (f"Profile of {escape(self.output.label)} on {escape(self.backend)}: median "
                   f"of {self.repeat} steps after {self.warmup} warm-up steps")
        notes = "<br>".join(escape(line) for line in self._summary_lines())
        return (f"<table><caption>{caption}</caption><thead><tr><th>node</th><th>shape</th>"
                f"<th>fwd ms</th><th>bwd ms</th><th>share</th></tr></thead>"
                f"<tbody>{rows}</tbody></table><p>{notes}</p>")


def profile(node: Node, feed_dict: dict, wrt, backend=None, repeat: int = 20,
            warmup: int = 2) -> Profile:
    """Time every node's forward and backward rule over ``repeat`` steps.

    A step is what :func:`miniflow.value_and_grad` does: forward, then backward
    for ``wrt``. Each measured step is run twice, once with a timer around every
    node's rule (the per-node figures) and once without (the step's true wall
    time), alternating so that both see the same machine conditions. Every
    figure is a median over the steps, so a step the operating system
    interrupts does not skew it.

    On a GPU the work is queued, so the timer synchronises the backend before
    and after every node's rule: the per-node figures are honest, but the
    hooked steps run slower than real ones (see ``Profile.overhead_ms``).
    JAX can only wait for given arrays, so on JAX the per-node figures are
    dispatch times.

    Parameters
    ----------
    node : Node
        The output.
    feed_dict : dict
        ``{Input: value}``, as for :func:`miniflow.value_and_grad`.
    wrt : Node or sequence of Node
        What the backward pass differentiates with respect to; ``()`` times
        the forward pass only.
    backend : str, module, Backend or None
        Where to run; None infers it from the fed arrays.
    repeat : int
        Steps measured (each once with, once without the timer).
    warmup : int
        Steps run first and not measured (caches, lazy initialisation).

    Returns
    -------
    Profile
        Print it for a table; pass it to :func:`miniflow.viz.draw` to colour
        the drawing by time.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, "
                         f"warmup={warmup}")
    wrt = (wrt,) if isinstance(wrt, Node) else tuple(wrt)

    def step(timer=None):
        """One run, forward and backward, finished on the device; return its backend."""
        result = run(node, feed_dict, wrt, backend=backend, hooks=timer)
        result.backend.synchronize(result.value, *result.grads)
        return result.backend

    for _ in range(warmup):
        step()
        step(_NodeTimer())

    plain_ns, hooked_ns, timers = [], [], []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        step()
        plain_ns.append(time.perf_counter_ns() - start)
        timers.append(_NodeTimer())
        start = time.perf_counter_ns()
        chosen = step(timers[-1])
        hooked_ns.append(time.perf_counter_ns() - start)

    return Profile(output=node, backend=chosen.name, rows=_rows(timers),
                   step_ms=_ms(plain_ns), hooked_step_ms=_ms(hooked_ns),
                   repeat=repeat, warmup=warmup)


class _NodeTimer(Hook):
    """A run hook that records the time of each node's rules in one step."""

    def __init__(self):
        self.forward_ns: dict[Node, int] = {}
        self.backward_ns: dict[Node, int] = {}
        self.shapes: dict[Node, tuple] = {}
        self._start = 0

    def _begin(self, ctx):
        ctx.backend.synchronize()  # don't charge this node for work queued before it
        self._start = time.perf_counter_ns()

    def _end(self, ctx, totals, node):
        ctx.backend.synchronize()
        totals[node] = totals.get(node, 0) + time.perf_counter_ns() - self._start

    def forward_pre(self, node, ctx):
        self._begin(ctx)

    def forward_post(self, node, ctx, value):
        self._end(ctx, self.forward_ns, node)
        self.shapes[node] = tuple(value.shape)

    def backward_pre(self, node, ctx, grad):
        self._begin(ctx)

    def backward_post(self, node, ctx, input_grads):
        self._end(ctx, self.backward_ns, node)


def _ms(nanoseconds) -> float:
    return statistics.median(nanoseconds) / 1e6


def _rows(timers: list[_NodeTimer]) -> list[NodeTime]:
    """One row per node that ran a rule, slowest first."""
    ran = list(timers[-1].forward_ns)
    forward = {n: _ms([t.forward_ns[n] for t in timers]) for n in ran}
    backward = {n: _ms([t.backward_ns.get(n, 0) for t in timers]) for n in ran}
    total = sum(forward.values()) + sum(backward.values()) or 1.0
    rows = [NodeTime(node=n, shape=timers[-1].shapes[n], forward_ms=forward[n],
                     backward_ms=backward[n], share=(forward[n] + backward[n]) / total)
            for n in ran]
    return sorted(rows, key=lambda row: row.total_ms, reverse=True)
