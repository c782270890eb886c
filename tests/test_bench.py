"""Smoke tests of bench/: the scripts run, write what they promise, and compare like with like.

No timing is asserted: CI machines are too noisy for that.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
common = importlib.import_module("_common")


def run_script(name, *args, timeout=120):
    return subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=BENCH.parent)


def read(path):
    return json.loads(Path(path).read_text())


def check_machine(machine):
    assert machine["cpu_model"] and machine["cpus_usable"] >= 1
    assert machine["malloc"]["policy"] == "heap"
    assert any(b.get("internal_api") for b in machine["blas"]), machine["blas"]
    assert "numpy" in machine["versions"]


@pytest.fixture(scope="module")
def step_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "step.json"
    proc = run_script("step.py", "--quick", "--only", "miniflow:numpy", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_step_quick_records_machine_and_ratios(step_json):
    result = read(step_json)
    check_machine(result["machine"])
    assert result["plan_skips_dloss_dimages"] is True
    names = {r["contender"] for r in result["results"]}
    assert names == {"hand:numpy", "miniflow:numpy", "miniflow:numpy+plan"}
    for r in result["results"]:
        assert r["median_s"] >= r["min_s"] > 0 and r["ratio_paired"] > 0
    # Allocations per step are recorded: the planned step keeps to its buffers.
    alloc = {r["contender"]: r["peak_bytes"] for r in result["results"]}
    assert alloc["miniflow:numpy+plan"] < alloc["hand:numpy"] / 4


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_kernels_alone_take_the_planned_step(activation):
    # floor:kernels measures the planned step without its interpreter: it must be
    # that step, update included (each loss after the first depends on it).
    graph, params = common.build_mlp(16, activation), common.init_params(16)
    x, y = common.synthetic_data(8)
    alone = common.planned_kernels_alone(graph, params, x, y)
    planned = common.CompiledMLP("numpy", graph, params)
    planned.step(x, y)  # as planned_kernels_alone's first, compiling step
    for _ in range(3):
        assert float(alone()) == float(planned.step(x, y))


def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    proc = run_script("overhead.py", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    assert [r["length"] for r in result["chains"]] == [10, 100]
    assert result["tiny_step"]["nodes"] == 10


def test_claims_quick_reports_each_timing_claim(tmp_path):
    out = tmp_path / "claims.json"
    proc = run_script("claims.py", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    assert result["import"]["interpreters"] == 2 and result["import"]["heavy_modules"] == []
    assert result["profile"]["nodes_ms"] > 0 and result["profile"]["step_ms"] > 0
    assert all(row["refused"] for row in result["hostile"])
    # Reported, never asserted: whether each target was met depends on the load.
    assert [check["check"] for check in result["targets"]] == [
        "import miniflow, median", "heavy modules imported by import miniflow",
        "profile: nodes' sum / measured step", "profile: slowest node is fc1 (784x256)",
        "hostile model files: slowest refusal (CPU)"]


def test_epoch_quick(tmp_path):
    out = tmp_path / "epoch.json"
    # array_api_strict rejects what the standard leaves open (a slice past the end).
    proc = run_script("epoch.py", "--quick", "--only", "miniflow:numpy,miniflow:array_api_strict",
                      "--activations", "relu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    assert {r["contender"] for r in result["results"]} == {
        "hand:numpy", "miniflow:numpy", "miniflow:numpy+plan", "miniflow:array_api_strict"}


def test_contention_quick_times_each_policy_and_stops_its_competitors(tmp_path):
    pytest.importorskip("threadpoolctl")
    out = tmp_path / "contention.json"
    proc = run_script("contention.py", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    rows = result["results"]
    assert [r["competitors"] for r in rows] == [0, 1]
    assert [len(r["competitor_pids"]) for r in rows] == [0, 1]
    for r in rows:
        assert all(r[policy] > 0 for policy in ("all cores", "1", "auto"))
        assert r["auto_vs_1"] == pytest.approx(r["auto"] / r["1"])
        assert set(r["auto_threads"].split("/")) <= {str(n) for n in range(1, 1025)}
        for pid in r["competitor_pids"]:  # stopped: no such process any more
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    assert "competing processes" in proc.stdout and "auto / 1" in proc.stdout


def test_contention_loop_times_a_users_own_loop_under_set_threads(tmp_path):
    pytest.importorskip("threadpoolctl")
    out = tmp_path / "contention.json"
    proc = run_script("contention.py", "--quick", "--loop", "--competitors", "0",
                      "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    assert result["settings"]["runner"] == "loop"
    (row,) = result["results"]
    assert all(row[policy] > 0 for policy in ("all cores", "1", "auto"))
    assert set(row["auto_threads"].split("/")) <= {str(n) for n in range(1, 1025)}
    assert "a loop of value_and_grad" in proc.stdout


def test_plot_draws_a_png(step_json, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "step.png"
    proc = run_script("plot.py", str(step_json), "-o", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_check_fails_clearly_without_a_gpu(tmp_path):
    gpu_check = importlib.import_module("gpu_check")
    if gpu_check.find_gpu()[0] is not None:
        pytest.skip("this machine has a usable GPU")
    proc = run_script("gpu_check.py", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no usable GPU" in proc.stderr
    assert read(tmp_path / "gpu_check.json")["status"].startswith("no usable GPU")


def test_gpu_check_reports_each_part(tmp_path, monkeypatch):
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setattr(gpu_check, "find_gpu", lambda: ("Fake GPU", None))
    monkeypatch.setattr(gpu_check, "BUDGET_S", 4)
    py = sys.executable
    monkeypatch.setattr(gpu_check, "parts", lambda out: [
        {"name": "ok", "share": 0.2, "argv": [py, "-c", "pass"], "env": {}},
        {"name": "bad", "share": 0.2, "argv": [py, "-c", "raise SystemExit(3)"], "env": {}},
        {"name": "slow", "share": 0.6, "argv": [py, "-c", "import time; time.sleep(60)"],
         "env": {}},
    ])
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    summary = read(tmp_path / "gpu_check.json")
    status = {p["name"]: p["status"] for p in summary["parts"]}
    assert status["ok"] == "passed"
    assert status["bad"] == "failed (exit 3)"
    assert status["slow"].startswith("timed out")
    assert summary["status"] == "failed: bad, slow"


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_contenders_compute_the_same_step(activation):
    """The hand-written step, miniflow and PyTorch must do the same work to be compared."""
    hidden, batch = 16, 8
    params = common.init_params(hidden)
    x, y = common.synthetic_data(batch)
    hand = common.HandwrittenMLP(np, params, activation)
    engine = common.MiniflowMLP("numpy", common.build_mlp(hidden, activation), params)
    planned = common.CompiledMLP("numpy", common.build_mlp(hidden, activation), params)
    losses = [float(hand.step(x, y)), float(engine.step(x, y)), float(planned.step(x, y))]
    updated = [hand.params, engine.params, planned.params]
    if common.importable("torch"):
        torch_model = common.TorchMLP("cpu", hidden, activation, params)
        losses.append(torch_model.step(torch_model.asarray(x), torch_model.asarray(y)).item())
        m = torch_model.model
        updated.append([t.detach().numpy() for t in (m[0].weight.T, m[0].bias, m[2].weight.T,
                                                     m[2].bias)])
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    for other in updated[1:]:
        for a, b in zip(updated[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_torch_compiled_contender_steps_as_eager_and_reports_its_graphs():
    """torch:compile: the eager step through torch.compile (here with the quick aot_eager
    compiler: the same dynamo capture, no C++ build), from the same weights."""
    torch = pytest.importorskip("torch")
    hidden, batch = 16, 8
    params = common.init_params(hidden)
    x, y = common.synthetic_data(batch)
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    eager = common.TorchMLP("cpu", hidden, "relu", params)
    compiled = common.TorchCompiled(lambda: common.TorchMLP("cpu", hidden, "relu", params),
                                    tx, ty, mode=None, backend="aot_eager")
    # A training step cannot be one graph: dynamo stops at loss.backward().
    assert (compiled.graphs, compiled.graph_breaks) == (2, 1)
    assert any("backward" in reason for reason in compiled.break_reasons)
    assert compiled.compile_s > 0
    eager.step(tx, ty)  # the compiled model took this first step while compiling
    for _ in range(2):
        want = eager.step(tx, ty).item()
        assert compiled.step(tx, ty).item() == pytest.approx(want, rel=1e-5)
    for a, b in zip(eager.model.parameters(), compiled.eager.model.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5,
                                   atol=1e-7)
    assert compiled.recompiles() == 0  # the same shapes: nothing compiles again
    compiled.x, compiled.y = tx[:5], ty[:5]
    assert compiled.recompiles() > 0  # a new batch size does, and is counted


def test_cnn_quick_compares_miniflow_with_pytorch_from_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    cnn_bench = importlib.import_module("cnn")
    from miniflow import value_and_grad
    from miniflow.models import cnn

    # Same weights, same batch: the two nets compute the same loss (dropout off).
    model = cnn((3, 5), 8, dropout=0.0)
    x, y = cnn_bench.synthetic_batch(4)
    net = cnn_bench.TorchCNN("cpu", model)
    expected = net.loss_fn(net.net(torch.from_numpy(x)), torch.from_numpy(y)).item()
    loss, _ = value_and_grad(model.loss, {**model.params, model.images: x, model.labels: y},
                             list(model.params))
    assert float(loss) == pytest.approx(expected, rel=1e-5)

    out = tmp_path / "cnn.json"
    proc = run_script("cnn.py", "--quick", "--only", "miniflow:numpy", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    assert {r["contender"] for r in result["results"]} == {
        "torch:cpu", "miniflow:numpy", "miniflow:numpy/2 shards"}
    assert set(result["split_ms"]) == {"convolution", "pooling", "rest"}
    assert result["targets"][0]["check"].startswith("miniflow:numpy / torch:cpu")


def test_hvp_quick_checks_the_product_and_reports_its_ratio(tmp_path):
    out = tmp_path / "hvp.json"
    proc = run_script("hvp.py", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    assert set(result["median_ms"]) == {"grad", "grad-graph", "hvp"}
    assert result["hvp_over_grad"] == pytest.approx(result["median_ms"]["hvp"]
                                                   / result["median_ms"]["grad"])
    # The timed HVP is the true one: central differences of the gradient agree.
    assert result["check_relative_error"] < 1e-6


def _mnist_dir():
    for folder in (os.environ.get("MINIFLOW_DATA"), BENCH.parents[1] / "shared" / "data" / "mnist"):
        if folder and (Path(folder) / "t10k-labels-idx1-ubyte.gz").exists():
            return Path(folder)
    pytest.skip("the MNIST files were not found: set MINIFLOW_DATA to their folder")


def test_double_backprop_quick_trains_with_and_without_the_penalty(tmp_path):
    out = tmp_path / "double_backprop.json"
    proc = run_script("double_backprop.py", "--quick", "--lam", "0", "1", "--data-dir",
                      str(_mnist_dir()), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    plain, penalised = read(out)["results"]
    assert (plain["lam"], penalised["lam"]) == (0, 1)
    for row in (plain, penalised):
        assert 0.5 < row["test_accuracy"] <= 1  # 20 steps learn well above chance (10%)
        assert set(row["fgsm_accuracy"]) == {"0.05", "0.1"}
    # What the penalty is for: smaller input gradients, at the same seed and batches.
    assert penalised["input_grad_norm"] < plain["input_grad_norm"]


def test_to_accuracy_quick_times_the_command_and_the_hand_written_trainer(tmp_path):
    out = tmp_path / "to_accuracy.json"
    proc = run_script("to_accuracy.py", "--quick", "--seeds", "0,1", "--data-dir",
                      str(_mnist_dir()), "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = read(out)
    check_machine(result["machine"])
    rows = result["results"]
    assert [(r["seed"], r["contender"]) for r in rows] == [
        (0, "hand:numpy"), (0, "miniflow train"), (1, "hand:numpy"), (1, "miniflow train")]
    for r in rows:
        assert r["e2e_s"] > 0 and r["epochs"] == 2
        # Two epochs on 5,500 rows learn far above chance (10%), by both recipes.
        assert 0.8 < r["e2e_accuracy"] <= 1
        assert [p["epoch"] for p in r["curve"]] == [1, 2]
        assert 0 < r["curve"][0]["seconds"] < r["curve"][1]["seconds"]
        assert 0.8 < r["final_accuracy"] <= 1
    # The subprocess and the in-process run of the command train the same model.
    for r in rows[1::2]:
        assert r["e2e_accuracy"] == pytest.approx(r["final_accuracy"], abs=0.01)
        assert "test accuracy:" in r["stdout"]
    summary = result["summary"]
    assert summary["end_to_end_ratio"] > 0 and summary["per_epoch_ratio"] > 0
    assert len(result["load_average_at_start"]) == 3


def test_to_accuracy_hand_written_trainer_learns_a_separable_problem():
    to_accuracy = importlib.import_module("to_accuracy")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 784)).astype(np.float32) * 3
    y = rng.integers(0, 10, 1200)
    x = centres[y] + rng.standard_normal((1200, 784), dtype=np.float32)
    seen = []
    acc = to_accuracy.train_hand(x[:1000], y[:1000], x[1000:], y[1000:], epochs=3, seed=0,
                                 on_epoch=lambda epoch, a: seen.append((epoch, a)))
    assert [e for e, _ in seen] == [1, 2, 3] and seen[-1][1] == acc
    assert acc > 0.95  # ten well separated clusters: chance is 10%
    assert to_accuracy.time_to([{"epoch": 1, "test_accuracy": 0.97, "seconds": 1.0},
                                {"epoch": 2, "test_accuracy": 0.981, "seconds": 2.0}]) == \
        {"epoch": 2, "seconds": 2.0}
    assert to_accuracy.time_to([{"epoch": 1, "test_accuracy": 0.5, "seconds": 1.0}]) == \
        {"epoch": None, "seconds": None}
