"""Losses and probabilities: softmax, cross-entropies, squared error, and DummyGrad.

Every loss takes ``reduction``: ``"mean"`` (the default) averages the
per-element losses, ``"sum"`` adds them, ``"none"`` returns them all.
"""
from __future__ import annotations

import math
import numbers

from ..errors import GraphError, NodeError, ShapeError
from ..graph import Node
from ._common import broadcast_problem, index_range
from .elementwise import sigmoid
from .reductions import as_axis, max_or_zero, reduction_axes

_REDUCTIONS = ("mean", "sum", "none")


def softmax(xp, logits, axis=-1):
    """exp(logits) normalised over ``axis``, shifted by the max so exp never overflows."""
    exp = xp.exp(logits - xp.max(logits, axis=axis, keepdims=True))
    return exp / xp.sum(exp, axis=axis, keepdims=True)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise GraphError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, "
                         f"not {reduction!r}")
    return reduction


def _reduce(xp, losses, reduction, count):
    """Combine per-element losses as ``reduction`` says (``count`` divides the mean)."""
    if reduction == "none":
        return losses
    total = xp.sum(losses)
    return total / count if reduction == "mean" else total


def _upstream(grad, reduction, count):
    """d loss / d (each per-element loss): grad / count, grad, or grad itself elementwise."""
    return grad / count if reduction == "mean" else grad


class _AlongAxis(Node):
    """A node normalising along one axis (softmax and its log)."""

    arity = 1

    def __init__(self, x, axis=-1, name=None):
        super().__init__(x, name=name)
        try:
            self.axis = as_axis(axis)
        except TypeError:
            raise GraphError(f"{type(self).__name__} needs one int axis, not {axis!r}") from None

    def _shifted(self, xp, x):
        """x - max(x) along the axis (the axis as a one-tuple too)."""
        axes = reduction_axes(self.axis, x.shape)
        return x - max_or_zero(xp, x, axes), axes


class Softmax(_AlongAxis):
    """y = exp(x) / sum(exp(x)) along ``axis`` (the last by default), shifted by max(x).

    dL/dx = y * (g - sum(g * y)) along the axis. A slice holding +inf or only
    -inf is nan, as in PyTorch.
    """

    def forward(self, ctx, x):
        xp = ctx.xp
        shifted, axes = self._shifted(xp, x)
        exp = xp.exp(shifted)
        y = exp / xp.sum(exp, axis=axes, keepdims=True)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        axes = reduction_axes(self.axis, y.shape)
        return (y * (grad - ctx.xp.sum(grad * y, axis=axes, keepdims=True)),)


class LogSoftmax(_AlongAxis):
    """y = x - log(sum(exp(x))) along ``axis``, shifted by max(x) so nothing overflows.

    dL/dx = g - exp(y) * sum(g) along the axis.
    """

    def forward(self, ctx, x):
        xp = ctx.xp
        shifted, axes = self._shifted(xp, x)
        y = shifted - xp.log(xp.sum(xp.exp(shifted), axis=axes, keepdims=True))
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        xp = ctx.xp
        (y,) = ctx.saved
        axes = reduction_axes(self.axis, y.shape)
        return (grad - xp.exp(y) * xp.sum(grad, axis=axes, keepdims=True),)


class MeanSquaredError(Node):
    """loss = (prediction - target)**2 per element, reduced by ``reduction`` (mean by default).

    d loss / d prediction = 2 (prediction - target) = -d loss / d target, times
    1/n for the mean. The two inputs broadcast together, as in NumPy.
    """

    arity = 2

    def __init__(self, prediction, target, reduction="mean", name=None):
        super().__init__(prediction, target, name=name)
        self.reduction = _check_reduction(reduction)

    def forward(self, ctx, prediction, target):
        diff = prediction - target
        ctx.save(diff)
        return _reduce(ctx.xp, diff * diff, self.reduction, math.prod(diff.shape))

    def backward(self, ctx, grad):
        (diff,) = ctx.saved
        grad_prediction = 2 * diff * _upstream(grad, self.reduction, math.prod(diff.shape))
        return grad_prediction, -grad_prediction

    def shape_problem(self, prediction_shape, target_shape):
        return broadcast_problem(prediction_shape, target_shape)


MSE = MeanSquaredError  # the short name PyTorch users look for


