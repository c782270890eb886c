"""Planned NumPy kernels: a node's rules rewritten to fill buffers allocated once.

``miniflow.compile`` on NumPy learns every shape from a first run, then asks
``PLANNED_KERNELS[type(node)](node, input_values, needs_input_grad)`` for a
kernel: an object with the node's own ``forward(ctx, *args)`` and
``backward(ctx, grad)``, computing the same math with ``out=`` into arrays it
owns. The executor's interpreter runs it in the node's place. A factory returns
None unless the kernel implements exactly what the node would compute for
these inputs (its options, ranks and dtypes), and the node's own rules run
instead: a kernel is a faster way to the same numbers, never other numbers.

The contract a kernel keeps: it never writes to its inputs or to the gradient it
is given (they belong to other kernels, or to the caller); what it returns is
valid until its next call.
"""
from __future__ import annotations

import numpy as np


def _same_float(*arrays) -> bool:
    dtype = arrays[0].dtype
    return dtype.kind == "f" and all(a.dtype == dtype for a in arrays)


class _Gemm:
    """NumPy's own BLAS ``gemm``, C = alpha op(A) op(B) + beta C, called through ctypes.

    NumPy's matmul always writes a fresh product; an SGD step that then subtracts
    it from the weights makes one more pass over two weight-sized arrays, which
    at the MLP's sizes no longer fit in cache together with the data: measured
    5% of the whole step. ``gemm`` with beta = 1 adds the product into the
    weights inside the multiplication. It is NumPy's library (the one its
    matmul calls, under the same thread limits), found among the loaded ones:
    where it cannot be found or fails a first check, there is no ``gemm`` and
    kernels subtract as before.
    """

    # CBLAS constants (cblas.h).
    ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

    def __init__(self, functions):
        self.functions = functions  # dtype -> ctypes function

    @classmethod
    def load(cls):
        import ctypes
        import os

        numpy_dir = os.path.dirname(np.__file__)
        try:
            with open("/proc/self/maps") as maps:  # Linux: the libraries loaded now
                paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        except OSError:
            return None
        # Only NumPy's own (its wheel's numpy.libs): a BLAS another library loaded
        # (PyTorch's) has threads and limits of its own.
        paths = sorted(p for p in paths if p.startswith(numpy_dir) and ".so" in p)
        # ILP64 names only: their integers are 64-bit, as passed here.
        names = {np.dtype(np.float32): ("scipy_cblas_sgemm64_", "cblas_sgemm64_"),
                 np.dtype(np.float64): ("scipy_cblas_dgemm64_", "cblas_dgemm64_")}
        scalar = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
        i64, ptr, enum = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            functions = {}
            for dtype, candidates in names.items():
                for name in candidates:
                    function = getattr(lib, name, None)
                    if function is not None:
                        function.restype = None
                        function.argtypes = [enum, enum, enum, i64, i64, i64, scalar[dtype],
                                             ptr, i64, ptr, i64, scalar[dtype], ptr, i64]
                        functions[dtype] = function
                        break
            gemm = cls(functions)
            if len(functions) == len(names) and gemm._checks():
                return gemm
        return None

    def add_product(self, c, a, b, alpha=1.0, a_transposed=False):
        """c += alpha * a @ b (a.T @ b where ``a_transposed``) in place, for 2-D arrays
        of one float dtype whose rows are contiguous; False (nothing done) where
        they are not."""
        if not (a.dtype == b.dtype == c.dtype and c.flags.writeable
                and a.size and b.size and c.size):
            return False
        lda, ldb, ldc = _leading(a), _leading(b), _leading(c)
        if not (lda and ldb and ldc):
            return False
        (m, n), k = c.shape, b.shape[0]
        self.functions[c.dtype](
            self.ROW_MAJOR, self.TRANS if a_transposed else self.NO_TRANS, self.NO_TRANS,
            m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, 1.0, c.ctypes.data, ldc)
        return True

    def _checks(self) -> bool:
        """One small product against NumPy's, per dtype, strided rows included."""
        rng = np.random.default_rng(0)
        for dtype in self.functions:
            a = rng.standard_normal((5, 7)).astype(dtype)[:, :3]
            b = rng.standard_normal((5, 4)).astype(dtype)
            c = rng.standard_normal((3, 4)).astype(dtype)
            want = c - a.T @ b
            if not self.add_product(c, a, b, -1.0, a_transposed=True) \
                    or not np.allclose(c, want, rtol=1e-5):
                return False
            p, q = a.T.copy(), b[:, :2]  # (3, 5) @ (5, 2), into columns of c
            want = c[:, 1:3] + p @ q
            if not self.add_product(c[:, 1:3], p, q) \
                    or not np.allclose(c[:, 1:3], want, rtol=1e-5):
                return False
        return True


