"""Layers: objects that own parameter Inputs and build graphs of nodes when called.

A layer called on nodes returns a node; nothing runs until the graph does. Its
parameters are :class:`~miniflow.Input` nodes whose first values
:meth:`Layer.init` draws from a seeded generator, so a graph built from layers
is an ordinary graph, and trains, compiles and draws like one.

>>> from miniflow import Input
>>> from miniflow import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> logits = net(Input("x"))
>>> [name for name, _ in net.named_parameters()]
['0.weight', '0.bias', '2.weight', '2.bias']
>>> values = net.init(seed=0)          # {Input: float32 array}, in that order

Every layer is described by a JSON-able record, ``{"layer": "Linear",
"in_features": 4, ...}``, and :func:`from_record` rebuilds any tree of the
library's layers from it: that is how model files store architectures. A new
layer is one class here, decorated with :func:`register`; its constructor's
keyword arguments are its record (see :meth:`Layer.config`).

Conventions are PyTorch's where it has them: parameter names (``weight``,
``bias``, ``running_mean``), the layout of convolution weights (out, in, kh,
kw), BatchNorm's momentum and its unbiased running variance. One exception:
a :class:`Linear` weight is (in_features, out_features), the layout of
miniflow's ``Linear`` node (``x @ w + b``) and of JAX/Flax, the transpose of
``torch.nn.Linear.weight``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .. import nodes
from ..errors import ConfigError
from ..graph import Input, Node
from .init import INITIALIZERS

__all__ = ["Layer", "LAYERS", "register", "from_record", "Linear", "Conv2D", "MaxPool2D",
           "AvgPool2D", "Flatten", "Dropout", "LayerNorm", "BatchNorm1d", "BatchNorm2d",
           "Embedding", "Sequential", "Residual", "ReLU", "Sigmoid", "Tanh", "GELU", "LeakyReLU",
           "ELU", "Identity"]

#: Layer name (its class name, as records spell it) -> class. ``@register`` fills it.
LAYERS: dict[str, type] = {}


def register(cls):
    """Make a Layer subclass known to :func:`from_record` under its class name."""
    LAYERS[cls.__name__] = cls
    return cls


# -- argument checks (records come from files: only JSON's plain values pass) ------------

def _int(value, what, low=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _ints(value, what, count, low=1) -> tuple:
    """An int or a sequence of ``count`` of them, as a tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (_int(value, what, low),) * count
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != count:
        raise ConfigError(f"{what} must be an integer >= {low} or {count} of them, "
                          f"got {value!r}")
    return tuple(_int(v, what, low) for v in value)


def _real(value, what, low=-math.inf, high=math.inf, *, open_low=False, open_high=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            (low < value if open_low else low <= value)
            and (value < high if open_high else value <= high)):
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ConfigError(f"{what} must be a number in {bounds}, got {value!r}")
    return float(value)


def _bool(value, what) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value


# Public names of the checks above, for the layer modules beside this one.
check_int, check_bool, check_real = _int, _bool, _real


def _init(name, what) -> str:
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(INITIALIZERS)}")
    return name


# -- the base class ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Slot:
    """A parameter or a state array: its Input and how its first value is made."""

    node: Input
    shape: tuple
    init: str
    fan_in: int = 1
    fan_out: int = 1


