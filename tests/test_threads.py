"""Thread limits for the BLAS and PyTorch pools: fixed counts, the 'auto' policy, restoring."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import miniflow
import miniflow.threads as threads_module
from miniflow import Input, Sum, evaluate, run, set_threads, value_and_grad
from miniflow.threads import ThreadPolicy, ThreadsError, parse_threads
from miniflow.train import TrainConfig, train

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    """The thread count of every BLAS library NumPy loaded."""
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure the BLAS is loaded
    return {info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"}


@pytest.fixture
def two_threads():
    """Start every test from 2 BLAS threads, whatever the machine has, and put them back."""
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        yield


@pytest.fixture
def busy(monkeypatch):
    """Pretend to run on 4 cores, with others' CPU use set by the test (no sleeping)."""
    monkeypatch.setattr(threads_module, "available_cores", lambda: 4)
    monkeypatch.setattr(threads_module, "PROBE_SECONDS", 0)
    readings = []
    monkeypatch.setattr(threads_module._CpuMeter, "others_busy_cores",
                        lambda self: readings.pop(0))
    return readings


def test_a_fixed_count_applies_inside_and_is_restored_after(two_threads):
    before = blas_threads()
    with ThreadPolicy(1) as policy:
        assert blas_threads() == {1} and policy.threads == 1
    assert blas_threads() == before


def test_auto_takes_the_cores_other_processes_leave_free(two_threads, busy):
    if not threads_module._CpuMeter.available():
        pytest.skip("'auto' measures other processes through /proc/stat (Linux)")
    busy += [0.0, 1.0, 0.3, 2.6, 7.0, 0.0]
    with ThreadPolicy("auto") as policy:
        assert policy.ready() == 4 and blas_threads() == {4}  # a quiet machine: every core
        assert policy.adapt() == 3 and blas_threads() == {3}  # one busy core given up
        assert policy.adapt() == 4  # a little background work takes no core
        assert policy.adapt() == 1  # 2.6 cores busy: round up, and leave one
        assert policy.adapt() == 1  # never fewer than one
        assert policy.adapt() == 4 and blas_threads() == {4}  # the others are gone
    assert blas_threads() == {2}


def test_the_meter_sees_a_competing_process():
    if not threads_module._CpuMeter.available():
        pytest.skip("needs /proc/stat (Linux)")
    meter = threads_module._CpuMeter()
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        meter.others_busy_cores()  # from here on, the competitor is running
        time.sleep(0.5)
        others = meter.others_busy_cores()
    finally:
        competitor.kill()
        competitor.wait()
    assert others >= 0.5  # one core's worth, less what others on a shared machine took


def test_the_meter_subtracts_our_own_cpu_time(monkeypatch):
    # (wall clock, CPU seconds all processes used, CPU seconds this process used)
    readings = iter([(10.0, 100.0, 5.0), (11.0, 102.0, 6.5), (13.0, 102.5, 6.5),
                     (14.0, 104.0, 8.0)])
    monkeypatch.setattr(threads_module._CpuMeter, "_read", lambda self: next(readings))
    monkeypatch.setattr(threads_module.os, "sysconf", lambda name: 100)
    meter = threads_module._CpuMeter()
    assert meter.others_busy_cores() == pytest.approx(0.5)  # 2 busy, 1.5 of them ours
    assert meter.others_busy_cores() == pytest.approx(0.25)  # 0.5 busy in 2 s, none ours
    assert meter.others_busy_cores() == 0.0  # only we ran


def test_the_meter_reads_our_cpu_time_from_the_system():
    if not threads_module._CpuMeter.available():
        pytest.skip("needs /proc/stat (Linux)")
    meter = threads_module._CpuMeter()
    wall, busy, own = meter._read()
    # Spin until the system has charged us CPU time, however long a busy machine takes.
    while (now := meter._read())[2] == own:
        pass
    wall2, busy2, own2 = now
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc/stat counts whole clock ticks
    assert wall2 > wall and own2 > own
    assert busy2 - busy >= own2 - own - 5 * tick  # ours is part of everyone's, to a few ticks


def test_pytorch_threads_are_limited_and_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with ThreadPolicy(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", [0, -1, 1.5, "x", True, "0", None])
def test_bad_counts_are_refused(value):
    with pytest.raises(ThreadsError, match="'auto' or a positive integer"):
        parse_threads(value)
    with pytest.raises(ThreadsError):
        ThreadPolicy(value)


def test_counts_given_as_text_are_read():
    assert parse_threads("3") == 3 and parse_threads("auto") == "auto" and parse_threads(2) == 2


def test_without_threadpoolctl_or_torch_a_fixed_count_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setitem(sys.modules, "torch", None)  # not loaded
    with pytest.raises(ThreadsError, match=r"pip install 'miniflow\[threads\]'"):
        with ThreadPolicy(1):
            pass
    with ThreadPolicy("auto") as policy:  # the default leaves the pools alone
        assert policy.threads is None


def test_train_runs_each_epoch_with_the_count_it_records(two_threads):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 5), dtype=np.float32), rng.integers(0, 3, 64)
    seen = []
    result = train(TrainConfig(hidden=4, epochs=2, batch_size=32), x, y, n_classes=3,
                   threads=1, on_step=lambda loss: seen.append(blas_threads()))
    assert seen == [{1}] * 4
    assert [stats.threads for stats in result.history] == [1, 1]
    assert blas_threads() == {2}


