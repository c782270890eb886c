"""Optimizers and learning-rate schedules over ``{parameter Input node: array}``.

An optimizer holds the parameters on their backend and replaces them with
updated arrays at each step, given the gradients ``value_and_grad`` returns::

    opt = Momentum(params, lr=CosineDecay(0.1, total_steps), momentum=0.9)
    for batch in batches:
        loss, grads = value_and_grad(model.loss, {**opt.params, **batch}, wrt=opt.nodes)
        opt.step(grads)

Each rule is written once, in one ``_update`` method, through two helpers
that write its results: :meth:`Optimizer._decay` (a running average of a
state array) and :meth:`Optimizer._descend` (the parameter's step). Where
the backend's arrays can be written (NumPy, CuPy, PyTorch) the helpers
update in place (``p -= lr * g``): no new parameter or state arrays each
step, which was about a fifth of the MLP's epoch on NumPy. Where they cannot
(JAX) the helpers store new arrays (``p = p - lr * g``). Both paths do the
same operations in the same order, so they give the same numbers to the
bit. The optimizer copies the arrays it is given, so updating in place
never changes a caller's arrays.
"""
from __future__ import annotations

import math

from .backends import get_backend, infer_backend
from .errors import ConfigError, OptimizerError, ShapeError

__all__ = [
    "clip_grad_norm", "Optimizer", "SGD", "Momentum", "Adam", "RMSprop", "OPTIMIZERS", "DEFAULT_LR",
    "make_optimizer", "register_optimizer", "OptimizerError", "ConstantLR", "StepDecay", "CosineDecay", "OneCycle", "SCHEDULES",
    "make_schedule",
]


#: Running averages of the gradients are cleared of subnormal values every this many
#: steps (see Optimizer._without_subnormals): often enough to skip ~90% of their cost, at
#: a sixteenth of the cost of doing it every step.
FLUSH_EVERY = 16


# -- learning-rate schedules -------------------------------------------------------

def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
            or lr <= 0:
        raise OptimizerError(f"the learning rate must be a positive number, got {lr!r}")
    return float(lr)


def _check_steps(total_steps, what="total_steps") -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise OptimizerError(f"{what} must be a positive integer, got {total_steps!r}")
    return total_steps


class ConstantLR:
    """The same learning rate at every step.

    Parameters
    ----------
    lr : float
        The learning rate, > 0.
    """

    def __init__(self, lr: float):
        self.lr = _check_lr(lr)

    def __call__(self, step: int) -> float:
        return self.lr

    def __repr__(self):
        return f"ConstantLR({self.lr:g})"


