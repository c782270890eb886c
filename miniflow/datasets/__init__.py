"""Datasets for miniflow: MNIST (or any IDX set of its form), and .npz files of named arrays.

>>> from miniflow.datasets import load_mnist
>>> mnist = load_mnist()             # doctest: +SKIP
>>> mnist.train_images.shape         # doctest: +SKIP
(55000, 784)
"""

from .arrays import ARRAY_NAMES, ArrayData, load_npz
from .idx import MnistFormatError, read_idx, write_idx
from .mnist import (
    DEFAULT_MIRRORS,
    MNIST,
    MNIST_TRAIN_SIZE,
    MnistChecksumError,
    MnistNotFoundError,
    default_data_dir,
    load_mnist,
    load_mnist_test,
)

__all__ = [
    "ARRAY_NAMES",
    "ArrayData",
    "load_npz",
    "DEFAULT_MIRRORS",
    "MNIST",
    "MNIST_TRAIN_SIZE",
    "MnistChecksumError",
    "MnistFormatError",
    "MnistNotFoundError",
    "default_data_dir",
    "load_mnist",
    "load_mnist_test",
    "read_idx",
    "write_idx",
]
