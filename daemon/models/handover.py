"""Requests that name no version while a removed version gives way to an older one.

Rolling back by deleting the newest version directory (a fleet deletes v2 from its bucket): a
removed version with workers serves on with them until the older one is READY (succession.py).
One scaled to zero has none, and none can start from files that are gone: the first request or
worker start that needs one finds the files missing, and it is FAILED with that reason at once
(not after a crash loop of failed starts, nor only once the watcher has seen the directory
settle). Until the older version is READY, a request that names no version waits for it, as it
would for a cold start (at most its deadline and the model's cold_start_timeout_s); it gets the
error if that version fails to load, or if no version is coming (models.control = "explicit":
only a repository load brings one). A request naming the removed version gets the error at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from inferd.common.errors import ErrorCode, InferdError
from inferd.daemon.models.succession import REMOVED
from inferd.daemon.models.version import ModelState, ModelVersion

if TYPE_CHECKING:
    from inferd.daemon.models.repository import ModelRepository


def cannot_start(mv: ModelVersion) -> bool:
    """`mv` (READY, no worker running) has lost its files: it is FAILED for that from now on
    (ModelVersion.files_gone), and True."""
    if mv.state is not ModelState.READY or not mv.files_missing():
        return False
    mv.files_gone(REMOVED)
    return True


class Handover:
    """Whether a request naming no version waits for a version of its model that is coming, and
    the wait; the repository says when versions change."""

    def __init__(self, repository: ModelRepository):
        self._repository = repository
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """A version changed state, or a snapshot was applied: waiting requests look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def coming(self, name: str) -> bool:
        """`name` has no READY version, its newest was removed, and another is on its way: one is
        LOADING, or the removal has not reached the repository yet (the watcher lets the
        directory settle first; a rescan then loads the older version)."""
        repository = self._repository
        versions = repository.models.get(name)
        if not versions or any(v.state is ModelState.READY for v in versions.values()):
            return False
        newest = max(versions.values(), key=lambda v: int(v.version))
        if not newest.removed:
            return False
        if any(v.state is ModelState.LOADING for v in versions.values()):
            return True
        return newest.key in repository.applied and not repository.explicit

    async def successor(self, name: str, deadline: float | None) -> ModelVersion:
        """The version that serves `name` once the one coming is READY (deadline: the
        request's, time.monotonic()). Raises InferdError: the removed version's reason and,
        where the older version failed, its; or that the wait ran out."""
        if not self.coming(name):  # (changed since the request looked)
            return self._serving(name)
        removed = max(self._repository.models[name].values(), key=lambda v: int(v.version))
        limit = removed.serving.config.settings.cold_start_timeout_s
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
        try:
            async with asyncio.timeout(max(0.0, limit)):
                while self.coming(name):
                    await self._changed.wait()
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise InferdError(ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited for "
                                  f"model {name!r} to roll back from version {removed.version}") from None
            raise InferdError(ErrorCode.UNAVAILABLE, f"model {name!r} version {removed.version}: {removed.reason}; "
                              f"no other version became READY within {limit:g} s; retry", retry_after_s=1) from None
        return self._serving(name)

    def _serving(self, name: str) -> ModelVersion:
        try:
            return self._repository.get_ready(name)
        except InferdError as e:
            versions = self._repository.models.get(name, {}).values()
            failed = [f"version {v.version} is FAILED: {v.reason}" for v in versions if v.state is ModelState.FAILED
                      and not v.removed]  # the older version that was to take over
            if failed:
                raise InferdError(e.code, "; ".join([e.message, *failed])) from None
            raise