class Layer:
    """Base class of layers: owns parameter and state Inputs; ``layer(x)`` builds nodes.

    A subclass creates its parameters with :meth:`add_parameter`, its state
    (running statistics) with :meth:`add_state` and its sub-layers with
    :meth:`add_layer` in ``__init__``, stores its settings, and defines:

    ``build(self, x) -> Node``
        The graph of this layer on input node ``x``, named after the layer.
    ``config(self) -> dict``
        Its constructor's keyword arguments as JSON values (layers as records).

    Names are dotted paths in the tree, as PyTorch's ``named_parameters``: a
    Linear adopted as "fc1" has Inputs "fc1.weight" and "fc1.bias", and its
    node is named "fc1". A layer belongs to at most one parent.
    """

    def __init__(self):
        self._parameters: dict[str, _Slot] = {}
        self._states: dict[str, _Slot] = {}
        self._layers: dict[str, Layer] = {}
        self._updates: dict = {}
        self._parent = None
        self.path = ""

    # construction
    def add_parameter(self, name, shape, init, fan_in=1, fan_out=1) -> Input:
        """Create the parameter Input ``name`` of ``shape``, first drawn by initialiser ``init``."""
        node = Input(name=name)
        self._parameters[name] = _Slot(node, tuple(shape), init, fan_in, fan_out)
        return node

    def add_state(self, name, shape, init) -> Input:
        """Create a state Input (e.g. a running mean): fed, never differentiated, updated by
        the nodes a training run computes (see :meth:`updates`)."""
        node = Input(name=name)
        self._states[name] = _Slot(node, tuple(shape), init)
        return node

    def add_layer(self, name, layer) -> "Layer":
        """Adopt ``layer`` as the sub-layer ``name``: its names gain the prefix ``name.``."""
        if not isinstance(layer, Layer):
            raise ConfigError(f"{type(self).__name__}: {name!r} must be a Layer, got "
                              f"{type(layer).__name__}")
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"a layer's name must be a non-empty string without '.', "
                              f"got {name!r}")
        if name in self._layers:
            raise ConfigError(f"{type(self).__name__} has two layers named {name!r}")
        if layer._parent is not None or layer is self:
            raise ConfigError(f"{layer!r} already belongs to a model; a layer has one place "
                              "in a tree (build a second one to use it twice)")
        layer._parent = self
        for sub in layer.walk():
            sub.path = name if not sub.path else f"{name}.{sub.path}"
            for slot in (*sub._parameters.values(), *sub._states.values()):
                slot.node.name = f"{name}.{slot.node.name}"
        self._layers[name] = layer
        return layer

    def walk(self):
        """This layer, then every layer inside it, depth first."""
        yield self
        for layer in self._layers.values():
            yield from layer.walk()

    # what subclasses define
    def build(self, *inputs) -> Node:
        raise NotImplementedError(f"{type(self).__name__} has no build method")

    def config(self) -> dict:
        """The constructor's keyword arguments, JSON-able: what :meth:`record` holds."""
        return {}

    def __call__(self, *inputs) -> Node:
        return self.build(*inputs)

    # the tree
    def record(self) -> dict:
        """This layer and everything below it as JSON values; :func:`from_record` inverts it."""
        return {"layer": type(self).__name__, **self.config()}

    def named_parameters(self) -> list:
        """``[(dotted name, Input)]``: this layer's parameters, then each sub-layer's, in order."""
        return [(slot.node.name, slot.node) for layer in self.walk()
                for slot in layer._parameters.values()]

    def parameters(self) -> list:
        """The parameter Inputs, in the order of :meth:`named_parameters`."""
        return [node for _, node in self.named_parameters()]

    def named_states(self) -> list:
        """``[(dotted name, Input)]`` of the state (running statistics), in tree order."""
        return [(slot.node.name, slot.node) for layer in self.walk()
                for slot in layer._states.values()]

    def shapes(self) -> dict:
        """``{dotted name: shape}`` of every parameter and state array, computed, not allocated."""
        return {slot.node.name: slot.shape for layer in self.walk()
                for slot in (*layer._parameters.values(), *layer._states.values())}

    def init(self, seed: int = 0) -> dict:
        """First values of the parameters: ``{Input: float32 array}``, in order.

        One NumPy generator seeded with ``seed`` draws them all, parameter after
        parameter, so the same tree and seed give the same numbers.
        """
        rng = np.random.default_rng(seed)
        return {slot.node: INITIALIZERS[slot.init](rng, slot.shape, slot.fan_in, slot.fan_out)
                .astype(np.float32) for layer in self.walk()
                for slot in layer._parameters.values()}

    def init_state(self) -> dict:
        """First values of the state (zeros and ones): ``{Input: float32 array}``."""
        return {slot.node: INITIALIZERS[slot.init](None, slot.shape, 1, 1).astype(np.float32)
                for layer in self.walk() for slot in layer._states.values()}

    def updates(self) -> dict:
        """``{state Input: node}``: the next value of each state array, as the graph built
        by the latest call computes it in a training run.

        Ask for these nodes with ``run(..., training=True, extras=...)`` and feed
        their values as the state next time: the graph itself never changes.
        """
        return {node: update for layer in self.walk()
                for node, update in layer._updates.items()}

    def _name(self):
        return self.path or None

    def __repr__(self):
        settings = ", ".join(f"{key}={value!r}" for key, value in self.config().items()
                             if not isinstance(value, (dict, list)) or key == "kernel_size")
        where = f" {self.path!r}" if self.path else ""
        return f"<{type(self).__name__}{where}({settings})>"


