"""A model version that is gone leaves no gauge behind: summed across a host's versions, or a
fleet's hosts, a stale one would count memory, queue room and workers nobody holds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from inferd.daemon.models.version import ModelState
from inferd.daemon.operations.metrics import Metrics, VersionObserver


def _samples(registry: CollectorRegistry, version: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if not line.startswith("#") and f'version="{version}"' in line]


def _gauges(lines: list[str]) -> set[str]:
    return {line.split("{")[0] for line in lines if not line.split("{")[0].endswith(("_total", "_created", "_bucket", "_count", "_sum"))}


def test_a_gone_version_leaves_no_gauges_and_keeps_its_counters():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for version in ("1", "2"):
        observer = VersionObserver(metrics, "m", version)
        observer.loaded(0.5)
        observer.queue_rows(3)
        observer.memory_limits(batch_rows=64, queue_rows=1024, queue_bytes=1 << 20, bytes_per_row=100, used=1 << 26)
        observer.request_done("http", "OK", 0.01)
        observer.load_failed()
        metrics.publish_version("m", version, ModelState.READY, workers=1)
    before = _gauges(_samples(registry, "1"))
    assert {"inferd_worker_memory_bytes", "inferd_queue_limit_rows", "inferd_queue_rows", "inferd_model_state",
            "inferd_workers", "inferd_model_load_seconds", "inferd_model_batch_limit"} <= before

    metrics.publish_version("m", "1", None, workers=0)

    gone = _samples(registry, "1")
    assert _gauges(gone) == set()
    assert any(line.startswith("inferd_requests_total{") for line in gone)  # counters stay: rate() goes to 0
    assert any(line.startswith("inferd_model_load_failures_total{") for line in gone)
    assert _gauges(_samples(registry, "2")) == before  # the other version keeps all of its own
