"""What a closed-loop client saw (shared by the HTTP clients in the pytest process and the gRPC
clients in their subprocess): successes by the version that answered, failures by reason."""

from __future__ import annotations

import collections
import threading
import time


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: collections.Counter = collections.Counter()
        self.versions: collections.Counter = collections.Counter()
        self.first_seen: dict[int, float] = {}  # version -> CLOCK_MONOTONIC (the same in every process)

    def success(self, version: int) -> None:
        with self.lock:
            self.ok += 1
            self.versions[version] += 1
            self.first_seen.setdefault(version, time.monotonic())

    def failure(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] += 1

    def summary(self) -> dict:
        with self.lock:
            return {"ok": self.ok, "failed": sum(self.failures.values()), "failures": dict(self.failures),
                    "versions": {str(v): n for v, n in sorted(self.versions.items())},
                    "first_seen": {str(v): t for v, t in sorted(self.first_seen.items())}}
