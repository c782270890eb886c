"""Checks of the data a model trains or is measured on, before any of it moves.

Every trainer (local, compiled, cluster) and every measurement calls these
once, on the host: a bad array is refused here with its name, shape and what
was expected, rather than deep inside a step.

Targets come in two kinds, told apart by their dtype:

* integers are class labels, (N,), checked to lie in ``[0, n_classes)``;
* floating point values are regression targets, any shape (N, ...), checked
  to be finite, and cast to float32.
"""
from __future__ import annotations

import numpy as np

from .errors import DataError

__all__ = ["check_data", "check_inputs", "check_targets", "as_rows", "standardisation",
           "standardise"]


def check_inputs(images, *, what: str = "train", n_inputs: int | None = None) -> np.ndarray:
    """``images`` as float32 rows of features (N, features), checked.

    Raises
    ------
    DataError
        Not 2-D, the wrong number of features, not floating point, or not finite.
    """
    images = np.asarray(images)
    name = f"{what}_images"
    if images.ndim != 2:
        hint = (" (flatten each image first: images.reshape(len(images), -1))"
                if images.ndim > 2 else "")
        raise DataError(f"{name} must be a 2-D array (examples, features), got shape "
                        f"{images.shape}{hint}")
    if n_inputs is not None and images.shape[1] != n_inputs:
        raise DataError(f"{name} has shape {images.shape}: {images.shape[1]} features per "
                        f"example, but the model takes {n_inputs}")
    if images.dtype.kind != "f":
        hint = f" (divide by {np.iinfo(images.dtype).max})" if images.dtype.kind == "u" else ""
        raise DataError(f"{name} must be floating point (e.g. float32 pixels in [0, 1]), "
                        f"got dtype {images.dtype}{hint}")
    if not np.isfinite(images).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return images.astype(np.float32, copy=False)


def check_targets(labels, count, *, what: str = "train",
                  n_classes: int | None = 10) -> np.ndarray:
    """``labels`` checked against ``count`` examples: int64 class labels or float32 targets.

    ``count`` is the number of examples, or the images themselves (whose shape
    the message then shows).

    ``n_classes`` None accepts any non-negative label.
    """
    labels = np.asarray(labels)
    name = f"{what}_labels"
    if labels.dtype.kind in "iu":
        if labels.ndim != 1:
            raise DataError(f"{name} must be a 1-D array of class indices, got shape "
                            f"{labels.shape}")
    elif labels.dtype.kind == "f":
        if labels.ndim < 1:
            raise DataError(f"{name} must hold one target per example, got a scalar")
        if not np.isfinite(labels).all():
            raise DataError(f"{name} contains NaN or infinite values")
    else:
        raise DataError(f"{name} must be integers (class labels) or floating point "
                        f"(regression targets), got dtype {labels.dtype}")
    shown = ""
    if not isinstance(count, int):
        shown, count = f" (shape {np.shape(count)})", len(count)
    if len(labels) != count:
        raise DataError(f"{what}_images has {count} examples{shown} but {name} has "
                        f"{len(labels)} (shape {labels.shape})")
    if labels.dtype.kind == "f":
        return labels.astype(np.float32, copy=False)
    high = n_classes if n_classes is not None else np.iinfo(np.int64).max
    if len(labels) and (labels.min() < 0 or labels.max() >= high):
        raise DataError(f"{name} must lie in [0, {n_classes}), got values from "
                        f"{labels.min()} to {labels.max()}")
    return labels.astype(np.int64, copy=False)


def check_data(images, labels, *, what: str = "train", n_inputs: int | None = None,
               n_classes: int | None = 10):
    """Check a split's images and targets; return them as float32 rows and int64 labels
    (or float32 targets).

    Parameters
    ----------
    images : array-like
        (examples, features), floating point: e.g. pixels scaled to [0, 1].
    labels : array-like
        (examples,) integers in [0, n_classes), or floating point targets (examples, ...).
    what : str
        The split's name ("train", "val", "test"), used in messages.
    n_inputs : int, optional
        The number of features the model takes; None accepts any.

    Raises
    ------
    DataError
        Naming the array, its shape and what was expected.
    """
    images = check_inputs(images, what=what, n_inputs=n_inputs)
    return images, check_targets(labels, images, what=what, n_classes=n_classes)


def as_rows(images, input_shape: tuple, what: str) -> np.ndarray:
    """Images given in the model's example shape (N, *input_shape), as rows of features."""
    images = np.asarray(images)
    if images.ndim > 2 and tuple(images.shape[1:]) == tuple(input_shape):
        return images.reshape(len(images), -1)
    if images.ndim > 2:
        raise DataError(f"{what}_images has shape {images.shape}, but the model takes "
                        f"examples of shape {tuple(input_shape)} (or rows of "
                        f"{int(np.prod(input_shape))} features)")
    return images


def standardisation(images: np.ndarray) -> tuple[float, float]:
    """One mean and one std over all training values.

    A single pair rather than one per feature: MNIST's border pixels are almost
    always 0, and dividing by their tiny std would blow up the rare nonzero ones.
    """
    # float32 is accurate enough here (NumPy sums pairwise) and 2x faster than float64.
    mean, std = float(images.mean()), float(images.std())
    return mean, (std if std > 0 else 1.0)


def standardise(backend, images, labels, mean, std, shape=None):
    """Standardise a split on the host, then move it to the backend, once.

    ``shape`` (one example's, e.g. (1, 28, 28)) reshapes the rows of features.
    """
    standardised = np.subtract(images, mean, dtype=np.float32)
    standardised *= 1.0 / std  # in place: this copy is ours, and big
    if shape is not None:
        standardised = standardised.reshape(len(standardised), *shape)
    return backend.asarray(standardised), backend.asarray(labels)
