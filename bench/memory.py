"""Peak memory of training: `miniflow train` against the same training in PyTorch eager.

Each contender trains on MNIST in a fresh process of its own, and its peak
resident memory (the kernel's ru_maxrss for that process alone, from wait4) is
what is reported. Contenders:

  miniflow:mlp     python -m miniflow train --epochs E  (784-256-10 ReLU, Nesterov,
                   batch 128: the CLI's defaults)
  miniflow:cnn     python -m miniflow train --model cnn --epochs E  (conv32-pool-ReLU-
                   conv64-pool-ReLU-fc128-ReLU-dropout-fc10, Adam, batch 64, 2 shards)
  torch:mlp        the same MLP in PyTorch eager: nn.Sequential, CrossEntropyLoss,
                   SGD with Nesterov momentum, batch 128
  torch:cnn        the same CNN in PyTorch eager, Adam, batch 64
  python:numpy     the interpreter with numpy and miniflow imported, MNIST loaded: the
  python:torch     floor each side starts from (torch's libraries alone are ~300 MB)

Both sides load MNIST through ``miniflow.datasets.load_mnist`` (float32 images,
188 MB for the training set), train E epochs on the training split and measure
accuracy on the validation and test sets in batches (1,000 images for the CNN;
miniflow evaluates images 64 at a time),
so the data costs both the same. Ratios are miniflow / PyTorch for each model.

  python bench/memory.py                     # one epoch each, a few minutes
  python bench/memory.py --quick             # the MLP on 5,000 training rows: seconds
  python bench/memory.py --models cnn --epochs 2
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The miniflow of the checkout this script is in, not whichever one is installed:
# a script's own folder, not the working directory, heads sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

MODELS = ("mlp", "cnn")
#: Rows held out for validation: the CLI's default, and the quick run's (5,000 rows
#: left to train on).
VALIDATION, QUICK_VALIDATION = 5000, 55000
TARGET = 1.0  # miniflow's peak / PyTorch's, per model (the issue's)


def _peak_of(argv: list[str], env: dict) -> dict:
    """Run ``argv``; its own peak RSS (MiB), exit status and wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 reports the resources of this child alone (getrusage(RUSAGE_CHILDREN)
    # would give the largest of every child so far).
    _, status, usage = os.wait4(process.pid, 0)
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"peak_mib": usage.ru_maxrss / 1024, "exit": process.returncode,
            "wall_s": time.perf_counter() - start, "stdout_tail": out[-400:],
            "stderr_tail": err[-800:]}


def _commands(model: str, epochs: int, validation: int, threads: str) -> dict[str, list[str]]:
    python = sys.executable
    me = str(Path(__file__).resolve())
    train = [python, "-m", "miniflow", "train", "--epochs", str(epochs), "--quiet",
             "--validation-size", str(validation), "--threads", threads]
    if model == "cnn":
        train += ["--model", "cnn"]
    return {f"miniflow:{model}": train,
            f"torch:{model}": [python, me, "--child", f"torch:{model}", "--epochs", str(epochs),
                               "--validation-size", str(validation), "--threads", threads]}


# -- the PyTorch side, run as a child process ------------------------------------------

def _torch_child(model: str, epochs: int, validation: int, threads: str) -> None:
    import numpy as np
    import torch

    from miniflow.datasets import load_mnist

    if threads != "auto":
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    mnist = load_mnist(os.environ.get("MINIFLOW_DATA"), validation_size=validation)
    nn = torch.nn
    if model == "mlp":
        net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        batch, shape, eval_batch = 128, (-1, 784), 10_000
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding="same"), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding="same"), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(128, 10))
        optimizer = torch.optim.Adam(net.parameters(), lr=0.003)
        batch, shape, eval_batch = 64, (-1, 1, 28, 28), 1_000
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(mnist.train_images).reshape(shape)
    y = torch.from_numpy(mnist.train_labels)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(y), batch):
            rows = order[start:start + batch]
            optimizer.zero_grad()
            loss_fn(net(x[rows]), y[rows]).backward()
            optimizer.step()
    net.eval()
    accuracies = []
    with torch.no_grad():
        for images, labels in ((mnist.val_images, mnist.val_labels),
                               (mnist.test_images, mnist.test_labels)):
            images = torch.from_numpy(images).reshape(shape)
            hits = sum(int((net(images[s:s + eval_batch]).argmax(1)
                            == torch.from_numpy(labels[s:s + eval_batch])).sum())
                       for s in range(0, len(labels), eval_batch))
            accuracies.append(hits / max(1, len(labels)))
    print(json.dumps({"validation_accuracy": accuracies[0], "test_accuracy": accuracies[1]}))


