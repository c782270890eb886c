"""Hostile IDX files (tests/hostile.py's IDX_CASES) are refused by the MNIST loader with a
MnistFormatError naming the file, before anything large is allocated."""
import re
import tracemalloc

import hostile
import pytest

from miniflow.cli import main
from miniflow.datasets import MnistFormatError, load_mnist


def _load(folder, verified):
    return load_mnist(folder, verify=verified, download=False, progress=False,
                      validation_size=0 if verified else 8)


@pytest.mark.parametrize("case", list(hostile.IDX_CASES))
def test_hostile_idx_files_are_refused_cheaply(tmp_path, case):
    name, content, message = hostile.IDX_CASES[case]
    path = hostile.idx_folder(tmp_path / "data", name, content)
    tracemalloc.start()
    try:
        with pytest.raises(MnistFormatError) as caught:
            _load(path.parent, verified="verified" in case)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    error = str(caught.value)
    assert error.startswith(f"{path}: ") and re.search(message, error), error
    # "Not gigabytes": a generous bound on what the refusal allocated (the verified
    # bomb may inflate as far as the real file's 47 MB, and no further).
    assert peak < 200 * 2**20, f"{case}: {peak / 2**20:.0f} MiB allocated"


@pytest.mark.parametrize("case", ["declares 2**32-1 x 2**32-1 x 2**32-1 images",
                                  "float64 images", "corrupt gzip"])
def test_the_command_line_refuses_a_hostile_data_dir_in_one_line(tmp_path, capsys, case):
    name, content, message = hostile.IDX_CASES[case]
    path = hostile.idx_folder(tmp_path / "data", name, content)
    assert main(["train", "--data-dir", str(path.parent), "--validation-size", "8",
                 "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("miniflow: error: ") and err.count("\n") == 1, err
    assert str(path) in err and re.search(message, err), err
