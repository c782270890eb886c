"""Models: a layer tree, the graph it builds, a loss, and the parameters' values.

>>> model = mlp(hidden=(256,), activation="relu")
>>> [node.name for node in model.params]
['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']

``mlp`` and ``cnn`` are ordinary models built from :mod:`miniflow.nn` layers;
:func:`from_network` makes a model of any layer tree, and its ``architecture``
is a JSON-able record that :func:`from_architecture` rebuilds it from (which is
how :mod:`miniflow.serialize` saves and loads every such model).

A model is a graph plus its parameter values: ``model.loss`` is the graph's
output, and ``{**model.params, **model.state, model.images: x, model.labels: y}``
feeds it. Nothing about a model is special to the trainer: a graph built by hand,
with its parameter Inputs and their initial arrays, trains the same way (see
:class:`Model`).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import nn
from .errors import ConfigError
from .graph import Input, Node
from .nodes import CrossEntropyWithSoftmax, MeanSquaredError

__all__ = ["Model", "mlp", "cnn", "mlp_network", "cnn_network", "mlp_architecture",
           "cnn_architecture", "from_network",
           "from_architecture", "architecture_of", "network_of", "ACTIVATIONS", "INITS", "LOSSES",
           "describe", "hidden_sizes", "positive", "check_activation", "standardisation_problem"]

#: Activation name -> layer class.
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
#: Initialisations of ``mlp``: "he" suits ReLU, "glorot" suits sigmoid and tanh.
INITS = ("he", "glorot")
_DEFAULT_INIT = {"relu": "he", "sigmoid": "glorot", "tanh": "glorot"}
_INITIALIZER = {"he": "he_normal", "glorot": "glorot_uniform"}
#: Loss name (as architecture records spell it) -> ``node(outputs, targets, name=...)``.
LOSSES = {"cross_entropy": CrossEntropyWithSoftmax, "mse": MeanSquaredError}


@dataclass(eq=False)
class Model:
    """A model's graph and its parameters: what :func:`miniflow.train.train` trains.

    Any graph works: build it from layers (:func:`from_network`) or from Inputs
    and nodes, end it with a loss, and list its parameter Inputs with their
    initial arrays. ``mlp`` and ``cnn`` are two such models, ready-made.

    Attributes
    ----------
    images, labels : Input
        Feed a float32 batch (batch, *input_shape) and its int64 labels (batch,).
    logits : Node
        The scores, (batch, n_classes).
    loss : Node
        The mean loss of the batch, named "loss".
    params : dict
        ``{Input node: float32 NumPy array}`` in layer order, named as PyTorch
        names them: "fc1.weight", "fc1.bias", "fc2.weight", ...
    architecture : dict
        JSON-able, what saving needs to rebuild the graph: for a model of
        layers, ``network`` (the layer tree's record, see
        :meth:`miniflow.nn.Layer.record`), ``input_shape``, ``n_classes``,
        ``loss``, and optionally ``kind`` and ``summary`` (names for people). A
        hand-built graph may leave it without ``network`` (it then cannot be saved).
    input_mean, input_std : float
        The standardisation the model was trained with: it expects
        ``(images - input_mean) / input_std``. 0 and 1 (none) until trained.
    input_shape : tuple of int, optional
        The shape of one example as the graph takes it, e.g. (1, 28, 28); rows
        of flat features are reshaped to it. None: from the architecture.
    network : miniflow.nn.Layer, optional
        The layer tree that built ``logits`` (None for a hand-built graph).
    state : dict
        ``{Input: float32 array}`` of state the graph reads but never
        differentiates: BatchNorm's running statistics. Fed like ``params``.
    updates : dict
        ``{state Input: Node}``: each state array's next value, computed by a
        training run (``run(..., training=True, extras=...)``); the trainer
        stores them in ``state`` after every step.
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
    network: object = None
    state: dict = field(default_factory=dict)
    updates: dict = field(default_factory=dict)

    def __post_init__(self):
        problem = standardisation_problem(self.input_mean, self.input_std)
        if problem:
            raise ConfigError(f"Model: {problem}")
        if self.input_shape is None:
            shape = self.architecture.get("input_shape")
            self.input_shape = (self.architecture["n_inputs"],) if shape is None else shape
        self.input_shape = tuple(int(size) for size in self.input_shape)

    @property
    def n_inputs(self) -> int:
        """The number of features of one example (784 for MNIST)."""
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int:
        """The number of classes (10 where the architecture does not say)."""
        return self.architecture.get("n_classes") or 10

    def __repr__(self):
        count = sum(value.size for value in self.params.values())
        return f"<Model {describe(self.architecture)}, {count:,} parameters>"

    def named_parameters(self) -> list:
        """``[(name, Input)]`` of the parameters, in order (the layers' order)."""
        return [(node.name, node) for node in self.params]

    def parameters(self) -> list:
        """The parameter Inputs, in order."""
        return list(self.params)

    def _check_standardisation(self):
        # Checked again here: the fields may have been set after construction.
        problem = standardisation_problem(self.input_mean, self.input_std)
        if problem:
            raise ConfigError(f"Model: {problem}")

    def outputs(self, images, *, backend="numpy"):
        """The model's outputs (``logits``) for raw images, a NumPy float32 array: a
        classifier's class scores, a regression's predictions.

        ``images`` are as given to training: (N, features) or (N, *input_shape);
        the model's own standardisation is applied.
        """
        from .evaluation import predict

        self._check_standardisation()
        return predict(self, images, backend=backend)

    def predict_proba(self, images, *, backend="numpy"):
        """Class probabilities (N, n_classes) for raw images, as a NumPy array
        (see :meth:`outputs`)."""
        from .evaluation import predict_proba

        self._check_standardisation()
        return predict_proba(self, images, backend=backend)

    def predict(self, images, *, backend="numpy"):
        """A classifier's most probable class of each image, (N,) int64; a regression's
        predictions (:meth:`outputs`)."""
        outputs = self.outputs(images, backend=backend)
        if self.architecture.get("loss", "cross_entropy") == "mse" \
                or not self.architecture.get("n_classes") and outputs.ndim != 2:
            return outputs
        return outputs.argmax(axis=-1)

    def param(self, name: str) -> np.ndarray:
        """The parameter (or state) array called ``name`` (e.g. "fc1.weight").

        The short names of files saved before layers ("fc1.w", "fc1.b") are
        accepted too.
        """
        head, _, tail = name.rpartition(".")
        names = {name, f"{head}.{_LEGACY_SUFFIX[tail]}"} if tail in _LEGACY_SUFFIX else {name}
        for node, value in (*self.params.items(), *self.state.items()):
            if node.name in names:
                return value
        raise KeyError(f"no parameter {name!r}; this model has "
                       f"{', '.join(node.name for node in (*self.params, *self.state))}")

    def save(self, path):
        """Write the model to ``path``, atomically (see :func:`miniflow.serialize.save_model`).

        Raises
        ------
        ConfigError
            Before writing anything, for a graph built by hand: a file must say how
            to rebuild the graph, and only a model of layers has that record.
        """
        from .serialize import save_model

        if self.network is None and not {"network", "kind", "hidden"} & set(self.architecture):
            raise ConfigError("this model's graph was built by hand (its architecture has "
                              "no layer record), so a file could not rebuild it: only models "
                              "built from miniflow.nn layers can be saved "
                              "(models.from_network); or save its parameters yourself "
                              "(model.params)")

        return save_model(self, path)


