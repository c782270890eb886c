"""What every benchmark shares: fair timing, the machine record, the MLP under test.

Three things make CPU timings on a small, shared machine lie; every script here
controls them the same way, and records how:

* glibc serves blocks of 128 KiB and more as fresh mmaps, and moves that
  threshold as the program runs. The same NumPy step can then pay a page fault
  per 4 KiB page on every call in one process and none in the next (2-2.5x
  slower). ``--malloc`` pins one policy for all contenders before anything big
  is allocated, and every result counts the page faults per step.
* OpenBLAS and OpenMP worker threads spin for ~0.1 s after a call; on two cores
  they steal from whatever is timed next. Blocks are separated by a pause.
* Other processes come and go. Contenders run in interleaved rounds (ABAB...,
  the order rotated every round) so drift hits all alike, and ratios are taken
  between numbers measured in the same run. Where another process holds a core,
  a two-thread BLAS call waits for its descheduled worker: ``--blas-threads 1``
  and ``--clock cpu`` trade realism for steadiness there.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

# A script's own folder (bench/), not the working directory, heads sys.path: without
# this line `python bench/X.py` would time whichever miniflow is installed, not this
# checkout's. Every script imports this module before miniflow.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FEATURES, CLASSES = 784, 10
LEARNING_RATE = 0.01

from miniflow.allocator import (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD,  # noqa: E402
                                MMAP_THRESHOLD, TRIM_THRESHOLD)
MALLOC_POLICIES = {
    # Arrays up to 32 MiB come from the heap and freed memory stays there: after
    # warm-up no contender pays page faults. The steady state of a long training run,
    # and what the miniflow command sets (miniflow.allocator.keep_freed_memory).
    "heap": {M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD},
    # Every array of 128 KiB or more is a fresh mmap, faulted in page by page on each
    # step: the worst case, made consistent (glibc's own threshold would drift).
    "mmap": {M_MMAP_THRESHOLD: 128 << 10},
    # Whatever glibc and the MALLOC_*_ environment variables decide (luck included).
    "glibc": {},
}


# -- the process and the machine ------------------------------------------------

def set_malloc_policy(policy: str) -> dict:
    """Apply a ``MALLOC_POLICIES`` entry with mallopt; return what was done, for the record."""
    settings = MALLOC_POLICIES[policy]
    record = {"policy": policy, "mallopt": {}}
    if not settings:
        return record
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:  # not glibc (macOS, musl): nothing to pin
        record["error"] = f"mallopt unavailable ({exc}); allocator left as is"
        return record
    names = {M_MMAP_THRESHOLD: "M_MMAP_THRESHOLD", M_TRIM_THRESHOLD: "M_TRIM_THRESHOLD"}
    for param, value in settings.items():
        if mallopt(param, value) != 1:
            record["error"] = f"mallopt({names[param]}, {value}) failed"
        record["mallopt"][names[param]] = value
    return record


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    found = {}
    for dist in ("numpy", "array-api-compat", "array-api-strict", "torch", "jax", "jaxlib",
                 "cupy-cuda12x", "cupy-cuda13x", "cupy", "threadpoolctl", "matplotlib",
                 "miniflow"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _blas() -> list[dict]:
    """The BLAS/OpenMP libraries loaded now, and the kernel each one picked."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl not installed (pip install threadpoolctl)"}]
    keep = ("user_api", "internal_api", "architecture", "num_threads", "version",
            "threading_layer", "filepath")
    return [{k: info[k] for k in keep if k in info} for info in threadpool_info()]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine_info(malloc: dict, blas_threads: int | None = None) -> dict:
    """Everything that explains a number measured here. Call after importing the contenders,
    so that every BLAS they loaded is listed; ``blas_threads`` is the limit timing ran under."""
    env_prefixes = ("OPENBLAS", "OMP_", "MKL_", "GOTO", "BLIS", "MALLOC_", "GLIBC_TUNABLES",
                    "PYTHONMALLOC", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS", "MINIFLOW")
    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(env_prefixes)},
        "blas": _blas(),
        "blas_threads_while_timing": blas_threads or "library default",
        "malloc": malloc,
        "transparent_hugepages": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "gc_enabled": gc.isenabled(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    gpu = gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info


def gpu_name() -> str | None:
    """The name of CUDA device 0 when CuPy can use it, else None (imports nothing new otherwise)."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # not installed, no driver, no device: all mean "no GPU"
        return None


def blas_summary(blas: list[dict]) -> str:
    parts = [" ".join(str(b[k]) for k in ("internal_api", "architecture") if b.get(k))
             + f" x{b.get('num_threads')}" for b in blas if "internal_api" in b]
    return ", ".join(parts) or "unknown"


def describe(machine: dict) -> str:
    """One paragraph saying where and how the numbers were measured."""
    env = " ".join(f"{k}={v}" for k, v in machine["env"].items()) or "(no BLAS/malloc env vars)"
    load = machine["load_average"]
    return (f"{machine['cpu_model']}, {machine['cpus_usable']} usable cores, "
            f"Python {machine['python']}, numpy {machine['versions'].get('numpy')}\n"
            f"BLAS: {blas_summary(machine['blas'])}, timed with "
            f"{machine['blas_threads_while_timing']} threads; env: {env}\n"
            f"malloc: {machine['malloc']['policy']} {machine['malloc'].get('mallopt') or ''}"
            f"{' ERROR ' + machine['malloc']['error'] if 'error' in machine['malloc'] else ''}; "
            f"load average at start: {', '.join(f'{x:.2f}' for x in load) if load else '?'}")


# -- command line and output ------------------------------------------------------

def parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every benchmark has."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few seconds in all, for smoke tests: tiny sizes, few repetitions; "
                        "the numbers mean little")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / f"{name}.json", metavar="PATH",
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--malloc", choices=list(MALLOC_POLICIES), default="heap",
                   help="glibc allocation policy pinned for all contenders: 'heap' (default; "
                        "no page faults after warm-up), 'mmap' (every array >=128 KiB a fresh, "
                        "faulting mmap) or 'glibc' (untouched: its adaptive threshold and any "
                        "MALLOC_*_ environment variables decide)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="'wall' (default): elapsed time; 'cpu': CPU time of the process, "
                        "steadier on a busy machine; meaningful for single-threaded NumPy "
                        "contenders only (use with --blas-threads 1)")
    p.add_argument("--blas-threads", type=int, metavar="N",
                   help="limit every BLAS/OpenMP pool (numpy's OpenBLAS, torch's OpenMP) to N "
                        "threads while timing (default: leave them). On a small shared "
                        "machine, 1 keeps a descheduled BLAS worker from stalling a step")
    p.add_argument("--pause", type=float, default=0.2, metavar="S",
                   help="seconds of idle before each timed block, so BLAS threads spinning "
                        "after the previous block do not slow this one (default: %(default)s)")
    return p


def timing_options(args) -> dict:
    """The keyword arguments of ``interleaved`` that come from the common options."""
    return {"pause": args.pause, "clock": args.clock, "blas_threads": args.blas_threads}


def print_checks(checks: list[dict]) -> None:
    for v in checks:
        print(f"{'ok  ' if v['met'] else 'MISS'} {v['check']}: {v['value']:.2f}"
              f"{v.get('unit', '')} (target {v['target']})")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Format rows as aligned text; ``columns`` is (key, heading, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(k) is None else format(row[k], spec) for k, _, spec in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(line, widths))).rstrip() for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# -- timing -----------------------------------------------------------------------

@dataclass
class Contender:
    """One way of doing the same work: ``run()`` does it once, ``sync()`` waits for it."""
    name: str
    run: Callable[[], object]
    sync: Callable[[], None] = lambda: None
    #: What a contender reports besides its times (compile time, graph breaks), and
    #: ``after()``, called once the timed rounds are over, what it reports then.
    info: dict = field(default_factory=dict)
    after: Callable[[], dict] = dict


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    faults: int = 0

    def summary(self) -> dict:
        s = sorted(self.seconds)
        quart = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        return {"median_s": statistics.median(s), "min_s": s[0], "p25_s": quart[0],
                "p75_s": quart[2], "n": len(s), "faults_per_call": self.faults / len(s),
                "round_medians_s": self.round_medians}


def paired_ratio(samples: Samples, reference: Samples) -> float:
    """Median over rounds of (this round's median / the reference's in the same round).

    Both ran within one round, seconds apart, so load that drifts over the run
    cancels; the most robust of the ratios on a shared machine.
    """
    return statistics.median(a / b for a, b in zip(samples.round_medians, reference.round_medians))


CLOCKS = {
    # Elapsed time: what a user waits for. The default.
    "wall": time.perf_counter,
    # CPU time of all this process's threads: blind to time spent descheduled, so
    # steadier on a loaded machine, but it counts BLAS threads spinning and misses
    # time on a GPU. Meaningful with --blas-threads 1 and single-threaded contenders.
    "cpu": time.process_time,
}


def timed(contender: Contender, clock=time.perf_counter) -> float:
    contender.sync()
    start = clock()
    contender.run()
    contender.sync()
    return clock() - start


def _page_faults() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def blas_limit(threads: int | None):
    """A context in which every loaded BLAS and OpenMP pool uses ``threads`` threads
    (None: leave them). Enter it after the contenders are built: threadpoolctl only
    sees the libraries loaded by then."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def interleaved(contenders: list[Contender], *, rounds: int, block_s: float, pause: float,
                warmup_s: float, min_calls: int = 3, clock: str = "wall",
                blas_threads: int | None = None) -> dict[str, Samples]:
    """Time every contender in ``rounds`` interleaved blocks of about ``block_s`` seconds.

    Each call is clocked on its own, synchronised before every clock read. Warm-up
    (first-use compilation, allocator growth, plan building) is run first and
    discarded; it also sizes each contender's block.
    """
    with blas_limit(blas_threads):
        return _interleaved(contenders, rounds, block_s, pause, warmup_s, min_calls, clock)


