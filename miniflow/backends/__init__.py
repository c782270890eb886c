"""The registry of array backends: find one by name, by module, or from the arrays fed.

Everything library-specific in miniflow lives in this package. Libraries are
imported lazily: ``import miniflow`` imports neither NumPy nor CuPy.
"""
from __future__ import annotations

from ..errors import BackendError
from .array_api_backend import (ArrayAPIBackend, DaskBackend, JaxBackend, StrictBackend,
                                TorchBackend)
from .base import Backend, loading_lock
from .cupy_backend import CupyBackend
from .numpy_backend import NumpyBackend

__all__ = [
    "Backend", "get_backend", "infer_backend", "available_backends", "backend_names",
]

_FACTORIES = {
    "numpy": NumpyBackend,
    "cupy": CupyBackend,
    "torch": TorchBackend,
    "array_api_strict": StrictBackend,
    "dask.array": DaskBackend,
    "jax.numpy": JaxBackend,
}
_ALIASES = {"np": "numpy", "cp": "cupy", "jax": "jax.numpy", "dask": "dask.array",
            "array-api-strict": "array_api_strict"}
# Modules that array-api-compat wraps name the backend of the library they wrap.
_COMPAT_PREFIX = "array_api_compat."
# The top-level package of an array's type -> the backend that owns such arrays.
_PACKAGE_TO_BACKEND = {"numpy": "numpy", "cupy": "cupy", "torch": "torch", "jax": "jax.numpy",
                       "jaxlib": "jax.numpy", "dask": "dask.array",
                       "array_api_strict": "array_api_strict"}

_instances: dict[str, Backend] = {}
_type_cache: dict[type, str | None] = {}


def backend_names() -> list[str]:
    """The names ``get_backend`` knows, available here or not."""
    return list(_FACTORIES)


def _by_name(name: str) -> Backend:
    name = _ALIASES.get(name, name)
    if name not in _FACTORIES:
        raise BackendError(
            f"unknown backend {name!r}; known backends: {', '.join(_FACTORIES)} "
            f"(available here: {', '.join(available_backends()) or 'none'}), "
            "or pass an Array-API module itself"
        )
    backend = _instances.get(name)
    if backend is None:
        with loading_lock:  # two threads asking at once must share one instance
            backend = _instances.setdefault(name, _FACTORIES[name]())
    return backend


def get_backend(spec=None) -> Backend:
    """Return a ready-to-use backend.

    Parameters
    ----------
    spec : str, module, Backend or None
        A registry name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``,
        ``"dask.array"``, ``"jax.numpy"``), the library's module itself, any module
        following the Array API standard, or None for NumPy.

    Raises
    ------
    BackendError
        The name is unknown (the message lists the known and available ones).
    BackendUnavailableError
        The library is not installed, or (CuPy) no GPU is usable; the message says
        which and how to fix it.
    """
    if spec is None:
        spec = "numpy"
    backend = _instances.get(spec) if isinstance(spec, str) else None
    if backend is not None and backend.loaded_xp is not None:  # the per-step fast path
        return backend
    if isinstance(spec, Backend):
        backend = spec
    elif isinstance(spec, str):
        backend = _by_name(spec)
    elif hasattr(spec, "__name__") and hasattr(spec, "asarray"):
        backend = _by_module(spec)
    else:
        raise BackendError(
            f"backend must be a name, a module or None, not {type(spec).__name__} {spec!r:.60}")
    backend.xp  # import now, so an unusable backend fails here with its reason
    return backend


def _by_module(module) -> Backend:
    name = module.__name__
    if name.startswith(_COMPAT_PREFIX):
        name = name[len(_COMPAT_PREFIX):]
    if _ALIASES.get(name, name) in _FACTORIES:
        return _by_name(name)
    if not hasattr(module, "__array_api_version__"):
        raise BackendError(
            f"module {name!r} does not follow the Array API standard (it has no "
            f"__array_api_version__); known backends: {', '.join(_FACTORIES)}")
    with loading_lock:
        return _instances.setdefault(name, ArrayAPIBackend(name, name, f"pip install {name}"))


def available_backends() -> list[str]:
    """The registry names of the backends that can run on this machine."""
    return [name for name in _FACTORIES if _by_name(name).unavailable_reason() is None]


def backend_of(value) -> str | None:
    """The name of the backend owning ``value``, or None for host data (numbers, lists)."""
    kind = type(value)
    try:
        return _type_cache[kind]
    except KeyError:
        pass
    package = kind.__module__.partition(".")[0]
    name = _PACKAGE_TO_BACKEND.get(package)
    if name is None and hasattr(value, "__array_namespace__"):
        name = _by_module(value.__array_namespace__()).name
    _type_cache[kind] = name
    return name


def infer_backend(named_values) -> Backend:
    """The backend whose arrays are fed; NumPy when only host data is.

    ``named_values`` is an iterable of ``(name, value)``; a name (a string, or
    anything with a ``label``) is only used to point at the culprits when arrays
    of two libraries are mixed.
    """
    owners: dict[str, object] = {}
    for name, value in named_values:
        owner = _type_cache[type(value)] if type(value) in _type_cache else backend_of(value)
        if owner is not None and owner not in owners:
            owners[owner] = name
    if len(owners) > 1:
        found = "; ".join(f"{owner} arrays (e.g. {getattr(name, 'label', name)})"
                          for owner, name in owners.items())
        raise BackendError(
            f"feed_dict mixes arrays of different libraries: {found}. Convert them to one "
            "library, or pass backend=... to convert host (NumPy/Python) data to it")
    return get_backend(next(iter(owners), "numpy"))
