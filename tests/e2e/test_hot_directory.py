"""The watched models directory, end to end: real files, the real watcher, real workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import make_models
import numpy as np
import pytest
from add_sub_versions import A, B, offset_of, place
from daemon_process import DaemonProcess
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

# min_workers 1: these tests follow the worker that validated each generation (with 0 it stops
# as soon as validation ends).
FAST = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1"}


def alive(pid: int) -> bool:
    """Running (a reaped or zombie process is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


def rows(client: Client, name: str) -> list[dict]:
    return [r for r in client.models() if r["name"] == name]


def served_offset(client: Client, model: str, version: str = "") -> int | None:
    try:
        return offset_of(client.infer(model, {"INPUT0": A, "INPUT1": B}, version=version))
    except InferdClientError:
        return None


async def loaded(d: DaemonProcess, model: str, count: int = 1) -> list[dict]:
    """The model's "model loaded" events, once `count` of them are in the log (the log is read
    by a thread, so READY=1 may arrive before the line does)."""
    def events():
        found = [e for e in d.events("model loaded") if e["model"] == model]
        return found if len(found) >= count else None
    return await eventually(events, 30, f"{count} load(s) of {model} in the log")


def model_events(d: DaemonProcess, model: str) -> list[dict]:
    return [e for e in d.events("model state") if e["model"] == model]


# -- replace -------------------------------------------------------------------------------------

async def test_replacing_a_model_ten_times_under_load_fails_no_request(tmp_path):
    models = tmp_path / "models"
    path = place(models / "addsub.onnx", offset=0)
    with DaemonProcess(models, env=FAST) as d:
        stop = asyncio.Event()
        failures: list[Exception] = []
        answers: list[list[int]] = [[] for _ in range(8)]

        async def keep_asking(i: int) -> None:
            where = {"socket": d.socket_path} if i % 2 else {"url": d.url}  # both front-ends
            async with AsyncClient(**where) as client:
                while not stop.is_set():
                    try:
                        answers[i].append(offset_of(await client.infer("addsub", {"INPUT0": A, "INPUT1": B})))
                    except InferdClientError as e:
                        failures.append(e)

        clients = [asyncio.create_task(keep_asking(i)) for i in range(8)]
        try:
            for k in range(1, 11):
                place(path, offset=k)
                await eventually(lambda k=k: all(a and a[-1] == k for a in answers),
                                 what=f"version with offset {k}: last answers {[a[-1:] for a in answers]}, "
                                      f"log tail {d.lines[-8:]}")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert failures == []
        total = sum(len(a) for a in answers)
        assert total > 100
        for a in answers:  # traffic switched once per replace and never went back
            assert a == sorted(a) and set(a) <= set(range(11))
        # Old generations drained and stopped: one worker is left, the serving one's.
        loads = await loaded(d, "addsub", 11)
        warmed = {e["pid"] for e in d.events("warmed up") if e["model"] == "addsub"}
        assert {load["pids"][0] for load in loads} <= warmed  # every generation ran once before READY
        old = {pid for load in loads[:-1] for pid in load["pids"]}
        await eventually(lambda: not any(alive(pid) for pid in old), 30, "old workers to exit")
        assert all(alive(pid) for pid in loads[-1]["pids"])


async def test_a_file_copied_slowly_is_loaded_only_once_complete(tmp_path):
    """The writer pauses longer than the settle time with the file open: never loaded half-written."""
    models = tmp_path / "models"
    models.mkdir()
    source = make_models.build_mlp(tmp_path / "source.onnx")
    data = source.read_bytes()
    assert len(data) > 4 << 20
    with DaemonProcess(models, env=FAST) as d, Client(socket=d.socket_path) as client:
        chunk = len(data) // 8
        with open(models / "big.onnx", "wb") as f:
            for start in range(0, len(data), chunk):
                f.write(data[start : start + chunk])
                f.flush()
                await asyncio.sleep(0.3)  # three settle times
                assert model_events(d, "big") == []
                assert [r["state"] for r in rows(client, "big")] == ["UNAVAILABLE"]
        await eventually(lambda: client.ready("big") if rows(client, "big")[0]["state"] == "READY" else False,
                         what="big to load")
        await eventually(lambda: [e["state"] for e in model_events(d, "big")] == ["LOADING", "READY"], 10,
                         "exactly one load of big, after the copy")
        out = client.infer("big", {"input": np.ones((2, 512), np.float32)})
        assert out["output"].shape == (2, 10)


async def test_rename_into_place_then_corrupt_then_repair(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with DaemonProcess(models, env=FAST) as d, Client(socket=d.socket_path) as client:
        target = models / "m" / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        place(target, offset=1)
        await eventually(lambda: served_offset(client, "m") == 1, what="m to load")

        part = target.with_name("model.onnx.part")
        part.write_bytes(b"not an onnx file at all")
        os.replace(part, target)
        failed = await eventually(lambda: [r for r in rows(client, "m") if r["state"] == "FAILED"], what="FAILED")
        assert "new file for the serving version" in failed[0]["reason"]
        assert [r["state"] for r in rows(client, "m")].count("READY") == 1
        assert served_offset(client, "m") == 1 and client.ready("m")  # the previous one still serves

        place(target, offset=2)  # repairing the file retries by itself
        await eventually(lambda: served_offset(client, "m") == 2, what="the repaired file to serve")
        await eventually(lambda: [r["state"] for r in rows(client, "m")] == ["READY"], what="the old one to unload")
        metrics = d.http_get("/metrics").decode()
        assert 'inferd_model_load_failures_total{model="m",version="1"} 1.0' in metrics
        assert 'inferd_model_state{model="m",state="READY",version="1"} 1.0' in metrics


async def test_a_deleted_model_drains_then_404_and_its_worker_exits(tmp_path):
    models = tmp_path / "models"
    make_models.build_slow(models / "slow.onnx")
    place(models / "other.onnx")
    with DaemonProcess(models, env=FAST) as d:
        pid = (await loaded(d, "slow"))[0]["pids"][0]
        batch = np.ones((64, 1024), np.float32)
        async with AsyncClient(socket=d.socket_path) as client:
            calls = [asyncio.create_task(client.infer("slow", {"x": batch})) for _ in range(8)]
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            (models / "slow.onnx").unlink()
            results = await asyncio.gather(*calls)  # accepted before the removal: all answered
            assert all(r["y"].shape == (64, 1024) for r in results)
            await eventually(lambda: not alive(pid), 30, "the worker to exit")
            with pytest.raises(InferdClientError) as e:
                await client.infer("slow", {"x": batch[:1]})
            assert e.value.code == "not_found"
            assert offset_of(await client.infer("other", {"INPUT0": A, "INPUT1": B})) == 0

            async def only_other() -> bool:
                return [r["name"] for r in await client.models()] == ["other"]
            # (listed until its generation is UNLOADED, a moment after its worker's exit)
            await eventually(only_other, 10, "slow to leave the model list")
        await eventually(lambda: [e["state"] for e in model_events(d, "slow")] == ["LOADING", "READY", "UNLOADING", "UNLOADED"],
                         10, "the state changes of slow in the log")


async def test_a_models_directory_created_after_start_is_picked_up(tmp_path):
    models = tmp_path / "later" / "models"
    with DaemonProcess(models, env=FAST) as d, Client(socket=d.socket_path) as client:
        assert client.models() == []
        models.mkdir(parents=True)
        place(models / "late.onnx", offset=5)
        await eventually(lambda: served_offset(client, "late") == 5, what="late to load")


# -- versions ------------------------------------------------------------------------------------

async def test_version_policy_and_named_versions(tmp_path):
    models = tmp_path / "models"
    for v in (1, 2):
        place(models / "m" / str(v) / "model.onnx", offset=v)
    (models / "m" / "config.toml").write_text("version_policy = { latest = 2 }\n")
    with DaemonProcess(models, env=FAST) as d, Client(socket=d.socket_path) as client:
        assert served_offset(client, "m") == 2  # no version named: the newest READY one
        assert served_offset(client, "m", "1") == 1
        assert client.model_metadata("m")["versions"] == ["1", "2"]

        (models / "m" / "3").mkdir()
        place(models / "m" / "3" / "model.onnx", offset=3)
        await eventually(lambda: served_offset(client, "m") == 3, what="version 3")
        await eventually(lambda: [r["version"] for r in rows(client, "m")] == ["2", "3"], what="version 1 retired")
        with pytest.raises(InferdClientError) as e:
            client.infer("m", {"INPUT0": A, "INPUT1": B}, version="1")
        assert e.value.code == "not_found"
        assert served_offset(client, "m", "2") == 2


# -- the repository API, explicit mode, polling --------------------------------------------------

async def test_unload_and_load_through_the_api_and_the_cli(tmp_path):
    models = tmp_path / "models"
    path = place(models / "m.onnx", offset=1)
    with DaemonProcess(models, env=FAST) as d, Client(url=d.url) as client:
        pid = (await loaded(d, "m"))[0]["pids"][0]
        client.unload("m")
        assert not alive(pid)  # unload answers once the workers are gone
        assert rows(client, "m") == [{"name": "m", "version": "", "state": "UNAVAILABLE", "reason": "unloaded on request"}]
        with pytest.raises(InferdClientError) as e:
            client.unload("m")
        assert e.value.code == "not_found"

        place(path, offset=2)  # a file change does not bring back a model unloaded on request
        await asyncio.sleep(0.5)
        assert served_offset(client, "m") is None

        cli = [sys.executable, "-m", "inferd.daemon", "models"]
        done = subprocess.run(cli + ["load", "m", "--socket", d.socket_path], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert served_offset(client, "m") == 2
        listing = subprocess.run(cli + ["--url", d.url], capture_output=True, text=True)
        assert listing.returncode == 0
        assert listing.stdout.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
        assert listing.stdout.splitlines()[1].split() == ["m", "1", "READY"]

        with pytest.raises(InferdClientError) as e:
            client.load("nope")
        assert e.value.code == "not_found"
        failing = subprocess.run(cli + ["unload", "nope", "--socket", d.socket_path], capture_output=True, text=True)
        assert failing.returncode == 1 and "not_found" in failing.stderr


async def test_explicit_mode_loads_only_on_request(tmp_path):
    models = tmp_path / "models"
    place(models / "first.onnx", offset=1)
    env = {**FAST, "INFERD_MODELS_CONTROL": "explicit"}
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as client:
        assert served_offset(client, "first") == 1  # what is there at start is loaded
        place(models / "second.onnx", offset=2)
        await asyncio.sleep(0.5)
        assert served_offset(client, "second") is None
        assert "explicit" in rows(client, "second")[0]["reason"]
        client.load("second")
        assert served_offset(client, "second") == 2
        (models / "bad.onnx").write_bytes(b"garbage")
        with pytest.raises(InferdClientError) as e:
            client.load("bad")
        assert e.value.code == "failed_precondition" and "failed to load model 'bad'" in e.value.message
        assert served_offset(client, "first") == 1


async def test_poll_mode_picks_up_a_new_file(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    env = {**FAST, "INFERD_MODELS_CONTROL": "poll", "INFERD_MODELS_POLL_INTERVAL_S": "0.1"}
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as client:
        place(models / "polled.onnx", offset=7)
        await eventually(lambda: served_offset(client, "polled") == 7, what="polled to load")
        (models / "polled.onnx").unlink()
        await eventually(lambda: rows(client, "polled") == [], what="polled to be removed")


# -- SIGHUP --------------------------------------------------------------------------------------

async def test_sighup_rereads_the_config_and_rescans(tmp_path):
    models = tmp_path / "models"
    place(models / "m.onnx")
    config = tmp_path / "inferd.toml"
    config.write_text("[models]\ncontrol = \"explicit\"\n[defaults]\nmax_batch_size = 8\n")
    with DaemonProcess(models, config=config) as d, Client(socket=d.socket_path) as client:
        assert d.http_json("/v2/models/m/config")["max_batch_size"] == 8
        place(models / "n.onnx")
        config.write_text("[models]\ncontrol = \"watch\"\n[defaults]\nmax_batch_size = 16\n")
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for("RELOADING=1", 30)
        assert any(m.startswith("MONOTONIC_USEC=") for m in d.messages)
        assert d.wait_for("READY=1", 60)
        assert d.http_json("/v2/models/m/config")["max_batch_size"] == 16  # new defaults: reloaded
        assert client.ready("n")  # rescanned, and watching from now on

        config.write_text("[defaults]\nmax_batch_size = -1\n")
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for("READY=1", 30)
        await eventually(lambda: any("reload refused" in line for line in d.lines), 10, "the refusal in the log")
        assert d.http_json("/v2/models/m/config")["max_batch_size"] == 16
        assert d.terminate() == 0, "\n".join(d.lines[-25:])


async def test_tritonclient_repository_calls_over_http_and_grpc(tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    models = tmp_path / "models"
    place(models / "m.onnx", offset=3)
    with DaemonProcess(models, env={**FAST, "INFERD_MODELS_CONTROL": "explicit"}) as d:
        grpc_address = (await eventually(lambda: [e["address"] for e in d.events("listening") if e["frontend"] == "grpc"]))[0]
        clients = [httpclient.InferenceServerClient(d.url.removeprefix("http://")),
                   grpcclient.InferenceServerClient(grpc_address)]
        try:
            for client in clients:
                client.unload_model("m")
                with pytest.raises(InferenceServerException) as e:
                    client.get_model_metadata("m")
                assert "unknown model 'm'" in e.value.message()
                client.load_model("m")
                assert client.is_model_ready("m")
                with pytest.raises(InferenceServerException) as e:
                    client.load_model("absent")
                assert "no model 'absent'" in e.value.message()
            index = clients[1].get_model_repository_index()
            assert [(m.name, m.version, m.state) for m in index.models] == [("m", "1", "READY")]
            assert clients[0].get_model_repository_index() == [{"name": "m", "version": "1", "state": "READY"}]
        finally:
            for client in clients:
                client.close()
