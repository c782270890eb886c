"""What a run shows: epoch lines, the verdict on a failed run, and the bar in a real terminal."""
import math
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from miniflow.progress import Progress, diagnose, epoch_line, plural
from miniflow.train import EpochStats, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+)  loss \d+\.\d{4}  val loss \d+\.\d{4}  "
                        r"val acc \d+\.\d\d%  \d+\.\d\d s")


def stats(epoch, loss, val_accuracy=None, epochs=3, **extra):
    return EpochStats(epoch, epochs, loss, val_accuracy, 0.5, 0.1, **extra)


def blobs(n=400, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, 8)) * 4
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.standard_normal((n, 8))).astype(np.float32), labels


# -- the lines -------------------------------------------------------------------------

def test_epoch_lines_show_validation_loss_and_accuracy_or_training_accuracy():
    assert epoch_line(stats(2, 0.25, 0.9712, val_loss=0.1)) == \
        "epoch 2/3  loss 0.2500  val loss 0.1000  val acc 97.12%  0.50 s"
    assert epoch_line(stats(1, 0.25, train_accuracy=0.5)) == \
        "epoch 1/3  loss 0.2500  train acc 50.00%  0.50 s"


def test_plural():
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]


@pytest.mark.parametrize("history, accuracy, expected", [
    ([stats(1, 0.5, 0.9), stats(2, 0.3, 0.95)], None, None),
    ([stats(1, 0.5, 0.9), stats(2, 0.7, 0.95)], None, "the training loss grew from 0.5"),
    ([stats(1, 6.4e6, 0.1), stats(2, 1.7e6, 0.11)], None, "final training loss 1.7e+06 is above"),
    ([stats(1, 2.0, 0.9)], 0.1137, "the accuracy 11.37% is at chance level (10% for 10"),
    ([stats(1, 2.0, 0.12)], None, "at chance level"),
    ([stats(1, 2.0, train_accuracy=0.12)], None, "at chance level"),
    ([], None, None),
])
def test_diagnose_names_what_went_wrong(history, accuracy, expected):
    verdict = diagnose(history, 10, accuracy=accuracy)
    if expected is None:
        assert verdict is None
    else:
        assert verdict.startswith("the model did not learn: ") and expected in verdict, verdict


def test_diagnose_compares_with_the_loss_of_a_uniform_guess():
    assert math.log(10) < 2.31
    assert "above 2.303" in diagnose([stats(1, 2.31, 0.9)], 10)
    assert diagnose([stats(1, 2.29, 0.9)], 10) is None


def test_train_verbose_prints_the_command_lines(capsys):
    x, y = blobs()
    result = train(TrainConfig(hidden=8, epochs=2, batch_size=50), x[:300], y[:300],
                   x[300:], y[300:], n_classes=4, verbose=True)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines == [epoch_line(s) for s in result.history]
    assert [EPOCH_LINE.fullmatch(line).group(1) for line in lines] == ["1", "2"]
    assert captured.err == ""  # no bar off a terminal, and no warning for a run that learned
    assert result.warning is None and result.history[-1].val_accuracy > 0.9


def test_train_verbose_warns_about_a_run_that_learned_nothing(capsys):
    x, y = blobs()
    result = train(TrainConfig(hidden=8, epochs=2, optimizer="sgd", lr=1e-9,
                               schedule="constant"), x, y, n_classes=4, verbose=True)
    err = capsys.readouterr().err
    assert result.warning and f"warning: {result.warning}\n" == err
    assert result.history[-1].train_accuracy is not None  # no validation data: training's


def test_train_is_silent_unless_asked(capsys):
    x, y = blobs()
    train(TrainConfig(hidden=8, epochs=1), x, y, n_classes=4)
    assert capsys.readouterr() == ("", "")  # pytest's CaptureResult compares as (out, err)


def test_without_a_terminal_there_is_no_bar(capsys):
    with Progress(10) as progress:
        assert progress.bar is None
        for _ in range(10):
            progress.step(np.float32(1.0))
        progress.epoch(stats(1, 0.5, 0.9, val_loss=0.4))
    assert capsys.readouterr().out == epoch_line(stats(1, 0.5, 0.9, val_loss=0.4)) + "\n"


# -- a real terminal ------------------------------------------------------------------

