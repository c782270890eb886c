"""Data-parallel training on a Dask cluster: the same loop, a step whose shards run on workers.

>>> from miniflow.distributed import connect                          # doctest: +SKIP
>>> client = connect("local:2")          # or "tcp://scheduler:8786"  # doctest: +SKIP
>>> result = train(TrainConfig(), images, labels, client=client)     # doctest: +SKIP

``train(..., client=client)`` runs :func:`miniflow.loop.fit`, the loop every
run uses, with a :class:`ClusterStep`. How a run goes:

1. The driver checks the data once (shapes, dtypes, labels in range),
   standardises it, and scatters it to the workers, once: worker k holds the
   rows of shard k. No step sends data again.
2. Each worker gets the model once and builds a *replica*: the parameters and
   an optimizer of the run's kind (weight decay, schedule, clipping: the
   optimizer's own code), with the optimizer's state. Nothing of them travels
   per step.
3. Each step draws its batch exactly as single-process training does (the
   same seeded permutation). Each worker computes the loss and gradients over
   its rows of the batch on the NumPy backend, as sums over its rows (for a
   mean loss: mean times rows); one task adds the shards' sums; every replica
   then applies the same update from that total, so the replicas stay equal,
   bit for bit. The driver receives one number per step, the loss.
4. After each epoch the driver fetches the parameters from one replica, to
   validate (on the driver) and, at the end, to return the model.

A mean over a batch is the row-weighted mean of its parts' means, so the step
is the single-process step, up to float32 rounding of the summation order.

Fault tolerance: the replicas are a deterministic function of the state at
the epoch's start (which the driver fetches then) and the batches since. When
a worker dies, the driver re-scatters the shards it held (from its own copy of
the data) to the workers alive, rebuilds every replica from the epoch's start,
replays the epoch's batches so far and runs the step again: the run finishes
with the same result. With no worker left it stops with a
:class:`ClusterError` naming the lost worker; nothing is saved before training
ends, so no half-written model.
"""
from __future__ import annotations

import itertools
import logging
import threading
from contextlib import contextmanager

import numpy as np

from .errors import ClusterError, ConfigError, WorkerGoneError
from .executor import run
from .loop import epoch_seed

__all__ = ["connect", "cluster_client", "cluster_training", "ClusterStep", "ClusterOptimizer",
           "WorkerGoneError",
           "ShardedDataset", "ClusterError", "INSTALL_HINT", "BLAS_SINGLE_THREAD"]

INSTALL_HINT = "pip install 'miniflow[dask]'"
#: Environment of a local worker: one BLAS thread, so N workers use N cores,
#: not N times every core.
BLAS_SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1"}
#: Seconds to wait for a worker to (re)join before giving up on the cluster.
WORKER_WAIT_S = 30.0
#: Seconds beyond the timeout that connecting may take before it is given up.
CONNECT_GRACE_S = 5.0
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
        client = _reach(distributed, cluster, timeout)
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


def _reach(distributed, address: str, timeout: float):
    """A Client of the scheduler at ``address``, or a ClusterError within about ``timeout`` s.

    Dask's own timeout does not cover every way a connection fails: a port that
    accepts and never answers hung it, and a service of another kind answering
    gave an out-of-memory error (its reply read as a frame length). So the
    Client is made in a thread of its own, waited for at most ``timeout`` plus a
    grace, and any failure is reported as what it is: no scheduler there.
    """
    outcome: dict = {}

    def attempt():
        try:
            # Not the process's default scheduler: a Client makes itself the default as
            # it starts, so one left hanging here would take every later dask
            # computation of the program with it. miniflow hands its client on by hand.
            outcome["client"] = distributed.Client(address, timeout=timeout,
                                                   set_as_default=False)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, name="miniflow-connect", daemon=True)
    thread.start()
    thread.join(timeout + CONNECT_GRACE_S)
    if thread.is_alive():
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: nothing answered "
                           f"as a scheduler within {timeout + CONNECT_GRACE_S:g} s (is "
                           f"`dask scheduler` running there, on that port?)")
    if "error" in outcome:
        exc = outcome["error"]
        detail = (f"{type(exc).__name__}: {exc}" if not isinstance(exc, MemoryError) else
                  "the reply was not a Dask scheduler's")
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: "
                           f"{str(detail)[:300]}") from None
    return outcome["client"]


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

#: Per worker process: the replicas, by (run, worker address). A process may hold
#: several workers (an in-process cluster), hence the address in the key.
_REPLICAS: dict = {}


