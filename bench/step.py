"""Training-step benchmark: miniflow on every backend, against hand-written NumPy and peers.

One step is forward + backward + SGD update of a 784-H-10 MLP (float32,
softmax cross-entropy) on a fixed synthetic batch. Contenders, all in this
process, timed in interleaved rounds:

  hand:numpy         the same step written directly in NumPy: the floor
  miniflow:BACKEND   value_and_grad on each available backend (numpy,
                     array_api_strict, torch, jax.numpy, cupy with a GPU)
  miniflow:B+KIND    miniflow.compile's step.sgd: numpy+plan (planned executor),
                     jax.numpy+jit, torch+compile, cupy+graph (CUDA graph)
  floor:matmul       only the step's two (batch x 784)-sized matrix products,
                     x @ w1 and x.T @ dz1, into preallocated arrays: no NumPy
                     step can be faster, whatever it fuses
  floor:kernels      numpy+plan's own kernels called in straight-line Python, with
                     no interpreter: the step numpy+plan would be if its
                     interpreter cost nothing (the gap between the two is its share)
  hand:cupy          the hand-written step on CuPy (GPU only)
  torch:cpu/cuda     PyTorch eager: nn.Sequential + CrossEntropyLoss + optim.SGD
  torch:compile      that step (CPU) through torch.compile(mode="default"), whole: its
                     compile time (the first call), graphs and graph breaks
                     (torch._dynamo.explain) are reported apart from the timing
  jax:jit            JAX with the whole step jitted (when JAX is installed)

Ratios are to hand:numpy measured in the same run. "alloc/step" is the peak host
memory one step allocates after warm-up (tracemalloc), in arrays of batch x hidden
float32, for the NumPy contenders. Examples:

  python bench/step.py                       # the standard sizes, ~10 minutes
  python bench/step.py --quick               # smoke run, seconds
  python bench/step.py --sweep --plot bench/results/step.png
  python bench/step.py --configs 256:128 --only hand:numpy,miniflow:numpy --malloc mmap
"""
from __future__ import annotations

import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

# The miniflow of the checkout this script is in, not whichever one is installed:
# a script's own folder, not the working directory, heads sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

CONFIGS = [(128, 128), (256, 128), (1024, 512), (64, 32)]
SWEEP = [(256, b) for b in (16, 32, 64, 128, 256, 512, 1024)]
QUICK = [(32, 16)]
# The engine's budget against hand:numpy (median ratio), per (hidden, batch).
TARGETS = {(256, 128): 1.10, (1024, 512): 1.10, (64, 32): 1.25}
# The planned NumPy executor's budget (issue 21), and compiled JAX against jax.jit.
PLANNED_TARGETS = {(256, 128): 0.90, (1024, 512): 0.95}
JIT_TARGET = 1.10
REFERENCE = "hand:numpy"


def make_contenders(hidden: int, batch: int, activation: str,
                    wanted=lambda name: True) -> list[c.Contender]:
    """The wanted contenders usable here, each with its own copy of the same starting weights."""
    params = c.init_params(hidden)
    x, y = c.synthetic_data(batch)
    graph = c.build_mlp(hidden, activation)

    hand = c.HandwrittenMLP(np, params, activation)
    found = [c.Contender(REFERENCE, partial(hand.step, x, y))]
    if wanted("floor:matmul"):
        found.append(c.Contender("floor:matmul", c.matmul_floor(params, x)))
    if wanted("floor:kernels") and c.compiled_backends(lambda name: name == "miniflow:numpy+plan"):
        found.append(c.Contender("floor:kernels",
                                 c.planned_kernels_alone(graph, params, x, y)))
    for name in c.miniflow_backends(wanted):
        model = c.MiniflowMLP(name, graph, params)
        bx, by = model.backend.asarray(x), model.backend.asarray(y)
        found.append(c.Contender(f"miniflow:{model.name}", partial(model.step, bx, by),
                                 partial(lambda m: m.backend.synchronize(*m.params), model)))
    for name in c.compiled_backends(wanted):
        model = c.CompiledMLP(name, graph, params)
        bx, by = model.backend.asarray(x), model.backend.asarray(y)
        found.append(c.Contender(f"miniflow:{model.name}", partial(model.step, bx, by),
                                 partial(lambda m: m.backend.synchronize(*m.params), model)))
    if wanted("hand:cupy") and c.gpu_name():
        import cupy

        gpu_hand = c.HandwrittenMLP(cupy, params, activation)
        sync = cupy.cuda.get_current_stream().synchronize
        found.append(c.Contender("hand:cupy", partial(gpu_hand.step, cupy.asarray(x),
                                                      cupy.asarray(y)), sync))
    for device in c.torch_devices(wanted):
        model = c.TorchMLP(device, hidden, activation, params)
        found.append(c.Contender(f"torch:{device}", partial(model.step, model.asarray(x),
                                                            model.asarray(y)), model.sync))
    if wanted("torch:compile") and c.importable("torch"):
        import torch

        found.append(c.torch_compiled_contender(
            partial(c.TorchMLP, "cpu", hidden, activation, params),
            torch.as_tensor(x), torch.as_tensor(y)))
    if wanted("jax:jit") and c.importable("jax"):
        model = c.JaxMLP(activation, params)
        found.append(c.Contender("jax:jit", partial(model.step, model.asarray(x),
                                                    model.asarray(y)), model.sync))
    return found


