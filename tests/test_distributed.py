"""Data-parallel training on a Dask cluster (miniflow.distributed) against single-process NumPy.

The in-process cluster (threads, processes=False) keeps most tests fast; the
worker-loss test needs real worker processes to kill. Every cluster gets a
timeout, and faulthandler ends the module if anything hangs.
"""
import faulthandler
import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import dask.array  # noqa: E402

import miniflow.distributed as md  # noqa: E402
from miniflow import cli  # noqa: E402
from miniflow.executor import value_and_grad  # noqa: E402
from miniflow.models import mlp  # noqa: E402
from miniflow.train import ConfigError, DataError, TrainConfig, train  # noqa: E402

from test_cli import _mnist_dir, fake_mnist  # noqa: E402
from test_train import N_CLASSES, SMALL, TRAIN, VAL  # noqa: E402

HANG_LIMIT_S = 900  # generous: a shared, loaded machine is slow, a hang is forever


@pytest.fixture(scope="module", autouse=True)
def no_hangs():
    """Dump every thread's stack and exit if the module runs for longer than HANG_LIMIT_S."""
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def client():
    """Two one-thread workers in this process: a real scheduler, no process start-up cost."""
    with distributed.Client(n_workers=2, threads_per_worker=1, processes=False,
                            dashboard_address=":0", timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        yield client


def run(config, **kwargs):
    return train(config, *TRAIN, *VAL, n_classes=N_CLASSES, **kwargs)


def names(params):
    return {node.name: value for node, value in params.items()}


# -- the result is the single-process result ------------------------------------------

@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_cluster_training_matches_single_process_numpy(client, optimizer):
    config = TrainConfig(**SMALL, optimizer=optimizer)
    alone, spread = run(config), run(config, client=client)
    np.testing.assert_allclose([s.loss for s in spread.history],
                               [s.loss for s in alone.history], rtol=1e-5)
    for name, value in names(spread.model.params).items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_allclose(value, names(alone.model.params)[name], rtol=1e-4, atol=1e-5)
    for a, b in zip(alone.history, spread.history):
        assert abs(a.val_accuracy - b.val_accuracy) <= 0.001
    assert (spread.model.input_mean, spread.model.input_std) == \
        (alone.model.input_mean, alone.model.input_std)
    assert spread.lost_workers == []


def test_one_step_is_the_whole_batch_step(client):
    """Summed over the shards, a step gives the batch's loss and gradients times its size."""
    rng = np.random.default_rng(3)
    images = rng.standard_normal((90, 20)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, 90)
    model = mlp((8,), "tanh", n_inputs=20, n_classes=N_CLASSES, seed=1)
    config = TrainConfig(hidden=(8,), activation="tanh", optimizer="sgd", lr=0.1)
    step, optimizer = md.cluster_training(client, model, config, images, labels,
                                          lambda _: 0.1)
    try:
        assert len(step.data.futures) == 2
        # A batch spanning both shards, and one inside a single shard.
        for batch in (rng.permutation(90)[:37], np.arange(5, 12)):
            loss, total = step(None, batch)
            feed = {**model.params, model.images: images[batch], model.labels: labels[batch]}
            want_loss, want_grads = value_and_grad(model.loss, feed, list(model.params))
            assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
            _, grad_sums, _, rows = total.result()
            assert rows == len(batch)
            for got, want in zip(grad_sums, want_grads):
                assert isinstance(got, np.ndarray)  # concrete, not a future or a lazy array
                np.testing.assert_allclose(got, want * len(batch), rtol=1e-4, atol=1e-6)
        # The replicas held the parameters: no step changed them (none was applied).
        for got, want in zip(optimizer.params.values(), model.params.values()):
            np.testing.assert_array_equal(got, want)
    finally:
        step.close()


def test_the_batch_is_split_by_shard_without_losing_or_repeating_rows(client):
    data = md.ShardedDataset(client, TRAIN[0], TRAIN[1])
    batch = np.random.default_rng(0).permutation(len(TRAIN[1]))[:100]
    parts = data.split(batch)
    rebuilt = np.concatenate([rows + data.bounds[k] for k, rows in parts])
    assert sorted(rebuilt) == sorted(batch)
    for k, rows in parts:
        assert rows.min() >= 0 and rows.max() < data.bounds[k + 1] - data.bounds[k]


# -- what a step sends, and what it does not ------------------------------------------

def _arrays(value):
    """Every NumPy array in ``value``, looking inside lists and tuples."""
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in _arrays(item)]
    return []