def _leading(v) -> int:
    """BLAS's leading dimension of a row-major matrix (elements from one row to
    the next), or 0 where its rows are not each contiguous and in order."""
    if v.flags.c_contiguous:
        return v.shape[1]  # (a size-1 axis may have any stride: not to be read)
    item = v.itemsize
    step = v.strides[0]
    if v.strides[1] == item and v.flags.aligned and step % item == 0 \
            and step >= v.shape[1] * item:
        return step // item
    return 0


_GEMM = []


def numpy_gemm():
    """NumPy's BLAS ``gemm`` (a ``_Gemm``), or None where it cannot be used; looked up once."""
    if not _GEMM:
        try:
            _GEMM.append(_Gemm.load())
        except Exception:  # an unusual build: kernels keep to NumPy's own calls
            _GEMM.append(None)
    return _GEMM[0]


#: Elementwise kernels over more elements than this run block by block of rows:
#: each block then goes through all of a rule's passes while it is in cache
#: (measured 27% faster for sigmoid's six passes over 512 x 1024 float32).
BLOCK_ELEMENTS = 1 << 16


class LinearKernel:
    """x @ w + b for a matrix x; d/dx = g w^T, d/dw = x^T g, d/db = column sums of g.

    The bias is first copied into a (batch, out) buffer: adding a broadcast row
    makes NumPy iterate through a buffer of its own, slower than a copy and a
    plain add together. Where the output outgrows the cache (more than
    ``BLOCK_ELEMENTS``), the bias is copied into the output itself and BLAS adds
    the product to it (``gemm``, beta = 1): two passes over the output fewer
    (NumPy's product first zeroes it, then the add reads it again), 2-5% of the
    product's time at 512 x 1024; at smaller outputs the ctypes call costs what
    the add saves, or more. Column sums are a matrix-vector product (BLAS) with
    ones.

    ``updates``: the inputs whose SGD update the kernel can apply itself, in
    backward, right after their gradient is made (while it is in cache; for
    the weight, inside the product: ``w -= x^T g`` with no gradient array);
    ``compile`` turns it on per call (``applying``) for the parameters no other
    node reads.
    """

    updates = (1, 2)

    def __init__(self, x, w, b, needs):
        out_shape = (x.shape[0], w.shape[1])
        self.out = np.empty(out_shape, x.dtype)
        gemm = numpy_gemm()
        # BLAS adds the product to the bias copied into the output (None: NumPy's
        # product, then the bias added from a buffer of copied rows).
        self.bias_then_product = gemm if self.out.size > BLOCK_ELEMENTS else None
        self.bias_rows = None  # made on first use (never, where BLAS takes every call)
        self.ones = np.ones(x.shape[0], x.dtype)
        need_x, need_w, need_b = needs
        self.grad_x = np.empty_like(x) if need_x else None
        self.need_w = need_w
        self.grad_w = None  # made when a call returns d/dw (an SGD step never does)
        self.grad_b = np.empty_like(b) if need_b else None
        # The same for the weight's update, w -= x^T g inside the product: it saves a
        # pass over a weight larger than the cache; a small one's costs less than the call.
        self.gemm = gemm if need_w and w.size > BLOCK_ELEMENTS else None
        self.applying = ()
        # What backward reports for a parameter it has updated itself: zeros that
        # take no memory (the update is done; nobody adds this gradient anywhere).
        self.applied_w = np.broadcast_to(np.zeros((), w.dtype), w.shape)
        self.applied_b = np.broadcast_to(np.zeros((), b.dtype), b.shape)

    def forward(self, ctx, x, w, b):
        out = self.out
        if self.bias_then_product is not None:
            out[...] = b
            if self.bias_then_product.add_product(out, x, w):
                return out
        bias_rows = self._bias_rows()
        bias_rows[...] = b
        np.matmul(x, w, out=out)
        return np.add(out, bias_rows, out=out)

    def _bias_rows(self):
        if self.bias_rows is None:
            self.bias_rows = np.empty_like(self.out)
        return self.bias_rows

    def backward(self, ctx, grad):
        x, w, b = ctx.inputs
        grad_x, grad_w, grad_b = self.grad_x, None, self.grad_b
        if grad_x is not None:  # first: an update below changes w
            np.matmul(grad, w.T, out=grad_x)
        if self.need_w:
            if 1 not in self.applying:
                grad_w = np.matmul(x.T, grad, out=self._grad_w(w))
            else:
                if self.gemm is None or not self.gemm.add_product(w, x, grad, -1.0,
                                                                  a_transposed=True):
                    np.subtract(w, np.matmul(x.T, grad, out=self._grad_w(w)), out=w)
                grad_w = self.applied_w
        if grad_b is not None:
            np.matmul(self.ones, grad, out=grad_b)
            if 2 in self.applying:
                np.subtract(b, grad_b, out=b)
                grad_b = self.applied_b
        return grad_x, grad_w, grad_b

    def _grad_w(self, w):
        if self.grad_w is None:
            self.grad_w = np.empty_like(w)
        return self.grad_w