def plan_skips_data_gradient() -> bool:
    """True when the cached plan of a training step never asks for d loss / d images."""
    from miniflow.graph import Plan

    graph = c.build_mlp(8, "relu")
    plan = Plan.for_(graph.loss, graph.params)
    first_layer = next(n for n in plan.nodes if graph.images in n.inputs)
    return not plan.needs_input_grad[plan.index[first_layer]][0]


def measure(hidden, batch, activation, args) -> list[dict]:
    contenders = make_contenders(hidden, batch, activation,
                                 c.wanted_by(args.only, REFERENCE, args.quick))
    samples = c.interleaved(contenders, rounds=args.rounds, block_s=args.block,
                            warmup_s=args.warmup, **c.timing_options(args))
    ref = samples[REFERENCE].summary()
    reported = {k.name: {**k.info, **k.after()} for k in contenders}
    # Host allocations per step, for the NumPy contenders (tracemalloc sees NumPy's).
    allocations = {k.name: c.allocated_per_call(k.run) for k in contenders
                   if k.name in (REFERENCE, "miniflow:numpy", "miniflow:numpy+plan")}
    batch_array = batch * hidden * 4  # one float32 array of the batch's size
    rows = []
    for name, s in samples.items():
        summary = s.summary()
        alloc = allocations.get(name, {})
        rows.append({"hidden": hidden, "batch": batch, "activation": activation,
                     "contender": name, **summary, **alloc, **reported[name],
                     "peak_batch_arrays": (alloc["peak_bytes"] / batch_array if alloc
                                           else None),
                     "median_ms": summary["median_s"] * 1e3, "min_ms": summary["min_s"] * 1e3,
                     "ratio_paired": c.paired_ratio(s, samples[REFERENCE]),
                     **_spread(s, samples[REFERENCE]),
                     "ratio_median": summary["median_s"] / ref["median_s"],
                     "ratio_min": summary["min_s"] / ref["min_s"]})
    return rows


def _spread(samples, reference) -> dict:
    """The quartiles of the per-round ratios behind the paired one: how far one
    run's figure can be trusted (two runs agree when these are narrow)."""
    ratios = sorted(a / b for a, b in zip(samples.round_medians, reference.round_medians))
    if len(ratios) < 2:
        return {"ratio_paired_q1": ratios[0], "ratio_paired_q3": ratios[0]}
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"ratio_paired_q1": q1, "ratio_paired_q3": q3}


