"""Datasets for miniflow: MNIST, read from the original IDX files.

>>> from miniflow.datasets import load_mnist
>>> mnist = load_mnist()             # doctest: +SKIP
>>> mnist.train_images.shape         # doctest: +SKIP
(55000, 784)
"""

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