class BinaryCrossEntropyWithLogits(Node):
    """loss = -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), from logits x and targets t.

    Computed as (1 - t) x - log_sigmoid(x) with log_sigmoid(x) = min(x, 0) -
    log(1 + exp(-|x|)): nothing overflows for any finite logit, and infinite
    ones give what PyTorch gives. d loss / dx = sigmoid(x) - t, d loss / dt = -x.
    """

    arity = 2

    def __init__(self, logits, targets, reduction="mean", name=None):
        super().__init__(logits, targets, name=name)
        self.reduction = _check_reduction(reduction)

    def forward(self, ctx, x, t):
        xp = ctx.xp
        log_sigmoid = xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))
        losses = (1 - t) * x - log_sigmoid
        ctx.save(math.prod(losses.shape))
        return _reduce(xp, losses, self.reduction, math.prod(losses.shape))

    def backward(self, ctx, grad):
        x, t = ctx.inputs
        (count,) = ctx.saved
        need_x, need_t = ctx.needs_input_grad
        upstream = _upstream(grad, self.reduction, count)
        return ((sigmoid(ctx.xp, x) - t) * upstream if need_x else None,
                -x * upstream if need_t else None)

    def shape_problem(self, logits_shape, targets_shape):
        return broadcast_problem(logits_shape, targets_shape)