class StepDecay:
    """``lr * gamma ** (step // step_size)``: the rate drops by ``gamma`` every ``step_size`` steps.

    Parameters
    ----------
    lr : float
        The rate of the first ``step_size`` steps, > 0.
    step_size : int
        Steps between drops, >= 1.
    gamma : float
        The factor of each drop, in (0, 1].
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = _check_lr(lr)
        self.step_size = _check_steps(step_size, "step_size")
        if not 0 < gamma <= 1:
            raise OptimizerError(f"gamma must lie in (0, 1], got {gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)

    def __repr__(self):
        return f"StepDecay({self.lr:g}, step_size={self.step_size}, gamma={self.gamma:g})"


class CosineDecay:
    """Half a cosine from ``lr`` at step 0 down to 0 at ``total_steps`` (and 0 after).

    ``lr * (1 + cos(pi * step / total_steps)) / 2``: large steps early, then a
    gentle landing that lets the last epochs settle into a minimum.

    Parameters
    ----------
    lr : float
        The initial rate, > 0.
    total_steps : int
        The number of steps of the whole run, >= 1.
    """

    def __init__(self, lr: float, total_steps: int):
        self.lr = _check_lr(lr)
        self.total_steps = _check_steps(total_steps)

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * progress))

    def __repr__(self):
        return f"CosineDecay({self.lr:g}, total_steps={self.total_steps})"


class OneCycle:
    """Warm up, then anneal: the "1cycle" policy (Smith & Topin, 2018), as PyTorch's OneCycleLR.

    The rate rises along a half cosine from ``lr / div`` to ``lr`` over the first
    ``warmup`` fraction of the steps, then falls along a half cosine to
    ``lr / (div * final_div)``. The large middle rates explore; the low start
    keeps Adam's first steps from overshooting.

    Parameters
    ----------
    lr : float
        The peak rate, > 0.
    total_steps : int
        The number of steps of the whole run, >= 1.
    warmup : float
        The fraction of the run spent rising, in (0, 1).
    div, final_div : float
        Start at ``lr / div``; end at ``lr / (div * final_div)``. Both >= 1.
    """

    def __init__(self, lr: float, total_steps: int, warmup: float = 0.3, div: float = 25.0,
                 final_div: float = 1e4):
        self.lr = _check_lr(lr)
        self.total_steps = _check_steps(total_steps)
        if not 0 < warmup < 1:
            raise OptimizerError(f"warmup must lie in (0, 1), got {warmup!r}")
        if not (div >= 1 and final_div >= 1):
            raise OptimizerError(f"div and final_div must be >= 1, got {div!r}, {final_div!r}")
        self.warmup, self.div, self.final_div = float(warmup), float(div), float(final_div)

    def __call__(self, step: int) -> float:
        rise = max(1.0, self.warmup * self.total_steps - 1)
        step = min(step, self.total_steps - 1)
        start, end = self.lr / self.div, self.lr / (self.div * self.final_div)
        if step <= rise:
            low, high, progress = start, self.lr, step / rise
        else:
            fall = max(1.0, self.total_steps - 1 - rise)
            low, high, progress = self.lr, end, (step - rise) / fall
        # Half a cosine from `low` to `high`.
        return high + (low - high) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self):
        return f"OneCycle({self.lr:g}, total_steps={self.total_steps}, warmup={self.warmup:g})"


#: The schedules ``make_schedule`` knows, by name.
SCHEDULES = ("constant", "step", "cosine", "onecycle")


def make_schedule(name: str, lr: float, total_steps: int):
    """The schedule called ``name`` for a run of ``total_steps`` steps.

    ``"constant"`` keeps ``lr``; ``"step"`` divides it by 10 after each third
    of the run; ``"cosine"`` decays it to 0 along a half cosine; ``"onecycle"``
    warms up to ``lr`` over 30% of the run, then anneals (:class:`OneCycle`).
    """
    total_steps = _check_steps(total_steps)
    if name == "constant":
        return ConstantLR(lr)
    if name == "step":
        return StepDecay(lr, step_size=max(1, math.ceil(total_steps / 3)), gamma=0.1)
    if name == "cosine":
        return CosineDecay(lr, total_steps)
    if name == "onecycle":
        return OneCycle(lr, total_steps)
    raise OptimizerError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


# -- optimizers ----------------------------------------------------------------------

def clip_grad_norm(grads, max_norm: float, xp=None):
    """``(grads scaled so their global L2 norm is at most max_norm, the norm before)``.

    As ``torch.nn.utils.clip_grad_norm_``: one norm over all the gradients together,
    scale ``max_norm / (norm + 1e-6)`` where that is below 1. The norm and the scale
    stay on the device (a 0-d array): no step waits for the host. ``xp``: the
    gradients' namespace (default: NumPy). Optimizers apply it with ``clip_norm=``.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ConfigError(f"max_norm must be positive, got {max_norm!r}")
    if xp is None:
        import numpy as xp
    norm = xp.sqrt(sum(xp.sum(grad * grad) for grad in grads))
    scale = xp.minimum(xp.ones_like(norm), max_norm / (norm + 1e-6))
    return [grad * xp.astype(scale, grad.dtype) for grad in grads], norm


