"""The lock-free series render exactly what prometheus_client's Counter, Gauge and Histogram
render for the same updates (less their `_created` samples)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferd.daemon.operations.series import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10)
VALUES = [0.0005, 0.001, 0.002, 0.01, 0.5, 1, 7, 10, 11, 1e9]  # on, under and over the bounds


def _text(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_histogram_renders_like_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("t_seconds", "a test histogram", ["model", "version"], BUCKETS, ours)
    reference = Histogram("t_seconds", "a test histogram", ["model", "version"], buckets=BUCKETS, registry=theirs)
    for i, v in enumerate(VALUES):
        mine.labels("m", str(i % 2)).observe(v)
        reference.labels("m", str(i % 2)).observe(v)
    mine.labels("empty", "1")  # a label set with no observations yet still shows, at zero
    reference.labels("empty", "1")
    assert _text(ours) == _text(theirs)
    assert 't_seconds_bucket{le="1.0",model="m",version="0"} 3.0' in _text(ours)


def test_counter_renders_like_prometheus_client_and_removes_label_sets():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("t_requests", "a test counter", ["model", "code"], ours)
    reference = Counter("t_requests", "a test counter", ["model", "code"], registry=theirs)
    for code, n in (("OK", 3), ("NOT_FOUND", 1), ("GONE", 2)):
        for _ in range(n):
            mine.labels("m", code).inc()
            reference.labels("m", code).inc()
    mine.labels("m", "OK").inc(2.5)
    reference.labels("m", "OK").inc(2.5)
    mine.remove("m", "GONE")
    reference.remove("m", "GONE")
    assert _text(ours) == _text(theirs)
    assert 't_requests_total{code="OK",model="m"} 5.5' in _text(ours)


def test_gauge_renders_like_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopGauge("t_rows", "a test gauge", ["model", "version"], ours)
    reference = Gauge("t_rows", "a test gauge", ["model", "version"], registry=theirs)
    for version, values in (("1", (3, 0, 7)), ("2", (1,)), ("3", (2.5,))):
        for v in values:  # the last value set is what shows
            mine.labels("m", version).set(v)
            reference.labels("m", version).set(v)
    mine.labels("m", "4")
    reference.labels("m", "4")
    assert _text(ours) == _text(theirs)
    assert 't_rows{model="m",version="1"} 7.0' in _text(ours)
