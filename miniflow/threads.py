"""How many threads the BLAS and PyTorch pools use while miniflow trains or evaluates.

A BLAS library starts one thread per core and, between matrix products,
keeps them spinning. On a machine of its own that is a little faster than
one thread; when another process runs on one of those cores, every product
waits for the thread that lost its core, and a run measured 2-15x slower
than with one thread (``bench/contention.py``). So by default miniflow
counts the cores other processes keep busy, from ``/proc/stat`` less this
process's own CPU time, and gives the pools only the cores left over: all of
them on a quiet machine, one on a busy one. It looks again after every
epoch (:meth:`ThreadPolicy.adapt`), as other jobs come and go.

Any other run can have the same policy: :func:`set_threads` sets it for the
process, and :func:`run`, :func:`value_and_grad` and :func:`evaluate` apply
it (:func:`apply_policy`), under "auto" looking at the load again at most
every :data:`RECHECK_SECONDS`. ``with set_threads(...):`` sets it for a block.

The thread count changes the order in which a BLAS library adds partial
sums, so runs with different counts agree only to rounding: accuracies can
differ in the last digits. A fixed ``threads=N`` makes a run repeat exactly.

>>> with ThreadPolicy("auto") as policy:     # doctest: +SKIP
...     prepare_data()
...     policy.ready()
...     for epoch in range(epochs):
...         train_one_epoch()
...         policy.adapt()
"""
from __future__ import annotations

import os
import sys
import threading
import time

from .errors import ThreadsError

__all__ = ["ThreadPolicy", "ThreadsError", "apply_policy", "available_cores", "parse_threads",
           "set_threads"]