def _interleaved(contenders, rounds, block_s, pause, warmup_s, min_calls, clock):
    read = CLOCKS[clock]
    calls = {}
    for c in contenders:
        time.sleep(pause)
        start = time.perf_counter()
        times = [timed(c, read)]
        while time.perf_counter() - start < warmup_s or len(times) < min_calls:
            times.append(timed(c, read))
        # The fastest call, not the last ones: another process may have slowed those.
        calls[c.name] = max(min_calls, round(block_s / min(times[1:] or times)))

    results = {c.name: Samples() for c in contenders}
    for r in range(rounds):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            time.sleep(pause)
            samples = results[c.name]
            faults = _page_faults()
            block = [timed(c, read) for _ in range(calls[c.name])]
            samples.faults += _page_faults() - faults
            samples.seconds += block
            samples.round_medians.append(statistics.median(block))
    return results


def allocated_per_call(run: Callable[[], object], warmup: int = 2) -> dict:
    """What one call allocates after warm-up, as tracemalloc sees it (NumPy reports
    its array buffers there): the peak of memory held beyond what was live before
    the call, and what the call left behind. Host memory only: a GPU's is not seen."""
    import tracemalloc

    for _ in range(warmup):
        run()
    gc.collect()
    tracemalloc.start()
    try:
        run()  # tracemalloc's own first-use bookkeeping stays out of the measurement
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"peak_bytes": peak - before, "kept_bytes": after - before}


