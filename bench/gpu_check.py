"""GPU readiness: the test suite on CuPy, then the step and epoch benchmarks on the GPU.

On a machine with an NVIDIA GPU and CuPy installed, runs in order, each with
its own time limit, all within about 5 minutes:

  1. pytest -q tests/ with MINIFLOW_TEST_BACKENDS=cupy,numpy (the conftest's
     backend fixture then runs every backend test on CuPy and NumPy, and fails
     rather than skips if CuPy is unusable);
  2. bench/step.py: miniflow on cupy and numpy, eager and compiled (cupy+graph:
     the step captured once as a CUDA graph, numpy+plan), hand-written CuPy and
     NumPy, PyTorch CUDA and CPU (when importable), JAX (when installed);
  3. bench/epoch.py with the same contenders;
  4. bench/cnn.py: one CNN training step, miniflow on CuPy against PyTorch
     CUDA (and both on the CPU), batch 128.

Every result goes to --out as JSON (pytest as JUnit XML and a log); a summary,
gpu_check.json, says what passed. Installs nothing. Exits 2 at once, saying
why, where no GPU is usable; 1 when any part failed; 0 when all passed.

  python bench/gpu_check.py --out /tmp/gpu      # or with $OUT set
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUDGET_S = 290  # the whole check stays under 5 minutes
# miniflow:cupy also selects miniflow:cupy+graph, the step replayed as a CUDA graph.
GPU_CONTENDERS = "miniflow:numpy,miniflow:cupy,hand:cupy,torch,jax"


def find_gpu() -> tuple[str | None, str | None]:
    """(name of CUDA device 0, None) where CuPy can use it, else (None, why not)."""
    try:
        import cupy
    except ImportError as exc:
        return None, (f"CuPy is not installed ({exc}); install it with "
                      "pip install 'miniflow[cuda12]' (or [cuda13])")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, f"CuPy {cupy.__version__} is installed but sees no CUDA device"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    except Exception as exc:  # no driver, or one too old for this CuPy
        return None, (f"CuPy {cupy.__version__} is installed but CUDA is unusable: "
                      f"{type(exc).__name__}: {exc}")
    return (name.decode() if isinstance(name, bytes) else str(name)), None


def parts(out: Path) -> list[dict]:
    """The commands to run: name, argv, extra environment, share of the time budget."""
    python = sys.executable
    return [
        {"name": "tests", "share": 0.45,
         "argv": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                  f"--junitxml={out / 'pytest.xml'}"],
         "env": {"MINIFLOW_TEST_BACKENDS": "cupy,numpy"}},
        {"name": "step", "share": 0.22,
         "argv": [python, str(BENCH / "step.py"), "--configs", "256:128,1024:512,1024:4096",
                  "--only", GPU_CONTENDERS, "--rounds", "3", "--block", "0.1",
                  "--warmup", "0.3", "--json", str(out / "step.json")], "env": {}},
        {"name": "epoch", "share": 0.20,
         "argv": [python, str(BENCH / "epoch.py"), "--activations", "relu",
                  "--only", GPU_CONTENDERS, "--rounds", "2", "--json", str(out / "epoch.json")],
         "env": {}},
        {"name": "cnn", "share": 0.13,
         "argv": [python, str(BENCH / "cnn.py"), "--only", "miniflow:numpy,miniflow:cupy,torch",
                  "--rounds", "3", "--block", "0.2", "--warmup", "0.5",
                  "--json", str(out / "cnn.json")], "env": {}},
    ]


def run_part(part: dict, out: Path, limit_s: float) -> dict:
    log = out / f"{part['name']}.log"
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(part["argv"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **part["env"]}, timeout=limit_s).returncode
            status = "passed" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            rc, status = None, f"timed out after {limit_s:.0f} s"
    seconds = time.monotonic() - start
    tail = log.read_text().splitlines()[-3:]
    print(f"{part['name']:6s} {status} in {seconds:.0f} s; log {log}")
    for line in tail:
        print(f"       {line}")
    return {"name": part["name"], "argv": part["argv"], "env": part["env"], "returncode": rc,
            "status": status, "seconds": seconds, "log": str(log)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                   help="directory for the JSON results and logs (default: $OUT)")
    args = p.parse_args(argv)
    if args.out is None:
        p.error("give --out DIR (or set $OUT)")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"check": "gpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": []}

    summary["gpu"], reason = find_gpu()
    if reason:
        summary["status"] = f"no usable GPU: {reason}"
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"gpu_check: no usable GPU here: {reason}", file=sys.stderr)
        return 2
    print(f"GPU: {summary['gpu']}; results in {args.out}")

    deadline = time.monotonic() + BUDGET_S
    todo = parts(args.out)
    for k, part in enumerate(todo):
        # Time a part leaves unused passes on to the next; later parts keep their share.
        reserved = sum(later["share"] for later in todo[k + 1:]) * BUDGET_S
        limit = max(deadline - time.monotonic() - reserved, 1.0)
        summary["parts"].append(run_part(part, args.out, limit))
    failed = [r["name"] for r in summary["parts"] if r["returncode"] != 0]
    summary["status"] = f"failed: {', '.join(failed)}" if failed else "passed"
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"gpu_check: {summary['status']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
