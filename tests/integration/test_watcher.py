"""The directory watcher in-process, on real files with real inotify: what it publishes, when."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from inferd.daemon.models import watcher as watcher_module
from inferd.daemon.models.watcher import DirectoryWatcher

SETTLE = 0.1


class Published:
    def __init__(self):
        self.snapshots: list[dict] = []

    def __call__(self, snapshot) -> None:
        self.snapshots.append(dict(snapshot))

    def __contains__(self, key) -> bool:
        """`key` is in the last snapshot published."""
        return bool(self.snapshots) and key in self.snapshots[-1]


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def watching(tmp_path):
    published = Published()
    w = DirectoryWatcher(tmp_path, "watch", SETTLE, 1.0, published)
    task = asyncio.create_task(w.run())
    await w.started.wait()
    yield tmp_path, published
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_file_open_for_writing_is_not_published_however_long_the_pauses(watching):
    root, published = watching
    with open(root / "m.onnx", "wb") as f:
        for _ in range(4):
            f.write(b"x" * 100_000)
            f.flush()
            await asyncio.sleep(3 * SETTLE)
            assert ("m", "1") not in published
    await until(lambda: ("m", "1") in published)


async def test_a_directory_moved_in_settles_then_is_published(watching, tmp_path_factory):
    root, published = watching
    staging = tmp_path_factory.mktemp("staging") / "full"
    (staging / "1").mkdir(parents=True)
    (staging / "1" / "model.onnx").write_bytes(b"x")
    os.rename(staging, root / "full")
    await until(lambda: ("full", "1") in published)


async def test_a_replaced_file_never_disappears_from_the_snapshots(watching):
    root, published = watching
    (root / "m.onnx").write_bytes(b"0")
    await until(lambda: ("m", "1") in published)
    for i in range(20):
        part = root / "m.onnx.part"
        part.write_bytes(str(i).encode())
        os.replace(part, root / "m.onnx")
        await asyncio.sleep(SETTLE * (i % 3) / 2)
    await until(lambda: published.snapshots[-1][("m", "1")].file_stamp[0] == 2)  # "19"
    start = next(i for i, s in enumerate(published.snapshots) if ("m", "1") in s)
    assert all(("m", "1") in s for s in published.snapshots[start:])


def test_one_rescan_judges_every_file_at_one_instant(tmp_path, monkeypatch):
    """A file that settles while a rescan runs must not fall between scan() and settled()."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    published = Published()
    w = DirectoryWatcher(tmp_path, "watch", SETTLE, 1.0, published)
    w.rescan()
    assert ("m", "1") in published
    path.write_bytes(b"yy")  # rewritten: its last change is at t = 100
    clock = itertools.count(100.0 + SETTLE - 0.03, 0.02)  # each reading later than the one before
    monkeypatch.setattr(watcher_module.time, "monotonic", lambda: next(clock))
    w._changed(path, 100.0)
    w.rescan()
    assert ("m", "1") in published


async def test_polling_sees_a_new_file_once_it_stops_changing(tmp_path):
    published = Published()
    w = DirectoryWatcher(tmp_path, "poll", SETTLE, 0.02, published)
    task = asyncio.create_task(w.run())
    try:
        await w.started.wait()
        (tmp_path / "p.onnx").write_bytes(b"x")
        await until(lambda: ("p", "1") in published)
        (tmp_path / "p.onnx").unlink()
        await until(lambda: ("p", "1") not in published)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- directory models (a SavedModel, an MLflow model): watched inside ------------------------------

def _members(published: Published, key) -> dict[str, int]:
    """The files of a published directory model, by path inside it, with their sizes."""
    return {rel: size for rel, size, _, _ in published.snapshots[-1][key].file_stamp}


async def test_a_file_written_deep_inside_a_savedmodel_counts_once_closed(watching):
    root, published = watching
    variables = root / "tf" / "1" / "model.savedmodel" / "variables"
    variables.mkdir(parents=True)
    (variables.parent / "saved_model.pb").write_bytes(b"graph")
    (variables / "variables.index").write_bytes(b"i")
    await until(lambda: ("tf", "1") in published)  # (so every directory in it is watched)
    serving = published.snapshots[-1][("tf", "1")]
    with open(variables / "variables.data-00000-of-00001", "wb") as f:
        for _ in range(3):
            f.write(b"x" * 1000)
            f.flush()
            await asyncio.sleep(3 * SETTLE)
            assert published.snapshots[-1][("tf", "1")].file_stamp == serving.file_stamp
    await until(lambda: _members(published, ("tf", "1")).get("variables/variables.data-00000-of-00001") == 3000)
    start = next(i for i, s in enumerate(published.snapshots) if ("tf", "1") in s)
    assert all(("tf", "1") in s for s in published.snapshots[start:])  # never unloaded meanwhile
    # A file replaced inside is a new stamp: the version reloads.
    part = variables / "variables.index.part"
    part.write_bytes(b"index")
    os.replace(part, variables / "variables.index")
    await until(lambda: _members(published, ("tf", "1"))["variables/variables.index"] == 5)


async def test_a_file_removed_from_a_directory_model_holds_it_back_until_it_settles(tmp_path):
    """A rescan moments after a directory model lost a file (another model's change, SIGHUP)
    keeps the version as it was: a replace may be under way. Once settled, the loss counts."""
    published = Published()
    flow = tmp_path / "flow"
    flow.mkdir()
    for name in ("MLmodel", "model.pkl", "conda.yaml"):
        (flow / name).write_bytes(b"x")
    w = DirectoryWatcher(tmp_path, "poll", SETTLE, 3600, published)  # rescans below, on demand
    task = asyncio.create_task(w.run())
    try:
        await w.started.wait()
        before = published.snapshots[-1][("flow", "1")]
        (flow / "conda.yaml").unlink()
        w.rescan()
        assert published.snapshots[-1][("flow", "1")].file_stamp == before.file_stamp
        await asyncio.sleep(SETTLE)
        w.rescan()
        assert set(_members(published, ("flow", "1"))) == {"MLmodel", "model.pkl"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_polling_sees_a_change_deep_inside_a_directory_model(tmp_path):
    published = Published()
    saved = tmp_path / "tf" / "1" / "model.savedmodel"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.index").write_bytes(b"i")
    w = DirectoryWatcher(tmp_path, "poll", SETTLE, 0.02, published)
    task = asyncio.create_task(w.run())
    try:
        await w.started.wait()
        assert _members(published, ("tf", "1"))["variables/variables.index"] == 1
        (saved / "variables" / "variables.index").write_bytes(b"index")
        await until(lambda: _members(published, ("tf", "1"))["variables/variables.index"] == 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