def test_one_and_two_threads_agree_to_rounding(two_threads):
    """The thread count changes only the order of sums: results agree closely, not exactly."""
    rng = np.random.default_rng(0)
    x, y = rng.random((300, 40), dtype=np.float32), rng.integers(0, 5, 300)
    config = TrainConfig(hidden=32, epochs=2, batch_size=50)
    one = train(config, x, y, n_classes=5, threads=1)
    two = train(config, x, y, n_classes=5, threads=2)
    for (node, value), other in zip(one.model.params.items(), two.model.params.values()):
        np.testing.assert_allclose(value, other, rtol=1e-4, atol=1e-5, err_msg=node.name)


# -- one policy for every run: miniflow.set_threads -----------------------------------

@pytest.fixture
def pools(two_threads):
    """No process-wide policy at the start or the end, inside two_threads' 2 BLAS threads
    (so that the policy's own restoring happens before two_threads puts back the machine's)."""
    set_threads(None)
    yield
    set_threads(None)


class FakeClock:
    """time.monotonic for the threads module, moved by the test: no sleeping, no timing."""

    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(threads_module, "time", fake)
    return fake


def one_run():
    """A small run of the user's own, through the public entry points."""
    x = Input()
    value_and_grad(Sum(x * x), {x: np.ones(3, np.float32)}, [x])


def test_a_fixed_count_applies_to_every_run_until_removed(pools):
    torch = pytest.importorskip("torch")
    torch_before = torch.get_num_threads()
    miniflow.set_threads(1)
    one_run()
    assert blas_threads() == {1} and torch.get_num_threads() == 1
    set_threads(None)
    assert blas_threads() == {2} and torch.get_num_threads() == torch_before


def test_the_block_form_puts_the_previous_setting_back(pools):
    with set_threads(1) as policy:
        assert policy.threads == 1 and blas_threads() == {1}
        with set_threads(3) as inner:
            assert inner.threads == 3 and blas_threads() == {3}
        assert blas_threads() == {1}  # the outer block's setting again
    assert blas_threads() == {2} and threads_module._process_policy is None
    set_threads(1)
    with set_threads(None) as policy:  # a block without the process's policy
        assert policy is None and blas_threads() == {2}
    assert blas_threads() == {1}


def test_auto_gives_a_users_loop_fewer_threads_on_a_busy_machine(pools, busy, clock):
    if not threads_module._CpuMeter.available():
        pytest.skip("'auto' measures other processes through /proc/stat (Linux)")
    set_threads("auto")
    assert blas_threads() == {1}  # nothing measured yet: the choice that is never much worse
    busy += [0.0]
    one_run()  # the first look, PROBE_SECONDS (0 here) after set_threads: a quiet machine
    assert blas_threads() == {4} and busy == []
    busy += [2.6]
    clock.now += threads_module.RECHECK_SECONDS / 2
    one_run()
    assert blas_threads() == {4} and busy == [2.6]  # too soon to look again
    clock.now += threads_module.RECHECK_SECONDS / 2
    one_run()
    assert blas_threads() == {1} and busy == []  # others took 2.6 of the 4 cores
    set_threads(None)
    assert blas_threads() == {2}


def test_evaluate_and_run_apply_the_policy_too(pools):
    x = Input()
    set_threads(1)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):  # someone else changes them
        threads_module._process_policy.next_look = 0.0  # due for a look
        evaluate(Sum(x), {x: [1.0, 2.0]})
        # A fixed count is set once; a run does not fight other code's own limits.
        assert blas_threads() == {2}
    for entry in (lambda: evaluate(Sum(x), {x: [1.0]}), lambda: run(Sum(x), {x: [1.0]}, [x])):
        set_threads("auto")
        threads_module._process_policy.next_look = 0.0
        looks = []
        threads_module._process_policy.policy.adapt = lambda: looks.append(1)
        entry()
        assert looks == [1]


def test_train_keeps_its_own_count_under_a_process_policy(pools, busy, clock):
    if not threads_module._CpuMeter.available():
        pytest.skip("'auto' measures other processes through /proc/stat (Linux)")
    set_threads("auto")
    busy += [3.0]  # what a look would see: only train's own policy may look now
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 5), dtype=np.float32), rng.integers(0, 3, 64)
    seen = []
    train(TrainConfig(hidden=4, epochs=1, batch_size=32), x, y, n_classes=3, threads=2,
          on_step=lambda loss: seen.append(blas_threads()))
    assert seen == [{2}, {2}] and busy == [3.0]
    assert blas_threads() == {1}  # the process's policy again
    one_run()
    assert busy == []  # and it looks, now that train is done


def test_pytorch_imported_after_set_threads_is_limited_too(monkeypatch, pools):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setitem(sys.modules, "torch", None)  # not imported yet
    set_threads(1)
    monkeypatch.setitem(sys.modules, "torch", torch)  # the user imports it now
    threads_module._process_policy.next_look = 0.0
    one_run()
    assert torch.get_num_threads() == 1
    set_threads(None)
    assert torch.get_num_threads() == before


def test_a_refused_setting_leaves_the_previous_one_in_force(monkeypatch, pools):
    set_threads(1)
    with pytest.raises(ThreadsError, match="'auto' or a positive integer"):
        set_threads(0)
    assert blas_threads() == {1}
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ThreadsError, match=r"pip install 'miniflow\[threads\]'"):
        set_threads(3)
    monkeypatch.undo()
    assert threads_module._process_policy.policy.requested == 1
    assert blas_threads() == {1}


def test_without_a_policy_runs_leave_the_pools_alone(pools):
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        one_run()
        assert blas_threads() == {1}
    one_run()
    assert blas_threads() == {2}
