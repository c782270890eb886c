"""Multi-layer perceptrons for classification.

>>> model = mlp(hidden=(256,), activation="relu")
>>> [node.name for node in model.params]
['fc1.w', 'fc1.b', 'fc2.w', 'fc2.b']

A model is a graph plus its parameter values: ``model.loss`` is the graph's
output, and ``{**model.params, model.images: x, model.labels: y}`` feeds it.
Saving and loading live in :mod:`miniflow.serialize`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .graph import Input, Node
from .nodes import CrossEntropyWithSoftmax, Linear, ReLU, Sigmoid, Tanh

__all__ = ["Model", "mlp", "ACTIVATIONS", "INITS", "describe"]

#: Activation name -> node class.
ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
#: Initialisations: "he" suits ReLU, "glorot" suits sigmoid and tanh.
INITS = ("he", "glorot")
_DEFAULT_INIT = {"relu": "he", "sigmoid": "glorot", "tanh": "glorot"}


@dataclass(eq=False)
class Model:
    """A classifier's graph and its parameters.

    Attributes
    ----------
    images, labels : Input
        Feed a float32 batch (batch, n_inputs) and its int64 labels (batch,).
    logits : Node
        The scores, (batch, n_classes).
    loss : CrossEntropyWithSoftmax
        The mean cross-entropy of the batch, named "loss".
    params : dict
        ``{Input node: float32 NumPy array}`` in layer order, nodes named
        "fc1.w", "fc1.b", "fc2.w", ...
    architecture : dict
        JSON-able: ``hidden`` (list of sizes), ``activation``, ``n_inputs``,
        ``n_classes``. ``mlp(**architecture)`` rebuilds the same graph.
    input_mean, input_std : float
        The standardisation the model was trained with: it expects
        ``(images - input_mean) / input_std``. 0 and 1 (none) until trained.
    """

    images: Input
    labels: Input
    logits: Node
    loss: CrossEntropyWithSoftmax
    params: dict
    architecture: dict
    input_mean: float = 0.0
    input_std: float = 1.0

    def __repr__(self):
        count = sum(value.size for value in self.params.values())
        return f"<Model {describe(self.architecture)}, {count:,} parameters>"

    def param(self, name: str) -> np.ndarray:
        """The parameter array called ``name`` (e.g. "fc1.w")."""
        for node, value in self.params.items():
            if node.name == name:
                return value
        raise KeyError(f"no parameter {name!r}; this model has "
                       f"{', '.join(node.name for node in self.params)}")

    def save(self, path):
        """Write the model to ``path``, atomically (see :func:`miniflow.serialize.save_model`)."""
        from .serialize import save_model

        return save_model(self, path)


def _hidden_sizes(hidden) -> tuple[int, ...]:
    """Normalise ``hidden``: an int (0 for none) or a sequence of positive ints."""
    sizes = (hidden,) if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise ValueError(f"hidden must be an int or a sequence of ints, got {hidden!r}") from None
    if sizes == (0,):
        return ()
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"hidden layer sizes must be positive integers (or 0 alone, for "
                             f"no hidden layer), got {hidden!r}")
    return tuple(int(size) for size in sizes)


def _positive(value, what) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_activation(activation) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of "
                         f"{', '.join(ACTIVATIONS)}")
    return activation


def mlp(hidden=(256,), activation: str = "relu", *, n_inputs: int = 784, n_classes: int = 10,
        seed: int = 0, init: str | None = None) -> Model:
    """Build a fully connected classifier: Linear and activation per hidden layer, then Linear.

    Parameters
    ----------
    hidden : int or sequence of int
        The sizes of the hidden layers: ``(512, 256)``, ``256`` for one, and
        ``()`` or ``0`` for none (softmax regression, the lab's 1-layer net).
    activation : {"relu", "sigmoid", "tanh"}
        The nonlinearity after each hidden layer.
    n_inputs, n_classes : int
        The width of an input row and the number of classes.
    seed : int
        Seeds the initial weights: the same seed gives the same model.
    init : {"he", "glorot"} or None
        He-normal (std sqrt(2 / fan_in)), which keeps ReLU activations from
        shrinking layer after layer, or Glorot-uniform (limit
        sqrt(6 / (fan_in + fan_out))), which suits sigmoid and tanh. None picks
        by activation. Biases start at zero.

    Returns
    -------
    Model
        Layers are ``Linear`` nodes named "fc1", "fc2", ...; their parameters
        "fc1.w" (in, out) and "fc1.b" (out,), float32.
    """
    sizes = _hidden_sizes(hidden)
    activation = _check_activation(activation)
    n_inputs = _positive(n_inputs, "n_inputs")
    n_classes = _positive(n_classes, "n_classes")
    init = _DEFAULT_INIT[activation] if init is None else init
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)} (or None)")

    rng = np.random.default_rng(seed)
    images, labels = Input(name="images"), Input(name="labels")
    widths = (n_inputs, *sizes, n_classes)
    params = {}
    x = images
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        w, b = Input(name=f"fc{k}.w"), Input(name=f"fc{k}.b")
        params[w] = _initial_weights(rng, init, fan_in, fan_out)
        params[b] = np.zeros(fan_out, dtype=np.float32)
        x = Linear(x, w, b, name=f"fc{k}")
        if k < len(widths) - 1:
            x = ACTIVATIONS[activation](x, name=f"{activation}{k}")
    architecture = {"hidden": list(sizes), "activation": activation,
                    "n_inputs": n_inputs, "n_classes": n_classes}
    return Model(images=images, labels=labels, logits=x,
                 loss=CrossEntropyWithSoftmax(x, labels, name="loss"),
                 params=params, architecture=architecture)


def _initial_weights(rng, init, fan_in, fan_out) -> np.ndarray:
    if init == "he":
        weights = rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
    else:
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights = rng.uniform(-limit, limit, size=(fan_in, fan_out))
    return weights.astype(np.float32)


def describe(architecture: dict) -> str:
    """A short name for an architecture, e.g. "784-256-10 relu"."""
    try:
        widths = [architecture["n_inputs"], *architecture["hidden"], architecture["n_classes"]]
        return f"{'-'.join(str(w) for w in widths)} {architecture['activation']}"
    except (KeyError, TypeError):
        return repr(architecture)
