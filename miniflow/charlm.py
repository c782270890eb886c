"""A character-level language model: train on a text, measure bits per character, sample.

>>> from miniflow.charlm import train_charlm, sample, python_help_text
>>> text = python_help_text()[:20000]
>>> result = train_charlm(text, steps=20, hidden_size=64, embedding_dim=16)  # doctest: +SKIP
>>> result.bpc, sample(result, "The ", 40)                                    # doctest: +SKIP

The model (:class:`miniflow.nn.CharLM`) is an embedding, a stack of LSTM layers (or of
causal transformer blocks) and a linear head, built from :mod:`miniflow.nn`
layers; its record holds the vocabulary, so a saved model samples by itself.

Training is truncated backpropagation through time: the text is cut into
``batch_size`` parallel streams, read ``seq_len`` characters at a time, and the
LSTM's final state of one window is fed as the initial state of the next, as
values, so no gradient crosses a window (the transformer reads independent
windows of ``seq_len``). Gradients are clipped by their global norm
(:func:`clip_grad_norm`) before each Adam step. One graph serves every step:
its plan is made on the first and reused.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import nn, nodes
from .backends import get_backend
from .errors import ConfigError
from .executor import run
from .graph import Input
from .models import Model, from_network, positive
from .nn import CharLM
from .optim import Adam, clip_grad_norm

__all__ = ["CharLM", "CharLMResult", "train_charlm", "bits_per_character", "sample", "torch_twin",
           "clip_grad_norm", "training_graph", "python_help_text", "encode", "stream_batches"]


def python_help_text() -> str:
    """The help topics shipped with CPython (``pydoc_data.topics``): ~465,000 characters
    of English that every machine with Python has."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


# -- data ----------------------------------------------------------------------------------

def encode(text: str, vocabulary: str) -> np.ndarray:
    """Token ids (int64) of ``text``; a character outside ``vocabulary`` is an error."""
    index = {ch: k for k, ch in enumerate(vocabulary)}
    missing = sorted(set(text) - set(index))
    if missing:
        raise ConfigError(f"characters outside the vocabulary: {''.join(missing[:20])!r}")
    return np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))


def stream_batches(ids: np.ndarray, batch_size: int, seq_len: int):
    """Windows of ``batch_size`` parallel streams: yields (inputs, targets), each
    (batch_size, seq_len), consecutive windows continuing each stream; once through."""
    length = (len(ids) - 1) // batch_size
    if length < seq_len:
        raise ConfigError(f"{len(ids)} characters are too few for {batch_size} streams of "
                          f"windows of {seq_len}")
    streams = ids[:length * batch_size + 1]
    inputs = streams[:-1][:length * batch_size].reshape(batch_size, length)
    targets = streams[1:][:length * batch_size].reshape(batch_size, length)
    for start in range(0, length - seq_len + 1, seq_len):
        yield inputs[:, start:start + seq_len], targets[:, start:start + seq_len]


# -- gradient clipping ---------------------------------------------------------------------

# -- training --------------------------------------------------------------------------------

@dataclass
class CharLMResult:
    """What :func:`train_charlm` gives: the model and how training went."""

    model: Model
    network: CharLM
    bpc: float | None
    train_bpc: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    @property
    def params(self) -> dict:
        return self.model.params


class _Graph:
    """The training graph of a CharLM, built once: tokens, targets, state in; loss, state out."""

    def __init__(self, network: CharLM):
        self.tokens, self.targets = Input("tokens"), Input("targets")
        self.lstm = network.kind == "lstm"
        self.h0, self.c0 = (Input("h0"), Input("c0")) if self.lstm else (None, None)
        state = (self.h0, self.c0) if self.lstm else None
        self.logits, final = network.step(self.tokens, state)
        self.loss = nodes.CrossEntropyWithSoftmax(self.logits, self.targets, name="loss")
        self.final = list(final) if self.lstm else []
        self.shape = (network.num_layers, network.hidden_size)

    def zero_state(self, batch, xp, dtype):
        if not self.lstm:
            return None
        return [xp.zeros((self.shape[0], batch, self.shape[1]), dtype=dtype)] * 2

    def feed(self, params, tokens, targets, state):
        feed = {**params, self.tokens: tokens, self.targets: targets}
        if self.lstm:
            feed[self.h0], feed[self.c0] = state
        return feed


