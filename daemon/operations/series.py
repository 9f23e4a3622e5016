"""The Prometheus series that change on every request, kept as plain numbers.

prometheus_client's Counter, Gauge and Histogram take a lock on every update (a histogram takes
two), which cost the data plane ~3 µs per request. These series are only ever written from the
daemon's event loop, so they need no lock: each is a collector that keeps its counts per
label set and renders them when /metrics is scraped, in the text format prometheus_client's
own Counter, Gauge and Histogram produce (without their `_created` samples).
"""

from __future__ import annotations

import bisect
import math

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sum += value


class _Series:
    def __init__(self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(str(v) for v in values), None)

    def _child(self):
        raise NotImplementedError


class _ValueSeries(_Series):
    """A series of one number per label set."""

    _family = CounterMetricFamily

    def collect(self):
        family = self._family(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class LoopCounter(_ValueSeries):
    """A labelled counter written from one thread only."""

    _child = CounterChild
    _family = CounterMetricFamily


class LoopGauge(_ValueSeries):
    """A labelled gauge written from one thread only."""

    _child = GaugeChild
    _family = GaugeMetricFamily


class LoopHistogram(_Series):
    """A labelled histogram written from one thread only."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets, registry: CollectorRegistry):
        self.bounds = tuple(sorted(float(b) for b in buckets if b != math.inf))
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, child.counts):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(values, buckets, child.sum)
        yield family
