"""Sequence-model training step: miniflow against PyTorch eager on the CPU.

One step is forward + backward + gradient clipping (global norm 1) + Adam, on
one batch of character windows, for two models built once on each side with
the same starting weights and fed the same batch:

  lstm          embedding 64, 2 LSTM layers of hidden 256, a linear head;
                batch 32, 64 steps (PyTorch runs its fused LSTM kernel)
  transformer   embedding 128, 2 pre-norm causal blocks of 4 heads, context 64,
                batch 32

Contenders run in one process, in interleaved rounds; each ratio is
miniflow / PyTorch, the median over rounds of the two medians measured in the
same round (see bench/_common.py). Targets: <= 2.0x for the LSTM, <= 1.5x for
the transformer. The vocabulary and the batch come from CPython's help topics.

  python bench/seq.py                 # the sizes above, ~2 minutes
  python bench/seq.py --quick         # tiny sizes, seconds; the numbers mean little
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

TARGETS = {"lstm": 2.0, "transformer": 1.5}
SIZES = {"lstm": {"embedding_dim": 64, "hidden_size": 256, "num_layers": 2},
         "transformer": {"embedding_dim": 128, "num_heads": 4, "num_layers": 2}}
QUICK_SIZES = {"lstm": {"embedding_dim": 8, "hidden_size": 16, "num_layers": 2},
               "transformer": {"embedding_dim": 16, "num_heads": 4, "num_layers": 2}}
LR, CLIP = 2e-3, 1.0


class MiniflowLM:
    """A CharLM's training step in miniflow: the graph built and planned once."""

    def __init__(self, model, tokens, targets):
        from miniflow import run
        from miniflow.charlm import clip_grad_norm, training_graph
        from miniflow.optim import Adam

        self.run, self.clip = run, clip_grad_norm
        self.graph = training_graph(model.network)
        self.opt = Adam(model.params, lr=LR)
        self.tokens, self.targets = tokens, targets
        self.state = self.graph.zero_state(tokens.shape[0], np, np.float32)

    def step(self):
        g = self.graph
        out = self.run(g.loss, g.feed(self.opt.params, self.tokens, self.targets, self.state),
                       self.opt.nodes, extras=g.final)
        grads, _ = self.clip(out.grads, CLIP)
        self.opt.step(grads)
        return out.value


class TorchLM:
    """The same model in PyTorch eager (its twin, weights copied), Adam and clipping alike."""

    def __init__(self, model, tokens, targets):
        import torch

        from miniflow.charlm import torch_twin

        self.torch = torch
        self.twin = torch_twin(model)
        self.opt = torch.optim.Adam(self.twin.parameters(), lr=LR)
        self.tokens, self.targets = torch.from_numpy(tokens), torch.from_numpy(targets)
        if model.network.kind == "lstm":
            shape = (model.network.num_layers, tokens.shape[0], model.network.hidden_size)
            self.state = (torch.zeros(shape), torch.zeros(shape))
        else:
            self.state = None

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        logits, _ = self.twin(self.tokens, self.state)
        loss = torch.nn.functional.cross_entropy(logits, self.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.twin.parameters(), CLIP)
        self.opt.step()
        return loss.detach()


def batch_of(vocabulary, text, batch, steps, seed=0):
    from miniflow.charlm import encode

    ids = encode(text, vocabulary)
    starts = np.random.default_rng(seed).integers(0, len(ids) - steps - 1, batch)
    tokens = np.stack([ids[s:s + steps] for s in starts])
    targets = np.stack([ids[s + 1:s + steps + 1] for s in starts])
    return tokens, targets


def contenders(kind, sizes, batch, steps):
    from miniflow.charlm import python_help_text
    from miniflow.models import from_network
    from miniflow.nn import CharLM

    text = python_help_text()
    vocabulary = "".join(sorted(set(text)))
    network = CharLM(vocabulary, kind=kind, context=steps, **sizes)
    model = from_network(network, (steps,), n_classes=len(vocabulary), seed=0)
    tokens, targets = batch_of(vocabulary, text, batch, steps)
    ours, theirs = MiniflowLM(model, tokens, targets), TorchLM(model, tokens, targets)
    # Same weights, same batch: the first losses agree before anything is timed.
    first = float(ours.step()), float(theirs.step())
    if not math.isclose(*first, rel_tol=1e-4):
        raise SystemExit(f"{kind}: miniflow's first loss {first[0]} differs from PyTorch's "
                         f"{first[1]}")
    return [c.Contender(f"miniflow:{kind}", ours.step), c.Contender(f"torch:{kind}",
                                                                     theirs.step)], first


def main(argv=None) -> int:
    p = c.parser(__doc__, "seq")
    p.add_argument("--models", default="lstm,transformer", help="default: %(default)s")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 6; quick 2)")
    p.add_argument("--block", type=float, help="seconds per contender per round (default 1)")
    args = p.parse_args(argv)
    malloc = c.set_malloc_policy(args.malloc)
    import torch

    if args.blas_threads:
        torch.set_num_threads(args.blas_threads)
    rounds = args.rounds or (2 if args.quick else 6)
    block = args.block or (0.05 if args.quick else 1.0)
    batch, steps = (4, 8) if args.quick else (32, 64)
    rows, checks = [], []
    for kind in args.models.split(","):
        sizes = (QUICK_SIZES if args.quick else SIZES)[kind]
        found, first = contenders(kind, sizes, batch, steps)
        samples = c.interleaved(found, rounds=rounds, block_s=block, warmup_s=block,
                                min_calls=2, **c.timing_options(args))
        ours, theirs = (samples[f.name] for f in found)
        ratio = c.paired_ratio(ours, theirs)
        for f in found:
            rows.append({"contender": f.name, **samples[f.name].summary(),
                         "ratio_paired": c.paired_ratio(samples[f.name], theirs),
                         "first_loss": first[0] if f.name.startswith("miniflow") else first[1],
                         "sizes": {**sizes, "batch": batch, "steps": steps}})
        checks.append({"check": f"{kind} step, miniflow / torch eager", "value": ratio,
                       "unit": "x", "target": f"<= {TARGETS[kind]}",
                       "met": ratio <= TARGETS[kind]})
    machine = c.machine_info(malloc, args.blas_threads)
    print(c.table(rows, [("contender", "contender", ""), ("median_s", "median s", ".4f"),
                         ("min_s", "min s", ".4f"), ("ratio_paired", "x torch", ".2f")]))
    print("\n" + c.describe(machine))
    c.print_checks(checks)
    c.write_json(args.json, {"benchmark": "seq", "machine": machine, "quick": args.quick,
                             "settings": {**c.timing_options(args), "rounds": rounds,
                                          "block_s": block, "lr": LR, "clip": CLIP},
                             "targets": checks, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
