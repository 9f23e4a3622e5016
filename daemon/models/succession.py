"""Which generations of a model give way when its version policy's choice changes: the versions
it no longer selects retire once a selected one is READY, never before.

A rollback is such a change: deleting the newest version directory (a fleet deletes v2 from its
bucket) makes the policy select the older version, which loads beside the one going away and
takes the traffic once READY, as a new version would. Until then the removed version serves on,
but only with the workers it has: its files are gone, so none can start (each try would fail and
count towards a crash loop). If it has none (scaled to zero) or loses the last, it is FAILED
with that reason; if the older version fails to load, it serves on as long as its workers live,
and the index says why on both rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from inferd.daemon.models.version import ModelState, ModelVersion

if TYPE_CHECKING:
    from inferd.daemon.models.repository import ModelRepository

log = structlog.get_logger("inferd.repository")

REMOVED = "its files were removed from the models directory"


def settle(repository: ModelRepository, name: str) -> None:
    """Retire the versions of `name` the policy no longer selects, once a selected one is READY;
    until then, those whose files are gone serve on with the workers they have."""
    versions = repository.models.get(name)
    if not versions:
        return
    wanted = sorted((v for n, v in repository.applied if n == name), key=int)
    unwanted = [v for v in versions if v not in wanted]
    if not any(versions[v].state is ModelState.READY for v in wanted if v in versions):
        for version in unwanted:  # what serves keeps serving until a wanted version can take over
            _hold_if_gone(versions[version], wanted)
        return
    for version in unwanted:
        repository._retire(versions.pop(version))
        if (stale := repository.pending.pop((name, version), None)) is not None:
            repository._retire(stale)


def _hold_if_gone(mv: ModelVersion, successors: list[str]) -> None:
    if mv.state is not ModelState.READY or not mv.files_missing():
        return  # (a version the policy dropped for a newer one still has its files: it may scale)
    taking_over = " or ".join(successors) or "another version"
    mv.files_gone(f"{REMOVED}; version {taking_over} takes over once READY")
