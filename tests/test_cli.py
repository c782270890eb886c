"""The ``miniflow`` command line, and the one full training run on the real MNIST."""
import os
import re
import subprocess
import sys
from pathlib import Path

import hostile
import numpy as np
import pytest

import miniflow.cli as cli
import miniflow.datasets.mnist as mnist_module
from miniflow.checkpoint import load_checkpoint
from miniflow.cli import main
from miniflow.datasets import MNIST, load_mnist
from miniflow.models import mlp
from miniflow.serialize import load_model, save_model
from miniflow.train import TrainConfig, evaluate_model, train

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

    def load(data_dir=None, *, validation_size=5000, progress=None, verify=True):
        calls.append({"data_dir": data_dir, "validation_size": validation_size,
                      **({} if verify else {"verify": False})})
        if validation_size >= 60000:  # as the real loader does
            raise ValueError(f"validation_size must be in [0, 60000), got {validation_size}")
        return fake_mnist(min(validation_size, 200))

    def load_test(data_dir=None, verify=True):
        calls.append({"data_dir": data_dir, "test_only": True,
                      **({} if verify else {"verify": False})})
        mnist = fake_mnist()
        return mnist.test_images, mnist.test_labels

    monkeypatch.setattr(cli, "load_mnist", load)
    monkeypatch.setattr(cli, "load_mnist_test", load_test)
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
    assert re.fullmatch(r"epoch 1/2  loss \d+\.\d{4}  val loss \d+\.\d{4}  val acc \d+\.\d\d%  "
                        r"\d+\.\d\d s", out[0])
    assert out[1].startswith("epoch 2/2  ")
    assert re.fullmatch(r"test accuracy: \d+\.\d\d%", out[2])
    assert float(out[2].split()[-1][:-1]) > 90
    assert re.fullmatch(r"wall time: \d+\.\d\d s \(training \d+\.\d\d s, 2 epochs on numpy, "
                        r"[12](-2)? BLAS threads?\)", out[3])
    # A folder given by hand may hold any set of MNIST's form: not verified as MNIST.
    assert fake_data == [{"data_dir": str(tmp_path), "validation_size": 100, "verify": False}]