def _floor_child(kind: str, validation: int) -> None:
    """Imports and data only: where each side's memory starts."""
    import importlib

    for module in ("numpy", "miniflow") + (("torch",) if kind == "torch" else ()):
        importlib.import_module(module)
    from miniflow.datasets import load_mnist

    load_mnist(os.environ.get("MINIFLOW_DATA"), validation_size=validation)


# -- the parent ----------------------------------------------------------------------------

COLUMNS = [("contender", "contender", ""), ("peak_mib", "peak RSS MiB", ".0f"),
           ("ratio", "x torch", ".2f"), ("wall_s", "wall s", ".1f"), ("exit", "exit", "d")]


def main(argv=None) -> int:
    p = c.parser(__doc__, "memory")
    p.add_argument("--models", help="default: mlp,cnn (--quick: mlp; the CNN's evaluation "
                   "of the 55,000 held-out rows takes a minute)")
    p.add_argument("--epochs", type=int, default=1, help="default: %(default)s")
    p.add_argument("--validation-size", type=int, default=None,
                   help=f"rows held out (default {VALIDATION}; --quick: {QUICK_VALIDATION}, "
                        "so 5,000 train)")
    p.add_argument("--threads", default=str(len(os.sched_getaffinity(0))),
                   help="each process's BLAS/PyTorch threads (default: the usable cores, "
                        "%(default)s here: what the CLI's 'auto' picks on a quiet machine; "
                        "'auto' follows the load, and the memory with it: the CNN's training "
                        "evaluates two batches at once when it has two threads)")
    p.add_argument("--child", help=argparse_hidden())
    args = p.parse_args(argv)
    validation = args.validation_size if args.validation_size is not None else (
        QUICK_VALIDATION if args.quick else VALIDATION)
    if args.child:
        kind, _, model = args.child.partition(":")
        if kind == "torch":
            _torch_child(model, args.epochs, validation, args.threads)
        else:
            _floor_child(model, validation)
        return 0

    env = dict(os.environ)
    env.setdefault("MINIFLOW_DATA", str(Path.home() / ".cache" / "miniflow" / "mnist"))
    # The children import this checkout's miniflow, as the tests do.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    me = str(Path(__file__).resolve())
    rows = []
    for kind in ("numpy", "torch"):
        found = _peak_of([sys.executable, me, "--child", f"floor:{kind}",
                          "--validation-size", str(validation)], env)
        rows.append({"contender": f"python:{kind}", **found})
    checks = []
    for model in (args.models or ("mlp" if args.quick else "mlp,cnn")).split(","):
        measured = {name: _peak_of(argv_, env)
                    for name, argv_ in _commands(model, args.epochs, validation,
                                                 args.threads).items()}
        ours, theirs = measured[f"miniflow:{model}"], measured[f"torch:{model}"]
        for name, found in measured.items():
            rows.append({"contender": name, **found,
                         "ratio": found["peak_mib"] / theirs["peak_mib"]})
        if ours["exit"] == 0 and theirs["exit"] == 0:
            ratio = ours["peak_mib"] / theirs["peak_mib"]
            checks.append({"check": f"miniflow:{model} peak RSS / torch:{model}",
                           "value": ratio, "target": f"<= {TARGET:.2f}", "met": ratio <= TARGET})
    print(c.table(rows, COLUMNS))
    for row in rows:
        if row["exit"]:
            print(f"\n{row['contender']} failed (exit {row['exit']}):\n{row['stderr_tail']}")
    machine = c.machine_info(c.set_malloc_policy("glibc"))
    print("\n" + c.describe(machine))
    print(f"epochs: {args.epochs}, training rows: {60000 - validation}")
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "memory", "machine": machine, "quick": args.quick,
                             "settings": {"epochs": args.epochs, "validation_size": validation,
                                          "threads": args.threads},
                             "targets": checks, "results": rows})
    return 0 if all(r["exit"] == 0 for r in rows) else 1


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
