"""Convolutional-network layers on NCHW images: convolution, pooling, dropout, normalisation.

Convolution and pooling are lowered to sliding *windows*: for each of the
``kh * kw`` kernel offsets, one strided slice of the (padded) input gives the
pixel every output position sees at that offset. Stacked, they form the
"columns" ``(N, OH, OW, kh*kw, C)``; a convolution is then one matrix product
with the kernel, a pooling a reduction over the offset axis. The backward
pass "folds" gradient columns back, adding each offset's slice into the
input's gradient. Everything is Array-API slicing, stacking and matmul: no
Python loop over images or pixels, only over kernel offsets (9 for 3x3).

A backend may offer faster versions of the window primitives (NumPy's
strided views, in-place slice adds) and of a few pieces of the rules, named in
``Backend.FAST_PATHS``; they must give the same results as the ones here.
"""
from __future__ import annotations

import math
import numbers

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import as_int, on_mean_as_zero


# -- argument normalisation (at construction, on Python values only) ---------------------

def _pair(value, what: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints (NumPy integers too) >= ``low``; GraphError naming ``what``."""
    try:
        pair = (as_int(value, what, low),) * 2
    except GraphError:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise GraphError(f"{what} must be an integer >= {low} or a pair of them, got "
                             f"{value!r}") from None
        pair = tuple(as_int(v, what, low) for v in value)
    return pair


def _padding(padding, what="padding") -> tuple[tuple[int, int], tuple[int, int]] | str:
    """0, 2, (1, 2) or "same"/"valid" -> ((top, bottom), (left, right)), or "same"."""
    if isinstance(padding, str) and padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, str) and padding == "same":
        return "same"
    if isinstance(padding, str):
        raise GraphError(f"{what} must be an integer, a pair, 'same' or 'valid', "
                         f"got {padding!r}")
    ph, pw = _pair(padding, what, 0)
    return ((ph, ph), (pw, pw))


def _same_padding(kernel, dilation):
    """The padding that keeps the size at stride 1; the odd pixel goes after (as PyTorch)."""
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _output_size(size, pads, k, s, d) -> int:
    return (size + pads[0] + pads[1] - d * (k - 1) - 1) // s + 1


# -- the window primitives (Array API; backends may override them) -------------------------
#
# They work on channels-last images (N, H, W, C): then a window's C*kh*kw values
# are contiguous, the columns of a batch form one (N*OH*OW, C*kh*kw) matrix, and a
# convolution is a single matrix product. Nodes take and give NCHW; the
# transpositions are views on NumPy, and consecutive layers undo each other's.

def pad2d(xp, x, pads, value=0.0):
    """Pad axes 1 and 2 of ``x`` (N, H, W, C) by ``((top, bottom), (left, right))``."""
    for axis, (before, after) in ((1, pads[0]), (2, pads[1])):
        if before or after:
            parts = []
            for size in (before, after):
                shape = list(x.shape)
                shape[axis] = size
                parts.append(xp.full(tuple(shape), value, dtype=x.dtype))
            x = xp.concat([p for p in (parts[0], x, parts[1]) if p.shape[axis]], axis=axis)
    return x


def window_slices(x, kernel, stride, dilation, out_size):
    """For each kernel offset ``(i, j)``, in row order, the (N, OH, OW, C) slice of padded
    ``x`` (N, H, W, C) holding the pixel each output position sees at that offset."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    return [x[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def windows(xp, x, kernel, stride, dilation, out_size):
    """The columns of padded ``x`` (N, H, W, C): (N, OH, OW, kh*kw, C).

    ``[n, p, q, i*kw + j, c]`` is the pixel that output ``(p, q)`` sees in
    channel ``c`` at kernel offset ``(i, j)``. Offsets before channels: each
    slice is then copied in contiguous runs of C values (10x faster on NumPy
    than channels before offsets).
    """
    return xp.stack(window_slices(x, kernel, stride, dilation, out_size), axis=3)


def _spread(xp, piece, axis, step, length):
    """Put ``piece``'s entries ``step`` apart along ``axis`` (zeros between), ``length`` long."""
    if step > 1:
        shape = piece.shape
        piece = xp.expand_dims(piece, axis=axis + 1)
        zeros = xp.zeros((*shape[:axis + 1], step - 1, *shape[axis + 1:]), dtype=piece.dtype)
        piece = xp.concat([piece, zeros], axis=axis + 1)
        piece = xp.reshape(piece, (*shape[:axis], shape[axis] * step, *shape[axis + 1:]))
    if piece.shape[axis] > length:
        piece = piece[(slice(None),) * axis + (slice(0, length), ...)]
    return piece


def fold_windows(xp, pieces, shape, kernel, stride, dilation):
    """The adjoint of :func:`window_slices`: add each offset's piece back where it came from.

    ``pieces``, one (N, OH, OW, C) array per kernel offset -> an array of the
    padded input's ``shape`` (N, H, W, C).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    height, width = shape[1:3]
    oh, ow = pieces[0].shape[1:3]
    total = None
    for i in range(kh):
        for j in range(kw):
            piece = pieces[i * kw + j]
            # Spread the offset's values to the pixels they came from, then pad into place.
            piece = _spread(xp, piece, 1, sh, sh * (oh - 1) + 1 if oh else 0)
            piece = _spread(xp, piece, 2, sw, sw * (ow - 1) + 1 if ow else 0)
            top, left = i * dh, j * dw
            piece = pad2d(xp, piece, ((top, height - top - piece.shape[1]),
                                      (left, width - left - piece.shape[2])))
            total = piece if total is None else total + piece
    return total


def _pad(ctx, x, pads, value=0.0):
    fast = getattr(ctx.backend, "pad2d", None)
    if fast is not None:
        return fast(x, pads, value)
    return pad2d(ctx.xp, x, pads, value)


def _windows(ctx, x, kernel, stride, dilation, out_size):
    fast = getattr(ctx.backend, "windows", None)
    if fast is not None:
        return fast(x, kernel, stride, dilation, out_size)
    return windows(ctx.xp, x, kernel, stride, dilation, out_size)


def _fold(ctx, pieces, shape, kernel, stride, dilation):
    fast = getattr(ctx.backend, "fold_windows", None)
    if fast is not None:
        return fast(pieces, shape, kernel, stride, dilation)
    return fold_windows(ctx.xp, pieces, shape, kernel, stride, dilation)


def _unpad(x, pads):
    (top, bottom), (left, right) = pads
    if not (top or bottom or left or right):
        return x
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


def _channels_last(xp, x):
    return xp.permute_dims(x, (0, 2, 3, 1))


def _channels_first(xp, x):
    return xp.permute_dims(x, (0, 3, 1, 2))


def _check_images(x, what="x"):
    if x.ndim != 4:
        raise ShapeError(f"{what} must be a batch of images (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")


# -- the nodes ---------------------------------------------------------------------------

#: The most bytes of columns a convolution makes at once when no gradient will
#: need them (evaluation): a batch of 1,000 MNIST images through a 32-channel 3x3
#: convolution would otherwise hold 226 MB of columns.
EVAL_COLUMN_BYTES = 32 << 20


#: The fewest input channels for which a convolution's input gradient is computed as
#: one matrix product per kernel offset (below, the products are too narrow to pay).
PIECEWISE_CHANNELS = 16


def _itemsize(xp, dtype) -> int:
    try:
        return xp.finfo(dtype).bits // 8
    except (TypeError, ValueError):  # not a floating dtype
        return xp.iinfo(dtype).bits // 8


def _weight_rows(xp, w):
    """Kernels (O, C, kh, kw) as rows (O, kh*kw*C), in the order of the columns."""
    return xp.reshape(xp.permute_dims(w, (0, 2, 3, 1)), (w.shape[0], math.prod(w.shape[1:])))


def _column_sums(ctx, rows):
    """``sum(rows, axis=0)`` of a (M, O) array (a bias gradient), by the backend's faster
    version where it has one."""
    fast = getattr(ctx.backend, "column_sums", None)
    if fast is not None:
        return fast(rows)
    return ctx.xp.sum(rows, axis=0)


class _Windowed(Node):
    """Shared by convolution and pooling: kernel geometry and the padded output size."""

    def _geometry(self, x_shape, kernel):
        pads = (_same_padding(kernel, self.dilation) if self.padding == "same"
                else self.padding)
        out = tuple(_output_size(size, p, k, s, d) for size, p, k, s, d in
                    zip(x_shape[2:], pads, kernel, self.stride, self.dilation))
        if min(out) < 1:
            raise ShapeError(
                f"the {kernel[0]}x{kernel[1]} window (dilation {self.dilation}) does not fit "
                f"images of size {tuple(x_shape[2:])} padded by {pads}")
        return pads, out


class Conv2D(_Windowed):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW images.

    ``y[n, o] = b[o] + sum_c sum_ij w[o, c, i, j] * x[n, c, s*p + d*i, s*q + d*j]``
    over the padded input. Computed as one matrix product
    ``columns (N*OH*OW, kh*kw*C) @ w_rows.T (kh*kw*C, O)``.

    Parameters
    ----------
    x : Node
        Images (N, C, H, W).
    w : Node
        Kernels (O, C, kh, kw), PyTorch's layout.
    b : Node, optional
        Biases (O,).
    stride, dilation : int or (int, int)
        >= 1.
    padding : int, (int, int), "same" or "valid"
        Zeros added on each side; "same" keeps the size at stride 1.
    """

    arity = (2, 3)

    def __init__(self, x, w, b=None, *, stride=1, padding=0, dilation=1, name=None):
        inputs = (x, w) if b is None else (x, w, b)
        super().__init__(*inputs, name=name)
        self.stride = _pair(stride, "Conv2D stride", 1)
        self.dilation = _pair(dilation, "Conv2D dilation", 1)
        self.padding = _padding(padding, "Conv2D padding")
        if self.padding == "same" and self.stride != (1, 1):
            raise GraphError("padding='same' needs stride 1 (as in PyTorch)")

    def forward(self, ctx, x, w, b=None):
        xp = ctx.xp
        _check_images(x)
        if w.ndim != 4 or w.shape[1] != x.shape[1]:
            raise ShapeError(f"w must have shape (out_channels, {x.shape[1]}, kh, kw) for x of "
                             f"shape {tuple(x.shape)}, got {tuple(w.shape)}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ShapeError(f"b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        kernel = tuple(w.shape[2:])
        pads, (oh, ow) = self._geometry(x.shape, kernel)
        if x.shape[0] == 0:
            # An empty batch: nothing to compute (and Dask fails to reshape some empty arrays).
            ctx.save(None)
            return xp.zeros((0, w.shape[0], oh, ow), dtype=x.dtype)
        padded = _pad(ctx, _channels_last(xp, x), pads)
        n, o = x.shape[0], w.shape[0]
        width = kernel[0] * kernel[1] * x.shape[1]
        training = any(ctx.needs_input_grad)
        # Arrays this rule makes may be changed in place (a bias added into the
        # product: no second output-sized array) where the library allows it and no
        # compiler is tracing.
        in_place = getattr(ctx.backend, "writable_arrays", False) \
            and not getattr(ctx, "tracing", False)
        if not training and width > o:
            # No gradient will read the columns (evaluation), and they are width / O
            # times the size of the output: made a few images at a time instead.
            per_image = oh * ow * width * _itemsize(xp, x.dtype)
            chunk = max(1, EVAL_COLUMN_BYTES // per_image)
            if chunk < n:
                weights = xp.matrix_transpose(_weight_rows(xp, w))
                y = xp.empty((n * oh * ow, o), dtype=x.dtype) if in_place else None
                parts = []
                for start in range(0, n, chunk):
                    cols = _windows(ctx, padded[start:start + chunk], kernel, self.stride,
                                    self.dilation, (oh, ow))
                    m = cols.shape[0]
                    part = xp.reshape(cols, (m * oh * ow, width)) @ weights
                    del cols  # before the next chunk's columns are made
                    if in_place:
                        y[start * oh * ow:(start + m) * oh * ow, :] = part
                    else:
                        parts.append(part)
                    del part
                if not in_place:
                    y = xp.concat(parts, axis=0)
                    del parts
                return _channels_first(xp, xp.reshape(self._add_bias(y, b, in_place),
                                                      (n, oh, ow, o)))
        cols = _windows(ctx, padded, kernel, self.stride, self.dilation, (oh, ow))
        # Sizes spelled out, not -1: -1 is ambiguous when the batch is empty.
        rows = xp.reshape(cols, (n * oh * ow, cols.shape[3] * cols.shape[4]))  # a row per pixel
        if training:  # (evaluating, nothing reads them after this product)
            ctx.save(rows, cols.shape, padded.shape, pads)
        y = self._add_bias(rows @ xp.matrix_transpose(_weight_rows(xp, w)), b, in_place)
        return _channels_first(xp, xp.reshape(y, (n, oh, ow, o)))

    @staticmethod
    def _add_bias(y, b, in_place):
        if b is None:
            return y
        if in_place and b.dtype == y.dtype:
            y += b  # y is this rule's own product
            return y
        return y + b  # (a bias of another dtype promotes y: a new array)

    def backward(self, ctx, grad):
        xp = ctx.xp
        x, w = ctx.inputs[:2]
        if ctx.saved[0] is None:  # the empty batch: no pixel contributes to anything
            return tuple(xp.zeros_like(value) for value in ctx.inputs)
        rows, cols_shape, padded_shape, pads = ctx.saved
        needs = ctx.needs_input_grad
        o = w.shape[0]
        grad_rows = xp.reshape(_channels_last(xp, grad), (math.prod(cols_shape[:3]), o))
        grad_x = grad_w = grad_b = None
        if needs[1]:
            # rows.T @ grad_rows, transposed, rather than grad_rows.T @ rows: the same
            # numbers, but OpenBLAS splits this long-inner-axis product badly across
            # threads the other way round (measured 40x slower on two busy cores).
            grad_w_rows = xp.matrix_transpose(xp.matrix_transpose(rows) @ grad_rows)
            o, c, kh, kw = w.shape
            grad_w = xp.permute_dims(xp.reshape(grad_w_rows, (o, kh, kw, c)), (0, 3, 1, 2))
        if len(needs) > 2 and needs[2]:
            grad_b = _column_sums(ctx, grad_rows)
        if needs[0]:
            w_rows, c = _weight_rows(xp, w), cols_shape[4]
            if c >= PIECEWISE_CHANNELS:
                # One product per kernel offset, each a contiguous (N, OH, OW, C) piece:
                # the fold then adds runs of OW*C values, not of C. On NumPy the fold
                # takes half the time (the CNN's second convolution: 7 -> 3.6 ms) and
                # the narrower products 2 ms more than one wide one: ~1 ms less.
                pieces = [xp.reshape(grad_rows @ w_rows[:, k * c:(k + 1) * c],
                                     cols_shape[:3] + (c,))
                          for k in range(cols_shape[3])]
            else:
                grad_cols = xp.reshape(grad_rows @ w_rows, cols_shape)
                pieces = [grad_cols[:, :, :, k, :] for k in range(cols_shape[3])]
            grad_padded = _fold(ctx, pieces, padded_shape, tuple(w.shape[2:]), self.stride,
                                self.dilation)
            grad_x = _channels_first(xp, _unpad(grad_padded, pads))
        return (grad_x, grad_w, grad_b)[:len(needs)]  # no bias input, no bias gradient


class _Pool2D(_Windowed):
    def __init__(self, x, kernel, stride=None, padding=0, *, name=None):
        super().__init__(x, name=name)
        kind = type(self).__name__
        self.kernel = _pair(kernel, f"{kind} kernel", 1)
        self.stride = self.kernel if stride is None else _pair(stride, f"{kind} stride", 1)
        self.dilation = (1, 1)
        self.padding = _padding(padding, f"{kind} padding")
        if self.padding == "same":
            raise GraphError(f"{type(self).__name__} takes a number of pixels as padding, "
                             "not 'same'")
        if any(2 * p[0] > k for p, k in zip(self.padding, self.kernel)):
            raise GraphError(f"padding {self.padding} must be at most half the kernel "
                             f"{self.kernel} (as in PyTorch)")

    arity = 1

    def _slices(self, ctx, x, fill):
        """The window slices of x, channels last (see :func:`window_slices`)."""
        _check_images(x)
        pads, out = self._geometry(x.shape, self.kernel)
        padded = _pad(ctx, _channels_last(ctx.xp, x), pads, fill)
        return window_slices(padded, self.kernel, self.stride, self.dilation, out), \
            padded.shape, pads

    def _fold_back(self, ctx, pieces, padded_shape, pads):
        """Gradient pieces, one per kernel offset -> the gradient of x (N, C, H, W)."""
        grad = _fold(ctx, pieces, padded_shape, self.kernel, self.stride, self.dilation)
        return _channels_first(ctx.xp, _unpad(grad, pads))


class MaxPool2D(_Pool2D):
    """The largest value of each ``kernel`` window, moving by ``stride`` (default: kernel).

    Padding is never chosen. The gradient goes to the first largest value of
    each window (in row order), or to its last NaN, exactly as in PyTorch's CPU
    kernel; in a window of -inf values and padding, to its first real pixel.
    """

    def forward(self, ctx, x):
        xp = ctx.xp
        tiled = self._tiled(ctx, x)
        if tiled is not None:
            return tiled
        slices, padded_shape, pads = self._slices(ctx, x, -math.inf)
        # A running maximum over the kernel offsets (no (..., kh*kw) copy of the
        # windows) and, when a gradient will flow back, the offset of each window's
        # winner, following PyTorch's scan: an offset wins when it beats the largest
        # value before it or is NaN. The winner is the largest k that won (k only grows).
        track = ctx.needs_input_grad[0]
        index_type = xp.int8 if len(slices) <= 127 else xp.int32
        # Padding is -inf, which a real -inf does not beat: PyTorch scans only the real
        # pixels, so the first real one wins a window of -inf. Where there is padding,
        # a real pixel also wins while no real pixel has been seen.
        real = self._real_pixels(xp, x, pads) if track and any(sum(pads, ())) else None
        largest = slices[0]
        winner = xp.zeros(largest.shape, dtype=index_type) if track else None
        seen = None if real is None else real[0]
        for k, piece in enumerate(slices[1:], start=1):
            if track:
                beats = xp.logical_or(piece > largest, xp.isnan(piece))
                if real is not None:
                    beats = xp.logical_and(real[k], xp.logical_or(beats, xp.logical_not(seen)))
                    seen = xp.logical_or(seen, real[k])
                winner = xp.maximum(winner, xp.astype(beats, index_type) * k)
            largest = xp.maximum(largest, piece)
        ctx.save(winner, len(slices), padded_shape, pads, False)
        return _channels_first(xp, largest)

    def _tiled(self, ctx, x):
        """The backend's fast path for windows that tile x exactly (no padding, stride =
        kernel, sizes divisible), or None where it does not apply."""
        fast = getattr(ctx.backend, "max_pool_tiles", None)
        if fast is None or getattr(ctx, "tracing", False) or x.ndim != 4 \
                or self.stride != self.kernel or any(sum(self.padding, ())) \
                or x.shape[2] % self.kernel[0] or x.shape[3] % self.kernel[1] \
                or 0 in x.shape or self.kernel[0] * self.kernel[1] > 127:
            return None
        found = fast(_channels_last(ctx.xp, x), self.kernel, ctx.needs_input_grad[0])
        if found is None:  # a NaN: the general scan decides its winner
            return None
        largest, winner = found
        count = self.kernel[0] * self.kernel[1]
        padded_shape = (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
        ctx.save(winner, count, padded_shape, ((0, 0), (0, 0)), True)
        return _channels_first(ctx.xp, largest)

    def _real_pixels(self, xp, x, pads):
        """For each kernel offset, (1, OH, OW, 1): whether the pixel seen there is x's, not
        padding (a function of the geometry alone, broadcast over images and channels)."""
        inside = pad2d(xp, xp.ones((1, x.shape[2], x.shape[3], 1), dtype=xp.bool), pads, False)
        _, out = self._geometry(x.shape, self.kernel)
        return window_slices(inside, self.kernel, self.stride, self.dilation, out)

    def backward(self, ctx, grad):
        xp = ctx.xp
        winner, count, padded_shape, pads, tiled = ctx.saved
        grad = _channels_last(xp, grad)
        fast = getattr(ctx.backend, "max_pool_tiles_grad", None)
        if tiled and fast is not None and not getattr(ctx, "tracing", False):
            return (_channels_first(xp, fast(winner, grad, self.kernel)),)
        pieces = [xp.where(winner == k, grad, 0.0) for k in range(count)]
        return (self._fold_back(ctx, pieces, padded_shape, pads),)


class AvgPool2D(_Pool2D):
    """The mean of each ``kernel`` window; padded zeros count (PyTorch's default)."""

    def forward(self, ctx, x):
        xp = ctx.xp
        slices, padded_shape, pads = self._slices(ctx, x, 0.0)
        total = slices[0]
        for piece in slices[1:]:
            total = total + piece
        ctx.save(padded_shape, pads, len(slices))
        return _channels_first(xp, total / len(slices))

    def backward(self, ctx, grad):
        xp = ctx.xp
        padded_shape, pads, count = ctx.saved
        share = _channels_last(xp, grad) / count
        return (self._fold_back(ctx, [share] * count, padded_shape, pads),)


class Dropout(Node):
    """Zero each value with probability ``rate`` in training runs, scaling the rest by 1/(1-rate).

    Outside training (``miniflow.run(..., training=False)``, the default, and
    always in ``value_and_grad`` and ``evaluate``) it passes its input through,
    so predictions need no change.
    The mask is drawn from the run's generator (``ctx.rng``) by the backend,
    on the device: a run seeded the same way drops the same values.
    """

    arity = 1
    draws_random = True

    def __init__(self, x, rate: float = 0.5, *, name=None):
        super().__init__(x, name=name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
            raise GraphError(f"Dropout rate must lie in [0, 1], got {rate!r}")
        self.rate = float(rate)

    def forward(self, ctx, x):
        if not ctx.training or self.rate == 0:
            ctx.save(None)
            return x
        xp = ctx.xp
        if self.rate == 1:  # everything dropped: x * 0, as torch's dropout(x, p=1.0)
            keep = xp.zeros((), dtype=x.dtype)
            ctx.save(keep)
            return x * keep
        uniform = ctx.random_uniform(x.shape, x.dtype)
        keep = xp.astype(uniform >= self.rate, x.dtype) * (1.0 / (1.0 - self.rate))
        ctx.save(keep)
        return x * keep

    def backward(self, ctx, grad):
        keep, = ctx.saved
        return (grad if keep is None else grad * keep,)


class LayerNorm(Node):
    """Normalise each example over its last ``weight.ndim`` axes, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, as
    ``torch.nn.functional.layer_norm(x, weight.shape, weight, bias, eps)``. The
    statistics are the example's own, so the node keeps no state between runs
    (unlike batch normalisation, whose running averages would have to be an
    output of the run).
    """

    arity = 3

    def __init__(self, x, weight, bias, *, eps: float = 1e-5, name=None):
        super().__init__(x, weight, bias, name=name)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
            raise GraphError(f"LayerNorm eps must be positive, a finite number, got {eps!r}")
        self.eps = float(eps)

    def forward(self, ctx, x, weight, bias):
        xp = ctx.xp
        k = weight.ndim
        if tuple(x.shape[x.ndim - k:]) != tuple(weight.shape) or bias.shape != weight.shape:
            raise ShapeError(f"weight and bias must both have the shape of x's last axes: x "
                             f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias "
                             f"{tuple(bias.shape)}")
        axes = tuple(range(x.ndim - k, x.ndim))
        centred = x - xp.mean(x, axis=axes, keepdims=True)
        var = xp.mean(centred * centred, axis=axes, keepdims=True)
        # A variance that overflowed (|x| past ~1e154 in float64) would give 1/sqrt(inf) = 0
        # and an output of zeros that looks valid; nan says it is not, as PyTorch does.
        inv_std = xp.where(xp.isinf(var), math.nan, 1.0 / xp.sqrt(var + self.eps))
        normalised = centred * inv_std
        ctx.save(normalised, inv_std, axes)
        return normalised * weight + bias

    def backward(self, ctx, grad):
        xp = ctx.xp
        weight = ctx.inputs[1]
        normalised, inv_std, axes = ctx.saved
        lead = tuple(range(grad.ndim - weight.ndim))
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = None
        if need_x:
            g = grad * weight
            grad_x = inv_std * (g - xp.mean(g, axis=axes, keepdims=True)
                                - normalised * xp.mean(g * normalised, axis=axes,
                                                       keepdims=True))
        grad_w = None
        if need_w:
            # Where an inf or nan from above meets an element on its example's mean, the
            # normalised value is a rounding residue (PyTorch's +inf, -inf or nan there
            # follows how its mean was summed): taken as 0, so nan, as Var does.
            normalised = on_mean_as_zero(xp, ctx.inputs[0], axes, grad, normalised, inv_std)
            grad_w = xp.sum(grad * normalised, axis=lead)
        grad_b = xp.sum(grad, axis=lead) if need_b else None
        return grad_x, grad_w, grad_b
