"""Triton's custom metrics API for Python models: `pb_utils.MetricFamily` and its `Metric`s
(python_backend's "Custom Metrics"), also importable by inferd's own Python models as
`from inferd.backends.triton.metrics import MetricFamily`.

    family = MetricFamily("preprocess_ns", "Time spent pre-processing", MetricFamily.COUNTER)
    metric = family.Metric(labels={"stage": "resize"})          # buckets=[...] for HISTOGRAM
    metric.increment(123)   # COUNTER: non-negative only; GAUGE: either sign
    metric.set(4)           # GAUGE only
    metric.observe(0.2)     # HISTOGRAM only
    metric.value()          # COUNTER and GAUGE

Errors are Triton's, with its messages (TritonModelException; TypeError for arguments of the
wrong type): a family name reused with another kind, an invalid metric or label name, buckets
given to a counter or gauge or missing from a histogram, set() on a counter... A family's
metrics live as long as the MetricFamily object (Triton's rule): once it is deleted their
series go, and their Metric objects raise. Metric objects with the same labels in one family
share one value, as in Triton.

The values live in the worker process. `configure(metrics_dir, model, version)` is called in
the worker before the model loads (inferd.backends.worker; the Triton shim may call it again
with the same arguments, to no effect): from then on the process writes its families to
`<metrics_dir>/<pid>.json` (a temporary file renamed over it, so the daemon never reads half a
file): at the end of a batch that changed them, at most _BURST times in a row and then once per
_WRITE_EVERY_S (the rest by a thread), and at exit. Without a directory the API still works
and nothing is written. The daemon exports the files on /metrics
(inferd.daemon.operations.custom_metrics). What a model may create is bounded (families,
metrics per family, labels, lengths, the file's size): past a bound the model's call raises
TritonModelException saying which.
"""

from __future__ import annotations

import atexit
import bisect
import json
import math
import os
import threading
import time
import weakref
from multiprocessing import util as mp_util

from inferd.backends.triton.metrics_checks import (  # noqa: F401 (the bounds are this module's too, for the daemon)
    MAX_BUCKETS,
    MAX_DESCRIPTION_CHARS,
    MAX_FAMILIES,
    MAX_FILE_BYTES,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_METRICS_PER_FAMILY,
    MAX_NAME_CHARS,
    MetricKind,
    TritonModelException,
    check_family_arguments,
    checked_buckets,
    checked_labels,
    number,
)

_WRITE_EVERY_S = 0.1
_BURST = 16  # writes at the end of batches before they are spaced by _WRITE_EVERY_S
_SERIES_BYTES = 64  # a series' bytes in the file besides its labels and buckets (values, keys)


class _Series:
    """One labelled series of the process: what Metric objects with these labels share."""

    __slots__ = ("labels", "value", "buckets", "counts", "sum", "refs")

    def __init__(self, labels: dict[str, str], buckets: tuple[float, ...] | None):
        self.labels, self.buckets, self.value, self.sum, self.refs = labels, buckets, 0.0, 0.0, 0
        self.counts = [0] * (len(buckets) + 1) if buckets is not None else None  # per bucket, then +Inf

    def to_wire(self) -> dict:
        if self.buckets is None:
            return {"labels": self.labels, "value": self.value}
        return {"labels": self.labels, "buckets": list(self.buckets), "counts": self.counts, "sum": self.sum}


class _Family:
    def __init__(self, name: str, description: str, kind: MetricKind):
        self.name, self.description, self.kind = name, description, kind
        self.series: dict[tuple, _Series] = {}
        self.handles = 0  # MetricFamily objects of this name alive

    def to_wire(self) -> dict:
        return {"name": self.name, "description": self.description, "kind": self.kind.name.lower(),
                "metrics": [s.to_wire() for s in list(self.series.values())]}


