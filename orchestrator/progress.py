"""Live progress of a run: one line per shard phase change, a heartbeat while work goes on.

Plain lines rather than a redrawn screen, so the output reads the same in a terminal and in a
CI log. The heartbeat lists running shards with their phase and elapsed time.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

HEARTBEAT_SECONDS = 30.0


class Progress:
    """Thread-safe progress printer; shard workers call ``phase`` and ``finished``."""

    def __init__(self, total: int, stream: TextIO | None = None, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.total = total
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.Lock()
        self._active: dict[str, tuple[str, float]] = {}
        self._phase_started: dict[str, float] = {}
        self._done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        self._thread = threading.Thread(target=self._heartbeat, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _write(self, text: str) -> None:
        self.stream.write(f"[{self._elapsed():7.1f}s] {text}\n")
        self.stream.flush()

    def phase(self, shard_id: str, phase: str) -> None:
        """Record that ``shard_id`` entered ``phase`` (init, plan, show, apply…)."""
        with self._lock:
            now = time.monotonic()
            if shard_id not in self._phase_started:
                self._phase_started[shard_id] = now
            self._active[shard_id] = (phase, now)
            self._write(f"{shard_id:<40} {phase}")

    def finished(self, shard_id: str, status: str, detail: str = "") -> None:
        with self._lock:
            self._active.pop(shard_id, None)
            began = self._phase_started.pop(shard_id, None)
            self._done += 1
            took = f" in {time.monotonic() - began:.1f}s" if began else ""
            suffix = f": {detail}" if detail else ""
            self._write(f"{shard_id:<40} {status}{took}{suffix}  ({self._done}/{self.total})")

    def note(self, text: str) -> None:
        with self._lock:
            self._write(text)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            with self._lock:
                if not self._active:
                    continue
                now = time.monotonic()
                running = ", ".join(f"{shard} ({phase} {now - since:.0f}s)" for shard, (phase, since) in sorted(self._active.items()))
                self._write(f"running {len(self._active)}: {running}")
