"""Data-parallel training on a Dask cluster: the same graph and executor, one shard per worker.

>>> from miniflow.distributed import connect                          # doctest: +SKIP
>>> client = connect("local:2")          # or "tcp://scheduler:8786"  # doctest: +SKIP
>>> result = train(TrainConfig(), images, labels, client=client)     # doctest: +SKIP

How a run goes:

1. The driver checks the data once (shapes, dtypes, labels in range),
   standardises it, and scatters it to the workers, once: worker k holds the
   rows of shard k. No step sends data again.
2. Each step draws its batch exactly as single-process training does (the
   same seeded permutation). The batch's rows fall into the shards; each
   worker runs ``value_and_grad`` on the NumPy backend over its rows and
   returns the *sums* over those rows (mean times row count). One Dask task
   adds the shards' sums; the driver divides by the batch size. A mean over a
   batch is the row-weighted mean of its parts' means, so the step is the
   single-process step, up to float32 rounding of the summation order.
3. The driver's optimizer updates plain NumPy parameters, which the next
   step's tasks carry to the workers: parameters are concrete arrays after
   every step, and each task graph is a handful of small tasks.

Why Dask futures over the NumPy backend rather than the ``dask.array``
backend: the ``dask.array`` backend builds a lazy graph per step whose
parameters stay lazy unless computed, and whose label check needs a compute
of its own; per shard NumPy has neither cost, and each worker's step is the
ordinary, fast, single-process step. ``bench/cluster.py`` measures both.

Fault tolerance: a step is a pure function of the parameters, so when a
worker dies mid-step the driver re-scatters the shards it held (from its own
copy of the data) to the workers still alive, or to the one its nanny
restarts, and runs the step again: the run finishes with the same result.
With no worker left it stops with a :class:`ClusterError` naming the lost
worker; nothing is saved before training ends, so no half-written model.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from .errors import ClusterError
from .executor import value_and_grad
from .models import mlp

__all__ = ["connect", "cluster_client", "train_on_cluster", "ShardedDataset", "ClusterError",
           "INSTALL_HINT", "BLAS_SINGLE_THREAD"]

INSTALL_HINT = "pip install 'miniflow[dask]'"
#: Environment of a local worker: one BLAS thread, so N workers use N cores,
#: not N times every core.
BLAS_SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1"}
#: Seconds to wait for a worker to (re)join before giving up on the cluster.
WORKER_WAIT_S = 30.0
#: Parameters up to this size travel inside each step's tasks; larger ones are
#: scattered to the workers first.
INLINE_PARAMS_BYTES = 8 * 2**20
#: How many times one step is retried after losing workers before the run stops.
MAX_RETRIES = 3


def _distributed():
    """Import ``distributed``, or say how to install it."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"training on a cluster needs dask and distributed, which are not "
                           f"installed; install them with: {INSTALL_HINT}") from None
    return distributed


