"""Worker processes end to end: from zero on demand, up under load, back down when idle, and
through crashes. Real daemon, real forked workers, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess
from test_hot_directory import A, B, alive, offset_of
from waiting import eventually

from inferd.backends import mailbox
from inferd.client import AsyncClient, Client, InferdClientError


def add_sub_model(root: Path, name: str, config: str) -> None:
    make_models.build_add_sub(root / name / "1" / "model.onnx", offset=1)
    (root / name / "config.toml").write_text(config)


def metric(d: DaemonProcess, name: str, **labels) -> float:
    """One sample's value from /metrics (0 when absent)."""
    text = d.http_get("/metrics").decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def worker_pids(d: DaemonProcess, model: str) -> set[int]:
    """Workers of `model` that are running, from the daemon's own log."""
    started = {e["pid"] for e in d.events("scaled up") if e["model"] == model}
    started |= {p for e in d.events("model loaded") if e["model"] == model for p in e["pids"]}
    return {p for p in started if alive(p)}


def memfds(pid: int) -> set[int]:
    """The shared-memory regions (memfds, by inode) a process holds open or mapped."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:inferd-"):
                out.add(os.stat(fd).st_ino)
        except OSError:
            continue
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/memfd:inferd-"):
            out.add(int(fields[4]))
    return out


async def test_idle_workers_stop_and_the_next_request_starts_one(tmp_path):
    add_sub_model(tmp_path, "m", "idle_timeout_s = 0.3\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path) as client:
        # min_workers = 0: the worker that validated the model stopped when validation ended.
        [validating] = {e["pid"] for e in d.events("warmed up") if e["model"] == "m"}
        await eventually(lambda: not alive(validating), 30, "the validating worker to stop")
        assert worker_pids(d, "m") == set() and client.ready("m")  # no worker, still READY
        assert metric(d, "inferd_workers", model="m") == 0
        # Its exit counts as an idle one, not as an eviction for memory.
        assert metric(d, "inferd_worker_exits_total", model="m", cause="idle") == 1
        assert metric(d, "inferd_worker_exits_total", model="m", cause="evicted") == 0
        assert memfds(d.proc.pid) == set()  # its shared memory went with it
        assert offset_of(client.infer("m", {"INPUT0": A, "INPUT1": B})) == 1  # a cold start
        # One worker started for it (it may already be idle for 0.3 s and gone on a loaded machine;
        # its log line may reach the test's reader thread after the answer).
        await eventually(lambda: any(e["model"] == "m" for e in d.events("scaled up")), 30, "the scaled up event")
        assert len({e["pid"] for e in d.events("scaled up") if e["model"] == "m"}) == 1
        assert metric(d, "inferd_cold_starts_total", model="m") == 1
        assert metric(d, "inferd_cold_start_seconds_count", model="m", phase="spawn") == 1
        assert metric(d, "inferd_worker_exits_total", model="m", cause="idle") >= 1


@pytest.mark.parametrize("busy_poll_us", [0, 200])
async def test_workers_run_sched_batch_and_serve_with_busy_polling_on_or_off(tmp_path, busy_poll_us):
    # SCHED_BATCH: a worker woken by the daemon's write must not preempt the daemon (see
    # inferd.backends.worker). The daemon itself stays SCHED_OTHER.
    add_sub_model(tmp_path, "m", f"min_workers = 1\nbusy_poll_us = {busy_poll_us}\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path) as client:
        for i in range(20):  # lone requests: the light-load path, where the two ends poll
            out = client.infer("m", {"INPUT0": A + i, "INPUT1": B})
            np.testing.assert_array_equal(out["OUTPUT0"], A + i + B + 1)  # add_sub_model's offset is 1
            np.testing.assert_array_equal(out["OUTPUT1"], A + i - B)
        [pid] = worker_pids(d, "m")
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH
        assert os.sched_getscheduler(d.proc.pid) == os.SCHED_OTHER
        # Both froze what their start-up left (inferd.common.gc_policy): modules, runtime, model.
        assert d.events("ready")[0]["gc_frozen"] > 10_000
        assert [e["frozen"] for e in d.events("gc settled") if e["pid"] == pid][0] > 10_000


async def test_sixteen_first_requests_start_one_worker(tmp_path):
    add_sub_model(tmp_path, "m", "idle_timeout_s = 0.2\nmax_workers = 4\n")
    with DaemonProcess(tmp_path) as d:
        await eventually(lambda: not worker_pids(d, "m"), 30, "scale to zero")
        async with AsyncClient(socket=d.socket_path) as client:
            answers = await asyncio.gather(*(client.infer("m", {"INPUT0": A + i, "INPUT1": B}) for i in range(16)))
        assert [int(a["OUTPUT0"][0, 0]) for a in answers] == [i + 2 for i in range(16)]
        cold = [e for e in d.events("scaled up") if e["model"] == "m" and e["reason"].startswith("cold start")]
        assert len(cold) == 1
        assert metric(d, "inferd_cold_starts_total", model="m") == 1


async def test_sustained_load_grows_the_pool_and_it_shrinks_after(tmp_path):
    make_models.build_slow(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.toml").write_text(
        "min_workers = 1\nmax_workers = 2\nidle_timeout_s = 1\nscale_up_wait_ms = 10\nscale_up_window_s = 0.3\n"
        "max_batch_size = 64\n"
    )
    with DaemonProcess(tmp_path) as d:
        stop = asyncio.Event()

        async def keep_asking():
            async with AsyncClient(socket=d.socket_path) as client:
                while not stop.is_set():
                    await client.infer("slow", {"x": np.ones((64, 1024), np.float32)})  # a full batch each

        clients = [asyncio.create_task(keep_asking()) for _ in range(6)]
        try:
            await eventually(lambda: len(worker_pids(d, "slow")) == 2, 60, "a second worker")
            await asyncio.sleep(1.5)  # still loaded: bounded by max_workers, and no flapping
            assert len(worker_pids(d, "slow")) == 2
        finally:
            stop.set()
            await asyncio.gather(*clients)
        ups = [e for e in d.events("scaled up") if e["model"] == "slow"]
        assert len(ups) == 1 and "waited" in ups[0]["reason"]
        await eventually(lambda: len(worker_pids(d, "slow")) == 1, 30, "back to min_workers")
        assert [e["reason"] for e in d.events("scaled down") if e["model"] == "slow"] == ["idle for 1 s"]


async def test_sigkill_under_load_loses_nothing_on_an_idempotent_model(tmp_path):
    make_models.build_slow(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.toml").write_text("min_workers = 1\nmax_workers = 1\n")
    with DaemonProcess(tmp_path) as d:
        [victim] = worker_pids(d, "slow")
        failures, answered = [], []
        stop = asyncio.Event()

        async def keep_asking():
            async with AsyncClient(socket=d.socket_path) as client:
                while not stop.is_set():
                    try:
                        answered.append((await client.infer("slow", {"x": np.ones((8, 1024), np.float32)}))["y"].shape)
                    except InferdClientError as e:
                        failures.append(e)

        clients = [asyncio.create_task(keep_asking()) for _ in range(4)]
        try:
            await eventually(lambda: len(answered) >= 4)
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: worker_pids(d, "slow") - {victim}, 60, "a replacement")
            count = len(answered)
            await eventually(lambda: len(answered) >= count + 4, 60, "the replacement to serve")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert failures == []  # the killed worker's batch ran again on the replacement
        assert metric(d, "inferd_worker_exits_total", model="slow", cause="crash") == 1
        assert any("running it again" in line for line in d.lines)
        assert len(memfds(d.proc.pid)) == 2 + mailbox.supported()  # only the replacement's regions (and mailbox) remain


async def test_a_non_idempotent_model_fails_only_the_killed_batch(tmp_path):
    make_models.build_slow(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.toml").write_text(
        "min_workers = 1\nmax_workers = 1\nidempotent = false\nmax_batch_size = 256\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path) as client:
        [victim] = worker_pids(d, "slow")
        async with AsyncClient(socket=d.socket_path) as aclient:
            # Two full batches: the first runs (about a second here), the second waits for it.
            calls = [asyncio.create_task(aclient.infer("slow", {"x": np.ones((256, 1024), np.float32)})) for _ in range(2)]
            await eventually(lambda: metric(d, "inferd_queue_duration_seconds_count", model="slow") >= 1)
            os.kill(victim, signal.SIGKILL)
            first, second = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(first, InferdClientError), "the killed batch was answered"
        assert first.code == "unavailable" and "exited" in first.message
        assert second["y"].shape == (256, 1024)  # queued behind it: run by the replacement
        out = client.infer("slow", {"x": np.ones((1, 1024), np.float32)})  # the model keeps serving
        assert out["y"].shape == (1, 1024)


async def test_a_crash_loop_marks_the_model_failed(tmp_path):
    add_sub_model(tmp_path, "m", "min_workers = 1\ncrash_loop_count = 3\ncrash_loop_window_s = 60\n")
    with DaemonProcess(tmp_path) as d, Client(socket=d.socket_path) as client:
        killed: set[int] = set()
        for _ in range(3):  # a backend that dies as soon as it runs, three times over
            [pid] = await eventually(lambda: worker_pids(d, "m") - killed or None, 60, "a worker to kill")
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        [row] = await eventually(lambda: [r for r in client.models() if r["state"] == "FAILED"], 30, "FAILED")
        assert re.search(r"crash loop: 3 worker failures within 60 s; the last: a worker exited with signal SIGKILL",
                         row["reason"])
        try:
            client.infer("m", {"INPUT0": A, "INPUT1": B})
            raise AssertionError("a crash-looping model answered")
        except InferdClientError as e:
            assert e.code == "unavailable" and "crash loop" in e.message
        await asyncio.sleep(0.3)
        assert worker_pids(d, "m") == set()  # no respawning
        assert metric(d, "inferd_model_state", model="m", state="FAILED") == 1


async def test_a_cold_start_slower_than_the_timeout_is_503_with_retry_after(tmp_path):
    """The caller waits at most cold_start_timeout_s; the worker goes on starting for the next."""
    make_models.build_mlp(tmp_path / "mlp" / "1" / "model.onnx")
    (tmp_path / "mlp" / "config.toml").write_text("idle_timeout_s = 0.2\ncold_start_timeout_s = 0.005\n")
    with DaemonProcess(tmp_path) as d:
        await eventually(lambda: not worker_pids(d, "mlp"), 30, "scale to zero")
        import aiohttp

        body = {"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": [0.5] * 512}]}
        async with aiohttp.ClientSession(d.url) as http:
            async with http.post("/v2/models/mlp/infer", json=body) as response:
                assert response.status == 503 and response.headers["Retry-After"] == "1"
                assert "cold start took longer than 0.005 s" in (await response.json())["error"]

            async def answered():
                async with http.post("/v2/models/mlp/infer", json=body) as r:
                    return r.status == 200
            await eventually(answered, 30, "the worker that kept starting to answer")
        assert len([e for e in d.events("scaled up") if e["model"] == "mlp"]) == 1