def test_quiet_prints_only_the_summary(fake_data, capsys):
    assert main(["train", "--hidden", "0", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["test accuracy", "wall time"]


def test_a_terminal_gets_a_progress_bar(fake_data, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["train", "--hidden", "8", "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert "training" in captured.err and "step/s" in captured.err  # the bar, on stderr
    assert captured.out.startswith("epoch 1/1  loss ")
    # (tests/test_progress.py watches the bar in a real terminal)


def test_a_run_that_learned_nothing_says_so(fake_data, capsys):
    assert main(["train", "--hidden", "8", "--epochs", "1", "--optimizer", "sgd", "--lr",
                 "1e-9", "--schedule", "constant", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out
    assert re.fullmatch(r"miniflow: warning: the model did not learn: .*the accuracy "
                        r"\d+\.\d\d% is at chance level \(10% for 10 classes\)\. .*\n",
                        captured.err), captured.err


def test_threads_are_applied_and_reported(fake_data, capsys):
    pytest.importorskip("threadpoolctl")
    assert main(["train", "--hidden", "8", "--epochs", "2", "--threads", "1", "--quiet"]) == 0
    assert "2 epochs on numpy, 1 BLAS thread)" in capsys.readouterr().out


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


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF"),
                                           (".PNG", b"\x89PNG")])
def test_the_plot_format_follows_the_extension(fake_data, capsys, tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"history{suffix}"
    assert main(["train", "--hidden", "8", "--epochs", "1", "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(magic)


def svg_texts(path):
    """The strings a matplotlib SVG draws: it keeps each one in a comment beside its glyphs."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


def test_plot_ticks_are_whole_epochs_and_validation_is_drawn(fake_data, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "history.svg"
    assert main(["train", "--hidden", "8", "--epochs", "3", "--plot", str(path)]) == 0
    texts = svg_texts(path)
    assert "validation accuracy" in texts and "validation" in texts  # the legend
    ticks = [t for t in texts if re.fullmatch(r"[0-9.]+", t)]
    assert "2" in ticks and not any(re.fullmatch(r"\d\.\d", t) for t in ticks), ticks


def test_plot_without_validation_shows_the_training_accuracy(fake_data, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "history.svg"
    assert main(["train", "--hidden", "8", "--epochs", "2", "--validation-size", "0",
                 "--plot", str(path)]) == 0
    texts = svg_texts(path)
    assert "training accuracy (no validation data)" in texts
    assert "validation accuracy" not in texts
    # Two points plotted, so the y axis has ticks in percent (an empty panel has 0-1 ticks).
    assert any(re.fullmatch(r"\d{2,3}(\.\d)?", t) for t in texts), texts


def test_backends_and_optimizers_are_selectable(fake_data, capsys):
    assert main(["train", "--hidden", "8", "--epochs", "1", "--backend", "array_api_strict",
                 "--optimizer", "adam", "--lr", "0.01", "--schedule", "step"]) == 0
    assert "(training" in (out := capsys.readouterr().out)
    assert "1 epoch on array_api_strict" in out


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "argument --epochs: expected an integer >= 0, got '-1'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["--epochs", "ten"], "argument --epochs: expected an integer >= 0, got 'ten'"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--seed", "1.5"], "argument --seed: expected an integer >= 0, got '1.5'"),
    (["--threads", "0"], "argument --threads: expected 'auto' or an integer >= 1, got '0'"),
    (["--threads", "many"], "argument --threads: expected 'auto' or an integer >= 1"),
    (["--plot", "curves.jpg"], "argument --plot: cannot tell the format of 'curves.jpg'"),
    (["--data-dir", "/no/such/folder"], "argument --data-dir: no such folder: '/no/such/"),
    (["--activation", "gelu"], "argument --activation: invalid choice: 'gelu'"),
    (["--optimizer", "adagrad"], "argument --optimizer: invalid choice: 'adagrad'"),
    (["--backend", "tensorflow"], "argument --backend: invalid choice: 'tensorflow'"),
    (["--hidden", "256,-4"], "argument --hidden: layer sizes must be positive"),
    (["--hidden", "big"], "argument --hidden: expected layer sizes such as 256"),
    (["--lr", "0"], "argument --lr: expected a positive number, got '0'"),
    (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["--lr", "fast"], "argument --lr: expected a positive number, got 'fast'"),
    (["--momentum", "1"], r"argument --momentum: expected a number in \[0, 1\), got '1'"),
    (["--validation-size", "-3"], "argument --validation-size: expected an integer >= 0"),
    (["--validation-size", "60000"], r"argument --validation-size: .*in \[0, 60000\)"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--seed", "-3"], "argument --seed: expected an integer >= 0, got '-3'"),
    (["--seed", "abc"], "argument --seed: expected an integer >= 0, got 'abc'"),
    (["--seed", "1e3"], "argument --seed: expected an integer >= 0, got '1e3'"),
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


class Bug(Exception):
    pass


def _a_bug(*args, **kwargs):
    raise Bug("something inside went wrong")


def test_an_unexpected_exception_is_one_line_with_a_hint(fake_data, capsys, monkeypatch):
    monkeypatch.setattr(cli, "train", _a_bug)
    err = one_error_line(capsys, main(["train", "--epochs", "1"]), 1)
    assert err == ("miniflow: error: unexpected Bug: something inside went wrong (a bug in "
                   "miniflow; rerun with --traceback to see where it happened)\n")


def test_an_unexpected_exception_without_a_message_or_with_several_lines(
        fake_data, capsys, monkeypatch):
    def silent(*args, **kwargs):
        raise Bug()

    monkeypatch.setattr(cli, "train", silent)
    err = one_error_line(capsys, main(["train"]), 1)
    assert err.startswith("miniflow: error: unexpected Bug (a bug in miniflow; rerun")

    def chatty(*args, **kwargs):
        raise Bug("first\n  second\n")

    monkeypatch.setattr(cli, "train", chatty)
    err = one_error_line(capsys, main(["train"]), 1)
    assert err.startswith("miniflow: error: unexpected Bug: first second (a bug")


@pytest.mark.parametrize("where", ["before", "after"])
def test_traceback_flag_shows_the_traceback(fake_data, capsys, monkeypatch, where):
    monkeypatch.setattr(cli, "train", _a_bug)
    args = ["train", "--epochs", "1"]
    args = ["--traceback", *args] if where == "before" else [*args, "--traceback"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in _a_bug" in err and "Bug: something inside went wrong" in err
    assert err.endswith("miniflow: error: unexpected Bug: something inside went wrong "
                        "(a bug in miniflow)\n")


def test_traceback_flag_on_a_user_error(capsys, tmp_path):
    err = one_error_line(capsys, main(["evaluate", str(tmp_path / "none.npz")]), 1)
    assert main(["evaluate", str(tmp_path / "none.npz"), "--traceback"]) == 1
    with_traceback = capsys.readouterr().err
    assert with_traceback.startswith("Traceback") and with_traceback.endswith(err)


def test_running_out_of_memory_is_one_line(fake_data, capsys, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 291. GiB for an array")

    monkeypatch.setattr(cli, "train", too_big)
    err = one_error_line(capsys, main(["train", "--hidden", "100000000"]), 1)
    assert "out of memory (Unable to allocate 291. GiB for an array)" in err


def test_a_bad_idx_header_is_a_dataset_error_naming_the_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_module, "DEFAULT_MIRRORS", ())
    for name in MNIST_FILES[1:]:  # present, so nothing is missing; never reached
        (tmp_path / name).write_bytes(b"")
    images = tmp_path / MNIST_FILES[0]
    # Three dimensions of 2**32 - 1 pixels each, in a 16-byte file.
    images.write_bytes(bytes([0, 0, 8, 3]) + b"\xff" * 12)
    err = one_error_line(capsys, main(["train", "--data-dir", str(tmp_path)]), 1)
    assert err.startswith(f"miniflow: error: {images}: truncated: expected about 10^28 bytes")
    assert "argument" not in err and "validation" not in err


def test_seed_minus_3_from_the_shell():
    done = subprocess.run([sys.executable, "-m", "miniflow", "train", "--seed", "-3"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("miniflow: error: argument --seed: expected an integer >= 0, got '-3' "
                           "(see 'miniflow train --help')\n")


# -- evaluate -------------------------------------------------------------------------

def test_evaluate_needs_only_the_two_test_files(capsys, tmp_path):
    folder = _mnist_dir()
    if folder is None:
        pytest.skip("the MNIST test files were not found: set MINIFLOW_DATA")
    data = tmp_path / "data"
    data.mkdir()
    for name in MNIST_FILES[2:]:
        source = next(p for p in (folder / name, folder / f"{name}.gz") if p.is_file())
        (data / source.name).symlink_to(source)
    model = mlp(8, seed=1)
    save_model(model, tmp_path / "m.npz")
    assert main(["evaluate", str(tmp_path / "m.npz"), "--data-dir", str(data),
                 "--threads", "1"]) == 0
    assert re.fullmatch(r"test accuracy: \d+\.\d\d%\n", capsys.readouterr().out)


@pytest.mark.parametrize("command", [["train"], ["evaluate", "m.npz"]])
def test_a_data_dir_that_is_missing_or_a_file_is_named_and_nothing_downloads(
        no_work, capsys, monkeypatch, tmp_path, command):
    monkeypatch.setattr(cli, "load_mnist_test", no_training)
    monkeypatch.setattr(mnist_module, "_download", no_training)
    missing, a_file = tmp_path / "nope", tmp_path / "file"
    a_file.write_text("")
    err = one_error_line(capsys, main([*command, "--data-dir", str(missing)]), 2)
    assert f"argument --data-dir: no such folder: '{missing}'" in err
    err = one_error_line(capsys, main([*command, "--data-dir", str(a_file)]), 2)
    assert f"argument --data-dir: '{a_file}' is a file, not a folder" in err
    assert not missing.exists()


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


@pytest.mark.parametrize("case", ["1 MB member inflating to 1 GiB", "hidden [100000000]",
                                  "encrypted member", "input_std NaN", "input_std 1e-300",
                                  "input_mean 1e300", "safetensors: shape of 10**20 floats",
                                  "safetensors: header length 2**60",
                                  "safetensors: metadata nested 100000 deep"])
def test_evaluate_a_hostile_file_is_one_line(fake_data, capsys, tmp_path, case):
    build, message = hostile.CASES[case]
    path = build(tmp_path / "model.npz")
    err = one_error_line(capsys, main(["evaluate", str(path)]), 1)
    assert re.search(message, err) and str(path) in err


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
    assert "1 epoch on numpy" in out
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


def test_cnn_channels_choose_its_convolutions(fake_data, capsys, tmp_path):
    path = tmp_path / "cnn.npz"
    assert main(["train", "--model", "cnn", "--channels", "4,6,8", "--hidden", "16",
                 "--epochs", "1", "--save", str(path), "--quiet"]) == 0
    capsys.readouterr()
    shapes = {node.name: value.shape for node, value in load_model(path).params.items()}
    assert shapes["conv2.weight"] == (6, 4, 3, 3) and shapes["conv3.weight"] == (8, 6, 3, 3)
    err = one_error_line(capsys, main(["train", "--model", "cnn", "--channels", "16,0"]), 2)
    assert "channel counts must be positive, got '16,0'" in err
    err = one_error_line(capsys, main(["train", "--channels", "16"]), 1)
    assert "channels apply to the cnn only, not the mlp" in err


def test_the_cnn_takes_one_dense_size(no_work, capsys):
    err = one_error_line(capsys, main(["train", "--model", "cnn", "--hidden", "64,32"]), 1)
    assert "the cnn has one dense hidden layer" in err


def test_default_cnn_learns_mnist_and_its_file_evaluates(capsys, tmp_path):
    """The CNN's defaults, one epoch on 12,000 real images: far above chance, and saved intact.

    The full default run (3 epochs, 55,000 images) takes minutes on two cores;
    its accuracy is in the README. One BLAS thread makes this run repeat exactly.
    """
    folder = _mnist_dir()
    if folder is None:
        pytest.skip("the MNIST files were not found: set MINIFLOW_DATA to their folder "
                    "(the repository expects ../shared/data/mnist)")
    mnist = load_mnist(folder, validation_size=0, progress=False)
    result = train(TrainConfig(model="cnn", epochs=1, seed=0), mnist.train_images[:12000],
                   mnist.train_labels[:12000], threads=1)
    accuracy = evaluate_model(result.model, mnist.test_images, mnist.test_labels, threads=1)
    assert accuracy >= 0.96  # 97.00% on this project's machines
    path = save_model(result.model, tmp_path / "cnn.npz")
    assert main(["evaluate", str(path), "--model", "cnn", "--data-dir", str(folder),
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out == f"test accuracy: {accuracy:.2%}\n"


# -- issue 17 ---------------------------------------------------------------------------

def test_too_many_cnn_blocks_for_the_images_is_a_clear_error(capsys, fake_data):
    err = one_error_line(capsys, main(["train", "--model", "cnn", "--channels",
                                       "8,8,8,8,8,8"]), 1)
    assert "6 poolings halve 28x28 images to nothing" in err and "bug" not in err


def test_an_empty_save_path_is_refused(capsys, no_work):
    err = one_error_line(capsys, main(["train", "--save", ""]), 2)
    assert "argument --save: expected a file name" in err


def test_mnist_not_found_is_one_line_and_traceback_tells_every_mirror(capsys, tmp_path,
                                                                      monkeypatch):
    def fail(url, *args, **kwargs):
        raise OSError("host not found")

    monkeypatch.setattr(mnist_module, "DEFAULT_MIRRORS", ["http://a.invalid/", "http://b.invalid/"])
    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", fail)
    (tmp_path / "data").mkdir()
    command = ["evaluate", str(save_model(mlp(0), tmp_path / "model.npz")),
               "--data-dir", str(tmp_path / "data")]
    err = one_error_line(capsys, main(command), 1)
    assert "MNIST files missing from" in err and "all 2 mirrors" in err and "--traceback" in err
    assert main([*command, "--traceback"]) == 1
    err = capsys.readouterr().err
    assert "a.invalid" in err and "b.invalid" in err


# --- --data FILE.npz, --model package.module:function -------------------------


def _blobs(n=300, seed=0):
    """Three separable clusters in 4 features: any working model fits them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    features = rng.standard_normal((n, 4)) * 0.3 + np.eye(3, 4)[labels] * 3
    return features.astype(np.float32), labels


def test_train_and_evaluate_on_an_npz_of_arrays(tmp_path, capsys):
    x, y = _blobs()
    np.savez(tmp_path / "blobs.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:],
             y_test=y[200:])
    path = tmp_path / "blobs.safetensors"
    assert main(["train", "--data", str(tmp_path / "blobs.npz"), "--hidden", "8",
                 "--epochs", "5", "--validation-size", "20", "--quiet",
                 "--save", str(path)]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert accuracy > 90
    model = load_model(path)
    assert model.architecture["n_classes"] == 3 and model.architecture["input_shape"] == [4]
    assert main(["evaluate", str(path), "--data", str(tmp_path / "blobs.npz")]) == 0
    assert f"test accuracy: {accuracy:.2f}%" in capsys.readouterr().out


def test_data_and_data_dir_exclude_each_other_and_a_missing_file_is_named(tmp_path, capsys):
    err = one_error_line(capsys, main(["train", "--data", str(tmp_path / "no.npz")]), 2)
    assert f"argument --data: no such file: '{tmp_path / 'no.npz'}'" in err
    (tmp_path / "d.npz").write_bytes(b"")
    err = one_error_line(capsys, main(["train", "--data", str(tmp_path / "d.npz"),
                                       "--data-dir", str(tmp_path)]), 2)
    assert "not allowed with argument" in err


MODULE = '''
from miniflow import nn
from miniflow.models import from_network

def blobs_model():
    return from_network(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)),
                        input_shape=(4,), n_classes=3)

def not_a_model():
    return 42
'''


def test_model_from_a_module_function(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = _blobs()
    np.savez(tmp_path / "blobs.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:],
             y_test=y[200:])
    path = tmp_path / "own.safetensors"
    assert main(["train", "--model", "my_models:blobs_model", "--data",
                 str(tmp_path / "blobs.npz"), "--epochs", "5", "--validation-size", "20",
                 "--quiet", "--save", str(path)]) == 0
    assert float(re.search(r"test accuracy: ([\d.]+)%",
                           capsys.readouterr().out).group(1)) > 90
    model = load_model(path)
    assert [node.name for node in model.params] == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("spec, message", [
    ("my_models:not_a_model", "not_a_model\\(\\) returned int, not a miniflow Model"),
    ("my_models:missing", "module 'my_models' has no function 'missing'"),
    ("no_such_module:f", "no module named 'no_such_module'"),
    ("rnn", "expected mlp, cnn or package.module:function"),
    ("my_models:", "expected mlp, cnn or package.module:function"),
    ("a b:c", "expected mlp, cnn or package.module:function"),
])
def test_a_bad_model_spec_is_one_clear_error(tmp_path, capsys, monkeypatch, spec, message):
    (tmp_path / "my_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 4)), y_train=np.zeros(4, int))
    status = main(["train", "--model", spec, "--data", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert re.search(f"argument --model: .*{message}", err), err


def test_train_model_charlm_trains_a_language_model_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    saved = tmp_path / "lm.safetensors"
    status = main(["train", "--model", "charlm", "--text", str(text), "--steps", "3",
                   "--batch-size", "4", "--seq-len", "16", "--embedding", "8", "--hidden", "16",
                   "--layers", "1", "--sample", "20", "--save", str(saved)])
    out = capsys.readouterr().out
    assert status == 0
    bits = float(re.search(r"held-out: ([\d.]+) bits per character", out).group(1))
    assert 0 < bits < 8  # 9 distinct characters: a uniform guess is log2(9) = 3.2 bits
    assert saved.exists()


def test_train_model_charlm_reports_a_missing_text_file_in_one_line(tmp_path, capsys):
    status = main(["train", "--model=charlm", "--text", str(tmp_path / "absent.txt")])
    err = capsys.readouterr().err
    assert status == 1 and "absent.txt" in err and len(err.strip().splitlines()) == 1


# -- --checkpoint, --resume, --clip-norm -------------------------------------------------

RESUMABLE = ["train", "--hidden", "8", "--epochs", "3", "--optimizer", "adam", "--schedule",
             "cosine", "--clip-norm", "0.5", "--threads", "1", "--quiet"]


def interrupt_after_epoch(monkeypatch, last):
    """Ctrl-C as epoch ``last`` ends (after its checkpoint is written), as a user would."""
    real = cli.train

    def interrupted(*args, on_epoch, **kwargs):
        def stop(stats):
            on_epoch(stats)
            if stats.epoch == last:
                raise KeyboardInterrupt

        return real(*args, on_epoch=stop, **kwargs)

    monkeypatch.setattr(cli, "train", interrupted)


def test_resume_gives_the_uninterrupted_runs_weights_bit_for_bit(fake_data, capsys, monkeypatch,
                                                                  tmp_path):
    # Adam's moments, the step count (hence where the cosine schedule is) and the
    # shuffling generator must all come back: any one lost changes the weights.
    whole, resumed, checkpoint = (tmp_path / n for n in ("whole.safetensors",
                                                         "resumed.safetensors", "run.ckpt"))
    assert main([*RESUMABLE, "--save", str(whole)]) == 0
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        assert main([*RESUMABLE, "--checkpoint", str(checkpoint), "--save", str(resumed)]) == 130
    assert checkpoint.is_file() and not resumed.exists()
    assert load_checkpoint(checkpoint)["epoch"] == 1
    epochs = []
    with monkeypatch.context() as patch:
        real = cli.train

        def watched(*args, on_epoch, **kwargs):
            return real(*args, on_epoch=lambda s: (epochs.append(s.epoch), on_epoch(s))[1],
                        **kwargs)

        patch.setattr(cli, "train", watched)
        assert main([*RESUMABLE, "--resume", str(checkpoint), "--checkpoint", str(checkpoint),
                     "--save", str(resumed)]) == 0
    capsys.readouterr()
    assert epochs == [2, 3]  # continued, not started over (which would give the same weights)
    assert load_checkpoint(checkpoint)["epoch"] == 3
    a, b = load_model(whole), load_model(resumed)
    assert [n.label for n in a.params] == [n.label for n in b.params]
    for x, y in zip(a.params.values(), b.params.values()):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_clip_norm_changes_the_trained_weights(fake_data, capsys, tmp_path):
    paths = [tmp_path / "plain.safetensors", tmp_path / "clipped.safetensors"]
    base = ["train", "--hidden", "8", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.5",
            "--schedule", "constant", "--quiet"]
    assert main([*base, "--save", str(paths[0])]) == 0
    assert main([*base, "--clip-norm", "1e-3", "--save", str(paths[1])]) == 0
    capsys.readouterr()
    plain, clipped = (load_model(p) for p in paths)
    assert not any(np.array_equal(p, c) for p, c in
                   zip(plain.params.values(), clipped.params.values()))


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "big"])
def test_a_bad_clip_norm_is_refused_naming_the_flag(no_work, capsys, value):
    err = one_error_line(capsys, main(["train", f"--clip-norm={value}"]), 2)
    assert f"argument --clip-norm: expected a positive number, got '{value}'" in err


def test_a_missing_or_corrupt_resume_file_is_refused_naming_the_flag(fake_data, capsys,
                                                                     tmp_path):
    missing = tmp_path / "none.ckpt"
    err = one_error_line(capsys, main(["train", "--resume", str(missing)]), 2)
    assert f"argument --resume: no checkpoint at {missing}" in err
    corrupt = tmp_path / "bad.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not a zip at all")
    err = one_error_line(capsys, main(["train", "--resume", str(corrupt)]), 2)
    assert f"argument --resume: {corrupt} is not a miniflow checkpoint" in err
    model = tmp_path / "model.npz"
    np.savez(model, w=np.zeros(3))
    err = one_error_line(capsys, main(["train", "--resume", str(model)]), 2)
    assert f"argument --resume: {model} is not a miniflow checkpoint" in err


def test_a_checkpoint_of_another_model_is_refused_naming_the_flag(fake_data, capsys, tmp_path):
    checkpoint = tmp_path / "wide.ckpt"
    assert main(["train", "--hidden", "16", "--epochs", "1", "--quiet",
                 "--checkpoint", str(checkpoint)]) == 0
    capsys.readouterr()
    err = one_error_line(capsys, main(["train", "--hidden", "8", "--epochs", "2",
                                       "--resume", str(checkpoint)]), 2)
    assert f"argument --resume: {checkpoint} is a checkpoint of another model" in err
    assert "(784, 16)" in err and "(784, 8)" in err


def test_an_unwritable_checkpoint_path_fails_before_training(no_work, capsys, tmp_path):
    err = one_error_line(capsys, main(["train", "--checkpoint",
                                       str(tmp_path / "no" / "run.ckpt")]), 1)
    assert "checkpoint" in err and str(tmp_path / "no") in err
