"""Saving models to safetensors files and loading them back, safely.

A model file is a safetensors file (see :mod:`miniflow.safetensors_format`):
each parameter and state array as a float32 tensor under its name
("fc1.weight", "bn1.running_mean", ...), and in the header's ``__metadata__``,
under the key ``miniflow``, a JSON record: format marker, version,
architecture, input standardisation. The format holds no code and declares
every array's size up front, so reading it allocates nothing its size does
not account for. The ``safetensors`` package (PyTorch, JAX, ...) reads these
files as they are.

Files of format versions 1 and 2 (miniflow 0.x) are NumPy ``.npz`` archives,
the same arrays plus the JSON record under ``__miniflow__``; they still load,
read with ``allow_pickle=False``.

Any model built from :mod:`miniflow.nn` layers saves and loads with no code of
its own: the architecture is the layer tree's record, and
:func:`miniflow.models.from_architecture` rebuilds it. Files of format version 1,
written before layers, held a record of their own per kind ("mlp", "cnn") and
parameters named "fc1.w", "fc1.b": they are translated on loading.

Loading treats the file as hostile. For an ``.npz``, before any array is allocated, the zip
directory and every array's ``.npy`` header are read and checked against each
other and against the metadata, and the total size the arrays would take is
bounded by the size of the file itself. A corrupt, forged or oversized file
therefore fails fast with :class:`ModelFileError`, without a burst of memory.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelFileError
from .files import atomic_write, check_writable
from .safetensors_format import (NotSafetensorsError, SafetensorsError,
                                  read_header, read_tensor, write_safetensors)
from .models import (Model, check_activation, cnn_architecture, describe, from_architecture,
                     hidden_sizes, mlp_architecture, network_of, standardisation_problem)

__all__ = ["save_model", "load_model", "ModelFileError", "atomic_write", "check_writable"]

# Marks an .npz as a miniflow model; the version changes when the layout does.
FORMAT = "miniflow-model"
# 3: safetensors; 2: .npz, the architecture a layer tree's record; 1: .npz, per-kind records
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
METADATA_KEY = "__miniflow__"  # of an .npz (versions 1 and 2)
SAFETENSORS_KEY = "miniflow"  # in a safetensors file's __metadata__ (version 3)

# The JSON record is a few hundred bytes; anything near this is not ours.
_MAX_METADATA_BYTES = 1 << 20
# np.savez stores arrays uncompressed; np.savez_compressed squeezes trained
# float weights by a few percent. Data that inflates more than this is not
# weights, and is refused before it is inflated: a "zip bomb".
_MAX_INFLATION = 16
_INFLATION_ALLOWANCE = 1 << 20  # tiny files compress oddly; never matters for memory



# -- writing ---------------------------------------------------------------------------

def save_model(model: Model, path) -> Path:
    """Write ``model`` to ``path`` as a safetensors file, atomically.

    An error or an interrupt midway leaves any existing file at ``path`` as it
    was (see :func:`atomic_write`). ``path`` is used as given: no
    ``.safetensors`` is appended.

    Raises
    ------
    ConfigError
        Before anything is written, if the model was not built from
        :mod:`miniflow.nn` layers (a hand-built graph has no record to rebuild
        it from).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if model.network is None or "network" not in model.architecture:
        raise ConfigError("only models built from miniflow.nn layers can be saved (this one's "
                          "architecture has no layer record); build it with "
                          "miniflow.models.from_network, or save its params yourself")
    path = Path(path)
    metadata = {"format": FORMAT, "version": VERSION, "architecture": model.architecture,
                "input_mean": float(model.input_mean), "input_std": float(model.input_std)}
    arrays = {node.name: np.asarray(value, dtype=np.float32)
              for node, value in (*model.params.items(), *model.state.items())}
    with atomic_write(path) as file:
        write_safetensors(file, arrays, {SAFETENSORS_KEY: json.dumps(metadata)})
    return path


# -- records of format version 1 -----------------------------------------------------

def _legacy_architecture(record: dict) -> dict:
    """The layer record of a version-1 record of kind "mlp" (no "kind") or "cnn".

    Each was checked field by field: nothing in a file may do more than choose sizes.
    """
    kind = record.get("kind", "mlp")
    if kind not in _LEGACY_KINDS:
        raise _UnknownKind(kind)
    return _LEGACY_KINDS[kind](record)


class _UnknownKind(Exception):
    pass


def _legacy_mlp(record: dict) -> dict:
    check_activation(record["activation"])
    hidden = record["hidden"]
    if not isinstance(hidden, list):  # hidden_sizes would also take an int or a string
        raise TypeError(f"hidden must be a list of sizes, got {_clip(repr(hidden))}")
    return mlp_architecture(hidden_sizes(hidden), record["activation"],
                            n_inputs=record["n_inputs"], n_classes=record["n_classes"])


