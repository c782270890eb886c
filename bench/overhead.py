"""Engine overhead: what miniflow costs per node per step beyond the array math itself.

Two measurements on the numpy backend, each beside the same array operations
run by hand in a plain loop (interleaved, same process), so that the
difference is the engine's own time:

1. A tiny training step (784-8-10 relu MLP, batch 8): miniflow against the
   hand-written NumPy step; the gap divided by the graph's nodes.
2. Chains of 10 to 10,000 alternating Add / Mul nodes on 8-element vectors,
   differentiated with respect to the chain's input. The time per node must
   not grow with the chain: the marginal cost per node between sizes is
   reported and growth is flagged. The first call (which builds and caches
   the plan) is timed separately.

  python bench/overhead.py
  python bench/overhead.py --quick
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SIZES = [10, 100, 1000, 10000]
QUICK_SIZES = [10, 100]
TARGET_US_PER_NODE = 3.0
# The marginal cost per node creeps up ~20% from 1,000 to 10,000 nodes because the
# values and contexts of a long chain outgrow the CPU caches; an algorithmic flaw
# (a quadratic lookup) would multiply it. Past this factor over the 10 -> 100
# interval, call it growth.
GROWTH_FLAG = 1.5
WIDTH = 8


def tiny_step(args) -> dict:
    """Engine vs hand-written step at H=8, B=8: the array math is negligible there."""
    hidden, batch = 8, 8
    params = c.init_params(hidden)
    x, y = c.synthetic_data(batch)
    graph = c.build_mlp(hidden, "relu")
    hand = c.HandwrittenMLP(np, params, "relu")
    engine = c.MiniflowMLP("numpy", graph, params)
    samples = c.interleaved([c.Contender("hand", lambda: hand.step(x, y)),
                             c.Contender("miniflow", lambda: engine.step(x, y))],
                            rounds=args.rounds, block_s=args.block, warmup_s=args.warmup,
                            **c.timing_options(args))
    from miniflow.graph import Plan

    plan = Plan.for_(graph.loss, graph.params)
    nodes = len(plan.nodes)
    ops = sum(1 for n in plan.nodes if n.inputs)
    hand_us = samples["hand"].summary()["median_s"] * 1e6
    engine_us = samples["miniflow"].summary()["median_s"] * 1e6
    return {"hidden": hidden, "batch": batch, "nodes": nodes, "op_nodes": ops,
            "hand_us": hand_us, "miniflow_us": engine_us,
            "overhead_us": engine_us - hand_us,
            "overhead_us_per_node": (engine_us - hand_us) / nodes,
            "overhead_us_per_op_node": (engine_us - hand_us) / ops,
            "hand": samples["hand"].summary(), "miniflow": samples["miniflow"].summary()}


def build_chain(length: int):
    """x -> (+a) -> (*b) -> (+a) ... -> Sum: ``length`` Add/Mul nodes and one Sum."""
    from miniflow import Add, Input, Mul, Sum

    x, a, b = Input("x"), Input("a"), Input("b")
    y = x
    for i in range(length):
        y = Add(y, a) if i % 2 == 0 else Mul(y, b)
    return x, a, b, Sum(y)


def chain(length: int, args) -> dict:
    from miniflow import value_and_grad
    from miniflow.graph import Plan

    rng = np.random.default_rng(0)
    xv, av = (rng.standard_normal(WIDTH, dtype=np.float32) for _ in range(2))
    bv = np.full(WIDTH, 1.0, np.float32)  # keeps 10,000 products finite
    x, a, b, out = build_chain(length)
    feed = {x: xv, a: av, b: bv}

    start = time.perf_counter()
    value_and_grad(out, feed, x)
    first_s = time.perf_counter() - start
    nodes = len(Plan.for_(out, (x,)).nodes)

    def by_hand():
        # The same array operations the engine runs: forward, then the gradients
        # with respect to the chain's input only (Add passes grad on; Mul scales it).
        y = xv
        for i in range(length):
            y = y + av if i % 2 == 0 else y * bv
        np.sum(y)
        grad = np.ones_like(y)
        for i in reversed(range(length)):
            if i % 2:
                grad = grad * bv
        return grad

    samples = c.interleaved([c.Contender("hand", by_hand),
                             c.Contender("miniflow", lambda: value_and_grad(out, feed, x))],
                            rounds=args.rounds, block_s=args.block, warmup_s=args.warmup,
                            min_calls=2, **c.timing_options(args))
    hand_us = samples["hand"].summary()["median_s"] * 1e6
    engine_us = samples["miniflow"].summary()["median_s"] * 1e6
    return {"length": length, "nodes": nodes, "first_call_us_per_node": first_s * 1e6 / nodes,
            "hand_us": hand_us, "miniflow_us": engine_us,
            "miniflow_us_per_node": engine_us / nodes, "hand_us_per_node": hand_us / nodes,
            "overhead_us_per_node": (engine_us - hand_us) / nodes,
            "hand": samples["hand"].summary(), "miniflow": samples["miniflow"].summary()}


def add_marginals(rows: list[dict]) -> list[str]:
    """Cost per extra node between successive sizes; linear means constant. Return warnings."""
    warnings = []
    for prev, row in zip(rows, rows[1:]):
        extra = row["nodes"] - prev["nodes"]
        row["marginal_us_per_node"] = (row["miniflow_us"] - prev["miniflow_us"]) / extra
    if len(rows) > 2:
        base = rows[1]["marginal_us_per_node"]
        for row in rows[2:]:
            if row["marginal_us_per_node"] > GROWTH_FLAG * base:
                warnings.append(f"NON-LINEAR: {row['marginal_us_per_node']:.2f} us per node added "
                                f"up to {row['length']} nodes vs {base:.2f} up to "
                                f"{rows[1]['length']}")
    return warnings


CHAIN_COLUMNS = [("length", "Add/Mul nodes", "d"), ("miniflow_us", "miniflow us", ".0f"),
                 ("hand_us", "by hand us", ".0f"), ("miniflow_us_per_node", "us/node", ".2f"),
                 ("marginal_us_per_node", "marginal us/node", ".2f"),
                 ("overhead_us_per_node", "overhead us/node", ".2f"),
                 ("first_call_us_per_node", "1st call us/node", ".2f")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "overhead")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                   help="chain lengths (default: " + ",".join(map(str, SIZES)) + ")")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 10; quick 2)")
    p.add_argument("--block", type=float, help="seconds per contender per round (default 0.1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per contender (default 0.3)")
    args = p.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.block = args.block or (0.02 if args.quick else 0.1)
    args.warmup = args.warmup or (0.02 if args.quick else 0.3)
    if args.quick:
        args.pause = min(args.pause, 0.02)

    tiny = tiny_step(args)
    print(f"\ntiny step (784-8-10 relu, batch 8): miniflow {tiny['miniflow_us']:.1f} us, "
          f"hand-written {tiny['hand_us']:.1f} us, overhead {tiny['overhead_us']:.1f} us = "
          f"{tiny['overhead_us_per_node']:.2f} us per node ({tiny['nodes']} nodes), "
          f"{tiny['overhead_us_per_op_node']:.2f} us per op node ({tiny['op_nodes']})")

    rows = [chain(n, args) for n in (args.sizes or (QUICK_SIZES if args.quick else SIZES))]
    warnings = add_marginals(rows)
    print(f"\nAdd/Mul chains on {WIDTH}-element float32 vectors, forward + backward (medians)")
    print(c.table(rows, CHAIN_COLUMNS))
    for w in warnings:
        print(w)
    machine = c.machine_info(malloc, args.blas_threads)
    print("\n" + c.describe(machine))
    measured = [(f"chain of {r['length']}", r["overhead_us_per_node"])
                for r in rows if r["length"] >= 100]
    measured.append(("tiny step", tiny["overhead_us_per_node"]))
    checks = [{"check": f"overhead per node, {what}", "value": value, "unit": " us",
               "target": f"<= {TARGET_US_PER_NODE}", "met": value <= TARGET_US_PER_NODE}
              for what, value in measured]
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "overhead", "machine": machine, "quick": args.quick,
                             "settings": {**c.timing_options(args), "rounds": args.rounds,
                                          "block_s": args.block, "width": WIDTH},
                             "tiny_step": tiny, "chains": rows, "linearity_warnings": warnings,
                             "targets": checks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