class CrossEntropyWithSoftmax(Node):
    """Cross-entropy of softmax(logits) against class labels (or class probabilities).

    Per position: loss = -sum_c q_c log softmax(logits)_c, where q is the one-hot
    of the label, smoothed to (1 - eps) q + eps / classes by ``label_smoothing``
    eps. d loss / d logits = softmax(logits) * sum_c q_c - q.

    Parameters
    ----------
    logits : Node
        (batch, classes), or (batch, classes, d1, ...) for a label per position
        (as PyTorch's ``cross_entropy``), or (classes,) for a single example.
    labels : Node
        Integer classes of shape (batch, d1, ...); with ``soft_targets=True``,
        class probabilities of the logits' shape (differentiable, like PyTorch).
    reduction : {"mean", "sum", "none"}
        "mean" divides by the number of positions not ignored (nan when every
        label is ignored, as in PyTorch; an empty batch is a ShapeError).
    label_smoothing : float in [0, 1]
    ignore_index : int or None
        Positions whose label equals it add nothing and do not count in the mean
        (it may lie outside [0, classes)). None (the default, unlike PyTorch's
        -100) checks every label.
    soft_targets : bool
        Take probabilities instead of integer labels.

    The two-argument form, mean over a (batch, classes) batch, is the last node
    of a classifier's graph (it needs no DummyGrad) and keeps the lab's values.
    """

    arity = 2

    integer_inputs = (1,)

    def __init__(self, logits, labels, reduction="mean", label_smoothing=0.0,
                 ignore_index=None, soft_targets=False, name=None):
        super().__init__(logits, labels, name=name)
        self.reduction = _check_reduction(reduction)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise GraphError(f"label_smoothing must be a number in [0, 1], not {label_smoothing!r}")
        if ignore_index is not None:
            try:
                ignore_index = as_axis(ignore_index)  # any integer but a bool, as a Python int
            except TypeError:
                raise GraphError(f"ignore_index must be an int or None, not {ignore_index!r}"
                                 ) from None
        if soft_targets and ignore_index is not None:
            raise GraphError("ignore_index applies to integer labels, not to soft_targets")
        self.label_smoothing, self.ignore_index = float(label_smoothing), ignore_index
        self.soft_targets = bool(soft_targets)
        if self.soft_targets:
            self.integer_inputs = ()  # probabilities are floats, and differentiable
        # The lab's two-argument form, with fast rules of its own (and a planned kernel).
        self.lab_form = (reduction == "mean" and not label_smoothing and ignore_index is None
                         and not soft_targets)

    # -- the lab's form: mean over (batch, classes), one label per row -------------------

    def forward(self, ctx, logits, labels):
        if not (self.lab_form and logits.ndim == 2):
            return self._forward_general(ctx, logits, labels)
        xp = ctx.xp
        batch, classes = _check_label_shapes(xp, logits, labels)
        # One-hot by comparison: standard everywhere, unlike a fancy-index scatter.
        is_label = labels[:, None] == index_range(xp, classes, labels.dtype)
        # A row holds at most one match, so fewer matches than rows means a label
        # outside [0, classes): one reduction checks them all.
        # A compiled (traced) step checks labels on the host, outside the trace.
        if not getattr(ctx, "tracing", False) and int(xp.count_nonzero(is_label)) != batch:
            _label_error(xp, labels, classes)
        one_hot = xp.astype(is_label, logits.dtype)
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=-1, keepdims=True)
        ctx.save(exp / total, one_hot)
        # mean(-log softmax[label]) = mean(log total - shifted[label])
        return (xp.sum(xp.log(total)) - xp.sum(one_hot * shifted)) / batch

    def backward(self, ctx, grad):
        if len(ctx.saved) != 2:
            return self._backward_general(ctx, grad)
        probs, one_hot = ctx.saved
        # d loss / d logits = (softmax - one_hot) / batch
        return (probs - one_hot) * (grad / probs.shape[0]), None

    # -- every option: reductions, N-D logits, smoothing, ignored labels, probabilities --

    def _forward_general(self, ctx, logits, labels):
        xp = ctx.xp
        axis = self._class_axis(logits)
        # A compiled (traced) step checks labels on the host, outside the trace.
        checked = not getattr(ctx, "tracing", False)
        targets, count, masks = self._target_distribution(xp, logits, labels, axis, checked)
        shifted = logits - max_or_zero(xp, logits, (axis,))
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=axis, keepdims=True)
        log_probs = shifted - xp.log(total)
        losses = -xp.sum(targets * log_probs, axis=axis)
        if self.reduction == "mean" and isinstance(count, int) and count == 0:
            raise ShapeError(f"logits of shape {tuple(logits.shape)} hold no positions: the "
                             "mean loss of nothing is undefined")
        ctx.save(exp / total, targets, log_probs, count, masks)
        return _reduce(xp, losses, self.reduction, count)

    def _backward_general(self, ctx, grad):
        xp = ctx.xp
        probs, targets, log_probs, count, masks = ctx.saved
        axis = self._class_axis(probs)
        if self.reduction == "mean" and self.ignore_index is not None:
            # With every label ignored the mean is 0/0 = nan, but the loss then depends on
            # no logit: its gradient is 0, as in PyTorch. The targets are all 0 there, and
            # dividing by at least 1 keeps 0 * (grad / 0) from turning that 0 into nan.
            count = xp.maximum(count, 1)
        upstream = _upstream(grad, self.reduction, count)
        if self.reduction == "none":
            upstream = xp.expand_dims(upstream, axis=axis)
        need_logits, need_targets = ctx.needs_input_grad
        grad_logits = grad_targets = None
        if need_logits:
            # As PyTorch: the gradient with respect to log-softmax, then log-softmax's
            # rule G - softmax * sum(G). Its pieces are selected, not multiplied by 0 (as
            # nll_loss scatters into zeros, and smoothing skips ignored positions), so an
            # infinite upstream gradient gives inf and nan where PyTorch's does.
            zero = xp.zeros((), dtype=probs.dtype)
            if masks is None:  # probabilities: PyTorch multiplies them in
                wrt_log_probs = -upstream * targets
            else:
                is_label, kept = masks
                wrt_log_probs = xp.where(is_label, -((1 - self.label_smoothing) * upstream),
                                         zero)
                if self.label_smoothing:
                    smooth = -(self.label_smoothing / probs.shape[axis]) * upstream
                    wrt_log_probs = wrt_log_probs + (
                        smooth if kept is None else xp.where(kept, smooth, zero))
            grad_logits = wrt_log_probs - probs * xp.sum(wrt_log_probs, axis=axis, keepdims=True)
        if need_targets:  # only probabilities are differentiable; smoothing scales them
            grad_targets = -(1 - self.label_smoothing) * log_probs * upstream
        return grad_logits, grad_targets

    @staticmethod
    def _class_axis(logits):
        return 1 if logits.ndim > 1 else 0

    def index_limits(self, logits_shape, labels_shape):
        if self.soft_targets or not logits_shape:
            return {}
        classes = logits_shape[1 if len(logits_shape) > 1 else 0]
        return {1: (classes, self.ignore_index)}

    def _target_distribution(self, xp, logits, labels, axis, checked=True):
        """(q, count, masks): the smoothed target distribution along ``axis``, the mean's
        divisor, and for integer labels (is_label, kept): where q holds a label (not
        ignored) and which positions are kept (None without ``ignore_index``)."""
        if logits.ndim == 0:
            raise ShapeError("logits must have a class axis: (classes,), (batch, classes) or "
                             "(batch, classes, d1, ...); got a scalar")
        classes = logits.shape[axis]
        if classes == 0:
            raise ShapeError(f"logits of shape {tuple(logits.shape)} have no classes "
                             f"(axis {axis} is empty)")
        eps = self.label_smoothing
        if self.soft_targets:
            if labels.shape != logits.shape:
                raise ShapeError(f"soft targets must have the logits' shape {tuple(logits.shape)},"
                                 f" got {tuple(labels.shape)}")
            count = math.prod(logits.shape) // classes
            return (labels * (1 - eps) + eps / classes if eps else labels), count, None
        positions = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
        if tuple(labels.shape) != positions:
            raise ShapeError(f"need one label per position: logits have shape "
                             f"{tuple(logits.shape)} (classes on axis {axis}), so labels need "
                             f"shape {positions}, got {tuple(labels.shape)}")
        if not xp.isdtype(labels.dtype, "integral"):
            raise NodeError(f"labels must be integers, got dtype {labels.dtype}")
        classes_along_axis = xp.reshape(index_range(xp, classes, labels.dtype),
                                        (classes,) + (1,) * (logits.ndim - axis - 1))
        labels = xp.expand_dims(labels, axis=axis)
        is_label = labels == classes_along_axis
        count = math.prod(positions)
        if self.ignore_index is None:
            if checked and int(xp.count_nonzero(is_label)) != count:
                _label_error(xp, labels, classes)
        else:
            kept = labels != self.ignore_index
            is_label = is_label & kept
            if checked and int(xp.count_nonzero(kept) - xp.count_nonzero(is_label)):
                _label_error(xp, labels, classes, self.ignore_index)
            # An array: how many labels are kept is known only on the device.
            count = xp.sum(xp.astype(kept, logits.dtype))
        q = xp.astype(is_label, logits.dtype)
        if eps:
            q = q * (1 - eps) + eps / classes
            if self.ignore_index is not None:
                q = q * xp.astype(kept, logits.dtype)
        return q, count, (is_label, None if self.ignore_index is None else kept)

    def correct(self, xp, logits, labels) -> float:
        """The fraction of positions whose largest logit is at the label (ignored ones left out)."""
        axis = self._class_axis(logits)
        predicted = xp.argmax(logits, axis=axis)
        if self.soft_targets:
            labels = xp.argmax(labels, axis=axis)
        hits = predicted == labels
        if self.ignore_index is None:
            return int(xp.count_nonzero(hits)) / math.prod(predicted.shape)
        kept = labels != self.ignore_index
        counted = int(xp.count_nonzero(kept))
        if counted == 0:
            raise NodeError(f"every label equals ignore_index={self.ignore_index}: "
                            "accuracy over no positions is undefined")
        return int(xp.count_nonzero(hits & kept)) / counted

    def _softmax(self, logits):
        """The class probabilities for ``logits`` (any array-like; for inspection)."""
        from ..backends import infer_backend

        backend = infer_backend([("logits", logits)])
        array = backend.accept(logits, what="logits")
        return softmax(backend.xp, array, axis=self._class_axis(array))


def _label_error(xp, labels, classes, ignore_index=None):
    """Raise the error for labels outside [0, classes), naming the range of the labels.

    Called once a count of the one-hot's ones (one value brought to the host) fell
    short: a label outside the classes matches none of them.
    """
    if ignore_index is None:
        allowed, low, high = f"[0, {classes})", xp.min(labels), xp.max(labels)
    else:  # the range of the labels that are not ignored
        kept = labels != ignore_index
        allowed = f"[0, {classes}) or equal ignore_index={ignore_index}"
        low = xp.min(xp.where(kept, labels, xp.max(labels)))
        high = xp.max(xp.where(kept, labels, xp.min(labels)))
    raise NodeError(f"labels must lie in {allowed}; got values from {int(low)} to {int(high)}")


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