#: Parameter names of model files written before layers: "fc1.w" is now "fc1.weight".
_LEGACY_SUFFIX = {"w": "weight", "b": "bias"}


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


def hidden_sizes(hidden) -> tuple[int, ...]:
    """Normalise ``hidden``: an int (0 for none) or a sequence of positive ints.

    Raises
    ------
    ConfigError
        Naming ``hidden`` and what it takes.
    """
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


def positive(value, what) -> int:
    """``value`` as an int if it is a positive integer (not a bool), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_activation(activation) -> str:
    """``activation`` if it names one of :data:`ACTIVATIONS`, else a ConfigError listing them."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of "
                         f"{', '.join(ACTIVATIONS)}")
    return activation


# -- models of layers ----------------------------------------------------------------------

def architecture_of(network, input_shape, *, n_classes=None, loss="cross_entropy", kind=None,
                    summary=None) -> dict:
    """The JSON-able architecture record of a model of ``network`` (see :class:`Model`)."""
    record = {"network": network.record(), "input_shape": [int(s) for s in input_shape],
              "n_classes": n_classes, "loss": loss}
    if kind is not None:
        record["kind"] = kind
    if summary is not None:
        record["summary"] = summary
    return record


#: The keys of an architecture record of layers, each with its JSON type(s).
_RECORD_FIELDS = {"network": (dict,), "input_shape": (list,), "n_classes": (int, type(None)),
                  "loss": (str,), "kind": (str,), "summary": (str,)}


