"""Oracle specs of the losses and probabilities (see tests/oracle.py)."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from miniflow import (BinaryCrossEntropyWithLogits, CrossEntropyWithSoftmax, LogSoftmax,
                      MeanSquaredError, Softmax)
from oracle import Case, OpSpec, broadcasting, shapes, values

REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


@st.composite
def logits_and_labels(draw):
    batch, classes = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    return draw(values((batch, classes), -10, 10)), np.array(labels, dtype=np.int64)


@st.composite
def cross_entropy_case(draw):
    """Logits (classes,), (batch, classes) or (batch, classes, d1, ...), with every option drawn.

    Labels are integers (some or all equal to ignore_index, which may lie outside
    the classes) or class probabilities. With every label ignored the mean is nan
    on both sides and its gradient 0.
    """
    classes = draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["vector", "rows", "positions"]))
    positions = {"vector": (), "rows": (draw(st.integers(1, 4)),),
                 "positions": (draw(st.integers(1, 3)), *draw(shapes(1, 2, 1, 3)))}[layout]
    shape = positions[:1] + (classes,) + positions[1:]
    kwargs = {"reduction": draw(REDUCTIONS),
              "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))}
    logits = draw(values(shape, -10, 10))
    if draw(st.booleans()):
        kwargs["soft_targets"] = True
        raw = draw(values(shape, 0.0, 1.0))
        if draw(st.booleans()):  # normalised along the classes, or any non-negative weights
            raw = raw / np.maximum(raw.sum(axis=min(1, len(shape) - 1), keepdims=True), 1e-3)
        return Case((logits, raw), kwargs)
    labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=int(np.prod(positions)),
                                    max_size=int(np.prod(positions)))), dtype=np.int64)
    labels = labels.reshape(positions)
    if draw(st.booleans()):
        ignore = draw(st.sampled_from([-100, 0, classes]))
        mask = np.array(draw(st.lists(st.booleans(), min_size=labels.size,
                                      max_size=labels.size)), dtype=bool).reshape(positions)
        kwargs["ignore_index"] = ignore
        labels = np.where(mask, ignore, labels)
    return Case((logits, labels), kwargs)


class LabCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits, labels)`` with PyTorch's own gradient but for the one
    difference README documents ("Where libraries differ"): miniflow's two-argument
    form (mean over (batch, classes), no option) computes (softmax - one_hot) * g / batch,
    so where the upstream gradient g is infinite a label's logit gets (softmax - 1) * g /
    batch (-inf for g = inf), where PyTorch's log-softmax rule makes inf - inf = nan.
    Everywhere else, and for every finite g, the gradient is PyTorch's."""

    @staticmethod
    def forward(ctx, logits, labels):
        ctx.save_for_backward(logits, labels)
        return F.cross_entropy(logits, labels)

    @staticmethod
    def backward(ctx, grad):
        logits, labels = ctx.saved_tensors
        # Grad mode is on here only under create_graph=True: then this rule is itself
        # recorded (second derivatives), so it differentiates the saved logits, not a copy.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            source = logits if create_graph else logits.detach().requires_grad_()
            (theirs,) = torch.autograd.grad(F.cross_entropy(source, labels), source, grad,
                                            create_graph=create_graph)
        at_label = F.one_hot(labels, logits.shape[1]).bool() & torch.isinf(grad)
        ours = (torch.softmax(logits, 1) - 1) * (grad / logits.shape[0])
        return torch.where(at_label, ours, theirs), None


def lab_cross_entropy(logits, labels):
    return LabCrossEntropy.apply(logits, labels)


def torch_cross_entropy(logits, targets, reduction="mean", label_smoothing=0.0,
                        ignore_index=None, soft_targets=False):
    if (logits.ndim == 2 and reduction == "mean" and not label_smoothing
            and ignore_index is None and not soft_targets):
        return lab_cross_entropy(logits, targets)  # miniflow's two-argument form
    return F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing,
                           ignore_index=-100 if ignore_index is None else ignore_index)


@st.composite
def along_axis_case(draw):
    shape = draw(shapes(min_dims=1))
    return Case((draw(values(shape, -10, 10)),),
                {"axis": draw(st.integers(-len(shape), len(shape) - 1))})


@st.composite
def pair_case(draw, low=-3.0, high=3.0, target_low=-3.0, target_high=3.0):
    """Two arrays of one shape and a reduction ("mean" only where the shape holds elements)."""
    shape = draw(shapes())
    reductions = ["sum", "none"] + (["mean"] if int(np.prod(shape)) else [])
    return Case((draw(values(shape, low, high)), draw(values(shape, target_low, target_high))),
                {"reduction": draw(st.sampled_from(reductions))})


@st.composite
def broadcast_pair_case(draw):
    prediction, target = draw(broadcasting())
    size = int(np.prod(np.broadcast_shapes(prediction.shape, target.shape)))
    return Case((prediction, target),
                {"reduction": draw(st.sampled_from(["sum", "none"] + (["mean"] if size else [])))})


SPECS = [
    OpSpec("CrossEntropyWithSoftmax", CrossEntropyWithSoftmax, lab_cross_entropy,
           logits_and_labels(), arity=2),
    OpSpec("CrossEntropyWithSoftmax options", CrossEntropyWithSoftmax, torch_cross_entropy,
           cross_entropy_case(), arity=2),
    OpSpec("Softmax", Softmax, lambda x, axis: torch.softmax(x, dim=axis), along_axis_case()),
    OpSpec("LogSoftmax", LogSoftmax, lambda x, axis: torch.log_softmax(x, dim=axis),
           along_axis_case()),
    OpSpec("MeanSquaredError", MeanSquaredError,
           lambda p, t, reduction: F.mse_loss(*torch.broadcast_tensors(p, t), reduction=reduction),
           broadcast_pair_case(), arity=2),
    # Logits far beyond exp's range (|x| up to 1000) check the stable form.
    OpSpec("BinaryCrossEntropyWithLogits", BinaryCrossEntropyWithLogits,
           F.binary_cross_entropy_with_logits,
           st.one_of(pair_case(-30, 30, 0.0, 1.0), pair_case(-1000, 1000, 0.0, 1.0)), arity=2),
]
