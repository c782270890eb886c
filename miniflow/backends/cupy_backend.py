"""CuPy on an NVIDIA GPU."""
from ..errors import BackendUnavailableError
from .base import Backend

_INSTALL = "pip install 'miniflow[cuda12]' (CUDA 12) or 'miniflow[cuda13]' (CUDA 13)"


class CupyBackend(Backend):
    writable_arrays = True

    def __init__(self):
        super().__init__("cupy", "cupy", _INSTALL)

    def _load(self):
        cupy = self._import()
        # Importing CuPy succeeds without a GPU; the first device call is what fails,
        # so ask for the device count now rather than deep inside a training step.
        try:
            gpus = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, or one too old
            raise BackendUnavailableError(
                f"backend 'cupy': CuPy {cupy.__version__} is installed but no CUDA GPU "
                f"is usable here ({type(exc).__name__}: {exc}); run on a machine with an "
                "NVIDIA GPU and driver, or choose backend='numpy'"
            ) from None
        if gpus == 0:
            raise BackendUnavailableError(
                "backend 'cupy': CuPy is installed but this machine has no CUDA GPU; "
                "choose backend='numpy'"
            )
        import array_api_compat.cupy

        return array_api_compat.cupy

    def asarray(self, value, dtype=None):
        import cupy

        return cupy.asarray(value, dtype=dtype)

    def to_numpy(self, array):
        return array.get()

    def own_gradients(self, grads):
        import cupy

        from .numpy_backend import own_arrays

        return own_arrays(grads, cupy.array)

    def make_rng(self, seed=None):
        import cupy

        return cupy.random.default_rng(seed)

    def random_uniform(self, rng, shape, dtype=None):
        import cupy

        dtype = cupy.dtype(cupy.float32 if dtype is None else dtype)
        return rng.random(shape, dtype=dtype)

    def synchronize(self, *arrays):
        import cupy

        cupy.cuda.get_current_stream().synchronize()
