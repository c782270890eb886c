"""Fuzz the IDX reader and the gzip layer in front of it with atheris.

libFuzzer adds what it finds to the first corpus folder: give it a scratch
copy (cp -r tests/fuzz/regressions/idx /tmp/corpus), not the regressions.

    python tests/fuzz/fuzz_idx.py -max_total_time=60 [corpus folder ...]

Any exception other than MnistFormatError is a crash: atheris stops and
writes the input to ./crash-<hash>. Keep such inputs in
tests/fuzz/regressions/idx/, where tests/test_fuzz_regressions.py replays them.
"""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's miniflow

with atheris.instrument_imports():
    from miniflow.datasets import mnist
    from miniflow.datasets.idx import MnistFormatError, read_idx

# A small known size keeps every input cheap, as the real loader's are bounded.
SPEC = mnist._FileSpec("fuzz-idx1-ubyte", "0" * 64, (16,))


def test_one_input(data: bytes) -> None:
    try:
        read_idx(data, "fuzz")
    except MnistFormatError:
        pass
    try:
        mnist._parse(mnist._decompress(data, "fuzz.gz", SPEC), "fuzz.gz", SPEC)
    except MnistFormatError:
        pass
    try:  # as --data-dir reads a set that need not be MNIST: any rows, no checksum
        mnist._parse(data, "fuzz", SPEC.any_copy())
    except MnistFormatError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