def verdicts(rows: list[dict]) -> list[dict]:
    """The issue's targets, checked on this run's paired ratios."""
    by = {(r["hidden"], r["batch"], r["activation"], r["contender"]): r for r in rows}
    found = []
    for (h, b, act, name), r in by.items():
        if name == "miniflow:numpy+plan" and (h, b) in PLANNED_TARGETS:
            found.append({"check": f"miniflow:numpy+plan / hand:numpy at ({h},{b}) {act}",
                          "value": r["ratio_paired"], "target": f"<= {PLANNED_TARGETS[h, b]:.2f}",
                          "met": r["ratio_paired"] <= PLANNED_TARGETS[h, b]})
        jit = by.get((h, b, act, "jax:jit"))
        if name == "miniflow:jax.numpy+jit" and jit:
            ratio = statistics.median(m / j for m, j in zip(r["round_medians_s"],
                                                            jit["round_medians_s"]))
            found.append({"check": f"miniflow:jax.numpy+jit / jax:jit at ({h},{b}) {act}",
                          "value": ratio, "target": f"<= {JIT_TARGET:.2f}",
                          "met": ratio <= JIT_TARGET})
        if name == "miniflow:numpy" and (h, b) in TARGETS:
            found.append({"check": f"miniflow:numpy / hand:numpy at ({h},{b}) {act}",
                          "value": r["ratio_paired"], "target": f"<= {TARGETS[h, b]:.2f}",
                          "met": r["ratio_paired"] <= TARGETS[h, b]})
        engine = by.get((h, b, act, "miniflow:numpy"))
        if name == "torch:cpu" and (h, b) == (256, 128) and engine:
            ratio = statistics.median(t / m for t, m in zip(r["round_medians_s"],
                                                            engine["round_medians_s"]))
            found.append({"check": f"torch:cpu / miniflow:numpy at ({h},{b}) {act}",
                          "value": ratio, "target": "> 1.00", "met": ratio > 1.0})
    return found


COLUMNS = [("contender", "contender", ""), ("median_ms", "median ms", ".3f"),
           ("min_ms", "min ms", ".3f"), ("ratio_paired", "x hand (paired)", ".3f"),
           ("ratio_paired_q1", "q1", ".3f"), ("ratio_paired_q3", "q3", ".3f"),
           ("ratio_median", "x hand (med)", ".2f"),
           ("ratio_min", "x hand (min)", ".2f"), ("faults_per_call", "faults/step", ".1f"),
           ("peak_batch_arrays", "alloc/step (BxH arrays)", ".2f"),
           ("n", "steps", "d")]


def parse_configs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "step")
    p.add_argument("--configs", type=parse_configs, metavar="H:B,...",
                   help="hidden:batch pairs (default: " +
                        ",".join(f"{h}:{b}" for h, b in CONFIGS) + ")")
    p.add_argument("--sweep", action="store_true",
                   help="H=256 at batch 16..1024 instead: the data for --plot")
    p.add_argument("--activations", default="sigmoid,relu", help="default: %(default)s")
    p.add_argument("--only", type=lambda s: s.split(","), metavar="PREFIX,...",
                   help="contenders whose name starts with these, e.g. miniflow:numpy,torch "
                        "(hand:numpy, the reference, always runs)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 30; quick 2): "
                   "the paired ratio is the median of as many per-round ratios")
    p.add_argument("--block", type=float, help="seconds per contender per round (default 0.1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per contender (default 0.5)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw step time against batch")
    args = p.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    configs = args.configs or (QUICK if args.quick else SWEEP if args.sweep else CONFIGS)
    args.rounds = args.rounds or (2 if args.quick else 30)
    args.block = args.block or (0.02 if args.quick else 0.1)
    args.warmup = args.warmup or (0.05 if args.quick else 0.5)
    if args.quick:
        args.pause = min(args.pause, 0.02)

    rows = []
    for hidden, batch in configs:
        for activation in args.activations.split(","):
            found = measure(hidden, batch, activation, args)
            print(f"\n784-{hidden}-10 {activation}, batch {batch}, float32")
            print(c.table(found, COLUMNS))
            c.print_compiled(found)
            rows += found
    machine = c.machine_info(malloc, args.blas_threads)  # now every contender's BLAS is loaded
    checks = verdicts(rows)
    skips = plan_skips_data_gradient()
    print("\n" + c.describe(machine))
    print(f"plan skips d loss/d images: {skips}")
    c.print_checks(checks)
    result = {"benchmark": "step", "machine": machine, "quick": args.quick,
              "settings": {**c.timing_options(args), "rounds": args.rounds,
                           "block_s": args.block, "warmup_s": args.warmup,
                           "lr": c.LEARNING_RATE},
              "plan_skips_dloss_dimages": skips, "targets": checks, "results": rows}
    c.write_json(args.json, result)
    if args.plot:
        from plot import plot_steps

        plot_steps(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
