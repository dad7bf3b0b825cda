"""One Checkov process for many shards: shards wait at a barrier until every running shard is there.

Checkov costs seconds to start, so shards do not start it one by one. A shard that has a plan
to scan calls ``submit`` and waits. A shard that leaves the pipeline without a plan (no
changes, failure) calls ``leave``. When every shard still in the pipeline is waiting, the
batch is scanned by one Checkov process and each waiting shard gets its own result. In a plan
run every shard reaches the barrier in one wave. In an apply run, dependents that start after
their prerequisites applied form later waves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable


class CheckovBatcher:
    """Collect plan files from concurrent shards and scan each wave with one call of ``scan``."""

    def __init__(self, scan: Callable[[dict[str, Path]], dict]):
        self.scan = scan
        self.batches = 0
        self._condition = threading.Condition()
        self._active = 0
        self._pending: dict[str, Path] = {}
        self._results: dict[str, object] = {}
        self._errors: dict[str, BaseException] = {}

    def enter(self) -> None:
        """Count a shard that entered the pipeline and may submit a plan later."""
        with self._condition:
            self._active += 1

    def leave(self) -> None:
        """Count a shard that left the pipeline; the others may now be a complete batch."""
        with self._condition:
            self._active -= 1
            self._flush_if_complete()

    def submit(self, shard_id: str, plan_json: Path):
        """Queue ``plan_json`` and wait for its scan result; re-raise the scan's exception if it failed."""
        with self._condition:
            self._pending[shard_id] = plan_json
            self._flush_if_complete()
            while shard_id not in self._results and shard_id not in self._errors:
                self._condition.wait()
            if shard_id in self._errors:
                raise self._errors.pop(shard_id)
            return self._results.pop(shard_id)

    def _flush_if_complete(self) -> None:
        # Called with the condition held. Scanning while holding it is safe: every shard still
        # in the pipeline is waiting here, so no other thread needs the lock meanwhile.
        if not self._pending or len(self._pending) < self._active:
            return
        batch, self._pending = self._pending, {}
        self.batches += 1
        try:
            results = self.scan(batch)
        except Exception as error:  # noqa: BLE001 - every waiting shard gets the failure
            for shard_id in batch:
                self._errors[shard_id] = error
        else:
            for shard_id in batch:
                if shard_id in results:
                    self._results[shard_id] = results[shard_id]
                else:
                    self._errors[shard_id] = RuntimeError(f"Checkov returned no result for {shard_id}")
        self._condition.notify_all()