# -- the model under test -----------------------------------------------------------

@dataclass
class MLPGraph:
    images: object
    labels: object
    params: tuple  # (w1, b1, w2, b2) Input nodes
    loss: object


def build_mlp(hidden: int, activation: str) -> MLPGraph:
    """784-hidden-10 classifier built from the lab's nodes (no models.py needed)."""
    from miniflow import CrossEntropyWithSoftmax, Input, Linear, ReLU, Sigmoid

    act = {"relu": ReLU, "sigmoid": Sigmoid}[activation]
    images, labels = Input("images"), Input("labels")
    params = tuple(Input(n) for n in ("w1", "b1", "w2", "b2"))
    w1, b1, w2, b2 = params
    logits = Linear(act(Linear(images, w1, b1)), w2, b2)
    return MLPGraph(images, labels, params, CrossEntropyWithSoftmax(logits, labels))


def init_params(hidden: int, seed: int = 0) -> list[np.ndarray]:
    """[w1, b1, w2, b2] as float32, weights scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((FEATURES, hidden), dtype=np.float32) / np.float32(FEATURES ** 0.5)
    w2 = rng.standard_normal((hidden, CLASSES), dtype=np.float32) / np.float32(hidden ** 0.5)
    return [w1, np.zeros(hidden, np.float32), w2, np.zeros(CLASSES, np.float32)]


def synthetic_data(rows: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped data: float32 pixels in [0, 1) and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return (rng.random((rows, FEATURES), dtype=np.float32),
            rng.integers(0, CLASSES, rows, dtype=np.int64))


class HandwrittenMLP:
    """The same training step written directly against NumPy (or CuPy): the floor.

    Written as a competent person would, not tuned: plain expressions, naive
    sigmoid, stable softmax, and no gradient for the data.
    """

    def __init__(self, xp, params, activation: str, lr: float = LEARNING_RATE):
        self.xp = xp
        self.params = [xp.array(p, copy=True) for p in params]
        self.relu = activation == "relu"
        self.lr = lr

    def step(self, x, y):
        xp = self.xp
        w1, b1, w2, b2 = self.params
        z1 = x @ w1 + b1
        h = xp.maximum(z1, 0) if self.relu else 1 / (1 + xp.exp(-z1))
        logits = h @ w2 + b2
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = xp.arange(len(y))
        loss = xp.mean(xp.log(total[:, 0]) - shifted[rows, y])

        dlogits = exp / total
        dlogits[rows, y] -= 1
        dlogits /= len(y)
        dh = dlogits @ w2.T
        dz1 = dh * (z1 > 0) if self.relu else dh * h * (1 - h)
        grads = (x.T @ dz1, dz1.sum(axis=0), h.T @ dlogits, dlogits.sum(axis=0))
        for p, g in zip(self.params, grads):
            p -= self.lr * g
        return loss


def matmul_floor(params, x) -> Callable[[], None]:
    """The two matrix products every step of the MLP needs whose size grows with the
    input width: x @ w1 forward and x.T @ dz1 for w1's gradient (into arrays kept
    between calls). Their time is a floor under any NumPy implementation."""
    w1 = params[0]
    hidden = np.empty((x.shape[0], w1.shape[1]), np.float32)
    grad_w1 = np.empty_like(w1)

    def run():
        np.matmul(x, w1, out=hidden)
        np.matmul(x.T, hidden, out=grad_w1)
    return run


def planned_kernels_alone(graph: MLPGraph, params, x, y,
                          lr: float = LEARNING_RATE) -> Callable[[], object]:
    """The planned NumPy step's own kernels, called one after the other in straight-line
    Python: what ``miniflow:numpy+plan`` would cost if its interpreter (feed checks,
    the plan's loops, contexts, the gradients' checks) cost nothing. Not a way to
    train anything but this MLP: a measure of the interpreter's share of a step."""
    compiled = CompiledMLP("numpy", graph, params, lr)
    compiled.step(x, y)  # compiles: the kernels for these shapes exist from here on
    (entry, _), = compiled.compiled._compiled.values()
    kernels = [k for k in entry["kernels"] if k is not None]
    names = [type(k).__name__ for k in kernels]
    if len(kernels) != 4 or names[0] != "LinearKernel" or names[2] != "LinearKernel" \
            or names[3] != "CrossEntropyKernel":
        raise RuntimeError(f"the planned MLP step's kernels are {names}, not the four "
                           "this measure calls")
    first, activation, second, loss_kernel = kernels
    w1, b1, w2, b2 = compiled.params
    for linear in (first, second):
        linear.applying = (1, 2)  # as sgd has them: each updates its weight and bias
    first_inputs = types.SimpleNamespace(inputs=(x, w1, b1))
    second_inputs = types.SimpleNamespace(inputs=None)
    seed = np.float32(lr)

    def step():
        hidden = activation.forward(None, first.forward(None, x, w1, b1))
        second_inputs.inputs = (hidden, w2, b2)
        loss = loss_kernel.forward(None, second.forward(None, hidden, w2, b2), y)
        grad_logits, _ = loss_kernel.backward(None, seed)
        grad_hidden, _, _ = second.backward(second_inputs, grad_logits)
        grad_z, = activation.backward(None, grad_hidden)
        first.backward(first_inputs, grad_z)
        return loss
    return step