#: The keys of a version-1 CNN record, each with the JSON type ``cnn`` wrote.
_CNN_FIELDS = {"kind": str, "channels": list, "hidden": int, "dropout": float,
               "image_shape": list, "n_classes": int}


def _legacy_cnn(record: dict) -> dict:
    if set(record) != set(_CNN_FIELDS):
        raise ValueError(f"a cnn record has the keys {sorted(_CNN_FIELDS)}, "
                         f"this one {sorted(record)}")
    for key, kind in _CNN_FIELDS.items():
        value = record[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{key} must be a JSON {kind.__name__}, got {_clip(repr(value))}")
        if kind is list and not all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in value):
            raise TypeError(f"{key} must be a list of integers, got {_clip(repr(value))}")
    return cnn_architecture(record["channels"], record["hidden"], float(record["dropout"]),
                            image_shape=record["image_shape"], n_classes=record["n_classes"])


_LEGACY_KINDS = {"mlp": _legacy_mlp, "cnn": _legacy_cnn}
# Version 1 named parameters "fc1.w" and "fc1.b"; layers name them as PyTorch does.
_LEGACY_NAMES = {"weight": "w", "bias": "b"}


def _legacy_name(name: str) -> str:
    head, _, tail = name.rpartition(".")
    return f"{head}.{_LEGACY_NAMES.get(tail, tail)}"


# -- loading ---------------------------------------------------------------------------

