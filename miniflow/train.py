"""Train any classifier graph on any backend: shuffled mini-batches, validation each epoch.

>>> from miniflow.datasets import load_mnist                     # doctest: +SKIP
>>> mnist = load_mnist()                                          # doctest: +SKIP
>>> result = train(TrainConfig(), mnist.train_images, mnist.train_labels,
...                mnist.val_images, mnist.val_labels)            # doctest: +SKIP
>>> evaluate_model(result.model, mnist.test_images, mnist.test_labels)  # doctest: +SKIP
0.9808

``train(config, ..., model=my_model)`` trains any graph wrapped in a
:class:`~miniflow.models.Model` (its loss, logits, data Inputs and parameter
Inputs with their initial arrays); without ``model`` it builds the ready-made
one ``config.model`` names ("mlp" or "cnn").

The data and the parameters move to the backend once; each step slices its
batch on the device, and only scalars (the epoch's loss, the number of
correct predictions) come back to the host, once per epoch. On a GPU this is
what keeps the device busy instead of waiting on the host.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .backends import backend_names, get_backend
from .errors import ConfigError, DataError, TrainingDivergedError
from .executor import evaluate, run
from .graph import Input, topological_order
from .models import ACTIVATIONS, Model, cnn, hidden_sizes, mlp
from .optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from .progress import Progress, diagnose
from .threads import ThreadPolicy

__all__ = ["TrainConfig", "EpochStats", "TrainResult", "train", "evaluate_model",
           "check_data", "ConfigError", "DataError", "TrainingDivergedError", "DEFAULT_LR",
           "MODELS", "MODEL_DEFAULTS", "predict_proba"]

#: The learning rate each optimizer uses when none is given.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "adam": 0.001, "rmsprop": 0.001}
#: The ready-made models ``TrainConfig.model`` names.
MODELS = ("mlp", "cnn")
#: What each model trains with when the config leaves a setting at None. The CNN's
#: (Adam with a one-cycle schedule, batches of 64, 3 epochs) reach 99.2% test
#: accuracy on MNIST (see the README for the seeds measured).
MODEL_DEFAULTS = {
    "mlp": {"hidden": (256,), "optimizer": "nesterov", "schedule": "cosine", "epochs": 10,
            "lr": None, "batch_size": 128, "shards": 1},
    "cnn": {"channels": (32, 64), "hidden": (128,), "optimizer": "adam", "schedule": "onecycle",
            "epochs": 3, "lr": 0.003, "batch_size": 64, "shards": 2},
}
#: Rows per forward pass when measuring accuracy: large batches amortise the
#: per-call overhead, and 10,000 rows of 784 float32 take only 31 MB.
EVAL_BATCH_SIZE = 10_000
#: The same for models of images: a convolution's columns hold kh*kw values per
#: channel and pixel, 2.3 GB for 10,000 MNIST images in the CNN's second
#: convolution, and evaluating them took 2.6x as long as in batches of 1,000.
EVAL_BATCH_SIZE_IMAGES = 1_000


def eval_batch_size(model: Model) -> int:
    """Rows per forward pass when measuring ``model``: fewer for models of images."""
    return EVAL_BATCH_SIZE if len(model.input_shape) <= 1 else EVAL_BATCH_SIZE_IMAGES


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
    shards : int
        Split each batch into this many row shards, computed at once in
        threads of their own (NumPy and BLAS release the GIL), each with its
        share of the BLAS threads; the step's loss and gradients are the
        shards' weighted by their rows. The loss must be a mean over the rows
        (the ready-made models' is). With up to ``shards`` threads the result
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


@dataclass(frozen=True)
class EpochStats:
    """What one epoch achieved.

    ``loss`` is the mean training loss over the epoch's examples;
    ``val_accuracy`` a fraction in [0, 1] and ``val_loss`` the mean loss on the
    validation data, both None without it; ``train_accuracy`` the accuracy on
    the training data after the epoch, measured only when there is no
    validation data (else None); ``seconds`` the epoch's wall time, validation
    included; ``threads`` the BLAS threads it ran with (None: not limited).
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