SCRIPT = """
import sys
import numpy as np
import miniflow.cli as cli
from miniflow.datasets import MNIST

rng = np.random.default_rng(0)
centers = rng.random((10, 784))
def split(n):
    labels = rng.integers(0, 10, n)
    images = np.clip(centers[labels] + 0.3 * rng.standard_normal((n, 784)), 0, 1)
    return images.astype(np.float32), labels
(x, y), (vx, vy), (tx, ty) = split(1000), split(100), split(100)
cli.load_mnist = lambda *args, **kwargs: MNIST(x, y, vx, vy, tx, ty)
sys.exit(cli.main(["train", "--hidden", "16", "--epochs", "3", "--batch-size", "4", "--lr", "0.01",
                   "--threads", "1"]))
"""


def screen(output: str, width: int = 100) -> list[str]:
    """What a terminal shows after ``output``: carriage returns, newlines, cursor-up and erase."""
    lines, row, col = [""], 0, 0
    tokens = re.finditer(r"\x1b\[(\d*)([A-Za-z])|\r\n|\r|\n|[^\x1b\r\n]+", output)
    for token in tokens:
        text = token.group()
        if token.group(2):  # a CSI sequence
            count = int(token.group(1) or 1)
            if token.group(2) == "A":
                row = max(0, row - count)
            elif token.group(2) == "K":
                lines[row] = lines[row][:col]
            continue
        if text in ("\r\n", "\n"):
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif text == "\r":
            col = 0
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + text + line[col + len(text):]
            col += len(text)
    return [line.rstrip() for line in lines if line.strip()]


def run_in_terminal(script, timeout=60):
    """Run ``python -c script`` with stdout and stderr on a pseudo-terminal; return all it wrote."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    process = subprocess.Popen([sys.executable, "-c", script], stdin=child_fd, stdout=child_fd,
                               stderr=child_fd, env=env, close_fds=True)
    os.close(child_fd)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(main_fd)
    process.wait(timeout=10)
    return process.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_in_a_terminal_the_bar_appears_updates_and_clears():
    pytest.importorskip("tqdm")
    status, output = run_in_terminal(SCRIPT)
    assert status == 0, output
    bars = re.findall(r"training:\s+(\d+)%\|[^\r\n]*?(\d+)/750 \[[^\]]*step/s(?:, loss "
                      r"(\d+\.\d{4}))?\]", output)
    assert len(bars) >= 3, output  # drawn, then redrawn as it advances
    steps = [int(done) for _, done, _ in bars]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert any(loss for _, _, loss in bars), "the running loss is shown"
    shown = screen(output)
    assert not any("training:" in line for line in shown), shown  # cleared at the end
    assert [line.split("  ")[0] for line in shown[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert shown[3].startswith("test accuracy: ") and shown[4].startswith("wall time: ")


def test_in_a_log_there_is_one_line_per_epoch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr and done.stderr == ""
    lines = done.stdout.splitlines()
    assert [EPOCH_LINE.fullmatch(line).group(1) for line in lines[:3]] == ["1", "2", "3"]
    assert lines[3].startswith("test accuracy: ") and len(lines) == 5


def test_the_bar_shows_the_running_mean_loss_of_the_epoch(monkeypatch):
    pytest.importorskip("tqdm")
    import io

    import miniflow.progress as progress_module
    monkeypatch.setattr(progress_module, "LOSS_REFRESH_SECONDS", 0)
    stream = io.StringIO()
    with Progress(4, bar=True, lines=False, stream=stream) as progress:
        for loss in (1.0, 2.0, 3.0):
            progress.step(np.float32(loss))
        assert "loss 2.0000" in progress.bar.postfix  # the mean of 1, 2 and 3
        progress.epoch(stats(1, 2.0, 0.5))
        progress.step(np.float32(5.0))
        assert "loss 5.0000" in progress.bar.postfix  # a new epoch starts a new mean
    assert "step/s" in stream.getvalue()


def test_a_lazy_dask_loss_is_never_computed_for_the_bar(monkeypatch):
    pytest.importorskip("tqdm")
    da = pytest.importorskip("dask.array")
    import io

    import miniflow.progress as progress_module
    monkeypatch.setattr(progress_module, "LOSS_REFRESH_SECONDS", 0)

    def never(*args, **kwargs):
        raise AssertionError("the bar computed a lazy loss")

    loss = da.from_array(np.float32(1.0)).map_blocks(never, dtype=np.float32)
    with Progress(3, bar=True, lines=False, stream=io.StringIO()) as progress:
        for _ in range(3):
            progress.step(loss)
        assert progress.bar.n == 3 and "loss" not in (progress.bar.postfix or "")