def from_record(record) -> Layer:
    """Rebuild a layer tree from :meth:`Layer.record`'s output; nothing is allocated.

    Raises
    ------
    ConfigError
        (a ValueError) The record names an unknown layer or holds a value the
        layer refuses. A TypeError for a keyword the layer does not take.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("layer"), str):
        raise ConfigError(f"a layer record is a mapping with a 'layer' name, got "
                          f"{_clip(repr(record))}")
    cls = LAYERS.get(record["layer"])
    if cls is None:
        raise ConfigError(f"unknown layer {_clip(repr(record['layer']))}; this miniflow "
                          f"knows {', '.join(sorted(LAYERS))}")
    return cls.from_config({key: value for key, value in record.items() if key != "layer"})


def _clip(text, limit=200):
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _from_config(cls, config):
    return cls(**config)


Layer.from_config = classmethod(_from_config)


# -- layers with parameters ----------------------------------------------------------------

@register
class Linear(Layer):
    """``x @ weight + bias``, weight (in_features, out_features): miniflow's ``Linear`` node.

    The weight is the transpose of ``torch.nn.Linear.weight`` (see the module's
    notes); it starts He-normal (std sqrt(2 / in_features)), the bias at zero.
    """

    def __init__(self, in_features, out_features, bias=True, *, weight_init="he_normal",
                 bias_init="zeros"):
        super().__init__()
        self.in_features = _int(in_features, "in_features")
        self.out_features = _int(out_features, "out_features")
        self.has_bias = _bool(bias, "bias")
        self.weight_init, self.bias_init = _init(weight_init, "weight_init"), \
            _init(bias_init, "bias_init")
        self.weight = self.add_parameter("weight", (self.in_features, self.out_features),
                                         self.weight_init, self.in_features, self.out_features)
        self.bias = self.add_parameter("bias", (self.out_features,), self.bias_init,
                                       self.in_features, self.out_features) \
            if self.has_bias else None

    def build(self, x):
        if self.bias is None:
            return nodes.MatMul(x, self.weight, name=self._name())
        return nodes.Linear(x, self.weight, self.bias, name=self._name())

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.has_bias, "weight_init": self.weight_init,
                "bias_init": self.bias_init}


@register
class Conv2D(Layer):
    """2-D convolution of (batch, in_channels, h, w) images, as ``torch.nn.Conv2d``.

    Weight (out_channels, in_channels, kh, kw), He-normal; bias (out_channels,),
    zero. ``padding``: pixels per side (an int or a pair), "same" or "valid".
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, bias=True, *, weight_init="he_normal", bias_init="zeros"):
        super().__init__()
        self.in_channels = _int(in_channels, "in_channels")
        self.out_channels = _int(out_channels, "out_channels")
        self.kernel_size = _ints(kernel_size, "kernel_size", 2)
        self.stride = _ints(stride, "stride", 2)
        self.dilation = _ints(dilation, "dilation", 2)
        self.padding = padding if padding in ("same", "valid") else \
            _ints(padding, "padding", 2, low=0)
        if self.padding == "same" and self.stride != (1, 1):
            raise ConfigError("padding 'same' needs stride 1 (as in PyTorch)")
        self.has_bias = _bool(bias, "bias")
        self.weight_init, self.bias_init = _init(weight_init, "weight_init"), \
            _init(bias_init, "bias_init")
        area = math.prod(self.kernel_size)
        fan_in, fan_out = self.in_channels * area, self.out_channels * area
        self.weight = self.add_parameter(
            "weight", (self.out_channels, self.in_channels, *self.kernel_size),
            self.weight_init, fan_in, fan_out)
        self.bias = self.add_parameter("bias", (self.out_channels,), self.bias_init,
                                       fan_in, fan_out) if self.has_bias else None

    def build(self, x):
        return nodes.Conv2D(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                            dilation=self.dilation, name=self._name())

    def config(self):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": padding, "dilation": list(self.dilation), "bias": self.has_bias,
                "weight_init": self.weight_init, "bias_init": self.bias_init}