@dataclass
class TrainResult:
    """The trained model (NumPy parameters, standardisation set) and its history."""

    model: Model
    config: TrainConfig
    history: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def warning(self) -> str | None:
        """Why the run looks like a failure (chance-level accuracy, a loss that grew), or None."""
        return diagnose(self.history, self.model.n_classes)


def check_data(images, labels, *, what: str = "train", n_inputs: int | None = None,
               n_classes: int = 10):
    """Check a split's images and labels; return them as float32 / int64 NumPy arrays.

    Parameters
    ----------
    images : array-like
        (examples, features), floating point: e.g. pixels scaled to [0, 1].
    labels : array-like
        (examples,), integers in [0, n_classes).
    what : str
        The split's name ("train", "val", "test"), used in messages.
    n_inputs : int, optional
        The number of features the model takes; None accepts any.

    Raises
    ------
    DataError
        Naming the array, its shape and what was expected.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    name, label_name = f"{what}_images", f"{what}_labels"
    if images.ndim != 2:
        hint = (" (flatten each image first: images.reshape(len(images), -1))"
                if images.ndim > 2 else "")
        raise DataError(f"{name} must be a 2-D array (examples, features), got shape "
                        f"{images.shape}{hint}")
    if n_inputs is not None and images.shape[1] != n_inputs:
        raise DataError(f"{name} has shape {images.shape}: {images.shape[1]} features per "
                        f"example, but the model takes {n_inputs}")
    if images.dtype.kind != "f":
        hint = f" (divide by {np.iinfo(images.dtype).max})" if images.dtype.kind == "u" else ""
        raise DataError(f"{name} must be floating point (e.g. float32 pixels in [0, 1]), "
                        f"got dtype {images.dtype}{hint}")
    if labels.ndim != 1:
        raise DataError(f"{label_name} must be a 1-D array of class indices, got shape "
                        f"{labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{label_name} must be integers, got dtype {labels.dtype}")
    if len(labels) != len(images):
        raise DataError(f"{name} has {len(images)} examples (shape {images.shape}) but "
                        f"{label_name} has {len(labels)} (shape {labels.shape})")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{label_name} must lie in [0, {n_classes}), got values from "
                        f"{labels.min()} to {labels.max()}")
    if not np.isfinite(images).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return images.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)


def _standardisation(images: np.ndarray) -> tuple[float, float]:
    """One mean and one std over all training pixels.

    A single pair rather than one per pixel: MNIST's border pixels are almost
    always 0, and dividing by their tiny std would blow up the rare nonzero ones.
    """
    # float32 is accurate enough here (NumPy sums pairwise) and 2x faster than float64.
    mean, std = float(images.mean()), float(images.std())
    return mean, (std if std > 0 else 1.0)


def _to_device(backend, images, labels, mean, std, shape=None):
    """Standardise a split on the host, then move it to the backend, once.

    ``shape`` (one example's, e.g. (1, 28, 28)) reshapes the rows of features.
    """
    standardised = np.subtract(images, mean, dtype=np.float32)
    standardised *= 1.0 / std  # in place: this copy is ours, and big
    if shape is not None:
        standardised = standardised.reshape(len(standardised), *shape)
    return backend.asarray(standardised), backend.asarray(labels)


def _flat(images, model, what):
    """Images given in the model's example shape, (N, *input_shape), as rows of features."""
    images = np.asarray(images)
    if images.ndim > 2 and tuple(images.shape[1:]) == model.input_shape:
        return images.reshape(len(images), -1)
    if images.ndim > 2:
        raise DataError(f"{what}_images has shape {images.shape}, but the model takes "
                        f"examples of shape {model.input_shape} (or rows of "
                        f"{model.n_inputs} features)")
    return images


def build_model(config: TrainConfig, n_inputs: int, n_classes: int) -> Model:
    """The ready-made model ``config`` describes, initialised with ``config.seed``."""
    if config.model == "cnn":
        side = math.isqrt(n_inputs)
        if side * side != n_inputs:
            raise DataError(f"the cnn takes square one-channel images, but the data has "
                            f"{n_inputs} features per example")
        return cnn(config.channels, config.hidden[0], image_shape=(1, side, side),
                   n_classes=n_classes, seed=config.seed)
    return mlp(config.hidden, config.activation, n_inputs=n_inputs, n_classes=n_classes,
               seed=config.seed)


def _count_correct(model, params, x, y, backend, batch_size=None, *, with_loss=False,
                   map=map):
    """The number of rows of x whose predicted class is y, as a device scalar.

    With ``with_loss``, a pair: that number and the loss summed over the rows.
    ``batch_size`` None takes :func:`eval_batch_size`; ``map`` may run the
    batches in parallel (a thread pool's).
    """
    xp = backend.xp
    n = x.shape[0]
    batch_size = batch_size or eval_batch_size(model)
    if with_loss:
        # The model's loss node once more, fed the logits computed below: the loss
        # costs no second forward pass through the network.
        scored = Input(name="logits")
        loss_of_logits = type(model.loss)(scored, model.labels)

    def score(start):
        # Slices must stop inside the array: the standard leaves longer ones unspecified.
        stop = min(start + batch_size, n)
        feed = {**params, model.images: x[start:stop, ...]}
        logits = evaluate(model.logits, feed, backend=backend)
        hits = xp.count_nonzero(xp.argmax(logits, axis=-1) == y[start:stop])
        if not with_loss:
            return hits, 0
        batch_loss = evaluate(loss_of_logits, {scored: logits, model.labels: y[start:stop]},
                              backend=backend)
        return hits, batch_loss * (stop - start)

    correct, loss = 0, 0
    for hits, batch_loss in map(score, range(0, n, batch_size)):
        correct, loss = correct + hits, loss + batch_loss
    return (correct, loss) if with_loss else correct


def train(config: TrainConfig, train_images, train_labels, val_images=None, val_labels=None,
          *, model: Model | None = None, n_classes: int = 10, on_epoch=None, on_step=None,
          verbose: bool = False, threads="auto", client=None) -> TrainResult:
    """Train a model with mini-batch gradient descent: ``model``, or the one ``config`` names.

    Each epoch visits every training example once, in an order shuffled by a
    generator seeded with ``config.seed``; the last batch holds the remainder
    (nothing is dropped). Inputs are standardised with the training split's
    mean and std, which the returned model records.

    Parameters
    ----------
    config : TrainConfig
    train_images, train_labels : array-like
        (N, features) floating point and (N,) integer labels in [0, n_classes).
    val_images, val_labels : array-like, optional
        Measured after each epoch; without them ``val_accuracy`` is None.
    model : Model, optional
        Any graph to train, with its initial parameters (left unchanged); None
        builds ``config.model`` with ``config.seed``. Images may also be given in
        the model's example shape (N, *model.input_shape).
    n_classes : int
        The number of classes.
    on_epoch : callable, optional
        Called with each epoch's :class:`EpochStats`.
    on_step : callable, optional
        Called after each step with its mean loss, a 0-d array of the backend
        (e.g. to advance a progress bar; ``float()`` of it waits for the device).
    verbose : bool
        Print what ``miniflow train`` prints: a line per epoch (with a progress
        bar when stderr is a terminal and tqdm is installed), and a warning if
        the run learned nothing (see :attr:`TrainResult.warning`).
    threads : "auto" or int
        BLAS and PyTorch threads (see :class:`miniflow.threads.ThreadPolicy`):
        "auto" uses the cores other processes leave free, looking again after
        every epoch; a number fixes it, and makes the run repeat exactly.
    client : distributed.Client, optional
        Train data-parallel on this Dask cluster's workers, with the same result
        (see :mod:`miniflow.distributed`).

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError
        The data has the wrong shape, dtype or values.
    TrainingDivergedError
        The loss became NaN or infinite (usually: the learning rate is too high).
    miniflow.BackendUnavailableError
        ``config.backend`` cannot run here.
    miniflow.threads.ThreadsError
        ``threads`` is not "auto" or a positive integer.
    """
    if client is not None:
        from .distributed import train_on_cluster

        if model is not None or config.model != "mlp":
            raise ConfigError("training on a cluster supports the ready-made MLP only "
                              f"(not {config.model if model is None else 'a given model'})")

        with Progress(bar=None if verbose else False, lines=verbose) as progress:
            return train_on_cluster(client, config, train_images, train_labels, val_images,
                                    val_labels, n_classes=n_classes,
                                    on_epoch=_chain(progress.epoch, on_epoch),
                                    on_step=_chain(progress.step, on_step))
    with ThreadPolicy(threads, shards=config.shards) as policy, \
            Progress(bar=None if verbose else False, lines=verbose) as progress:
        result = _train(config, train_images, train_labels, val_images, val_labels,
                        model=model, n_classes=n_classes,
                        on_epoch=_chain(progress.epoch, on_epoch),
                        on_step=_chain(progress.step, on_step), progress=progress,
                        policy=policy)
    if verbose and result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    return result


def _chain(first, second):
    """One callback calling ``first``, then ``second`` (if any) with the same arguments."""
    if second is None:
        return first

    def both(*args):
        first(*args)
        second(*args)
    return both


def _train(config, train_images, train_labels, val_images, val_labels, *, model, n_classes,
           on_epoch, on_step, progress, policy) -> TrainResult:
    """The body of :func:`train`, inside its thread limits and its progress display."""
    if model is not None:
        train_images = _flat(train_images, model, "train")
        if val_images is not None:
            val_images = _flat(val_images, model, "val")
    train_images, train_labels = check_data(
        train_images, train_labels, what="train", n_classes=n_classes,
        n_inputs=None if model is None else model.n_inputs)
    if len(train_labels) == 0:
        raise DataError("train_images is empty: there is nothing to train on")
    n_inputs = train_images.shape[1]
    has_val = val_images is not None and len(val_images) > 0
    if has_val:
        val_images, val_labels = check_data(val_images, val_labels, what="val",
                                            n_inputs=n_inputs, n_classes=n_classes)

    if model is None:
        model = build_model(config, n_inputs, n_classes)
    backend = get_backend(config.backend)
    mean, std = _standardisation(train_images)
    x_train, y_train = _to_device(backend, train_images, train_labels, mean, std,
                                  model.input_shape)
    if has_val:
        x_val, y_val = _to_device(backend, val_images, val_labels, mean, std,
                                  model.input_shape)

    n = len(train_labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr,
                             max(1, config.epochs * steps_per_epoch))
    optimizer = make_optimizer(config.optimizer, model.params, schedule,
                               momentum=config.momentum, weight_decay=config.weight_decay,
                               backend=backend)
    compiled = None
    if config.compile:  # forward and backward compiled once; the optimizer runs as usual
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
        compiled = [compile_step(model.loss, optimizer.nodes, backend)
                    for _ in range(config.shards)]
    result = TrainResult(model=model, config=config)
    rng = np.random.default_rng(config.seed)
    step = _Step(model, optimizer.nodes, backend, config.shards, config.seed, compiled, policy)
    step.state = {node: backend.asarray(value) for node, value in model.state.items()}
    policy.ready()  # the thread count, from how busy the machine was while the data moved
    progress.start(config.epochs * steps_per_epoch)
    started = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.lr
            # A diverging run is caught below, once per epoch, and explained; NumPy's
            # overflow warnings from every operation on the way would only bury that.
            with np.errstate(over="ignore", invalid="ignore"):
                total = _train_epoch(step, optimizer, backend, x_train, y_train,
                                     backend.asarray(rng.permutation(n)), config.batch_size,
                                     on_step)
            # The epoch's one trip to the host for the loss.
            loss = float(total) / n
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss} in epoch {epoch}: the learning rate "
                    f"{config.lr:g} is probably too high; try a lower one, e.g. "
                    f"{config.lr / 10:g}")
            val_accuracy = val_loss = train_accuracy = None
            if has_val:
                correct, val_total = _count_correct(model, {**optimizer.params, **step.state},
                                                    x_val, y_val,
                                                    backend, with_loss=True, map=step.map)
                val_accuracy = int(correct) / len(val_labels)
                val_loss = float(val_total) / len(val_labels)
            else:  # the one accuracy there is to show
                train_accuracy = int(_count_correct(model, {**optimizer.params, **step.state},
                                                    x_train, y_train, backend,
                                                    map=step.map)) / n
            stats = EpochStats(epoch, config.epochs, loss, val_accuracy,
                               time.perf_counter() - epoch_start, lr, val_loss=val_loss,
                               train_accuracy=train_accuracy, threads=policy.threads)
            policy.adapt()  # the next epoch takes the cores that are free now
            result.history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
    finally:
        step.close()
    result.seconds = time.perf_counter() - started

    trained = {node: np.asarray(backend.to_numpy(value), dtype=np.float32)
               for node, value in optimizer.params.items()}
    state = {node: np.asarray(backend.to_numpy(value), dtype=np.float32)
             for node, value in step.state.items()}
    result.model = replace(model, params=trained, state=state, input_mean=mean, input_std=std)
    return result


