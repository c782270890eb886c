"""CNN training-step benchmark: miniflow against PyTorch eager, same net, weights and batch.

One step is forward + backward + SGD update (in place) of ``miniflow.models.cnn``
(3x3 conv, 2x2 max pool, ReLU per block, then dense, ReLU, dropout, dense; float32,
softmax cross-entropy) on a fixed synthetic MNIST-sized batch, dropout active.
Contenders, all in this process, timed in interleaved rounds (as bench/step.py):

  torch:cpu          PyTorch eager: nn.Sequential + CrossEntropyLoss + optim.SGD (the reference)
  torch:compile      that step (CPU) through torch.compile(mode="default"), whole: its
                     compile time (the first call), graphs and graph breaks
                     (torch._dynamo.explain) are reported apart from the timing
  miniflow:BACKEND   miniflow.run with training=True on numpy, torch, array_api_strict
                     (and cupy, torch:cuda where a GPU is usable)
  miniflow:numpy/2 shards
                     the step as `miniflow train` runs the CNN: the batch in two row
                     shards computed at once in two threads, one BLAS thread each

Ratios are to torch:cpu in the same rounds. The split of miniflow:numpy's step
between convolution, pooling and the rest comes from miniflow's profiler.

  python bench/cnn.py                        # batch 128, the issue's net, ~2 minutes
  python bench/cnn.py --quick                # smoke run, seconds
  python bench/cnn.py --channels 16,32 --blas-threads 1
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np

# The miniflow of the checkout this script is in, not whichever one is installed:
# a script's own folder, not the working directory, heads sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

REFERENCE = "torch:cpu"
TARGET = 1.2  # miniflow:numpy / torch:cpu per step at batch 128 (issue 21; stretch 1.0)
LEARNING_RATE = 0.01


class MiniflowCNN:
    """The step through miniflow: value_and_grad in a training run, then SGD in place."""

    def __init__(self, backend: str, model, lr: float = LEARNING_RATE, seed: int = 0):
        from miniflow.backends import get_backend

        self.backend = get_backend(backend)
        self.name = self.backend.name
        self.model = model
        self.nodes = list(model.params)
        self.params = [self.backend.asarray(np.array(v, copy=True))
                       for v in model.params.values()]
        self.rng = self.backend.make_rng(seed)
        self.lr = lr

    def feed(self, x, y):
        return {self.model.images: x, self.model.labels: y,
                **dict(zip(self.nodes, self.params))}

    def step(self, x, y):
        from miniflow import run

        step = run(self.model.loss, self.feed(x, y), self.nodes, backend=self.name,
                   training=True, rng=self.rng)
        loss, grads = step.value, step.grads
        for i, grad in enumerate(grads):
            p = self.params[i]
            p -= self.lr * grad  # in place where arrays are writable
            self.params[i] = p
        return loss

    def sync(self):
        self.backend.synchronize(*self.params)


class ShardedMiniflowCNN(MiniflowCNN):
    """The step as ``miniflow train`` runs the CNN: the batch in row shards computed at once
    in threads, one BLAS thread each (the trainer's own step, miniflow.train.LocalStep)."""

    def __init__(self, backend: str, model, shards: int, **kwargs):
        from types import SimpleNamespace

        from threadpoolctl import ThreadpoolController

        from miniflow.train import LocalStep

        super().__init__(backend, model, **kwargs)
        self.name = f"{self.backend.name}/{shards} shards"
        self.controller = ThreadpoolController()
        self.sharded = LocalStep(model, self.nodes, self.backend, shards=shards,
                                 policy=SimpleNamespace(workers=shards))

    def step(self, x, y):
        with self.controller.limit(limits=1, user_api="blas"):
            loss, grads = self.sharded.compute(dict(zip(self.nodes, self.params)), x, y)
        for i, grad in enumerate(grads):
            p = self.params[i]
            p -= self.lr * grad
            self.params[i] = p
        return loss


class TorchCNN:
    """The same net in PyTorch eager, as its users write it, starting from the same weights."""

    def __init__(self, device: str, model, lr: float = LEARNING_RATE):
        import torch

        nn = torch.nn
        self.torch, self.device = torch, device
        # The same layers, in the same order, read from the model's architecture record.
        build = {
            "Conv2D": lambda r: nn.Conv2d(r["in_channels"], r["out_channels"],
                                          tuple(r["kernel_size"]), stride=tuple(r["stride"]),
                                          padding=r["padding"] if isinstance(r["padding"], str)
                                          else tuple(r["padding"])),
            "MaxPool2D": lambda r: nn.MaxPool2d(tuple(r["kernel_size"])),
            "ReLU": lambda r: nn.ReLU(),
            "Flatten": lambda r: nn.Flatten(r["start_axis"]),
            "Linear": lambda r: nn.Linear(r["in_features"], r["out_features"]),
            "Dropout": lambda r: nn.Dropout(r["p"]),
        }
        layers = [build[record["layer"]](record)
                  for _, record in model.architecture["network"]["layers"]]
        self.net = nn.Sequential(*layers).to(device)
        with torch.no_grad():
            values = iter(model.params.values())
            for layer in self.net:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    w, b = next(values), next(values)
                    # miniflow's Linear stores (in, out); nn.Linear (out, in).
                    w = w.T if isinstance(layer, nn.Linear) else w
                    layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                    layer.bias.copy_(torch.from_numpy(b))
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr)

    def asarray(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def step(self, x, y):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        return loss

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def synthetic_batch(batch: int, shape=(1, 28, 28), seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    return x, rng.integers(0, 10, batch).astype(np.int64)


def make_contenders(model, batch, wanted, shards=2) -> list[c.Contender]:
    x, y = synthetic_batch(batch, tuple(model.input_shape))
    found = []
    for device in c.torch_devices(lambda name: name == REFERENCE or wanted(name)):
        net = TorchCNN(device, model)
        found.append(c.Contender(f"torch:{device}", partial(net.step, net.asarray(x),
                                                            net.asarray(y)), net.sync))
    if wanted("torch:compile") and c.importable("torch"):
        import torch

        found.append(c.torch_compiled_contender(partial(TorchCNN, "cpu", model),
                                                torch.as_tensor(x), torch.as_tensor(y)))
    for name in c.miniflow_backends(wanted):
        if name == "jax.numpy":
            continue  # a functional backend: its eager per-op dispatch is not what JAX is for
        engines = [MiniflowCNN(name, model)]
        if name == "numpy" and shards > 1 and wanted(f"miniflow:numpy/{shards} shards"):
            engines.append(ShardedMiniflowCNN(name, model, shards))
        for engine in engines:
            bx, by = engine.backend.asarray(x), engine.backend.asarray(y)
            found.append(c.Contender(f"miniflow:{engine.name}", partial(engine.step, bx, by),
                                     engine.sync))
    return found


def split(model, batch: int, repeat: int) -> dict:
    """miniflow:numpy's node time by kind, in ms per step, from the profiler (dropout off)."""
    from miniflow.profile import profile

    x, y = synthetic_batch(batch, tuple(model.input_shape))
    feed = {**model.params, model.images: x, model.labels: y}
    prof = profile(model.loss, feed, wrt=list(model.params), backend="numpy", repeat=repeat)
    groups = {"convolution": 0.0, "pooling": 0.0, "rest": 0.0}
    for row in prof.rows:
        kind = type(row.node).__name__
        group = ("convolution" if kind == "Conv2D" else
                 "pooling" if kind.endswith("Pool2D") else "rest")
        groups[group] += row.total_ms
    return groups


COLUMNS = [("contender", "contender", ""), ("median_ms", "median ms", ".1f"),
           ("min_ms", "min ms", ".1f"), ("ratio_paired", "x torch:cpu (paired)", ".2f"),
           ("ratio_min", "x torch:cpu (min)", ".2f"), ("n", "steps", "d")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "cnn")
    p.add_argument("--batch", type=int, default=128, help="default: %(default)s")
    p.add_argument("--channels", default="32,64",
                   help="output channels of the convolutions (default: %(default)s, the "
                        "issue's reference net)")
    p.add_argument("--hidden", type=int, default=128, help="default: %(default)s")
    p.add_argument("--shards", type=int, default=2,
                   help="also time miniflow:numpy with the batch in this many row shards on "
                        "as many threads, as `miniflow train` runs the CNN (default: "
                        "%(default)s; 1: not)")
    p.add_argument("--only", type=lambda s: s.split(","), metavar="PREFIX,...",
                   help="contenders whose name starts with these (torch:cpu always runs)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 8; quick 2)")
    p.add_argument("--block", type=float, help="seconds per contender per round (default 0.5)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per contender (default 1)")
    args = p.parse_args(argv)
    from miniflow.models import cnn

    malloc = c.set_malloc_policy(args.malloc)
    channels = tuple(int(v) for v in args.channels.split(","))
    batch = 8 if args.quick else args.batch
    if args.quick:
        channels, args.hidden, args.pause = (4, 8), 16, min(args.pause, 0.02)
    args.rounds = args.rounds or (2 if args.quick else 8)
    args.block = args.block or (0.02 if args.quick else 0.5)
    args.warmup = args.warmup or (0.05 if args.quick else 1.0)
    model = cnn(channels, args.hidden)

    contenders = make_contenders(model, batch, c.wanted_by(args.only, REFERENCE, args.quick),
                                 args.shards)
    samples = c.interleaved(contenders, rounds=args.rounds, block_s=args.block,
                            warmup_s=args.warmup, **c.timing_options(args))
    rows = []
    reference = samples[REFERENCE].summary()
    reported = {k.name: {**k.info, **k.after()} for k in contenders}
    for name, s in samples.items():
        summary = s.summary()
        rows.append({"contender": name, **summary, **reported[name],
                     "median_ms": summary["median_s"] * 1e3,
                     "min_ms": summary["min_s"] * 1e3,
                     "ratio_paired": c.paired_ratio(s, samples[REFERENCE]),
                     "ratio_min": summary["min_s"] / reference["min_s"]})
    print(f"\n{model!r}, batch {batch}, float32, one SGD step")
    print(c.table(rows, COLUMNS))
    c.print_compiled(rows)
    with c.blas_limit(args.blas_threads):
        groups = split(model, batch, repeat=3 if args.quick else 10)
    total = sum(groups.values())
    print("\nminiflow:numpy step by node kind (profiler): " + ", ".join(
        f"{name} {ms:.1f} ms ({ms / total:.0%})" for name, ms in groups.items()))
    machine = c.machine_info(malloc, args.blas_threads)
    # The target applies to the step as `miniflow train` runs the CNN (sharded when
    # --shards > 1); the one-batch step is checked too, for the record.
    checks = [{"check": f"{r['contender']} / torch:cpu at batch {batch}",
               "value": r["ratio_paired"], "target": f"<= {TARGET:.2f}",
               "met": r["ratio_paired"] <= TARGET}
              for r in rows if r["contender"].startswith("miniflow:numpy")]
    print("\n" + c.describe(machine))
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "cnn", "machine": machine, "quick": args.quick,
                             "settings": {**c.timing_options(args), "rounds": args.rounds,
                                          "block_s": args.block, "warmup_s": args.warmup,
                                          "batch": batch, "channels": list(channels),
                                          "hidden": args.hidden, "lr": LEARNING_RATE},
                             "split_ms": groups, "targets": checks, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
