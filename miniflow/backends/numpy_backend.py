"""NumPy on the CPU: the default backend."""
import numpy as np

from ..errors import FeedError
from .base import Backend, refuse_array_subclass


class NumpyBackend(Backend):
    writable_arrays = True

    def __init__(self):
        super().__init__("numpy", "numpy", "pip install numpy")

    def _load(self):
        return _fast_namespace()

    def owns(self, value):
        # NumPy scalars (np.float32(3)) behave as 0-d arrays, so they count too.
        return isinstance(value, (np.ndarray, np.generic))

    def accept(self, value, *, integer=False, what="value"):
        # The hot path of every training step: a NumPy array, used as is.
        if isinstance(value, (np.ndarray, np.generic)):
            if type(value) is not np.ndarray and not isinstance(value, np.generic):
                refuse_array_subclass(value, what)
            if value.dtype.kind in ("iu" if integer else "biuf"):
                return value
            raise FeedError(f"{what}: expected {'integer labels' if integer else 'numbers'}, "
                            f"got a NumPy array of dtype {value.dtype}")
        return super().accept(value, integer=integer, what=what)

    def asarray(self, value, dtype=None):
        return np.asarray(value, dtype=dtype)

    def promote(self, *arrays):
        # NumPy's own promotion is the rule (see Backend.result_type): nothing to do.
        return arrays

    def random_uniform(self, rng, shape, dtype=None):
        dtype = np.dtype(np.float32 if dtype is None else dtype)
        if dtype in (np.float32, np.float64):  # drawn in the dtype itself, no float64 copy
            return rng.random(shape, dtype=dtype)
        return rng.random(shape).astype(dtype)

    def to_numpy(self, array):
        return array

    def own_gradients(self, grads):
        return own_arrays(grads)

    # miniflow.nodes.conv.pad2d: one new array, its border filled and x copied in,
    # rather than two concatenations (each a copy of the whole image batch).
    def pad2d(self, x, pads, value=0.0):
        (top, bottom), (left, right) = pads
        if not (top or bottom or left or right):
            return x
        n, h, w, c = x.shape
        out = np.empty((n, top + h + bottom, left + w + right, c), dtype=x.dtype)
        out[:, :top] = value
        out[:, top + h:] = value
        out[:, top:top + h, :left] = value
        out[:, top:top + h, left + w:] = value
        out[:, top:top + h, left:left + w] = x
        return out

    # The columns of a convolution (see miniflow.nodes.conv.windows): one copy out of
    # a strided view of the padded images, instead of a stack of kh*kw slices (which
    # makes each slice, then copies it again into the stack).
    def windows(self, x, kernel, stride, dilation, out_size):
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
        n, _, _, c = x.shape
        if c < 8:  # runs of a few values: one slice copy per offset is faster
            cols = np.empty((n, oh, ow, kh * kw, c), dtype=x.dtype)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i * kw + j, :] = x[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                                     j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            return cols
        s0, s1, s2, s3 = x.strides
        view = np.lib.stride_tricks.as_strided(
            x, (n, oh, ow, kh, kw, c), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3),
            writeable=False)
        cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
        np.copyto(cols, view)
        return cols.reshape(n, oh, ow, kh * kw, c)

    # Max pooling whose windows tile the image (2x2 by 2 of an even image, the CNN's):
    # the same winners as MaxPool2D's scan (the first largest value of each window),
    # from one pass per kernel offset. None when a window holds a NaN, whose winner
    # (the last NaN) the general scan finds.
    def max_pool_tiles(self, x, kernel, track):
        (kh, kw) = kernel
        n, h, w, c = x.shape  # channels last
        tiles = x.reshape(n, h // kh, kh, w // kw, kw, c)
        pieces = [tiles[:, :, i, :, j, :] for i in range(kh) for j in range(kw)]
        largest = np.maximum(pieces[0], pieces[1]) if len(pieces) > 1 \
            else np.array(pieces[0], copy=True)
        for piece in pieces[2:]:
            np.maximum(largest, piece, out=largest)
        if not track:
            return largest, None
        if np.isnan(largest).any():
            return None
        # The winner is the number of offsets before the first one equal to the
        # maximum: a running "none equal yet" flag, added up (bools as int8).
        behind = np.not_equal(pieces[0], largest)
        winner = behind.view(np.int8).copy()
        differs = np.empty(largest.shape, dtype=bool)
        for piece in pieces[1:-1]:
            np.not_equal(piece, largest, out=differs)
            np.logical_and(behind, differs, out=behind)
            np.add(winner, behind.view(np.int8), out=winner)
        return largest, winner

    # The gradient of max_pool_tiles: each window's gradient to its winner, +0
    # elsewhere (a NaN gradient must not reach the others, so no product with a
    # mask), written offset by offset into its slice of the image (the windows tile
    # it: nothing to add). The selection is a bitwise AND with an all-ones or zero
    # mask, 3x faster than np.where, which iterates these 6-D views badly.
    def max_pool_tiles_grad(self, winner, grad, kernel):
        (kh, kw) = kernel
        n, oh, ow, c = grad.shape
        bits = {2: np.int16, 4: np.int32, 8: np.int64}.get(grad.dtype.itemsize)
        if grad.dtype.kind != "f" or bits is None:
            offsets = np.arange(kh * kw, dtype=winner.dtype).reshape(kh, kw)
            hit = winner[:, :, None, :, None, :] == offsets[None, None, :, None, :, None]
            out = np.where(hit, grad[:, :, None, :, None, :], grad.dtype.type(0))
            return out.reshape(n, oh * kh, ow * kw, c)
        out = np.empty((n, oh, kh, ow, kw, c), dtype=grad.dtype)
        # One copy of a gradient in another layout (the flattened dense layer's, NCHW)
        # is cheaper than kh*kw strided reads of it.
        grad_bits = np.ascontiguousarray(grad).view(bits)
        mask = np.empty(grad.shape, dtype=bits)
        for i in range(kh):
            for j in range(kw):
                np.equal(winner, i * kw + j, out=mask, casting="unsafe")
                np.negative(mask, out=mask)  # True -> all ones
                np.bitwise_and(grad_bits, mask, out=out[:, :, i, :, j, :].view(bits))
        return out.reshape(n, oh * kh, ow * kw, c)

    # sum(rows, axis=0) of a tall, narrow (M, O) array (a convolution's bias gradient),
    # as blocks of k rows side by side: NumPy sums down an array one row of O values
    # at a time (4x slower at O = 32 than rows of k*O values), and the k partial sums
    # have a smaller rounding error than one long one.
    def column_sums(self, rows):
        m, o = rows.shape
        k = next((d for d in (64, 32, 16, 8, 4, 2) if m % d == 0), 1)
        if k == 1 or m < 4 * k:
            return np.add.reduce(rows, axis=0)
        blocks = np.add.reduce(rows.reshape(m // k, k * o), axis=0)
        return np.add.reduce(blocks.reshape(k, o), axis=0)

    # The adjoint of sliding windows (convolution and pooling backward, see
    # miniflow.nodes.conv): the same sums as the Array-API version there, as in-place
    # adds into one array instead of a padded copy per kernel offset.
    def fold_windows(self, pieces, shape, kernel, stride, dilation):
        (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
        oh, ow = pieces[0].shape[1:3]
        # Windows that tile the image exactly (2x2 pooling by 2 of an even image)
        # each own their pixels: copy them in, with nothing to zero or add.
        tiles = (dilation == (1, 1) and stride == kernel and (oh * kh, ow * kw) == shape[1:3])
        total = (np.empty if tiles else np.zeros)(shape, dtype=pieces[0].dtype)
        for i in range(kh):
            for j in range(kw):
                where = (slice(None), slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                         slice(j * dw, j * dw + sw * (ow - 1) + 1, sw), slice(None))
                if tiles:
                    total[where] = pieces[i * kw + j]
                else:
                    total[where] += pieces[i * kw + j]
        return total



def own_arrays(grads, array=np.array):
    """``grads`` with each view, read-only array or repeat replaced by a copy (NumPy and
    CuPy: ``flags.owndata`` is False for views, broadcast ones included)."""
    owned = []
    for g in grads:
        flags = getattr(g, "flags", None)
        if flags is None or not flags.owndata or not getattr(flags, "writeable", True) \
                or any(g is h for h in owned):
            g = array(g, copy=True)  # a NumPy scalar becomes a 0-d array, as torch's 0-d tensor
        owned.append(g)
    return owned


_SAME_WIDTH_INTS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _is_plus_zero(value) -> bool:
    """A Python 0 or 0.0, not -0.0 (whose sign bit an AND with a mask would lose)."""
    return type(value) in (int, float) and value == 0 and str(value)[0] != "-"


def _fast_namespace():
    """array-api-compat's NumPy namespace with its hottest functions called directly.

    np.sum and np.max are Python wrappers around ufunc.reduce (~1.2 us each), and
    array-api-compat wraps ones_like, arange, astype and count_nonzero to accept a
    device= NumPy lacks. On a small step those microseconds are a tenth of the time.
    """
    import functools
    import types

    import array_api_compat.numpy as compat

    xp = types.ModuleType(compat.__name__)  # the same name: array-api-compat's checks hold
    xp.__dict__.update(vars(compat))

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):
        return np.add.reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(x, /, *, axis=None, keepdims=False):
        return np.maximum.reduce(x, axis=axis, keepdims=keepdims)

    def ones_like(x, /, *, dtype=None, device=None):
        return np.ones_like(x, dtype=dtype)

    def arange(start, /, stop=None, step=1, *, dtype=None, device=None):
        return np.arange(start, stop, step, dtype=dtype)

    def astype(x, dtype, /, *, copy=True, device=None):
        return x.astype(dtype, copy=copy)

    def where(condition, x1, x2, /):
        # np.where branches per element: on a random mask (ReLU's backward) it
        # mispredicts half the time, 10x slower than a multiply at 512x1024. A
        # float array against the scalar 0 is instead selected by ANDing its bits
        # with an all-ones (-1) or all-zeros int8 mask, widened inside the ufunc:
        # the same result, branch-free, and for any memory layout (a transposed
        # NCHW view of channels-last images selects 9x faster than np.where).
        if _is_plus_zero(x2):
            array, keep = x1, True  # where(c, a, 0): keep a where c
        elif _is_plus_zero(x1):
            array, keep = x2, False  # where(c, 0, a): keep a where not c
        else:
            return compat.where(condition, x1, x2)
        ints = _SAME_WIDTH_INTS.get(getattr(array, "dtype", None))
        if (ints is not None and type(condition) is np.ndarray and condition.dtype == np.bool_
                and type(array) is np.ndarray and condition.shape == array.shape
                and array.size >= 1024):
            flags = condition.view(np.int8)
            # True -> -1 (all bits) when keeping where true; True -> 0, False -> -1 otherwise.
            mask = np.negative(flags) if keep else np.subtract(flags, 1, dtype=np.int8)
            return np.bitwise_and(mask, array.view(ints)).view(array.dtype)
        return compat.where(condition, x1, x2)

    xp.sum, xp.max, xp.ones_like, xp.arange, xp.astype = sum, max, ones_like, arange, astype
    xp.where = where
    xp.count_nonzero = np.count_nonzero
    xp.isdtype = functools.lru_cache(maxsize=64)(compat.isdtype)  # np.isdtype: ~1 us
    return xp