def network_of(architecture: dict):
    """The layer tree an architecture record describes, checked; no array is allocated.

    Raises
    ------
    ConfigError, TypeError
        The record has other keys or types than :func:`architecture_of` writes,
        or describes a layer that cannot be built.
    """
    if not isinstance(architecture, Mapping) or not {"network", "input_shape", "loss"} \
            <= set(architecture) <= set(_RECORD_FIELDS):
        raise ConfigError(f"an architecture record holds {sorted(_RECORD_FIELDS)} "
                          f"(kind and summary optional), this one "
                          f"{sorted(architecture) if isinstance(architecture, Mapping) else '-'}")
    for key, value in architecture.items():
        if not isinstance(value, _RECORD_FIELDS[key]) or isinstance(value, bool):
            raise ConfigError(f"{key} of an architecture record must be of JSON type "
                              f"{' or '.join(t.__name__ for t in _RECORD_FIELDS[key])}")
    for size in architecture["input_shape"]:
        positive(size, "input_shape")
    if architecture.get("n_classes") is not None:
        positive(architecture["n_classes"], "n_classes")
    if architecture["loss"] not in LOSSES:
        raise ConfigError(f"unknown loss {architecture['loss']!r}; this miniflow knows "
                          f"{', '.join(LOSSES)}")
    return nn.from_record(architecture["network"])


