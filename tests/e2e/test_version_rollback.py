"""Rolling a model back in a watched models directory (what a fleet does by deleting v2 from its
bucket, mirrored into the directory), end to end: real files, the real watcher, real workers,
HTTP clients in threads. The older version loads beside the one going away and takes the
traffic once READY; the removed one serves on meanwhile with the workers it has."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
from add_sub_versions import A, B, offset_of, place
from daemon_process import DaemonProcess
from waiting import eventually

from inferd.client import Client, InferdClientError

SETTLE = {"INFERD_MODELS_SETTLE_MS": "100"}
REMOVED = "its files were removed from the models directory"
WARM = {**SETTLE, "INFERD_DEFAULTS_MIN_WORKERS": "1"}  # each version keeps the worker that validated it


def broken_v1_beside_v2(models: Path) -> Path:
    """m/1 a corrupt file, m/2 serving offset 2, and another model (offset 7); returns m/1's file."""
    v1 = models / "m" / "1" / "model.onnx"
    v1.parent.mkdir(parents=True)
    v1.write_bytes(b"not an onnx model")
    place(models / "m" / "2" / "model.onnx", offset=2)
    place(models / "other.onnx", offset=7)
    return v1


def served_offset(client: Client, model: str) -> int | None:
    try:
        return offset_of(client.infer(model, {"INPUT0": A, "INPUT1": B}))
    except InferdClientError:
        return None


def rows(client: Client, name: str) -> dict[str, dict]:
    return {r["version"]: r for r in client.models() if r["name"] == name}


def states(d: DaemonProcess, model: str, version: str) -> list[dict]:
    return [e for e in d.events("model state") if e["model"] == model and e["version"] == version]


class ClosedLoop:
    """`count` HTTP clients in threads (with `socket`, every other one on that Unix socket), each
    asking again as soon as it is answered, until stopped (or 60 s: bounded whatever the test does)."""

    def __init__(self, url: str, model: str, count: int = 4, socket: str | None = None):
        self.url, self.model = url, model
        self.sockets = [socket if socket and i % 2 else None for i in range(count)]
        self.answers: list[int] = []  # offsets, in the order answered
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(s,), daemon=True) for s in self.sockets]
        self._limit = threading.Timer(60, self._stop.set)
        self._limit.daemon = True

    def _ask(self, socket: str | None) -> None:
        with (Client(socket=socket) if socket else Client(url=self.url)) as client:
            while not self._stop.wait(0):
                try:
                    self.answers.append(offset_of(client.infer(self.model, {"INPUT0": A, "INPUT1": B})))
                except InferdClientError as e:
                    self.failures.append(f"{e.code}: {e}")

    def more_than(self, count: int) -> bool:
        return len(self.answers) > count

    def __enter__(self) -> ClosedLoop:
        for t in self._threads:
            t.start()
        self._limit.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._limit.cancel()
        for t in self._threads:
            t.join(30)


@pytest.mark.parametrize("control", ["watch", "poll"])
async def test_deleting_the_newest_version_rolls_back_without_a_failed_request(tmp_path, control):
    models = tmp_path / "models"
    place(models / "m" / "1" / "model.onnx", offset=1)
    place(models / "m" / "2" / "model.onnx", offset=2)
    env = {**WARM, "INFERD_MODELS_CONTROL": control, "INFERD_MODELS_POLL_INTERVAL_S": "0.1"}
    with DaemonProcess(models, env=env) as d:
        with ClosedLoop(d.url, "m") as loop:
            await eventually(lambda: loop.answers[-1:] == [2], what="version 2 to answer")
            shutil.rmtree(models / "m" / "2")
            await eventually(lambda: loop.answers[-1:] == [1], 60, f"version 1 to answer; log tail {d.lines[-6:]}")
            answered = len(loop.answers)
            await eventually(lambda: loop.more_than(answered + 100), what="100 answers more")
        print(f"rollback under load ({control}): {len(loop.answers)} answers, {len(loop.failures)} failed")
        assert loop.failures == []
        switch = loop.answers.index(1)
        assert set(loop.answers[:switch]) == {2} and set(loop.answers[switch + 100:]) == {1}
        # The older version was READY before the removed one stopped taking requests.
        order = [(e["version"], e["state"]) for e in d.events("model state") if e["model"] == "m"]
        assert order.index(("1", "READY")) < order.index(("2", "UNLOADING"))
        with Client(url=d.url) as client:
            await eventually(lambda: list(rows(client, "m")) == ["1"], 30, "version 2 to unload")
        assert not [e for e in d.events("model failed") if e["model"] == "m"]


