"""Epoch benchmark: 60,000 MNIST-sized rows at batch 128, per backend and peer.

Every contender runs the same loop: a fresh permutation per epoch from its own
seeded generator, rows gathered batch by batch (the last batch has 96 rows),
one training step per batch (see step.py for the contenders, compiled ones
included: their warm-up epoch compiles both batch sizes). The data sit on
the contender's device from the start; only the permutation is made on the
host. Each timed block is one whole epoch; blocks are interleaved.

  python bench/epoch.py                      # ~2 minutes
  python bench/epoch.py --quick
  python bench/epoch.py --only miniflow:numpy,torch --activations relu
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# The miniflow of the checkout this script is in, not whichever one is installed:
# a script's own folder, not the working directory, heads sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from step import REFERENCE  # noqa: E402

ROWS, QUICK_ROWS = 60_000, 2_000  # both end in a short batch, as MNIST's 60,000 does
TARGETS = {"miniflow:numpy": 1.10, "miniflow:numpy+plan": 0.90}


class Epoch:
    """One pass over the data in shuffled batches; ``take`` gathers rows on the device."""

    def __init__(self, step, x, y, batch, take, to_device=lambda a: a, seed=0):
        self.step, self.x, self.y, self.batch = step, x, y, batch
        self.take, self.to_device = take, to_device
        self.rng = np.random.default_rng(seed)

    def __call__(self):
        rows = self.y.shape[0]
        order = self.to_device(self.rng.permutation(rows))
        for start in range(0, rows, self.batch):
            batch = order[start:min(start + self.batch, rows)]  # the standard forbids overshoot
            self.step(self.take(self.x, batch), self.take(self.y, batch))


def _np_take(a, rows):
    return a[rows]


def make_contenders(hidden, batch, activation, x, y, wanted=lambda name: True):
    params = c.init_params(hidden)
    graph = c.build_mlp(hidden, activation)
    hand = c.HandwrittenMLP(np, params, activation)
    found = [c.Contender(REFERENCE, Epoch(hand.step, x, y, batch, _np_take))]
    for name in c.miniflow_backends(wanted):
        model = c.MiniflowMLP(name, graph, params)
        backend, xp = model.backend, model.backend.xp
        if name == "numpy":  # exactly the reference's loop
            run = Epoch(model.step, x, y, batch, _np_take)
        else:
            run = Epoch(model.step, backend.asarray(x), backend.asarray(y), batch,
                        lambda a, rows, xp=xp: xp.take(a, rows, axis=0), backend.asarray)
        found.append(c.Contender(f"miniflow:{model.name}", run,
                                 lambda m=model: m.backend.synchronize(*m.params)))
    for name in c.compiled_backends(wanted):
        model = c.CompiledMLP(name, graph, params)
        backend, xp = model.backend, model.backend.xp
        if name == "numpy":
            run = Epoch(model.step, x, y, batch, _np_take)
        else:
            run = Epoch(model.step, backend.asarray(x), backend.asarray(y), batch,
                        lambda a, rows, xp=xp: xp.take(a, rows, axis=0), backend.asarray)
        found.append(c.Contender(f"miniflow:{model.name}", run,
                                 lambda m=model: m.backend.synchronize(*m.params)))
    if wanted("hand:cupy") and c.gpu_name():
        import cupy

        gpu_hand = c.HandwrittenMLP(cupy, params, activation)
        found.append(c.Contender("hand:cupy", Epoch(gpu_hand.step, cupy.asarray(x),
                                                    cupy.asarray(y), batch, _np_take,
                                                    cupy.asarray),
                                 cupy.cuda.get_current_stream().synchronize))
    for device in c.torch_devices(wanted):
        model = c.TorchMLP(device, hidden, activation, params)
        found.append(c.Contender(f"torch:{device}", Epoch(
            model.step, model.asarray(x), model.asarray(y), batch, _np_take, model.asarray),
            model.sync))
    if wanted("jax:jit") and c.importable("jax"):
        model = c.JaxMLP(activation, params)
        found.append(c.Contender("jax:jit", Epoch(
            model.step, model.asarray(x), model.asarray(y), batch,
            lambda a, rows: a.take(rows, axis=0), model.asarray), model.sync))
    return found


COLUMNS = [("contender", "contender", ""), ("median_s", "median s", ".3f"),
           ("min_s", "min s", ".3f"), ("ratio_paired", "x hand (paired)", ".2f"),
           ("ratio_median", "x hand (med)", ".2f"),
           ("ratio_min", "x hand (min)", ".2f"), ("ms_per_step", "ms/step", ".3f"),
           ("faults_per_call", "faults/epoch", ".0f"), ("n", "epochs", "d")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "epoch")
    p.add_argument("--hidden", type=int, default=256, help="hidden units (default: %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="rows per step (default: %(default)s)")
    p.add_argument("--rows", type=int, help=f"rows per epoch (default {ROWS}; quick {QUICK_ROWS})")
    p.add_argument("--activations", default="sigmoid,relu", help="default: %(default)s")
    p.add_argument("--only", type=lambda s: s.split(","), metavar="PREFIX,...",
                   help="contenders whose name starts with these (hand:numpy always runs)")
    p.add_argument("--rounds", type=int, help="timed epochs per contender (default 5; quick 1)")
    args = p.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    rows_count = args.rows or (QUICK_ROWS if args.quick else ROWS)
    rounds = args.rounds or (1 if args.quick else 5)
    x, y = c.synthetic_data(rows_count)
    steps = -(-rows_count // args.batch)

    rows = []
    for activation in args.activations.split(","):
        contenders = make_contenders(args.hidden, args.batch, activation, x, y,
                                     c.wanted_by(args.only, REFERENCE, args.quick))
        # One warm-up epoch each, then one epoch per timed block.
        samples = c.interleaved(contenders, rounds=rounds, block_s=0, warmup_s=0, min_calls=1,
                                **c.timing_options(args))
        ref = samples[REFERENCE].summary()
        found = []
        for name, s in samples.items():
            summary = s.summary()
            found.append({"hidden": args.hidden, "batch": args.batch, "rows": rows_count,
                          "activation": activation, "contender": name, **summary,
                          "ms_per_step": summary["median_s"] * 1e3 / steps,
                          "ratio_paired": c.paired_ratio(s, samples[REFERENCE]),
                          "ratio_median": summary["median_s"] / ref["median_s"],
                          "ratio_min": summary["min_s"] / ref["min_s"]})
        print(f"\nepoch of {rows_count} rows, 784-{args.hidden}-10 {activation}, "
              f"batch {args.batch} ({steps} steps)")
        print(c.table(found, COLUMNS))
        rows += found
    machine = c.machine_info(malloc, args.blas_threads)
    checks = [{"check": f"{r['contender']} / hand:numpy epoch, {r['activation']}",
               "value": r["ratio_paired"], "target": f"<= {TARGETS[r['contender']]:.2f}",
               "met": r["ratio_paired"] <= TARGETS[r["contender"]]}
              for r in rows if r["contender"] in TARGETS]
    print("\n" + c.describe(machine))
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "epoch", "machine": machine, "quick": args.quick,
                             "settings": {**c.timing_options(args), "rounds": rounds,
                                          "rows": rows_count, "batch": args.batch,
                                          "hidden": args.hidden, "lr": c.LEARNING_RATE},
                             "targets": checks, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
