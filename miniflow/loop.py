"""The one epoch loop: shuffle, step, update, validate, call back, checkpoint.

Every way of training drives this loop; what differs is the *step*, an object
with ``step(params, batch) -> (loss, grads)`` for ``batch`` a host array of row
indices into the training set:

* :class:`miniflow.train.LocalStep`: the executor (or a compiled step,
  :mod:`miniflow.compile`) on one machine, the batch whole or in row shards in
  threads;
* :class:`miniflow.distributed.ClusterStep`: the shards on a Dask cluster's
  workers, which keep the parameters and the optimizer's state.

The loop hands the gradients to the optimizer (``optimizer.step(grads)``), so
weight decay, schedules and gradient clipping, which live in the optimizer,
act the same on every step; validation, callbacks, early stopping and
checkpoints live here, once.

A step also offers ``state`` (the model's state arrays, e.g. BatchNorm's
running statistics, as the last step left them), ``begin_epoch(epoch)``,
``load_state(arrays)`` and ``close()``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ConfigError, StopTraining, TrainingDivergedError

__all__ = ["EpochStats", "StopTraining", "EarlyStopping", "fit", "epoch_seed"]


@dataclass(frozen=True)
class EpochStats:
    """What one epoch achieved.

    ``loss`` is the mean training loss over the epoch's examples;
    ``val_accuracy`` a fraction in [0, 1] and ``val_loss`` the loss on the
    validation data (the training loss's own graph, in inference mode), both
    None without it; ``train_accuracy`` the accuracy on the training data after
    the epoch, measured only when there is no validation data (else None);
    ``metrics`` every metric measured after the epoch, by name (on the
    validation data, else the training data); ``seconds`` the epoch's wall time,
    validation included; ``threads`` the BLAS threads it ran with (None: not
    limited).
    """

    epoch: int
    epochs: int
    loss: float
    val_accuracy: float | None
    seconds: float
    lr: float
    val_loss: float | None = None
    train_accuracy: float | None = None
    threads: int | None = None
    metrics: dict = field(default_factory=dict)


class EarlyStopping:
    """An ``on_epoch`` callback that stops a run once ``monitor`` stops improving.

    Parameters
    ----------
    monitor : str
        An :class:`EpochStats` field ("val_loss", "loss", "val_accuracy") or a
        metric's name in ``stats.metrics`` ("rmse").
    patience : int
        Epochs without an improvement of more than ``min_delta`` before stopping.
    mode : {"min", "max"} or None
        Whether smaller is better; None: "max" for accuracies, else "min".
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 2, min_delta: float = 0.0,
                 mode: str | None = None):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"patience must be an integer >= 1, got {patience!r}")
        if mode is None:
            mode = "max" if "accuracy" in monitor else "min"
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best, self.bad_epochs, self.stopped_epoch = None, 0, None

    def _value(self, stats):
        value = getattr(stats, self.monitor, None)
        if value is None:
            value = stats.metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"EarlyStopping monitors {self.monitor!r}, which this run does "
                              f"not measure (it has {', '.join(self._known(stats))})")
        return value

    @staticmethod
    def _known(stats):
        fields = [k for k, v in asdict(stats).items() if isinstance(v, float)]
        return fields + list(stats.metrics)

    def __call__(self, stats) -> bool:
        value = self._value(stats)
        sign = 1 if self.mode == "min" else -1
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = stats.epoch
            return False
        return True


def epoch_seed(seed: int, epoch: int, shards: int = 1) -> list[int]:
    """Seeds of the random draws (Dropout's masks) of ``epoch``, one per shard.

    Drawn afresh for each epoch from (seed, epoch): a run resumed at an epoch
    draws what the uninterrupted run drew, whatever the backend's generator.
    """
    children = np.random.SeedSequence([seed, epoch]).spawn(shards)
    return [int(child.generate_state(1)[0]) for child in children]