class _Step:
    """The loss and gradients of one training batch: whole, or in row shards run in threads.

    Dropout's masks are drawn on the device from generators of their own (one
    per shard), so the shuffling stays what it is for graphs without dropout.
    ``state`` holds the model's state arrays (BatchNorm's running statistics) on
    the device: each step feeds them and stores the values of the model's
    ``updates`` that its training run computed (with shards: the shards'
    weighted by their rows, as the loss).
    """

    def __init__(self, model, wrt, backend, shards, seed, compiled, policy):
        self.model, self.wrt, self.backend = model, wrt, backend
        self.shards, self.compiled, self.policy = shards, compiled, policy
        if shards == 1:
            self.draws = [backend.make_rng(seed)]
        else:
            seeds = np.random.SeedSequence(seed).spawn(shards)
            self.draws = [backend.make_rng(int(s.generate_state(1)[0])) for s in seeds]
        self.state = {}
        self.pool = None
        if shards > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(shards, thread_name_prefix="miniflow-shard")

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()

    def map(self, function, items):
        """``map(function, items)``, on the shards' threads when they run at once."""
        if (self.policy.workers or 1) > 1:
            return self.pool.map(function, items)
        return map(function, items)

    def _one(self, params, images, labels, shard):
        feed = {**params, **self.state, self.model.images: images, self.model.labels: labels}
        if self.compiled is not None:
            return (*self.compiled[shard](feed, training=True, rng=self.draws[shard]), [])
        result = run(self.model.loss, feed, self.wrt, backend=self.backend, training=True,
                     rng=self.draws[shard], extras=list(self.model.updates.values()))
        return result.value, result.grads, result.extras

    def __call__(self, params, images, labels):
        rows = images.shape[0]
        if self.shards == 1:
            loss, grads, extras = self._one(params, images, labels, 0)
            self.state.update(zip(self.model.updates, extras))
            return loss, grads
        bounds = [rows * k // self.shards for k in range(self.shards + 1)]
        jobs = [(params, images[a:b, ...], labels[a:b], shard)
                for shard, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
        parts = list(self.map(lambda job: self._one(*job), jobs))
        # The loss is a mean over rows: the batch's is the shards' weighted by their rows.
        shares = [job[1].shape[0] / rows for job in jobs]
        loss = sum(share * value for share, (value, _, _) in zip(shares, parts))
        grads = [sum(share * grads[i] for share, (_, grads, _) in zip(shares, parts))
                 for i in range(len(self.wrt))]
        # A running statistic's update is linear in the batch's statistic: the shards'
        # updates weighted by their rows are the update by their weighted statistics.
        self.state.update((node, sum(share * extras[i] for share, (_, _, extras)
                                     in zip(shares, parts)))
                          for i, node in enumerate(self.model.updates))
        return loss, grads


def _train_epoch(step, optimizer, backend, x, y, order, batch_size, on_step):
    """One pass over (x, y) in ``order`` (a device array of indices); return the summed loss.

    Each batch is gathered with ``take``: on NumPy this measured ~2x faster
    than permuting the whole set once per epoch and slicing it (and needs no
    second copy of the data). The loss stays on the device (a 0-d array):
    converting it to a Python float every step would make the host wait for
    the device every step.
    """
    xp = backend.xp
    n, total = order.shape[0], 0.0
    for start in range(0, n, batch_size):
        # Slices must stop inside the array: the standard leaves longer ones unspecified.
        batch = order[start:min(start + batch_size, n)]
        loss, grads = step(optimizer.params, xp.take(x, batch, axis=0),
                           xp.take(y, batch, axis=0))
        optimizer.step(grads)
        total = total + loss * batch.shape[0]
        if on_step is not None:
            on_step(loss)
    return total


def evaluate_model(model: Model, images, labels, *, backend="numpy",
                   batch_size: int | None = None, threads="auto") -> float:
    """The fraction of ``images`` that ``model`` classifies as ``labels``.

    Applies the model's own standardisation, so a trained or loaded model
    sees its inputs exactly as during training. ``threads`` is as for :func:`train`;
    ``batch_size`` None takes :func:`eval_batch_size`.
    """
    images, labels = check_data(_flat(images, model, "test"), labels, what="test",
                                n_inputs=model.n_inputs,
                                n_classes=model.n_classes)
    if len(labels) == 0:
        raise DataError("test_images is empty: there is nothing to evaluate")
    backend = get_backend(backend)
    with ThreadPolicy(threads) as policy:
        x, y = _to_device(backend, images, labels, model.input_mean, model.input_std,
                          model.input_shape)
        params = {node: backend.asarray(value)
                  for node, value in (*model.params.items(), *model.state.items())}
        policy.ready()
        return int(_count_correct(model, params, x, y, backend, batch_size)) / len(labels)


def predict_proba(model: Model, images, *, backend="numpy",
                  batch_size: int | None = None):
    """Class probabilities (N, n_classes), NumPy float32, for raw ``images``.

    ``images``: (N, features) or (N, *model.input_shape), floating point as
    in training (e.g. pixels in [0, 1]); the model's standardisation is applied.
    """
    from .nodes import softmax

    images = _flat(images, model, "predict")
    if images.ndim != 2 or images.shape[1] != model.n_inputs:
        raise DataError(f"predict_images has shape {images.shape}, but the model takes "
                        f"examples of shape {model.input_shape} (or rows of "
                        f"{model.n_inputs} features)")
    images, _ = check_data(images, np.zeros(len(images), np.int64), what="predict",
                           n_inputs=model.n_inputs)
    backend = get_backend(backend)
    x, _ = _to_device(backend, images, np.zeros(0, np.int64), model.input_mean,
                      model.input_std, model.input_shape)
    params = {node: backend.asarray(value)
              for node, value in (*model.params.items(), *model.state.items())}
    batch_size = batch_size or eval_batch_size(model)
    chunks = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        logits = evaluate(model.logits, {**params, model.images: x[start:stop, ...]},
                          backend=backend)
        chunks.append(np.asarray(backend.to_numpy(softmax(backend.xp, logits))))
    if not chunks:
        return np.zeros((0, model.n_classes), np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
