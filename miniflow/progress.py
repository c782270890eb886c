"""What a training run shows while it runs: a progress bar, one line per epoch, a verdict.

The same pieces serve ``miniflow train`` and ``train(..., verbose=True)``:

* :func:`epoch_line` formats an epoch's :class:`~miniflow.train.EpochStats`.
* :class:`Progress` receives the trainer's ``on_step`` and ``on_epoch`` calls:
  on a terminal (with tqdm installed) it draws a bar with the running loss
  and the steps per second, written over in place and cleared at the end;
  elsewhere (a log, a pipe) it prints only the epoch lines.
* :func:`diagnose` says when a finished run learned nothing: an accuracy at
  chance level, or a loss that grew.
"""
from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress", "epoch_line", "diagnose", "plural"]

#: How often the bar's running loss is brought to the host. Reading it makes
#: the host wait for the device, so it is done a few times a second, not per step.
LOSS_REFRESH_SECONDS = 0.25


def plural(count: int, noun: str) -> str:
    """``plural(1, "epoch")`` is "1 epoch", ``plural(2, "epoch")`` "2 epochs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def epoch_line(stats) -> str:
    """One epoch as a line: its loss, the validation loss and accuracy, its time."""
    parts = [f"epoch {stats.epoch}/{stats.epochs}", f"loss {stats.loss:.4f}"]
    if getattr(stats, "val_loss", None) is not None:
        parts.append(f"val loss {stats.val_loss:.4f}")
    if stats.val_accuracy is not None:
        parts.append(f"val acc {stats.val_accuracy:.2%}")
    elif getattr(stats, "train_accuracy", None) is not None:
        parts.append(f"train acc {stats.train_accuracy:.2%}")
    parts.append(f"{stats.seconds:.2f} s")
    return "  ".join(parts)


def diagnose(history, n_classes: int, accuracy: float | None = None) -> str | None:
    """Why a finished run looks like a failure, or None when it does not.

    Parameters
    ----------
    history : sequence of EpochStats
    n_classes : int or None
        None for a regression: only the loss is judged.
    accuracy : float, optional
        The accuracy to judge (e.g. on the test set); by default the last
        epoch's validation accuracy, else its training accuracy.

    Returns
    -------
    str or None
        "the loss grew ..." when the last epoch's loss is above the first's,
        or above log(n_classes), what guessing every class equally likely
        scores; "... is at chance level" when the accuracy is within half of
        chance (1 / n_classes) of it. Both name the likely cause.
    """
    if not history:
        return None
    first, last = history[0], history[-1]
    if accuracy is None:
        accuracy = last.val_accuracy
        if accuracy is None:
            accuracy = getattr(last, "train_accuracy", None)
    problems = []
    uniform_loss = math.log(n_classes) if n_classes else math.inf
    if last.loss > uniform_loss:
        problems.append(f"the final training loss {last.loss:.4g} is above {uniform_loss:.4g}, "
                        f"what guessing every class equally likely scores")
    elif len(history) > 1 and last.loss > first.loss:
        problems.append(f"the training loss grew from {first.loss:.4g} (epoch 1) to "
                        f"{last.loss:.4g} (epoch {last.epoch})")
    advice = ("the learning rate is probably too high: try a lower one" if problems else
              "try another learning rate, or more epochs")
    chance = 1 / n_classes if n_classes else 0.0
    if accuracy is not None and accuracy < 1.5 * chance:
        problems.append(f"the accuracy {accuracy:.2%} is at chance level "
                        f"({chance:.0%} for {n_classes} classes)")
    if not problems:
        return None
    return f"the model did not learn: {'; '.join(problems)}. {advice.capitalize()}"


class Progress:
    """Shows a training run: a live bar on a terminal, one line per epoch in any case.

    Pass :meth:`step` as the trainer's ``on_step`` and :meth:`epoch` as its
    ``on_epoch``, inside a ``with`` block that removes the bar at the end.

    Parameters
    ----------
    total_steps : int, optional
        Steps in the whole run (the bar's length); or given later, to :meth:`start`.
    bar : bool or None
        Draw the bar: None draws it when ``stream`` is a terminal and tqdm is
        installed.
    lines : bool
        Print each epoch's line (to ``out``).
    stream : file, default sys.stderr
        Where the bar goes.
    out : file, default sys.stdout
        Where epoch lines go.
    """

    def __init__(self, total_steps: int | None = None, *, bar: bool | None = None,
                 lines: bool = True, stream=None, out=None):
        self.stream = sys.stderr if stream is None else stream
        self.out = out  # resolved when written, so that a redirected sys.stdout is honoured
        self.lines = lines
        self.total_steps = total_steps
        if bar is None:
            bar = _isatty(self.stream)
        self._tqdm = _tqdm_class() if bar else None
        self.bar = None
        self._loss_sum, self._loss_count, self._last_refresh = 0, 0, 0.0

    def __enter__(self):
        if self.total_steps is not None:
            self.start(self.total_steps)
        return self

    def start(self, total_steps: int) -> None:
        """Show the bar (where there is one) for a run of ``total_steps`` steps."""
        self.total_steps = total_steps
        if self._tqdm is not None and self.bar is None:
            # leave=False: the bar is erased when done, leaving only the epoch lines.
            self.bar = self._tqdm(total=total_steps, unit="step", desc="training",
                                  leave=False, file=self.stream, dynamic_ncols=True)

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return False

    def step(self, loss=None) -> None:
        """One step done; ``loss`` its mean loss, a 0-d array of any backend."""
        if self.bar is None:
            return
        if loss is not None and not _lazy(loss):
            # Summed on the device: a float() here would stall a GPU every step.
            self._loss_sum = self._loss_sum + loss
            self._loss_count += 1
        now = time.monotonic()
        if self._loss_count and now - self._last_refresh >= LOSS_REFRESH_SECONDS:
            self._last_refresh = now
            running = float(self._loss_sum) / self._loss_count
            self.bar.set_postfix_str(f"loss {running:.4f}", refresh=False)
        self.bar.update()

    def epoch(self, stats) -> None:
        """An epoch done: print its line above the bar, and restart the running loss."""
        self._loss_sum, self._loss_count = 0, 0
        if self.lines:
            self.write(epoch_line(stats))

    def write(self, line: str) -> None:
        """Print a line to ``out``, above the bar when there is one."""
        out = sys.stdout if self.out is None else self.out
        if self.bar is not None:
            self.bar.write(line, file=out)
        else:
            print(line, file=out, flush=True)


def _lazy(array) -> bool:
    """A Dask array: the epoch is one lazy graph, and reading the running loss would
    compute it again from the epoch's start at every refresh. Its bar counts steps only."""
    return type(array).__module__.startswith("dask")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _tqdm_class():
    try:
        from tqdm import tqdm
    except ImportError:  # optional: the epoch lines do without it
        return None
    return tqdm