def connect(cluster: str, *, timeout: float = WORKER_WAIT_S):
    """A ``distributed.Client`` for ``cluster``.

    Parameters
    ----------
    cluster : str
        ``"local:N"`` starts a ``LocalCluster`` of N worker processes with one
        thread (and one BLAS thread) each; ``"tcp://HOST:PORT"`` (any scheduler
        address) joins a running ``dask scheduler``.
    timeout : float
        Seconds to wait for the scheduler, and for at least one worker.

    Returns
    -------
    distributed.Client
        Close it when done: a local cluster stops with its client.

    Raises
    ------
    ClusterError
        Bad spec, dask missing, or no scheduler or worker within ``timeout``.
    """
    distributed = _distributed()
    if cluster.startswith("local:"):
        count = cluster[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"expected local:N with N >= 1 workers, got {cluster!r}")
        # The Client starts the LocalCluster and stops it when closed. The dashboard
        # takes any free port: the default 8787 is often held by another cluster.
        client = distributed.Client(n_workers=int(count), threads_per_worker=1, processes=True,
                                    dashboard_address=":0", env=BLAS_SINGLE_THREAD,
                                    silence_logs=logging.ERROR)
    elif "://" in cluster:
        try:
            client = distributed.Client(cluster, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    else:
        raise ClusterError(f"unknown cluster {cluster!r}: use local:N to start N local "
                           f"workers, or a scheduler address such as tcp://host:8786")
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise ClusterError(f"the scheduler at {cluster} has no workers after {timeout:g} s; "
                           f"start some with: dask worker {client.scheduler.address}") from None
    return client


@contextmanager
def cluster_client(cluster: str | None):
    """``connect(cluster)`` for a ``with`` block, then close it; None yields None."""
    if cluster is None:
        yield None
        return
    client = connect(cluster)
    try:
        yield client
    finally:
        # Shutting down, the scheduler logs each worker it retires at INFO: noise here.
        logger = logging.getLogger("distributed")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            client.close()
        finally:
            logger.setLevel(level)


def _workers(client) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


# -- what runs on the workers ---------------------------------------------------------

# Per worker process: the graph of each architecture, built once. Graphs are
# rebuilt from their JSON-able architecture rather than pickled with every task.
_MODELS: dict = {}


def _worker_model(architecture: tuple):
    model = _MODELS.get(architecture)
    if model is None:
        hidden, activation, n_inputs, n_classes = architecture
        model = _MODELS[architecture] = mlp(hidden, activation, n_inputs=n_inputs,
                                            n_classes=n_classes)
    return model


def _shard_sums(architecture, shard, rows, params):
    """Loss and gradients over ``shard``'s ``rows``, each summed over the rows (not averaged)."""
    images, labels = shard
    model = _worker_model(architecture)
    feed = dict(zip(model.params, params))
    feed[model.images], feed[model.labels] = images[rows], labels[rows]
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported per epoch
        loss, grads = value_and_grad(model.loss, feed, list(model.params), backend="numpy")
        count = np.float32(len(rows))
        return float(loss) * len(rows), [grad * count for grad in grads]


def _add_sums(*parts):
    """The elementwise total of several ``_shard_sums`` results."""
    loss = sum(part[0] for part in parts)
    grads = [sum(grads) for grads in zip(*(part[1] for part in parts))]
    return loss, grads


# -- the driver -----------------------------------------------------------------------

class ShardedDataset:
    """A training set scattered over a cluster's workers, one shard of rows each.

    Parameters
    ----------
    client : distributed.Client
    images, labels : numpy.ndarray
        Checked and standardised; kept on the driver too, to re-scatter a
        shard whose worker is lost.
    """

    def __init__(self, client, images: np.ndarray, labels: np.ndarray):
        self.client, self.images, self.labels = client, images, labels
        #: The workers when the shards were last placed: those missing later are lost.
        self.workers = _workers(client)
        if not self.workers:
            raise ClusterError("the cluster has no workers")
        #: Shard k holds rows bounds[k]:bounds[k+1].
        self.bounds = np.linspace(0, len(labels), len(self.workers) + 1).astype(np.int64)
        self.futures = [self._scatter(k, worker) for k, worker in enumerate(self.workers)]
        #: One entry per recovery: the workers lost, the shards re-scattered, the error.
        self.lost_events: list[dict] = []

    def _scatter(self, k: int, worker: str):
        """Shard k's images and labels onto ``worker``: a pair of futures."""
        lo, hi = self.bounds[k], self.bounds[k + 1]
        # hash=False: no hashing of the data; the key is unique anyway.
        return tuple(self.client.scatter([self.images[lo:hi], self.labels[lo:hi]],
                                         workers=[worker], hash=False))

    def split(self, batch: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, rows within it)`` for each shard holding rows of ``batch`` (global indices)."""
        owner = np.searchsorted(self.bounds, batch, side="right") - 1
        return [(k, batch[owner == k] - self.bounds[k]) for k in range(len(self.futures))
                if np.any(owner == k)]

    def recover(self) -> tuple[list[str], list[int]]:
        """Re-scatter every shard whose data is lost to the workers alive.

        Returns the workers gone since the shards were placed, and the shards
        re-scattered. Raises TimeoutError when no worker joins within WORKER_WAIT_S.
        """
        alive = _workers(self.client)
        gone = sorted(set(self.workers) - set(alive))
        if not alive:
            try:
                self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except TimeoutError:
                raise ClusterError(f"lost worker(s) {', '.join(gone)} and no worker is left "
                                   f"to finish the run") from None
            alive = _workers(self.client)
        lost = []
        for k, futures in enumerate(self.futures):
            # Scattered data has no recipe to recompute it: Dask forgets it with its worker.
            if any(future.status != "finished" for future in futures):
                lost.append(k)
                self.futures[k] = self._scatter(k, alive[k % len(alive)])
        self.workers = alive
        return gone, lost


def _step(client, data: ShardedDataset, architecture, params, batch):
    """Summed loss and summed gradients over ``batch`` (global row indices), on the cluster."""
    if sum(param.nbytes for param in params) > INLINE_PARAMS_BYTES:
        # One copy per worker, sent before the tasks: an extra round trip, but
        # no task graph over Dask's large-graph warning threshold (10 MB).
        params = client.scatter(params, broadcast=True, hash=False, timeout=WORKER_WAIT_S)
    # Otherwise the parameters travel inside the tasks, with no extra round trip
    # (measured: about 2x less overhead per small step than scattering them first).
    parts = [client.submit(_shard_sums, architecture, data.futures[k], rows, params, pure=False)
             for k, rows in data.split(batch)]
    total = parts[0] if len(parts) == 1 else client.submit(_add_sums, *parts, pure=False)
    return total.result()


def _lost_worker(exc) -> bool:
    """Whether ``exc`` is how Dask reports a worker (or the data it held) gone mid-step."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    # OSError covers CommClosedError: a connection to the dead worker dropped.
    return isinstance(exc, (KilledWorker, CancelledError, OSError))


def _robust_step(client, data, architecture, params, batch):
    """:func:`_step`, run again on the surviving workers when a worker is lost mid-step."""
    for attempt in range(MAX_RETRIES + 1):
        try:
            return _step(client, data, architecture, params, batch)
        except Exception as exc:  # noqa: BLE001 - only the cluster's own failures are retried
            if not _lost_worker(exc):
                raise
            gone, lost = data.recover()
            data.lost_events.append({"workers": gone, "shards": lost, "error": repr(exc)})
            if attempt == MAX_RETRIES:
                raise ClusterError(f"a step failed {attempt + 1} times on the cluster; lost "
                                   f"worker(s): {', '.join(gone) or 'none'} "
                                   f"({type(exc).__name__}: {exc})") from exc
    raise AssertionError("unreachable")


def train_on_cluster(client, config, train_images, train_labels, val_images=None,
                     val_labels=None, *, n_classes: int = 10, on_epoch=None, on_step=None):
    """Data-parallel :func:`miniflow.train.train` on ``client``'s workers: same arguments, result.

    Called by ``train(..., client=client)``. Returns a :class:`miniflow.train.TrainResult`
    whose model holds NumPy parameters; ``result.lost_workers`` lists any
    worker losses the run survived.

    Raises
    ------
    ClusterError
        Every worker was lost, or a step kept failing on the cluster.
    """
    from .backends import get_backend
    from .optim import make_optimizer, make_schedule
    from .train import (ConfigError, DataError, EpochStats, TrainingDivergedError, TrainResult,
                        _count_correct, _standardisation, _to_device, check_data)

    _distributed()
    if config.backend != "numpy":
        raise ConfigError(f"a cluster runs the numpy backend on each worker; backend "
                          f"{config.backend!r} cannot be combined with it")
    # Checked once, here, on the host: no step checks labels or pays a round trip for it.
    train_images, train_labels = check_data(train_images, train_labels, what="train",
                                            n_classes=n_classes)
    if len(train_labels) == 0:
        raise DataError("train_images is empty: there is nothing to train on")
    n, n_inputs = train_images.shape
    has_val = val_images is not None and len(val_images) > 0
    if has_val:
        val_images, val_labels = check_data(val_images, val_labels, what="val",
                                            n_inputs=n_inputs, n_classes=n_classes)

    host = get_backend("numpy")
    mean, std = _standardisation(train_images)
    data = ShardedDataset(client, *_to_device(host, train_images, train_labels, mean, std))
    if has_val:
        x_val, val_labels = _to_device(host, val_images, val_labels, mean, std)

    model = mlp(config.hidden, config.activation, n_inputs=n_inputs, n_classes=n_classes,
                seed=config.seed)
    architecture = (config.hidden, config.activation, n_inputs, n_classes)
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, max(1, config.epochs * steps_per_epoch))
    optimizer = make_optimizer(config.optimizer, model.params, schedule,
                               momentum=config.momentum, backend="numpy")
    result = TrainResult(model=model, config=config)
    rng = np.random.default_rng(config.seed)  # the same draws as single-process training
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start, lr, total = time.perf_counter(), optimizer.lr, 0.0
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            params = [optimizer.params[node] for node in optimizer.nodes]
            loss_sum, grad_sums = _robust_step(client, data, architecture, params, batch)
            scale = np.float32(1 / len(batch))
            optimizer.step([grad * scale for grad in grad_sums])
            total += loss_sum
            if on_step is not None:
                on_step(None)  # the loss lives on a worker: reading it would cost a round trip
        loss = total / n
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss} in epoch {epoch}: the learning rate "
                f"{config.lr:g} is probably too high; try a lower one, e.g. {config.lr / 10:g}")
        val_accuracy = None
        if has_val:  # on the driver, with the concrete parameters: no cluster round trip
            correct = _count_correct(model, optimizer.params, x_val, val_labels,
                                     host)
            val_accuracy = int(correct) / len(val_labels)
        stats = EpochStats(epoch, config.epochs, loss, val_accuracy,
                           time.perf_counter() - epoch_start, lr)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    result.seconds = time.perf_counter() - started
    result.lost_workers = data.lost_events
    trained = {node: np.asarray(value, dtype=np.float32)
               for node, value in optimizer.params.items()}
    result.model = replace(model, params=trained, input_mean=mean, input_std=std)
    return result

