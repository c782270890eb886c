"""Data-parallel training steps on a Dask LocalCluster, against single-process NumPy.

(Named cluster.py, not distributed.py: bench/ is put on sys.path by the scripts
and the tests, where a distributed.py would shadow the distributed package.)

One step is what ``train(..., client=...)`` does per batch: draw a random
batch of row indices, compute the loss and gradients over the batch's shards
on the workers (NumPy backend per shard), add them with one Dask task, and
have every worker's replica apply the SGD update from that total (the workers
keep the parameters and the optimizer's state: only row indices go out, only
the loss comes back). Contenders, timed in interleaved rounds from this process:

  numpy          the same step in this process, BLAS limited to one thread: the reference
  futures:1      miniflow.distributed on a LocalCluster of 1 worker process (1 thread,
                 1 BLAS thread)
  futures:2      the same on 2 workers
  dask.array:2   the alternative design: the dask.array backend on the 2-worker cluster,
                 the data persisted there in 2 chunks along the batch axis; each step
                 builds the lazy graph, computes loss and gradients, and brings the
                 parameters back as NumPy arrays (otherwise they stay lazy)

Two sizes: a small step (784-256-10, batch 128) measures the per-step
overhead (target: futures:1 at most 25 ms slower than numpy); a large one
(784-2048-10, batch 8192) measures scaling (target: futures:2 at least 1.6x
the throughput of futures:1). Each worker gets a core only if the machine has
them free: the JSON records the load average before and after, and the
number of cores.

  python bench/cluster.py            # ~3 minutes on a quiet machine
  python bench/cluster.py --quick    # smoke run, tiny sizes
  python bench/cluster.py --no-dask-array   # skip the (slow) alternative
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's miniflow, not another one installed in the environment.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as c  # noqa: E402

# (hidden, batch, rows in the data set): the data holds two batches, so each
# batch is a random half of it, spread over both shards as in training.
CONFIGS = {"small": (256, 128, 16384), "large": (2048, 8192, 16384)}
QUICK = {"small": (32, 64, 512), "large": (64, 512, 1024)}
OVERHEAD_TARGET_MS = 25.0
SCALING_TARGET = 1.6
REFERENCE = "numpy"
LR = 0.01


class Step:
    """One contender's training state: its own parameters and batch generator."""

    def __init__(self, hidden, batch, data, seed=0):
        from miniflow.models import mlp

        self.model = mlp((hidden,), "relu", n_inputs=c.FEATURES, n_classes=c.CLASSES, seed=seed)
        self.params = [np.array(p, copy=True) for p in self.model.params.values()]
        self.batch, self.data = batch, data
        self.rng = np.random.default_rng(seed)

    def draw(self):
        return self.rng.choice(len(self.data[1]), self.batch, replace=False)

    def update(self, grads, scale=1.0):
        self.params = [p - np.float32(LR * scale) * g for p, g in zip(self.params, grads)]


class NumpyStep(Step):
    def run(self):
        from miniflow import value_and_grad

        batch = self.draw()
        m = self.model
        feed = {**dict(zip(m.params, self.params)), m.images: np.take(self.data[0], batch, 0),
                m.labels: np.take(self.data[1], batch, 0)}
        loss, grads = value_and_grad(m.loss, feed, list(m.params), backend="numpy")
        self.update(grads)


class FuturesStep(Step):
    """The trainer's own cluster step (miniflow.distributed.ClusterStep) and its optimizer."""

    def __init__(self, client, hidden, batch, data):
        import miniflow.distributed as md
        from miniflow.train import TrainConfig

        super().__init__(hidden, batch, data)
        config = TrainConfig(hidden=(hidden,), optimizer="sgd", lr=LR, schedule="constant",
                             shards=1)
        self.step, self.optimizer = md.cluster_training(client, self.model, config, *data,
                                                        lambda _: LR)

    def run(self):
        loss, total = self.step(None, self.draw())
        self.optimizer.step(total)