class _Store:
    """The process's families, and their file."""

    def __init__(self):
        self.lock = threading.RLock()  # (re-entrant: a finalizer may run while it is held)
        self.families: dict[str, _Family] = {}
        self.bytes = 0  # the file's size, as estimated when series are created
        self.directory, self.model, self.version = "", "", ""
        self.dirty = False
        self._wake = threading.Event()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._tokens, self._refilled = float(_BURST), time.monotonic()
        self._started = (0, 0)  # (pid, its start time): what names this process in the file

    def configure(self, directory: str, model: str, version: str) -> None:
        with self.lock:
            self.directory, self.model, self.version = directory, model, version
            if self.families:  # (made before: written now)
                self.dirty = False
                self.changed()

    def changed(self) -> None:
        """(With the lock held.) Something to write; the writer starts with the first family,
        so that a process whose model has none writes nothing."""
        if self.dirty:
            return
        self.dirty = True
        if self.directory and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inferd-metrics", daemon=True)
            self._thread.start()
            atexit.register(self.write)  # a worker run by hand; a forked one runs multiprocessing's:
            mp_util.Finalize(self, self.write, exitpriority=10)
        self._wake.set()

    def batch_done(self) -> None:
        """The end of a batch: what it changed is written now, while writes are not too frequent."""
        if self.dirty and self.directory and self._token(take=True) == 0:
            self.write()
        elif self._writing.locked():  # the thread may be writing what the batch changed: let it finish
            with self._writing:
                pass

    def _token(self, take: bool) -> float:
        """Seconds until a write may start (0: now; `take`: one is taken)."""
        with self.lock:
            now = time.monotonic()
            self._tokens = min(float(_BURST), self._tokens + (now - self._refilled) / _WRITE_EVERY_S)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= take
                return 0.0
            return (1 - self._tokens) * _WRITE_EVERY_S

    def _run(self) -> None:
        """Writes what changed outside batches (in load, in a model's own threads)."""
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(_WRITE_EVERY_S)  # a batch in progress writes its own changes when it ends
            while (delay := self._token(take=False)) > 0:
                time.sleep(delay)
            if self.dirty and self._token(take=True) == 0:
                self.write()

    def write(self) -> None:
        """The families, as they are now, to <directory>/<pid>.json (atomically)."""
        with self._writing:
            with self.lock:
                if not self.directory:
                    return
                self.dirty = False
                directory = self.directory
                pid = os.getpid()
                if self._started[0] != pid:  # (read once per process)
                    self._started = (pid, process_start(pid))
                data = {"format": 1, "model": self.model, "version": self.version, "pid": pid, "start": self._started[1],
                        "families": [f.to_wire() for f in list(self.families.values()) if f.series]}
            text = json.dumps(data, separators=(",", ":"))
            if len(text) > MAX_FILE_BYTES:  # (the bounds checked at creation keep it well under)
                return
            tmp = os.path.join(directory, f".{pid}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, os.path.join(directory, f"{pid}.json"))
            except OSError:  # the daemon removed the directory: the model is being unloaded
                pass


def process_start(pid: int) -> int:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat): with the pid, it
    names the process (a reused pid has another). 0: no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


_store = _Store()


def configure(metrics_dir: str, model: str, version: str) -> None:
    """Where this process's families go ("" = nowhere), for model `model` version `version`
    (recorded in the file; the daemon knows the directory's model without trusting it)."""
    _store.configure(metrics_dir, model, version)


def batch_done() -> None:
    """Called by the worker after each batch, before it answers: a caller that got its answer
    finds what the batch changed on /metrics (unless batches come faster than writes may)."""
    _store.batch_done()


def _series_bytes(labels: dict[str, str], buckets: tuple[float, ...] | None) -> int:
    """A series' share of the file, at most (numbers in JSON take at most 24 characters)."""
    return _SERIES_BYTES + len(json.dumps(labels)) + 24 * (2 * len(buckets or ()) + 2)


