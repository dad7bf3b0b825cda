"""The Checkov barrier: one scan per wave of concurrent shards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from orchestrator.policy.batching import CheckovBatcher


def scanner(calls: list):
    def scan(batch: dict[str, Path]) -> dict:
        calls.append(sorted(batch))
        return {shard_id: f"scanned {path.name}" for shard_id, path in batch.items()}

    return scan


def test_concurrent_shards_share_one_scan():
    calls: list = []
    batcher = CheckovBatcher(scanner(calls))
    results = {}

    def shard(shard_id: str, has_plan: bool, delay: float):
        batcher.enter()
        try:
            time.sleep(delay)
            if has_plan:
                results[shard_id] = batcher.submit(shard_id, Path(f"{shard_id}.json"))
        finally:
            batcher.leave()

    threads = [
        threading.Thread(target=shard, args=("a", True, 0.05)),
        threading.Thread(target=shard, args=("b", True, 0.2)),
        threading.Thread(target=shard, args=("c", False, 0.1)),  # no changes: never submits
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)

    assert calls == [["a", "b"]]
    assert results == {"a": "scanned a.json", "b": "scanned b.json"}


def test_later_wave_gets_its_own_scan():
    calls: list = []
    batcher = CheckovBatcher(scanner(calls))
    for wave in (["kms"], ["s3"]):
        for shard_id in wave:
            batcher.enter()
            assert batcher.submit(shard_id, Path(f"{shard_id}.json")) == f"scanned {shard_id}.json"
            batcher.leave()
    assert calls == [["kms"], ["s3"]]
    assert batcher.batches == 2


def test_scan_failure_reaches_every_waiting_shard():
    def broken(batch):
        raise RuntimeError("checkov crashed")

    batcher = CheckovBatcher(broken)
    batcher.enter()
    with pytest.raises(RuntimeError, match="checkov crashed"):
        batcher.submit("a", Path("a.json"))


def test_missing_result_is_an_error():
    batcher = CheckovBatcher(lambda batch: {})
    batcher.enter()
    with pytest.raises(RuntimeError, match="no result for a"):
        batcher.submit("a", Path("a.json"))