class MiniflowMLP:
    """The training step through miniflow: value_and_grad, then SGD in place."""

    def __init__(self, backend: str, graph: MLPGraph, params, lr: float = LEARNING_RATE):
        from miniflow.backends import get_backend

        self.backend = get_backend(backend)
        self.name = self.backend.name
        self.graph = graph
        # Copies: on NumPy, asarray would share (and update) the caller's arrays.
        self.params = [self.backend.asarray(np.array(p, copy=True)) for p in params]
        self.lr = lr

    def step(self, x, y):
        from miniflow import value_and_grad

        g = self.graph
        feed = {g.images: x, g.labels: y, **dict(zip(g.params, self.params))}
        loss, grads = value_and_grad(g.loss, feed, g.params, backend=self.name)
        for i, grad in enumerate(grads):
            p = self.params[i]
            p -= self.lr * grad  # in place where arrays are writable; JAX rebinds p
            self.params[i] = p
        return loss


class CompiledMLP(MiniflowMLP):
    """The training step through ``miniflow.compile``: ``step.sgd`` fuses the update."""

    #: How each backend's compiled contender is named: miniflow:BACKEND+SUFFIX.
    SUFFIX = {"numpy": "plan", "jax.numpy": "jit", "torch": "compile", "cupy": "graph"}

    def __init__(self, backend: str, graph: MLPGraph, params, lr: float = LEARNING_RATE):
        import miniflow

        super().__init__(backend, graph, params, lr)
        self.name = f"{self.backend.name}+{self.SUFFIX[self.backend.name]}"
        self.compiled = miniflow.compile(graph.loss, graph.params, backend=self.backend)

    def step(self, x, y):
        g = self.graph
        feed = {g.images: x, g.labels: y, **dict(zip(g.params, self.params))}
        loss, self.params = self.compiled.sgd(feed, self.lr)
        return loss