def load_model(path, *, architecture: dict | None = None) -> Model:
    """Read a model written by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    architecture : dict, optional
        When given, the file must hold a model of exactly this architecture
        (e.g. ``mlp().architecture``).

    Returns
    -------
    Model
        A fresh graph with the saved parameters and standardisation.

    Raises
    ------
    ModelFileError
        The file is missing, is not a miniflow model, is corrupt or truncated,
        was written in another format version, declares sizes its content
        does not hold, holds parameters that do not match its architecture or
        are not finite, or is not of the ``architecture`` asked for. The
        message says which. Nothing larger than the file allows is allocated
        before the error.
    """
    path = Path(path)
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise ModelFileError(f"no model file at {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with file:
        if file.read(4) == b"PK\x03\x04":  # every .npz is a zip archive, and starts so
            record, network, metadata, stored_names, stored = _read_npz(file, path, architecture)
        else:
            file.seek(0)
            record, network, metadata, stored_names, stored = _read_safetensors(file, path, architecture)
    values = {}
    for name, value in stored.items():
        # Cast first: a finite float64 can overflow float32 (refused just below).
        with np.errstate(over="ignore"):
            value = value.astype(np.float32, copy=False)
        if not np.isfinite(value).all():
            raise ModelFileError(f"{path} is corrupt: {stored_names(name)} holds "
                                 f"{np.count_nonzero(~np.isfinite(value))} NaN or infinite "
                                 "values (as float32)")
        values[name] = value
    model = from_architecture(record, params=values, network=network)
    model.input_mean = float(metadata["input_mean"])
    model.input_std = float(metadata["input_std"])
    return model


def _read_safetensors(file, path: Path, architecture):
    """(record, layer tree, metadata, name -> stored name, {name: array}) of a version-3 file, checked."""
    try:
        tensors, strings, _ = read_header(file)
    except NotSafetensorsError as exc:
        raise ModelFileError(f"{path} is not a miniflow model (neither a safetensors file nor "
                             f"an .npz archive: {exc})") from None
    except SafetensorsError as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({exc})") from None
    if SAFETENSORS_KEY not in strings:
        raise ModelFileError(f"{path} is a safetensors file but not a miniflow model (its "
                             f"metadata has no {SAFETENSORS_KEY!r} record)")
    metadata = _parse_metadata(strings[SAFETENSORS_KEY], path)
    if metadata.get("version") in (1, 2):
        raise ModelFileError(f"{path} is corrupt: format version {metadata['version']} is "
                             "an .npz, not a safetensors file")
    record, network, stored_names = _check_metadata(metadata, path)
    shapes = network.shapes()
    headers = {name: (shape, False, dtype) for name, (dtype, shape, _, _) in tensors.items()}
    _check_parameters(headers, record, shapes, path)
    _check_asked(record, architecture, path)
    try:
        stored = {name: read_tensor(file, tensors[name]) for name in shapes}
    except (SafetensorsError, OSError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({exc})") from None
    return record, network, metadata, stored_names, stored


def _read_npz(file, path: Path, architecture):
    """(record, layer tree, metadata, name -> stored name, {name: array}) of a version-1 or 2 .npz, checked."""
    with _open_archive(file, path) as archive:
        with _corruption_reported(path):
            metadata = _read_metadata(archive, path)
            if metadata.get("version") == VERSION:
                raise ModelFileError(f"{path} is corrupt: format version {VERSION} is a "
                                     "safetensors file, not an .npz")
            record, network, stored_names = _check_metadata(metadata, path)
            shapes = network.shapes()
            _check_parameters({k: v for k, v in archive.headers.items() if k != METADATA_KEY},
                              metadata["architecture"],
                              {stored_names(name): shape for name, shape in shapes.items()},
                              path)
            _check_asked(record, architecture, path)
            stored = {name: _read_array(archive, stored_names(name), path) for name in shapes}
    return record, network, metadata, stored_names, stored


def _check_asked(record: dict, architecture, path: Path) -> None:
    if architecture is not None and record != architecture:
        raise ModelFileError(
            f"{path} holds a model of another architecture: "
            f"{_clip(describe(record))}, not {_clip(describe(architecture))}")


# What zipfile, zlib and NumPy's .npy reader raise on damaged bytes (the reader
# tokenizes a header as Python source: an unclosed bracket is a TokenError).
_CORRUPTION = (zipfile.BadZipFile, zlib.error, struct.error, ValueError, EOFError, OSError,
               KeyError, NotImplementedError, tokenize.TokenError)


@contextmanager
def _corruption_reported(path: Path):
    """Turn the errors of damaged bytes into ModelFileError; ours pass as they are."""
    try:
        yield
    except ModelFileError:
        raise
    except _CORRUPTION as exc:
        kind = type(exc)
        name = kind.__name__ if kind.__module__ == "builtins" else \
            f"{kind.__module__}.{kind.__name__}"  # "zlib.error" says more than "error"
        raise ModelFileError(f"{path} is corrupt or truncated ({name}: "
                             f"{_clip(str(exc))})") from None


@dataclass(frozen=True)
class _Archive:
    """An open .npz whose members are listed and sized, but whose arrays are not yet read.

    ``members`` maps each array's name to its ZipInfo; ``headers`` to its .npy
    header (shape, Fortran order, dtype), checked against the member's size.
    """

    zip_file: zipfile.ZipFile
    members: dict
    headers: dict


@contextmanager
def _open_archive(file, path: Path):
    """Yield an _Archive of the open .npz ``file``, or raise ModelFileError if its layout is unsound."""
    file_size = os.fstat(file.fileno()).st_size
    with _corruption_reported(path):
        zip_file = zipfile.ZipFile(file)
    with zip_file:
        with _corruption_reported(path):
            members = _list_members(zip_file, file_size, path)
            headers = {name: _read_header(zip_file, info, path)
                       for name, info in members.items()}
        yield _Archive(zip_file, members, headers)


def _list_members(zip_file: zipfile.ZipFile, file_size: int, path: Path) -> dict:
    """{array name: ZipInfo}, after checking the sizes the zip directory declares."""
    members = {}
    stored = inflated = 0
    for info in zip_file.infolist():
        name = info.filename.removesuffix(".npy")
        where = f"{path}: member {_clip(info.filename)!r}"
        if name in members:
            raise ModelFileError(f"{where} appears twice")
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{where} is encrypted; miniflow model files never are")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{where} uses zip compression method {info.compress_type}; "
                                 "a model file is stored or deflated")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ModelFileError(f"{where} is corrupt: stored with {info.compress_size} bytes "
                                 f"but declared to hold {info.file_size}")
        stored += info.compress_size
        inflated += info.file_size
        members[name] = info
    if stored > file_size:
        raise ModelFileError(f"{path} is corrupt: its members claim {stored} bytes, more than "
                             f"the file's {file_size} (truncated, or overlapping members)")
    if inflated > _MAX_INFLATION * file_size + _INFLATION_ALLOWANCE:
        raise ModelFileError(
            f"{path} is not a plausible model file: its {file_size} bytes would inflate to "
            f"{inflated}, more than {_MAX_INFLATION} times their size (a zip bomb?)")
    return members


def _read_header(zip_file: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    """The (shape, fortran_order, dtype) of one member's .npy header, checked against its size."""
    with zip_file.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ModelFileError(f"{path}: member {_clip(info.filename)!r} is in .npy format "
                                 f"version {version[0]}.{version[1]}; miniflow reads 1.0 "
                                 "and 2.0")
        header_size = member.tell()
    where = f"{path}: member {_clip(info.filename)!r}"
    if not all(type(size) is int and size >= 0 for size in shape):
        raise ModelFileError(f"{where} is corrupt: its header declares shape {_clip(str(shape))}")
    data_size = math.prod(shape) * dtype.itemsize
    if header_size + data_size != info.file_size:
        raise ModelFileError(
            f"{where} is corrupt: its header declares a {dtype} array of shape "
            f"{_clip(str(shape))} ({_count(data_size)} bytes), but the member holds "
            f"{info.file_size - header_size} bytes of data")
    return shape, fortran_order, dtype


def _read_metadata(archive: _Archive, path: Path) -> dict:
    if METADATA_KEY not in archive.headers:
        raise ModelFileError(f"{path} is an .npz archive but not a miniflow model "
                             f"(it has no {METADATA_KEY!r} record)")
    shape, _, dtype = archive.headers[METADATA_KEY]
    if shape != () or dtype.kind != "U":
        raise ModelFileError(f"{path} is not a miniflow model (its {METADATA_KEY!r} record is "
                             f"a {dtype} array of shape {_clip(str(shape))}, not a string)")
    if archive.members[METADATA_KEY].file_size > _MAX_METADATA_BYTES:
        raise ModelFileError(f"{path} is not a miniflow model (its {METADATA_KEY!r} record "
                             f"is over {_MAX_METADATA_BYTES} bytes)")
    return _parse_metadata(str(_read_array(archive, METADATA_KEY, path)), path)


def _parse_metadata(text: str, path: Path) -> dict:
    if len(text) > _MAX_METADATA_BYTES:
        raise ModelFileError(f"{path} is not a miniflow model (its metadata record is over "
                             f"{_MAX_METADATA_BYTES} characters)")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ModelFileError(f"{path} is corrupt: its metadata is not JSON "
                             f"({type(exc).__name__}: {_clip(str(exc))})") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path} is not a miniflow model (its metadata is not a record)")
    return metadata


def _check_metadata(metadata: dict, path: Path):
    """Return (architecture record of layers, its layer tree, name -> stored name), checked.

    Nothing is allocated: the tree's parameters are shapes until a model is assembled.
    """
    if metadata.get("format") != FORMAT or "version" not in metadata:
        raise ModelFileError(f"{path} is not a miniflow model (its metadata has no "
                             f"{FORMAT!r} format marker)")
    version = metadata["version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ModelFileError(f"{path} is a miniflow model of format version "
                             f"{_clip(repr(version))}; this miniflow reads version "
                             f"{' or '.join(str(v) for v in READABLE_VERSIONS)}")
    record = metadata.get("architecture")
    stored_names = _legacy_name if version == 1 else str
    try:
        if version == 1:
            if not isinstance(record, dict):
                raise TypeError(f"the record is {_clip(repr(record))}")
            record = _legacy_architecture(record)
        network = network_of(record)
    except _UnknownKind as unknown:
        raise ModelFileError(f"{path} holds a model of unknown kind "
                             f"{_clip(repr(unknown.args[0]))}; this miniflow knows "
                             f"{', '.join(_LEGACY_KINDS)}") from None
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path} is corrupt: its architecture record is unusable "
                             f"({type(exc).__name__}: {_clip(str(exc))})") from None
    for key in ("input_mean", "input_std"):
        value = metadata.get(key)
        if not _is_finite_number(value):
            raise ModelFileError(f"{path} is corrupt: {key} must be a finite number, "
                                 f"got {_clip(repr(value))}")
    problem = standardisation_problem(metadata["input_mean"], metadata["input_std"])
    if problem:
        raise ModelFileError(f"{path} is corrupt: {problem}")
    return record, network, stored_names


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range, which JSON allows
        return False


