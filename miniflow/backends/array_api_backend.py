"""Any other Array-API library, through array-api-compat: torch, JAX, Dask, array-api-strict."""
from .base import Backend


class ArrayAPIBackend(Backend):
    """A library whose arrays array-api-compat (or the library itself) makes standard."""


class TorchBackend(ArrayAPIBackend):
    writable_arrays = True

    def __init__(self):
        super().__init__("torch", "torch", "pip install 'miniflow[torch]'")

    def to_numpy(self, array):
        return array.detach().cpu().numpy()

    def make_rng(self, seed=None):
        import torch

        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def random_uniform(self, rng, shape, dtype=None):
        import torch

        return torch.rand(shape, generator=rng, dtype=self.float32 if dtype is None else dtype,
                          device=rng.device)

    def synchronize(self, *arrays):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()


class JaxBackend(ArrayAPIBackend):
    def __init__(self):
        super().__init__("jax.numpy", "jax.numpy", "pip install 'miniflow[jax]'")

    def owns(self, value):
        if type(value) is getattr(self, "array_type", None):  # the concrete class: fast
            return True
        import jax

        return isinstance(value, jax.Array)

    def synchronize(self, *arrays):
        for array in arrays:
            array.block_until_ready()

    def make_rng(self, seed=None):
        import jax

        if seed is None:
            import secrets

            seed = secrets.randbits(32)
        return _JaxKey(jax.random.key(seed))

    def random_uniform(self, rng, shape, dtype=None):
        import jax

        rng.key, draw = jax.random.split(rng.key)
        return jax.random.uniform(draw, tuple(shape), dtype=self.float32 if dtype is None else dtype)


class _JaxKey:
    """JAX keys are values, not generators: this holder splits a fresh one per draw."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class DaskBackend(ArrayAPIBackend):
    def __init__(self):
        super().__init__("dask.array", "dask.array", "pip install 'miniflow[dask]'")

    def to_numpy(self, array):
        import numpy as np

        return np.asarray(array.compute())