def _linear(node, args, needs):
    x, w, b = args
    if x.ndim == 2 and w.ndim == 2 and b.ndim == 1 and b.shape[0] == w.shape[1] \
            and _same_float(x, w, b):
        return LinearKernel(x, w, b, needs)
    return None


_SAME_WIDTH_INTS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _row_blocks(shape) -> list:
    """Slices of the first axis, each about ``BLOCK_ELEMENTS`` long; ``[...]``
    (everything, a 0-d array included) for an array that small."""
    if len(shape) < 1 or not shape[0]:
        return [...]
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    rows = max(1, BLOCK_ELEMENTS // row)
    if rows >= shape[0]:
        return [...]
    return [slice(lo, lo + rows) for lo in range(0, shape[0], rows)]


class ReLUKernel:
    """max(x, 0); the gradient is 0 where x <= 0, else the upstream one (nan passes).

    A select, as the node's rule, not a product with a 0/1 mask: an inf or nan
    arriving where x <= 0 gives 0, as in PyTorch (inf * 0 would be nan). The
    select is branch-free: the gradient's bits ANDed with an all-ones or
    all-zeros integer mask, as x's bits ANDed with the same mask make the
    output. Over one block the mask made in forward is kept for backward; over
    several, only x <= 0 is kept (a byte, not four or eight, per element to
    write and read back from memory) and each block's mask is made again in
    cache.
    """

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.nonpositive = np.empty(x.shape, bool)
        self.grad_x = np.empty_like(x)
        self.blocks = _row_blocks(x.shape)
        self.blocked = len(self.blocks) > 1
        mask_shape = (self.blocks[0].stop,) + x.shape[1:] if self.blocked else x.shape
        self.mask = np.empty(mask_shape, _SAME_WIDTH_INTS[x.dtype])

    def _mask(self, rows):
        """The mask of these rows, from x <= 0: 0 there, all bits set elsewhere (nan too)."""
        nonpositive = self.nonpositive[rows]
        mask = self.mask[:nonpositive.shape[0]] if self.blocked else self.mask
        np.subtract(nonpositive.view(np.int8), 1, out=mask, casting="unsafe")
        return mask

    def forward(self, ctx, x):
        for rows in self.blocks:
            xb = x[rows]
            np.less_equal(xb, 0, out=self.nonpositive[rows])
            mask = self._mask(rows)
            # max(x, 0): x's bits, or +0.0's (np.maximum is slower).
            np.bitwise_and(xb.view(mask.dtype), mask, out=self.out[rows].view(mask.dtype))
        return self.out

    def backward(self, ctx, grad):
        if grad.dtype != self.grad_x.dtype or grad.shape != self.grad_x.shape:
            return (np.where(self.nonpositive, 0, grad),)
        for rows in self.blocks:
            mask = self._mask(rows) if self.blocked else self.mask
            np.bitwise_and(mask, grad[rows].view(mask.dtype),
                           out=self.grad_x[rows].view(mask.dtype))
        return (self.grad_x,)


class SigmoidKernel:
    """The node's sigmoid, max(e, [x >= 0]) / (1 + e) with e = exp(-|x|), into buffers;
    d/dx = g y (1 - y). (The shorter 1 / (1 + exp(-x)) rounds to 0 below -88 in
    float32, where the node keeps a few ulp: not the same numbers.)

    Two batch-sized buffers: the output, and one for e that backward then
    reuses for the gradient (fewer arrays in cache beside the weights).
    """

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.scratch = np.empty_like(x)
        ints = _SAME_WIDTH_INTS[x.dtype]
        self.bits = ints(np.iinfo(ints).min)  # the sign bit alone
        self.blocks = _row_blocks(x.shape)

    def forward(self, ctx, x):
        ints, bits = self.bits.dtype, self.bits
        for rows in self.blocks:
            e, y, xb = self.scratch[rows], self.out[rows], x[rows]
            # -|x| in one pass: the sign bit set (np.copysign(x, -1) is not vectorised).
            np.bitwise_or(xb.view(ints), bits, out=e.view(ints))
            np.exp(e, out=e)
            # [x >= 0] as 0.0 or 1.0 (nan: 0.0): a maximum of two floats runs
            # vectorised, a float with a bool does not.
            np.greater_equal(xb, 0, out=y)
            np.maximum(e, y, out=y)
            np.add(e, 1, out=e)
            np.divide(y, e, out=y)
        return self.out

    def backward(self, ctx, grad):
        if grad.shape != self.out.shape:
            return (grad * self.out * (1 - self.out),)
        for rows in self.blocks:
            y, g = self.out[rows], self.scratch[rows]
            np.subtract(1, y, out=g)
            np.multiply(g, y, out=g)
            np.multiply(g, grad[rows], out=g)
        return (self.scratch,)


class TanhKernel:
    """tanh(x); d/dx = g (1 - y^2)."""

    def __init__(self, x):
        self.out = np.empty_like(x)
        self.grad_x = np.empty_like(x)

    def forward(self, ctx, x):
        return np.tanh(x, out=self.out)

    def backward(self, ctx, grad):
        y, g = self.out, self.grad_x
        np.multiply(y, y, out=g)
        np.subtract(1, g, out=g)
        return (np.multiply(g, grad, out=g),)


def _unary(kernel):
    def factory(node, args, needs):
        x, = args
        return kernel(x) if x.dtype in _SAME_WIDTH_INTS else None
    return factory


#: The unsigned integers of each width: labels seen as these, a negative one is huge.
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class CrossEntropyKernel:
    """Mean of -log softmax(logits)[label] over a (batch, classes) batch: the node's
    two-argument form. d/dlogits = (softmax - one_hot) g / batch.

    The logits are first copied transposed, (classes, batch): NumPy reduces a
    short row (ten classes) per call of its inner loop, several times slower
    than reducing down contiguous columns, so the row maxima and sums are taken
    there. Each row's label picks its entry by a flat index (after the range
    check: a negative index would wrap around), no one-hot array.
    """

    def __init__(self, node, logits):
        self.node = node
        batch, classes = logits.shape
        self.batch, self.classes = batch, classes
        dtype = logits.dtype
        self.batch_size = dtype.type(batch)  # the mean's divisor, in the logits' dtype
        self.rows = np.arange(batch)
        self.row_starts = self.rows * classes
        self.picked_t = np.empty(batch, np.intp)  # label's flat index in (classes, batch)
        self.picked = np.empty(batch, np.intp)    # the same in (batch, classes)
        self.logits_t = np.empty((classes, batch), dtype)
        self.row_max = np.empty(batch, dtype)
        self.total = np.empty(batch, dtype)
        self.log_total = np.empty(batch, dtype)
        self.probs_t = np.empty((classes, batch), dtype)
        self.label_probs = np.empty(batch, dtype)
        self.grad_logits = np.empty_like(logits)

    def forward(self, ctx, logits, labels):
        # Seen as unsigned, a negative label is huge: one reduction checks both ends.
        unsigned = labels.view(_UNSIGNED[labels.itemsize])
        if labels.size and np.maximum.reduce(unsigned, axis=None) >= self.classes:
            return self.node.forward(ctx, logits, labels)  # raises the node's own error
        shifted = self.logits_t
        shifted[...] = logits.T
        np.maximum.reduce(shifted, axis=0, out=self.row_max)
        np.subtract(shifted, self.row_max, out=shifted)
        # In intp: int8 labels times the batch would overflow in their own dtype.
        np.multiply(labels, self.batch, out=self.picked_t, dtype=np.intp)
        np.add(self.picked_t, self.rows, out=self.picked_t)
        exp = np.exp(shifted, out=self.probs_t)
        np.add.reduce(exp, axis=0, out=self.total)
        # mean(-log softmax[label]) = mean(log total - shifted[label])
        loss = np.add.reduce(np.log(self.total, out=self.log_total), axis=None) \
            - np.add.reduce(shifted.take(self.picked_t), axis=None)
        np.divide(exp, self.total, out=exp)
        np.add(self.row_starts, labels, out=self.picked)
        return loss / self.batch_size

    def backward(self, ctx, grad):
        scale = grad / self.batch
        g = np.multiply(self.probs_t.T, scale, out=self.grad_logits)
        # The label's entry: (p - 1) * scale, as the node's (probs - one_hot) * scale.
        label_probs = self.probs_t.take(self.picked_t, out=self.label_probs)
        np.subtract(label_probs, 1, out=label_probs)
        g.put(self.picked, np.multiply(label_probs, scale, out=label_probs))
        return g, None


def _cross_entropy(node, args, needs):
    logits, labels = args
    # Only the lab's form: any reduction, smoothing, ignored label, probability
    # target or class axis beyond the second runs the node's own rules.
    if node.lab_form and logits.ndim == 2 and labels.ndim == 1 and logits.shape[0] \
            and logits.shape[0] == labels.shape[0] and logits.dtype in _SAME_WIDTH_INTS \
            and labels.dtype.kind in "iu" and not needs[1]:
        return CrossEntropyKernel(node, logits)
    return None


def _kernels():
    from ..nodes import CrossEntropyWithSoftmax, Linear, ReLU, Sigmoid, Tanh

    return {Linear: _linear, ReLU: _unary(ReLUKernel), Sigmoid: _unary(SigmoidKernel),
            Tanh: _unary(TanhKernel), CrossEntropyWithSoftmax: _cross_entropy}


#: Node class -> factory ``(node, input values, needs_input_grad) -> kernel or None``.
PLANNED_KERNELS = _kernels()
