"""Fuzz the model loader with atheris.

libFuzzer adds what it finds to the first corpus folder: give it a scratch
copy (cp -r tests/fuzz/regressions/model /tmp/corpus), not the regressions.

    python tests/fuzz/fuzz_model.py -max_total_time=60 [corpus folder ...]

Each input is written to a file and given to load_model. Any exception other
than ModelFileError is a crash: atheris stops and writes the input to
./crash-<hash>. Keep such inputs in tests/fuzz/regressions/model/, where
tests/test_fuzz_regressions.py replays them.
"""
import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's miniflow

with atheris.instrument_imports():
    from miniflow.serialize import ModelFileError, load_model

_FOLDER = tempfile.mkdtemp(prefix="fuzz-model-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
_PATH = os.path.join(_FOLDER, "model.npz")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as file:
        file.write(data)
    try:
        load_model(_PATH)
    except ModelFileError:
        pass


if __name__ == "__main__":
    atheris.instrument_all()  # zipfile and numpy.lib.format too, already imported
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