def from_network(network, input_shape, *, n_classes=None, loss="cross_entropy", seed=0,
                 kind=None, summary=None) -> Model:
    """A model of the layer tree ``network``, its parameters drawn with ``seed``.

    Parameters
    ----------
    network : miniflow.nn.Layer
        Called on the images Input, it gives the logits (or, for "mse", the predictions).
    input_shape : sequence of int
        One example's shape, e.g. (784,) or (1, 28, 28).
    n_classes : int, optional
        The number of classes; None takes the width of the network's output.
    loss : {"cross_entropy", "mse"}
    seed : int
        Seeds :meth:`miniflow.nn.Layer.init`.
    kind, summary : str, optional
        Names shown to people ("cnn", "cnn 32-64-128-10"); :func:`describe` uses them.

    Returns
    -------
    Model
        Whose ``architecture`` :func:`from_architecture` rebuilds it from.
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    input_shape = tuple(positive(s, "input_shape") for s in input_shape)
    model = _assemble(network, input_shape, loss, network.init(seed))
    if n_classes is None:
        from .executor import evaluate

        n_classes = int(evaluate(model.logits, {**model.params, **model.state, model.images:
                                                np.zeros((1, *input_shape), np.float32)}
                                 ).shape[-1])
    model.architecture = architecture_of(network, input_shape, n_classes=n_classes, loss=loss,
                                         kind=kind, summary=summary)
    return model


def from_architecture(architecture: dict, *, seed: int = 0, params: dict | None = None,
                      network=None) -> Model:
    """Rebuild the model an architecture record describes: the one function for every kind.

    Parameters
    ----------
    architecture : dict
        A :class:`Model`'s ``architecture`` of layers.
    seed : int
        Seeds the first parameter values (unused where ``params`` gives them all).
    params : dict, optional
        ``{name: array}`` of parameter and state values (e.g. read from a file)
        to use instead of drawn ones.
    network : miniflow.nn.Layer, optional
        The tree :func:`network_of` already made of this record.
    """
    network = network_of(architecture) if network is None else network
    values = network.init(seed) if params is None else {
        node: params[name] for name, node in network.named_parameters()}
    model = _assemble(network, tuple(architecture["input_shape"]), architecture["loss"], values)
    if params is not None:
        model.state = {node: params[name] for name, node in network.named_states()}
    model.architecture = architecture
    return model


def _assemble(network, input_shape, loss, params) -> Model:
    images, labels = Input(name="images"), Input(name="labels")
    logits = network(images)
    return Model(images=images, labels=labels, logits=logits,
                 loss=LOSSES[loss](logits, labels, name="loss"), params=params,
                 architecture={"input_shape": list(input_shape)}, input_shape=input_shape,
                 network=network, state=network.init_state(), updates=network.updates())


# -- the ready-made models -----------------------------------------------------------------

def mlp_network(hidden=(256,), activation: str = "relu", *, n_inputs: int = 784,
                n_classes: int = 10, init: str | None = None):
    """The layers of :func:`mlp`: a ``Sequential`` of "fc1", "relu1", ..., "fcN"."""
    sizes = hidden_sizes(hidden)
    activation = check_activation(activation)
    n_inputs = positive(n_inputs, "n_inputs")
    n_classes = positive(n_classes, "n_classes")
    init = _DEFAULT_INIT[activation] if init is None else init
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)} (or None)")
    widths = (n_inputs, *sizes, n_classes)
    layers = {}
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers[f"fc{k}"] = nn.Linear(fan_in, fan_out, weight_init=_INITIALIZER[init])
        if k < len(widths) - 1:
            layers[f"{activation}{k}"] = ACTIVATIONS[activation]()
    return nn.Sequential(layers)


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
        Of :func:`mlp_network`'s layers: ``nn.Linear`` layers "fc1", "fc2", ...
        with parameters "fc1.weight" (in, out) and "fc1.bias" (out,), float32.
    """
    return from_architecture(mlp_architecture(hidden, activation, n_inputs=n_inputs,
                                              n_classes=n_classes, init=init), seed=seed)


def mlp_architecture(hidden=(256,), activation: str = "relu", *, n_inputs: int = 784,
                     n_classes: int = 10, init: str | None = None) -> dict:
    """The architecture record of :func:`mlp` (the same arguments, but ``seed``), allocating nothing."""
    network = mlp_network(hidden, activation, n_inputs=n_inputs, n_classes=n_classes, init=init)
    return architecture_of(network, (n_inputs,), n_classes=n_classes, kind="mlp",
                           summary=_mlp_summary(network, activation))


def _mlp_summary(network, activation) -> str:
    linear = [layer for layer in network if isinstance(layer, nn.Linear)]
    widths = [linear[0].in_features, *(layer.out_features for layer in linear)]
    return f"{'-'.join(str(w) for w in widths)} {activation}"


