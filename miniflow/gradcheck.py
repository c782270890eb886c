"""Check a node's backward rule against central differences, in float64, on any backend."""
from __future__ import annotations

import numpy as np

from .backends import get_backend
from .errors import BackendError, GradcheckError, GraphError
from .executor import evaluate, value_and_grad
from .graph import Input, Node
from .nodes import DummyGrad


def gradcheck(build, *values, backend=None, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0) -> bool:
    """Compare ``build``'s backward with central differences of its forward.

    Parameters
    ----------
    build : callable
        Takes one Input node per value and returns the output node: a node class
        (``Sigmoid``) or any function of nodes (``lambda x, w: Sum(x @ w)``).
    *values : array-like
        The point to check at. Floating values are cast to float64 and checked;
        integer values (labels) are passed through and not differentiated.
    backend : str, module or None
        Where to run (NumPy by default). The check itself runs in float64 on the host.
    eps, atol, rtol : float
        Step of the central difference, and the tolerances of the comparison
        ``|analytic - numeric| <= atol + rtol * |numeric|``.
    seed : int
        Seeds the random upstream gradient used when the output is not a scalar.

    Returns
    -------
    True when every gradient agrees.

    Raises
    ------
    GradcheckError
        Naming the input, the worst element, and both values there.
    """
    backend = get_backend(backend)
    host = [np.asarray(v) for v in values]
    host = [v if v.dtype.kind in "iu" else v.astype(np.float64) for v in host]
    inputs = [Input(name=f"input{k}") for k in range(len(host))]
    output = build(*inputs)
    if not isinstance(output, Node):
        raise GraphError(f"build must return a Node, got {type(output).__name__}")
    wrt = [node for node, v in zip(inputs, host) if v.dtype.kind == "f"]

    def feed(arrays):
        return {node: backend.asarray(a) for node, a in zip(inputs, arrays)}

    probe = backend.asarray(np.zeros(1))
    if not backend.xp.isdtype(probe.dtype, backend.xp.float64):
        # Central differences in float32 are too coarse to judge anything.
        raise BackendError(f"gradcheck needs float64, but backend {backend.name!r} turned a "
                         f"float64 array into {probe.dtype} (for JAX, enable it with "
                         "jax.config.update('jax_enable_x64', True))")

    out_shape = backend.to_numpy(evaluate(output, feed(host), backend)).shape
    # A non-scalar output is checked through sum(output * upstream), upstream random.
    scalar = out_shape == ()
    upstream = 1.0 if scalar else np.random.default_rng(seed).standard_normal(out_shape)
    head = output if scalar else DummyGrad(output)

    def objective(arrays):
        out = np.asarray(backend.to_numpy(evaluate(output, feed(arrays), backend)), np.float64)
        return float(np.sum(out * upstream))

    run_feed = feed(host)
    if head is not output:
        run_feed[head] = backend.asarray(upstream)
    _, analytic = value_and_grad(head, run_feed, wrt, backend)

    for node, grad in zip(wrt, analytic):
        k = inputs.index(node)
        grad = np.asarray(backend.to_numpy(grad), dtype=np.float64)
        if grad.shape != host[k].shape:
            raise GradcheckError(f"{output.label}: gradient of input {k} has shape {grad.shape}, "
                                 f"but the input has shape {host[k].shape}")
        numeric = np.empty_like(host[k])
        for index in np.ndindex(host[k].shape):
            shifted = [a.copy() for a in host]
            shifted[k][index] += eps
            above = objective(shifted)
            shifted[k][index] -= 2 * eps
            below = objective(shifted)
            numeric[index] = (above - below) / (2 * eps)
        error = np.abs(grad - numeric) - (atol + rtol * np.abs(numeric))
        if error.size and error.max() > 0:
            worst = np.unravel_index(np.argmax(error), error.shape)
            raise GradcheckError(
                f"{output.label} on backend {backend.name!r}: gradient of input {k} "
                f"(shape {host[k].shape}) is wrong at index {tuple(int(i) for i in worst)}: "
                f"analytic {grad[worst]:.8g}, numerical {numeric[worst]:.8g} "
                f"(atol={atol}, rtol={rtol})")
    return True
