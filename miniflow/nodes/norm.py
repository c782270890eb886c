"""Batch normalisation: statistics over the batch in training runs, running ones otherwise.

The running statistics are inputs, never state of the node: a training run
computes their next values as ordinary nodes (see :class:`miniflow.nn.BatchNorm`),
which the trainer asks for with ``run(..., extras=...)`` and feeds back next step.
"""
from __future__ import annotations

import math
import numbers

from ..errors import GraphError, ShapeError
from ..graph import Node


class BatchNorm(Node):
    """Normalise each channel (axis 1) over the batch and any further axes, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with ``weight``,
    ``bias``, ``running_mean`` and ``running_var`` of shape (channels,), as
    ``torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
    training, eps=eps)``: in a training run (``run(..., training=True)``) mean and
    (biased) variance are the batch's own, over every axis but 1; otherwise the
    running ones are used. The running statistics are data (never differentiated).
    """

    arity = 5
    nondifferentiable_inputs = (3, 4)

    def __init__(self, x, weight, bias, running_mean, running_var, *, eps: float = 1e-5,
                 name=None):
        super().__init__(x, weight, bias, running_mean, running_var, name=name)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
            raise GraphError(f"BatchNorm eps must be positive, a finite number, got {eps!r}")
        self.eps = float(eps)

    def forward(self, ctx, x, weight, bias, running_mean, running_var):
        xp = ctx.xp
        if x.ndim < 2 or any(tuple(v.shape) != (x.shape[1],)
                             for v in (weight, bias, running_mean, running_var)):
            raise ShapeError(
                f"x must be (batch, channels, ...) and weight, bias, running_mean and "
                f"running_var (channels,): x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                f"bias {tuple(bias.shape)}, running_mean {tuple(running_mean.shape)}, "
                f"running_var {tuple(running_var.shape)}")
        axes = (0, *range(2, x.ndim))
        per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        training = ctx.training
        if training:
            centred = x - xp.mean(x, axis=axes, keepdims=True)
            var = xp.mean(centred * centred, axis=axes, keepdims=True)
        else:
            centred = x - xp.reshape(running_mean, per_channel)
            var = xp.reshape(running_var, per_channel)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        normalised = centred * inv_std
        ctx.save(normalised, inv_std, axes, per_channel, training)
        return normalised * xp.reshape(weight, per_channel) + xp.reshape(bias, per_channel)

    def backward(self, ctx, grad):
        xp = ctx.xp
        normalised, inv_std, axes, per_channel, training = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = None
        if need_x:
            g = grad * xp.reshape(ctx.inputs[1], per_channel)
            if training:  # the batch's mean and variance depend on x too
                grad_x = inv_std * (g - xp.mean(g, axis=axes, keepdims=True)
                                    - normalised * xp.mean(g * normalised, axis=axes,
                                                           keepdims=True))
            else:
                grad_x = g * inv_std
        grad_w = xp.sum(grad * normalised, axis=axes) if need_w else None
        grad_b = xp.sum(grad, axis=axes) if need_b else None
        return grad_x, grad_w, grad_b, None, None