class MetricFamily:
    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind):
        check_family_arguments(name, description, kind)
        kind = MetricKind(kind)
        with _store.lock:
            family = _store.families.get(name)
            if family is not None and family.kind is not kind:
                raise TritonModelException(
                    "Error when creating MetricFamily: Family name already exists with different type")
            if family is None:
                if len(_store.families) >= MAX_FAMILIES:
                    raise TritonModelException(f"Error when creating MetricFamily: a model may have at most "
                                               f"{MAX_FAMILIES} metric families in inferd")
                family = _store.families[name] = _Family(name, description, kind)
            family.handles += 1
        self._family = family
        self._bindings: list[_Binding] = []  # this object's metrics: they last as long as it does
        # (Not at exit: the process's last write has its families.)
        weakref.finalize(self, _release_family, family, self._bindings).atexit = False

    def Metric(self, labels: dict | None = None, buckets: list | None = None) -> Metric:  # noqa: N802 (Triton's name)
        family = self._family
        labels = checked_labels(labels, family.kind)
        buckets = checked_buckets(buckets, family.kind)
        key = tuple(sorted(labels.items()))
        with _store.lock:
            series = family.series.get(key)
            if series is None:
                if len(family.series) >= MAX_METRICS_PER_FAMILY:
                    raise TritonModelException(f"Error when creating Metric: a metric family may have at most "
                                               f"{MAX_METRICS_PER_FAMILY} metrics (label sets) in inferd")
                size = _series_bytes(labels, buckets)
                if _store.bytes + size > MAX_FILE_BYTES // 2:
                    raise TritonModelException("Error when creating Metric: the model's metrics would exceed "
                                               f"{MAX_FILE_BYTES // 2} bytes in inferd; use fewer or shorter labels")
                series = family.series[key] = _Series(labels, buckets)
                _store.bytes += size
                _store.changed()
            series.refs += 1
            binding = _Binding(family, series)
            self._bindings.append(binding)
        return Metric(binding)


class _Binding:
    """A Metric object's series, until its MetricFamily object goes."""

    __slots__ = ("family", "series", "cleared")

    def __init__(self, family: _Family, series: _Series):
        self.family, self.series, self.cleared = family, series, False


def _release_family(family: _Family, bindings: list[_Binding]) -> None:
    with _store.lock:
        for binding in bindings:
            binding.cleared = True
            series = binding.series
            series.refs -= 1
            if series.refs == 0 and family.series.get(key := tuple(sorted(series.labels.items()))) is series:
                del family.series[key]
                _store.bytes -= _series_bytes(series.labels, series.buckets)
        family.handles -= 1
        if family.handles == 0 and _store.families.get(family.name) is family:
            del _store.families[family.name]
        _store.changed()


_CLEARED = ("Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The 'MetricFamily' "
            "object should be deleted AFTER its corresponding 'Metric' objects have been deleted.")
_KIND = {MetricKind.COUNTER: "TRITONSERVER_METRIC_KIND_COUNTER", MetricKind.GAUGE: "TRITONSERVER_METRIC_KIND_GAUGE",
         MetricKind.HISTOGRAM: "TRITONSERVER_METRIC_KIND_HISTOGRAM"}


class Metric:
    """One labelled series of a family (made by MetricFamily.Metric)."""

    def __init__(self, binding: _Binding):
        self._binding = binding

    def _series(self, failed: str, supported: tuple[MetricKind, ...], operation: str) -> _Series:
        binding = self._binding
        if binding.cleared:
            raise TritonModelException(f"{failed}: {_CLEARED}")
        kind = binding.family.kind
        if kind not in supported:
            raise TritonModelException(f"{failed}: {_KIND[kind]} does not support {operation}")
        return binding.series

    def increment(self, value: float) -> None:
        value = number(value, "increment")
        failed = "Failed to increment metric value"
        series = self._series(failed, (MetricKind.COUNTER, MetricKind.GAUGE), "Increment")
        if self._binding.family.kind is MetricKind.COUNTER and not value >= 0:
            raise TritonModelException(f"{failed}: TRITONSERVER_METRIC_KIND_COUNTER can only be incremented "
                                       "monotonically by non-negative values.")
        with _store.lock:
            series.value += value
            _store.changed()

    def set(self, value: float) -> None:
        value = number(value, "set")
        series = self._series("Failed to set metric value", (MetricKind.GAUGE,), "Set")
        with _store.lock:
            series.value = value
            _store.changed()

    def observe(self, value: float) -> None:
        value = number(value, "observe")
        series = self._series("Failed to observe metric value", (MetricKind.HISTOGRAM,), "Observe")
        # The first bucket whose bound is at least the value (NaN: none, as in prometheus-cpp).
        i = bisect.bisect_left(series.buckets, value) if not math.isnan(value) else len(series.buckets)
        with _store.lock:
            series.counts[i] += 1
            series.sum += value
            _store.changed()

    def value(self) -> float:
        return self._series("Failed to get metric value", (MetricKind.COUNTER, MetricKind.GAUGE), "Value").value
