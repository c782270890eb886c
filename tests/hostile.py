"""Hostile model files and IDX files, each built small, and how to measure what reading
one costs.

CASES (model files: .npz of miniflow 0.x and safetensors) are used by
tests/test_models.py, tests/test_cli.py and bench/claims.py; IDX_CASES by
tests/test_hostile_idx.py. Run as a script to print the table of model cases with
the time and peak memory each costs, measured in a fresh process per case:

    PYTHONPATH=. python tests/hostile.py
"""
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

METADATA = {"format": "miniflow-model", "version": 1, "input_mean": 0.0, "input_std": 1.0,
            "architecture": {"hidden": [], "activation": "relu", "n_inputs": 4,
                             "n_classes": 2}}


def write_archive(path, metadata=METADATA, compression=zipfile.ZIP_STORED, **arrays):
    """An .npz as save_model writes it, with any metadata and arrays."""
    arrays = {"__miniflow__": np.array(json.dumps(metadata)), **arrays}
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return Path(path)


def small_arrays(n_inputs=4, n_classes=2):
    return {"fc1.w": np.ones((n_inputs, n_classes), np.float32),
            "fc1.b": np.zeros(n_classes, np.float32)}


def with_architecture(**changes):
    return {**METADATA, "architecture": {**METADATA["architecture"], **changes}}


def npy_header(shape, descr="<f4"):
    """The bytes of a .npy header declaring `shape`, without any data."""
    header = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()  # the magic string included


def raw_zip(path, members):
    """A zip of (name, method, flags, compressed bytes, size, crc) members, written by hand.

    zipfile cannot write a member whose declared size or flags are forged; this can.
    """
    local, central = bytearray(), bytearray()
    for name, method, flags, data, size, crc in members:
        name = name.encode()
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0, crc,
                             len(data), size, len(name), 0) + name + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 0,
                               crc, len(data), size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(local), 0)
    path = Path(path)
    path.write_bytes(bytes(local + central + end))
    return path


def deflated_zeros(prefix: bytes, total: int):
    """(deflate stream, crc) of `prefix` then zeros up to `total` bytes, built in ~1 MB.

    After a full flush deflate forgets its history, so every further MiB of zeros
    compresses to the same bytes: one block is computed and repeated.
    """
    mib = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(prefix + bytes(mib - len(prefix))) + compressor.flush(
        zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks = total // mib - 1
    stream = head + block * blocks + compressor.flush()
    crc = zlib.crc32(prefix + bytes(mib - len(prefix)))
    zeros = bytes(mib)
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    return stream, crc


def metadata_member(metadata=METADATA):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(json.dumps(metadata)))
    data = buffer.getvalue()
    return ("__miniflow__.npy", zipfile.ZIP_STORED, 0, data, len(data), zlib.crc32(data))


# -- the cases: name -> (builder(path) -> path, regex the ModelFileError must match) ----

def _huge_hidden(path):
    return write_archive(path, with_architecture(hidden=[100_000_000]), **small_arrays())


def _float_n_inputs(path):
    return write_archive(path, with_architecture(n_inputs=1e9), **small_arrays())


def _int_n_inputs(path):
    return write_archive(path, with_architecture(n_inputs=10**9), **small_arrays())


def _npy_header_40gb(path):
    # The header says 10**10 float32 (40 GB); the member holds the header only.
    header = npy_header((10**10, 1))
    weights = ("fc1.w.npy", zipfile.ZIP_STORED, 0, header, len(header), zlib.crc32(header))
    bias = npy_header((1,)) + bytes(4)
    return raw_zip(path, [metadata_member(with_architecture(n_inputs=10**10, n_classes=1)),
                          weights, ("fc1.b.npy", 0, 0, bias, len(bias), zlib.crc32(bias))])


