"""Prometheus metrics (names from DESIGN.md) on a registry the daemon owns, and the per-version
statistics that Triton's clients read from /v2/models/{m}/stats."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferd.daemon.operations.custom_metrics import CustomMetrics
from inferd.daemon.operations.series import LoopCounter, LoopGauge, LoopHistogram
from inferd.scheduler.limits import LimitsObserver
from inferd.scheduler.pool import PoolObserver
from inferd.scheduler.tickets import QueueObserver

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MV = ["model", "version"]


class Metrics(LimitsObserver):
    def __init__(self, registry: CollectorRegistry, custom: CustomMetrics | None = None):
        self.registry = registry
        self.custom = custom  # Python models' own metrics (None: not collected)
        self._published: dict[tuple[str, str], type[enum.Enum]] = {}  # versions with state series
        self._per_request_series(registry)
        self._memory_series(registry)
        self._lifecycle_series(registry)

    def _per_request_series(self, registry: CollectorRegistry) -> None:
        """Updated on every request or batch: lock-free series (inferd.daemon.operations.series)."""
        mv = MV
        self.requests = LoopCounter(
            "inferd_requests", "Inference requests by outcome code", mv + ["protocol", "code"], registry,
        )
        self.request_duration = LoopHistogram(
            "inferd_request_duration_seconds", "Time from a request's arrival in the data plane to its answer",
            mv, _LATENCY_BUCKETS, registry,
        )
        self.queue_duration = LoopHistogram(
            "inferd_queue_duration_seconds", "Time requests wait in the queue before their batch starts",
            mv, _LATENCY_BUCKETS, registry,
        )
        self.compute_duration = LoopHistogram(
            "inferd_compute_duration_seconds", "Time a batch spends in its worker (including IPC)",
            mv, _LATENCY_BUCKETS, registry,
        )
        self.batch_size = LoopHistogram("inferd_batch_size", "Rows per executed batch", mv, _BATCH_BUCKETS, registry)
        self.queue_rows = LoopGauge("inferd_queue_rows", "Rows waiting in the queue", mv, registry)
        self.rejected = Counter(
            "inferd_rejected", "Requests refused before queueing", mv + ["reason"], registry=registry,
        )
        self.unauthenticated = Counter(
            "inferd_unauthenticated", "Calls refused for a missing or wrong token", ["protocol"], registry=registry,
        )

    def _memory_series(self, registry: CollectorRegistry) -> None:
        mv = MV
        self.queue_limit_rows = Gauge("inferd_queue_limit_rows", "Rows the queue may hold", mv, registry=registry)
        self.batch_limit = Gauge("inferd_model_batch_limit", "Largest batch the scheduler forms", mv, registry=registry)
        self.queue_limit_bytes = Gauge("inferd_queue_limit_bytes", "Input bytes the queue may hold", mv, registry=registry)
        self.bytes_per_row = Gauge(
            "inferd_model_bytes_per_row", "Measured memory a row of a batch costs a worker", mv, registry=registry,
        )
        self.worker_memory = Gauge(
            "inferd_worker_memory_bytes", "Memory the version's workers hold on their device", mv, registry=registry,
        )
        self.device_free = Gauge("inferd_device_memory_free_bytes", "Free memory per device", ["device"], registry=registry)
        self.device_total = Gauge("inferd_device_memory_total_bytes", "Memory per device", ["device"], registry=registry)
        self.workers_refused = Counter(
            "inferd_workers_refused", "Workers not started for want of memory", mv + ["reason"], registry=registry,
        )
        self.out_of_memory = Counter(
            "inferd_oom", "Batches whose runtime could not allocate memory", mv, registry=registry,
        )

    def _lifecycle_series(self, registry: CollectorRegistry) -> None:
        mv = MV
        self.model_state = Gauge(
            "inferd_model_state", "1 for the model version's current state", mv + ["state"], registry=registry,
        )
        self.model_load_seconds = Gauge(
            "inferd_model_load_seconds", "Seconds the last load of the version took", mv, registry=registry,
        )
        self.load_failures = Counter(
            "inferd_model_load_failures", "Loads of a model version that failed", mv, registry=registry,
        )
        self.workers = Gauge("inferd_workers", "Worker processes", mv, registry=registry)
        self.cold_starts = Counter(
            "inferd_cold_starts", "Workers started because a request arrived with none running", mv, registry=registry,
        )
        self.cold_start_seconds = Histogram(
            "inferd_cold_start_seconds", "Cold starts: forking the worker (spawn), then loading and warming the model (load)",
            mv + ["phase"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry,
        )
        self.worker_exits = Counter(
            "inferd_worker_exits", "Worker processes that exited", mv + ["cause"], registry=registry,
        )

    def device_memory(self, device: str, free: int, total: int) -> None:
        self.device_free.labels(device).set(free)
        self.device_total.labels(device).set(total)

    def publish_version(self, model: str, version: str, state: enum.Enum | None, workers: int) -> None:
        """A model version's state (1 for it, 0 for every other state of its enum) and its
        workers; with no state, the version is gone and so are its series."""
        states = self._published.pop((model, version), None) if state is None else type(state)
        if state is None:
            for s in states or ():
                self.model_state.remove(model, version, s.value)
            if states is not None:
                self.workers.remove(model, version)
            if self.custom is not None:
                self.custom.forget(model, version)
            return
        self._published[(model, version)] = states
        for s in states:
            self.model_state.labels(model, version, s.value).set(1 if s is state else 0)
        self.workers.labels(model, version).set(workers)


def _stat() -> dict:
    return {"count": 0, "ns": 0}


class VersionObserver(QueueObserver, PoolObserver):
    """Feeds one model version's Prometheus series and its Triton-style statistics."""

    def __init__(self, metrics: Metrics, model: str, version: str,
                 on_workers: Callable[[tuple[str, str]], None] = lambda key: None):
        self.model = model
        self.version = version
        self._metrics = metrics
        self._on_workers = on_workers  # the workers gauge sums every generation: the repository sets it
        # Label lookups resolved once: they are the costly part of an observation.
        self._queue_rows = metrics.queue_rows.labels(model, version)
        self._queue_duration = metrics.queue_duration.labels(model, version)
        self._compute = metrics.compute_duration.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._request_duration = metrics.request_duration.labels(model, version)
        self._requests = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.stats = {k: _stat() for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
        self.batch_stats: dict[int, dict] = {}

    def queue_rows(self, rows: int) -> None:
        self._queue_rows.set(rows)

    def custom_metrics_dir(self) -> str:
        """Where the version's workers write the model's own metrics ("" = nowhere)."""
        custom = self._metrics.custom
        return custom.directory_for(self.model, self.version) if custom is not None else ""

    def workers_changed(self, count: int) -> None:
        self._on_workers((self.model, self.version))

    def loaded(self, seconds: float) -> None:
        self._metrics.model_load_seconds.labels(self.model, self.version).set(seconds)

    def load_failed(self) -> None:
        self._metrics.load_failures.labels(self.model, self.version).inc()

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(self.model, self.version, reason).inc()

    def batch_limit(self, rows: int) -> None:
        self._metrics.batch_limit.labels(self.model, self.version).set(rows)

    def cold_start(self, spawn_s: float, load_s: float) -> None:
        m, labels = self._metrics, (self.model, self.version)
        m.cold_starts.labels(*labels).inc()
        m.cold_start_seconds.labels(*labels, "spawn").observe(spawn_s)
        m.cold_start_seconds.labels(*labels, "load").observe(load_s)

    def worker_exited(self, cause: str) -> None:
        self._metrics.worker_exits.labels(self.model, self.version, cause).inc()

    def worker_refused(self, kind: str) -> None:
        self._metrics.workers_refused.labels(self.model, self.version, kind).inc()

    def out_of_memory(self, rows: int) -> None:
        self._metrics.out_of_memory.labels(self.model, self.version).inc()

    def memory_limits(self, batch_rows: int, queue_rows: int, queue_bytes: int, bytes_per_row: int, used: int) -> None:
        m, labels = self._metrics, (self.model, self.version)
        m.batch_limit.labels(*labels).set(batch_rows)
        m.queue_limit_rows.labels(*labels).set(queue_rows)
        m.queue_limit_bytes.labels(*labels).set(queue_bytes)
        m.bytes_per_row.labels(*labels).set(bytes_per_row)
        m.worker_memory.labels(*labels).set(used)

    def dequeued(self, waited_s: float) -> None:
        self._queue_duration.observe(waited_s)
        q = self.stats["queue"]
        q["count"] += 1
        q["ns"] += int(waited_s * 1e9)

    def batch_done(self, requests: int, rows: int, compute_s: float, ok: bool) -> None:
        self._compute.observe(compute_s)
        self._batch_size.observe(rows)
        if not ok:
            return
        ns = int(compute_s * 1e9)
        self.execution_count += 1
        self.inference_count += rows
        infer = self.stats["compute_infer"]
        infer["count"] += requests  # like Triton: every request in the batch is charged the batch's time
        infer["ns"] += ns * requests
        for key in ("compute_input", "compute_output"):  # not measured apart: inside compute_infer
            self.stats[key]["count"] += requests
        per_size = self.batch_stats.get(rows)
        if per_size is None:
            per_size = self.batch_stats[rows] = {"compute_infer": _stat()}
        per_size = per_size["compute_infer"]
        per_size["count"] += 1
        per_size["ns"] += ns

    def request_done(self, protocol: str, code: str, seconds: float) -> None:
        counter = self._requests.get((protocol, code))
        if counter is None:
            counter = self._requests[(protocol, code)] = self._metrics.requests.labels(
                self.model, self.version, protocol, code
            )
        counter.inc()
        self._request_duration.observe(seconds)
        s = self.stats["success" if code == "OK" else "fail"]
        s["count"] += 1
        s["ns"] += int(seconds * 1e9)
        if code == "OK":
            self.last_inference_ms = int(time.time() * 1000)

    def triton_stats(self) -> dict:
        zero = _stat()
        return {
            "name": self.model,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {**self.stats, "cache_hit": zero, "cache_miss": zero},
            "batch_stats": [
                {"batch_size": size, "compute_input": _stat(), "compute_infer": dict(s["compute_infer"]), "compute_output": _stat()}
                for size, s in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
        }


class SourceMetrics:
    """The model source's series (models.source; only when one is configured)."""

    RESULTS = ("ok", "partial", "unreachable", "denied", "error")

    def __init__(self, registry: CollectorRegistry):
        self.up = Gauge("inferd_model_source_up", "1 while the model source answered its last listing, else 0",
                        registry=registry)
        self.syncs = Counter("inferd_model_source_syncs", "Synchronisations with the model source by result",
                             ["result"], registry=registry)
        for result in self.RESULTS:
            self.syncs.labels(result)
        self.last_success = Gauge("inferd_model_source_last_success_timestamp_seconds",
                                  "When the model source was last listed and mirrored (Unix time; 0: never)",
                                  registry=registry)
        self.downloaded_objects = Counter("inferd_model_source_downloaded_objects",
                                          "Objects downloaded from the model source", registry=registry)
        self.downloaded_bytes = Counter("inferd_model_source_downloaded_bytes",
                                        "Bytes downloaded from the model source", registry=registry)
        self.deleted_files = Counter("inferd_model_source_deleted_files",
                                     "Mirrored files deleted because their objects were gone", registry=registry)

    def synced(self, result: str, downloaded: int = 0, downloaded_bytes: int = 0, deleted: int = 0) -> None:
        self.syncs.labels(result).inc()
        self.up.set(1 if result in ("ok", "partial") else 0)
        if result in ("ok", "partial"):
            self.last_success.set(time.time())
        self.downloaded_objects.inc(downloaded)
        self.downloaded_bytes.inc(downloaded_bytes)
        self.deleted_files.inc(deleted)
