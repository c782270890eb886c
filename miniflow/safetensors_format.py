"""The safetensors file format, read and written with NumPy alone.

A safetensors file is an 8-byte little-endian header length, a JSON header of
that length, and one byte buffer. The header maps each tensor's name to its
dtype, shape and ``[begin, end)`` offsets in the buffer, and may hold a
``__metadata__`` table of strings. It holds no code and no pointers: a reader
that checks the header against the file's size (as this one does, before
reading a single array) allocates nothing the file does not hold. This module
follows the specification at https://github.com/huggingface/safetensors and is
tested against the ``safetensors`` package, which reads and writes the same
files (it is not needed here: NumPy suffices, and miniflow's core dependencies
stay NumPy and array-api-compat).
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from .errors import NotSafetensorsError, SafetensorsError

__all__ = ["SafetensorsError", "NotSafetensorsError", "write_safetensors", "read_header", "read_tensor", "DTYPES"]

#: The safetensors dtype names miniflow writes and reads, with NumPy's little-endian dtype.
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
          "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
          "I64": np.dtype("<i8"), "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# The safetensors package refuses headers over 100 MB; a model's is a few kB.
MAX_HEADER_BYTES = 100 * 1000 * 1000
METADATA = "__metadata__"




def write_safetensors(file, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``{name: array}`` and string ``metadata`` to the binary ``file``."""
    header, offset, arrays = {}, 0, []
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata maps strings to strings")
        header[METADATA] = dict(metadata)
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        if dtype not in _NAMES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name "
                            f"(supported: {', '.join(DTYPES)})")
        array = array.astype(dtype, copy=False)
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the buffer starts 8-aligned, as the package writes it
    file.write(struct.pack("<Q", len(text)))
    file.write(text)
    for array in arrays:
        file.write(array.tobytes())


def read_header(file) -> tuple[dict, dict, int]:
    """Read and check the header of the safetensors ``file`` (opened in binary, at its start).

    Returns
    -------
    tensors : dict
        ``{name: (numpy dtype, shape tuple, begin, end)}``, begin and end
        absolute positions in the file.
    metadata : dict
        The ``__metadata__`` strings (empty if none).
    size : int
        The file's size in bytes.

    Raises
    ------
    SafetensorsError
        The header is cut short, too long for the file, not a JSON object of
        the specified form, or its offsets do not tile the buffer exactly.
    """
    size = os.fstat(file.fileno()).st_size
    prefix = file.read(8)
    if len(prefix) < 8:
        raise NotSafetensorsError(f"the file has {size} bytes, fewer than a header's length field")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:  # text, or any other format: its first 8 bytes are large
        raise NotSafetensorsError(f"the header would be {length} bytes, over the limit of "
                                  f"{MAX_HEADER_BYTES}")
    if length > size - 8:
        raise SafetensorsError(f"the header declares {length} bytes, more than the file "
                               f"holds after its length field ({size - 8}): truncated")
    raw = file.read(length)
    if not raw.startswith(b"{"):
        raise NotSafetensorsError("the header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotSafetensorsError(f"the header is not JSON ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{METADATA} must map strings to strings")
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _entry(name, entry, start)
    # The offsets must cover the buffer exactly, without gaps or overlaps: the
    # specification's rule, and what makes every byte of the file accounted for.
    position = start
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda item: item[1][2:]):
        if begin != position:
            raise SafetensorsError(f"tensor {name[:200]!r} starts at buffer offset "
                                   f"{begin - start}, expected {position - start} "
                                   "(the tensors must tile the buffer)")
        position = end
    if position != size:
        raise SafetensorsError(f"the tensors end at buffer offset {position - start}, but the "
                               f"buffer holds {size - start} bytes (truncated, or extra bytes)")
    return tensors, metadata, size


def _entry(name: str, entry, start: int):
    where = f"tensor {name[:200]!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{where}: an entry has exactly the keys dtype, shape and "
                               "data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"{where}: dtype {str(dtype)[:50]!r} is not one miniflow reads "
                               f"({', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise SafetensorsError(f"{where}: shape must be a list of sizes, got {str(shape)[:200]}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end], "
                               f"got {str(offsets)[:200]}")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise SafetensorsError(f"{where}: a {dtype} tensor of shape {str(shape)[:200]} takes "
                               f"{nbytes if nbytes < 10**15 else 'over 10^15'} bytes, "
                               f"its offsets span {offsets[1] - offsets[0]}")
    return DTYPES[dtype], tuple(shape), start + offsets[0], start + offsets[1]


def read_tensor(file, entry) -> np.ndarray:
    """Read one tensor whose header entry :func:`read_header` checked."""
    dtype, shape, begin, end = entry
    file.seek(begin)
    count = (end - begin) // dtype.itemsize
    array = np.fromfile(file, dtype=dtype, count=count)
    if array.size != count:  # the file shrank since its header was read
        raise SafetensorsError("the file ended early")
    return array.reshape(shape)