def cnn_network(channels=(32, 64), hidden: int = 128, dropout: float = 0.1, *,
                image_shape=(1, 28, 28), n_classes: int = 10):
    """The layers of :func:`cnn`: "conv1", "pool1", "relu1", ..., "flatten", "fc1", "fc2"."""
    try:
        channels = tuple(positive(c, "channels") for c in channels)
    except TypeError:
        raise ConfigError(f"channels must be a sequence of positive integers, "
                         f"got {channels!r}") from None
    if not channels:
        raise ConfigError("channels must name at least one convolution")
    hidden = positive(hidden, "hidden")
    n_classes = positive(n_classes, "n_classes")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
    image_shape = tuple(positive(size, "image_shape") for size in image_shape)
    if len(image_shape) != 3:
        raise ConfigError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    height, width = image_shape[1:]
    if height >> len(channels) < 1 or width >> len(channels) < 1:
        raise ConfigError(f"{len(channels)} poolings halve {height}x{width} images to nothing")

    layers, in_channels = {}, image_shape[0]
    for k, out_channels in enumerate(channels, start=1):
        layers[f"conv{k}"] = nn.Conv2D(in_channels, out_channels, 3, padding="same")
        # Pool, then ReLU: the same function as ReLU then pool (max commutes with a
        # rising function), with the ReLU on a quarter of the values.
        layers[f"pool{k}"] = nn.MaxPool2D(2)
        layers[f"relu{k}"] = nn.ReLU()
        in_channels, height, width = out_channels, height // 2, width // 2
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(in_channels * height * width, hidden)
    layers[f"relu{len(channels) + 1}"] = nn.ReLU()
    if dropout:
        layers["dropout"] = nn.Dropout(float(dropout))
    layers["fc2"] = nn.Linear(hidden, n_classes)
    return nn.Sequential(layers)


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
        Of :func:`cnn_network`'s layers: parameters "conv1.weight" (out, in, 3, 3),
        "conv1.bias", ..., "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
        float32; ``input_shape`` is ``image_shape``.
    """
    return from_architecture(cnn_architecture(channels, hidden, dropout, image_shape=image_shape,
                                              n_classes=n_classes), seed=seed)


def cnn_architecture(channels=(32, 64), hidden: int = 128, dropout: float = 0.1, *,
                     image_shape=(1, 28, 28), n_classes: int = 10) -> dict:
    """The architecture record of :func:`cnn` (the same arguments, but ``seed``), allocating nothing."""
    network = cnn_network(channels, hidden, dropout, image_shape=image_shape,
                          n_classes=n_classes)
    widths = [layer.out_channels for layer in network if isinstance(layer, nn.Conv2D)]
    widths += [layer.out_features for layer in network if isinstance(layer, nn.Linear)]
    return architecture_of(network, image_shape, n_classes=n_classes, kind="cnn",
                           summary=f"cnn {'-'.join(str(w) for w in widths)}")


def describe(architecture: dict) -> str:
    """A short name for an architecture, e.g. "784-256-10 relu" or "cnn 32-64-128-10".

    A record of layers without a ``summary`` is named by its layers:
    "Sequential[Conv2D 1-8 3x3, BatchNorm2d 8, ReLU, ...]".
    """
    try:
        if "network" in architecture:
            summary = architecture.get("summary")
            return summary if isinstance(summary, str) else _layers_summary(
                architecture["network"])
        # Records of files written before layers (format version 1).
        if architecture.get("kind") == "cnn":
            widths = [*architecture["channels"], architecture["hidden"],
                      architecture["n_classes"]]
            return f"cnn {'-'.join(str(w) for w in widths)}"
        widths = [architecture["n_inputs"], *architecture["hidden"], architecture["n_classes"]]
        return f"{'-'.join(str(w) for w in widths)} {architecture['activation']}"
    except (AttributeError, KeyError, TypeError, RecursionError):
        return repr(architecture)


def _layers_summary(record, depth=0) -> str:
    kind = record["layer"]
    if depth > 3:
        return "..."
    if kind == "Sequential":
        return f"Sequential[{', '.join(_layers_summary(r, depth + 1) for _, r in record['layers'])}]"
    if kind == "Residual":
        return f"Residual({_layers_summary(record['body'], depth + 1)})"
    if kind == "Linear":
        return f"Linear {record['in_features']}-{record['out_features']}"
    if kind == "Conv2D":
        return (f"Conv2D {record['in_channels']}-{record['out_channels']} "
                f"{'x'.join(str(k) for k in record['kernel_size'])}")
    if "num_features" in record:
        return f"{kind} {record['num_features']}"
    return kind