def bits_per_character(result_or_model, text_or_ids, *, batch_size: int = 16,
                       seq_len: int = 64, backend="numpy") -> float:
    """Mean cross-entropy of each next character, in bits, over ``text`` read as
    ``batch_size`` streams (the LSTM's state carried along each stream)."""
    model = getattr(result_or_model, "model", result_or_model)
    network = model.network
    ids = encode(text_or_ids, network.vocabulary) if isinstance(text_or_ids, str) \
        else np.asarray(text_or_ids)
    graph = _graph_of(network)
    be = get_backend(backend)
    params = {node: be.asarray(v) for node, v in model.params.items()}
    state = graph.zero_state(batch_size, be.xp, be.xp.float32)
    total, count = 0.0, 0
    for inputs, targets in stream_batches(ids, batch_size, seq_len):
        out = run(graph.loss, graph.feed(params, be.asarray(inputs), be.asarray(targets), state),
                  backend=be.name, extras=graph.final)
        total += float(be.to_numpy(out.value)) * targets.size
        count += targets.size
        state = list(out.extras) or None
    return total / count / math.log(2)


# One graph per network, made on first use: its plans are reused by every later call.
_GRAPHS: "weakref.WeakKeyDictionary[CharLM, _Graph]" = weakref.WeakKeyDictionary()


def training_graph(network) -> _Graph:
    """The network's training graph (made once, then reused): ``tokens``, ``targets``,
    ``h0``/``c0`` Inputs, ``logits``, ``loss`` and the ``final`` state nodes;
    ``feed(params, tokens, targets, state)`` and ``zero_state(batch, xp, dtype)``."""
    return _graph_of(network)


def _graph_of(network):
    graph = _GRAPHS.get(network)
    if graph is None:
        graph = _GRAPHS[network] = _Graph(network)
    return graph


