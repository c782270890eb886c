"""What every backend provides: an Array-API namespace plus the few things the standard leaves out."""
from __future__ import annotations

import importlib
import threading

import numpy as np

from ..errors import BackendUnavailableError, FeedError

#: Held while any backend loads its library for the first time. Libraries import each
#: other (array-api-compat looks at torch, dask at numpy): two threads importing two
#: of them at once can see a partially initialised module, so first loads take turns.
#: Re-entrant: loading one backend may ask the registry for another.
loading_lock = threading.RLock()


class Backend:
    """One array library, seen through the Array API standard.

    Subclasses fill in the library-specific parts; graph, node and executor
    code only ever touch ``xp`` and the methods below.

    Parameters
    ----------
    name : str
        The registry name (``"numpy"``, ``"cupy"``, ``"torch"``, ...).
    module_name : str
        The module imported, lazily, the first time the backend is used.
    install_hint : str
        The command that installs the library, for error messages.
    """

    #: Whether arrays can be written in place (``a -= b`` changes ``a``); optimizers
    #: update in place where they can. Only libraries known to allow it say True
    #: (an array without ``__isub__`` would silently rebind instead).
    writable_arrays = False

    #: Whether running rules over this backend writes them down as a graph to be
    #: differentiated again (autodiff's TracingBackend). A rule whose cheap form is
    #: right in value but not in derivative (it selects by where the zeros are, as
    #: PyTorch's prod and cumprod backward do) takes its differentiable form there,
    #: as PyTorch does under ``create_graph=True``.
    records_graph = False

    #: Methods a backend may add to run part of a node's rule faster on its own arrays
    #: (NumPy's, see miniflow.nodes.conv); each gives the same numbers as the node's
    #: Array-API path. A backend that records a graph hides them all, so nodes take
    #: the path its namespace can write down.
    FAST_PATHS = ("windows", "fold_windows", "pad2d", "column_sums", "max_pool_tiles",
                  "max_pool_tiles_grad")

    def __init__(self, name: str, module_name: str, install_hint: str):
        self.name = name
        self.module_name = module_name
        self.install_hint = install_hint
        self.loaded_xp = None  # the namespace once imported: `get_backend` checks it per step

    # -- loading ---------------------------------------------------------
    def _import(self):
        """Import the library; raise BackendUnavailableError saying how to fix it."""
        try:
            return importlib.import_module(self.module_name)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r} needs {self.module_name}, which is not "
                f"installed ({exc}); install it with: {self.install_hint}"
            ) from None

    def _load(self):
        """Return the Array-API namespace of the library (called once)."""
        module = self._import()
        import array_api_compat

        return array_api_compat.array_namespace(module.asarray(0))

    @property
    def xp(self):
        """The Array-API namespace nodes compute with."""
        if self.loaded_xp is None:
            with loading_lock:
                if self.loaded_xp is None:  # another thread may have loaded it meanwhile
                    xp = self._load()
                    self.float32, self.int64 = xp.float32, xp.int64
                    self.array_type = type(xp.asarray(0.0))
                    self._floating = {}
                    self._promotions = {}
                    self.loaded_xp = xp
        return self.loaded_xp

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        try:
            self.xp
        except BackendUnavailableError as exc:
            return str(exc)
        return None

    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    # -- dtypes and randomness ----------------------------------------------
    def is_floating(self, dtype) -> bool:
        """True for a real floating-point dtype (cached: runs ask once per ``wrt`` node)."""
        try:
            return self._floating[dtype]
        except KeyError:
            floating = self._floating[dtype] = bool(self.xp.isdtype(dtype, "real floating"))
            return floating

    def make_rng(self, seed=None):
        """A random generator for :meth:`random_uniform`; ``seed`` None draws fresh entropy.

        NumPy's ``Generator`` here; backends with their own generators (PyTorch,
        CuPy) override this and :meth:`random_uniform` to draw on the device.
        """
        return np.random.default_rng(seed)

    def random_uniform(self, rng, shape: tuple, dtype=None):
        """Samples uniform in [0, 1) from ``rng``, an array of this backend (float32 default)."""
        dtype = self.float32 if dtype is None else dtype
        return self.asarray(rng.random(shape), dtype=dtype)

    # -- dtype promotion ----------------------------------------------------
    def result_type(self, *dtypes):
        """The dtype arrays of ``dtypes`` meet in, by one rule on every backend.

        The Array API's table, extended as NumPy does where it says nothing:
        an integer array meeting a floating one gives the floating dtype wide
        enough for both (int64 with float32 gives float64). Libraries differ
        there (PyTorch keeps float32, array-api-strict refuses), so the rule is
        computed once, on NumPy's dtypes, and cached per combination.
        """
        xp = self.xp
        try:
            return self._promotions[dtypes]
        except (KeyError, TypeError):
            pass
        names = getattr(self, "_dtype_names", None)
        if names is None:
            names = self._dtype_names = {}
            for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                         "uint64", "float16", "float32", "float64"):
                if hasattr(xp, name):
                    names[getattr(xp, name)] = name
        try:
            found = getattr(xp, np.result_type(*[names[d] for d in dtypes]).name)
        except (KeyError, TypeError, AttributeError):  # complex and the like: the library's rule
            found = xp.result_type(*dtypes)
        try:
            self._promotions[dtypes] = found
        except TypeError:
            pass
        return found

    def promote(self, *arrays):
        """``arrays`` cast to their common dtype (:meth:`result_type`); as they are if equal."""
        first = arrays[0].dtype
        if all(a.dtype == first for a in arrays[1:]):
            return arrays
        dtype = self.result_type(*[a.dtype for a in arrays])
        return tuple(a if a.dtype == dtype else self.xp.astype(a, dtype) for a in arrays)

    # -- moving data -----------------------------------------------------
    def owns(self, value) -> bool:
        """True when ``value`` already is an array of this backend (use it, don't copy)."""
        return isinstance(value, self.array_type)

    def asarray(self, value, dtype=None):
        """Host data (Python numbers, lists, NumPy arrays) -> an array of this backend."""
        return self.xp.asarray(value, dtype=dtype)

    def accept(self, value, *, integer: bool = False, what: str = "value"):
        """A fed value as an array of this backend: used as is when it already is one.

        Host data is converted (see ``from_host``); an array of another library is
        an error rather than a silent device transfer. ``what`` (a string, or the
        Node fed) names the value in errors; ``integer`` asks for integer labels.
        """
        if self.owns(value):
            if integer and not self.xp.isdtype(value.dtype, "integral"):
                raise FeedError(f"{what}: expected integer labels, got dtype {value.dtype}")
            return value
        from . import backend_of

        owner = backend_of(value)
        if owner not in (None, "numpy"):
            raise FeedError(
                f"{what}: got a {owner} array but the graph runs on backend {self.name!r}; "
                f"convert it first (e.g. with miniflow.backends.get_backend({owner!r}).to_numpy)"
                f" or run with backend={owner!r}")
        return self.from_host(value, integer=integer, what=what)

    def from_host(self, value, *, integer: bool = False, what: str = "value"):
        """Convert a host value fed by a user, checking that it is numeric.

        Python numbers and lists become float32 (int64 where ``integer``);
        NumPy arrays keep their dtype. ``what`` names the value in errors.
        """
        if value is None or isinstance(value, (str, bytes, dict, set)):
            raise FeedError(
                f"{what}: cannot use {type(value).__name__} {value!r:.60} as an array; "
                "feed a number, a (nested) list of numbers or an array"
            )
        refuse_array_subclass(value, what)
        is_python = not isinstance(value, (np.ndarray, np.generic))
        try:
            host = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise FeedError(f"{what}: cannot make an array of {value!r:.60}: {exc}") from None
        if host.dtype.kind not in "biuf":
            raise FeedError(
                f"{what}: expected numbers, got an array of dtype {host.dtype} "
                f"from {type(value).__name__} {value!r:.60}"
            )
        if integer and host.dtype.kind not in "iu":
            raise FeedError(f"{what}: expected integer labels, got dtype {host.dtype}")
        if is_python:
            host = host.astype(np.int64 if integer else np.float32)
        return self.asarray(host)

    def own_gradients(self, grads: list) -> list:
        """``grads`` as ordinary arrays the caller may write to, as PyTorch returns them:
        none a read-only or broadcast view, none sharing memory with another.

        A backward rule may return a view (``broadcast_to`` for Sum, a reshape of the
        upstream gradient) or the very array it was given (Add, to both inputs):
        fine inside a run, a surprise to a caller who writes ``g -= lr * ...``.
        Libraries whose arrays are immutable (JAX) or lazy (Dask) keep them as they are.
        """
        return grads

    def to_numpy(self, array):
        """Backend array -> NumPy array on the host (a copy where the library needs one)."""
        try:
            return np.from_dlpack(array)
        except (TypeError, RuntimeError, BufferError, AttributeError):
            return np.asarray(array)

    def synchronize(self, *arrays) -> None:
        """Wait until queued work is done, so a clock read after it is honest."""

    def __repr__(self):
        return f"<miniflow backend {self.name!r}>"


def refuse_array_subclass(value, what):
    """Refuse the NumPy subclasses whose meaning an Array-API library would silently drop.

    ``np.matrix`` turns ``*`` into a matrix product and keeps two axes whatever
    is done; a masked array's mask would be ignored. Other subclasses (memmap)
    are plain arrays and pass.
    """
    if isinstance(value, np.matrix):
        raise FeedError(f"{what}: np.matrix is not supported (its * is a matrix product); "
                        "feed np.asarray(value), and use @ for matrix products")
    if isinstance(value, np.ma.MaskedArray):
        raise FeedError(f"{what}: masked arrays are not supported (the mask would be "
                        "ignored); feed value.filled(fill) or select the valid elements")
