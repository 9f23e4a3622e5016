"""The two formats of models' custom metrics: the file a worker writes
(inferd.backends.triton.metrics), read here without trusting any of it, and Prometheus' text
format, written as Triton writes it (a counter's samples carry the family's name, no _total)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable

from prometheus_client.utils import floatToGoString

from inferd.backends.triton import metrics as writer  # the workers' side: its bounds

KINDS = ("counter", "gauge", "histogram")

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[float]  # per bucket, then +Inf
    sum: float


@dataclasses.dataclass
class Family:
    kind: str
    description: str
    series: dict[Labels, float | Histogram]


class Malformed(Exception):
    """A file that is not what a worker writes (the reason)."""


# -- a file's content, checked -------------------------------------------------------------------

def parse(data: bytes) -> tuple[int, dict[str, Family]]:
    """(the writer's start time, its families by valid name) from a worker's file."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("families"), list) or not _is_int(doc.get("start")):
        raise Malformed("not a metrics file")
    if len(doc["families"]) > writer.MAX_FAMILIES:
        raise Malformed(f"over {writer.MAX_FAMILIES} families")
    families = {}
    for raw in doc["families"]:
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS or not isinstance(raw.get("metrics"), list):
            raise Malformed("a family is not {name, description, kind, metrics}")
        name = _metric_name(_text(raw.get("name"), writer.MAX_NAME_CHARS, "a family's name"))
        description = _text(raw.get("description"), writer.MAX_DESCRIPTION_CHARS, "a description")
        if len(raw["metrics"]) > writer.MAX_METRICS_PER_FAMILY:
            raise Malformed(f"over {writer.MAX_METRICS_PER_FAMILY} metrics in a family")
        series = {}
        for metric in raw["metrics"]:
            if not isinstance(metric, dict):
                raise Malformed("a metric is not an object")
            series[_labels(metric.get("labels"), raw["kind"])] = _value(metric, raw["kind"])
        families[name] = Family(raw["kind"], description, series)
    return doc["start"], families


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(x, most: int, what: str) -> str:
    if not isinstance(x, str) or len(x) > most:
        raise Malformed(f"{what} is not a string of at most {most} characters")
    return x


def _metric_name(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    return name if name and not name[0].isdigit() and not name.startswith("__") else "_" + name.lstrip("_")


def _label_name(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return name if name and not name[0].isdigit() and not name.startswith("__") else "l_" + name.lstrip("_")


def _labels(raw, kind: str) -> Labels:
    """The labels, named validly, less those the daemon sets (model, version; le of histograms)."""
    if not isinstance(raw, dict) or len(raw) > writer.MAX_LABELS:
        raise Malformed(f"labels are not an object of at most {writer.MAX_LABELS} names")
    labels = {}
    for name, value in raw.items():
        name = _label_name(_text(name, writer.MAX_NAME_CHARS, "a label's name"))
        labels[name] = _text(value, writer.MAX_LABEL_VALUE_CHARS, "a label's value")
    for ours in ("model", "version", "le") if kind == "histogram" else ("model", "version"):
        labels.pop(ours, None)
    return tuple(sorted(labels.items()))


def _value(metric: dict, kind: str) -> float | Histogram:
    if kind != "histogram":
        value = metric.get("value")
        if not _is_number(value) or (kind == "counter" and not value >= 0):
            raise Malformed(f"a {kind}'s value is not a{' non-negative' if kind == 'counter' else ''} number")
        return float(value)
    buckets, counts, total = metric.get("buckets"), metric.get("counts"), metric.get("sum")
    if not isinstance(buckets, list) or len(buckets) > writer.MAX_BUCKETS or not all(_is_number(b) and math.isfinite(b) for b in buckets) \
            or any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise Malformed(f"a histogram's buckets are not at most {writer.MAX_BUCKETS} finite bounds, strictly increasing")
    if not isinstance(counts, list) or len(counts) != len(buckets) + 1 or not all(_is_number(c) and c >= 0 for c in counts) \
            or not _is_number(total):
        raise Malformed("a histogram's counts are not one non-negative number per bucket and +Inf, or its sum not a number")
    return Histogram(tuple(float(b) for b in buckets), [float(c) for c in counts], float(total))


# -- the text format -----------------------------------------------------------------------------

class Exposition:
    """Families of every version, under one HELP and TYPE each."""

    def __init__(self, say: Callable[..., None]):
        self._say = say
        self._families: dict[str, tuple[str, str, list[str]]] = {}  # name -> kind, description, sample lines
        self._samples: dict[str, str] = {}  # sample name -> the family that writes it

    def add(self, model: str, version: str, name: str, family: Family) -> None:
        if not family.series:
            return
        known = self._families.get(name)
        problem = None
        if name.startswith("inferd_"):
            problem = "its name is like the daemon's own metrics (inferd_*)"
        elif known is not None and known[0] != family.kind:
            problem = f"another model has a {known[0]} of that name"
        elif known is None and any(self._samples.get(s, name) != name for s in _sample_names(name, family.kind)):
            problem = "its series would take another family's names"
        if problem is not None:
            self._say(("refused", model, version, name), "custom metric family left out", model=model,
                      version=version, family=name, reason=problem)
            return
        if known is None:
            known = self._families[name] = (family.kind, family.description, [])
            for s in _sample_names(name, family.kind):
                self._samples[s] = name
        lines = known[2]
        ours = (("model", model), ("version", version))
        for labels, value in sorted(family.series.items()):
            if isinstance(value, Histogram):
                lines += _histogram_lines(name, ours + labels, value)
            else:
                lines.append(f"{name}{_label_text(ours + labels)} {floatToGoString(value)}\n")

    def text(self) -> str:
        out = []
        for name, (kind, description, lines) in self._families.items():
            help_text = description.replace("\\", r"\\").replace("\n", r"\n")
            out += [f"# HELP {name} {help_text}\n", f"# TYPE {name} {kind}\n", *lines]
        return "".join(out)


def _sample_names(name: str, kind: str) -> tuple[str, ...]:
    return (name, f"{name}_bucket", f"{name}_count", f"{name}_sum") if kind == "histogram" else (name,)


def _label_text(labels: Labels) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return "{" + ",".join(f'{k}="{escaped(v)}"' for k, v in labels) + "}"


def _histogram_lines(name: str, labels: Labels, h: Histogram) -> list[str]:
    lines, total = [], 0.0
    for bound, count in zip((*h.buckets, math.inf), h.counts):
        total += count
        lines.append(f"{name}_bucket{_label_text((*labels, ('le', floatToGoString(bound))))} {floatToGoString(total)}\n")
    lines.append(f"{name}_count{_label_text(labels)} {floatToGoString(total)}\n")
    lines.append(f"{name}_sum{_label_text(labels)} {floatToGoString(h.sum)}\n")
    return lines
