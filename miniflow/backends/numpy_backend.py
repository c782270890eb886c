"""NumPy on the CPU: the default backend."""
import numpy as np

from ..errors import FeedError
from .base import Backend


class NumpyBackend(Backend):
    def __init__(self):
        super().__init__("numpy", "numpy", "pip install numpy")

    def _load(self):
        import array_api_compat.numpy

        return array_api_compat.numpy

    def owns(self, value):
        # NumPy scalars (np.float32(3)) behave as 0-d arrays, so they count too.
        return isinstance(value, (np.ndarray, np.generic))

    def accept(self, value, *, integer=False, what="value"):
        # The hot path of every training step: a NumPy array, used as is.
        if isinstance(value, (np.ndarray, np.generic)):
            if value.dtype.kind in ("iu" if integer else "biuf"):
                return value
            raise FeedError(f"{what}: expected {'integer labels' if integer else 'numbers'}, "
                            f"got a NumPy array of dtype {value.dtype}")
        return super().accept(value, integer=integer, what=what)

    def asarray(self, value, dtype=None):
        return np.asarray(value, dtype=dtype)

    def to_numpy(self, array):
        return array
