"""Which generation a sequence's request goes to while generations drain.

A new generation of a stateful model (a new file, a load request) serves new sequences at once,
but a sequence the old generation holds keeps its state in that generation's workers: its
requests go on there until it ends or goes idle, within server.drain_timeout_s (Triton lets a
stopping sequence batcher finish its sequences too). During the daemon's own drain the same
holds for every generation. A START goes to the generation that serves, and the retiring one
forgets that id, so that the sequence's later requests follow it (docs/sequences.md).
"""

from __future__ import annotations

from inferd.daemon.models.repository import ModelRepository
from inferd.daemon.models.version import ModelVersion
from inferd.scheduler.sequences import SequenceQueue


def draining_holder(repository: ModelRepository, name: str, version: str, parameters: dict,
                    shutting_down: bool) -> ModelVersion | None:
    """The draining generation of model `name` (`version`, or any) that holds the sequence
    these request parameters continue; None when none does (the request goes the usual way)."""
    sid = parameters.get("sequence_id")
    if isinstance(sid, bool) or not isinstance(sid, (int, str)) or sid in (0, ""):
        return None
    start = parameters.get("sequence_start") is True
    if start and shutting_down:
        return None  # refused: no new sequence starts while the daemon stops
    draining = repository.all_versions() if shutting_down else list(repository.retiring)
    for mv in draining:
        queue = mv.queue
        if mv.name != name or (version and mv.version != version) or not isinstance(queue, SequenceQueue):
            continue
        if start:
            queue.forget(sid)
        elif queue.holds(sid):
            return mv
    return None


def sequences_running(repository: ModelRepository) -> bool:
    """Whether a stateful model holds a running sequence: its client will send more, perhaps on
    a new connection (the daemon's drain keeps accepting gRPC's then)."""
    return any(isinstance(mv.queue, SequenceQueue) and mv.queue.pool.pinned() for mv in repository.all_versions())
