"""Hessian-vector product cost against one gradient (issue 19).

The 784-256-10 MLP (float32, softmax cross-entropy, ReLU) at batch 128, as in
bench/step.py. Three contenders, timed in interleaved rounds in this process:

  grad           value_and_grad(loss, feed, params): the eager numeric path
  grad-graph     the gradient as nodes (miniflow.grad), run with run(...)
  hvp            miniflow.hvp(loss, params, vectors): reverse over reverse

The ratio hvp / grad is the claim (target <= 4x; the theory says 2-4x). Examples:

  python bench/hvp.py                 # 30 rounds
  python bench/hvp.py --rounds 5      # smoke run
  python bench/hvp.py --backend torch
  python bench/hvp.py --clock cpu     # steadier on a busy machine

The glibc allocation policy is pinned first (``--malloc``, as in the other
scripts): an HVP allocates more and larger temporaries than a gradient, so with
glibc's adaptive threshold one process pays a page fault per page of each and
the next does not, and the ratio moves by 0.5x between runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's miniflow

import _common as c  # noqa: E402
import miniflow as mf  # noqa: E402


def build(batch=128, hidden=256, seed=0):
    rng = np.random.default_rng(seed)
    X, y = mf.Input(name="X"), mf.Input(name="y")
    W1, b1, W2, b2 = (mf.Input(name=n) for n in ("W1", "b1", "W2", "b2"))
    loss = mf.CrossEntropyWithSoftmax(mf.Linear(mf.ReLU(mf.Linear(X, W1, b1)), W2, b2), y)
    params = [W1, b1, W2, b2]
    values = [rng.standard_normal((784, hidden), dtype=np.float32) * 0.05,
              np.zeros(hidden, np.float32) + 0.01,
              rng.standard_normal((hidden, 10), dtype=np.float32) * 0.05,
              np.zeros(10, np.float32)]
    feed = {X: rng.random((batch, 784), dtype=np.float32), y: rng.integers(0, 10, batch)}
    feed.update(zip(params, values))
    vectors = [mf.Input(name=f"v_{p.name}") for p in params]
    feed.update({v: rng.standard_normal(a.shape).astype(np.float32)
                 for v, a in zip(vectors, values)})
    return loss, params, vectors, feed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (1: steady on a shared machine; 0: the library's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier where others hold cores")
    parser.add_argument("--malloc", choices=list(c.MALLOC_POLICIES), default="heap",
                        help="glibc allocation policy (see bench/_common.py; default: heap)")
    args = parser.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    if args.blas_threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.blas_threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    loss, params, vectors, feed = build()
    backend = mf.backends.get_backend(args.backend)
    feed = {k: backend.asarray(v) for k, v in feed.items()}
    grads = mf.grad(loss, params)
    products = mf.hvp(loss, params, vectors)

    def sync(arrays):
        backend.synchronize(*arrays)

    contenders = {
        "grad": lambda: sync(mf.value_and_grad(loss, feed, params, backend=backend)[1]),
        "grad-graph": lambda: sync([mf.run(grads[0], feed, backend=backend,
                                           extras=grads[1:]).value]),
        "hvp": lambda: sync([mf.run(products[0], feed, backend=backend,
                                    extras=products[1:]).value]),
    }
    machine = c.machine_info(malloc, args.blas_threads)  # the load before timing
    times = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up: plans, caches, BLAS threads
        fn()
        fn()
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            start = clock()
            contenders[name]()
            times[name].append(clock() - start)
    base = statistics.median(times["grad"])
    print(c.describe(machine))
    print(f"784-256-10 MLP, batch 128, float32, backend {backend.name}, {args.rounds} rounds, "
          f"{args.clock} clock, BLAS threads {args.blas_threads or 'default'}")
    for name in names:
        t = statistics.median(times[name])
        print(f"  {name:11s} {t * 1e3:8.2f} ms   {t / base:5.2f}x grad")
    return statistics.median(times["hvp"]) / base


if __name__ == "__main__":
    main()
