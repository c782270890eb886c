"""Saving models to ``.npz`` files and loading them back, safely.

A model file is an ordinary NumPy ``.npz`` archive: each parameter under its
name ("fc1.w", ...) and a JSON record (format marker, version, architecture,
input standardisation) under ``__miniflow__``. It is read with
``allow_pickle=False``, so opening a model file can never run code.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import MiniflowError
from .models import Model, cnn, describe, mlp

__all__ = ["save_model", "load_model", "ModelFileError", "atomic_write", "check_writable"]

# Marks an .npz as a miniflow model; the version changes when the layout does.
FORMAT = "miniflow-model"
VERSION = 1
METADATA_KEY = "__miniflow__"


class ModelFileError(MiniflowError, ValueError):
    """A model file is missing, corrupt, not a miniflow model, or not the model expected."""


@contextmanager
def atomic_write(path):
    """Open a binary file whose content replaces ``path`` only once it is complete.

    Writes go to a temporary file in the same folder (so the final rename
    stays on one file system, where it is atomic), which is flushed to disk and
    then renamed over ``path``. If the ``with`` block raises, or is
    interrupted, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes files private; ours are ordinary data
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def check_writable(path, what: str = "file") -> Path:
    """Make sure ``path`` can be written, before spending time on what goes in it.

    Creates and removes a temporary file in ``path``'s folder: the very
    operation :func:`atomic_write` will need.

    Raises
    ------
    OSError
        With a message naming ``what`` and the problem (no such folder,
        a directory in the way, no permission).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the {what} to {path}: it is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write the {what} to {path}: the folder {folder} "
                                "does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise type(exc)(f"cannot write the {what} to {path}: "
                        f"{exc.strerror or exc} in {folder}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def save_model(model: Model, path) -> Path:
    """Write ``model`` to ``path`` as an ``.npz`` archive, atomically.

    An error or an interrupt midway leaves any existing file at ``path`` as it
    was (see :func:`atomic_write`). ``path`` is used as given: no ``.npz`` is
    appended.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    metadata = {"format": FORMAT, "version": VERSION, "architecture": model.architecture,
                "input_mean": float(model.input_mean), "input_std": float(model.input_std)}
    arrays = {node.name: np.asarray(value, dtype=np.float32)
              for node, value in model.params.items()}
    arrays[METADATA_KEY] = np.array(json.dumps(metadata))
    with atomic_write(path) as file:
        np.savez(file, **arrays)
    return path


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
        was written in another format version, holds parameters that do not
        match its architecture, or is not of the ``architecture`` asked for.
        The message says which.
    """
    path = Path(path)
    metadata, arrays = _read_archive(path)
    if metadata.get("format") != FORMAT or "version" not in metadata:
        raise ModelFileError(f"{path} is not a miniflow model (its metadata has no "
                             f"{FORMAT!r} format marker)")
    if metadata["version"] != VERSION:
        raise ModelFileError(f"{path} is a miniflow model of format version "
                             f"{metadata['version']}; this miniflow reads version {VERSION}")
    try:
        saved = metadata["architecture"]
        if isinstance(saved, dict) and saved.get("kind") == "cnn":
            model = _rebuild_cnn(saved)
        else:
            model = mlp(saved["hidden"], saved["activation"], n_inputs=saved["n_inputs"],
                        n_classes=saved["n_classes"])
        model.input_mean = float(metadata["input_mean"])
        model.input_std = float(metadata["input_std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} is corrupt: its architecture record is unusable "
                             f"({type(exc).__name__}: {exc})") from None
    if architecture is not None and model.architecture != architecture:
        raise ModelFileError(f"{path} holds a model of another architecture: "
                             f"{describe(model.architecture)}, not {describe(architecture)}")

    expected = {node.name for node in model.params}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ModelFileError(f"{path} does not match its architecture "
                             f"({describe(model.architecture)}): "
                             f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    for node, initial in model.params.items():
        value = arrays[node.name]
        if value.shape != initial.shape or value.dtype.kind != "f":
            raise ModelFileError(
                f"{path} does not match its architecture ({describe(model.architecture)}): "
                f"{node.name} has shape {value.shape} and dtype {value.dtype}, expected "
                f"shape {initial.shape}, floating point")
        model.params[node] = value.astype(np.float32, copy=False)
    return model


#: The keys of a CNN's architecture record, each with the JSON type it must have.
_CNN_FIELDS = {"kind": str, "channels": list, "hidden": int, "dropout": float,
               "image_shape": list, "n_classes": int}


def _rebuild_cnn(saved: dict) -> Model:
    """The CNN a saved architecture record describes, checked field by field.

    Only exact keys with values of the JSON types ``cnn`` writes are accepted
    (lists of integers where it writes lists): the record comes from a file,
    and nothing in it may do more than choose sizes. Raises ValueError or
    TypeError (reported as an unusable record) otherwise.
    """
    if set(saved) != set(_CNN_FIELDS):
        raise ValueError(f"a cnn record has the keys {sorted(_CNN_FIELDS)}, "
                         f"this one {sorted(saved)}")
    for key, kind in _CNN_FIELDS.items():
        value = saved[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{key} must be a JSON {kind.__name__}, got {value!r:.60}")
        if kind is list and not all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in value):
            raise TypeError(f"{key} must be a list of integers, got {value!r:.60}")
    return cnn(saved["channels"], saved["hidden"], float(saved["dropout"]),
               image_shape=saved["image_shape"], n_classes=saved["n_classes"])


def _read_archive(path: Path):
    """Return (metadata dict, {name: array}) from an .npz, or raise ModelFileError."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise ModelFileError(f"no model file at {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive, and starts so
        raise ModelFileError(f"{path} is not a miniflow model (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if METADATA_KEY not in archive.files:
                raise ModelFileError(f"{path} is an .npz archive but not a miniflow model "
                                     f"(it has no {METADATA_KEY!r} record)")
            metadata = json.loads(str(archive[METADATA_KEY]))
            arrays = {name: archive[name] for name in archive.files if name != METADATA_KEY}
    except ModelFileError:
        raise
    # A cut-off archive fails in zipfile; a damaged one in zlib, the CRC check,
    # NumPy's header parser or the JSON decoder (all ValueErrors or OSErrors).
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})"
                             ) from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path} is not a miniflow model (its metadata is not a record)")
    return metadata, arrays
