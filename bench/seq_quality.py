"""Does miniflow's LSTM learn as PyTorch's does? The same model, weights, batches and steps.

The language model of bench/seq.py (embedding 64, 2 LSTM layers of 256, a
linear head) trained for ``--steps`` steps of truncated BPTT on CPython's help
topics (batch 32 streams, windows of 64, state carried, gradients clipped to
norm 1, Adam 2e-3), once by miniflow (``miniflow.charlm.train_charlm``) and
once by PyTorch eager with the same first weights and the same windows in the
same order; then the bits per character of both on the held-out last 10% of
the text. Target: miniflow's within 2% of PyTorch's.

  python bench/seq_quality.py               # 300 steps, several minutes
  python bench/seq_quality.py --quick       # a tiny model, seconds
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SIZES = {"embedding_dim": 64, "hidden_size": 256, "num_layers": 2}
QUICK_SIZES = {"embedding_dim": 8, "hidden_size": 16, "num_layers": 1}
LR, CLIP, VALID = 2e-3, 1.0, 0.1
TARGET = 0.02


def torch_training(model, train_ids, valid_ids, steps, batch, seq_len):
    """PyTorch's run of what ``train_charlm`` does: ``(held-out bpc, train bpc per step)``."""
    import torch

    from miniflow.charlm import stream_batches, torch_twin

    twin = torch_twin(model)
    opt = torch.optim.Adam(twin.parameters(), lr=LR)
    history, done = [], 0
    while done < steps:
        state = None
        for inputs, targets in stream_batches(train_ids, batch, seq_len):
            opt.zero_grad(set_to_none=True)
            logits, state = twin(torch.from_numpy(inputs), state)
            state = tuple(s.detach() for s in state)  # truncated BPTT
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), CLIP)
            opt.step()
            history.append(loss.item() / math.log(2))
            done += 1
            if done == steps:
                break
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for inputs, targets in stream_batches(valid_ids, min(batch, 16), seq_len):
            logits, state = twin(torch.from_numpy(inputs), state)
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets))
            total += loss.item() * targets.size
            count += targets.size
    return total / count / math.log(2), history


def both(text, vocabulary, start, first, steps, batch, seq_len, sizes):
    """Train miniflow's and PyTorch's runs; their results and wall times."""
    from miniflow.charlm import encode, train_charlm

    began = time.perf_counter()
    ours = train_charlm(text, steps=steps, batch_size=batch, seq_len=seq_len, lr=LR, clip=CLIP,
                        valid_fraction=VALID, params=first, **sizes)
    ours_s = time.perf_counter() - began
    split = int(len(text) * (1 - VALID))
    began = time.perf_counter()
    theirs_bpc, theirs_history = torch_training(
        start, encode(text[:split], vocabulary), encode(text[split:], vocabulary), steps, batch,
        seq_len)
    theirs_s = time.perf_counter() - began
    return ours, ours_s, theirs_bpc, theirs_history, theirs_s


def main(argv=None) -> int:
    p = c.parser(__doc__, "seq_quality")
    p.add_argument("--steps", type=int, help="training steps (default 300; quick 20)")
    p.add_argument("--seed", type=int, default=0, help="of the first weights (default 0)")
    args = p.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    import torch

    from miniflow.charlm import python_help_text
    from miniflow.models import from_network
    from miniflow.nn import CharLM

    if args.blas_threads:
        torch.set_num_threads(args.blas_threads)
    steps = args.steps or (20 if args.quick else 300)
    sizes = QUICK_SIZES if args.quick else SIZES
    batch, seq_len = (8, 16) if args.quick else (32, 64)
    text = python_help_text()
    if args.quick:
        text = text[:40000]
    vocabulary = "".join(sorted(set(text)))
    # The first weights, drawn once: both runs start from these.
    start = from_network(CharLM(vocabulary, **sizes, context=seq_len), (seq_len,),
                         n_classes=len(vocabulary), seed=args.seed)
    first = {node.name: value for node, value in start.params.items()}

    with c.blas_limit(args.blas_threads):
        ours, ours_s, theirs_bpc, theirs_history, theirs_s = both(
            text, vocabulary, start, first, steps, batch, seq_len, sizes)

    gap = ours.bpc / theirs_bpc - 1
    machine = c.machine_info(malloc, args.blas_threads)
    print(f"LSTM {sizes}, batch {batch} x {seq_len}, {steps} steps, "
          f"{len(vocabulary)} characters")
    print(c.table([
        {"who": "miniflow", "bpc": ours.bpc, "last": np.mean(ours.train_bpc[-20:]),
         "seconds": ours_s},
        {"who": "torch", "bpc": theirs_bpc, "last": np.mean(theirs_history[-20:]),
         "seconds": theirs_s}],
        [("who", "", ""), ("bpc", "held-out bpc", ".4f"),
         ("last", "train bpc (last 20)", ".4f"), ("seconds", "train s", ".1f")]))
    print("\n" + c.describe(machine))
    check = {"check": "held-out bpc, miniflow vs torch", "value": 100 * abs(gap), "unit": "%",
             "target": f"<= {100 * TARGET:g}%", "met": abs(gap) <= TARGET}
    c.print_checks([check])
    c.write_json(args.json, {
        "benchmark": "seq_quality", "machine": machine, "quick": args.quick,
        "settings": {"steps": steps, "batch": batch, "seq_len": seq_len, "lr": LR, "clip": CLIP,
                     "sizes": sizes, "seed": args.seed},
        "miniflow": {"bpc": ours.bpc, "train_bpc": ours.train_bpc, "seconds": ours_s},
        "torch": {"bpc": theirs_bpc, "train_bpc": theirs_history, "seconds": theirs_s},
        "targets": [check]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
