"""The repository index: a row per model version known (serving, loading beside, unloading) and
per model on disk that is not loaded (UNAVAILABLE, with the reason); each row carries the notes
that concern every model (the model source's state) after its own."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from inferd.daemon.models.scan import model_names, scan

if TYPE_CHECKING:
    from inferd.daemon.models.repository import ModelRepository


async def index_rows(repository: ModelRepository, notes: list[str]) -> list[dict]:
    rows = []
    for mv in repository.all_versions():
        row = mv.index_row()
        if repository.pending.get(mv.key) is mv:
            row["reason"] = f"new file for the serving version: {mv.reason or mv.state.value.lower()}"
        rows.append(row)
    known = {mv.name for mv in repository.all_versions()}
    on_disk = model_names(await asyncio.to_thread(scan, repository.root))  # reads files: off the loop
    for name in sorted(on_disk - known):
        if name in repository.unloaded:
            reason = "unloaded on request"
        elif repository.explicit:
            reason = "not loaded (models.control = explicit: load it through the repository API)"
        else:
            reason = "not loaded yet: waiting for its files to be complete"
        rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
    if notes:
        for row in rows:
            row["notes"] = row.get("notes", []) + notes
    return sorted(rows, key=lambda r: (r["name"], int(r["version"] or 0)))
