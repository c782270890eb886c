"""Einsum: any contraction NumPy's ``einsum`` accepts, with its gradient, from matmul and reshapes.

The Array API has no einsum, so it is built from standard operations: each
operand's repeated letters become diagonals (a strided slice of a reshape),
then operands are contracted pairwise with one batched matmul each, and
letters no longer needed are summed. The gradient of an operand is again an
einsum (the upstream gradient with the other operands, onto the operand's
letters), its diagonals put back on zero matrices.
"""
from __future__ import annotations

import math
import string

from ..errors import GraphError, ShapeError
from ..graph import Node
from ._common import inverse_permutation

_LETTERS = set(string.ascii_letters)
# Stand-ins for the axes ``...`` covers: characters no subscript can contain.
_ELLIPSIS_LABELS = [chr(0x2460 + k) for k in range(64)]


def _parse(subscripts, count):
    if not isinstance(subscripts, str):
        raise GraphError(f"Einsum: subscripts must be a string such as 'ij,jk->ik', "
                         f"not {subscripts!r}")
    spec = subscripts.replace(" ", "")
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != count:
        raise GraphError(f"Einsum: {subscripts!r} names {len(terms)} operands, "
                         f"but {count} were given")
    for term in terms + ([output] if arrow else []):
        rest = term.replace("...", "", 1)
        if not set(rest) <= _LETTERS:
            raise GraphError(f"Einsum: {subscripts!r}: subscripts are letters and at most one "
                             f"'...' per operand, not {term!r}")
    if arrow:
        plain = output.replace("...", "")
        if len(set(plain)) != len(plain):
            raise GraphError(f"Einsum: {subscripts!r}: a letter appears twice in the output")
        unknown = set(plain) - set("".join(terms))
        if unknown:
            raise GraphError(f"Einsum: {subscripts!r}: output letters {sorted(unknown)} "
                             "appear in no operand")
        if "..." in output and not any("..." in t for t in terms):
            raise GraphError(f"Einsum: {subscripts!r}: '...' in the output but in no operand")
    else:  # NumPy's implicit output: '...' first, then the letters used once, sorted
        letters = "".join(terms).replace("...", "")
        output = ("..." if any("..." in t for t in terms) else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, output


def _labels(term, ndim, width):
    """A term's labels, one per axis, its ``...`` replaced by the last of ``width`` stand-ins."""
    if "..." not in term:
        return list(term)
    before, _, after = term.partition("...")
    covered = ndim - len(before) - len(after)
    return list(before) + _ELLIPSIS_LABELS[width - covered:width] + list(after)


class Einsum(Node):
    """y = ``numpy.einsum(subscripts, *operands)``: sums of products over named axes.

    Any subscripts NumPy accepts: ``'ij,jk->ik'`` (matmul), ``'ii->i'``
    (diagonal), ``'ii'`` (trace), ``'...ij,...jk'`` (batched), implicit
    outputs, one or many operands. Every operand is differentiated.
    """

    arity = (1, None)

    def __init__(self, subscripts, *operands, name=None):
        self.terms, self.output = _parse(subscripts, len(operands))
        self.subscripts = subscripts
        super().__init__(*operands, name=name)

    def _layout(self, shapes):
        """The labels of each operand's axes, of the output's, and each label's size."""
        dots = [len(s) - len(t.replace("...", "")) for s, t in zip(shapes, self.terms)]
        for shape, term, n in zip(shapes, self.terms, dots):
            if n < 0 or (n and "..." not in term):
                raise ShapeError(f"operand of shape {tuple(shape)} has {len(shape)} axes but "
                                 f"{term!r} names {len(term.replace('...', ''))}")
        width = max(dots, default=0)
        labels = [_labels(t, len(s), width) for s, t in zip(shapes, self.terms)]
        sizes = {}
        for shape, names in zip(shapes, labels):
            for c, n in zip(names, shape):
                known = sizes.get(c, 1)
                if known != n and 1 not in (known, n):
                    raise ShapeError(f"{self.subscripts!r}: axis {c!r} has sizes "
                                     f"{known} and {n}")
                sizes[c] = n if known == 1 else known
        output = (_ELLIPSIS_LABELS[:width] if "..." in self.output else [])
        before, _, after = self.output.partition("...")
        output = list(before) + output + list(after) if "..." in self.output else list(self.output)
        return labels, output, sizes

    def forward(self, ctx, *operands):
        xp = ctx.xp
        operands = ctx.inputs = ctx.backend.promote(*operands)
        labels, output, sizes = self._layout([a.shape for a in operands])
        reduced = [_diagonals(xp, a, names) for a, names in zip(operands, labels)]
        ctx.save(reduced, output, sizes)
        return _contract(xp, [(a, names) for a, names, _ in reduced], output, sizes)

    def backward(self, ctx, grad):
        xp = ctx.xp
        reduced, output, sizes = ctx.saved
        grads = []
        for k, need in enumerate(ctx.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            _, names, steps = reduced[k]
            others = [(a, n) for j, (a, n, _) in enumerate(reduced) if j != k]
            g = _contract(xp, [(grad, output)] + others, names, sizes)
            grads.append(_undiagonal(xp, g, steps))
        return tuple(grads)

    def shape_problem(self, *shapes):
        try:
            self._layout(shapes)
        except ShapeError as exc:
            return str(exc)
        return None


def _permute(xp, a, names, order):
    perm = tuple(names.index(c) for c in order)
    return a if perm == tuple(range(len(perm))) else xp.permute_dims(a, perm)


def _diagonals(xp, a, names):
    """Take the diagonal of each letter repeated in one operand: ``ii -> i``.

    Returns the array, its (now distinct) labels, and the steps to undo it.
    """
    names, steps = list(names), []
    while len(set(names)) != len(names):
        c = next(c for c in names if names.count(c) > 1)
        i = names.index(c)
        j = names.index(c, i + 1)
        rest = [k for k in range(len(names)) if k not in (i, j)]
        perm = tuple(rest + [i, j])
        a = xp.permute_dims(a, perm)
        n, m = a.shape[-2], a.shape[-1]
        if n != m:
            raise ShapeError(f"letter {c!r} repeated in one operand names axes of sizes "
                             f"{n} and {m}")
        # The diagonal of an n x n matrix is every (n + 1)-th element of its n * n values.
        a = xp.reshape(a, tuple(a.shape[:-2]) + (n * n,))[..., ::n + 1]
        steps.append((perm, n))
        names = [names[k] for k in rest] + [c]
    return a, names, steps


def _undiagonal(xp, g, steps):
    """The adjoint of :func:`_diagonals`: each diagonal back on a matrix of zeros."""
    for perm, n in reversed(steps):
        eye = xp.arange(n)[:, None] == xp.arange(n)[None, :]
        g = xp.where(eye, g[..., :, None], xp.zeros((), dtype=g.dtype))
        inverse = inverse_permutation(perm)
        g = xp.permute_dims(g, inverse)
    return g


def _sum_out(xp, a, names, keep):
    gone = tuple(k for k, c in enumerate(names) if c not in keep)
    if not gone:
        return a, names
    return xp.sum(a, axis=gone), [c for c in names if c in keep]


def _contract(xp, terms, output, sizes):
    """einsum of ``terms`` (array, distinct labels) onto ``output`` labels.

    Output labels that no term has are broadcast to their ``sizes`` (a
    gradient flowing back to a letter that was summed away).
    """
    terms = list(terms)
    a, la = terms.pop(0)
    while True:
        keep = set(output).union(*[set(n) for _, n in terms])
        a, la = _sum_out(xp, a, la, keep)
        if not terms:
            break
        b, lb = terms.pop(0)
        keep = set(output).union(*[set(n) for _, n in terms])
        b, lb = _sum_out(xp, b, lb, keep | set(la))
        a, la = _sum_out(xp, a, la, keep | set(lb))
        a, la = _pair(xp, a, la, b, lb, keep, sizes)
    for c in output:
        if c not in la:
            a, la = xp.expand_dims(a, axis=a.ndim), la + [c]
    a = _permute(xp, a, la, output)
    shape = tuple(sizes[c] for c in output)
    return a if tuple(a.shape) == shape else xp.broadcast_to(a, shape)


def _pair(xp, a, la, b, lb, keep, sizes):
    """Contract two operands with one batched matmul: (batch, m, k) @ (batch, k, n)."""
    batch = [c for c in la if c in lb and c in keep]
    summed = [c for c in la if c in lb and c not in keep]
    a_only = [c for c in la if c not in lb]
    b_only = [c for c in lb if c not in la]
    a = _permute(xp, a, la, batch + a_only + summed)
    b = _permute(xp, b, lb, batch + summed + b_only)
    a_sizes = [a.shape[len(batch) + k] for k in range(len(a_only))]
    b_sizes = [b.shape[len(batch) + len(summed) + k] for k in range(len(b_only))]
    common = [sizes[c] for c in batch], [sizes[c] for c in summed]
    # Size-1 axes broadcast against the other operand's (as '...' axes do in NumPy).
    a = xp.broadcast_to(a, tuple(common[0] + a_sizes + common[1]))
    b = xp.broadcast_to(b, tuple(common[0] + common[1] + b_sizes))
    nb, nk = math.prod(common[0]), math.prod(common[1])
    product = (xp.reshape(a, (nb, math.prod(a_sizes), nk))
               @ xp.reshape(b, (nb, nk, math.prod(b_sizes))))
    return xp.reshape(product, tuple(common[0] + a_sizes + b_sizes)), batch + a_only + b_only