class DaskArrayStep(Step):
    def __init__(self, client, hidden, batch, data):
        import dask.array as da

        super().__init__(hidden, batch, data)
        self.client, self.da = client, da
        rows = len(data[1])
        self.x = da.from_array(data[0], chunks=(rows // 2, c.FEATURES)).persist()
        self.y = da.from_array(data[1], chunks=rows // 2).persist()

    def run(self):
        import dask

        from miniflow import value_and_grad

        batch = np.sort(self.draw())
        m, da = self.model, self.da
        feed = {**{node: da.from_array(p) for node, p in zip(m.params, self.params)},
                m.images: self.x[batch], m.labels: self.y[batch]}
        loss, grads = value_and_grad(m.loss, feed, list(m.params), backend="dask.array")
        loss, *grads = dask.compute(loss, *grads)
        self.update(grads)


def worker_blas_threads(client) -> dict:
    """Each worker's BLAS pools and their thread counts, as threadpoolctl sees them."""
    def pools():
        import numpy  # noqa: F401 - load BLAS before asking
        from threadpoolctl import threadpool_info

        return [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
    return client.run(pools)


def measure(clients, hidden, batch, rows, args) -> list[dict]:
    data = c.synthetic_data(rows)
    contenders = [c.Contender(REFERENCE, NumpyStep(hidden, batch, data).run)]
    for workers, client in clients.items():
        contenders.append(c.Contender(f"futures:{workers}",
                                      FuturesStep(client, hidden, batch, data).run))
    if args.dask_array and 2 in clients:
        contenders.append(c.Contender("dask.array:2",
                                      DaskArrayStep(clients[2], hidden, batch, data).run))
    samples = c.interleaved(contenders, rounds=args.rounds, block_s=args.block,
                            warmup_s=args.warmup, min_calls=1 if args.quick else 3,
                            **c.timing_options(args))
    ref = samples[REFERENCE]
    rows_out = []
    for name, s in samples.items():
        summary = s.summary()
        rows_out.append({"hidden": hidden, "batch": batch, "rows": rows, "contender": name,
                         **summary, "median_ms": summary["median_s"] * 1e3,
                         "rows_per_s": batch / summary["median_s"],
                         "ratio_paired": c.paired_ratio(s, ref),
                         "overhead_ms": (summary["median_s"] - ref.summary()["median_s"]) * 1e3})
    return rows_out


def verdicts(rows, configs) -> list[dict]:
    by = {(r["hidden"], r["batch"], r["contender"]): r for r in rows}
    (small_h, small_b, _), (large_h, large_b, _) = configs["small"], configs["large"]
    checks = []
    one = by.get((small_h, small_b, "futures:1"))
    if one:
        checks.append({"check": f"futures:1 overhead per step at 784-{small_h}-10, batch "
                                f"{small_b}", "value": one["overhead_ms"], "unit": " ms",
                       "target": f"<= {OVERHEAD_TARGET_MS:g} ms",
                       "met": one["overhead_ms"] <= OVERHEAD_TARGET_MS})
    one, two = by.get((large_h, large_b, "futures:1")), by.get((large_h, large_b, "futures:2"))
    if one and two:
        # Paired: both ratios to numpy come from the same rounds.
        scaling = one["ratio_paired"] / two["ratio_paired"]
        checks.append({"check": f"futures:2 / futures:1 throughput at 784-{large_h}-10, batch "
                                f"{large_b}", "value": scaling, "unit": "x",
                       "target": f">= {SCALING_TARGET:g}", "met": scaling >= SCALING_TARGET})
    return checks


COLUMNS = [("contender", "contender", ""), ("median_ms", "median ms", ".2f"),
           ("min_s", "min s", ".4f"), ("rows_per_s", "rows/s", ",.0f"),
           ("ratio_paired", "x numpy (paired)", ".2f"), ("overhead_ms", "+ms vs numpy", ".2f"),
           ("n", "steps", "d")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "cluster")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--block", type=float, help="seconds per contender per round (default 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per contender (default 1)")
    p.add_argument("--sizes", type=lambda text: text.split(","), default=["small", "large"],
                   metavar="small,large", help="which steps to time (default: both)")
    p.add_argument("--no-dask-array", dest="dask_array", action="store_false",
                   help="skip the dask.array-backend alternative (slow: seconds per large step)")
    args = p.parse_args(argv)
    if args.blas_threads is None:
        args.blas_threads = 1  # the reference is single-threaded NumPy, like each worker
    malloc = c.set_malloc_policy(args.malloc)
    configs = QUICK if args.quick else CONFIGS
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.block = args.block or (0.05 if args.quick else 1.0)
    args.warmup = args.warmup or (0.05 if args.quick else 1.0)
    if args.quick:
        args.pause = min(args.pause, 0.02)

    import miniflow.distributed as md

    load_before = os.getloadavg()
    clients = {workers: md.connect(f"local:{workers}") for workers in (1, 2)}
    try:
        worker_blas = {n: worker_blas_threads(client) for n, client in clients.items()}
        rows = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for hidden, batch, size in (configs[name] for name in args.sizes):
                found = measure(clients, hidden, batch, size, args)
                print(f"\n784-{hidden}-10 relu, batch {batch} of {size} rows, float32")
                print(c.table(found, COLUMNS))
                rows += found
    finally:
        for client in clients.values():
            client.close()
    load_after = os.getloadavg()
    machine = c.machine_info(malloc, args.blas_threads)
    checks = verdicts(rows, configs)
    print("\n" + c.describe(machine))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"on {os.cpu_count()} cores: the 2-worker scaling needs 2 idle cores")
    c.print_checks(checks)
    result = {"benchmark": "cluster", "machine": machine, "quick": args.quick,
              "settings": {**c.timing_options(args), "rounds": args.rounds,
                           "block_s": args.block, "warmup_s": args.warmup, "lr": LR},
              "load_average_before": load_before, "load_average_after": load_after,
              "worker_blas": {str(n): info for n, info in worker_blas.items()},
              "warnings": sorted({str(w.message)[:200] for w in caught}),
              "targets": checks, "results": rows}
    c.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
