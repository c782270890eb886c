"""MNIST: find the four IDX files, download them if missing, verify, split.

The loader's promises, in order of importance:

* It returns exactly the canonical MNIST data or raises: every file's
  decompressed content must match a known SHA-256.
* It never deletes or overwrites a file it did not write. A corrupt local
  file is reported, not "repaired" by downloading over it.
* A download is verified before it becomes visible, and lands with an atomic
  rename, so an interrupted download never leaves a file that looks complete.
* When it fails, one error says where it looked, what went wrong with each
  mirror, and how to point it at a local copy.
"""

import hashlib
import http.client
import math
import operator
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MnistChecksumError, MnistNotFoundError
from ..files import atomic_write
from .idx import MnistFormatError, declared_size, read_idx

# Tried in turn for each missing file. The original site often answers 403
# to scripts, so it comes last.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# `timeout` bounds each network wait; a whole file may take this many times
# longer, so that a server trickling a byte at a time cannot hold us forever.
_TOTAL_TIME_FACTOR = 20
_CHUNK_SIZE = 1 << 16
# Concatenated gzip files are legal; a few members are plausible, thousands of
# empty ones only make decompression slow.
_MAX_GZIP_MEMBERS = 16
_INFLATE_CHUNK = 1 << 22
_IDX_HEAD = 4 + 4 * 255  # the longest IDX header: 255 dimensions

_HOW_TO_POINT = (
    "To use a local copy of the four MNIST files (raw or .gz), pass "
    "--data-dir DIR on the command line, set MINIFLOW_DATA=DIR, or call "
    "load_mnist(data_dir=DIR)."
)


# A same-format copy that is not MNIST (Fashion-MNIST, a subset, a larger set)
# may have any number of rows; beyond this many bytes it is refused unread.
MAX_IDX_BYTES = 1 << 30


@dataclass(frozen=True)
class _FileSpec:
    name: str  # canonical name of the decompressed file
    sha256: str | None  # of the decompressed content; None: any content of the right form
    shape: tuple  # None in a dimension: any size
    dtype: np.dtype = np.dtype(np.uint8)

    @property
    def size(self):
        """Bytes in the decompressed file: the IDX header, then one byte per pixel or label."""
        if None in self.shape:
            return MAX_IDX_BYTES
        return 4 + 4 * len(self.shape) + math.prod(self.shape)

    def any_copy(self):
        """The spec of a same-format file of any content and number of rows."""
        return _FileSpec(self.name, None, (None,) + self.shape[1:])

    @property
    def max_gzip_size(self):
        """An upper bound on the size of any gzip of this file.

        Deflate grows incompressible data by at most a few bytes per 16 KiB
        block; the 64 KiB leaves room for the gzip header's optional fields.
        """
        return self.size + self.size // 1024 + (1 << 16)


