"""Ready-made classifiers: multi-layer perceptrons and a convolutional network.

>>> model = mlp(hidden=(256,), activation="relu")
>>> [node.name for node in model.params]
['fc1.w', 'fc1.b', 'fc2.w', 'fc2.b']

A model is a graph plus its parameter values: ``model.loss`` is the graph's
output, and ``{**model.params, model.images: x, model.labels: y}`` feeds it.
Nothing about a model is special to the trainer: a graph built by hand, with
its parameter Inputs and their initial arrays, trains the same way (see
:class:`Model`). Saving and loading live in :mod:`miniflow.serialize`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .graph import Input, Node
from .nodes import (Conv2D, CrossEntropyWithSoftmax, Dropout, Flatten, Linear, MaxPool2D, ReLU,
                    Sigmoid, Tanh)

__all__ = ["Model", "mlp", "cnn", "ACTIVATIONS", "INITS", "describe"]

#: Activation name -> node class.
ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
#: Initialisations: "he" suits ReLU, "glorot" suits sigmoid and tanh.
INITS = ("he", "glorot")
_DEFAULT_INIT = {"relu": "he", "sigmoid": "glorot", "tanh": "glorot"}


@dataclass(eq=False)
class Model:
    """A classifier's graph and its parameters: what :func:`miniflow.train.train` trains.

    Any graph works: build it from Inputs and nodes, end it with a
    classification loss, and list its parameter Inputs with their initial
    arrays. ``mlp`` and ``cnn`` are two such graphs, ready-made.

    Attributes
    ----------
    images, labels : Input
        Feed a float32 batch (batch, *input_shape) and its int64 labels (batch,).
    logits : Node
        The scores, (batch, n_classes).
    loss : CrossEntropyWithSoftmax
        The mean cross-entropy of the batch, named "loss".
    params : dict
        ``{Input node: float32 NumPy array}`` in layer order, nodes named
        "fc1.w", "fc1.b", "fc2.w", ...
    architecture : dict
        JSON-able, what saving needs to rebuild the graph. For ``mlp``:
        ``hidden`` (list of sizes), ``activation``, ``n_inputs``, ``n_classes``
        (``mlp(**architecture)`` rebuilds it); for ``cnn``: ``kind`` "cnn" and
        its arguments. A hand-built graph may leave it empty (it then cannot
        be saved).
    input_mean, input_std : float
        The standardisation the model was trained with: it expects
        ``(images - input_mean) / input_std``. 0 and 1 (none) until trained.
    input_shape : tuple of int, optional
        The shape of one example as the graph takes it, e.g. (1, 28, 28); rows
        of flat features are reshaped to it. None: ``(architecture["n_inputs"],)``.
    """

    images: Input
    labels: Input
    logits: Node
    loss: Node
    params: dict
    architecture: dict
    input_mean: float = 0.0
    input_std: float = 1.0
    input_shape: tuple | None = None

    def __post_init__(self):
        problem = standardisation_problem(self.input_mean, self.input_std)
        if problem:
            raise ConfigError(f"Model: {problem}")
        if self.input_shape is None:
            self.input_shape = (self.architecture["n_inputs"],)
        self.input_shape = tuple(int(size) for size in self.input_shape)

    @property
    def n_inputs(self) -> int:
        """The number of features of one example (784 for MNIST)."""
        return math.prod(self.input_shape)

    def __repr__(self):
        count = sum(value.size for value in self.params.values())
        return f"<Model {describe(self.architecture)}, {count:,} parameters>"

    def predict_proba(self, images, *, backend="numpy"):
        """Class probabilities (N, n_classes) for raw images, as a NumPy array.

        ``images`` are as given to training: (N, features) or (N, *input_shape),
        e.g. pixels in [0, 1]; the model's own standardisation is applied.
        """
        from .train import predict_proba

        # Checked again here: the fields may have been set after construction.
        problem = standardisation_problem(self.input_mean, self.input_std)
        if problem:
            raise ConfigError(f"Model: {problem}")
        return predict_proba(self, images, backend=backend)

    def predict(self, images, *, backend="numpy"):
        """The most probable class of each image, (N,) int64 (see :meth:`predict_proba`)."""
        return self.predict_proba(images, backend=backend).argmax(axis=-1)

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


#: The largest |standardised pixel| a model may ask for: a standardisation gives a few
#: units; beyond this, float32 logits overflow (input_std 1e-300, input_mean 1e300).
STANDARDISED_LIMIT = 1e6


def standardisation_problem(mean, std) -> str | None:
    """Why ``(images - mean) / std`` is no usable standardisation of pixels in [0, 1], or None."""
    for name, value in (("input_mean", mean), ("input_std", std)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r}"
    if not std > 0:
        return f"input_std must be positive (inputs are divided by it), got {std!r}"
    if (1 + abs(mean)) / std > STANDARDISED_LIMIT:
        return (f"input_mean {mean!r} and input_std {std!r} would scale pixels in [0, 1] "
                f"beyond +-{STANDARDISED_LIMIT:g} (a standardisation gives a few units)")
    return None


def _hidden_sizes(hidden) -> tuple[int, ...]:
    """Normalise ``hidden``: an int (0 for none) or a sequence of positive ints."""
    sizes = (hidden,) if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise ConfigError(f"hidden must be an int or a sequence of ints, got {hidden!r}") from None
    if sizes == (0,):
        return ()
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"hidden layer sizes must be positive integers (or 0 alone, for "
                             f"no hidden layer), got {hidden!r}")
    return tuple(int(size) for size in sizes)


def _positive(value, what) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_activation(activation) -> str:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of "
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
        raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)} (or None)")

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


def cnn(channels=(32, 64), hidden: int = 128, dropout: float = 0.1, *,
        image_shape=(1, 28, 28), n_classes: int = 10, seed: int = 0) -> Model:
    """Build a convolutional classifier: (3x3 conv, 2x2 max pool, ReLU) per entry of
    ``channels``, then a dense ReLU layer, dropout, and a dense layer to the classes.

    Parameters
    ----------
    channels : sequence of int
        Output channels of each convolution ("same" padding, so only the
        pooling halves the images).
    hidden : int
        Width of the dense layer.
    dropout : float
        The rate of the Dropout after the dense layer, in [0, 1); active only
        in training runs.
    image_shape : (int, int, int)
        (channels, height, width) of one image.
    n_classes : int
    seed : int
        Seeds the initial weights (He-normal, biases zero).

    Returns
    -------
    Model
        Parameters "conv1.w" (out, in, 3, 3), "conv1.b", ..., "fc1.w", "fc1.b",
        "fc2.w", "fc2.b", float32; ``input_shape`` is ``image_shape``.
    """
    try:
        channels = tuple(_positive(c, "channels") for c in channels)
    except TypeError:
        raise ConfigError(f"channels must be a sequence of positive integers, "
                         f"got {channels!r}") from None
    if not channels:
        raise ConfigError("channels must name at least one convolution")
    hidden = _positive(hidden, "hidden")
    n_classes = _positive(n_classes, "n_classes")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
    image_shape = tuple(_positive(size, "image_shape") for size in image_shape)
    if len(image_shape) != 3:
        raise ConfigError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    height, width = image_shape[1:]
    if height >> len(channels) < 1 or width >> len(channels) < 1:
        raise ConfigError(f"{len(channels)} poolings halve {height}x{width} images to nothing")

    rng = np.random.default_rng(seed)
    images, labels = Input(name="images"), Input(name="labels")
    params = {}
    x, in_channels = images, image_shape[0]
    for k, out_channels in enumerate(channels, start=1):
        w, b = Input(name=f"conv{k}.w"), Input(name=f"conv{k}.b")
        fan_in = in_channels * 9
        params[w] = (rng.standard_normal((out_channels, in_channels, 3, 3))
                     * math.sqrt(2.0 / fan_in)).astype(np.float32)
        params[b] = np.zeros(out_channels, dtype=np.float32)
        x = Conv2D(x, w, b, padding="same", name=f"conv{k}")
        # Pool, then ReLU: the same function as ReLU then pool (max commutes with a
        # rising function), with the ReLU on a quarter of the values.
        x = ReLU(MaxPool2D(x, 2, name=f"pool{k}"), name=f"relu{k}")
        in_channels, height, width = out_channels, height // 2, width // 2
    x = Flatten(x, name="flatten")
    widths = (in_channels * height * width, hidden, n_classes)
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        w, b = Input(name=f"fc{k}.w"), Input(name=f"fc{k}.b")
        params[w] = _initial_weights(rng, "he", fan_in, fan_out)
        params[b] = np.zeros(fan_out, dtype=np.float32)
        x = Linear(x, w, b, name=f"fc{k}")
        if k == 1:
            x = ReLU(x, name=f"relu{len(channels) + 1}")
            if dropout:
                x = Dropout(x, dropout, name="dropout")
    architecture = {"kind": "cnn", "channels": list(channels), "hidden": hidden,
                    "dropout": float(dropout), "image_shape": list(image_shape),
                    "n_classes": n_classes}
    return Model(images=images, labels=labels, logits=x,
                 loss=CrossEntropyWithSoftmax(x, labels, name="loss"),
                 params=params, architecture=architecture, input_shape=image_shape)


def _initial_weights(rng, init, fan_in, fan_out) -> np.ndarray:
    if init == "he":
        weights = rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
    else:
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights = rng.uniform(-limit, limit, size=(fan_in, fan_out))
    return weights.astype(np.float32)


def describe(architecture: dict) -> str:
    """A short name for an architecture, e.g. "784-256-10 relu" or "cnn 32-64-128-10"."""
    try:
        if architecture.get("kind") == "cnn":
            widths = [*architecture["channels"], architecture["hidden"],
                      architecture["n_classes"]]
            return f"cnn {'-'.join(str(w) for w in widths)}"
        widths = [architecture["n_inputs"], *architecture["hidden"], architecture["n_classes"]]
        return f"{'-'.join(str(w) for w in widths)} {architecture['activation']}"
    except (KeyError, TypeError):
        return repr(architecture)
