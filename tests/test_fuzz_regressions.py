"""Replay the inputs the atheris fuzzers found (and their seeds) through the readers.

tests/fuzz/fuzz_idx.py and tests/fuzz/fuzz_model.py search for inputs that make
the IDX reader or the model loader raise anything but their documented error;
every such input, once fixed, is kept under tests/fuzz/regressions/ and must
from then on end in that error (or load, for the valid seeds). Names say where
an input came from: seed-* started the fuzzers (seed-valid-* must load),
found-* are what the fuzzers found on the code before it was fixed, hand-* were
written by hand for what they did not reach in a few minutes.
"""
from pathlib import Path

import pytest

from miniflow.datasets import MnistFormatError, read_idx
from miniflow.datasets import mnist as mnist_module
from miniflow.serialize import ModelFileError, load_model

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
IDX_INPUTS = sorted((REGRESSIONS / "idx").iterdir())
MODEL_INPUTS = sorted((REGRESSIONS / "model").iterdir())
# As in fuzz_idx.py: a small known size keeps the gzip layer's limits tight.
SPEC = mnist_module._FileSpec("fuzz-idx1-ubyte", "0" * 64, (16,))


def test_the_corpora_are_there():
    assert len(IDX_INPUTS) >= 4 and len(MODEL_INPUTS) >= 4


@pytest.mark.parametrize("path", IDX_INPUTS, ids=lambda path: path.name)
def test_idx_input_ends_in_a_format_error_or_an_array(path):
    data = path.read_bytes()
    for read in (lambda: read_idx(data, path.name),
                 lambda: mnist_module._parse(mnist_module._decompress(data, path.name, SPEC),
                                             path.name, SPEC),
                 lambda: mnist_module._parse(data, path.name, SPEC.any_copy())):
        try:
            read()
        except MnistFormatError as exc:
            assert str(exc).startswith(f"{path.name}: ")


@pytest.mark.parametrize("path", MODEL_INPUTS, ids=lambda path: path.name)
def test_model_input_ends_in_a_model_file_error_or_a_model(path):
    try:
        model = load_model(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)
        assert not path.name.startswith("seed-valid"), exc
    else:
        assert path.name.startswith("seed-valid"), "a damaged file loaded"
        assert all(value.dtype == "float32" for value in model.params.values())