def train_charlm(text: str, *, kind: str = "lstm", steps: int = 1000, batch_size: int = 32,
                 seq_len: int = 64, embedding_dim: int = 64, hidden_size: int = 256,
                 num_layers: int = 2, num_heads: int = 4, lr: float = 2e-3,
                 clip: float | None = 1.0, valid_fraction: float = 0.1, seed: int = 0,
                 backend="numpy", log=None, params: dict | None = None) -> CharLMResult:
    """Train a character-level :class:`CharLM` on ``text`` and measure held-out bits per char.

    The last ``valid_fraction`` of the text is held out; the vocabulary is every
    character of the whole text. ``steps`` Adam steps (``lr``) of ``batch_size``
    windows of ``seq_len`` characters, truncated BPTT with the LSTM's state
    carried from window to window (restarted from zeros each pass over the
    text), gradients clipped to global norm ``clip`` (None: no clipping).
    ``log(step, loss_bits)`` is called every step when given. ``params``
    (``{name: array}``) replaces the drawn first values (to start from given weights).

    Returns a :class:`CharLMResult`: its ``model`` saves with
    :func:`miniflow.serialize.save_model` and samples with :func:`sample`.
    """
    steps, batch_size, seq_len = (positive(v, what) for v, what in (
        (steps, "steps"), (batch_size, "batch_size"), (seq_len, "seq_len")))
    if not 0 < valid_fraction < 1:
        raise ConfigError(f"valid_fraction must lie in (0, 1), got {valid_fraction!r}")
    vocabulary = "".join(sorted(set(text)))
    split = int(len(text) * (1 - valid_fraction))
    train_ids, valid_ids = encode(text[:split], vocabulary), encode(text[split:], vocabulary)
    network = CharLM(vocabulary, kind=kind, embedding_dim=embedding_dim,
                     hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                     context=seq_len)
    model = from_network(network, (seq_len,), n_classes=len(vocabulary), seed=seed,
                         kind="charlm", summary=f"charlm {kind} {num_layers}x"
                         f"{hidden_size if kind == 'lstm' else embedding_dim}")
    if params is not None:
        model.params = {node: np.asarray(params[node.name], np.float32) for node in model.params}
    graph = _graph_of(network)
    be = get_backend(backend)
    opt = Adam(model.params, lr=lr, backend=be, clip_norm=clip)
    history, started, done = [], time.perf_counter(), 0
    while done < steps:
        state = graph.zero_state(batch_size, be.xp, be.xp.float32)
        for inputs, targets in stream_batches(train_ids, batch_size, seq_len):
            out = run(graph.loss, graph.feed(opt.params, be.asarray(inputs), be.asarray(targets),
                                             state),
                      opt.nodes, backend=be.name, extras=graph.final)
            opt.step(out.grads)
            state = list(out.extras) or None  # values: no gradient crosses the window
            bits = float(be.to_numpy(out.value)) / math.log(2)
            history.append(bits)
            done += 1
            if log is not None:
                log(done, bits)
            if done == steps:
                break
    seconds = time.perf_counter() - started
    model.params = {node: np.asarray(be.to_numpy(value), np.float32)
                    for node, value in opt.params.items()}
    bpc = bits_per_character(model, valid_ids, batch_size=min(batch_size, 16), seq_len=seq_len)
    return CharLMResult(model=model, network=network, bpc=bpc, train_bpc=history,
                        seconds=seconds, steps=done)


# -- sampling ---------------------------------------------------------------------------------

def sample(result_or_model, prompt: str, length: int, *, temperature: float = 0.8,
           seed: int = 0) -> str:
    """``prompt`` followed by ``length`` characters drawn from the model, one at a time."""
    model = getattr(result_or_model, "model", result_or_model)
    network = model.network
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ConfigError(f"length must be an integer >= 0, got {length!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature!r}")
    if not prompt:
        raise ConfigError("the prompt needs at least one character")
    rng = np.random.default_rng(seed)
    graph = _graph_of(network)
    ids = list(encode(prompt, network.vocabulary))
    state = graph.zero_state(1, np, np.float32)
    pending = ids  # what the model has not read yet
    for _ in range(length):
        if graph.lstm:
            window = np.asarray([pending], np.int64)
        else:
            window = np.asarray([ids[-network.context:]], np.int64)
        out = run(graph.logits, graph.feed(model.params, window, window, state),
                  extras=graph.final)
        if graph.lstm:
            state = list(out.extras)
        logits = np.asarray(out.value, np.float64)[0, :, -1] / temperature
        p = np.exp(logits - logits.max())
        token = int(rng.choice(len(p), p=p / p.sum()))
        ids.append(token)
        pending = [token]
    return "".join(network.vocabulary[k] for k in ids)


# -- the same model in PyTorch ------------------------------------------------------------------

def torch_twin(result_or_model, params: dict | None = None):
    """A ``torch.nn.Module`` computing what the model computes, its weights copied in.

    ``twin(tokens, state=None) -> (logits, state)`` with tokens (batch, steps)
    and logits (batch, vocabulary, steps), as :meth:`CharLM.step`. Parameter
    names are the model's; miniflow's Linear weights are transposed on the way
    (PyTorch stores (out, in)). For checking miniflow against PyTorch and for
    carrying a trained model over. Needs PyTorch.
    """
    import torch

    model = getattr(result_or_model, "model", result_or_model)
    network = model.network
    values = {node.name: value for node, value in model.params.items()} if params is None \
        else params
    twin = _torch_module(torch, network)
    flip = {sub.weight.name for sub in network.walk() if isinstance(sub, nn.Linear)}
    named = dict(twin.named_parameters())
    if sorted(named) != sorted(values):
        raise ConfigError(f"the twin's parameters {sorted(named)} differ from the model's "
                          f"{sorted(values)}")
    with torch.no_grad():
        for name, value in values.items():
            value = np.asarray(value)
            named[name].copy_(torch.from_numpy(np.ascontiguousarray(
                value.T if name in flip else value)))
    return twin