# Each file's SHA-256 covers its decompressed content: the .gz bytes depend
# on the compressor, the IDX bytes do not.
_FILES = {
    "train_images": _FileSpec(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    "train_labels": _FileSpec(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    "test_images": _FileSpec(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    "test_labels": _FileSpec(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
}
#: Images in the official training file: `load_mnist`'s validation_size must be below this.
MNIST_TRAIN_SIZE = _FILES["train_labels"].shape[0]


@dataclass(frozen=True, eq=False, repr=False)
class MNIST:
    """The MNIST digits, split into training, validation and test sets.

    Images are float32 arrays of shape (N, 784): each row is a 28x28 image
    flattened row by row, with pixels scaled to [0, 1] (pixel / 255). Labels
    are int64 arrays of shape (N,) holding the digits 0-9.

    The validation set is the *last* `validation_size` rows of the official
    60,000-image training file and the training set is the rest, so the
    split is the same on every run (by default 55,000 / 5,000). The test set
    is the official 10,000-image test file.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __repr__(self):
        return (
            f"MNIST(train={len(self.train_labels)}, val={len(self.val_labels)}, "
            f"test={len(self.test_labels)})"
        )


def default_data_dir() -> Path:
    """The folder `load_mnist` uses when it is given none.

    Returns
    -------
    pathlib.Path
        ``$MINIFLOW_DATA`` if that is set, else the per-user cache
        ``$XDG_CACHE_HOME/miniflow/mnist`` (``~/.cache/miniflow/mnist`` when
        ``XDG_CACHE_HOME`` is unset). The folder need not exist.
    """
    return _resolve_data_dir(None)[0]


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 5000,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
    verify: bool = True,
) -> MNIST:
    """Load MNIST, downloading and verifying the files if they are missing.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Folder holding the four IDX files, each either raw
        (``train-images-idx3-ubyte``) or gzipped (``...-ubyte.gz``).
        Default: `default_data_dir()`.
    validation_size : int, default 5000
        How many of the last training rows form the validation set,
        0 <= validation_size < 60000.
    download : bool, default True
        Download missing files into `data_dir`. Files already there are used
        as they are, never replaced.
    mirrors : sequence of str, optional
        Base URLs tried in turn for each missing file (the file name plus
        ``.gz`` is appended). Default: `DEFAULT_MIRRORS`.
    timeout : float, default 30.0
        Seconds to wait to connect or for any single read; a whole file may
        take at most 20 times this.
    progress : bool, optional
        Show download progress on stderr (a tqdm bar if tqdm is installed,
        else one line per file). Default: only when stderr is a terminal.
    verify : bool, default True
        Require the local files to be the canonical MNIST (by SHA-256 and
        shape). False accepts any set in the same form under the same names
        (Fashion-MNIST, say): uint8 images (N, H, W) and labels (N,), N
        matching, each file at most ``MAX_IDX_BYTES``. Downloads are MNIST
        and always verified.

    Returns
    -------
    MNIST
        float32 images of shape (N, 784) scaled to [0, 1] and int64 labels
        0-9; training/validation split as described in `MNIST`.

    Raises
    ------
    ValueError
        If `validation_size` is out of range.
    MnistNotFoundError
        If a file is missing and cannot be downloaded (or `download` is
        False). The message says where the loader looked and why each
        mirror failed.
    MnistFormatError
        If a local file is truncated, not gzip/IDX, has the wrong shape, or is
        larger than the MNIST file it is named after (it is then not read).
    MnistChecksumError
        If a local file's content is not the canonical MNIST file.
    """
    validation_size = operator.index(validation_size)
    if not 0 <= validation_size < MNIST_TRAIN_SIZE:
        raise ValueError(
            f"validation_size must be in [0, {MNIST_TRAIN_SIZE}), got {validation_size}"
        )
    raw = _load_files(_FILES, data_dir, download, mirrors, timeout, progress, verify)
    return _split(raw, validation_size)


def load_mnist_test(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load only the MNIST test set: what evaluating a trained model needs.

    Reads (or downloads) only the two ``t10k`` files; the parameters and
    errors are those of `load_mnist`.

    Returns
    -------
    images, labels : numpy.ndarray
        float32 (10000, 784) in [0, 1], and int64 (10000,).
    """
    files = {key: _FILES[key] for key in ("test_images", "test_labels")}
    raw = _load_files(files, data_dir, download, mirrors, timeout, progress, verify)
    _check_rows(raw, "test")
    images = np.divide(raw["test_images"].reshape(len(raw["test_images"]), -1), 255,
                       dtype=np.float32)
    return images, raw["test_labels"].astype(np.int64)


def _load_files(files, data_dir, download, mirrors, timeout, progress, verify=True):
    """{key: raw array} for each of ``files``, read locally or downloaded and verified."""
    folder, origin = _resolve_data_dir(data_dir)
    local = {key: _find_local(folder, spec) for key, spec in files.items()}
    missing = [files[key].name for key, path in local.items() if path is None]
    if missing and not download:
        raise _not_found(folder, origin, missing, "Downloading is off (download=False).",
                         "downloading is off")
    if mirrors is None:
        mirrors = DEFAULT_MIRRORS

    raw = {}
    for key, spec in files.items():
        if local[key] is not None:
            raw[key] = _read_local(local[key], spec if verify else spec.any_copy())
            continue
        try:
            raw[key] = _download(spec, folder, mirrors, timeout, progress)
        except _MirrorsFailed as exc:
            raise _not_found(folder, origin, missing, exc.report(), exc.summary()) from None
    return raw


def _split(raw, validation_size):
    """Scale images, widen labels and cut the validation rows off the end."""
    images = {
        key: np.divide(raw[key].reshape(len(raw[key]), -1), 255, dtype=np.float32)
        for key in ("train_images", "test_images")
    }
    labels = {key: raw[key].astype(np.int64) for key in ("train_labels", "test_labels")}
    _check_rows(raw, "train")
    _check_rows(raw, "test")
    if validation_size >= len(labels["train_labels"]):
        raise ValueError(f"validation_size must be below the {len(labels['train_labels'])} "
                         f"training rows, got {validation_size}")
    cut = len(labels["train_labels"]) - validation_size
    return MNIST(
        train_images=images["train_images"][:cut],
        train_labels=labels["train_labels"][:cut],
        val_images=images["train_images"][cut:],
        val_labels=labels["train_labels"][cut:],
        test_images=images["test_images"],
        test_labels=labels["test_labels"],
    )


def _check_rows(raw, part):
    """A set that is not MNIST may have any number of rows, but as many labels as images."""
    images, labels = raw[f"{part}_images"], raw[f"{part}_labels"]
    if len(images) != len(labels):
        raise MnistFormatError(_FILES[f"{part}_labels"].name,
                               f"{len(labels)} labels for {len(images)} images in "
                               f"{_FILES[f'{part}_images'].name}")


# --- where the files are --------------------------------------------------


def _resolve_data_dir(data_dir):
    """Return (folder, how it was chosen); the latter is for error messages."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given as the data_dir argument"
    env = os.environ.get("MINIFLOW_DATA")
    if env:
        return Path(env).expanduser(), "from the MINIFLOW_DATA environment variable"
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore relative paths: they would depend on the
    # working directory.
    if not os.path.isabs(cache):
        cache = "~/.cache"
    folder = Path(cache).expanduser() / "miniflow" / "mnist"
    return folder, "the per-user cache, as neither data_dir nor MINIFLOW_DATA is set"


def _find_local(folder, spec):
    """The raw or gzipped copy of `spec` in `folder` (raw first), or None."""
    for candidate in (folder / spec.name, folder / f"{spec.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_local(path, spec):
    """Read, decompress (if .gz) and verify one local file."""
    compressed = path.suffix == ".gz"
    limit = spec.max_gzip_size if compressed else spec.size
    # A file far larger than MNIST is surely not MNIST: say so before reading
    # it, rather than running out of memory on it.
    size = path.stat().st_size
    if size > limit:
        raise MnistFormatError(
            str(path),
            f"{size} bytes is more than {'any gzip of ' if compressed else ''}"
            f"{spec.name} can be ({limit} bytes at most)",
        )
    data = path.read_bytes()
    if compressed:
        data = _decompress(data, str(path), spec)
    return _parse(data, str(path), spec)


def _not_found(folder, origin, missing, why, short_why):
    """The error, its message in full (a line per mirror), and ``summary``: one line, for
    the command line, which shows the full message with ``--traceback``."""
    error = MnistNotFoundError(_not_found_message(folder, origin, missing, why))
    error.summary = (f"MNIST files missing from {folder} ({origin}): {', '.join(missing)}; "
                     f"{short_why}. Pass --data-dir DIR or set MINIFLOW_DATA=DIR (rerun with "
                     f"--traceback for the details)")
    return error


def _not_found_message(folder, origin, missing, why):
    return (
        f"MNIST files missing from {folder} ({origin}): "
        f"{', '.join(missing)}.\n"
        f"Looked for each as raw IDX and as .gz. {why}\n"
        f"{_HOW_TO_POINT}"
    )


# --- decoding and verifying -----------------------------------------------


def _decompress(data, name, spec):
    """Gunzip `data`, which must inflate to no more than `spec.size` bytes, nor past
    the size its IDX header declares.

    Inflating goes a chunk at a time and stops one byte past the smaller of those,
    so a small "gzip bomb" costs no more memory than the file its header describes
    (for a copy of any number of rows, `spec.size` alone would allow a gibibyte).
    The zlib module's errors become MnistFormatError.
    """
    chunks, head = [], b""
    inflated, limit, declared = 0, spec.size, None
    try:
        # A gzip file may hold several members, concatenated (as gzip.decompress
        # accepts them), with zero padding between them.
        for _ in range(_MAX_GZIP_MEMBERS):
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = data
            while not inflater.eof:
                # The header first, alone: the size it declares bounds every later chunk.
                step = _IDX_HEAD if len(head) < _IDX_HEAD and declared is None else _INFLATE_CHUNK
                chunk = inflater.decompress(pending, min(step, limit + 1 - inflated))
                pending = inflater.unconsumed_tail
                chunks.append(chunk)
                inflated += len(chunk)
                if declared is None and len(head) < _IDX_HEAD:
                    head += chunk[:_IDX_HEAD - len(head)]
                    declared = declared_size(head)
                    if declared is not None:
                        limit = min(limit, declared)
                if inflated > limit:
                    raise MnistFormatError(
                        name,
                        f"gzip data inflates past {limit} bytes, the size "
                        f"{'its IDX header declares' if limit == declared else 'of ' + spec.name}",
                    )
                if not chunk and not pending:
                    break  # the input ran out before the stream's end
            if not inflater.eof:
                raise MnistFormatError(name, "truncated gzip data (the stream ends early)")
            data = inflater.unused_data.lstrip(b"\x00")
            if not data:
                return b"".join(chunks)
    except zlib.error as exc:
        raise MnistFormatError(name, f"corrupt gzip data ({exc})") from None
    raise MnistFormatError(name, f"more than {_MAX_GZIP_MEMBERS} gzip members")


def _parse(content, name, spec):
    """Decode decompressed IDX bytes and check they are the canonical file."""
    array = read_idx(content, name)
    if len(array.shape) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, array.shape)):
        expected = str(spec.shape).replace("None", "N")
        raise MnistFormatError(
            name, f"expected shape {expected} for {spec.name}, found {array.shape}"
        )
    if array.dtype != spec.dtype:
        raise MnistFormatError(name, f"expected {spec.dtype} values, found {array.dtype}")
    if spec.sha256 is None:
        return array
    digest = hashlib.sha256(content).hexdigest()
    if digest != spec.sha256:
        raise MnistChecksumError(
            name,
            f"checksum mismatch: SHA-256 of the decompressed content is "
            f"{digest}, expected {spec.sha256} (corrupt, or not the "
            f"canonical {spec.name})",
        )
    return array


# --- downloading ------------------------------------------------------------


class _MirrorsFailed(Exception):
    """Every mirror failed for one file; `failures` is [(url, reason), ...]."""

    def __init__(self, failures):
        super().__init__(failures)
        self.failures = failures

    def summary(self):
        if not self.failures:
            return "no download mirrors were given"
        count = len(self.failures)
        return f"downloading failed from {'the' if count == 1 else 'all'} {count} " \
               f"mirror{'' if count == 1 else 's'}"

    def report(self):
        if not self.failures:
            return "No download mirrors were given."
        lines = [f"  {url}: {reason}" for url, reason in self.failures]
        return "Downloading failed from every mirror:\n" + "\n".join(lines)


def _download(spec, folder, mirrors, timeout, progress):
    """Fetch `spec` from the first mirror that serves a verified copy.

    The verified .gz is then saved in `folder`, which is created if needed.
    Returns the decoded array; raises _MirrorsFailed otherwise.
    """
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{spec.name}.gz"
        try:
            data = _fetch(url, timeout, progress, spec.max_gzip_size)
            array = _parse(_decompress(data, url, spec), url, spec)
        except (OSError, http.client.HTTPException, MnistFormatError, _BadResponse) as exc:
            failures.append((url, _describe_failure(exc)))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / f"{spec.name}.gz", data)
        return array
    raise _MirrorsFailed(failures)


class _BadResponse(Exception):
    """A mirror's answer cannot be the file asked for (its size says so)."""


def _fetch(url, timeout, progress, limit):
    """Return the body at `url`, failing fast on a stalled or trickling server.

    A body of more than `limit` bytes, or more than its Content-Length
    header announced, is refused as soon as it shows, without keeping it.
    """
    deadline = time.monotonic() + _TOTAL_TIME_FACTOR * timeout
    chunks = []
    received = 0
    # urlopen's timeout applies to the connection and to every read, so a
    # server that goes silent raises TimeoutError instead of hanging.
    with urllib.request.urlopen(url, timeout=timeout) as response:
        # From the header rather than response.length, which only HTTP
        # responses have; a file:// mirror works too.
        size = _content_length(response.headers.get("Content-Length"), limit)
        with _progress(progress, url, size) as advance:
            # read1, unlike read, returns whatever has arrived rather than
            # waiting for a full chunk, so the deadline is checked often.
            while chunk := response.read1(_CHUNK_SIZE):
                received += len(chunk)
                if received > (limit if size is None else size):
                    raise _BadResponse(
                        f"the response is larger than the {size} bytes it announced"
                        if size is not None
                        else f"the response is larger than {limit} bytes, more than "
                        f"the file can be"
                    )
                chunks.append(chunk)
                advance(len(chunk))
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"timed out: the download took more than "
                        f"{_TOTAL_TIME_FACTOR * timeout:g} s in total"
                    )
    return b"".join(chunks)


def _content_length(header, limit):
    """The size a Content-Length header announces, None if it is absent.

    Raises _BadResponse when it is not a number or exceeds `limit`.
    """
    if header is None:
        return None
    text = header.strip()
    # int() would also take "+5", "1_000" and non-ASCII digits; HTTP does not.
    if not (text.isascii() and text.isdigit()):
        raise _BadResponse(f"bad Content-Length header {header[:40]!r}")
    size = int(text[:40])
    if size > limit:
        raise _BadResponse(
            f"the server announces {text[:40]} bytes, more than the file can be "
            f"({limit} bytes at most)"
        )
    return size or None


@contextmanager
def _progress(show, url, total):
    """Yield a callback to report bytes received, drawn on stderr if `show`."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield lambda n: None
        return
    try:
        from tqdm import tqdm  # optional: a plain line does without it
    except ImportError:
        print(f"Downloading {url}", file=sys.stderr, flush=True)
        yield lambda n: None
        return
    filename = url.rsplit("/", 1)[-1]
    with tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar:
        yield bar.update


def _describe_failure(exc):
    """A short reason such as 'HTTP 403 Forbidden' or 'connection refused'."""
    if isinstance(exc, MnistFormatError):
        return exc.fault
    if isinstance(exc, _BadResponse):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    # urlopen wraps connection errors in URLError; errors while reading the
    # body arrive unwrapped.
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return str(reason) or "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror}; offline?)"
    return str(reason) or type(reason).__name__


def _write_atomically(path, data):
    """Write `data` to `path` so that `path` never holds a partial file."""
    with atomic_write(path) as file:
        file.write(data)