def _check_parameters(headers: dict, record: dict, shapes: dict, path: Path) -> None:
    """Compare the arrays' names, shapes and dtypes with the architecture's, from headers only.

    ``headers`` maps each stored array's name to its (shape, Fortran order, dtype).
    """
    stored = set(headers)
    where = f"{path} does not match its architecture ({_clip(describe(record))})"
    if stored != set(shapes):
        missing, extra = _some(set(shapes) - stored), _some(stored - set(shapes))
        raise ModelFileError(f"{where}: missing {missing}, unexpected {extra}")
    for name, expected in shapes.items():
        shape, _, dtype = headers[name]
        if shape != expected or dtype.kind != "f":
            raise ModelFileError(f"{where}: {name} has shape {_clip(str(shape))} and dtype "
                                 f"{dtype}, expected shape {expected}, floating point")


def _read_array(archive: _Archive, name: str, path: Path) -> np.ndarray:
    """Read one member whose header was checked, so its size is known and bounded."""
    with archive.zip_file.open(archive.members[name]) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _some(names, shown=5) -> str:
    names = sorted(names)
    if not names:
        return "nothing"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{[_clip(name) for name in names[:shown]]}{more}"


def _count(n: int) -> str:
    # str() refuses ints of over 4300 digits, which a forged shape can multiply to.
    return str(n) if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _clip(text: str, limit: int = 200) -> str:
    """``text``, cut short: a hostile file can put megabytes into any value it declares."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