def compiled_backends(wanted: Callable[[str], bool] = lambda name: True) -> list[str]:
    """The backends with a compiler usable here whose ``miniflow:NAME+SUFFIX`` is wanted."""
    from miniflow import compilable

    return [name for name in CompiledMLP.SUFFIX
            if wanted(f"miniflow:{name}+{CompiledMLP.SUFFIX[name]}") and
            (name != "cupy" or gpu_name()) and compilable(name) is None]


class TorchMLP:
    """PyTorch eager as its users write it: nn.Sequential, CrossEntropyLoss, optim.SGD."""

    def __init__(self, device: str, hidden: int, activation: str, params,
                 lr: float = LEARNING_RATE):
        import torch

        self.torch = torch
        self.device = device
        act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[activation]
        self.model = torch.nn.Sequential(torch.nn.Linear(FEATURES, hidden), act(),
                                         torch.nn.Linear(hidden, CLASSES)).to(device)
        with torch.no_grad():  # same starting point as the others (nn.Linear stores w.T)
            w1, b1, w2, b2 = params
            for layer, w, b in ((self.model[0], w1, b1), (self.model[2], w2, b2)):
                layer.weight.copy_(torch.from_numpy(w.T.copy()))
                layer.bias.copy_(torch.from_numpy(b))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def asarray(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def step(self, x, y):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def _own_step(model):
    """``model.step`` with a code object of its own. Dynamo keeps compiled versions
    per code object and, past its recompile limit, runs the function uncompiled
    without a word: one model per size and activation in a run would share them."""
    step = type(model).step
    own = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__)
    return types.MethodType(own, model)


class TorchCompiled:
    """A PyTorch eager step (``TorchMLP``, bench/cnn.py's ``TorchCNN``) handed whole to
    ``torch.compile(mode="default")``, as a user compiles a training step.

    Built here, outside any timing: ``torch._dynamo.explain`` counts the graphs
    and graph breaks on a second copy of the model (it runs a step), then the
    first call compiles, timed on its own (``compile_s``). ``recompiles()`` after
    the timed rounds says whether further calls still compile anything.
    """

    def __init__(self, make, x, y, mode: str | None = "default", backend: str = "inductor"):
        import torch

        self.torch = torch
        explained = torch._dynamo.explain(_own_step(make()))(x, y)
        self.graphs, self.graph_breaks = explained.graph_count, explained.graph_break_count
        self.break_reasons = sorted({str(b.reason).splitlines()[0]
                                     for b in explained.break_reasons})
        self.eager = make()
        self.step = torch.compile(_own_step(self.eager), mode=mode, backend=backend)
        start = time.perf_counter()
        self.step(x, y)
        self.sync()
        self.compile_s = time.perf_counter() - start
        self.x, self.y = x, y

    def sync(self):
        self.eager.sync()

    def recompiles(self, calls: int = 3) -> int:
        """How many graphs dynamo compiles over ``calls`` more steps (0: none)."""
        counters = self.torch._dynamo.utils.counters["stats"]
        before = counters["unique_graphs"]
        for _ in range(calls):
            self.step(self.x, self.y)
        return counters["unique_graphs"] - before