THREADS_INSTALL_HINT = "pip install 'miniflow[threads]'"
#: The shortest first look at the machine, before any training step.
PROBE_SECONDS = 0.1
#: A core counts as taken when other processes use more than this share of it:
#: a little background work (a shell, an editor) should not halve our threads.
BUSY_SHARE = 0.5
#: Under a process-wide "auto" (:func:`set_threads`), the shortest time between two
#: looks at the load: long enough that the look (a read of /proc/stat and, when the
#: count changes, a threadpoolctl call) costs nothing next to the runs in between.
RECHECK_SECONDS = 1.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_threads(value) -> int | str:
    """``"auto"`` or a positive integer (also given as text); anything else is a ThreadsError."""
    if value == "auto":
        return value
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ThreadsError(f"threads must be 'auto' or a positive integer, "
                               f"got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ThreadsError(f"threads must be 'auto' or a positive integer, got {value!r}")
    return value


def _cannot_limit(count) -> ThreadsError:
    return ThreadsError(f"threads={count} needs threadpoolctl to limit the BLAS threads; "
                        f"install it with: {THREADS_INSTALL_HINT}")


class _CpuMeter:
    """CPU time other processes used since the last reading, from /proc/stat (Linux)."""

    def __init__(self):
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._last = self._read()

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/stat") and hasattr(os, "sysconf")

    def _read(self):
        with open("/proc/stat") as file:
            fields = [int(v) for v in file.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
        busy = sum(fields[:8]) - fields[3] - fields[4]
        own = os.times()
        return time.monotonic(), busy / self._ticks_per_second, own.user + own.system

    def others_busy_cores(self) -> float:
        """Cores' worth of CPU other processes used since the previous call."""
        now = self._read()
        (then_wall, then_busy, then_own), self._last = self._last, now
        wall = now[0] - then_wall
        if wall <= 0:
            return 0.0
        # Spinning BLAS threads are our own CPU time, so they never count as "others".
        return max(0.0, (now[1] - then_busy) - (now[2] - then_own)) / wall


class ThreadPolicy:
    """Limit the BLAS (OpenBLAS, MKL, BLIS, via threadpoolctl) and PyTorch thread pools.

    A context manager: on entry it sets the pools, on exit it restores them.

    Parameters
    ----------
    threads : "auto" or int
        A fixed number of threads, or ``"auto"``: the cores of this process's
        CPU affinity that other processes leave free (at least one), looked at
        from entry to :meth:`ready` (at least :data:`PROBE_SECONDS`) and again
        at each :meth:`adapt`.
        Where neither threadpoolctl nor PyTorch is loaded, "auto" leaves the
        pools as they are.
    shards : int
        Batch shards the caller computes in threads of its own (see
        ``TrainConfig.shards``): of ``threads``, up to ``shards`` run shards
        at once, and each shard's BLAS calls get an equal part of the rest.

    Attributes
    ----------
    threads : int or None
        The count in force now; None where nothing could be limited.
    workers : int or None
        How many shards run at once now (``min(shards, threads)``); None where
        nothing could be limited (then one at a time: the pools may already
        use every core).

    Raises
    ------
    ThreadsError
        A fixed count was asked for, but threadpoolctl is not installed and
        PyTorch not loaded, so nothing could apply it.
    """

    def __init__(self, threads="auto", *, shards: int = 1):
        self.requested = parse_threads(threads)
        self.shards = shards
        self.cores = available_cores()
        self.threads = self.workers = None
        self._controller = None
        self._limiter = None
        self._torch_threads = None
        self._meter = None
        self._looking_since = None
        self._process_wide = False

    def __enter__(self):
        self._start()
        if not self._process_wide:
            global _scoped
            with _lock:
                _scoped += 1
        return self

    def _start(self):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            controller = None
        else:
            controller = ThreadpoolController()
        torch = sys.modules.get("torch")  # only a torch already in use needs limiting
        if controller is None and torch is None:
            if self.requested != "auto":
                raise _cannot_limit(self.requested)
            return
        self._controller = controller
        if torch is not None:
            self._torch = torch
            self._torch_threads = torch.get_num_threads()
        if self.requested == "auto":
            if _CpuMeter.available():
                # The first look lasts until ready(): preparing the data is measured
                # too, rather than adding a pause of its own.
                self._meter = _CpuMeter()
                self._looking_since = time.monotonic()
            self._apply(self.cores)
        else:
            self._apply(self.requested)

    def ready(self) -> int | None:
        """Under "auto", finish the first look (at least :data:`PROBE_SECONDS` long) and apply it.

        Call it when the heavy work is about to start; returns the count in force.
        """
        if self._meter is not None and self._looking_since is not None:
            remaining = PROBE_SECONDS - (time.monotonic() - self._looking_since)
            if remaining > 0:
                time.sleep(remaining)
            self._looking_since = None
            return self.adapt()
        return self.threads

    def adapt(self) -> int | None:
        """Under "auto", set the pools to the cores other processes left free since the last look.

        Returns the count now in force (None where nothing is limited).
        """
        if self._meter is not None:
            free = self._free_cores()
            if free != self.threads:
                self._apply(free)
        return self.threads

    def _free_cores(self) -> int:
        taken = int(self._meter.others_busy_cores() + 1 - BUSY_SHARE)
        return max(1, self.cores - taken)

    def _apply(self, count: int) -> None:
        workers = min(self.shards, count)
        per_worker = max(1, count // workers)
        if self._controller is not None:
            if self._limiter is not None:
                self._limiter.restore_original_limits()
            self._limiter = self._controller.limit(limits=per_worker, user_api="blas")
        if self._torch_threads is not None:
            self._torch.set_num_threads(per_worker)
        self.threads, self.workers = count, workers

    def _adopt_torch(self) -> None:
        """Limit a PyTorch imported since entry (set_threads often comes before the imports)."""
        if self._torch_threads is None and self.threads is not None:
            torch = sys.modules.get("torch")
            if torch is not None:
                self._torch = torch
                self._torch_threads = torch.get_num_threads()
                torch.set_num_threads(max(1, self.threads // self.workers))

    def __exit__(self, *exc_info):
        if not self._process_wide:
            global _scoped
            with _lock:
                _scoped -= 1
        self._stop()
        return False

    def _stop(self) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
        if self._torch_threads is not None:
            self._torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        self._meter = None


# -- one policy for every run of the process ---------------------------------------

#: The policy set by set_threads (a _ProcessPolicy), or None: read by every run.
_process_policy = None
#: ThreadPolicy blocks in force (train(), evaluate_model()): their own counts win.
_scoped = 0
_lock = threading.Lock()


class _ProcessPolicy:
    """A ThreadPolicy in force for the whole process, and when next to look at the load."""

    def __init__(self, requested):
        self.policy = ThreadPolicy(requested)
        self.policy._process_wide = True
        self.policy._start()
        if self.policy._meter is not None:
            # Until the first look, one thread: on a busy machine it is many times faster
            # than one per core, on a quiet one at most a little slower. The first look
            # comes soon, so that a quiet machine gets its cores within the first runs.
            self.policy._apply(1)
        self.next_look = time.monotonic() + PROBE_SECONDS

    def refresh(self) -> None:
        now = time.monotonic()
        if now < self.next_look or not _lock.acquire(blocking=False):
            return  # another thread is looking, or set_threads is swapping policies
        try:
            if self is _process_policy:
                self.next_look = now + RECHECK_SECONDS
                self.policy._adopt_torch()
                self.policy.adapt()
        finally:
            _lock.release()


def apply_policy() -> None:
    """Bring the pools in line with the policy :func:`set_threads` set, if any.

    Called as every run starts. Without a policy it costs one global read; with
    a fixed count, a clock read; under "auto" it looks at the load at most every
    :data:`RECHECK_SECONDS`. Inside :func:`~miniflow.train.train` (or any
    ``with ThreadPolicy(...)``) that block's own count wins, and nothing changes.
    """
    policy = _process_policy
    if policy is None or _scoped:
        return
    policy.refresh()


class _Restore:
    """What set_threads returns: used in a ``with``, it puts the previous setting back."""

    def __init__(self, previous):
        self.previous = previous

    def __enter__(self) -> ThreadPolicy | None:
        """The policy now in force (its ``threads`` is the count; None: no policy)."""
        current = _process_policy
        return None if current is None else current.policy

    def __exit__(self, *exc_info):
        set_threads(self.previous)
        return False


def set_threads(threads) -> _Restore:
    """Limit the BLAS and PyTorch thread pools for every run of this process.

    :func:`~miniflow.train.train` does this for its own runs (``threads="auto"``
    by default); this gives a loop of your own around :func:`run`,
    :func:`value_and_grad` or :func:`evaluate` the same policy. On a busy
    machine the BLAS default of one thread per core can make each step many
    times slower than one thread (see :class:`ThreadPolicy`).

    Parameters
    ----------
    threads : "auto", int or None
        ``"auto"``: the cores other processes leave free, first looked at by a
        run :data:`PROBE_SECONDS` after this call (one thread until then) and
        again as runs start, at most every :data:`RECHECK_SECONDS`; an int:
        that many threads; None: no policy, the pools back as they were before.

    Returns
    -------
    An object that, used as ``with set_threads(...) as policy:``, puts the
    previous setting back at the end of the block (``policy.threads`` is the
    count in force). Called on its own, the setting stays.

    Raises
    ------
    ThreadsError
        ``threads`` is not "auto", a positive integer or None; or a fixed
        count was asked for without threadpoolctl installed or PyTorch loaded.
        Nothing changes then.
    """
    global _process_policy
    requested = None if threads is None else parse_threads(threads)
    if requested not in (None, "auto") and sys.modules.get("torch") is None:
        try:
            import threadpoolctl  # noqa: F401
        except ImportError:
            raise _cannot_limit(requested) from None
    with _lock:
        previous = _process_policy
        # The old limits come off first: threadpoolctl restores, on exit, the limits
        # found on entry, so policies must not overlap.
        if previous is not None:
            previous.policy._stop()
        _process_policy = None if requested is None else _ProcessPolicy(requested)
    return _Restore(None if previous is None else previous.policy.requested)