async def test_deleting_a_scaled_to_zero_newest_version_rolls_back_without_a_failed_request(tmp_path):
    """Scaled to zero (min_workers 0, the default): nothing of the removed version runs and no
    worker can start from files that are gone. The first request finds that out (no start is
    tried, so no crash loop); it and those after it wait for the older version, which serves."""
    models = tmp_path / "models"
    place(models / "m" / "1" / "model.onnx", offset=1)
    place(models / "m" / "2" / "model.onnx", offset=2)
    with DaemonProcess(models, env=SETTLE) as d, Client(url=d.url) as client:
        shutil.rmtree(models / "m" / "2")
        with ClosedLoop(d.url, "m", socket=d.socket_path) as loop:  # HTTP awaits; the Unix socket submits
            await eventually(lambda: loop.more_than(100), 60, f"100 answers; log tail {d.lines[-6:]}")
        print(f"cold rollback: {len(loop.answers)} answers, {len(loop.failures)} failed: {sorted(set(loop.failures))[:3]}")
        assert loop.failures == [] and set(loop.answers) == {1}
        failed = [e for e in states(d, "m", "2") if e["state"] == "FAILED"]
        assert failed and REMOVED in failed[0]["reason"] and "no worker of it is left running" in failed[0]["reason"]
        assert not [e for e in d.events("worker failed to start") if e["model"] == "m"]
        assert not any("crash loop" in e["reason"] for e in d.events("model failed"))
        await eventually(lambda: list(rows(client, "m")) == ["1"], 30, "version 2 to unload")


async def test_a_request_naming_a_removed_scaled_to_zero_version_gets_the_reason(tmp_path):
    """Named, the removed version answers why it cannot serve at once, even before the watcher
    has seen the directory settle (a long settle time here); a request naming no version waits
    through that and the older version's load, and is answered by it."""
    models = tmp_path / "models"
    place(models / "m" / "1" / "model.onnx", offset=1)
    place(models / "m" / "2" / "model.onnx", offset=2)
    with DaemonProcess(models, env={"INFERD_MODELS_SETTLE_MS": "3000"}) as d, Client(url=d.url) as client:
        shutil.rmtree(models / "m" / "2")
        with pytest.raises(InferdClientError) as named:
            client.infer("m", {"INPUT0": A, "INPUT1": B}, version="2")
        assert named.value.code == "unavailable" and REMOVED in str(named.value)
        assert offset_of(client.infer("m", {"INPUT0": A, "INPUT1": B}, timeout_ms=60_000)) == 1
        order = [(e["version"], e["state"]) for e in d.events("model state") if e["model"] == "m"]
        assert order.index(("2", "FAILED")) < order.index(("1", "LOADING"))  # failed before the watcher saw the delete
        assert not [e for e in d.events("worker failed to start") if e["model"] == "m"]


async def test_a_scaled_to_zero_removed_version_whose_older_version_is_broken(tmp_path):
    """The older version fails to load: a request naming no version, which waited for it, gets
    both reasons; the daemon serves other models, and repairing the file brings the model back."""
    models, v1 = tmp_path / "models", broken_v1_beside_v2(tmp_path / "models")
    with DaemonProcess(models, env=SETTLE) as d, Client(url=d.url) as client:
        shutil.rmtree(models / "m" / "2")
        with pytest.raises(InferdClientError) as waited:
            client.infer("m", {"INPUT0": A, "INPUT1": B}, timeout_ms=60_000)
        assert waited.value.code == "unavailable", waited.value
        assert REMOVED in str(waited.value) and "version 1 is FAILED" in str(waited.value)
        assert rows(client, "m")["1"]["state"] == "FAILED"
        assert served_offset(client, "other") == 7
        with pytest.raises(InferdClientError) as again:  # no version is coming now: answered at once
            client.infer("m", {"INPUT0": A, "INPUT1": B})
        assert REMOVED in str(again.value)
        assert not any("crash loop" in e["reason"] for e in d.events("model failed"))

        place(v1, offset=1)  # repairing the older version's file brings the model back
        await eventually(lambda: served_offset(client, "m") == 1, 60, "the repaired version 1 to serve")
        await eventually(lambda: list(rows(client, "m")) == ["1"], 30, "version 2 to unload")