class Optimizer:
    """Base class: owns the parameters and applies one update rule per step.

    Parameters
    ----------
    params : dict
        ``{Input node: array}``, copied onto ``backend``: the arrays given are
        never modified. ``self.params`` holds the current values (feed them
        to the next step); on backends whose arrays can be written they are
        updated in place, so the dict keeps the same arrays.
    lr : float or callable
        A learning rate > 0, or a schedule ``lr(step) -> float`` (step counts from 0).
    weight_decay : float
        Adds ``weight_decay * p`` to each gradient (L2 regularisation), >= 0.
    backend : str, module, Backend or None
        Where the parameters and the optimizer's state live; None infers it
        from the arrays given (NumPy for host data).
    """

    #: The names of the per-parameter state dicts (``{node: array}``) a subclass keeps:
    #: what :meth:`state_dict` saves and a checkpoint restores.
    slots: tuple = ()

    def __init__(self, params: dict, lr, *, weight_decay: float = 0.0, backend=None,
                 clip_norm: float | None = None):
        if not isinstance(params, dict) or not params:
            raise OptimizerError("params must be a non-empty dict {Input node: array}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
                or not 0 <= weight_decay < math.inf:
            raise OptimizerError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        if clip_norm is not None and (isinstance(clip_norm, bool)
                                      or not isinstance(clip_norm, (int, float))
                                      or not 0 < clip_norm < math.inf):
            raise OptimizerError(f"clip_norm must be a positive number or None, got "
                                 f"{clip_norm!r}")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.schedule = lr if callable(lr) else ConstantLR(lr)
        if backend is None:
            backend = infer_backend((node.label, value) for node, value in params.items())
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        #: True where arrays are updated in place (see the module's docstring).
        self.in_place = self.backend.writable_arrays
        self.params = {node: self._own(self.backend.accept(value, what=node.label))
                       for node, value in params.items()}
        #: The parameter nodes, in order: pass as ``wrt`` so gradients line up.
        self.nodes = tuple(self.params)
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.schedule(self.step_count)

    def step(self, grads) -> None:
        """Apply one update.

        Parameters
        ----------
        grads : sequence or dict
            One gradient per parameter: a sequence in the order of ``self.nodes``
            (what ``value_and_grad(..., wrt=opt.nodes)`` returns) or a dict
            ``{node: gradient}``. Arrays of this optimizer's backend.
        """
        if isinstance(grads, dict):
            missing = [node.label for node in self.nodes if node not in grads]
            if missing:
                raise OptimizerError(f"no gradient given for {', '.join(missing)}")
            grads = [grads[node] for node in self.nodes]
        elif len(grads) != len(self.nodes):
            raise OptimizerError(f"expected {len(self.nodes)} gradients (one per parameter), "
                                 f"got {len(grads)}")
        lr = self.schedule(self.step_count)
        self.step_count += 1
        if self.clip_norm is not None:
            grads = self._clipped(grads)
        for node, grad in zip(self.nodes, grads):
            param = self.params[node]
            if grad.shape != param.shape:
                raise ShapeError(f"the gradient for {node.label} has shape {tuple(grad.shape)} "
                                 f"but the parameter has shape {tuple(param.shape)}")
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            self._update(node, param, grad, lr)

    def _clipped(self, grads):
        return clip_grad_norm(grads, self.clip_norm, self.xp)[0]

    def state_dict(self) -> dict:
        """The optimizer's progress as host NumPy arrays: ``{"step_count": int,
        "params": [array per node], slot: [array per node], ...}``, in ``self.nodes``
        order, so a checkpoint resumes the exact run."""
        import numpy as np

        to_host = self.backend.to_numpy
        state = {"step_count": self.step_count,
                 "params": [np.array(to_host(self.params[node])) for node in self.nodes]}
        for slot in self.slots:
            values = getattr(self, slot)
            state[slot] = [np.array(to_host(values[node])) for node in self.nodes]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s record (of an optimizer of the same kind)."""
        for key in ("params", *self.slots):
            if key not in state or len(state[key]) != len(self.nodes):
                raise OptimizerError(f"the optimizer state has no {key!r} for "
                                     f"{len(self.nodes)} parameters: it was saved by another "
                                     f"optimizer or model")
        for node, value in zip(self.nodes, state["params"]):
            self.params[node] = self._own(self.backend.accept(value, what=node.label))
        for slot in self.slots:
            values = getattr(self, slot)
            for node, value in zip(self.nodes, state[slot]):
                values[node] = self._own(self.backend.accept(value, what=node.label))
        self.step_count = int(state["step_count"])

    def _update(self, node, param, grad, lr):
        """The rule: one step of ``param`` (``self.params[node]``) given its gradient.

        A subclass writes it once, storing every result through :meth:`_decay`
        and :meth:`_descend`, so the same code updates in place where arrays can
        be written and builds new arrays where they cannot.
        """
        raise NotImplementedError

    def _decay(self, slot: dict, node, rate: float, addend):
        """``slot[node] = rate * slot[node] + addend``; returns the new value.

        Written into the old array where arrays can be written. ``v *= rate;
        v += addend`` rounds exactly as ``rate * v + addend`` does, so both
        paths agree to the bit. Every :data:`FLUSH_EVERY` steps, values below
        the dtype's smallest normal number become 0.
        """
        if self.in_place:
            value = slot[node]
            value *= rate
            value += addend
        else:
            value = rate * slot[node] + addend
        if self.step_count % FLUSH_EVERY == 0:
            value = self._without_subnormals(value)
        slot[node] = value
        return value

    def _without_subnormals(self, value):
        # Where a gradient stays 0 (a dead unit, a pixel always 0), the running average
        # decays by `rate` each step into the subnormal floats (below finfo.smallest_normal),
        # where x86 CPUs compute ~15x slower: ~150 steps of that for each value at
        # rate 0.9, 2.4 -> 5 ms of the CNN's Adam step. Set to 0 every FLUSH_EVERY
        # steps, such a value moves its parameter by < lr * 1e-30 less than in PyTorch.
        below = self.xp.abs(value) < self.xp.finfo(value.dtype).smallest_normal
        if self.in_place:
            value[below] = 0
            return value
        return self.xp.where(below, self.xp.zeros_like(value), value)

    def _descend(self, node, param, delta) -> None:
        """``self.params[node] = param - delta``, in place where arrays can be written."""
        if self.in_place:
            param -= delta
        else:
            self.params[node] = param - delta

    def _own(self, value):
        """A copy of ``value`` the optimizer may write into (the caller's stays as it was)."""
        return self.xp.asarray(value, copy=True) if self.in_place else value

    def _zeros(self):
        """State arrays, one per parameter, zero, on the parameters' backend."""
        return {node: self.xp.zeros_like(value) for node, value in self.params.items()}

    def __repr__(self):
        return f"<{type(self).__name__} lr={self.schedule!r} on {self.backend.name}>"


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def _update(self, node, param, grad, lr):
        self._descend(node, param, lr * grad)


class Momentum(Optimizer):
    """Gradient descent with (heavy-ball or Nesterov) momentum.

    ``v = momentum * v + g``, then ``p -= lr * v`` (heavy ball) or
    ``p -= lr * (g + momentum * v)`` (Nesterov). This is PyTorch's form: the
    velocity is in gradient units, so a schedule's new rate applies at once.

    Parameters
    ----------
    params, lr, backend
        As for :class:`Optimizer`.
    momentum : float
        In [0, 1); 0 is plain SGD.
    nesterov : bool
        Look ahead along the velocity (Sutskever et al., 2013).
    """

    slots = ("velocity",)

    def __init__(self, params, lr, momentum: float = 0.9, *, nesterov: bool = False,
                 weight_decay: float = 0.0, backend=None, clip_norm=None):
        if not 0 <= momentum < 1:
            raise OptimizerError(f"momentum must lie in [0, 1), got {momentum!r}")
        super().__init__(params, lr, weight_decay=weight_decay, backend=backend,
                         clip_norm=clip_norm)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = self._zeros()

    def _update(self, node, param, grad, lr):
        mu = self.momentum
        v = self._decay(self.velocity, node, mu, grad)
        self._descend(node, param, lr * (grad + mu * v if self.nesterov else v))


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015): steps scaled by running moments of the gradient.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``, then
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected
    ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)`` at step t = 1, 2, ...

    Parameters
    ----------
    params, lr, backend
        As for :class:`Optimizer`.
    betas : (float, float)
        The decay rates of the two moments, each in [0, 1).
    eps : float
        Keeps the step finite where ``v`` is 0; > 0.
    """

    slots = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, *,
                 weight_decay: float = 0.0, backend=None, clip_norm=None):
        beta1, beta2 = betas
        for name, beta in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0 <= beta < 1:
                raise OptimizerError(f"{name} must lie in [0, 1), got {beta!r}")
        if not eps > 0:
            raise OptimizerError(f"eps must be positive, got {eps!r}")
        super().__init__(params, lr, weight_decay=weight_decay, backend=backend,
                         clip_norm=clip_norm)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m, self.v = self._zeros(), self._zeros()

    def _corrections(self, lr):
        # Folding the bias corrections into the rate and eps saves two array
        # operations: lr * m_hat / (sqrt(v_hat) + eps) == step_size * m / (sqrt(v) + eps_hat).
        b1, b2 = self.beta1, self.beta2
        t = self.step_count  # already counts this step: 1 on the first
        correction2 = math.sqrt(1 - b2 ** t)
        return lr * correction2 / (1 - b1 ** t), self.eps * correction2

    def _update(self, node, param, grad, lr):
        b1, b2 = self.beta1, self.beta2
        step_size, eps_hat = self._corrections(lr)
        m = self._decay(self.m, node, b1, (1 - b1) * grad)
        v = self._decay(self.v, node, b2, (1 - b2) * (grad * grad))
        self._descend(node, param, step_size * m / (self.xp.sqrt(v) + eps_hat))


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012): steps scaled by a running mean of the squared gradient.

    ``s = alpha * s + (1 - alpha) * g**2``, then ``p -= lr * g / (sqrt(s) + eps)``,
    as PyTorch's ``RMSprop`` without momentum.

    Parameters
    ----------
    params, lr, weight_decay, backend
        As for :class:`Optimizer`.
    alpha : float
        The decay rate of the running mean, in [0, 1).
    eps : float
        Keeps the step finite where ``s`` is 0; > 0.
    """

    slots = ("square_avg",)

    def __init__(self, params, lr=1e-3, alpha: float = 0.99, eps: float = 1e-8, *,
                 weight_decay: float = 0.0, backend=None, clip_norm=None):
        if not 0 <= alpha < 1:
            raise OptimizerError(f"alpha must lie in [0, 1), got {alpha!r}")
        if not eps > 0:
            raise OptimizerError(f"eps must be positive, got {eps!r}")
        super().__init__(params, lr, weight_decay=weight_decay, backend=backend,
                         clip_norm=clip_norm)
        self.alpha, self.eps = float(alpha), float(eps)
        self.square_avg = self._zeros()

    def _update(self, node, param, grad, lr):
        a = self.alpha
        s = self._decay(self.square_avg, node, a, (1 - a) * (grad * grad))
        self._descend(node, param, lr * grad / (self.xp.sqrt(s) + self.eps))


