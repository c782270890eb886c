"""The ``miniflow`` command line, and the one full training run on the real MNIST."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import miniflow.cli as cli
import miniflow.datasets.mnist as mnist_module
from miniflow.cli import main
from miniflow.datasets import MNIST
from miniflow.models import mlp
from miniflow.serialize import save_model

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fake_mnist(validation_size=200):
    """MNIST-shaped data, 10 well-separated classes: trains in a blink, to a high accuracy."""
    rng = np.random.default_rng(0)
    centers = rng.random((10, 784))

    def split(n):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(centers[labels] + 0.3 * rng.standard_normal((n, 784)), 0, 1)
        return images.astype(np.float32), labels.astype(np.int64)

    train_images, train_labels = split(1200)
    cut = len(train_labels) - validation_size
    test_images, test_labels = split(300)
    return MNIST(train_images[:cut], train_labels[:cut], train_images[cut:], train_labels[cut:],
                 test_images, test_labels)


@pytest.fixture
def fake_data(monkeypatch):
    """Make the command line load `fake_mnist()`; records the arguments it was loaded with."""
    calls = []

    def load(data_dir=None, *, validation_size=5000, progress=None):
        calls.append({"data_dir": data_dir, "validation_size": validation_size})
        if validation_size >= 60000:  # as the real loader does
            raise ValueError(f"validation_size must be in [0, 60000), got {validation_size}")
        return fake_mnist(min(validation_size, 200))

    monkeypatch.setattr(cli, "load_mnist", load)
    return calls


def no_training(*args, **kwargs):
    raise AssertionError("training started although the command line was bad")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if data loading or training starts (errors must come before)."""
    monkeypatch.setattr(cli, "load_mnist", no_training)
    monkeypatch.setattr(cli, "train", no_training)