@register
class Embedding(Layer):
    """Rows of a (num_embeddings, embedding_dim) table at integer indices of any shape.

    As ``torch.nn.Embedding``: the table starts standard normal; indices outside
    [0, num_embeddings) are an error when the graph runs.
    """

    def __init__(self, num_embeddings, embedding_dim, *, weight_init="normal"):
        super().__init__()
        self.num_embeddings = _int(num_embeddings, "num_embeddings")
        self.embedding_dim = _int(embedding_dim, "embedding_dim")
        self.weight_init = _init(weight_init, "weight_init")
        self.weight = self.add_parameter("weight", (self.num_embeddings, self.embedding_dim),
                                         self.weight_init, self.num_embeddings,
                                         self.embedding_dim)

    def build(self, indices):
        return nodes.Take(self.weight, indices, axis=0, name=self._name())

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "weight_init": self.weight_init}


@register
class LayerNorm(Layer):
    """Normalise each example over its last axes, of ``normalized_shape``; scale and shift.

    As ``torch.nn.LayerNorm``: weight starts at ones, bias at zeros.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)) and \
                not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__len__") \
                or not normalized_shape:
            raise ConfigError(f"normalized_shape must be an integer or a non-empty sequence "
                              f"of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(_int(s, "normalized_shape") for s in normalized_shape)
        self.eps = _real(eps, "eps", 0, open_low=True, open_high=True)
        self.weight = self.add_parameter("weight", self.normalized_shape, "ones")
        self.bias = self.add_parameter("bias", self.normalized_shape, "zeros")

    def build(self, x):
        return nodes.LayerNorm(x, self.weight, self.bias, eps=self.eps, name=self._name())

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}


class _BatchNorm(Layer):
    """Shared by BatchNorm1d and BatchNorm2d; ``axes`` are those the statistics run over."""

    axes = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = _int(num_features, "num_features")
        self.eps = _real(eps, "eps", 0, open_low=True, open_high=True)
        self.momentum = _real(momentum, "momentum", 0, 1)
        shape = (self.num_features,)
        self.weight = self.add_parameter("weight", shape, "ones")
        self.bias = self.add_parameter("bias", shape, "zeros")
        self.running_mean = self.add_state("running_mean", shape, "zeros")
        self.running_var = self.add_state("running_var", shape, "ones")

    def build(self, x):
        y = nodes.BatchNorm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            eps=self.eps, name=self._name())
        # The next running statistics, as PyTorch keeps them: the batch's variance with
        # Bessel's correction.
        m, axes = self.momentum, self.axes
        self._updates = {
            self.running_mean: self.running_mean * (1 - m) + nodes.Mean(x, axis=axes) * m,
            self.running_var: self.running_var * (1 - m)
            + nodes.Var(x, axis=axes, correction=1) * m,
        }
        return y

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}


@register
class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (batch, features) rows, as ``torch.nn.BatchNorm1d``
    (whose (batch, channels, length) form this layer does not take).

    In a training run (``run(..., training=True)``) each feature is normalised
    with the batch's mean and variance; otherwise with the running ones, state
    Inputs "running_mean" (zeros at first) and "running_var" (ones). A training
    run's new running values are the nodes of :meth:`Layer.updates`:
    ``(1 - momentum) * running + momentum * batch`` (unbiased variance).
    """

    axes = 0


