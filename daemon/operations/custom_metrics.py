"""Python models' own metrics (Triton's custom metrics: inferd.backends.triton.metrics) on the
daemon's /metrics, after its own series.

Where they come from: at the first load the daemon makes a directory of its own (mode 0700, by
mkdtemp, in $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR, else the temporary directory; removed
at stop, and by the next daemon if this one was killed), and in it one directory per model
version (`directory_for`, the workers' `metrics_dir`); each worker process writes `<pid>.json`
in its version's. Which model a file belongs to is known from its directory, never from what
it says.

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
import os
import re
import shutil
import stat
import tempfile
import threading

import structlog

from inferd.backends.triton import metrics as writer  # the workers' side: its bounds, process_start
from inferd.daemon.operations.custom_metrics_format import Exposition, Family, Histogram, Malformed, parse

log = structlog.get_logger("inferd.metrics")

MAX_FILES = 256  # per version: its workers (more are not read)
MAX_RETIRED_SERIES = 20_000  # per version: the counters and histograms gone workers left
_FILE_NAME = re.compile(r"[1-9][0-9]{0,9}\.json\Z")


@dataclasses.dataclass
class _Version:
    model: str
    version: str
    path: str
    retired: dict[str, Family] = dataclasses.field(default_factory=dict)


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
                    base = self._base or _runtime_directory()
                    _remove_leftovers(base)
                    self._root = tempfile.mkdtemp(prefix=f"inferd-metrics-{os.getpid()}-", dir=base)
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
        out = Exposition(self._say)
        with self._lock:
            for key in sorted(self._versions):
                v = self._versions[key]
                for name, family in sorted(self._families(v).items()):
                    out.add(v.model, v.version, name, family)
        return out.text().encode()

    def _families(self, v: _Version) -> dict[str, Family]:
        """A version's families: what gone workers left, and what the running ones have now."""
        live = []
        for pid, path in _files(v.path):
            try:
                start, families = parse(_read(path))
            except Malformed as e:
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

    def _merge(self, v: _Version, into: dict[str, Family], families: dict[str, Family]) -> None:
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
                elif isinstance(have, Histogram):
                    if have.buckets == value.buckets:
                        have.counts = [a + b for a, b in zip(have.counts, value.counts)]
                        have.sum += value.sum
                    else:
                        self._say(("buckets", v.path, name), "custom metric series left out: its workers disagree "
                                  "on its buckets", model=v.model, version=v.version, family=name)
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


def _remove_leftovers(base: str) -> None:
    """The directories of daemons of this user that are gone (killed: they could not remove
    theirs), so that they do not pile up in a runtime directory kept across restarts."""
    try:
        entries = [e for e in os.scandir(base) if re.fullmatch(r"inferd-metrics-[0-9]+-[^/]+", e.name)]
    except OSError:
        return
    for entry in entries:
        pid = int(entry.name.split("-")[2])
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.geteuid()
        except OSError:
            continue
        if mine and pid != os.getpid() and writer.process_start(pid) == 0:
            shutil.rmtree(entry.path, ignore_errors=True)


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
        raise Malformed(f"cannot open it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Malformed("not a regular file")
        data = f.read(writer.MAX_FILE_BYTES + 1)
    if len(data) > writer.MAX_FILE_BYTES:
        raise Malformed(f"over {writer.MAX_FILE_BYTES} bytes")
    return data


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _copy_value(value):
    return dataclasses.replace(value, counts=list(value.counts)) if isinstance(value, Histogram) else value


def _copy(family: Family) -> Family:
    return Family(family.kind, family.description, {k: _copy_value(v) for k, v in family.series.items()})
