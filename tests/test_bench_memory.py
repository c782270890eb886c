"""Smoke test of bench/memory.py: each contender trains in a process of its own and
its peak resident memory is recorded (never compared with a bound here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_memory_quick_records_each_process_peak(tmp_path):
    pytest.importorskip("torch")
    data = os.environ.get("MINIFLOW_DATA")
    if not data or not Path(data).is_dir():
        pytest.skip("needs MNIST in $MINIFLOW_DATA")
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(BENCH / "memory.py"), "--quick", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    rows = {r["contender"]: r for r in result["results"]}
    assert set(rows) == {"python:numpy", "python:torch", "miniflow:mlp", "torch:mlp"}
    assert all(r["exit"] == 0 for r in rows.values())
    # Each peak is that process's own: the data alone is 188 MB (float32 images),
    # and PyTorch's libraries add to the floor of its side.
    assert all(r["peak_mib"] > 150 for r in rows.values())
    assert rows["python:torch"]["peak_mib"] > rows["python:numpy"]["peak_mib"]
    assert '"test_accuracy"' in rows["torch:mlp"]["stdout_tail"]
    assert [c["check"] for c in result["targets"]] == ["miniflow:mlp peak RSS / torch:mlp"]
