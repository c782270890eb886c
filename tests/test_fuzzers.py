"""Each atheris harness in tests/fuzz/ runs a bounded number of mutated inputs.

The harnesses run in a subprocess of their own (libFuzzer owns the process and
exits it), on a scratch copy of their regression corpus, with a fixed seed: the
same inputs on every run, so a failure here reproduces with the command the
assertion prints. A crash is any exception other than the reader's documented
error; libFuzzer then exits non-zero and writes the input to crash-<hash>.
Longer searches: `python tests/fuzz/fuzz_model.py -max_total_time=60` (README, Errors).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
RUNS = 2000  # a few seconds each, most of them atheris instrumenting the imports
HARNESSES = {"fuzz_idx.py": "idx", "fuzz_model.py": "model"}


def test_every_harness_is_run_here():
    assert sorted(p.name for p in FUZZ.glob("fuzz_*.py")) == sorted(HARNESSES)


@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_harness_finds_no_crash_in_a_bounded_run(harness, tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install -e '.[fuzz]'; the test extra "
                    "brings it on Linux x86_64)")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "regressions" / HARNESSES[harness], corpus)
    seeds = len(list(corpus.iterdir()))
    command = [sys.executable, str(FUZZ / harness), f"-runs={RUNS}", "-seed=1",
               f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, (
        f"{' '.join(command)} exited {done.returncode}, wrote {crashes}:\n{done.stderr[-3000:]}")
    # The run did mutate: libFuzzer reports every input it executed.
    assert f"Done {RUNS} runs" in done.stderr
    assert "stat::number_of_executed_units: %d" % RUNS in done.stderr
    assert seeds >= 2
