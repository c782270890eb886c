"""Attention with PyTorch's conventions: multi-head attention, positions, transformer blocks.

>>> from miniflow import Input, nn
>>> block = nn.TransformerBlock(128, 4, causal=True)
>>> y = block(Input("x"))                     # x: (steps, batch, 128), time-major
>>> [name for name, _ in block.named_parameters()][:3]
['self_attn.in_proj_weight', 'self_attn.in_proj_bias', 'self_attn.out_proj.weight']

:class:`MultiHeadAttention` holds ``torch.nn.MultiheadAttention``'s parameters
under its names and layouts (``in_proj_weight`` (3 E, E), ``out_proj.weight``
(E, E) as PyTorch's Linear stores it), so its state dict copies in unchanged;
:class:`TransformerBlock` is ``torch.nn.TransformerEncoderLayer`` with
``norm_first=True`` and no dropout, whose ``linear1``/``linear2`` are
:class:`~miniflow.nn.Linear` layers (their weights are the transpose of
PyTorch's, as every miniflow Linear).
"""
from __future__ import annotations

import math

from .. import nodes
from ..errors import ConfigError, ShapeError
from ..graph import Node
from .layers import (GELU, Layer, LayerNorm, Linear, ReLU, check_bool, check_int, check_real,
                     register)

__all__ = ["MultiHeadAttention", "PositionalEmbedding", "TransformerBlock", "SplitHeads",
           "MergeHeads", "CausalMask", "AddPositions", "SelfAttention"]


# -- the nodes attention needs -------------------------------------------------------------

