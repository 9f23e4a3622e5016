"""Watches the models directory and publishes settled snapshots of it.

A file counts only once it is complete: moved into place or closed after writing, and then
unchanged for `settle_s`. With inotify (models.control = "watch") a file that was written to and
not yet closed is never complete, however long its writer pauses; with polling ("poll", or
where inotify cannot be used) a file is complete once its size, mtime and inode have not changed
for `settle_s`, so there the settle time must outlast a writer's pauses (or copy to a `.part`
name and rename it into place, which is always safe).

The watcher only decides *when* to look; what changed is worked out by scan.diff() on the
snapshots it publishes.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from asyncinotify import Inotify, Mask

from inferd.daemon.models.model_dirs import WATCH_DEPTH
from inferd.daemon.models.scan import Snapshot, file_stamps, scan, settled

log = structlog.get_logger("inferd.watcher")

_MASK = (
    Mask.CREATE | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE
    | Mask.ATTRIB | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR
)
_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED
_REMOVED = Mask.DELETE | Mask.MOVED_FROM


class InotifyUnavailable(Exception):
    """inotify cannot be used here (not supported, or out of instances or watches)."""


def _add_watch(inotify: Inotify, path: Path) -> None:
    """Watch `path`; a directory that vanished meanwhile is no error, a kernel that refuses is."""
    try:
        inotify.add_watch(path, _MASK)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise InotifyUnavailable(f"{e.strerror or e} ({path})") from None


class DirectoryWatcher:
    def __init__(self, root: Path, mode: str, settle_s: float, poll_interval_s: float,
                 publish: Callable[[Snapshot], None]):
        self.root = root
        self.mode = mode  # "watch" | "poll"
        self.settle_s = settle_s
        self.poll_interval_s = poll_interval_s
        self.publish = publish
        self.snapshot: Snapshot = {}
        self._last_change: dict[Path, float] = {}
        self._writing: set[Path] = set()  # modified and not yet closed
        self._unsettled: set[Path] = set()  # changed since last seen complete
        self._stamps: dict[Path, tuple] | None = None  # polling only
        self.started = asyncio.Event()  # set once the first snapshot is published
        self._scan_time = time.monotonic()  # one instant per rescan: a file cannot settle mid-way

    def complete(self, path: Path) -> bool:
        """Not being written, and neither it nor a directory above it (one moved or created in)
        changed within the settle time."""
        if path in self._writing:
            return False
        now = self._scan_time
        for p in (path, *path.parents):
            changed = self._last_change.get(p)
            if changed is not None and now - changed < self.settle_s:
                return False
            if p == self.root:
                break
        return True

    def rescan(self) -> None:
        """Look now (the initial load, SIGHUP, a settle timer coming due) and publish. A scan
        that fails (a bug: unreadable files are the models' reasons) keeps what serves and is
        tried again at the next change."""
        self._scan_time = now = time.monotonic()
        try:
            if self._stamps is not None:
                self._note_polled_changes()
            found = scan(self.root, self.complete)
        except Exception:
            log.exception("scanning the models directory failed; keeping what serves", path=str(self.root))
            return
        self.snapshot = settled(self.snapshot, found, self.complete)
        self._unsettled = {p for p in self._unsettled if not self.complete(p)}
        self._last_change = {p: t for p, t in self._last_change.items() if now - t < self.settle_s or p in self._unsettled}
        self.publish(self.snapshot)

    def adopt(self, name: str, found: Snapshot) -> None:
        """What a repository API load just read of model `name` becomes this watcher's view of
        it. Files that load was given were written moments ago, so they are still settling
        here: a rescan meanwhile would otherwise publish the older view (or none, for a new
        model) and the repository would load that over the API's generation, or remove it.
        Once the files settle, a rescan compares what is on disk with this, as with any view."""
        self.snapshot = {k: f for k, f in self.snapshot.items() if k[0] != name} | found

    def _changed(self, path: Path, now: float) -> None:
        self._last_change[path] = now
        self._unsettled.add(path)

    def _removed(self, path: Path, now: float) -> None:
        """What is removed from inside a model's directory changes every directory above it
        (up to the model's own): a directory model that lost a file is in flux, not complete."""
        self._changed(path, now)
        for parent in path.parents[:len(path.relative_to(self.root).parts) - 1]:
            self._changed(parent, now)

    def _next_due(self) -> float | None:
        """Seconds until the earliest changed file settles (None: nothing to wait for)."""
        times = [self._last_change[p] for p in self._unsettled if p not in self._writing and p in self._last_change]
        if not times:
            return None
        return max(0.0, min(times) + self.settle_s - time.monotonic())

    def _first_scan(self) -> None:
        """Files present at start load at once (with inotify, after the watches are in place, so
        that nothing written meanwhile is missed)."""
        if not self.started.is_set():
            self.rescan()
            self.started.set()

    async def run(self) -> None:
        if self.mode == "watch":
            try:
                await self._watch()
                return
            except InotifyUnavailable as e:  # no inotify here, or out of watches (fs.inotify.max_user_watches)
                log.warning("inotify is unavailable; polling the models directory instead",
                            error=str(e), interval_s=self.poll_interval_s)
        await self._poll()

    # -- polling -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        self._stamps = self._stamps if self._stamps is not None else file_stamps(self.root)
        self._first_scan()
        while True:
            await asyncio.sleep(self.poll_interval_s)
            self.rescan()

    def _note_polled_changes(self) -> None:
        stamps = file_stamps(self.root) if self.root.is_dir() else {}
        now = self._scan_time
        for path in stamps.keys() | self._stamps.keys():
            if path not in stamps:
                self._removed(path, now)
            elif stamps[path] != self._stamps.get(path):
                self._changed(path, now)
        self._stamps = stamps

    # -- inotify -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            if not self.root.is_dir():
                self._first_scan()
                await self._wait_for_root()
            try:
                inotify = Inotify()
            except OSError as e:
                raise InotifyUnavailable(e.strerror or str(e)) from None
            with inotify:
                try:
                    root_watch = inotify.add_watch(self.root, _MASK)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue  # gone again: wait for it
                    raise InotifyUnavailable(f"{e.strerror or e} ({self.root})") from None
                # In a directory that appeared later, files already inside must settle first.
                self._watch_tree(inotify, self.root, 0, time.monotonic(), mark=self.started.is_set())
                self._first_scan()
                self.rescan()
                while True:
                    due = self._next_due()
                    try:
                        async with asyncio.timeout(due):
                            event = await inotify.get()
                    except TimeoutError:
                        self.rescan()
                        continue
                    if event.watch is root_watch and event.mask & _GONE:
                        log.warning("the models directory is gone; waiting for it", path=str(self.root))
                        self.rescan()
                        break
                    self._record(inotify, event)

    def _record(self, inotify: Inotify, event) -> None:
        now = time.monotonic()
        if event.mask & Mask.Q_OVERFLOW:  # events were lost: treat everything as just changed
            self._writing.clear()
            for path in file_stamps(self.root):
                self._changed(path, now)
            return
        path = event.path
        if path is None or event.mask & Mask.IGNORED:
            return
        if event.mask & Mask.ISDIR:
            if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                depth = len(path.relative_to(self.root).parts)
                if depth <= WATCH_DEPTH:
                    self._watch_tree(inotify, path, depth, now, mark=True)
            (self._removed if event.mask & _REMOVED else self._changed)(path, now)
            return
        if event.mask & Mask.MODIFY:
            self._writing.add(path)
        if event.mask & (Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE):
            self._writing.discard(path)
        if event.mask & _REMOVED:
            self._removed(path, now)
        else:
            self._changed(path, now)

    def _watch_tree(self, inotify: Inotify, directory: Path, depth: int, now: float, mark: bool) -> None:
        """Watch `directory`'s subdirectories down to version directories and into directory
        models. With `mark`, files already inside (a directory moved or copied in) count as just
        changed."""
        if depth > 0:
            _add_watch(inotify, directory)
        try:
            entries = list(directory.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.is_dir():
                if depth < WATCH_DEPTH:
                    self._watch_tree(inotify, entry, depth + 1, now, mark)
            elif mark:
                self._changed(entry, now)

    async def _wait_for_root(self) -> None:
        """Until the models directory exists: watch its nearest existing ancestor."""
        announced = False
        while not self.root.is_dir():
            if not announced:
                log.warning("the models directory does not exist (yet); waiting for it", path=str(self.root))
                announced = True
            ancestor = self.root.parent
            while not ancestor.is_dir():
                ancestor = ancestor.parent
            try:
                inotify = Inotify()
                inotify.add_watch(ancestor, Mask.CREATE | Mask.MOVED_TO | Mask.ONLYDIR)
            except OSError as e:
                raise InotifyUnavailable(f"{e.strerror or e} ({ancestor})") from None
            with inotify:
                if self.root.is_dir():
                    break
                try:
                    async with asyncio.timeout(5.0):  # also re-checks if an ancestor is replaced
                        await inotify.get()
                except TimeoutError:
                    pass
        if announced:
            log.info("the models directory appeared", path=str(self.root))
