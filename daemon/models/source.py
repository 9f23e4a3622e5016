"""A model source: the object-store prefix (models.source = "s3://bucket/prefix") that the models
directory mirrors. The directory stays what serves: the sync only writes files into it (atomic
renames of checked downloads, deletions of files it wrote), and the watcher, the scan and the
repository follow those files as they follow an operator's.

When it syncs: at start before the first scan, every models.poll_interval_s, on SIGHUP before
the rescan and on a repository API load before the load reads the directory (the server and the
repository call sync_now()). Never two at once: a call while one runs waits for it and then
shares the next one, which starts after the call was made, so what the caller uploaded before
calling is seen.

A store that cannot be reached or refuses: nothing local changes and what is there keeps
serving. The change of state is logged once (not each poll), the metrics say it
(inferd_model_source_up, syncs by result) and so does a note on every repository index row.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from inferd.config.settings import ModelsSection
from inferd.daemon.models import source_mirror
from inferd.daemon.operations.metrics import SourceMetrics

log = structlog.get_logger("inferd.source")

_NOTED = 3  # per-file problems shown on the index rows (all are logged)


async def in_daemon_thread(fn: Callable, name: str):
    """fn() in a thread of its own, awaited. A daemon thread, unlike asyncio.to_thread's: a
    sync stuck on a store that hangs must not hold the process's exit (its timeouts end it
    eventually; what it leaves is hidden and removed at the next start)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not done.done():  # (the awaiter may have gone away)
            done.set_result(value) if ok else done.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, fn())
        except BaseException as e:  # handed to the awaiter
            outcome = (False, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop has closed: the daemon stopped meanwhile

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def make_source(models: ModelsSection, registry: CollectorRegistry) -> ModelSource | None:
    """The configured source (None without one). boto3 is imported here, only when one is set."""
    if not models.source:
        return None
    from inferd.daemon.models.s3_sync import S3Mirror

    mirror = S3Mirror(models.source, Path(models.dir), models.endpoint_url, models.region,
                      models.source_connect_timeout_s, models.source_read_timeout_s,
                      models.source_max_objects, models.source_min_free_bytes)
    return ModelSource(mirror, models.poll_interval_s, SourceMetrics(registry))


class ModelSource:
    def __init__(self, mirror, interval_s: float, metrics: SourceMetrics):
        self.mirror = mirror  # .source (the URL), .root, .sync() -> SyncReport (blocking), raises SourceDown
        self.url = mirror.source
        self.interval_s = interval_s
        self.metrics = metrics
        self.state = "unknown"  # the last sync's result
        self.reason = ""
        self.since = 0.0  # wall-clock time of the last change of state
        self._problems: dict[str, str] = {}  # path or key -> why not mirrored, as last synced
        self._lock = asyncio.Lock()
        self._started = 0  # syncs started: a caller needs one that starts after its call

    async def start(self) -> None:
        """A killed sync's leftovers removed, then the first sync (bounded by the timeouts)."""
        removed = await asyncio.to_thread(source_mirror.remove_leftovers, self.mirror.root)
        for path in removed:
            log.warning("removed an interrupted download", path=path)
        log.info("model source", source=self.url, directory=str(self.mirror.root))
        await self.sync_now()

    async def run(self) -> None:
        """Sync every models.poll_interval_s (from the end of one to the start of the next)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync_now()
            except Exception:  # a bug: the next poll tries again, what is there serves on
                log.exception("model source sync failed", source=self.url)

    async def sync_now(self) -> bool:
        """Sync, or wait for the sync in progress and share the next; True if the store was
        listed (whatever some files' checks said)."""
        wanted = self._started + 1
        async with self._lock:
            if self._started >= wanted:  # one started after this call and has finished
                return self.state in ("ok", "partial")
            self._started += 1
            return await self._sync()

    async def _sync(self) -> bool:
        from inferd.daemon.models.s3_sync import SourceDown

        try:
            report = await in_daemon_thread(self.mirror.sync, "inferd-source-sync")
        except SourceDown as e:
            self.metrics.synced(e.result)
            self._set_state(e.result, e.reason)
            return False
        for rel, size in report.downloaded:
            log.info("model file downloaded from the source", path=rel, bytes=size)
        for rel in report.deleted:
            log.info("model file deleted: gone from the source", path=rel)
        self._note_problems(report)
        result = "partial" if report.failed else "ok"
        self.metrics.synced(result, len(report.downloaded), sum(s for _, s in report.downloaded), len(report.deleted))
        self._set_state(result, "")
        return True

    def _note_problems(self, report) -> None:
        problems = {key: f"key skipped: {why}" for key, why in report.skipped}
        problems |= {rel: f"not mirrored: {why}" for rel, why in report.failed}
        for where, why in problems.items():
            if self._problems.get(where) != why:  # once per problem, not each poll
                log.warning("model source object not mirrored", key=where[:300], reason=why)
        self._problems = problems

    def _set_state(self, state: str, reason: str) -> None:
        if (state, reason) == (self.state, self.reason) or (state == "partial" and self.state == "ok") or (
                state == "ok" and self.state == "partial"):
            self.state = state
            return
        was, self.state, self.reason, self.since = self.state, state, reason, time.time()
        if state in ("ok", "partial"):
            log.info("model source reachable", source=self.url, was=was)
        else:
            log.error("model source unavailable: serving the local copy", source=self.url, state=state, reason=reason)

    def notes(self) -> list[str]:
        """What the repository index rows say about the source (nothing while it is fine)."""
        notes = []
        if self.state not in ("ok", "partial", "unknown"):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
            notes.append(f"model source {self.url} {self.state} since {when}: {self.reason}; "
                         "serving the models directory as it is")
        for where, why in list(self._problems.items())[:_NOTED]:
            notes.append(f"model source: {where[:200]}: {why}")
        return notes
