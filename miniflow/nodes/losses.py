"""Losses and probabilities: softmax cross-entropy, and DummyGrad for checking a single node."""
from __future__ import annotations

from ..errors import NodeError, ShapeError
from ..graph import Node


def softmax(xp, logits):
    """exp(logits) normalised over the last axis, shifted by the max so exp never overflows."""
    exp = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return exp / xp.sum(exp, axis=-1, keepdims=True)


class CrossEntropyWithSoftmax(Node):
    """Mean over the batch of -log softmax(logits)[label].

    ``logits`` has shape (batch, classes); ``labels`` holds one integer class
    per row. The last node of a classifier's graph: it needs no DummyGrad.
    """

    arity = 2

    integer_inputs = (1,)

    def forward(self, ctx, logits, labels):
        xp = ctx.xp
        batch, classes = _check_label_shapes(xp, logits, labels)
        # One-hot by comparison: standard everywhere, unlike a fancy-index scatter.
        is_label = labels[:, None] == xp.arange(classes, dtype=labels.dtype)
        # A row holds at most one match, so fewer matches than rows means a label
        # outside [0, classes): one reduction checks them all.
        if not getattr(ctx, "tracing", False) and int(xp.count_nonzero(is_label)) != batch:
            raise NodeError(f"labels must lie in [0, {classes}); got values from "
                            f"{int(xp.min(labels))} to {int(xp.max(labels))}")
        one_hot = xp.astype(is_label, logits.dtype)
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=-1, keepdims=True)
        ctx.save(exp / total, one_hot)
        # mean(-log softmax[label]) = mean(log total - shifted[label])
        return (xp.sum(xp.log(total)) - xp.sum(one_hot * shifted)) / batch

    def backward(self, ctx, grad):
        probs, one_hot = ctx.saved
        # d loss / d logits = (softmax - one_hot) / batch
        return (probs - one_hot) * (grad / probs.shape[0]), None

    def correct(self, xp, logits, labels) -> float:
        """The fraction of rows whose largest logit is at the label."""
        hits = xp.argmax(logits, axis=-1) == labels
        return int(xp.count_nonzero(hits)) / logits.shape[0]

    def _softmax(self, logits):
        """The class probabilities for ``logits`` (any array-like; for inspection)."""
        from ..backends import infer_backend

        backend = infer_backend([("logits", logits)])
        return softmax(backend.xp, backend.accept(logits, what="logits"))


def _check_label_shapes(xp, logits, labels) -> tuple[int, int]:
    """Check logits are (batch, classes) and labels one integer per row; return both sizes."""
    if logits.ndim != 2:
        raise ShapeError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ShapeError(f"need one label per row: logits have shape {tuple(logits.shape)}, "
                         f"labels {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ShapeError("the batch is empty: the mean loss of no rows is undefined")
    if not xp.isdtype(labels.dtype, "integral"):
        raise NodeError(f"labels must be integers, got dtype {labels.dtype}")
    return logits.shape


class DummyGrad(Node):
    """Passes its input through; its upstream gradient is fed, not assumed to be 1.

    ``feed_dict[dummy] = g`` makes ``value_and_grad(dummy, ...)`` return the
    gradients of ``sum(g * x)``: how the lab checks a single node's backward.
    """

    arity = 1

    gradient_is_fed = True

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, grad):
        return (grad,)
