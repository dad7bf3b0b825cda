"""The DAG worker pool: order, parallelism, failure propagation, interruption."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.scheduler import FAILED, SKIPPED, SUCCEEDED, Outcome, find_cycle, run_graph


def recorder(fail=(), delay=0.0):
    order: list[str] = []
    lock = threading.Lock()

    def work(node, prerequisites):
        time.sleep(delay)
        with lock:
            order.append(node)
        return Outcome(FAILED if node in fail else SUCCEEDED, value=sorted(prerequisites))

    return work, order


def test_dependents_run_after_prerequisites():
    work, order = recorder()
    outcomes = run_graph(["s3", "kms", "lambda", "iam"], {"s3": {"kms"}, "lambda": {"iam"}}, work, workers=2)

    assert all(o.status == SUCCEEDED for o in outcomes.values())
    assert order.index("kms") < order.index("s3")
    assert order.index("iam") < order.index("lambda")
    assert outcomes["s3"].value == ["kms"]


def test_failure_skips_only_dependents():
    work, order = recorder(fail={"kms"})
    outcomes = run_graph(["kms", "s3", "athena", "iam"], {"s3": {"kms"}, "athena": {"s3"}}, work, workers=3)

    assert outcomes["kms"].status == FAILED
    assert outcomes["s3"].status == SKIPPED
    assert outcomes["athena"].status == SKIPPED
    assert "kms" in outcomes["s3"].detail
    assert outcomes["iam"].status == SUCCEEDED
    assert "s3" not in order


def test_independent_nodes_run_in_parallel():
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(node, prerequisites):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return Outcome(SUCCEEDED)

    run_graph([f"n{i}" for i in range(8)], {}, work, workers=4)
    assert peak == 4


def test_work_exception_fails_node():
    def work(node, prerequisites):
        if node == "bad":
            raise RuntimeError("boom")
        return Outcome(SUCCEEDED)

    outcomes = run_graph(["bad", "good"], {}, work, workers=2)
    assert outcomes["bad"].status == FAILED
    assert "boom" in outcomes["bad"].detail
    assert outcomes["good"].status == SUCCEEDED


def test_cancelled_run_starts_nothing_new():
    cancelled = threading.Event()

    def work(node, prerequisites):
        cancelled.set()
        return Outcome(SUCCEEDED)

    outcomes = run_graph(["a", "b", "c"], {}, work, workers=1, cancelled=cancelled)
    assert outcomes["a"].status == SUCCEEDED
    assert outcomes["b"].status == SKIPPED
    assert "interrupted" in outcomes["c"].detail


def test_dependencies_outside_selection_are_ignored():
    work, order = recorder()
    outcomes = run_graph(["s3"], {"s3": {"kms"}}, work, workers=1)
    assert outcomes["s3"].status == SUCCEEDED


def test_cycle_is_rejected():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    with pytest.raises(ValueError, match="cycle"):
        run_graph(["a", "b"], {"a": {"b"}, "b": {"a"}}, recorder()[0], workers=1)