class JaxMLP:
    """JAX with the whole step (forward, backward, SGD) compiled by jax.jit."""

    def __init__(self, activation: str, params, lr: float = LEARNING_RATE):
        import jax
        import jax.numpy as jnp

        self.jax = jax
        act = jax.nn.relu if activation == "relu" else jax.nn.sigmoid

        def loss_fn(p, x, y):
            w1, b1, w2, b2 = p
            logits = act(x @ w1 + b1) @ w2 + b2
            log_probs = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

        @jax.jit
        def step(p, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            return [w - lr * g for w, g in zip(p, grads)], loss

        self._step = step
        self.params = [jnp.asarray(p) for p in params]

    def asarray(self, a):
        return self.jax.numpy.asarray(a)

    def step(self, x, y):
        self.params, loss = self._step(self.params, x, y)
        return loss

    def sync(self):
        self.jax.block_until_ready(self.params)


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def miniflow_backends(wanted: Callable[[str], bool] = lambda name: True) -> list[str]:
    """The backends usable here whose contender name ``miniflow:NAME`` is wanted.

    Only those are imported: asking about torch or JAX costs seconds.
    """
    from miniflow.backends import backend_names, get_backend
    from miniflow.errors import BackendUnavailableError

    found = []
    for name in backend_names():
        if name == "dask.array" or not wanted(f"miniflow:{name}"):
            continue  # dask.array would time its task scheduler, not the engine
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        found.append(name)
    return found


#: Contenders that take minutes to warm up (torch.compile builds C++): left out of
#: --quick runs unless --only names them.
SLOW_TO_START = ("miniflow:torch+compile", "torch:compile")


def wanted_by(prefixes: list[str] | None, always: str,
              quick: bool = False) -> Callable[[str], bool]:
    """A filter on contender names: those starting with one of ``prefixes`` (all when
    none are given, less ``SLOW_TO_START`` in a quick run), and ``always``, the reference."""
    if not prefixes:
        return lambda name: not (quick and name in SLOW_TO_START)
    return lambda name: name == always or name.startswith(tuple(prefixes))


def torch_devices(wanted: Callable[[str], bool] = lambda name: True) -> list[str]:
    """'cpu', plus 'cuda' where PyTorch sees a GPU, as far as ``torch:DEVICE`` is wanted."""
    if not (wanted("torch:cpu") or wanted("torch:cuda")) or not importable("torch"):
        return []
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [d for d in devices if wanted(f"torch:{d}")]


def torch_compiled_contender(make, x, y) -> Contender:
    """``torch:compile``: the eager step ``make()`` builds, through torch.compile."""
    compiled = TorchCompiled(make, x, y)
    return Contender("torch:compile", partial(compiled.step, x, y), compiled.sync,
                     info={"compile_s": compiled.compile_s, "graphs": compiled.graphs,
                           "graph_breaks": compiled.graph_breaks,
                           "break_reasons": compiled.break_reasons},
                     after=lambda: {"recompiles": compiled.recompiles()})


def print_compiled(rows: list[dict]) -> None:
    """One line per torch.compile contender: what compiling cost, apart from the steps."""
    for r in rows:
        if "compile_s" in r:
            reasons = "; ".join(r["break_reasons"])
            print(f"{r['contender']}: first call (compiles) {r['compile_s']:.1f} s, "
                  f"{r['graphs']} graph(s), {r['graph_breaks']} graph break(s)"
                  f"{' (' + reasons + ')' if reasons else ''}, "
                  f"graphs compiled by 3 more calls after timing: {r['recompiles']}")