def _torch_module(torch, network):
    tnn = torch.nn

    class Positions(tnn.Module):
        def __init__(self):
            super().__init__()
            self.weight = tnn.Parameter(torch.zeros(network.context, network.embedding_dim))

        def forward(self, x):
            return x + self.weight[:x.shape[0], None]

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            size, width = network.vocab_size, network.embedding_dim
            self.embedding = tnn.Embedding(size, width)
            if network.kind == "lstm":
                self.lstm = tnn.LSTM(width, network.hidden_size, network.num_layers)
                out = network.hidden_size
            else:
                self.positions = Positions()
                self.blocks = tnn.ModuleList([
                    tnn.TransformerEncoderLayer(width, network.num_heads, 4 * width, dropout=0.0,
                                                activation=tnn.GELU(approximate="tanh"),
                                                norm_first=True)
                    for _ in range(network.num_layers)])
                self.norm = tnn.LayerNorm(width)
                out = width
            self.head = tnn.Linear(out, size)

        def forward(self, tokens, state=None):
            x = self.embedding(tokens.T)
            if network.kind == "lstm":
                x, state = self.lstm(x, state)
            else:
                x = self.positions(x)
                mask = tnn.Transformer.generate_square_subsequent_mask(x.shape[0],
                                                                      dtype=x.dtype)
                for block in self.blocks:
                    x = block(x, src_mask=mask, is_causal=True)
                x = self.norm(x)
            return self.head(x).permute(1, 2, 0), state

    return Twin()


# -- the command ------------------------------------------------------------------------------

def main(argv=None, *, prog="python -m miniflow.charlm") -> int:
    """``python -m miniflow.charlm [--text FILE] ...`` (or ``miniflow train --model charlm``):
    train, report bits per character, sample, optionally save. Without ``--text``,
    CPython's help topics."""
    import argparse

    from .serialize import save_model

    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("--text", metavar="FILE", help="a UTF-8 text file (default: CPython's "
                   "help topics, pydoc_data.topics)")
    p.add_argument("--kind", choices=["lstm", "transformer"], default="lstm")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--embedding", type=int, default=64, help="embedding width (the "
                   "transformer's model width)")
    p.add_argument("--hidden", type=int, default=256, help="the LSTM's hidden size")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm limit; 0: none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", type=int, default=300, metavar="N", help="characters to sample")
    p.add_argument("--prompt", default=None, help="the sample's first characters (default: "
                   "'The ', or the text's first four characters where 'The ' is not in it)")
    p.add_argument("--save", metavar="PATH", help="write the model here (a .safetensors file)")
    args = p.parse_args(argv)
    if args.text is None:
        text = python_help_text()
    else:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    every = max(1, args.steps // 20)
    result = train_charlm(
        text, kind=args.kind, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, embedding_dim=args.embedding, hidden_size=args.hidden,
        num_layers=args.layers, num_heads=args.heads, lr=args.lr,
        clip=args.clip or None, seed=args.seed,
        log=lambda step, bits: print(f"step {step}: {bits:.3f} bits/char (train)", flush=True)
        if step % every == 0 else None)
    print(f"held-out: {result.bpc:.3f} bits per character after {result.steps} steps "
          f"({result.seconds:.0f} s)")
    if args.sample:
        prompt = args.prompt
        if prompt is None:
            prompt = "The " if set("The ") <= set(text) else text[:4]
        print(sample(result, prompt, args.sample, seed=args.seed))
    if args.save:
        print(f"saved {save_model(result.model, args.save)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