# -- the registry: a new optimizer is its class above and one entry here ------------

#: name -> (build(params, lr, momentum, **common) -> Optimizer, default learning rate).
_REGISTRY: dict = {}


def register_optimizer(name: str, build, default_lr: float) -> None:
    """Make ``name`` known to :func:`make_optimizer`, ``TrainConfig`` and ``miniflow train``.

    ``build(params, lr, momentum, **common)`` returns the optimizer; ``common`` holds
    ``weight_decay``, ``backend`` and ``clip_norm``, to pass on to :class:`Optimizer`.
    ``default_lr`` is the rate used when a run gives none.
    """
    _check_lr(default_lr)
    _REGISTRY[name] = (build, float(default_lr))
    DEFAULT_LR[name] = float(default_lr)


#: The optimizers ``make_optimizer`` knows, by name: a live view of the registry, so
#: one registered later is a valid choice everywhere at once.
OPTIMIZERS = _REGISTRY.keys()
#: The learning rate each optimizer uses when none is given.
DEFAULT_LR: dict = {}

register_optimizer("sgd", lambda params, lr, momentum, **common: SGD(params, lr, **common), 0.1)
register_optimizer("momentum", lambda params, lr, momentum, **common:
                   Momentum(params, lr, momentum, **common), 0.1)
register_optimizer("nesterov", lambda params, lr, momentum, **common:
                   Momentum(params, lr, momentum, nesterov=True, **common), 0.1)
# ``momentum`` is Adam's first beta.
register_optimizer("adam", lambda params, lr, momentum, **common:
                   Adam(params, lr, betas=(momentum, 0.999), **common), 0.001)
register_optimizer("rmsprop", lambda params, lr, momentum, **common:
                   RMSprop(params, lr, **common), 0.001)


def make_optimizer(name: str, params: dict, lr, *, momentum: float = 0.9,
                   weight_decay: float = 0.0, backend=None, clip_norm: float | None = None):
    """The optimizer registered as ``name`` (see :data:`OPTIMIZERS`).

    ``momentum`` is used by the two momentum methods (and as Adam's first beta).
    The other arguments are as for :class:`Optimizer`.
    """
    if name not in _REGISTRY:
        raise OptimizerError(f"unknown optimizer {name!r}; choose one of "
                             f"{', '.join(_REGISTRY)}")
    build, _ = _REGISTRY[name]
    return build(params, lr, momentum, weight_decay=weight_decay, backend=backend,
                 clip_norm=clip_norm)
