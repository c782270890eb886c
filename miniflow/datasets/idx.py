"""The IDX file format, in which MNIST is distributed.

An IDX file is a tiny header followed by the raw array data::

    bytes 0-1   two zero bytes (the magic number's high half)
    byte  2     data-type code (0x08 uint8, 0x09 int8, 0x0B int16, ...)
    byte  3     number of dimensions, ndim
    then        ndim sizes, each a big-endian unsigned 32-bit integer
    then        the elements, big-endian, in C (row-major) order

See http://yann.lecun.com/exdb/mnist/ (bottom of the page) for the original
description.
"""

import math
import struct

import numpy as np

from ..errors import MnistFormatError

# IDX data-type code -> big-endian NumPy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _header(head: bytes):
    """``(dtype, shape, header_size, file_size)`` as the IDX header at the start of
    ``head`` declares them, or None while ``head`` is too short to tell or is no IDX
    header (read_idx then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _DTYPES:
        return None
    dtype, header_size = _DTYPES[head[2]], 4 + 4 * head[3]
    if len(head) < header_size:
        return None
    shape = struct.unpack(f">{head[3]}I", head[4:header_size])
    return dtype, shape, header_size, header_size + dtype.itemsize * math.prod(shape)


def declared_size(head: bytes) -> int | None:
    """The whole file's size in bytes as the header at the start of ``head`` declares
    it, or None while ``head`` is too short to tell or is no IDX header. Lets a reader
    stop inflating a compressed file at the size it claims, before the rest arrives."""
    found = _header(head)
    return None if found is None else found[3]


def read_idx(data: bytes, name: str) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array.

    Parameters
    ----------
    data : bytes
        The whole file content.
    name : str
        The file's name or path, used in error messages.

    Returns
    -------
    numpy.ndarray
        An array of the file's shape and dtype, in native byte order. For
        single-byte dtypes it is a read-only view of `data` (no copy).

    Raises
    ------
    MnistFormatError
        On a wrong magic number, an unknown data-type code, a truncated file,
        trailing bytes after the data, or a shape NumPy cannot represent.
        Nothing is allocated before the sizes are checked against `data`.
    """
    if len(data) < 4:
        raise MnistFormatError(
            name, f"truncated: expected at least 4 header bytes, got {len(data)}"
        )
    if data[:2] != b"\x00\x00":
        hint = ""
        if data[:2] == _GZIP_MAGIC:
            hint = " (this is gzip data: give the file a .gz suffix)"
        magic = int.from_bytes(data[:4], "big")
        raise MnistFormatError(
            name,
            f"wrong magic number 0x{magic:08X}: an IDX file starts with two "
            f"zero bytes{hint}",
        )
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02X} {d.name}" for c, d in _DTYPES.items())
        raise MnistFormatError(
            name, f"unknown data-type code 0x{code:02X} (known: {known})"
        )
    found = _header(data)
    if found is None:  # the checks above passed: only the sizes can be missing
        raise MnistFormatError(
            name,
            f"truncated: expected a {4 + 4 * ndim}-byte header for {ndim} "
            f"dimensions, got {len(data)} bytes",
        )
    dtype, shape, header_size, expected = found
    if len(data) < expected:
        raise MnistFormatError(
            name,
            f"truncated: expected {_count(expected)} bytes for a {dtype.name} array "
            f"of shape {_brief(shape)}, got {len(data)}",
        )
    if len(data) > expected:
        raise MnistFormatError(
            name,
            f"trailing data: expected {expected} bytes for a {dtype.name} array "
            f"of shape {_brief(shape)}, got {len(data)} ({len(data) - expected} too many)",
        )
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    except ValueError as exc:
        # Sizes the length check above cannot catch: more dimensions than
        # NumPy allows, or an empty axis beside axes whose product overflows.
        raise MnistFormatError(
            name, f"unusable shape: {ndim} dimensions of sizes {_brief(shape)} ({exc})"
        ) from None
    # Multi-byte values are stored big-endian; convert once here so callers
    # never meet a non-native dtype (a no-op for the single-byte MNIST files).
    return array.astype(dtype.newbyteorder("="), copy=False)


def _count(n):
    """``n`` for an error message; an absurd header can declare 10**2400 bytes."""
    return str(n) if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _brief(shape, shown=8):
    """The shape for an error message, cut short when it is long."""
    if len(shape) <= shown:
        return str(shape)
    return f"({', '.join(map(str, shape[:shown]))}, ...)"


def write_idx(array) -> bytes:
    """Encode an array as the bytes of an IDX file (the inverse of `read_idx`).

    Parameters
    ----------
    array : array_like
        Data of dtype uint8, int8, int16, int32, float32 or float64, with at
        most 255 dimensions each smaller than 2**32.

    Returns
    -------
    bytes
        The IDX file content, uncompressed.

    Raises
    ------
    ValueError
        If the dtype has no IDX code.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        supported = ", ".join(d.name for d in _DTYPES.values())
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; supported: {supported}"
        )
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(_DTYPES[code], copy=False).tobytes()