def _here() -> str:
    from distributed import get_worker

    return get_worker().address


class _Replica:
    """A worker's copy of the run: the model, its parameters, the optimizer and its state."""

    def __init__(self, model, settings, schedule, optimizer_state, state):
        from .models import from_architecture
        from .optim import make_optimizer

        if isinstance(model, dict):  # an architecture record: the graph is built here
            model = from_architecture(model)
        self.model, self.settings = model, settings
        self.optimizer = make_optimizer(settings["optimizer"], model.params, schedule,
                                        momentum=settings["momentum"],
                                        weight_decay=settings["weight_decay"],
                                        backend="numpy", clip_norm=settings["clip_norm"])
        self.optimizer.load_state_dict(optimizer_state)
        self.state = dict(zip(model.state, state))
        self.compiled = None
        if settings["compile"]:
            from .compile import compile as compile_step

            self.compiled = compile_step(model.loss, self.optimizer.nodes, "numpy")
        self.draws, self.epoch = {}, None


def _init_replica(run_id, model, settings, schedule, optimizer_state, state):
    _REPLICAS[run_id, _here()] = _Replica(model, settings, schedule, optimizer_state, state)
    return _here()


def _drop_replica(run_id):
    _REPLICAS.pop((run_id, _here()), None)


def _shard_sums(run_id, shard, rows, epoch, k, n_shards, after):
    """Loss, gradients and state updates over ``shard``'s ``rows``, each summed over the
    rows (for a summed loss: as they are). ``after``: the previous update, waited for."""
    replica = _REPLICAS[run_id, _here()]
    model = replica.model
    if replica.epoch != epoch:
        replica.draws, replica.epoch = {}, epoch
    if k not in replica.draws:
        replica.draws[k] = np.random.default_rng(epoch_seed(replica.settings["seed"], epoch,
                                                            n_shards)[k])
    images, labels = shard
    feed = {**replica.optimizer.params, **replica.state,
            model.images: images[rows], model.labels: labels[rows]}
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported per epoch
        if replica.compiled is not None:
            loss, grads = replica.compiled(feed, training=True, rng=replica.draws[k])
            extras = []
        else:
            result = run(model.loss, feed, replica.optimizer.nodes, backend="numpy",
                         training=True, rng=replica.draws[k],
                         extras=list(model.updates.values()))
            loss, grads, extras = result.value, result.grads, result.extras
        scale = np.float32(1 if replica.settings["reduction"] == "sum" else len(rows))
        weight = np.float32(len(rows))
        return (float(loss) * float(scale), [np.array(grad * scale) for grad in grads],
                [np.array(extra * weight) for extra in extras], len(rows))


def _add_sums(*parts):
    """The elementwise total of several ``_shard_sums`` results."""
    loss = sum(part[0] for part in parts)
    grads = [sum(grads) for grads in zip(*(part[1] for part in parts))]
    extras = [sum(extras) for extras in zip(*(part[2] for part in parts))]
    return loss, grads, extras, sum(part[3] for part in parts)


def _loss_of(total):
    return total[0]


def _apply(run_id, total):
    """One optimizer step on this worker's replica, from the batch's summed gradients."""
    replica = _REPLICAS[run_id, _here()]
    _, grads, extras, rows = total
    if replica.settings["reduction"] != "sum":
        scale = np.float32(1 / rows)
        grads = [grad * scale for grad in grads]
    replica.optimizer.step(grads)
    # A running statistic's update is linear in the batch's statistic: the shards'
    # updates weighted by their rows are the update by the batch's statistics.
    replica.state.update((node, extra / np.float32(rows))
                         for node, extra in zip(replica.model.updates, extras))
    return replica.optimizer.step_count


def _fetch(run_id, after=None):
    """The replica's optimizer state (parameters included) and state arrays, to the driver."""
    replica = _REPLICAS[run_id, _here()]
    return (replica.optimizer.state_dict(),
            [np.array(replica.state[node]) for node in replica.model.state])


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
        #: The worker holding each shard (its replica computes the shard's part of a step).
        self.owners = list(self.workers)
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
                self.owners[k] = alive[k % len(alive)]
                self.futures[k] = self._scatter(k, self.owners[k])
        self.workers = alive
        return gone, lost


