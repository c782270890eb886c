"""Initialisers: how a parameter's first values are drawn, by name.

Each is ``(rng, shape, fan_in, fan_out) -> float64 NumPy array``, drawing from
the NumPy generator it is given, so a model initialised with one seed always
starts from the same numbers. Fans follow PyTorch's convention: for a weight
(out, in, kh, kw) fan_in is ``in * kh * kw`` and fan_out ``out * kh * kw``; for a
Linear weight (in, out), fan_in is ``in``.

>>> import numpy as np
>>> INITIALIZERS["he_normal"](np.random.default_rng(0), (512, 256), 512, 256).std()  # doctest: +SKIP
0.0625
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["INITIALIZERS", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
           "normal", "torch_uniform", "zeros", "ones"]


def he_normal(rng, shape, fan_in, fan_out):
    """Normal, std sqrt(2 / fan_in): keeps ReLU activations from shrinking layer by layer.

    PyTorch's ``kaiming_normal_(w, nonlinearity="relu")``.
    """
    return rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))


def he_uniform(rng, shape, fan_in, fan_out):
    """Uniform in +-sqrt(6 / fan_in), the same variance as :func:`he_normal`."""
    limit = math.sqrt(6.0 / max(fan_in, 1))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(rng, shape, fan_in, fan_out):
    """Normal, std sqrt(2 / (fan_in + fan_out)): suits sigmoid and tanh (``xavier_normal_``)."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in + fan_out, 1))


def glorot_uniform(rng, shape, fan_in, fan_out):
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (``xavier_uniform_``)."""
    limit = math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-limit, limit, size=shape)


def normal(rng, shape, fan_in, fan_out):
    """Standard normal: PyTorch's start for embedding tables."""
    return rng.standard_normal(shape)


def torch_uniform(rng, shape, fan_in, fan_out):
    """Uniform in +-1/sqrt(fan_in): PyTorch's start for every recurrent parameter (fan_in
    is hidden_size there) and for attention's output projection bias."""
    limit = 1.0 / math.sqrt(max(fan_in, 1))
    return rng.uniform(-limit, limit, size=shape)


def zeros(rng, shape, fan_in, fan_out):
    """All zeros (biases, BatchNorm's shift); draws nothing."""
    return np.zeros(shape)


def ones(rng, shape, fan_in, fan_out):
    """All ones (LayerNorm's and BatchNorm's scale); draws nothing."""
    return np.ones(shape)


#: Initialiser name -> function. PyTorch's names (kaiming, xavier) are aliases.
INITIALIZERS = {
    "he_normal": he_normal, "he_uniform": he_uniform,
    "glorot_normal": glorot_normal, "glorot_uniform": glorot_uniform,
    "kaiming_normal": he_normal, "kaiming_uniform": he_uniform,
    "xavier_normal": glorot_normal, "xavier_uniform": glorot_uniform,
    "normal": normal, "torch_uniform": torch_uniform, "zeros": zeros, "ones": ones,
}