@register
class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (batch, channels, h, w) images per channel, as
    ``torch.nn.BatchNorm2d`` (see :class:`BatchNorm1d` for the modes and the state)."""

    axes = (0, 2, 3)


# -- layers without parameters -------------------------------------------------------------

class _Pool(Layer):
    node = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _ints(kernel_size, "kernel_size", 2)
        self.stride = None if stride is None else _ints(stride, "stride", 2)
        self.padding = _ints(padding, "padding", 2, low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ConfigError(f"padding {list(self.padding)} must be at most half the kernel "
                              f"{list(self.kernel_size)}")

    def build(self, x):
        return type(self).node(x, self.kernel_size, self.stride, self.padding, name=self._name())

    def config(self):
        return {"kernel_size": list(self.kernel_size),
                "stride": None if self.stride is None else list(self.stride),
                "padding": list(self.padding)}


@register
class MaxPool2D(_Pool):
    """The largest value of each window (stride: the kernel's by default), as ``nn.MaxPool2d``."""

    node = nodes.MaxPool2D


@register
class AvgPool2D(_Pool):
    """The mean of each window, padded zeros counted, as ``nn.AvgPool2d``."""

    node = nodes.AvgPool2D


@register
class Flatten(Layer):
    """Merge the axes from ``start_axis`` on: (N, C, H, W) -> (N, C*H*W), as ``nn.Flatten``."""

    def __init__(self, start_axis=1):
        super().__init__()
        self.start_axis = _int(start_axis, "start_axis", 0)

    def build(self, x):
        return nodes.Flatten(x, self.start_axis, name=self._name())

    def config(self):
        return {"start_axis": self.start_axis}


@register
class Dropout(Layer):
    """Zero each value with probability ``p`` in training runs, scaling the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _real(p, "p", 0, 1)

    def build(self, x):
        return nodes.Dropout(x, self.p, name=self._name())

    def config(self):
        return {"p": self.p}


class _Activation(Layer):
    node = None

    def build(self, x):
        return type(self).node(x, name=self._name())


@register
class ReLU(_Activation):
    """max(x, 0)."""

    node = nodes.ReLU


@register
class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""

    node = nodes.Sigmoid


@register
class Tanh(_Activation):
    """tanh(x)."""

    node = nodes.Tanh


@register
class GELU(Layer):
    """x * Phi(x); ``approximate`` "none" or "tanh", as ``nn.GELU``."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ConfigError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def build(self, x):
        return nodes.GELU(x, self.approximate, name=self._name())

    def config(self):
        return {"approximate": self.approximate}


@register
class LeakyReLU(Layer):
    """x, or ``negative_slope * x`` below 0, as ``nn.LeakyReLU``."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = _real(negative_slope, "negative_slope")

    def build(self, x):
        return nodes.LeakyReLU(x, self.negative_slope, name=self._name())

    def config(self):
        return {"negative_slope": self.negative_slope}


@register
class ELU(Layer):
    """x, or ``alpha * (exp(x) - 1)`` below 0, as ``nn.ELU``."""

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = _real(alpha, "alpha")

    def build(self, x):
        return nodes.ELU(x, self.alpha, name=self._name())

    def config(self):
        return {"alpha": self.alpha}


@register
class Identity(Layer):
    """Its input, unchanged (a residual block's shortcut, a placeholder)."""

    def build(self, x):
        return x


# -- containers ----------------------------------------------------------------------------

@register
class Sequential(Layer):
    """Layers applied in turn, as ``torch.nn.Sequential``.

    ``Sequential(a, b, c)`` names them "0", "1", "2"; ``Sequential({"fc1": a,
    "relu1": b})`` by the mapping's keys, which prefix their parameters' names.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            named = list(layers[0].items())
        else:
            named = [(str(k), layer) for k, layer in enumerate(layers)]
        for name, layer in named:
            self.add_layer(name, layer)

    def build(self, x):
        for layer in self._layers.values():
            x = layer(x)
        return x

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self._layers.values())[key]
        return self._layers[key]

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers.values())

    def config(self):
        return {"layers": [[name, layer.record()] for name, layer in self._layers.items()]}

    @classmethod
    def from_config(cls, config):
        if set(config) != {"layers"} or not isinstance(config["layers"], list) or not all(
                isinstance(item, list) and len(item) == 2 for item in config["layers"]):
            raise ConfigError("a Sequential record holds 'layers': a list of [name, record] "
                              "pairs")
        names = [name for name, _ in config["layers"]]
        if len(set(map(repr, names))) != len(names):
            raise ConfigError(f"a Sequential record names two layers alike: {_clip(repr(names))}")
        return cls({name: from_record(record) for name, record in config["layers"]})


@register
class Residual(Layer):
    """``body(x) + shortcut(x)``: a residual block (``shortcut`` None: ``x`` itself).

    The shortcut can be, for instance, a 1x1 :class:`Conv2D` where the body
    changes the number of channels.
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = self.add_layer("body", body)
        self.shortcut = None if shortcut is None else self.add_layer("shortcut", shortcut)

    def build(self, x):
        return nodes.Add(self.body(x), x if self.shortcut is None else self.shortcut(x),
                         name=self._name())

    def config(self):
        return {"body": self.body.record(),
                "shortcut": None if self.shortcut is None else self.shortcut.record()}

    @classmethod
    def from_config(cls, config):
        if set(config) != {"body", "shortcut"}:
            raise ConfigError(f"a Residual record holds 'body' and 'shortcut', this one "
                              f"{_clip(repr(sorted(config)))}")
        shortcut = config["shortcut"]
        return cls(from_record(config["body"]),
                   None if shortcut is None else from_record(shortcut))
