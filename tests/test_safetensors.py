"""Model files in safetensors: written and read by miniflow with NumPy, and by the package."""
import json
import struct

import numpy as np
import pytest


from miniflow.errors import ModelFileError, NotSafetensorsError, SafetensorsError
from miniflow.models import cnn, mlp
from miniflow.safetensors_format import read_header, read_tensor, write_safetensors
from miniflow.serialize import load_model, save_model


def _arrays():
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal((3, 4)).astype(np.float32),
            "b": np.arange(5, dtype=np.int64), "c": np.zeros((0, 2), np.float64),
            "d": rng.standard_normal(7).astype(np.float16)}


def _read(path):
    with open(path, "rb") as file:
        tensors, metadata, _ = read_header(file)
        return {name: read_tensor(file, entry) for name, entry in tensors.items()}, metadata


def test_round_trip_with_numpy(tmp_path):
    path = tmp_path / "t.safetensors"
    with open(path, "wb") as file:
        write_safetensors(file, _arrays(), {"note": "hi"})
    arrays, metadata = _read(path)
    assert metadata == {"note": "hi"}
    for name, value in _arrays().items():
        assert arrays[name].dtype == value.dtype
        np.testing.assert_array_equal(arrays[name], value)


def test_the_safetensors_package_reads_what_miniflow_writes_and_back(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    ours = tmp_path / "ours.safetensors"
    with open(ours, "wb") as file:
        write_safetensors(file, _arrays(), {"note": "hi"})
    for name, value in st.load_file(str(ours)).items():
        np.testing.assert_array_equal(value, _arrays()[name])
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(_arrays(), str(theirs), metadata={"note": "there"})
    arrays, metadata = _read(theirs)
    assert metadata == {"note": "there"}
    for name, value in _arrays().items():
        np.testing.assert_array_equal(arrays[name], value)


def test_a_saved_model_is_a_safetensors_file_the_package_reads(tmp_path):
    st = pytest.importorskip("safetensors")
    model = cnn(channels=(2, 3), hidden=8, seed=3)
    path = save_model(model, tmp_path / "cnn.safetensors")
    with st.safe_open(str(path), framework="numpy") as file:
        record = json.loads(file.metadata()["miniflow"])
        assert record["architecture"] == model.architecture
        for node, value in model.params.items():
            np.testing.assert_array_equal(file.get_tensor(node.name), value)
    loaded = load_model(path)
    assert loaded.architecture == model.architecture
    for saved, restored in zip(model.params.values(), loaded.params.values()):
        np.testing.assert_array_equal(saved, restored)


def _forge(path, header: bytes, buffer=b"", length=None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length)
                     + header + buffer)
    return path


@pytest.mark.parametrize("header, buffer, length, error, message", [
    (b"", b"", 2**63, NotSafetensorsError, "over the limit"),
    (b"{}", b"", 1000, SafetensorsError, "more than the file holds"),
    (b"[1, 2]", b"", None, NotSafetensorsError, "not a JSON object"),
    (b"{nope", b"", None, NotSafetensorsError, "not JSON"),
    (b'{"x": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}}',
     bytes(4), None, SafetensorsError, "its offsets span 4"),
    (b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
     bytes(4), None, SafetensorsError, "truncated"),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
     b' "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
     bytes(4), None, SafetensorsError, "tile the buffer"),
    (b'{"x": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}',
     bytes(8), None, SafetensorsError, "dtype 'O'"),
    (b'{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
     bytes(4), None, SafetensorsError, "shape must be a list of sizes"),
    (b'{"__metadata__": {"a": 1}}', b"", None, SafetensorsError, "strings to strings"),
])
def test_forged_headers_are_refused_before_any_array_is_read(tmp_path, header, buffer, length,
                                                             error, message):
    path = _forge(tmp_path / "forged.safetensors", header, buffer, length)
    with open(path, "rb") as file, pytest.raises(error, match=message):
        read_header(file)
    with pytest.raises(ModelFileError, match="not a miniflow model|corrupt or truncated"):
        load_model(path)


def test_a_safetensors_file_that_is_not_a_model_says_so(tmp_path):
    path = tmp_path / "other.safetensors"
    with open(path, "wb") as file:
        write_safetensors(file, {"w": np.ones(3, np.float32)})
    with pytest.raises(ModelFileError, match="safetensors file but not a miniflow model"):
        load_model(path)


def test_a_model_file_whose_tensors_are_not_its_architectures_is_refused(tmp_path):
    model = mlp(0, n_inputs=4, n_classes=2)
    path = save_model(model, tmp_path / "m.safetensors")
    arrays, metadata = _read(path)
    arrays["fc1.weight"] = np.ones((3, 4), np.float32)
    with open(path, "wb") as file:
        write_safetensors(file, arrays, metadata)
    with pytest.raises(ModelFileError, match="fc1.weight has shape \\(3, 4\\)"):
        load_model(path)
    arrays["fc1.weight"] = np.ones((2, 4), np.int32)
    with open(path, "wb") as file:
        write_safetensors(file, arrays, metadata)
    with pytest.raises(ModelFileError, match="floating point"):
        load_model(path)


def test_a_file_declaring_terabytes_is_refused_in_little_memory(tmp_path):
    import tracemalloc

    path = save_model(mlp((3,), n_inputs=4, n_classes=2), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["fc1.weight"]["shape"] = [1 << 20, 1 << 20]  # 4 TiB of float32
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="corrupt or truncated.*fc1.weight"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