class SplitHeads(Node):
    """(steps, batch, heads * d) -> (batch, heads, steps, d): each head's queries as a matrix."""

    arity = 1

    def __init__(self, x, heads, name=None):
        super().__init__(x, name=name)
        self.heads = heads

    def forward(self, ctx, x):
        steps, batch, width = x.shape
        if width % self.heads:
            raise ShapeError(f"the width {width} does not split into {self.heads} heads")
        y = ctx.xp.reshape(x, (steps, batch, self.heads, width // self.heads))
        return ctx.xp.permute_dims(y, (1, 2, 0, 3))

    def backward(self, ctx, grad):
        return (_merge(ctx.xp, grad),)


def _merge(xp, x):
    batch, heads, steps, d = x.shape
    return xp.reshape(xp.permute_dims(x, (2, 0, 1, 3)), (steps, batch, heads * d))


class MergeHeads(Node):
    """(batch, heads, steps, d) -> (steps, batch, heads * d): the inverse of SplitHeads."""

    arity = 1

    def forward(self, ctx, x):
        ctx.save(x.shape[1])
        return _merge(ctx.xp, x)

    def backward(self, ctx, grad):
        (heads,) = ctx.saved
        steps, batch, width = grad.shape
        y = ctx.xp.reshape(grad, (steps, batch, heads, width // heads))
        return (ctx.xp.permute_dims(y, (1, 2, 0, 3)),)


def _causal_keep(xp, shape):
    """True where query i may see key j: j <= i (+ the keys' extra length at the front)."""
    steps, keys = shape[-2], shape[-1]
    rows = xp.reshape(xp.arange(steps), (steps, 1))
    cols = xp.reshape(xp.arange(keys), (1, keys))
    return cols <= rows + (keys - steps)


class CausalMask(Node):
    """Scores (..., queries, keys) with every key after its query set to -inf: the
    softmax that follows gives the future no weight. Their gradient is zero."""

    arity = 1

    def forward(self, ctx, x):
        xp = ctx.xp
        keep = _causal_keep(xp, x.shape)
        return xp.where(keep, x, xp.full_like(x, -math.inf))

    def backward(self, ctx, grad):
        xp = ctx.xp
        return (xp.where(_causal_keep(xp, grad.shape), grad, xp.zeros_like(grad)),)


class SelfAttention(Node):
    """Multi-head scaled dot-product attention of (steps, batch, 3 E) projections
    ``[q | k | v]``: softmax(q k^T / sqrt(d)) v per head, merged to (steps, batch, E).

    One node, so its backward gives the three projections' gradients as one
    array (three slices of one input would each scatter a full-size gradient).
    ``causal`` hides every later step from each query.
    """

    arity = 1

    def __init__(self, qkv, heads, causal=False, name=None):
        super().__init__(qkv, name=name)
        self.heads, self.causal = heads, causal

    def forward(self, ctx, qkv):
        xp = ctx.xp
        if qkv.ndim != 3 or qkv.shape[2] % (3 * self.heads):
            raise ShapeError(f"expects (steps, batch, 3 * embed_dim) with embed_dim divisible "
                             f"by {self.heads} heads, got shape {tuple(qkv.shape)}")
        width = qkv.shape[2] // 3
        split = _split_heads_of(xp, self.heads)
        q, k, v = (split(qkv[..., part * width:(part + 1) * width]) for part in range(3))
        q = q * (1.0 / math.sqrt(width // self.heads))
        scores = q @ xp.matrix_transpose(k)
        if self.causal:
            scores = xp.where(_causal_keep(xp, scores.shape), scores,
                              xp.full_like(scores, -math.inf))
        scores = scores - xp.max(scores, axis=-1, keepdims=True)
        p = xp.exp(scores)
        p = p / xp.sum(p, axis=-1, keepdims=True)
        ctx.save(q, k, v, p)
        return _merge(xp, p @ v)

    def backward(self, ctx, grad):
        xp = ctx.xp
        q, k, v, p = ctx.saved
        d_out = _split_heads_of(xp, self.heads)(grad)
        d_p = d_out @ xp.matrix_transpose(v)
        d_v = xp.matrix_transpose(p) @ d_out
        # Softmax's backward; masked positions have p = 0, so their gradient is 0.
        d_s = p * (d_p - xp.sum(d_p * p, axis=-1, keepdims=True))
        d_q = (d_s @ k) * (1.0 / math.sqrt(q.shape[-1]))
        d_k = xp.matrix_transpose(d_s) @ q
        return (xp.concat([_merge(xp, d_q), _merge(xp, d_k), _merge(xp, d_v)], axis=-1),)


def _split_heads_of(xp, heads):
    def split(x):
        steps, batch, width = x.shape
        return xp.permute_dims(xp.reshape(x, (steps, batch, heads, width // heads)),
                               (1, 2, 0, 3))
    return split


class AddPositions(Node):
    """x (steps, batch, d) plus the first ``steps`` rows of a (max_len, d) table."""

    arity = 2

    def forward(self, ctx, x, table):
        x, table = ctx.backend.promote(x, table)
        if x.ndim != 3 or table.ndim != 2 or x.shape[2] != table.shape[1]:
            raise ShapeError(f"positions of shape {tuple(table.shape)} do not fit an input of "
                             f"shape {tuple(x.shape)}: (steps, batch, {table.shape[-1]}) "
                             "expected")
        if x.shape[0] > table.shape[0]:
            raise ShapeError(f"{x.shape[0]} steps, but the positional table has "
                             f"{table.shape[0]} rows (max_len)")
        return x + ctx.xp.expand_dims(table[:x.shape[0], :], axis=1)

    def backward(self, ctx, grad):
        xp = ctx.xp
        table = ctx.inputs[1]
        used = xp.sum(grad, axis=1)
        rest = xp.zeros((table.shape[0] - grad.shape[0], table.shape[1]), dtype=grad.dtype)
        return grad, xp.concat([used, rest], axis=0)


# -- the layers ----------------------------------------------------------------------------

class _Projection(Layer):
    """``x @ weight.T + bias`` with PyTorch's layout (out, in): attention's out_proj."""

    def __init__(self, features, bias):
        super().__init__()
        self.weight = self.add_parameter("weight", (features, features), "torch_uniform",
                                         features, features)
        self.bias = self.add_parameter("bias", (features,), "zeros") if bias else None

    def build(self, x):
        return _affine(x, self.weight, self.bias, name=self._name())


def _affine(x, weight, bias, name=None):
    """``x @ weight.T + bias`` for a PyTorch-layout weight (out, in). The Linear node
    takes the weight's gradient as one product over all the rows of x (a MatMul of a
    stack would make one per leading index, then sum them)."""
    if bias is None:
        return nodes.MatMul(x, nodes.MatrixTranspose(weight), name=name)
    return nodes.Linear(x, nodes.MatrixTranspose(weight), bias, name=name)


@register
class MultiHeadAttention(Layer):
    """Scaled dot-product attention over ``num_heads`` heads, as ``torch.nn.MultiheadAttention``.

    ``mha(query, key=None, value=None) -> (output, weights)``: inputs (steps,
    batch, embed_dim), time-major (key and value default to the query:
    self-attention); output (steps, batch, embed_dim); weights (batch, steps,
    keys), averaged over the heads as PyTorch's ``need_weights=True``.
    ``causal=True`` hides every later key from each query (PyTorch's
    ``attn_mask`` of ``generate_square_subsequent_mask``). No dropout.
    """

    def __init__(self, embed_dim, num_heads, bias=True, causal=False):
        super().__init__()
        self.embed_dim = check_int(embed_dim, "embed_dim")
        self.num_heads = check_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by num_heads "
                              f"{self.num_heads}")
        self.has_bias = check_bool(bias, "bias")
        self.causal = check_bool(causal, "causal")
        E = self.embed_dim
        self.in_proj_weight = self.add_parameter("in_proj_weight", (3 * E, E), "xavier_uniform",
                                                 E, 3 * E)
        self.in_proj_bias = self.add_parameter("in_proj_bias", (3 * E,), "zeros") \
            if self.has_bias else None
        self.out_proj = self.add_layer("out_proj", _Projection(E, self.has_bias))

    def _project(self, x, part):
        rows = slice(part * self.embed_dim, (part + 1) * self.embed_dim)
        return _affine(x, self.in_proj_weight[rows],
                       None if self.in_proj_bias is None else self.in_proj_bias[rows])

    def build(self, query, key=None, value=None):
        key = query if key is None else key
        value = key if value is None else value
        heads = self.num_heads
        if key is query and value is query:
            # Self-attention: the three projections as one product, and the attention itself
            # one node, whose backward hands back one (steps, batch, 3 E) gradient.
            qkv = _affine(query, self.in_proj_weight, self.in_proj_bias)
            out = self.out_proj(SelfAttention(qkv, heads, self.causal))
            q, k, _ = nodes.Split(qkv, 3, axis=-1)
        else:
            q, k, v = (self._project(x, part) for part, x in enumerate((query, key, value)))
            out = self.out_proj(MergeHeads(nodes.MatMul(self._weights(q, k),
                                                        SplitHeads(v, heads))))
        # The weights are a branch of their own: a graph that ignores them never runs it.
        return out, nodes.Mean(self._weights(q, k), axis=1)

    def _weights(self, q, k):
        """softmax(q k^T / sqrt(d)) per head, (batch, heads, steps, keys)."""
        heads = self.num_heads
        scale = 1.0 / math.sqrt(self.embed_dim // heads)
        scores = nodes.MatMul(SplitHeads(q, heads) * scale,
                              nodes.MatrixTranspose(SplitHeads(k, heads)))
        if self.causal:
            scores = CausalMask(scores)
        return nodes.Softmax(scores, axis=-1)

    def config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "bias": self.has_bias,
                "causal": self.causal}


@register
class PositionalEmbedding(Layer):
    """Adds a learned embedding of each position: ``x + weight[:steps, None]``.

    x (steps, batch, embedding_dim), time-major; ``weight`` (max_len,
    embedding_dim) starts normal with std 0.02, as GPT-2's.
    """

    def __init__(self, max_len, embedding_dim):
        super().__init__()
        self.max_len = check_int(max_len, "max_len")
        self.embedding_dim = check_int(embedding_dim, "embedding_dim")
        # fan_in 5000 makes he_normal's std sqrt(2 / 5000) = 0.02.
        self.weight = self.add_parameter("weight", (self.max_len, self.embedding_dim),
                                         "he_normal", 5000, self.embedding_dim)

    def build(self, x):
        return AddPositions(x, self.weight, name=self._name())

    def config(self):
        return {"max_len": self.max_len, "embedding_dim": self.embedding_dim}


@register
class TransformerBlock(Layer):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``+ mlp(norm2(x))``.

    As ``torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward,
    dropout=0, activation, norm_first=True)`` and the same parameter names;
    x (steps, batch, d_model), time-major. ``causal`` masks the future.
    ``activation``: "relu", "gelu" (exact) or "gelu_tanh" (the tanh form, GPT-2's;
    PyTorch's ``activation=nn.GELU(approximate="tanh")``).
    """

    def __init__(self, d_model, num_heads, dim_feedforward=None, activation="gelu",
                 causal=True, eps=1e-5):
        super().__init__()
        self.d_model = check_int(d_model, "d_model")
        self.num_heads = check_int(num_heads, "num_heads")
        self.dim_feedforward = 4 * self.d_model if dim_feedforward is None else \
            check_int(dim_feedforward, "dim_feedforward")
        if activation not in ("relu", "gelu", "gelu_tanh"):
            raise ConfigError(f"activation must be 'relu', 'gelu' or 'gelu_tanh', got "
                              f"{activation!r}")
        self.activation = activation
        self.causal = check_bool(causal, "causal")
        self.eps = check_real(eps, "eps", 0, open_low=True, open_high=True)
        self.self_attn = self.add_layer("self_attn", MultiHeadAttention(
            self.d_model, self.num_heads, causal=self.causal))
        self.linear1 = self.add_layer("linear1", Linear(self.d_model, self.dim_feedforward,
                                                        weight_init="torch_uniform",
                                                        bias_init="torch_uniform"))
        self.linear2 = self.add_layer("linear2", Linear(self.dim_feedforward, self.d_model,
                                                        weight_init="torch_uniform",
                                                        bias_init="torch_uniform"))
        self.norm1 = self.add_layer("norm1", LayerNorm(self.d_model, eps=self.eps))
        self.norm2 = self.add_layer("norm2", LayerNorm(self.d_model, eps=self.eps))
        self.act = ReLU() if activation == "relu" else \
            GELU("tanh" if activation == "gelu_tanh" else "none")

    def build(self, x):
        attended, _ = self.self_attn(self.norm1(x))
        x = x + attended
        return nodes.Add(x, self.linear2(self.act(self.linear1(self.norm2(x)))),
                         name=self._name())

    def config(self):
        return {"d_model": self.d_model, "num_heads": self.num_heads,
                "dim_feedforward": self.dim_feedforward, "activation": self.activation,
                "causal": self.causal, "eps": self.eps}
