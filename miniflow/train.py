"""Train any model with any scalar loss on any backend: the data, the model, the optimizer,
then :func:`miniflow.loop.fit`.

>>> from miniflow.datasets import load_mnist                     # doctest: +SKIP
>>> mnist = load_mnist()                                          # doctest: +SKIP
>>> result = train(TrainConfig(), mnist.train_images, mnist.train_labels,
...                mnist.val_images, mnist.val_labels)            # doctest: +SKIP
>>> evaluate_model(result.model, mnist.test_images, mnist.test_labels)  # doctest: +SKIP
0.9808

``train(config, ..., model=my_model)`` trains any graph wrapped in a
:class:`~miniflow.models.Model` (its loss, its outputs, data Inputs and
parameter Inputs with their initial arrays): a classifier (integer labels), a
regression (float targets, e.g. a mean squared error), or any scalar loss built
by hand (an L2 term on the weights included). Without ``model`` it builds the
ready-made one ``config.model`` names (see :data:`MODELS`).

This module prepares a run; the jobs around it live in modules of their own:
the data checks in :mod:`miniflow.checks`, the loss and metrics on a split and
predictions in :mod:`miniflow.evaluation`, the epoch loop with its callbacks
and checkpoints in :mod:`miniflow.loop` and :mod:`miniflow.checkpoint`, and
the cluster's step in :mod:`miniflow.distributed`. Here: the local step.

The data and the parameters move to the backend once; each step gathers its
batch on the device, and only scalars (the epoch's loss, the metrics) come
back to the host, once per epoch. On a GPU this is what keeps the device busy
instead of waiting on the host.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .backends import backend_names, get_backend
from .checks import as_rows, check_data, check_inputs, check_targets, standardisation, standardise
from .errors import ConfigError, DataError, TrainingDivergedError
from .evaluation import (EVAL_BATCH_SIZE, EVAL_BATCH_SIZE_IMAGES, check_metrics,
                         default_metrics, eval_batch_size, evaluate_model, loss_reduction,
                         measure, predict_proba)
from .executor import run
from .graph import topological_order
from .loop import EarlyStopping, EpochStats, StopTraining, epoch_seed, fit
from .models import ACTIVATIONS, Model, cnn, hidden_sizes, mlp
from .optim import DEFAULT_LR, OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from .progress import Progress, diagnose
from .threads import ThreadPolicy

__all__ = ["TrainConfig", "EpochStats", "TrainResult", "train", "evaluate_model",
           "check_data", "ConfigError", "DataError", "TrainingDivergedError", "DEFAULT_LR",
           "MODELS", "MODEL_DEFAULTS", "predict_proba", "register_model", "build_model",
           "LocalStep", "StopTraining", "EarlyStopping", "eval_batch_size", "EVAL_BATCH_SIZE",
           "EVAL_BATCH_SIZE_IMAGES"]


# -- the ready-made models: adding a kind is one register_model call -------------------

#: name -> build(config, n_inputs, n_classes) -> Model.
_BUILDERS: dict = {}
#: What each model trains with when the config leaves a setting at None.
MODEL_DEFAULTS: dict = {}
#: The ready-made models ``TrainConfig.model`` names: a live view of the registry.
MODELS = _BUILDERS.keys()


def register_model(name: str, build, defaults: dict) -> None:
    """Make ``name`` a ready-made model of ``TrainConfig`` and ``miniflow train --model``.

    ``build(config, n_inputs, n_classes)`` returns the :class:`Model`, seeded with
    ``config.seed``; ``defaults`` gives ``hidden``, ``optimizer``, ``schedule``,
    ``epochs``, ``lr``, ``batch_size`` and ``shards`` where a config leaves them at None.
    """
    missing = {"hidden", "optimizer", "schedule", "epochs", "lr", "batch_size",
               "shards"} - set(defaults)
    if missing:
        raise ConfigError(f"the defaults of model {name!r} lack {', '.join(sorted(missing))}")
    _BUILDERS[name] = build
    MODEL_DEFAULTS[name] = dict(defaults)


def _build_mlp(config, n_inputs, n_classes):
    return mlp(config.hidden, config.activation, n_inputs=n_inputs, n_classes=n_classes,
               seed=config.seed)


def _build_cnn(config, n_inputs, n_classes):
    side = math.isqrt(n_inputs)
    if side * side != n_inputs:
        raise DataError(f"the cnn takes square one-channel images, but the data has "
                        f"{n_inputs} features per example")
    return cnn(config.channels, config.hidden[0], image_shape=(1, side, side),
               n_classes=n_classes, seed=config.seed)


# The MLP's 5 epochs: the cosine schedule lands in 5 as well as in 10 (98.1-98.2% test
# accuracy on seeds 0-2 either way; bench/to_accuracy.py) in half the time.
register_model("mlp", _build_mlp, {"hidden": (256,), "optimizer": "nesterov",
                                   "schedule": "cosine", "epochs": 5, "lr": None,
                                   "batch_size": 128, "shards": 1})
# The CNN's (Adam with a one-cycle schedule, batches of 64, 3 epochs) reach 99.2% test
# accuracy on MNIST (see the README for the seeds measured). A peak of 0.004 rather than
# 0.003: 99.28-99.31% on seeds 0-2 against 99.13-99.26% (0.002: 99.13-99.16%).
register_model("cnn", _build_cnn, {"channels": (32, 64), "hidden": (128,), "optimizer": "adam",
                                   "schedule": "onecycle", "epochs": 3, "lr": 0.004,
                                   "batch_size": 64, "shards": 2})


def build_model(config, n_inputs: int, n_classes: int) -> Model:
    """The ready-made model ``config`` describes, initialised with ``config.seed``."""
    return _BUILDERS[config.model](config, n_inputs, n_classes)



def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the same config gives the same model.

    Settings left at None take the model's defaults (``MODEL_DEFAULTS``).

    Attributes
    ----------
    model : {"mlp", "cnn"}
        The ready-made graph to train (``train(..., model=...)`` takes any other).
    hidden : int or tuple of int
        Hidden layer sizes; ``0`` or ``()`` for softmax regression. For the
        CNN, one size: its dense layer.
    channels : int or tuple of int
        The CNN's convolutions' output channels, one per conv-pool-ReLU block
        (the MLP has none: leave it None).
    activation : {"relu", "sigmoid", "tanh"}
        The MLP's nonlinearity (the CNN uses ReLU).
    optimizer : {"sgd", "momentum", "nesterov", "adam", "rmsprop"}
    lr : float or None
        The initial (for "onecycle", the peak) learning rate; None takes the
        model's default, else ``DEFAULT_LR[optimizer]``.
    schedule : {"constant", "step", "cosine", "onecycle"}
        How the rate changes over the run (see :func:`miniflow.optim.make_schedule`).
    weight_decay : float
        L2 penalty added to the gradients by the optimizer, >= 0.
    momentum : float
        For the momentum methods, and Adam's first beta; in [0, 1).
    epochs : int
        Passes over the training set, >= 0.
    batch_size : int
        Examples per step, >= 1. The last batch of an epoch holds the remainder.
        None takes the model's default.
    seed : int
        Seeds the initial weights and the shuffling.
    backend : str
        Where to compute: a name from :func:`miniflow.backends.backend_names`.
    validation_size : int
        Training examples held out for validation (used by the command line
        when it loads MNIST), >= 0.
    clip_norm : float or None
        Scale each step's gradients so their global L2 norm is at most this
        (as PyTorch's ``clip_grad_norm_``), before weight decay; None: no clipping.
    shards : int
        Split each batch into this many row shards, computed at once in
        threads of their own (NumPy and BLAS release the GIL), each with its
        share of the BLAS threads; the step's loss and gradients are the
        shards' weighted by their rows. A mean loss's shards are weighted by
        their rows, a summed loss's added; a graph mixing a summed loss with
        other terms cannot be sharded (a ConfigError says so). With up to ``shards`` threads the result
        does not depend on their count (one computes the shards in turn, each
        shard's BLAS has one thread); Dropout draws each
        shard's masks from a generator of its own. >= 1; None takes the
        model's default.

    Raises
    ------
    ConfigError
        (a ValueError) On any value out of range or unknown name; the message
        lists the valid ones.
    """

    hidden: tuple | None = None
    channels: tuple | None = None
    activation: str = "relu"
    optimizer: str | None = None
    lr: float | None = None
    schedule: str | None = None
    momentum: float = 0.9
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    backend: str = "numpy"
    validation_size: int = 5000
    compile: bool = False  # run each step through miniflow.compile (see compile.py)
    model: str = "mlp"
    weight_decay: float = 0.0
    shards: int | None = None
    clip_norm: float | None = None  # the gradients' global L2 norm is clipped to this

    def __post_init__(self):
        # Frozen: normalised values are set through object.__setattr__.
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        defaults = MODEL_DEFAULTS[self.model]
        for name in ("hidden", "optimizer", "schedule", "epochs", "batch_size", "shards"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        if self.lr is None and self.optimizer == defaults["optimizer"]:
            object.__setattr__(self, "lr", defaults["lr"])
        try:
            object.__setattr__(self, "hidden", hidden_sizes(self.hidden))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for name, valid in (("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS),
                            ("schedule", SCHEDULES), ("backend", backend_names())):
            if getattr(self, name) not in valid:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of "
                                 f"{', '.join(valid)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) \
                or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.clip_norm is not None and (
                isinstance(self.clip_norm, bool) or not isinstance(self.clip_norm, (int, float))
                or not 0 < self.clip_norm < math.inf):
            raise ConfigError(f"clip_norm must be a positive number or None, got "
                              f"{self.clip_norm!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        self._check_channels()
        if self.model == "cnn" and len(self.hidden) != 1:
            raise ConfigError(f"the cnn has one dense hidden layer: give one size, "
                              f"got {self.hidden!r}")
        for name, low in (("epochs", 0), ("batch_size", 1), ("validation_size", 0),
                          ("shards", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:  # what NumPy's generators accept
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    def _check_channels(self):
        if self.model != "cnn":
            if self.channels not in (None, ()):
                raise ConfigError(f"channels apply to the cnn only, not the {self.model}")
            object.__setattr__(self, "channels", ())
            return
        channels = self.channels
        if channels is None:
            channels = MODEL_DEFAULTS["cnn"]["channels"]
        elif _is_int(channels):
            channels = (channels,)
        if not isinstance(channels, (tuple, list)) or not channels \
                or not all(_is_int(c) and c >= 1 for c in channels):
            raise ConfigError(f"channels must be one or more integers >= 1, got "
                              f"{self.channels!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in channels))


@dataclass
class TrainResult:
    """The trained model (NumPy parameters, standardisation set) and its history.

    ``stopped_early`` is True when a callback ended the run before its last epoch.
    """

    model: Model
    config: TrainConfig
    history: list = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    #: The number of classes of a classifier; None for a regression.
    n_classes: int | None = None

    @property
    def warning(self) -> str | None:
        """Why the run looks like a failure (chance-level accuracy, a loss that grew), or None."""
        return diagnose(self.history, self.n_classes)


def train(config: TrainConfig, train_images, train_labels, val_images=None, val_labels=None,
          *, model: Model | None = None, n_classes: int = 10, on_epoch=None, on_step=None,
          verbose: bool = False, threads="auto", client=None, metrics=None, callbacks=(),
          checkpoint=None, resume=None) -> TrainResult:
    """Train a model with mini-batch gradient descent: ``model``, or the one ``config`` names.

    Each epoch visits every training example once, in an order shuffled by a
    generator seeded with ``config.seed``; the last batch holds the remainder
    (nothing is dropped). Inputs are standardised with the training split's
    mean and std, which the returned model records.

    Parameters
    ----------
    config : TrainConfig
    train_images, train_labels : array-like
        (N, features) or (N, *model.input_shape) floating point; integer class
        labels (N,) in [0, n_classes), or floating point targets (a regression).
    val_images, val_labels : array-like, optional
        Measured after each epoch (the loss by the training loss's own graph,
        and ``metrics``); without them the metrics are measured on the
        training data, and there is no validation loss.
    model : Model, optional
        Any graph to train, with its initial parameters (left unchanged); None
        builds ``config.model`` with ``config.seed``.
    n_classes : int
        The number of classes, where the model's architecture does not say.
    metrics : sequence, optional
        Names from :data:`miniflow.evaluation.METRICS` ("accuracy", "mse",
        "rmse", "mae") or callables ``metric(outputs, targets) -> float``;
        by default accuracy for class labels, RMSE for float targets. Reported
        in each :class:`EpochStats`'s ``metrics``.
    on_epoch : callable, optional
        Called with each epoch's :class:`EpochStats`; returning False (or
        raising :class:`StopTraining`) ends the run after that epoch.
    on_step : callable, optional
        Called after each step with its loss, a 0-d array of the backend
        (``float()`` of it waits for the device); raising StopTraining ends the run.
    callbacks : sequence of callable
        More ``on_epoch`` callbacks, e.g. :class:`EarlyStopping`.
    checkpoint : str or Path, optional
        A checkpoint file written after every epoch (:mod:`miniflow.checkpoint`).
    resume : str or Path, optional
        A checkpoint of this run to continue from: the result is the
        uninterrupted run's.
    verbose : bool
        Print what ``miniflow train`` prints: a line per epoch (with a progress
        bar showing the running loss when stderr is a terminal and tqdm is
        installed), and a warning if the run learned nothing.
    threads : "auto" or int
        BLAS and PyTorch threads (see :class:`miniflow.threads.ThreadPolicy`).
    client : distributed.Client, optional
        Train data-parallel on this Dask cluster's workers, through the same
        loop (see :mod:`miniflow.distributed`).

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError
        The data has the wrong shape, dtype or values.
    ConfigError
        An option the run cannot honour (an unknown metric, a summed loss mixed
        with other terms split into shards, ...).
    TrainingDivergedError
        The loss became NaN or infinite (usually: the learning rate is too high).
    miniflow.BackendUnavailableError
        ``config.backend`` cannot run here.
    """
    epoch_callbacks = [c for c in (on_epoch, *callbacks) if c is not None]
    with Progress(bar=None if verbose else False, lines=verbose) as progress:
        if client is not None:
            result = _train(config, train_images, train_labels, val_images, val_labels,
                            model=model, n_classes=n_classes, metrics=metrics,
                            on_epoch=[progress.epoch, *epoch_callbacks],
                            on_step=[progress.step, on_step], progress=progress, policy=None,
                            client=client, checkpoint=checkpoint, resume=resume)
        else:
            with ThreadPolicy(threads, shards=config.shards) as policy:
                result = _train(config, train_images, train_labels, val_images, val_labels,
                                model=model, n_classes=n_classes, metrics=metrics,
                                on_epoch=[progress.epoch, *epoch_callbacks],
                                on_step=[progress.step, on_step], progress=progress,
                                policy=policy, client=None, checkpoint=checkpoint,
                                resume=resume)
    if verbose and result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    return result


def _chain(callbacks):
    """One callback calling each of ``callbacks`` in turn; False if any returned False."""
    callbacks = [c for c in callbacks if c is not None]

    def all_of(*args):
        keep_going = True
        for callback in callbacks:
            if callback(*args) is False:
                keep_going = False
        return keep_going
    return all_of


def _class_loss(model) -> str | None:
    """The label of a node of ``model.loss`` that takes ``model.labels`` as class indices."""
    for node in topological_order(model.loss):
        for position in getattr(node, "integer_inputs", ()):
            if position < len(node.inputs) and node.inputs[position] is model.labels:
                return node.label
    return None


def _check_split(model, images, labels, what, n_inputs, n_classes):
    images = check_inputs(images if model is None else as_rows(images, model.input_shape, what),
                          what=what, n_inputs=n_inputs)
    labels_array = np.asarray(labels)
    needs_classes = model is None or _class_loss(model)
    if needs_classes and labels_array.dtype.kind == "f":
        taker = "" if model is None else f" (the loss {needs_classes} takes class labels)"
        raise DataError(f"{what}_labels must be integers, got dtype {labels_array.dtype}{taker}")
    return images, check_targets(labels_array, images, what=what, n_classes=n_classes)


def _train(config, train_images, train_labels, val_images, val_labels, *, model, n_classes,
           metrics, on_epoch, on_step, progress, policy, client, checkpoint,
           resume) -> TrainResult:
    """The body of :func:`train`, inside its thread limits and its progress display."""
    if model is not None and model.architecture.get("n_classes"):
        n_classes = model.architecture["n_classes"]
    n_inputs = None if model is None else model.n_inputs
    train_images, train_labels = _check_split(model, train_images, train_labels, "train",
                                              n_inputs, n_classes)
    if len(train_labels) == 0:
        raise DataError("train_images is empty: there is nothing to train on")
    n_inputs = train_images.shape[1]
    has_val = val_images is not None and len(val_images) > 0
    if has_val:
        val_images, val_labels = _check_split(model, val_images, val_labels, "val", n_inputs,
                                              n_classes)
    classes = train_labels.dtype.kind in "iu"
    metrics = default_metrics(train_labels) if metrics is None else check_metrics(metrics)
    if model is None:
        model = build_model(config, n_inputs, n_classes)
    reduction = loss_reduction(model.loss)
    if reduction == "mixed" and config.shards > 1:
        raise ConfigError(f"the loss {model.loss.label} adds a summed loss to other terms: its "
                          f"value over a batch is not a combination of its values over parts "
                          f"of the batch, so it cannot be split into {config.shards} shards; "
                          f"use shards=1, or losses with reduction='mean'")
    mean, std = standardisation(train_images)
    n = len(train_labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr,
                             max(1, config.epochs * steps_per_epoch))
    host = get_backend("numpy")
    if client is not None:
        from .distributed import cluster_training

        if config.backend != "numpy":
            raise ConfigError(f"a cluster runs the numpy backend on each worker; backend "
                              f"{config.backend!r} cannot be combined with it")
        if has_val:
            x_val, y_val = standardise(host, val_images, val_labels, mean, std,
                                       model.input_shape)
        x_train, y_train = standardise(host, train_images, train_labels, mean, std,
                                       model.input_shape)
        step, optimizer = cluster_training(client, model, config, x_train, y_train, schedule,
                                           reduction="sum" if reduction == "sum" else "mean")
        backend, evaluation_map = host, map
    else:
        backend = get_backend(config.backend)
        x_train, y_train = standardise(backend, train_images, train_labels, mean, std,
                                       model.input_shape)
        if has_val:
            x_val, y_val = standardise(backend, val_images, val_labels, mean, std,
                                       model.input_shape)
        optimizer = make_optimizer(config.optimizer, model.params, schedule,
                                   momentum=config.momentum, weight_decay=config.weight_decay,
                                   backend=backend, clip_norm=config.clip_norm)
        compiled = _compiled_steps(config, model, optimizer, backend) if config.compile else None
        step = LocalStep(model, optimizer.nodes, backend, x_train, y_train, shards=config.shards,
                         seed=config.seed, compiled=compiled, policy=policy,
                         reduction="sum" if reduction == "sum" else "mean")
        evaluation_map = step.map

    def validate():
        params = {**optimizer.params, **step.state}
        if has_val:
            return measure(model, params, x_val, y_val, backend, metrics,
                           map=evaluation_map), True
        # The one measure there is to show: the metrics on the training data.
        return measure(model, params, x_train, y_train, backend, metrics, map=evaluation_map,
                       with_loss=False), False

    saved = None
    if resume is not None:
        from .checkpoint import load_checkpoint

        saved = load_checkpoint(resume)
    result = TrainResult(model=model, config=config, n_classes=n_classes if classes else None)
    if policy is not None:
        policy.ready()  # the thread count, from how busy the machine was while the data moved
    done = 0 if saved is None else min(saved["epoch"], config.epochs)
    progress.start((config.epochs - done) * steps_per_epoch)
    started = time.perf_counter()
    try:
        result.history, result.stopped_early = fit(
            step, optimizer, n, epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, validate=validate, on_step=_chain(on_step),
            on_epoch=_chain(on_epoch), reduction="sum" if reduction == "sum" else "mean",
            checkpoint=checkpoint, resume=saved, lr_hint=config.lr,
            threads=None if policy is None else (lambda: policy.threads),
            adapt=None if policy is None else policy.adapt)
        trained = {node: np.asarray(backend.to_numpy(value), dtype=np.float32)
                   for node, value in optimizer.params.items()}
        state = dict(zip(model.state, step.state_arrays()))
    finally:
        step.close()
    result.seconds = time.perf_counter() - started
    if client is not None:
        result.lost_workers = step.lost_events
    result.model = replace(model, params=trained, state=state, input_mean=mean, input_std=std)
    return result


def _compiled_steps(config, model, optimizer, backend):
    """One compiled program per shard: forward and backward compiled once."""
    from .compile import compile as compile_step
    from .compile import untraceable_in_training
    from .nodes import BatchNorm

    reason = untraceable_in_training(model.loss, backend)
    if reason:
        raise ConfigError(f"--compile: {reason}")
    if model.updates or any(isinstance(node, BatchNorm)
                            for node in topological_order(model.loss)):
        raise ConfigError("--compile cannot train a graph with BatchNorm yet (a compiled "
                          "step returns no running statistics); train it without "
                          "--compile")
    # One program per shard: a compiled NumPy step fills buffers of its own and
    # returns them, so two shards must never share one.
    return [compile_step(model.loss, optimizer.nodes, backend) for _ in range(config.shards)]


class LocalStep:
    """The loss and gradients of one batch on this machine: whole, or in row shards run
    in threads. One of the steps :func:`miniflow.loop.fit` drives.

    Parameters
    ----------
    model : Model
    wrt : sequence of Input
        The parameters, in the optimizer's order.
    backend : Backend
    x, y : device arrays, optional
        The training set: ``step(params, batch)`` gathers the batch's rows from
        them (``compute(params, images, labels)`` takes rows given).
    shards : int
        Row shards per batch, computed at once in threads of their own.
    seed : int
        Seeds Dropout's masks: a generator per shard, drawn afresh each epoch
        (:func:`miniflow.loop.epoch_seed`), on the device.
    compiled : list, optional
        One compiled program per shard (``--compile``).
    policy : ThreadPolicy, optional
        Whether the shards run at once (``policy.workers``); None: when there are several.
    reduction : {"mean", "sum"}
        A mean loss's shards are weighted by their rows; a summed loss's added.

    ``state`` holds the model's state arrays (BatchNorm's running statistics)
    on the device: each step feeds them and stores the values of the model's
    ``updates`` that its training run computed (with shards: the shards'
    weighted by their rows).
    """

    def __init__(self, model, wrt, backend, x=None, y=None, *, shards=1, seed=0, compiled=None,
                 policy=None, reduction="mean"):
        self.model, self.wrt, self.backend = model, tuple(wrt), backend
        self.x, self.y, self.seed = x, y, seed
        self.shards, self.compiled, self.policy = shards, compiled, policy
        self.reduction = reduction
        self.state = {node: backend.asarray(value) for node, value in model.state.items()}
        self.pool = None
        if shards > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(shards, thread_name_prefix="miniflow-shard")
        self.begin_epoch(1)

    def begin_epoch(self, epoch: int) -> None:
        """Seed the epoch's random draws (see :func:`miniflow.loop.epoch_seed`)."""
        self.draws = [self.backend.make_rng(s) for s in epoch_seed(self.seed, epoch, self.shards)]

    def state_arrays(self) -> list:
        """The state arrays as host NumPy float32, in ``model.state``'s order."""
        return [np.asarray(self.backend.to_numpy(self.state[node]), dtype=np.float32)
                for node in self.model.state]

    def load_state(self, arrays) -> None:
        """Continue from :meth:`state_arrays`'s values."""
        if len(arrays) != len(self.model.state):
            raise ConfigError(f"the checkpoint holds {len(arrays)} state arrays, the model "
                              f"{len(self.model.state)}")
        self.state = {node: self.backend.asarray(value)
                      for node, value in zip(self.model.state, arrays)}

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()

    def map(self, function, items):
        """``map(function, items)``, on the shards' threads when they run at once."""
        workers = self.shards if self.policy is None else (self.policy.workers or 1)
        if self.pool is not None and workers > 1:
            return self.pool.map(function, items)
        return map(function, items)

    def _one(self, params, images, labels, shard):
        feed = {**params, **self.state, self.model.images: images, self.model.labels: labels}
        if self.compiled is not None:
            return (*self.compiled[shard](feed, training=True, rng=self.draws[shard]), [])
        result = run(self.model.loss, feed, self.wrt, backend=self.backend, training=True,
                     rng=self.draws[shard], extras=list(self.model.updates.values()))
        return result.value, result.grads, result.extras

    def __call__(self, params, batch):
        """Loss and gradients over the training rows ``batch`` (host indices)."""
        xp = self.backend.xp
        index = self.backend.asarray(np.asarray(batch, dtype=np.int64))
        return self.compute(params, xp.take(self.x, index, axis=0),
                            xp.take(self.y, index, axis=0))

    def compute(self, params, images, labels):
        """Loss and gradients over the rows ``images``, ``labels`` (device arrays)."""
        rows = images.shape[0]
        if self.shards == 1:
            loss, grads, extras = self._one(params, images, labels, 0)
            self.state.update(zip(self.model.updates, extras))
            return loss, grads
        bounds = [rows * k // self.shards for k in range(self.shards + 1)]
        jobs = [(params, images[a:b, ...], labels[a:b], shard)
                for shard, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
        parts = list(self.map(lambda job: self._one(*job), jobs))
        # A mean over rows: the batch's is the shards' weighted by their rows. A sum: added.
        shares = [job[1].shape[0] / rows for job in jobs]
        weights = [1.0] * len(jobs) if self.reduction == "sum" else shares
        loss = sum(w * value for w, (value, _, _) in zip(weights, parts))
        grads = [sum(w * grads[i] for w, (_, grads, _) in zip(weights, parts))
                 for i in range(len(self.wrt))]
        # A running statistic's update is linear in the batch's statistic: the shards'
        # updates weighted by their rows are the update by their weighted statistics.
        self.state.update((node, sum(share * extras[i] for share, (_, _, extras)
                                     in zip(shares, parts)))
                          for i, node in enumerate(self.model.updates))
        return loss, grads