def _lost_worker(exc) -> bool:
    """Whether ``exc`` is how Dask reports a worker (or the data it held) gone mid-step."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    # OSError covers CommClosedError: a connection to the dead worker dropped. A
    # replica missing (KeyError) is a worker restarted by its nanny.
    return isinstance(exc, (KilledWorker, CancelledError, OSError, KeyError))


_RUN_IDS = itertools.count()
#: Seconds between looks at which workers are alive while waiting for a step.
POLL_S = 0.5


class ClusterStep:
    """The step of :func:`miniflow.loop.fit` on a Dask cluster (see the module's docstring).

    ``step(params, batch)`` ignores ``params`` (the replicas hold them) and
    returns the batch's loss (a float) and a future of the summed gradients,
    which :class:`ClusterOptimizer` hands to every replica.
    """

    def __init__(self, client, data, model, settings, schedule, optimizer_state):
        import os

        self.client, self.data, self.model = client, data, model
        # A model of layers travels as its JSON-able record (graphs hold weak references
        # and do not pickle); a graph built by hand goes as it is, which only a cluster
        # in this process (threads) can take.
        self.shipped = model.architecture if "network" in model.architecture else model
        self.settings, self.schedule = settings, schedule
        self.run_id = f"miniflow-{os.getpid()}-{next(_RUN_IDS)}"
        self.lost_events: list[dict] = []
        self.epoch, self.done, self.pending = 1, [], None
        self.step_count = int(optimizer_state["step_count"])
        state = [np.asarray(model.state[node]) for node in model.state]
        self.snapshot = (optimizer_state, state)
        self._fetched = None
        self.after: dict = {}
        self._place()

    # -- replicas --------------------------------------------------------------------

    def _holders(self):
        return sorted(set(self.data.owners))

    def _wait(self, futures):
        """The results of ``futures`` (a future or a list), or WorkerGoneError."""
        from distributed import wait

        pending = futures if isinstance(futures, list) else [futures]
        while True:
            try:
                wait(pending, timeout=POLL_S)
                break
            except TimeoutError:
                pass
            alive = set(_workers(self.client))
            gone = [w for w in self._holders() if w not in alive]
            if gone:
                raise WorkerGoneError(f"worker(s) {', '.join(gone)} left the cluster")
        results = self.client.gather(pending)
        return results if isinstance(futures, list) else results[0]

    def _place(self):
        """A replica, from the snapshot, on every worker holding a shard."""
        optimizer_state, state = self.snapshot
        futures = [self.client.submit(_init_replica, self.run_id, self.shipped, self.settings,
                                      self.schedule, optimizer_state, state, workers=[w],
                                      allow_other_workers=False, pure=False)
                   for w in self._holders()]
        try:
            self._wait(futures)
        except TypeError as exc:
            if "pickle" not in str(exc):
                raise
            raise ConfigError("this model's graph was built by hand, and a graph cannot be "
                              "sent to worker processes: build it from miniflow.nn layers "
                              "(models.from_network) to train it on a cluster") from None
        self.after = {}
        self.step_count = int(optimizer_state["step_count"])

    def _recover(self, exc):
        gone, lost = self.data.recover()
        self.lost_events.append({"workers": gone, "shards": lost, "error": repr(exc)})
        self._place()
        for batch in self.done:  # the epoch so far, again: the same numbers
            self._apply(self._submit(batch))
        if self.done:
            self._wait(list(self.after.values()))

    def _robust(self, action):
        for attempt in range(MAX_RETRIES + 1):
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - only the cluster's own failures are retried
                if not _lost_worker(exc):
                    raise
                if attempt == MAX_RETRIES:
                    raise ClusterError(f"a step failed {attempt + 1} times on the cluster; "
                                       f"lost worker(s): "
                                       f"{', '.join(self.lost_events[-1]['workers']) or 'none'} "
                                       f"({type(exc).__name__}: {exc})") from exc
                self._recover(exc)
        raise AssertionError("unreachable")

    # -- the step ----------------------------------------------------------------------

    def _submit(self, batch):
        parts = [self.client.submit(_shard_sums, self.run_id, self.data.futures[k], rows,
                                    self.epoch, k, len(self.data.futures),
                                    self.after.get(self.data.owners[k]),
                                    workers=[self.data.owners[k]], allow_other_workers=False,
                                    pure=False)
                 for k, rows in self.data.split(batch)]
        return parts[0] if len(parts) == 1 else self.client.submit(_add_sums, *parts,
                                                                   pure=False)

    def _apply(self, total):
        self.after = {w: self.client.submit(_apply, self.run_id, total, workers=[w],
                                            allow_other_workers=False, pure=False)
                      for w in self._holders()}
        self.step_count += 1

    def __call__(self, params, batch):
        def step():
            total = self._submit(batch)
            loss = self._wait(self.client.submit(_loss_of, total, pure=False))
            return loss, total

        loss_sum, total = self._robust(step)
        self.pending = batch
        rows = len(batch)
        return np.float32(loss_sum if self.settings["reduction"] == "sum"
                          else loss_sum / rows), total

    def apply(self, total):
        """Every replica's update from ``total`` (the optimizer's step)."""
        self._apply(total)
        self.done.append(self.pending)

    def begin_epoch(self, epoch: int) -> None:
        """Fetch the state the epoch starts from (to rebuild replicas from, if one is lost)."""
        self.snapshot = self.fetch()
        self.epoch, self.done = epoch, []

    def fetch(self):
        """The replicas' optimizer state and state arrays (from one replica), cached per step."""
        if self._fetched is not None and self._fetched[0] == self.step_count:
            return self._fetched[1]

        def fetch():
            worker = self._holders()[0]
            return self._wait(self.client.submit(_fetch, self.run_id, self.after.get(worker),
                                                 workers=[worker], allow_other_workers=False,
                                                 pure=False))

        fetched = self._robust(fetch)
        self._fetched = (self.step_count, fetched)
        return fetched

    @property
    def state(self) -> dict:
        return dict(zip(self.model.state, self.fetch()[1]))

    def state_arrays(self) -> list:
        return [np.asarray(a, dtype=np.float32) for a in self.fetch()[1]]

    def load_state(self, arrays) -> None:
        optimizer_state, _ = self.snapshot
        self.snapshot = (optimizer_state, list(arrays))
        self._fetched = None
        self._place()

    def close(self):
        try:
            self.client.run(_drop_replica_everywhere, self.run_id)
        except Exception:  # noqa: BLE001 - a lost cluster has nothing left to free
            pass


