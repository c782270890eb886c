"""Any other Array-API library, through array-api-compat: torch, JAX, Dask, array-api-strict."""
import numpy as np

from .base import Backend


class ArrayAPIBackend(Backend):
    """A library whose arrays array-api-compat (or the library itself) makes standard."""


class StrictBackend(ArrayAPIBackend):
    """array-api-strict: the standard and nothing more (the tests' stand-in for CuPy)."""

    def __init__(self):
        super().__init__("array_api_strict", "array_api_strict", "pip install array-api-strict")

    def own_gradients(self, grads):
        owned = []
        for g in grads:
            host = getattr(g, "_array", None)  # the NumPy array a strict array wraps
            if host is None or not host.flags.owndata or not host.flags.writeable \
                    or any(g is h for h in owned):
                g = self.xp.asarray(g, copy=True)
            owned.append(g)
        return owned


class TorchBackend(ArrayAPIBackend):
    writable_arrays = True

    def __init__(self):
        super().__init__("torch", "torch", "pip install 'miniflow[torch]'")

    def _load(self):
        return _torch_namespace(super()._load())

    def own_gradients(self, grads):
        owned = []
        for g in grads:
            if g._is_view() or any(g is h for h in owned):
                g = g.clone()
            owned.append(g)
        return owned

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


def _torch_namespace(compat):
    """array-api-compat's torch namespace, with Python numbers beside a tensor made
    tensors without asking ``torch.result_type``.

    For ``maximum(x, 0)`` and the other functions whose torch versions take no
    Python number, array-api-compat asks ``torch.result_type`` for the number's
    dtype; ``torch.compile`` cannot put a dtype in a graph, so every such call
    broke a compiled step into pieces. A number of the tensor's kind (or an int
    beside a float) takes the tensor's dtype, the Array API's rule for weak
    scalars; anything else goes to array-api-compat as before.
    """
    import functools
    import types

    import torch

    def weak(number, other):
        if type(number) in (int, float) and isinstance(other, torch.Tensor) and (
                other.dtype.is_floating_point
                or (type(number) is int and other.dtype != torch.bool and not other.dtype.is_complex)):
            return torch.asarray(number, dtype=other.dtype, device=other.device)
        return number

    def numbers_as_tensors(function):
        @functools.wraps(function)
        def call(x1, x2, /, **kwargs):
            return function(weak(x1, x2), weak(x2, x1), **kwargs)
        return call

    def sign(x, /):
        # array-api-compat writes nan into sign's result through a boolean mask, which
        # torch.compile cannot trace; a select gives the same values.
        signs = torch.sign(x)
        return torch.where(torch.isnan(x), x, signs) if x.dtype.is_floating_point else signs

    def clip(x, /, min=None, max=None):
        # array-api-compat's clip asks torch.result_type about number bounds, as above.
        if (min is None and max is None) or not all(
                b is None or type(b) in (int, float) for b in (min, max)) \
                or not x.dtype.is_floating_point:
            return compat.clip(x, min=min, max=max)
        return torch.clamp(x, min, max)

    xp = types.ModuleType(compat.__name__)  # the same name: array-api-compat's checks hold
    xp.__dict__.update(vars(compat))
    xp.sign, xp.clip = sign, clip
    for name in ("maximum", "minimum", "atan2", "copysign", "hypot", "logaddexp", "nextafter",
                 "equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
        if hasattr(compat, name):
            setattr(xp, name, numbers_as_tensors(getattr(compat, name)))
    return xp


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

    def asarray(self, value, dtype=None):
        """Host data -> a Dask array under a random name, not one hashed from the data.

        Dask names an array made from NumPy data by hashing it, and names the chunk
        offsets it builds to index with an integer array the same way: indices that
        equal those offsets (``[0]`` for a one-chunk array) share their name, and
        ``x[indices]`` then takes x's shape (dask/dask#6709), so Take's reshape
        failed. A random name never collides, and spares a pass over each fed batch.
        """
        import dask.array as da

        if isinstance(value, da.Array):
            return self.xp.asarray(value, dtype=dtype)
        return da.from_array(np.array(value, dtype=dtype, copy=True), name=False)

    def to_numpy(self, array):
        return np.asarray(array.compute())