def _zip_declares_4gb(path):
    # Header and zip directory agree on ~4 GB; the file is a few hundred bytes.
    size = 0xFFFF0000
    header = npy_header(((size - 128) // 4,))
    data = zlib.compress(header)[2:-4]  # raw deflate of the header alone
    return raw_zip(path, [metadata_member(), ("fc1.w.npy", zipfile.ZIP_DEFLATED, 0, data, size,
                                              0)])


def _bomb_1mb_to_1gib(path):
    # A consistent forgery: header, zip directory and metadata all agree on 1 GiB.
    gib = 1 << 30
    width = (gib - len(npy_header((1, gib)))) // 4  # headers are padded to 64 bytes
    header = npy_header((1, width))
    stream, crc = deflated_zeros(header, gib)
    arch = with_architecture(n_inputs=1, n_classes=width)
    return raw_zip(path, [metadata_member(arch),
                          ("fc1.w.npy", zipfile.ZIP_DEFLATED, 0, stream, gib, crc)])


def _encrypted(path):
    weights = npy_header((4, 2)) + bytes(32)
    return raw_zip(path, [metadata_member(),
                          ("fc1.w.npy", zipfile.ZIP_STORED, 0x1, weights, len(weights),
                           zlib.crc32(weights))])


def _bzip2_member(path):
    data = npy_header((4, 2)) + bytes(32)
    return raw_zip(path, [metadata_member(),
                          ("fc1.w.npy", zipfile.ZIP_BZIP2, 0, data, len(data), zlib.crc32(data))])


def _malformed_deflate(path):
    data = npy_header((4, 2)) + bytes(32)
    return raw_zip(path, [metadata_member(),
                          ("fc1.w.npy", zipfile.ZIP_DEFLATED, 0, b"\xff" * 40, len(data),
                           zlib.crc32(data))])


def _malformed_npy_header(path):
    data = np.lib.format.magic(1, 0) + struct.pack("<H", 20) + b"{'descr': <f4, oops}"
    return raw_zip(path, [metadata_member(),
                          ("fc1.w.npy", zipfile.ZIP_STORED, 0, data, len(data), zlib.crc32(data))])


def _std(value):
    return lambda path: write_archive(path, {**METADATA, "input_std": value}, **small_arrays())


def _mean(value):
    return lambda path: write_archive(path, {**METADATA, "input_mean": value}, **small_arrays())


def _nan_weights(path):
    arrays = small_arrays()
    arrays["fc1.w"][1, 1] = np.nan
    return write_archive(path, **arrays)


def _float32_overflow(path):
    arrays = small_arrays()
    arrays["fc1.w"] = arrays["fc1.w"].astype(np.float64) * 1e300
    return write_archive(path, **arrays)


def _deep_json(path):
    member = metadata_member()
    text = "[" * 100_000 + "]" * 100_000
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(text))
    data = buffer.getvalue()
    return raw_zip(path, [(member[0], 0, 0, data, len(data), zlib.crc32(data))])



# -- safetensors model files: a valid one, saved by miniflow, then forged ---------------

def _safetensors_parts():
    """(header dict, tensor bytes) of a small model as save_model writes it."""
    import tempfile

    from miniflow.models import mlp
    from miniflow.serialize import save_model

    with tempfile.TemporaryDirectory() as folder:
        data = save_model(mlp((), n_inputs=4, n_classes=2, seed=0),
                          Path(folder) / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def write_safetensors_file(path, header, body: bytes):
    """A safetensors file of any header (a dict, or raw JSON bytes) and body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = Path(path).with_suffix(".safetensors")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _forged(change):
    """A builder: the valid file's header and body, passed through ``change``."""
    def build(path):
        header, body = _safetensors_parts()
        return write_safetensors_file(path, *change(header, body))
    return build


def _tensor_names(header):
    return sorted(name for name in header if name != "__metadata__")


def _st_huge_shape(header, body):
    header[_tensor_names(header)[0]]["shape"] = [10**10, 10**10]
    return header, body


def _st_offsets_past_the_end(header, body):
    name = _tensor_names(header)[-1]
    begin = header[name]["data_offsets"][0]
    header[name]["data_offsets"] = [begin, begin + 40 * 2**30]
    return header, body


def _st_overlapping(header, body):
    # The second tensor's span keeps its size but starts 4 bytes inside the first's.
    first, second = sorted(_tensor_names(header), key=lambda n: header[n]["data_offsets"][0])[:2]
    begin, end = header[second]["data_offsets"]
    header[second]["data_offsets"] = [begin - 4, end - 4]
    return header, body


def _st_dtype(dtype):
    def change(header, body):
        header[_tensor_names(header)[0]]["dtype"] = dtype
        return header, body
    return change


def _st_truncated(header, body):
    return header, body[:len(body) // 2]


def _st_nested_metadata(header, body):
    header["__metadata__"] = {key: "[" * 100_000 + "]" * 100_000
                              for key in header["__metadata__"]}
    return header, body


def _st_metadata_not_strings(header, body):
    header["__metadata__"] = {key: {"nested": [1, {"deeper": [2]}]}
                              for key in header["__metadata__"]}
    return header, body


def _st_nested_header(path):
    _, body = _safetensors_parts()
    return write_safetensors_file(path, b"[" * 100_000 + b"]" * 100_000, body)


def _st_header_length(path):
    # The length field declares an exabyte of header; the file is 16 bytes.
    path = Path(path).with_suffix(".safetensors")
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}" + bytes(6))
    return path


CASES = {
    "hidden [100000000]": (_huge_hidden, r"does not match its architecture .*missing \['fc2"),
    "n_inputs 1e9 (float)": (_float_n_inputs, "n_inputs must be a positive integer"),
    "n_inputs 10**9 (int)": (_int_n_inputs, r"fc1.w has shape \(4, 2\).*expected shape "
                                            r"\(1000000000, 2\)"),
    ".npy header of 40 GB": (_npy_header_40gb, "header declares a float32 array of shape "
                                               r"\(10000000000, 1\)"),
    "zip entry declaring 4 GB": (_zip_declares_4gb, r"would inflate to 4294\d{6}, more than 16 times"),
    "1 MB member inflating to 1 GiB": (_bomb_1mb_to_1gib, "more than 16 times their size"),
    "encrypted member": (_encrypted, "is encrypted"),
    "bzip2 member": (_bzip2_member, "compression method 12"),
    "malformed deflate data": (_malformed_deflate, "corrupt or truncated"),
    "malformed .npy header": (_malformed_npy_header, "corrupt or truncated"),
    "input_std 0": (_std(0.0), "input_std must be positive"),
    "input_std NaN": (_std(float("nan")), "input_std must be a finite number, got nan"),
    "input_std inf": (_std(float("inf")), "input_std must be a finite number, got inf"),
    # Finite, but no standardisation: pixels scaled past float32 (issue 17).
    "input_std 1e-300": (_std(1e-300), r"input_mean 0.0 and input_std 1e-300 would scale pixels"),
    "input_mean 1e300": (_mean(1e300), r"input_mean 1e\+300 and input_std 1.0 would scale"),
    "NaN weight": (_nan_weights, "fc1.w holds 1 NaN or infinite values"),
    "weight overflowing float32": (_float32_overflow, "fc1.w holds 8 NaN or infinite values"),
    "metadata nested 100000 deep": (_deep_json, "metadata is not JSON"),
    "safetensors: shape of 10**20 floats": (_forged(_st_huge_shape),
                                            r"shape \[10000000000, 10000000000\] takes over "
                                            r"10\^15 bytes, its offsets span 8"),
    "safetensors: offsets 40 GiB past the end": (_forged(_st_offsets_past_the_end),
                                                 "its offsets span 42949672960"),
    "safetensors: overlapping offsets": (_forged(_st_overlapping),
                                         r"starts at buffer offset 28, expected 32 \(the "
                                         "tensors must tile the buffer"),
    "safetensors: unknown dtype": (_forged(_st_dtype("X9")), "dtype 'X9' is not one miniflow "
                                                            "reads"),
    "safetensors: int32 weights": (_forged(_st_dtype("I32")),
                                   r"fc1.bias has shape \(2,\) and dtype int32, expected shape "
                                   r"\(2,\), floating point"),
    "safetensors: truncated": (_forged(_st_truncated), "the tensors end at buffer offset 40, "
                                                      "but the buffer holds 20 bytes"),
    "safetensors: header length 2**60": (_st_header_length,
                                         "the header would be 1152921504606846976 bytes, over "
                                         "the limit"),
    "safetensors: header nested 100000 deep": (_st_nested_header,
                                               "the header is not a JSON object"),
    "safetensors: metadata nested 100000 deep": (_forged(_st_nested_metadata),
                                                 "its metadata is not JSON"),
    "safetensors: metadata of nested records": (_forged(_st_metadata_not_strings),
                                                "__metadata__ must map strings to strings"),
}


def measure(path):
    """(seconds of CPU, peak bytes allocated, error message) for loading `path`."""
    import time
    import tracemalloc

    from miniflow.serialize import ModelFileError, load_model

    tracemalloc.start()
    started = time.process_time()
    try:
        load_model(path)
        message = None
    except ModelFileError as exc:
        message = str(exc)
    seconds = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, message


CHILD = """
import resource, sys, time
from miniflow.serialize import ModelFileError, load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_model(sys.argv[1])
    message = "(loaded)"
except ModelFileError as exc:
    message = str(exc).replace(sys.argv[1], "FILE")
seconds = time.perf_counter() - started
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"{seconds:.6f}\\t{grown / 1024:.1f}\\t{message}")
"""


def _table():
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print("| case | file size | wall time (fresh process) | peak RSS growth | CPU time "
              "(traced) | peak traced allocation | error |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (build, _) in CASES.items():
            path = build(Path(folder) / "model.npz")
            done = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True,
                                  capture_output=True, text=True)
            seconds, grown, message = done.stdout.rstrip("\n").split("\t")
            cpu, peak, _ = measure(path)
            print(f"| {name} | {path.stat().st_size:,} B | {float(seconds) * 1000:.1f} ms "
                  f"| {grown} MiB | {cpu * 1000:.1f} ms | {peak / 2**20:.2f} MiB "
                  f"| {message[:160]} |")


if __name__ == "__main__":
    _table()


# -- IDX files: a small MNIST-form folder with one file forged ---------------------------

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_folder(folder, name, content: bytes):
    """A folder of four small valid IDX files, ``name`` (one of them, or it + ".gz")
    replaced by ``content``; returns the forged file's path."""
    from miniflow.datasets import write_idx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": 32, "t10k": 8}
    for base in IDX_NAMES:
        n = rows[base.split("-")[0]]
        array = (np.zeros((n, 28, 28), np.uint8) if "images" in base
                 else np.arange(n, dtype=np.uint8) % 10)
        (folder / base).write_bytes(write_idx(array))
    forged = folder / name
    if name.endswith(".gz"):
        (folder / name[:-3]).unlink()
    forged.write_bytes(content)
    return forged


def _idx_header(code, shape):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def _gzip_of_zeros(total):
    """A gzip file inflating to ``total`` zero bytes, built from one MiB block."""
    stream, crc = deflated_zeros(b"", total)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + stream
            + struct.pack("<2L", crc, total & 0xFFFFFFFF))


IMAGES = IDX_NAMES[0]
# name -> (file name to forge, its content, regex the MnistFormatError must match). Each is
# read as --data-dir reads a folder (any IDX set of MNIST's form, unverified) except the
# gzip bomb: an unverified set may be up to MAX_IDX_BYTES (1 GiB) by design, so the bomb
# is read as MNIST itself is, whose known size stops the inflation.
IDX_CASES = {
    "declares 2**32-1 x 2**32-1 x 2**32-1 images": (
        IMAGES, _idx_header(0x08, (2**32 - 1,) * 3), r"truncated: expected about 10\^28 bytes"),
    "255 dimensions of 2**32-1": (
        IMAGES, _idx_header(0x08, (2**32 - 1,) * 255), r"truncated: expected about 10\^2456"),
    "unknown data-type code": (IMAGES, _idx_header(0x0A, (32, 28, 28)),
                               "unknown data-type code 0x0A"),
    "float64 images": (IMAGES, _idx_header(0x0E, (32, 28, 28)) + bytes(32 * 784 * 8),
                       "expected uint8 values, found float64"),
    "wrong magic": (IMAGES, b"\x08\x03\x00\x00" + bytes(64), "wrong magic number 0x08030000"),
    "truncated header": (IMAGES, _idx_header(0x08, (32, 28, 28))[:9],
                         "truncated: expected a 16-byte header for 3 dimensions, got 9"),
    "truncated data": (IMAGES, _idx_header(0x08, (32, 28, 28)) + bytes(100),
                       r"truncated: expected 25104 bytes .* got 116"),
    "trailing data": (IMAGES, _idx_header(0x08, (32, 28, 28)) + bytes(32 * 784 + 7),
                      r"trailing data: .*\(7 too many\)"),
    "corrupt gzip": (IMAGES + ".gz", b"\x1f\x8b\x08\x00" + b"\xff" * 60, "corrupt gzip data"),
    "gzip inflating to 1 GiB (verified MNIST)": (IMAGES + ".gz", _gzip_of_zeros(1 << 30),
                                                 "gzip data inflates past 47040016 bytes"),
}