def _drop_replica_everywhere(run_id, dask_worker=None):
    # client.run passes each worker as dask_worker; a process may host several.
    _REPLICAS.pop((run_id, dask_worker.address), None)


class ClusterOptimizer:
    """The optimizer's interface for :func:`miniflow.loop.fit`, over the workers' replicas.

    The replicas hold the parameters and the state; ``params`` and
    :meth:`state_dict` fetch them from one replica (once per epoch, for
    validation and checkpoints); ``lr`` is the schedule's at the next step.
    """

    def __init__(self, step: ClusterStep, nodes):
        self._step, self.nodes = step, tuple(nodes)

    @property
    def lr(self) -> float:
        return self._step.schedule(self._step.step_count)

    @property
    def step_count(self) -> int:
        return self._step.step_count

    @property
    def params(self) -> dict:
        return dict(zip(self.nodes, self._step.fetch()[0]["params"]))

    def step(self, total) -> None:
        self._step.apply(total)

    def state_dict(self) -> dict:
        return self._step.fetch()[0]

    def load_state_dict(self, state: dict) -> None:
        self._step.snapshot = (state, self._step.snapshot[1])
        self._step._fetched = None
        self._step._place()


def cluster_training(client, model, config, images, labels, schedule, *, reduction="mean"):
    """The step and the optimizer that train ``model`` on ``client``'s workers.

    ``images`` and ``labels`` are the checked, standardised training set (host
    arrays, in the model's example shape); they are scattered to the workers
    here, once. Returns ``(ClusterStep, ClusterOptimizer)`` for :func:`miniflow.loop.fit`.
    """
    from .optim import make_optimizer

    _distributed()
    settings = {"optimizer": config.optimizer, "momentum": config.momentum,
                "weight_decay": config.weight_decay, "clip_norm": config.clip_norm,
                "compile": bool(config.compile), "seed": config.seed, "reduction": reduction}
    if config.compile:
        from .compile import untraceable_in_training

        reason = untraceable_in_training(model.loss, "numpy")
        if reason or model.updates:
            raise ConfigError(f"--compile on the cluster: {reason or 'a graph with BatchNorm'}"
                              f" cannot be compiled; train it without --compile")
    initial = make_optimizer(config.optimizer, model.params, schedule,
                             momentum=config.momentum, backend="numpy").state_dict()
    data = ShardedDataset(client, images, labels)
    step = ClusterStep(client, data, model, settings, schedule, initial)
    return step, ClusterOptimizer(step, tuple(model.params))