async def test_deleting_the_newest_version_while_the_older_is_broken(tmp_path):
    """The older version fails to load: the removed one serves on with its worker (the index
    says why on both rows); once that worker is gone it is FAILED with the reason; the daemon
    serves other models throughout, and repairing the older version's file brings it back."""
    models, v1 = tmp_path / "models", broken_v1_beside_v2(tmp_path / "models")
    with DaemonProcess(models, env=WARM) as d, Client(url=d.url) as client:
        worker = next(e for e in d.events("model loaded") if e["model"] == "m")["pids"][0]
        with ClosedLoop(d.url, "m") as loop:
            await eventually(lambda: loop.answers[-1:] == [2], what="version 2 to answer")
            shutil.rmtree(models / "m" / "2")
            index = await eventually(lambda: (r := rows(client, "m")).get("1", {}).get("state") == "FAILED" and r,
                                     60, "version 1 to fail")
            answered = len(loop.answers)
            await eventually(lambda: loop.more_than(answered + 50), what="50 answers more")
        assert loop.failures == [] and set(loop.answers) == {2}  # still served by version 2's worker
        assert index["2"]["state"] == "READY"
        assert "its files were removed from the models directory; version 1 takes over once READY" in index["2"]["reason"]
        assert index["1"]["reason"]  # why version 1 failed
        assert any(e["model"] == "m" for e in d.events("model files removed; serving on with the running workers"))

        os.kill(worker, signal.SIGKILL)  # its last worker: none can start from files that are gone
        await eventually(lambda: rows(client, "m")["2"]["state"] == "FAILED", 30, "version 2 to fail")
        try:
            client.infer("m", {"INPUT0": A, "INPUT1": B})
            raise AssertionError("version 2 answered without a worker")
        except InferdClientError as e:
            assert e.code == "unavailable" and "its files were removed" in str(e)
        assert "no worker of it is left running" in rows(client, "m")["2"]["reason"]
        assert not any("crash loop" in e["reason"] for e in d.events("model failed"))
        assert served_offset(client, "other") == 7

        place(v1, offset=1)  # repairing the older version's file brings the model back
        await eventually(lambda: served_offset(client, "m") == 1, 60, "the repaired version 1 to serve")
        await eventually(lambda: list(rows(client, "m")) == ["1"], 30, "version 2 to unload")


async def test_a_removed_scaled_to_zero_version_in_explicit_mode_fails_at_once(tmp_path):
    """models.control = "explicit": no rescan will bring the older version, so a request naming
    no version does not wait for one; a repository load does, and then it serves."""
    models = tmp_path / "models"
    place(models / "m" / "1" / "model.onnx", offset=1)
    place(models / "m" / "2" / "model.onnx", offset=2)
    with DaemonProcess(models, env={**SETTLE, "INFERD_MODELS_CONTROL": "explicit"}) as d, Client(url=d.url) as client:
        shutil.rmtree(models / "m" / "2")
        with pytest.raises(InferdClientError) as e:
            client.infer("m", {"INPUT0": A, "INPUT1": B}, timeout_ms=60_000)
        assert e.value.code == "unavailable" and REMOVED in str(e.value)
        assert "became READY within" not in str(e.value)  # answered, not timed out waiting
        assert rows(client, "m")["2"]["state"] == "FAILED"
        client.load("m")
        assert served_offset(client, "m") == 1
        assert not [e for e in d.events("worker failed to start") if e["model"] == "m"]


async def test_a_model_file_replaced_by_an_older_content_rolls_back_without_a_failed_request(tmp_path):
    """models/m.onnx rewritten with the previous release's bytes: a new file for the serving
    version, loaded beside it, under load; and a scaled-to-zero one, whose next worker reads it."""
    models = tmp_path / "models"
    warm, cold = place(models / "warm.onnx", offset=2), place(models / "cold.onnx", offset=2)
    with DaemonProcess(models, env=SETTLE) as d:
        with ClosedLoop(d.url, "warm") as loop:
            await eventually(lambda: loop.answers[-1:] == [2], what="warm to answer")
            place(warm, offset=1)
            await eventually(lambda: loop.answers[-1:] == [1], 60, f"the older content to answer; log tail {d.lines[-6:]}")
        assert loop.failures == []
        with ClosedLoop(d.url, "cold") as loop:
            place(cold, offset=1)
            await eventually(lambda: loop.answers[-1:] == [1], 60, "the older content to answer")
        assert loop.failures == [] and loop.answers
        assert not d.events("model failed")
