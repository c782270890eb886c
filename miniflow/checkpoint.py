"""Checkpoints of a training run: enough to resume it exactly where it stopped.

A checkpoint holds, after a finished epoch: the parameters and the
optimizer's state (velocities, Adam's moments, its step count, hence where the
schedule is), the model's state arrays (BatchNorm's running statistics), the
shuffling generator's state and the history so far. The random draws inside
steps (Dropout) are seeded per epoch (:func:`miniflow.loop.epoch_seed`), so
they need no saving. Resuming from it gives the weights the uninterrupted run
gives.

The file is a NumPy ``.npz`` of plain arrays (read with ``allow_pickle=False``)
plus one JSON record, written to a temporary file beside the target and then
renamed over it: an interrupted write leaves the previous checkpoint whole.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def save_checkpoint(path, *, epoch: int, optimizer: dict, state: list, rng: dict,
                    history: list) -> Path:
    """Write a checkpoint (see the module's docstring) to ``path``, atomically."""
    path = Path(path)
    arrays, slots = {}, {}
    for key, value in optimizer.items():
        if isinstance(value, list):
            slots[key] = len(value)
            for i, array in enumerate(value):
                arrays[f"optimizer/{key}/{i}"] = np.asarray(array)
    for i, array in enumerate(state):
        arrays[f"state/{i}"] = np.asarray(array)
    record = {"version": CHECKPOINT_VERSION, "epoch": epoch, "rng": rng, "history": history,
              "step_count": int(optimizer["step_count"]), "slots": slots, "states": len(state)}
    arrays["record"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with _quiet():
            os.unlink(temporary)
        raise
    return path


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, OSError)


def load_checkpoint(path) -> dict:
    """Read a checkpoint: ``{"epoch", "optimizer", "state", "rng", "history"}``.

    Raises
    ------
    ConfigError
        The file is missing or is not a checkpoint of this version.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            record = json.loads(bytes(data["record"]).decode())
            if record.get("version") != CHECKPOINT_VERSION:
                raise ConfigError(f"{path}: a checkpoint of version {record.get('version')!r}, "
                                  f"this miniflow reads version {CHECKPOINT_VERSION}")
            optimizer = {"step_count": record["step_count"]}
            for key, count in record["slots"].items():
                optimizer[key] = [data[f"optimizer/{key}/{i}"] for i in range(count)]
            state = [data[f"state/{i}"] for i in range(record["states"])]
    except FileNotFoundError:
        raise ConfigError(f"no checkpoint at {path}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is not a miniflow checkpoint ({exc})") from None
    return {"epoch": record["epoch"], "optimizer": optimizer, "state": state,
            "rng": record["rng"], "history": record["history"]}
