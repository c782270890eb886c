"""Tests for miniflow.datasets: the IDX codec and the MNIST loader.

Everything runs offline: downloads are served by a local HTTP server on
127.0.0.1, and every test that could download passes `mirrors=` (an autouse
fixture also empties the default mirror list, so a slip cannot reach the
internet).
"""

import dataclasses
import gzip
import http.server
import os
import socket
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from miniflow.datasets import (
    MNIST,
    MnistChecksumError,
    MnistFormatError,
    MnistNotFoundError,
    default_data_dir,
    load_mnist,
    load_mnist_test,
    load_npz,
    read_idx,
    write_idx,
)
from miniflow.datasets import mnist as mnist_module
from miniflow.errors import DataFileError, MiniflowError

FILE_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _real_data_dir():
    """MINIFLOW_DATA if set, else ../shared/data/mnist next to the repo."""
    env = os.environ.get("MINIFLOW_DATA")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    return candidate if candidate.is_dir() else None


REAL_DIR = _real_data_dir()
needs_real_data = pytest.mark.skipif(
    REAL_DIR is None,
    reason="real MNIST files not found: set MINIFLOW_DATA or provide ../shared/data/mnist",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the internet, nor depend on the caller's env."""
    monkeypatch.setattr(mnist_module, "DEFAULT_MIRRORS", ())
    monkeypatch.delenv("MINIFLOW_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    # A proxy configured in the environment would intercept 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")


# --- IDX codec --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int8", ">i2", "<i4", "float32", ">f8"])
def test_idx_round_trip(dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    back = read_idx(write_idx(array), "small.idx")
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian():
    data = write_idx(np.array([[1, 2, 3]], dtype=np.int16))
    assert data == bytes.fromhex("00000b02" "00000001" "00000003" "0001" "0002" "0003")


def test_write_idx_rejects_unsupported_dtype():
    with pytest.raises(ValueError, match="int64"):
        write_idx(np.zeros(3, dtype=np.int64))


GOOD = write_idx(np.arange(6, dtype=np.uint8).reshape(2, 3))  # 4 + 8 + 6 bytes


@pytest.mark.parametrize(
    "data, fault",
    [
        (b"\x01" + GOOD[1:], "wrong magic number 0x01000802"),
        (gzip.compress(GOOD), "this is gzip data"),
        (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown data-type code 0x0A"),
        (GOOD[:3], "truncated: expected at least 4 header bytes, got 3"),
        (GOOD[:9], "truncated: expected a 12-byte header"),
        (GOOD[:-1], "truncated: expected 18 bytes for a uint8 array of shape (2, 3), got 17"),
        (GOOD + b"xx", "trailing data: expected 18 bytes"),
        (bytes([0, 0, 8, 3]) + b"\xff" * 12,
         f"truncated: expected about 10^{len(str(16 + (2**32 - 1) ** 3)) - 1} bytes for a "
         "uint8 array of shape "
         "(4294967295, 4294967295, 4294967295), got 16"),
        (bytes([0, 0, 0x0E, 255]) + b"\xff" * 1020,
         f"truncated: expected about 10^{len(str(1024 + 8 * (2**32 - 1) ** 255)) - 1} bytes "
         "for a float64 array of shape "
         "(4294967295, 4294967295, 4294967295, 4294967295, 4294967295, 4294967295, "
         "4294967295, 4294967295, ...), got 1024"),
        (bytes([0, 0, 8, 65]) + (1).to_bytes(4, "big") * 65 + b"\x07",
         "unusable shape: 65 dimensions of sizes (1, 1, 1, 1, 1, 1, 1, 1, ...)"),
        (bytes([0, 0, 8, 4]) + bytes(4) + b"\xff" * 12, "unusable shape: 4 dimensions"),
    ],
    ids=["magic", "gzipped", "dtype", "short-magic", "short-header", "truncated", "trailing",
         "absurd-dims", "255-dims", "too-many-dims", "empty-but-overflowing"],
)
def test_idx_errors_name_file_and_fault(data, fault):
    with pytest.raises(MnistFormatError) as info:
        read_idx(data, "some/file-idx2-ubyte")
    assert isinstance(info.value, MiniflowError) and isinstance(info.value, ValueError)
    assert info.value.filename == "some/file-idx2-ubyte"
    assert str(info.value).startswith("some/file-idx2-ubyte: ")
    assert fault in str(info.value)


# --- real files -------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist():
    return load_mnist(REAL_DIR, download=False)


@needs_real_data
def test_real_files_via_env_var(monkeypatch, real_mnist):
    monkeypatch.setenv("MINIFLOW_DATA", str(REAL_DIR))
    assert default_data_dir() == REAL_DIR
    data = load_mnist(download=False)
    np.testing.assert_array_equal(data.test_labels, real_mnist.test_labels)


@needs_real_data
def test_real_files_shapes_dtypes_and_range(real_mnist):
    d = real_mnist
    shapes = {
        "train": (d.train_images.shape, d.train_labels.shape),
        "val": (d.val_images.shape, d.val_labels.shape),
        "test": (d.test_images.shape, d.test_labels.shape),
    }
    assert shapes == {
        "train": ((55000, 784), (55000,)),
        "val": ((5000, 784), (5000,)),
        "test": ((10000, 784), (10000,)),
    }
    for images in (d.train_images, d.val_images, d.test_images):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (d.train_labels, d.val_labels, d.test_labels):
        assert labels.dtype == np.int64
        assert set(np.unique(labels)) == set(range(10))
    # Scaled exactly as pixel / 255.
    assert np.all(np.isin(d.test_images[:100], np.arange(256, dtype=np.float32) / 255))
    assert repr(d) == "MNIST(train=55000, val=5000, test=10000)"
    assert isinstance(d, MNIST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.train_images = d.test_images


@needs_real_data
def test_real_files_label_histogram_is_sane(real_mnist):
    for labels in (real_mnist.train_labels, real_mnist.test_labels):
        share = np.bincount(labels, minlength=10) / len(labels)
        assert np.all((share > 0.05) & (share < 0.15)), share


@needs_real_data
def test_validation_is_the_last_training_rows(real_mnist):
    whole = load_mnist(REAL_DIR, download=False, validation_size=0)
    assert whole.train_images.shape == (60000, 784)
    assert whole.val_images.shape == (0, 784) and whole.val_images.dtype == np.float32
    assert whole.val_labels.shape == (0,) and whole.val_labels.dtype == np.int64
    # np.array_equal: assert_array_equal takes over a second on 170 MB.
    assert np.array_equal(whole.train_images[:55000], real_mnist.train_images)
    assert np.array_equal(whole.train_images[55000:], real_mnist.val_images)
    assert np.array_equal(whole.train_labels[:55000], real_mnist.train_labels)
    assert np.array_equal(whole.train_labels[55000:], real_mnist.val_labels)
    # The MNIST training file famously starts with a 5 and a 0.
    assert list(whole.train_labels[:2]) == [5, 0]


@pytest.mark.parametrize("size", [-1, 60000, 70000])
def test_validation_size_out_of_range(tmp_path, size):
    with pytest.raises(ValueError, match=str(size)):
        load_mnist(tmp_path, validation_size=size)


# --- where the files are ----------------------------------------------------


def test_data_dir_from_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIFLOW_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"


def test_data_dir_from_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "miniflow" / "mnist"


def test_data_dir_defaults_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "miniflow" / "mnist"
    # A relative XDG_CACHE_HOME is invalid per the spec and ignored.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert default_data_dir() == tmp_path / ".cache" / "miniflow" / "mnist"


def test_explicit_data_dir_wins_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIFLOW_DATA", str(tmp_path / "from-env"))
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(tmp_path / "from-arg", download=False)
    message = str(info.value)
    assert str(tmp_path / "from-arg") in message
    assert "given as the data_dir argument" in message
    assert "from-env" not in message


def test_missing_files_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIFLOW_DATA", str(tmp_path))
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(download=False)
    assert isinstance(info.value, MiniflowError)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert f"{tmp_path} (from the MINIFLOW_DATA environment variable)" in message
    assert all(name in message for name in FILE_NAMES)
    assert "download=False" in message
    assert "--data-dir" in message and "load_mnist(data_dir=" in message


# --- corrupt local files ----------------------------------------------------


def _fake_images(n=60000):
    """A well-formed IDX image file of the right shape but wrong content."""
    return write_idx(np.zeros((n, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    "filename, content, error, fault",
    [
        ("train-images-idx3-ubyte", b"\x08\x03" + _fake_images(1)[2:], MnistFormatError, "wrong magic"),
        ("train-images-idx3-ubyte", _fake_images(1)[:-100], MnistFormatError, "truncated"),
        ("train-images-idx3-ubyte.gz", b"not gzip at all", MnistFormatError, "corrupt gzip"),
        ("train-images-idx3-ubyte.gz", gzip.compress(_fake_images(10))[:-20], MnistFormatError, "truncated gzip"),
        ("train-images-idx3-ubyte", _fake_images(10), MnistFormatError, "expected shape (60000, 28, 28)"),
        ("train-images-idx3-ubyte", _fake_images(), MnistChecksumError, "checksum mismatch"),
    ],
    ids=["magic", "truncated", "bad-gzip", "truncated-gzip", "shape", "checksum"],
)
def test_corrupt_local_file_is_reported_and_kept(tmp_path, filename, content, error, fault):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(error) as info:
        # Downloading is on, yet the loader must neither replace the file
        # nor fall back to a download (which would fail differently here).
        load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=0.5)
    assert type(info.value) is error
    assert info.value.filename == str(path)
    assert fault in str(info.value)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == [filename]


LABELS = mnist_module._FILES["train_labels"]
IMAGES = mnist_module._FILES["train_images"]


def _load_train_labels(folder):
    """Read the training labels as load_mnist does, without the other three files."""
    return mnist_module._read_local(mnist_module._find_local(folder, LABELS), LABELS)


def test_a_local_gzip_bomb_is_refused_one_byte_past_the_known_size(tmp_path):
    bomb = gzip.compress(bytes(10 * 2**20))  # 10 KB inflating to 10 MB
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bomb)
    tracemalloc.start()
    with pytest.raises(MnistFormatError) as info:
        _load_train_labels(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(info.value) == (f"{path}: gzip data inflates past {LABELS.size} bytes, "
                               "the size of train-labels-idx1-ubyte")
    assert peak < 4 * LABELS.size  # never the 10 MB


def test_an_unverified_gzip_stops_inflating_at_the_size_its_header_declares(tmp_path):
    """A copy of any number of rows (verify=False, --data-dir) may be up to a gibibyte;
    a gzip whose IDX header declares 10 labels but inflates to 100 MB is refused one
    chunk past those 18 bytes, never after a gibibyte of inflating."""
    head = write_idx(np.zeros(10, np.uint8))
    bomb = gzip.compress(head + bytes(100 * 2**20))
    spec = LABELS.any_copy()
    tracemalloc.start()
    with pytest.raises(MnistFormatError) as info:
        mnist_module._decompress(bomb, "labels.gz", spec)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(info.value) == (f"labels.gz: gzip data inflates past {len(head)} bytes, "
                               "the size its IDX header declares")
    assert peak < 2**20
    assert mnist_module._decompress(gzip.compress(head), "labels.gz", spec) == head


def test_an_oversized_local_file_is_refused_unread(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    with open(path, "wb") as file:
        file.truncate(10 * 2**30)  # a sparse 10 GiB file: costs no disk
    tracemalloc.start()
    with pytest.raises(MnistFormatError) as info:
        _load_train_labels(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(info.value) == (f"{path}: {10 * 2**30} bytes is more than "
                               f"train-labels-idx1-ubyte can be ({LABELS.size} bytes at most)")
    assert peak < 2**20


def test_concatenated_gzip_members_are_read_within_reason(tmp_path):
    content = write_idx(np.arange(7, dtype=np.uint8))
    spec = mnist_module._FileSpec("x", "0" * 64, (7,))
    parts = [gzip.compress(content[:5]), gzip.compress(content[5:])]
    assert mnist_module._decompress(parts[0] + bytes(3) + parts[1], "x.gz", spec) == content
    many = gzip.compress(b"") * 16 + gzip.compress(content)
    with pytest.raises(MnistFormatError, match="more than 16 gzip members"):
        mnist_module._decompress(many, "x.gz", spec)


# --- downloading from a local mirror ----------------------------------------


_KEYS = {spec.name: key for key, spec in mnist_module._FILES.items()}


class _Mirror(http.server.ThreadingHTTPServer):
    """Serves /MODE/NAME.gz, where MODE sets how this mirror misbehaves."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.requests = []
        self.release = threading.Event()  # ends stalled responses at teardown
        self._files = {name: (REAL_DIR / f"{name}.gz").read_bytes() for name in FILE_NAMES}
        self._corrupt = {}

    def url(self, mode):
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/"

    def body(self, mode, name):
        real = self._files[name]
        if mode == "truncated":
            return real[: len(real) // 2]
        if mode == "bomb":
            if name not in self._corrupt:
                # Inflates to one byte more than the real file; level 1 keeps this fast.
                size = mnist_module._FILES[_KEYS[name]].size
                self._corrupt[name] = gzip.compress(bytes(size + 1), compresslevel=1)
            return self._corrupt[name]
        if mode == "corrupt":
            if name not in self._corrupt:
                content = bytearray(gzip.decompress(real))
                content[-1] ^= 0xFF  # still valid IDX of the right shape
                # Level 0 (stored) keeps this fast; the gzip is still valid.
                self._corrupt[name] = gzip.compress(bytes(content), compresslevel=0)
            return self._corrupt[name]
        return real


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        mode, _, filename = self.path.strip("/").partition("/")
        name = filename.removesuffix(".gz")
        if mode == "forbidden" or name not in FILE_NAMES:
            self.send_error(403 if mode == "forbidden" else 404)
            return
        body = self.server.body(mode, name)
        self.send_response(200)
        announced = {"badlength": "12abc", "hugelength": str(10**12),
                     "oversized": None}.get(mode, str(len(body)))
        if announced is not None:
            self.send_header("Content-Length", announced)
        self.end_headers()
        if mode == "stall":
            self.wfile.write(body[:100])
            self.wfile.flush()
            self.server.release.wait()
        elif mode == "oversized":  # no Content-Length, and more than any MNIST gzip
            try:
                for _ in range(60 * 16):
                    self.wfile.write(bytes(2**16))
            except ConnectionError:
                pass  # the client gave up, as it should
        elif mode == "trickle":
            for i in range(len(body)):
                if self.server.release.wait(0.02):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        else:
            try:
                self.wfile.write(body)
            except ConnectionError:
                pass  # a client that refuses the response hangs up early

    def log_message(self, format, *args):
        pass  # keep test output quiet


@pytest.fixture
def mirror():
    if REAL_DIR is None:
        pytest.skip("the local mirror serves the real MNIST files, which are not found")
    server = _Mirror()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def refused_url():
    """A URL on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@needs_real_data
def test_download_into_default_cache(monkeypatch, tmp_path, mirror, capfd):
    monkeypatch.setattr(mnist_module, "DEFAULT_MIRRORS", (mirror.url("good"),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = load_mnist()
    cache = tmp_path / "miniflow" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(f"{name}.gz" for name in FILE_NAMES)
    for name in FILE_NAMES:
        assert (cache / f"{name}.gz").read_bytes() == (REAL_DIR / f"{name}.gz").read_bytes()
    assert data.train_images.shape == (55000, 784) and data.test_labels.shape == (10000,)
    # progress=None shows nothing when stderr is not a terminal.
    assert capfd.readouterr().err == ""
    # Once cached, nothing is downloaded again.
    mirror.requests.clear()
    load_mnist()
    assert mirror.requests == []


@needs_real_data
def test_download_falls_through_forbidden_mirror(tmp_path, mirror):
    data_dir = tmp_path / "data"
    load_mnist(data_dir, mirrors=[mirror.url("forbidden"), mirror.url("good")], timeout=2)
    assert mirror.requests == [
        f"/{mode}/{name}.gz" for name in FILE_NAMES for mode in ("forbidden", "good")
    ]
    assert sorted(os.listdir(data_dir)) == sorted(f"{name}.gz" for name in FILE_NAMES)


@needs_real_data
@pytest.mark.parametrize(
    "mode, reason",
    [("truncated", "truncated gzip data"), ("corrupt", "checksum mismatch")],
)
def test_bad_download_leaves_nothing_behind(tmp_path, mirror, mode, reason):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(data_dir, mirrors=[mirror.url(mode)], timeout=2)
    assert f"{mirror.url(mode)}train-images-idx3-ubyte.gz: {reason}" in str(info.value)
    assert os.listdir(data_dir) == []  # no final file, no temporary file


@needs_real_data
def test_stalled_server_times_out_fast(tmp_path, mirror):
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(tmp_path / "data", mirrors=[mirror.url("stall")], timeout=0.5)
    # The server never sends the rest: reaching here at all means the timeout fired.
    # One request, no retries: the time spent is one timeout, however busy the machine.
    assert "stall/train-images-idx3-ubyte.gz: timed out" in str(info.value)
    assert mirror.requests == ["/stall/train-images-idx3-ubyte.gz"]
    assert not (tmp_path / "data").exists()


@needs_real_data
def test_trickling_server_hits_total_time_limit(monkeypatch, tmp_path, mirror):
    monkeypatch.setattr(mnist_module, "_TOTAL_TIME_FACTOR", 2)
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(tmp_path / "data", mirrors=[mirror.url("trickle")], timeout=0.3)
    # A byte every 20 ms never trips the per-read timeout: only the total limit ends it.
    assert "took more than 0.6 s in total" in str(info.value)
    assert mirror.requests == ["/trickle/train-images-idx3-ubyte.gz"]


@needs_real_data
def test_all_mirrors_failing_is_one_clear_error(tmp_path, mirror, refused_url):
    mirrors = [mirror.url("forbidden"), refused_url, mirror.url("stall")]
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(tmp_path / "data", mirrors=mirrors, timeout=0.5)
    message = str(info.value)
    assert f"{tmp_path / 'data'} (given as the data_dir argument)" in message
    assert all(name in message for name in FILE_NAMES)
    for url, reason in zip(mirrors, ["HTTP 403", "connection refused", "timed out"]):
        assert f"{url}train-images-idx3-ubyte.gz: {reason}" in message
    assert "--data-dir" in message and "MINIFLOW_DATA" in message
    assert "load_mnist(data_dir=" in message


@needs_real_data
def test_progress_plain_line_without_tqdm(monkeypatch, tmp_path, mirror, capfd):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    with pytest.raises(MnistNotFoundError):
        load_mnist(tmp_path, mirrors=[mirror.url("truncated")], progress=True)
    err = capfd.readouterr().err
    assert err == f"Downloading {mirror.url('truncated')}train-images-idx3-ubyte.gz\n"


@needs_real_data
def test_progress_off(tmp_path, mirror, capfd):
    with pytest.raises(MnistNotFoundError):
        load_mnist(tmp_path, mirrors=[mirror.url("truncated")], progress=False)
    assert capfd.readouterr().err == ""


@needs_real_data
def test_progress_bar_with_tqdm(tmp_path, mirror, capfd):
    pytest.importorskip("tqdm")
    with pytest.raises(MnistNotFoundError):
        load_mnist(tmp_path, mirrors=[mirror.url("truncated")], progress=True)
    err = capfd.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "100%" in err


@needs_real_data
@pytest.mark.parametrize(
    "mode, reason",
    [
        ("badlength", "bad Content-Length header '12abc'"),
        ("hugelength", "the server announces 1000000000000 bytes, more than the file can be "
                       f"({IMAGES.max_gzip_size} bytes at most)"),
        ("oversized", f"the response is larger than {IMAGES.max_gzip_size} bytes, more than "
                      "the file can be"),
        ("bomb", f"gzip data inflates past {IMAGES.size} bytes, the size of "
                 "train-images-idx3-ubyte"),
    ],
)
def test_a_response_that_cannot_be_the_file_moves_on_to_the_next_mirror(
    tmp_path, mirror, mode, reason
):
    data_dir = tmp_path / "data"
    with pytest.raises(MnistNotFoundError) as info:
        load_mnist(data_dir, mirrors=[mirror.url(mode)], timeout=5)
    assert f"{mirror.url(mode)}train-images-idx3-ubyte.gz: {reason}\n" in str(info.value) + "\n"
    assert not data_dir.exists() or os.listdir(data_dir) == []
    if mode == "badlength":  # and the next mirror is tried
        data = load_mnist(data_dir, mirrors=[mirror.url(mode), mirror.url("good")], timeout=5)
        assert data.test_labels.shape == (10000,)
        assert sorted(os.listdir(data_dir)) == sorted(f"{name}.gz" for name in FILE_NAMES)


# --- another set of MNIST's form, and .npz files of arrays --------------------


def _write_idx_set(folder, n_train=30, n_test=10, side=28, gz=True):
    """Four IDX files under MNIST's names, of random content (not MNIST)."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8)}
    for name, value in arrays.items():
        data = write_idx(value)
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def test_another_idx_set_loads_when_not_verified_and_is_refused_when_verified(tmp_path):
    arrays = _write_idx_set(tmp_path)
    with pytest.raises(MnistFormatError, match="expected shape \\(60000, 28, 28\\)"):
        load_mnist(tmp_path, download=False)
    data = load_mnist(tmp_path, download=False, verify=False, validation_size=5)
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (25, 5, 10)
    np.testing.assert_array_equal(
        data.train_images[0], arrays["train-images-idx3-ubyte"][0].reshape(-1) / np.float32(255))
    np.testing.assert_array_equal(data.val_labels, arrays["train-labels-idx1-ubyte"][25:])
    images, labels = load_mnist_test(tmp_path, download=False, verify=False)
    assert images.shape == (10, 784) and labels.dtype == np.int64


def test_an_unverified_idx_set_must_still_be_of_mnists_form(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(write_idx(np.zeros(29, np.uint8)))
    with pytest.raises(MnistFormatError, match="29 labels for 30 images"):
        load_mnist(tmp_path, download=False, verify=False, validation_size=5)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(write_idx(np.zeros((30, 2), np.uint8)))
    with pytest.raises(MnistFormatError, match="expected shape \\(N,\\)"):
        load_mnist(tmp_path, download=False, verify=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(write_idx(np.zeros(30, np.int16)))
    with pytest.raises(MnistFormatError, match="expected uint8 values, found int16"):
        load_mnist(tmp_path, download=False, verify=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(write_idx(np.zeros(30, np.uint8)))
    with pytest.raises(ValueError, match="below the 30 training rows"):
        load_mnist(tmp_path, download=False, verify=False, validation_size=30)


def test_npz_of_named_arrays(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 3, 4)), rng.integers(0, 3, 50).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:7], y_test=y[:7])
    data = load_npz(tmp_path / "d.npz", validation_size=10)
    assert data.train_images.shape == (40, 3, 4) and data.train_images.dtype == np.float32
    assert data.train_labels.dtype == np.int64 and data.n_classes == int(y.max()) + 1
    np.testing.assert_array_equal(data.val_labels, y[40:])
    assert data.test_images.shape == (7, 3, 4)
    targets = rng.standard_normal(50)  # a regression: float targets, no classes
    np.savez(tmp_path / "r.npz", x_train=x, y_train=targets, x_val=x[:5], y_val=targets[:5])
    data = load_npz(tmp_path / "r.npz", validation_size=10)  # x_val given: nothing cut off
    assert len(data.train_labels) == 50 and data.train_labels.dtype == np.float32
    assert data.n_classes is None and data.test_images is None


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 2))}, "x_train without its pair y_train"),
    ({"x_test": np.zeros((4, 2)), "y_test": np.zeros(4)}, "has no x_train and y_train"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3)}, "x_train has 4 rows but y_train 3"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "X_test": np.zeros(1)},
     "holds arrays named \\['X_test'\\]"),
    ({"x_train": np.array(["a", "b"]), "y_train": np.zeros(2)}, "x_train must be an array of real"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, -1, 2])}, "the label -1"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4)}, "must lie in \\[0, 4\\)"),
])
def test_a_bad_npz_says_what_is_wrong(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataFileError, match=message):
        load_npz(tmp_path / "d.npz", validation_size=4)


def test_an_npz_that_is_not_one_is_refused(tmp_path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(DataFileError, match="not a readable .npz"):
        load_npz(tmp_path / "d.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataFileError, match="a single .npy array"):
        load_npz(tmp_path / "one.npy")
    with pytest.raises(DataFileError, match="no data file at"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "p.npz", x_train=np.array([{}], dtype=object), y_train=np.zeros(1))
    with pytest.raises(DataFileError, match="not a readable .npz"):  # pickles are never read
        load_npz(tmp_path / "p.npz")