def test_the_data_is_scattered_once_and_steps_send_neither_rows_nor_parameters(client,
                                                                               monkeypatch):
    scattered, submitted = [], []
    real_scatter, real_submit = client.scatter, client.submit

    def scatter(data, **kwargs):
        scattered.append(sum(np.asarray(part).nbytes for part in data))
        return real_scatter(data, **kwargs)

    def submit(func, *args, **kwargs):
        submitted.append((func.__name__, args))
        return real_submit(func, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", scatter)
    monkeypatch.setattr(client, "submit", submit)
    config = TrainConfig(**SMALL)
    alone, result = run(config), run(config, client=client)
    np.testing.assert_allclose([s.loss for s in result.history],
                               [s.loss for s in alone.history], rtol=1e-5)
    data_bytes = TRAIN[0].nbytes + TRAIN[1].nbytes
    # Two shards of (images, labels) once; never the parameters.
    assert scattered == [data_bytes // 2, data_bytes // 2]
    # The model goes to each worker once; a step's tasks carry row indices (at most
    # a batch's), never rows of the data nor the parameters (the workers keep them).
    assert [name for name, _ in submitted].count("_init_replica") == 2
    for name, args in submitted:
        if name == "_init_replica":
            continue
        for array in _arrays(args):
            assert array.dtype.kind == "i" and array.size <= config.batch_size, array.shape


def test_steps_log_no_warnings(client, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            run(TrainConfig(**SMALL), client=client)
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


def test_labels_are_checked_once_on_the_driver_before_anything_is_scattered(client,
                                                                            monkeypatch):
    monkeypatch.setattr(client, "scatter", lambda *a, **k: pytest.fail("scattered bad data"))
    images, labels = TRAIN
    with pytest.raises(DataError, match=r"train_labels must lie in \[0, 3\)"):
        train(TrainConfig(**SMALL), images, labels + 1, n_classes=N_CLASSES, client=client)
    with pytest.raises(DataError, match="must be floating point"):
        train(TrainConfig(**SMALL), images.astype(np.int64), labels, n_classes=N_CLASSES,
              client=client)


def test_another_backend_with_a_cluster_is_a_config_error(client):
    with pytest.raises(ConfigError, match="numpy backend on each worker"):
        run(TrainConfig(**SMALL, backend="array_api_strict"), client=client)


# -- connecting -----------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("local:0", "local:N with N >= 1"),
    ("local:two", "local:N with N >= 1"),
    ("my-cluster", "unknown cluster 'my-cluster'"),
])
def test_bad_cluster_specs_are_clear_errors(spec, message):
    with pytest.raises(md.ClusterError, match=message):
        md.connect(spec)


def test_an_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(md.ClusterError, match="cannot reach the Dask scheduler at tcp://"):
        md.connect("tcp://127.0.0.1:9", timeout=2)


def test_without_distributed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(md.ClusterError, match=re.escape(md.INSTALL_HINT)):
        md.connect("local:1")


# -- losing workers -------------------------------------------------------------------

def _killer(client, after_step):
    """An on_step callback that SIGKILLs one worker process after ``after_step`` steps."""
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    state = {"steps": 0, "killed": None}

    def on_step(loss):
        state["steps"] += 1
        if state["steps"] == after_step:
            os.kill(pids[victim], signal.SIGKILL)
            state["killed"] = victim
    return on_step, state


def test_killing_a_worker_mid_epoch_still_gives_the_single_process_result(tmp_path):
    config = TrainConfig(**SMALL)
    alone = run(config)
    with md.cluster_client("local:3") as client:
        on_step, state = _killer(client, after_step=3)
        spread = run(config, client=client, on_step=on_step)
    assert state["killed"] is not None
    assert spread.lost_workers, "the kill went unnoticed"
    assert spread.lost_workers[0]["workers"] == [state["killed"]]
    np.testing.assert_allclose([s.loss for s in spread.history],
                               [s.loss for s in alone.history], rtol=1e-5)
    assert spread.history[-1].val_accuracy == pytest.approx(alone.history[-1].val_accuracy,
                                                            abs=0.001)
    path = tmp_path / "model.npz"
    spread.model.save(path)
    assert path.is_file()


def test_losing_every_worker_stops_with_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(md, "WORKER_WAIT_S", 2.0)
    with distributed.Client(n_workers=1, threads_per_worker=1, processes=False,
                            dashboard_address=":0", timeout=30) as client:
        (address,) = md._workers(client)
        calls = {"n": 0}

        def stop_the_only_worker(loss):
            calls["n"] += 1
            if calls["n"] == 2:
                client.cluster.scale(0)
        with pytest.raises(md.ClusterError, match=re.escape(address)):
            run(TrainConfig(**SMALL), client=client, on_step=stop_the_only_worker)


def test_the_command_line_saves_nothing_when_the_cluster_is_lost(monkeypatch, capsys, tmp_path):
    def lost(*args, **kwargs):
        raise md.ClusterError("lost worker(s) tcp://10.0.0.7:4000 and no worker is left")

    monkeypatch.setattr(cli, "load_mnist", lambda *a, **k: fake_mnist())
    monkeypatch.setattr(cli, "cluster_client", lambda spec: nullcontext(object()))
    monkeypatch.setattr(cli, "train", lost)
    path = tmp_path / "model.npz"
    assert cli.main(["train", "--cluster", "local:3", "--save", str(path)]) == 1
    assert "tcp://10.0.0.7:4000" in capsys.readouterr().err
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_bad_cluster_on_the_command_line_is_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "load_mnist", lambda *a, **k: fake_mnist())
    monkeypatch.setattr(cli, "train", lambda *a, **k: pytest.fail("trained without a cluster"))
    path = tmp_path / "model.npz"
    assert cli.main(["train", "--cluster", "local:zero", "--save", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "miniflow: error: expected local:N with N >= 1 workers, got 'local:zero'\n"
    assert not path.exists()


# -- the command line on MNIST ----------------------------------------------------------

def test_cli_cluster_trains_mnist_to_the_numpy_accuracy(capsys):
    folder = _mnist_dir()
    if folder is None:
        pytest.skip("the MNIST files were not found: set MINIFLOW_DATA to their folder")
    # Large batches keep the run short; the comparison is what matters here.
    args = ["train", "--data-dir", str(folder), "--epochs", "1", "--hidden", "32",
            "--batch-size", "1000", "--quiet"]

    def accuracy(extra):
        assert cli.main(args + extra) == 0
        out = capsys.readouterr().out
        return float(re.search(r"^test accuracy: (\d+\.\d\d)%$", out, re.MULTILINE).group(1)), out

    alone, _ = accuracy([])
    spread, out = accuracy(["--cluster", "local:2"])
    assert "local:2 (numpy per worker)" in out
    assert abs(spread - alone) <= 0.1, (alone, spread)


# -- the benchmark ------------------------------------------------------------------------

def test_bench_quick_times_every_contender_with_one_blas_thread_per_worker(tmp_path):
    out = tmp_path / "cluster.json"
    bench = Path(__file__).resolve().parents[1] / "bench" / "cluster.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=200, cwd=bench.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    # Every worker runs its BLAS on one thread, as the reference does.
    for workers, pools in result["worker_blas"].items():
        assert len(pools) == int(workers)
        assert all(threads == 1 for pool in pools.values() for _, threads in pool), pools
    assert not [w for w in result["warnings"] if "run_spec" in w or "large graph" in w]
    for size in {(r["hidden"], r["batch"]) for r in result["results"]}:
        found = {r["contender"]: r for r in result["results"] if (r["hidden"], r["batch"]) == size}
        assert set(found) == {"numpy", "futures:1", "futures:2", "dask.array:2"}
        assert found["numpy"]["ratio_paired"] == 1.0
        for r in found.values():
            assert r["rows_per_s"] == pytest.approx(size[1] / r["median_s"])
    assert [t["check"].split(" ")[0] for t in result["targets"]] == ["futures:1", "futures:2"]


def test_the_readme_example_runs(monkeypatch, capsys):
    """The "Scaling out" Python example, on fake MNIST-shaped data (the real run is the CLI's)."""
    import miniflow.datasets

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
               if "client=client" in b]
    monkeypatch.setattr(miniflow.datasets, "load_mnist", lambda *a, **k: fake_mnist())
    exec(code, {"__name__": "__main__"})
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert accuracy > 0.9


# -- the one loop on the cluster ------------------------------------------------------------

def test_weight_decay_schedule_and_clipping_act_on_the_cluster_as_locally(client):
    config = TrainConfig(**SMALL, weight_decay=0.05, schedule="cosine", clip_norm=0.5,
                         optimizer="adam")
    alone, spread = run(config, threads=1), run(config, client=client)
    plain = run(TrainConfig(**SMALL, optimizer="adam"), client=client)
    for name, value in names(spread.model.params).items():
        np.testing.assert_allclose(value, names(alone.model.params)[name], rtol=1e-4, atol=1e-5)
    # The options changed the result (the cluster once ignored weight decay).
    assert any(not np.allclose(value, names(plain.model.params)[name])
               for name, value in names(spread.model.params).items())
    np.testing.assert_allclose([s.val_loss for s in spread.history],
                               [s.val_loss for s in alone.history], rtol=1e-5)


def test_a_cnn_trains_on_local_2_as_locally_and_batchnorm_trains_there():
    from miniflow import nn
    from miniflow.models import cnn, from_network

    from test_cnn_model import digits

    images, labels = digits(160)
    val = digits(40, seed=2)
    config = TrainConfig(model="cnn", epochs=2, batch_size=32, lr=0.01, shards=1,
                         weight_decay=1e-3, schedule="onecycle")

    def small_cnn():
        return cnn((4,), 8, dropout=0.0, image_shape=(1, 8, 8), n_classes=2, seed=1)

    def with_batchnorm():
        net = nn.Sequential({"conv1": nn.Conv2D(1, 4, 3, padding="same"),
                             "bn1": nn.BatchNorm2d(4), "relu1": nn.ReLU(),
                             "pool1": nn.MaxPool2D(2), "flatten": nn.Flatten(),
                             "fc1": nn.Linear(4 * 4 * 4, 2)})
        return from_network(net, (1, 8, 8), seed=3)

    alone = train(config, images, labels, *val, model=small_cnn(), n_classes=2, threads=1)
    with md.cluster_client("local:2") as client:
        spread = train(config, images, labels, *val, model=small_cnn(), n_classes=2,
                       client=client)
        normed = train(config, images, labels, *val, model=with_batchnorm(), n_classes=2,
                       client=client)
    for (node, want), got in zip(alone.model.params.items(), spread.model.params.values()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=node.name)
    assert spread.history[-1].val_loss == pytest.approx(alone.history[-1].val_loss, rel=1e-4)
    # BatchNorm normalises by each worker's rows (as PyTorch's DDP without SyncBatchNorm):
    # its running statistics came back from the workers, updated.
    initial = with_batchnorm().state
    for node, value in normed.model.state.items():
        assert np.isfinite(value).all()
        assert not np.array_equal(value, initial[next(n for n in initial
                                                      if n.name == node.name)])


def test_compile_runs_on_the_workers(client):
    config = TrainConfig(**SMALL)
    plain, compiled = run(config, client=client), run(TrainConfig(**SMALL, compile=True),
                                                      client=client)
    for name, value in names(compiled.model.params).items():
        np.testing.assert_allclose(value, names(plain.model.params)[name], rtol=1e-4,
                                   atol=1e-6)


def test_a_silent_port_is_an_error_within_a_bounded_time(monkeypatch):
    import socket
    import threading

    monkeypatch.setattr(md, "CONNECT_GRACE_S", 1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []

    def accept():  # accept, and never answer
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    scheduler = dask.config.get("scheduler", None)
    try:
        with pytest.raises(md.ClusterError, match="nothing answered as a scheduler within 3 s"):
            md.connect(f"tcp://127.0.0.1:{server.getsockname()[1]}", timeout=2)
    finally:
        server.close()
    # The abandoned attempt must not become the process's scheduler: every later dask
    # computation (dask.array backends included) would wait on it for ever.
    assert dask.config.get("scheduler", None) == scheduler
    assert dask.array.ones(3).sum().compute() == 3.0