def fit(step, optimizer, n: int, *, epochs: int, batch_size: int, seed: int,
        validate=None, on_step=None, on_epoch=None, reduction: str = "mean",
        checkpoint=None, resume=None, threads=None, adapt=None, lr_hint: float | None = None):
    """Train for ``epochs`` epochs over ``n`` rows; return ``(history, stopped_early)``.

    Parameters
    ----------
    step
        ``step(params, batch) -> (loss, grads)`` (see the module's docstring).
    optimizer : miniflow.optim.Optimizer
        Or an object with its interface (``params``, ``step``, ``lr``,
        ``state_dict``, ``load_state_dict``).
    validate : callable, optional
        ``validate() -> (report, on_validation_data)``, after each epoch: the
        loss and metrics by name (see :func:`miniflow.evaluation.measure`).
    on_step, on_epoch : callable, optional
        Called with each step's loss (a 0-d array) and each epoch's
        :class:`EpochStats`; raising :class:`StopTraining` (or ``on_epoch``
        returning False) ends the run.
    reduction : {"mean", "sum"}
        How the loss combines rows: the epoch's loss is the steps' weighted by
        their rows for a mean, added for a sum, then divided by ``n``.
    checkpoint : str or Path, optional
        Written atomically after every epoch (see :mod:`miniflow.checkpoint`).
    resume : dict, optional
        A checkpoint read by :func:`miniflow.checkpoint.load_checkpoint`: the run
        continues after its epoch, exactly as if never interrupted.
    """
    from .checkpoint import save_checkpoint

    rng = np.random.default_rng(seed)
    history, first = [], 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step.load_state(resume["state"])
        rng.bit_generator.state = resume["rng"]
        history = [EpochStats(**record) for record in resume["history"]]
        first = resume["epoch"] + 1
    stopped = False
    for epoch in range(first, epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.lr
        order = rng.permutation(n)
        step.begin_epoch(epoch)
        total = 0.0
        try:
            # A diverging run is caught below, once per epoch, and explained; NumPy's
            # overflow warnings from every operation on the way would only bury that.
            with np.errstate(over="ignore", invalid="ignore"):
                for start in range(0, n, batch_size):
                    batch = order[start:start + batch_size]
                    loss, grads = step(optimizer.params, batch)
                    optimizer.step(grads)
                    # The loss stays on the device: a float() per step would make the
                    # host wait for the device every step.
                    total = total + (loss if reduction == "sum" else loss * len(batch))
                    if on_step is not None:
                        on_step(loss)
        except StopTraining:
            stopped = True
        # The epoch's one trip to the host for the loss.
        loss = float(total) / n
        if not math.isfinite(loss):
            hint = "" if lr_hint is None else (
                f": the learning rate {lr_hint:g} is probably too high; try a lower one, "
                f"e.g. {lr_hint / 10:g}")
            raise TrainingDivergedError(f"the training loss became {loss} in epoch {epoch}"
                                        f"{hint}")
        report, on_val = ({}, False) if validate is None else validate()
        measured = {k: v for k, v in report.items() if k != "loss"}
        stats = EpochStats(epoch, epochs, loss,
                           measured.get("accuracy") if on_val else None,
                           time.perf_counter() - epoch_start, lr,
                           val_loss=report.get("loss") if on_val else None,
                           train_accuracy=None if on_val else measured.get("accuracy"),
                           threads=threads() if threads else None, metrics=measured)
        if adapt is not None:
            adapt()  # the next epoch takes the cores that are free now
        history.append(stats)
        if checkpoint is not None:
            save_checkpoint(checkpoint, epoch=epoch, optimizer=optimizer.state_dict(),
                            state=step.state_arrays(), rng=rng.bit_generator.state,
                            history=[asdict(s) for s in history])
        if on_epoch is not None and not stopped:
            try:
                if on_epoch(stats) is False:
                    stopped = True
            except StopTraining:
                stopped = True
        if stopped:
            break
    return history, stopped
