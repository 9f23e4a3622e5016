"""Python models' own metrics (Triton's custom metrics: inferd.backends.triton.metrics) on the
daemon's /metrics, after its own series.

Where they come from: at the first load the daemon makes a directory of its own (mode 0700, by
mkdtemp, in $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR, else the temporary directory; removed
at stop), and in it one directory per model version (`directory_for`, the workers' `metrics_dir`);
each worker process writes `<pid>.json` in its version's. Which model a file belongs to is known
from its directory, never from what it says.

A scrape reads every version's files (each at most MAX_FILE_BYTES, in a thread) and exports each
family with `model` and `version` labels added (replacing any the model set, so that no model
speaks for another), merging the version's workers: counters and histograms are summed, and so
are gauges (what each worker holds adds up: items in flight, memory, cache entries; a model
that wants one gauge per worker adds a label of its own). A worker that is gone (its pid is not
running the process that wrote the file) leaves its counters and histograms to the version's
total, so they do not go back when workers scale down; its gauges go, and so does its file.
Everything of a version goes when it is unloaded (`forget`).

Nothing in a file is trusted: one that is too big, not JSON or not the expected shape is
ignored, with one log line; names are made valid Prometheus names; a family named like one of
inferd's own (inferd_*), or whose series would take another family's names, or whose kind
differs from the same name's in another model, is left out (also logged once).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading

import structlog
from prometheus_client.utils import floatToGoString

from inferd.backends.triton import metrics as writer  # the workers' side: its bounds, process_start

log = structlog.get_logger("inferd.metrics")

MAX_FILES = 256  # per version: its workers (more are not read)
MAX_RETIRED_SERIES = 20_000  # per version: the counters and histograms gone workers left
_FILE_NAME = re.compile(r"[1-9][0-9]{0,9}\.json\Z")
_KINDS = ("counter", "gauge", "histogram")

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[float]  # per bucket, then +Inf
    sum: float


@dataclasses.dataclass
class _Family:
    kind: str
    description: str
    series: dict[Labels, float | _Histogram]


class _Malformed(Exception):
    pass


@dataclasses.dataclass
class _Version:
    model: str
    version: str
    path: str
    retired: dict[str, _Family] = dataclasses.field(default_factory=dict)


class CustomMetrics:
    def __init__(self, base: str | None = None):
        self._base = base  # where the daemon's directory goes (None: the runtime directory)
        self._root = ""
        self._versions: dict[tuple[str, str], _Version] = {}
        self._lock = threading.Lock()  # scrapes run in threads
        self._made = 0
        self._said: set[tuple] = set()

    def directory_for(self, model: str, version: str) -> str:
        """The directory a version's workers write to ("" where none can be made)."""
        with self._lock:
            known = self._versions.get((model, version))
            if known is not None:
                return known.path
            try:
                if not self._root:
                    self._root = tempfile.mkdtemp(prefix="inferd-metrics-", dir=self._base or _runtime_directory())
                self._made += 1
                path = os.path.join(self._root, str(self._made))
                os.mkdir(path, 0o700)
            except OSError as e:
                self._say(("mkdir",), "models' custom metrics are off: no directory for them", error=str(e))
                return ""
            self._versions[(model, version)] = _Version(model, version, path)
            return path

    def forget(self, model: str, version: str) -> None:
        """The version is unloaded: its metrics go."""
        with self._lock:
            gone = self._versions.pop((model, version), None)
        if gone is not None:
            shutil.rmtree(gone.path, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, ""
            self._versions.clear()
        if root:
            shutil.rmtree(root, ignore_errors=True)

    def exposition(self) -> bytes:
        """The models' families in Prometheus' text format (as Triton writes them: a counter's
        samples carry the family's name, without _total)."""
        out = _Exposition(self._say)
        with self._lock:
            for key in sorted(self._versions):
                v = self._versions[key]
                for name, family in sorted(self._families(v).items()):
                    out.add(v, name, family)
        return out.text().encode()

    def _families(self, v: _Version) -> dict[str, _Family]:
        """A version's families: what gone workers left, and what the running ones have now."""
        live = []
        for pid, path in _files(v.path):
            try:
                start, families = _parse(_read(path))
            except _Malformed as e:
                if writer.process_start(pid) == 0:  # and written by no one now: not worth keeping
                    _remove(path)
                self._say(("malformed", path), "custom metrics file ignored", model=v.model, version=v.version,
                          file=os.path.basename(path), reason=str(e))
                continue
            if start != 0 and writer.process_start(pid) == start:
                live.append(families)
                continue
            _remove(path)
            kept = {n: dataclasses.replace(f, series=dict(f.series)) for n, f in families.items() if f.kind != "gauge"}
            if sum(len(f.series) for f in v.retired.values()) + sum(len(f.series) for f in kept.values()) > MAX_RETIRED_SERIES:
                self._say(("retired", v.path), "a gone worker's custom metrics dropped: too many series",
                          model=v.model, version=v.version, most=MAX_RETIRED_SERIES)
                continue
            self._merge(v, v.retired, kept)
        merged = {n: _copy(f) for n, f in v.retired.items()}
        for families in live:
            self._merge(v, merged, families)
        return merged

    def _merge(self, v: _Version, into: dict[str, _Family], families: dict[str, _Family]) -> None:
        for name, family in families.items():
            mine = into.get(name)
            if mine is None:
                into[name] = _copy(family)
                continue
            if mine.kind != family.kind:
                self._say(("kind", v.path, name), "custom metric family left out: its workers disagree on its kind",
                          model=v.model, version=v.version, family=name)
                continue
            for labels, value in family.series.items():
                have = mine.series.get(labels)
                if have is None:
                    mine.series[labels] = _copy_value(value)
                elif isinstance(have, _Histogram):
                    if have.buckets == value.buckets:
                        have.counts = [a + b for a, b in zip(have.counts, value.counts)]
                        have.sum += value.sum
                else:
                    mine.series[labels] = have + value

    def _say(self, key: tuple, event: str, **fields) -> None:
        """Logs `event` once for `key`."""
        if key in self._said:
            return
        if len(self._said) > 4096:
            self._said.clear()
        self._said.add(key)
        log.warning(event, **fields)


def _runtime_directory() -> str:
    return (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or os.environ.get("XDG_RUNTIME_DIR")
            or tempfile.gettempdir())


def _files(directory: str) -> list[tuple[int, str]]:
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if _FILE_NAME.match(e.name)]
    except OSError:
        return []
    return [(int(n[:-5]), os.path.join(directory, n)) for n in sorted(names)[:MAX_FILES]]


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise _Malformed(f"cannot open it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Malformed("not a regular file")
        data = f.read(writer.MAX_FILE_BYTES + 1)
    if len(data) > writer.MAX_FILE_BYTES:
        raise _Malformed(f"over {writer.MAX_FILE_BYTES} bytes")
    return data


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _copy_value(value):
    return dataclasses.replace(value, counts=list(value.counts)) if isinstance(value, _Histogram) else value


def _copy(family: _Family) -> _Family:
    return _Family(family.kind, family.description, {k: _copy_value(v) for k, v in family.series.items()})


# -- a file's content, checked -------------------------------------------------------------------

def _parse(data: bytes) -> tuple[int, dict[str, _Family]]:
    """(the writer's start time, its families by valid name) from a worker's file."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _Malformed("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("families"), list) or not _is_int(doc.get("start")):
        raise _Malformed("not a metrics file")
    if len(doc["families"]) > writer.MAX_FAMILIES:
        raise _Malformed(f"over {writer.MAX_FAMILIES} families")
    families = {}
    for raw in doc["families"]:
        if not isinstance(raw, dict) or raw.get("kind") not in _KINDS or not isinstance(raw.get("metrics"), list):
            raise _Malformed("a family is not {name, description, kind, metrics}")
        name = _metric_name(_text(raw.get("name"), writer.MAX_NAME_CHARS, "a family's name"))
        description = _text(raw.get("description"), writer.MAX_DESCRIPTION_CHARS, "a description")
        if len(raw["metrics"]) > writer.MAX_METRICS_PER_FAMILY:
            raise _Malformed(f"over {writer.MAX_METRICS_PER_FAMILY} metrics in a family")
        series = {}
        for metric in raw["metrics"]:
            if not isinstance(metric, dict):
                raise _Malformed("a metric is not an object")
            series[_labels(metric.get("labels"), raw["kind"])] = _value(metric, raw["kind"])
        families[name] = _Family(raw["kind"], description, series)
    return doc["start"], families


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(x, most: int, what: str) -> str:
    if not isinstance(x, str) or len(x) > most:
        raise _Malformed(f"{what} is not a string of at most {most} characters")
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
        raise _Malformed(f"labels are not an object of at most {writer.MAX_LABELS} names")
    labels = {}
    for name, value in raw.items():
        name = _label_name(_text(name, writer.MAX_NAME_CHARS, "a label's name"))
        labels[name] = _text(value, writer.MAX_LABEL_VALUE_CHARS, "a label's value")
    for ours in ("model", "version", "le") if kind == "histogram" else ("model", "version"):
        labels.pop(ours, None)
    return tuple(sorted(labels.items()))


def _value(metric: dict, kind: str) -> float | _Histogram:
    if kind != "histogram":
        value = metric.get("value")
        if not _is_number(value) or (kind == "counter" and not value >= 0):
            raise _Malformed(f"a {kind}'s value is not a{' non-negative' if kind == 'counter' else ''} number")
        return float(value)
    buckets, counts, total = metric.get("buckets"), metric.get("counts"), metric.get("sum")
    if not isinstance(buckets, list) or len(buckets) > writer.MAX_BUCKETS or not all(_is_number(b) and math.isfinite(b) for b in buckets) \
            or any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise _Malformed(f"a histogram's buckets are not at most {writer.MAX_BUCKETS} finite bounds, strictly increasing")
    if not isinstance(counts, list) or len(counts) != len(buckets) + 1 or not all(_is_number(c) and c >= 0 for c in counts) \
            or not _is_number(total):
        raise _Malformed("a histogram's counts are not one non-negative number per bucket and +Inf, or its sum not a number")
    return _Histogram(tuple(float(b) for b in buckets), [float(c) for c in counts], float(total))


# -- the text format -----------------------------------------------------------------------------

class _Exposition:
    """Families of every version, under one HELP and TYPE each."""

    def __init__(self, say):
        self._say = say
        self._families: dict[str, tuple[str, str, list[str]]] = {}  # name -> kind, description, sample lines
        self._samples: dict[str, str] = {}  # sample name -> the family that writes it

    def add(self, v: _Version, name: str, family: _Family) -> None:
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
            self._say(("refused", v.model, v.version, name), "custom metric family left out", model=v.model,
                      version=v.version, family=name, reason=problem)
            return
        if known is None:
            known = self._families[name] = (family.kind, family.description, [])
            for s in _sample_names(name, family.kind):
                self._samples[s] = name
        lines = known[2]
        ours = (("model", v.model), ("version", v.version))
        for labels, value in sorted(family.series.items()):
            if isinstance(value, _Histogram):
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


def _histogram_lines(name: str, labels: Labels, h: _Histogram) -> list[str]:
    lines, total = [], 0.0
    for bound, count in zip((*h.buckets, math.inf), h.counts):
        total += count
        lines.append(f"{name}_bucket{_label_text((*labels, ('le', floatToGoString(bound))))} {floatToGoString(total)}\n")
    lines.append(f"{name}_count{_label_text(labels)} {floatToGoString(total)}\n")
    lines.append(f"{name}_sum{_label_text(labels)} {floatToGoString(h.sum)}\n")
    return lines
