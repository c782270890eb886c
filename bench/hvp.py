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
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    parser.add_argument("--json", type=Path, default=c.RESULTS_DIR / "hvp.json", metavar="PATH",
                        help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
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
    error = check(loss, params, vectors, feed, products, backend)
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
    ratio = statistics.median(times["hvp"]) / base
    print(f"hvp against central differences of the gradient (float64, {backend.name}): "
          + (f"relative error {error:.1e}" if error is not None else "not checked, no float64"))
    c.write_json(args.json, {
        "machine": machine, "backend": backend.name, "rounds": args.rounds, "clock": args.clock,
        "median_ms": {name: statistics.median(times[name]) * 1e3 for name in names},
        "hvp_over_grad": ratio, "target": 4.0, "check_relative_error": error})
    return ratio


def check(loss, params, vectors, feed, products, backend, eps=1e-8):
    """The HVP's relative error against (g(w + eps v) - g(w - eps v)) / 2 eps, in float64
    (None where the backend holds no float64).

    So that a faster HVP cannot be a wrong one. eps must keep every ReLU input on
    its side of the kink between the two points: at this seed the smallest
    |input| / |its rate of change along v| is 3e-7 (eps = 1e-6 crosses kinks and
    the difference is off by 100%); float64 leaves ~1e-9 of rounding at 1e-8.
    """
    if np.asarray(backend.to_numpy(backend.asarray(np.zeros(1)))).dtype != np.float64:
        return None  # JAX without jax_enable_x64: differences of float32 gradients are noise
    as64 = {k: np.asarray(backend.to_numpy(v)) for k, v in feed.items()}
    as64 = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in as64.items()}
    on = lambda arrays: [np.asarray(backend.to_numpy(a)) for a in arrays]  # noqa: E731
    result = mf.run(products[0], {k: backend.asarray(v) for k, v in as64.items()},
                    backend=backend, extras=products[1:])
    got = on([result.value, *result.extras])

    def gradient(sign):
        moved = dict(as64)
        for p, v in zip(params, vectors):
            moved[p] = as64[p] + sign * eps * as64[v]
        moved = {k: backend.asarray(v) for k, v in moved.items()}
        return on(mf.value_and_grad(loss, moved, params, backend=backend)[1])

    want = [(a - b) / (2 * eps) for a, b in zip(gradient(1), gradient(-1))]
    flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])  # noqa: E731
    return float(np.linalg.norm(flat(got) - flat(want)) / np.linalg.norm(flat(want)))


if __name__ == "__main__":
    main()
