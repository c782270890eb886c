"""Training data from an ``.npz`` file of named arrays.

The file holds ``x_train`` and ``y_train`` (required), and optionally
``x_val``/``y_val`` and ``x_test``/``y_test``, each pair with as many rows in
``x`` as in ``y``. ``x`` may have any shape after its rows (flat features or
images) and any real dtype; it is read as float32, as it is. ``y`` holds
integer class labels (read as int64) or float targets (float32, for a
regression). Without ``x_val``, the last ``validation_size`` training rows
validate. Written by, e.g.::

    np.savez("data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
"""
from __future__ import annotations

import operator
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataFileError

__all__ = ["ArrayData", "load_npz", "ARRAY_NAMES"]

#: The names an ``.npz`` of data may hold; any other name is refused (a typo, most likely).
ARRAY_NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class ArrayData:
    """Training, validation and test rows; the test pair is None when the file has none."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None

    @property
    def n_classes(self) -> int | None:
        """1 + the largest integer label, or None for float targets."""
        if self.train_labels.dtype.kind != "i":
            return None
        labels = [self.train_labels, self.val_labels,
                  *(() if self.test_labels is None else (self.test_labels,))]
        return int(max(int(y.max(initial=0)) for y in labels)) + 1


def load_npz(path, *, validation_size: int = 0) -> ArrayData:
    """Read an ``.npz`` of named arrays (see the module's text); never unpickles.

    Raises
    ------
    DataFileError
        The file is missing or not an .npz; a required array is missing or a
        name is unknown; a pair's row counts differ; an array is not of real
        numbers; labels are negative; ``validation_size`` is not below the
        training rows.
    """
    path = Path(path)
    validation_size = operator.index(validation_size)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataFileError(f"{path} is a single .npy array, not an .npz of named "
                                f"arrays ({', '.join(ARRAY_NAMES)})")
        with archive:
            unknown = sorted(set(archive.files) - set(ARRAY_NAMES))
            if unknown:
                raise DataFileError(f"{path} holds arrays named {unknown[:5]}; a data file's "
                                    f"arrays are named {', '.join(ARRAY_NAMES)}")
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise DataFileError(f"no data file at {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"{path} is not a readable .npz of arrays "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    for part in ("train", "val", "test"):
        present = [f"{axis}_{part}" for axis in "xy" if f"{axis}_{part}" in arrays]
        if len(present) == 1:
            raise DataFileError(f"{path} holds {present[0]} without its pair "
                                f"{'y' if present[0][0] == 'x' else 'x'}_{part}")
    if "x_train" not in arrays:
        raise DataFileError(f"{path} has no x_train and y_train arrays (it holds "
                            f"{sorted(arrays) or 'nothing'})")
    pairs = {part: _pair(arrays, part, path) for part in ("train", "val", "test")
             if f"x_{part}" in arrays}
    x, y = pairs["train"]
    if "val" not in pairs:
        if not 0 <= validation_size < len(y):
            raise DataFileError(f"validation_size must lie in [0, {len(y)}) ({path} has "
                                f"{len(y)} training rows), got {validation_size}")
        cut = len(y) - validation_size
        pairs["train"], pairs["val"] = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    test = pairs.get("test", (None, None))
    return ArrayData(*pairs["train"], *pairs["val"], *test)


def _pair(arrays, part, path):
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    for name, value in ((f"x_{part}", x), (f"y_{part}", y)):
        if value.dtype.kind not in "biuf" or value.ndim == 0:
            raise DataFileError(f"{path}: {name} must be an array of real numbers with a row "
                                f"per example, got {value.dtype} of shape {value.shape}")
    if len(x) != len(y):
        raise DataFileError(f"{path}: x_{part} has {len(x)} rows but y_{part} {len(y)}")
    if y.dtype.kind in "biu":
        if y.size and y.min() < 0:
            raise DataFileError(f"{path}: y_{part} holds the label {int(y.min())}; class "
                                "labels are 0, 1, 2, ...")
        y = y.astype(np.int64)
    else:
        y = y.astype(np.float32)
    return x.astype(np.float32), y
