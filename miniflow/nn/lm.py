"""A character-level language model as one layer: :class:`CharLM` (see :mod:`miniflow.charlm`
for training it, its bits per character and sampling)."""
from __future__ import annotations

from .. import nodes
from ..errors import ConfigError
from .attention import PositionalEmbedding, TransformerBlock
from .layers import Embedding, Layer, LayerNorm, Linear, Sequential, check_int, register
from .recurrent import LSTM

__all__ = ["CharLM"]


@register
class CharLM(Layer):
    """Embedding, then LSTM layers or causal transformer blocks, then a linear head.

    ``lm(tokens)`` takes (batch, steps) integer tokens and gives logits (batch,
    vocabulary, steps), PyTorch's layout for a label per position, so
    ``CrossEntropyWithSoftmax(logits, next_tokens)`` is the loss; inside, the
    layers run time-major. :meth:`step` also takes and returns the LSTM's state.

    Parameters
    ----------
    vocabulary : str
        The characters, one per token id (token k is ``vocabulary[k]``).
    kind : {"lstm", "transformer"}
    embedding_dim, hidden_size, num_layers : int
        The transformer's width is ``embedding_dim``; ``hidden_size`` is the LSTM's.
    num_heads, context : int
        The transformer's heads and its longest window (positions learned).
    """

    def __init__(self, vocabulary, *, kind="lstm", embedding_dim=64, hidden_size=256,
                 num_layers=2, num_heads=4, context=64):
        super().__init__()
        if not isinstance(vocabulary, str) or not vocabulary or \
                len(set(vocabulary)) != len(vocabulary):
            raise ConfigError("vocabulary must be a non-empty string of distinct characters")
        if kind not in ("lstm", "transformer"):
            raise ConfigError(f"kind must be 'lstm' or 'transformer', got {kind!r}")
        self.vocabulary, self.kind = vocabulary, kind
        self.embedding_dim = check_int(embedding_dim, "embedding_dim")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.num_layers = check_int(num_layers, "num_layers")
        self.num_heads = check_int(num_heads, "num_heads")
        self.context = check_int(context, "context")
        size = len(vocabulary)
        self.embedding = self.add_layer("embedding", Embedding(size, self.embedding_dim))
        if kind == "lstm":
            self.lstm = self.add_layer("lstm", LSTM(self.embedding_dim, self.hidden_size,
                                                       num_layers=self.num_layers))
            width = self.hidden_size
        else:
            self.positions = self.add_layer("positions", PositionalEmbedding(
                self.context, self.embedding_dim))
            self.blocks = self.add_layer("blocks", Sequential(*[
                TransformerBlock(self.embedding_dim, self.num_heads,
                                 activation="gelu_tanh", causal=True)
                for _ in range(self.num_layers)]))
            self.norm = self.add_layer("norm", LayerNorm(self.embedding_dim))
            width = self.embedding_dim
        self.head = self.add_layer("head", Linear(width, size, weight_init="torch_uniform",
                                                     bias_init="torch_uniform"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def step(self, tokens, state=None):
        """``(logits, state)``: logits (batch, vocabulary, steps); the LSTM's final
        ``(h_n, c_n)`` (None for the transformer), ``state`` its initial one."""
        x = self.embedding(nodes.Transpose(tokens, (1, 0)))  # (steps, batch, embedding)
        new_state = None
        if self.kind == "lstm":
            x, new_state = self.lstm(x, state)
        else:
            x = self.norm(self.blocks(self.positions(x)))
        logits = nodes.Transpose(self.head(x), (1, 2, 0), name=self._name())
        return logits, new_state

    def build(self, tokens):
        return self.step(tokens)[0]

    def config(self):
        return {"vocabulary": self.vocabulary, "kind": self.kind,
                "embedding_dim": self.embedding_dim, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "context": self.context}
