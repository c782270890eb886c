"""Training speed when other processes compete for the cores, per BLAS thread policy.

Starts its own competing processes (each a Python busy loop, one core's
worth of CPU), then trains the same model with each policy in turn, in
interleaved rounds, and stops them again:

* ``all cores``: as many BLAS threads as cores, what NumPy's OpenBLAS does
  unless told otherwise (miniflow before ``--threads``);
* ``1``: one BLAS thread (``--threads 1``);
* ``auto``: miniflow's default, the cores other processes leave free,
  looked at before training and after every epoch.

Each cell is the median wall time of one ``train()`` (all epochs, the thread
probe included) over the rounds, per epoch. With ``--loop``, a user's own
loop (``value_and_grad`` and SGD by hand, batch 128) runs instead, under
``miniflow.set_threads(policy)``. The last columns compare
``auto`` with the other two in the same scenario: the default must be no
slower than ``1`` when the cores are busy, and no slower than ``all cores``
on a quiet machine.

  python bench/contention.py                 # ~2 minutes
  python bench/contention.py --competitors 0,1,2,4 --rounds 5
  python bench/contention.py --quick         # seconds; the numbers mean little
  python bench/contention.py --loop          # a loop of your own with miniflow.set_threads
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from miniflow.threads import available_cores, set_threads  # noqa: E402
from miniflow.train import TrainConfig, train  # noqa: E402

BUSY_LOOP = "while True: pass"
#: Seconds the competitors run before a scenario is timed, so they are at full speed.
SETTLE_S = 0.5


class Competitors:
    """``count`` busy-loop processes, started on entry and always stopped on exit."""

    def __init__(self, count: int):
        self.count, self.processes = count, []

    def __enter__(self):
        for _ in range(self.count):
            self.processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]))
        if self.count:
            time.sleep(SETTLE_S)
        return self

    def __exit__(self, *exc_info):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []
        return False


def policies(cores: int) -> dict:
    """Name -> the ``threads`` argument of ``train``."""
    return {"all cores": cores, "1": 1, "auto": "auto"}


def train_epochs(config, x, y, threads) -> list:
    """train() with ``threads``; the count in force after each epoch."""
    return [stats.threads for stats in train(config, x, y, threads=threads).history]


def loop_epochs(config, x, y, threads) -> list:
    """A loop of the user's own under ``set_threads(threads)``; the count after each epoch."""
    hidden = config.hidden[0] if config.hidden else 256
    model = c.MiniflowMLP("numpy", c.build_mlp(hidden, "relu"), c.init_params(hidden))
    chosen = []
    with set_threads(threads) as policy:
        for _ in range(config.epochs):
            for start in range(0, len(x), config.batch_size):
                model.step(x[start:start + config.batch_size], y[start:start + config.batch_size])
            chosen.append(policy.threads)
    return chosen


def time_scenario(count, config, x, y, rounds, pause, epochs=train_epochs):
    """With ``count`` competitors: {policy: [seconds per epoch, ...]}, the counts auto chose,
    the load average, and the competitors' process ids."""
    named = policies(available_cores())
    seconds = {name: [] for name in named}
    auto_threads = []
    with Competitors(count) as competitors:
        pids = [process.pid for process in competitors.processes]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for round_ in range(rounds):
            order = list(named)
            order = order[round_ % len(order):] + order[:round_ % len(order)]  # rotate
            for name in order:
                time.sleep(pause)  # BLAS threads of the previous run stop spinning
                start = time.perf_counter()
                chosen = epochs(config, x, y, named[name])
                seconds[name].append((time.perf_counter() - start) / config.epochs)
                if name == "auto":
                    auto_threads += chosen
    return seconds, auto_threads, load, pids


COLUMNS = [("competitors", "competing processes", "d"), ("all cores", "all cores s/epoch", ".3f"),
           ("1", "1 thread s/epoch", ".3f"), ("auto", "auto s/epoch", ".3f"),
           ("auto_threads", "auto chose", ""), ("auto_vs_1", "auto / 1", ".2f"),
           ("auto_vs_all", "auto / all cores", ".2f")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "contention")
    p.add_argument("--competitors", default=None, metavar="N,...",
                   help="competing processes per scenario (default 0,1,2,4; quick 0,1)")
    p.add_argument("--rows", type=int, help="training rows (default 20000; quick 600)")
    p.add_argument("--hidden", type=int, help="hidden units (default 256; quick 32)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 2; quick 1)")
    p.add_argument("--rounds", type=int, help="runs per policy and scenario (default 3; quick 1)")
    p.add_argument("--loop", action="store_true",
                   help="time a loop of your own (value_and_grad, SGD by hand) under "
                        "miniflow.set_threads instead of train()")
    args = p.parse_args(argv)
    # A plain `kill` must stop the competitors too: exit through Competitors.__exit__.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    malloc = c.set_malloc_policy(args.malloc)
    counts = [int(n) for n in (args.competitors or ("0,1" if args.quick else "0,1,2,4"))
              .split(",")]
    rows_count = args.rows or (600 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 3)
    config = TrainConfig(hidden=args.hidden or (32 if args.quick else 256),
                         epochs=args.epochs or (1 if args.quick else 2),
                         validation_size=0)
    x, y = c.synthetic_data(rows_count)
    train(config, x[:256], y[:256], threads=1)  # warm-up: imports, first allocations

    rows = []
    for count in counts:
        seconds, chosen, load, pids = time_scenario(count, config, x, y, rounds, args.pause,
                                                    loop_epochs if args.loop else train_epochs)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        rows.append({"competitors": count, **median, "samples": seconds,
                     "auto_threads": "/".join(map(str, sorted(set(chosen)))),
                     "auto_vs_1": median["auto"] / median["1"],
                     "auto_vs_all": median["auto"] / median["all cores"],
                     "load_average_1min": load, "competitor_pids": pids})
        print(f"{count} competing: " + ", ".join(f"{k} {v:.3f} s" for k, v in median.items()),
              flush=True)
    print(f"\n{'a loop of value_and_grad' if args.loop else 'train()'}: {rows_count} rows, 784-{config.hidden[0] if config.hidden else ''}-10 "
          f"{config.activation}, batch {config.batch_size}, {config.epochs} epoch(s) per run, "
          f"median of {rounds} run(s); {available_cores()} usable cores")
    print(c.table(rows, COLUMNS))
    machine = c.machine_info(malloc)
    print("\n" + c.describe(machine))
    free = [r for r in rows if r["competitors"] == 0]
    busy = [r for r in rows if r["competitors"] >= 1]
    checks = ([{"check": "auto / all cores, no competitor", "value": r["auto_vs_all"],
                "target": "<= 1.10", "met": r["auto_vs_all"] <= 1.10} for r in free]
              + [{"check": f"auto / 1 thread, {r['competitors']} competing",
                  "value": r["auto_vs_1"], "target": "<= 1.10", "met": r["auto_vs_1"] <= 1.10}
                 for r in busy])
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "contention", "machine": machine, "quick": args.quick,
                             "settings": {"rows": rows_count, "rounds": rounds,
                                          "runner": "loop" if args.loop else "train",
                                          "epochs": config.epochs, "hidden": config.hidden,
                                          "pause": args.pause, "competitors": counts},
                             "targets": checks, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