def one_error_line(capsys, status, expected_status):
    """The stderr of a failed command: one 'miniflow: error:' line, no traceback."""
    err = capsys.readouterr().err
    assert status == expected_status
    assert err.startswith("miniflow: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- train ---------------------------------------------------------------------------

def test_train_prints_one_line_per_epoch_and_the_test_accuracy(fake_data, capsys, tmp_path):
    status = main(["train", "--hidden", "16", "--epochs", "2", "--batch-size", "64",
                   "--validation-size", "100", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert re.fullmatch(r"epoch 1/2  loss \d+\.\d{4}  val acc \d+\.\d\d%  \d+\.\d\d s", out[0])
    assert out[1].startswith("epoch 2/2  ")
    assert re.fullmatch(r"test accuracy: \d+\.\d\d%", out[2])
    assert float(out[2].split()[-1][:-1]) > 90
    assert re.fullmatch(r"wall time: \d+\.\d\d s \(training \d+\.\d\d s, 2 epochs on numpy\)",
                        out[3])
    assert fake_data == [{"data_dir": str(tmp_path), "validation_size": 100}]


def test_quiet_prints_only_the_summary(fake_data, capsys):
    assert main(["train", "--hidden", "0", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["test accuracy", "wall time"]


def test_a_terminal_gets_a_progress_bar(fake_data, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["train", "--hidden", "8", "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert "training" in captured.err and "step" in captured.err  # the bar, on stderr
    assert captured.out.startswith("epoch 1/1  loss ")


def test_save_then_evaluate_reports_the_same_accuracy(fake_data, capsys, tmp_path):
    path = tmp_path / "model.npz"
    assert main(["train", "--hidden", "16", "--epochs", "2", "--save", str(path)]) == 0
    trained = capsys.readouterr().out
    accuracy = re.search(r"test accuracy: \S+", trained).group()
    assert f"saved the model to {path}" in trained
    assert main(["evaluate", str(path)]) == 0
    assert capsys.readouterr().out == accuracy + "\n"


def test_plot_writes_a_png(fake_data, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "history.png"
    assert main(["train", "--hidden", "8", "--epochs", "2", "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG")
    assert os.listdir(tmp_path) == ["history.png"]


def test_backends_and_optimizers_are_selectable(fake_data, capsys):
    assert main(["train", "--hidden", "8", "--epochs", "1", "--backend", "array_api_strict",
                 "--optimizer", "adam", "--lr", "0.01", "--schedule", "step"]) == 0
    assert "1 epochs on array_api_strict" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--epochs", "ten"], "argument --epochs: expected an integer, got 'ten'"),
    (["--activation", "gelu"], "argument --activation: invalid choice: 'gelu'"),
    (["--optimizer", "adagrad"], "argument --optimizer: invalid choice: 'adagrad'"),
    (["--backend", "tensorflow"], "argument --backend: invalid choice: 'tensorflow'"),
    (["--hidden", "256,-4"], "argument --hidden: layer sizes must be positive"),
    (["--hidden", "big"], "argument --hidden: expected layer sizes such as 256"),
    (["--lr", "0"], "argument --lr: must be a positive number, got 0"),
    (["--lr", "nan"], "argument --lr: must be a positive number, got nan"),
    (["--momentum", "1"], r"argument --momentum: must lie in \[0, 1\)"),
    (["--validation-size", "-3"], "argument --validation-size: must be >= 0"),
    (["--validation-size", "60000"], r"argument --validation-size: .*in \[0, 60000\)"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_options_exit_2_with_one_clear_line(fake_data, capsys, monkeypatch, args, message):
    monkeypatch.setattr(cli, "train", no_training)
    err = one_error_line(capsys, main(["train", *args]), 2)
    assert re.search(message, err), err
    assert re.search(r"\(see 'miniflow( train)? --help'\)$", err), err


def test_a_missing_command_is_a_usage_error(capsys):
    err = one_error_line(capsys, main([]), 2)
    assert "required: COMMAND" in err


def test_an_unwritable_save_path_fails_before_training(no_work, capsys, tmp_path):
    err = one_error_line(capsys, main(["train", "--save", str(tmp_path / "no" / "m.npz")]), 1)
    assert "cannot write the model to" in err and "does not exist" in err
    err = one_error_line(capsys, main(["train", "--save", str(tmp_path)]), 1)
    assert "it is a directory" in err


def test_plot_without_matplotlib_fails_before_training(no_work, capsys, monkeypatch,
                                                       tmp_path):
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    err = one_error_line(capsys, main(["train", "--plot", str(tmp_path / "p.png")]), 1)
    assert "--plot needs matplotlib" in err and "pip install 'miniflow[plot]'" in err


def test_an_unavailable_backend_fails_before_training(no_work, capsys, monkeypatch):
    from miniflow.errors import BackendUnavailableError

    def unavailable(name):
        raise BackendUnavailableError(f"backend {name!r}: no GPU here")

    monkeypatch.setattr(cli, "get_backend", unavailable)
    err = one_error_line(capsys, main(["train", "--backend", "cupy"]), 1)
    assert "backend 'cupy': no GPU here" in err


def test_missing_mnist_files_are_reported_without_a_traceback(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_module, "DEFAULT_MIRRORS", ())  # no network attempts
    status = main(["train", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("miniflow: error: MNIST files missing from")
    assert "Traceback" not in err


def test_a_diverging_run_is_a_clear_error(fake_data, capsys):
    err = one_error_line(capsys, main(["train", "--hidden", "8", "--epochs", "2", "--optimizer",
                                       "sgd", "--lr", "1e30", "--schedule", "constant"]), 1)
    assert "probably too high; try a lower one, e.g. 1e+29" in err


def test_ctrl_c_exits_130_and_leaves_the_saved_model_intact(fake_data, capsys, monkeypatch,
                                                             tmp_path):
    path = tmp_path / "model.npz"
    save_model(mlp(0), path)
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert main(["train", "--save", str(path)]) == 130
    assert "miniflow: interrupted" in capsys.readouterr().err
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.npz"]


# -- evaluate -------------------------------------------------------------------------

def test_evaluate_a_corrupt_file(fake_data, capsys, tmp_path):
    path = save_model(mlp(0), tmp_path / "model.npz")
    path.write_bytes(path.read_bytes()[:500])
    err = one_error_line(capsys, main(["evaluate", str(path)]), 1)
    assert "is corrupt or truncated" in err


def test_evaluate_a_file_that_is_not_a_model(fake_data, capsys, tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("not a model")
    err = one_error_line(capsys, main(["evaluate", str(path)]), 1)
    assert "is not a miniflow model" in err
    err = one_error_line(capsys, main(["evaluate", str(tmp_path / "missing.npz")]), 1)
    assert "no model file at" in err


def test_evaluate_a_model_of_another_architecture(fake_data, capsys, tmp_path):
    path = save_model(mlp(8, n_inputs=100), tmp_path / "model.npz")
    err = one_error_line(capsys, main(["evaluate", str(path)]), 1)
    assert "784 features per example, but the model takes 100" in err


# -- graph and the program itself ------------------------------------------------------

def test_graph_draws_the_default_model(capsys, tmp_path):
    path = tmp_path / "mlp.dot"
    assert main(["graph", "--hidden", "32", "--activation", "tanh", "--out", str(path)]) == 0
    source = path.read_text()
    assert "fc1" in source and "fc2" in source and "loss" in source
    assert str(path) in capsys.readouterr().out


def test_python_dash_m_miniflow_help():
    done = subprocess.run([sys.executable, "-m", "miniflow", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert "usage: miniflow" in done.stdout and "train" in done.stdout
    assert "evaluate" in done.stdout and "graph" in done.stdout


# -- the one full run ----------------------------------------------------------------

def _mnist_dir():
    for folder in (os.environ.get("MINIFLOW_DATA"), REPO.parent / "shared" / "data" / "mnist"):
        if folder and all(any((Path(folder) / f"{name}{suffix}").is_file()
                              for suffix in ("", ".gz")) for name in MNIST_FILES):
            return Path(folder)
    return None


def test_default_training_reaches_98_percent(capsys, tmp_path):
    folder = _mnist_dir()
    if folder is None:
        pytest.skip("the MNIST files were not found: set MINIFLOW_DATA to their folder "
                    "(the repository expects ../shared/data/mnist)")
    path = tmp_path / "model.npz"
    assert main(["train", "--data-dir", str(folder), "--save", str(path)]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d\d)%$", out, re.MULTILINE).group(1))
    assert accuracy >= 98.0, out  # on failure, shows the run epoch by epoch
    assert main(["evaluate", str(path), "--data-dir", str(folder)]) == 0
    assert capsys.readouterr().out == f"test accuracy: {accuracy:.2f}%\n"


# -- the CNN ----------------------------------------------------------------------------

def test_train_cnn_saves_a_model_that_evaluate_rebuilds(fake_data, capsys, tmp_path):
    path = tmp_path / "cnn.npz"
    # The plumbing only: what the CNN learns is checked on MNIST below and, on small
    # images, in tests/test_cnn_model.py.
    assert main(["train", "--model", "cnn", "--epochs", "1", "--hidden", "16",
                 "--save", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d\d)%$", out, re.MULTILINE).group(1))
    assert "1 epochs on numpy" in out
    assert main(["evaluate", str(path), "--model", "cnn"]) == 0
    assert capsys.readouterr().out == f"test accuracy: {accuracy:.2f}%\n"
    err = one_error_line(capsys, main(["evaluate", str(path), "--model", "mlp"]), 1)
    assert "holds a cnn (cnn 32-64-16-10), not a mlp" in err


def test_graph_draws_the_cnn(capsys, tmp_path):
    pytest.importorskip("graphviz")
    path = tmp_path / "cnn.dot"
    assert main(["graph", "--model", "cnn", "--out", str(path)]) == 0
    assert "CNN (cnn 32-64-128-10)" in capsys.readouterr().out
    dot = path.read_text()
    for name in ("conv1", "pool1", "conv2", "pool2", "flatten", "dropout", "fc2"):
        assert name in dot


def test_the_cnn_takes_one_dense_size(no_work, capsys):
    err = one_error_line(capsys, main(["train", "--model", "cnn", "--hidden", "64,32"]), 1)
    assert "the cnn has one dense hidden layer" in err


def test_default_cnn_training_reaches_99_2_percent(capsys, tmp_path):
    """The issue's bar, with the command's defaults (seed 0): the one CNN run in CI."""
    folder = _mnist_dir()
    if folder is None:
        pytest.skip("the MNIST files were not found: set MINIFLOW_DATA to their folder "
                    "(the repository expects ../shared/data/mnist)")
    path = tmp_path / "cnn.npz"
    assert main(["train", "--model", "cnn", "--data-dir", str(folder), "--save", str(path)]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d\d)%$", out, re.MULTILINE).group(1))
    assert accuracy >= 99.2, out
    assert main(["evaluate", str(path), "--model", "cnn", "--data-dir", str(folder)]) == 0
    assert capsys.readouterr().out == f"test accuracy: {accuracy:.2f}%\n"
