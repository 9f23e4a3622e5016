"""Memory-derived limits end to end, on the host probe for real: a model's measured per-row cost
and a memory budget give its batch limit; a full queue's Retry-After follows the drain rate; a
batch that cannot allocate memory is split; a worker is started only if it fits."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from daemon_process import DaemonProcess
from make_models import build_add_sub, build_wide
from test_workers import metric
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

MiB = 1 << 20


def reload(d: DaemonProcess, config: Path, text: str) -> None:
    config.write_text(text)
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for("READY=1", 60)


async def fit_of(d: DaemonProcess, model: str) -> dict:
    """The model's measured fit, once logged: a model whose files were written less than
    settle_ms before the daemon started loads just after READY=1."""
    try:
        fits = await eventually(lambda: [e for e in d.events("memory fit") if e["model"] == model], 30, f"{model}'s fit")
    except AssertionError:
        raise AssertionError("\n".join(line for line in d.lines if f'"{model}"' in line)) from None
    assert len(fits) == 1
    return fits[0]


async def test_batch_limit_follows_the_measured_fit_and_the_budget(tmp_path):
    build_wide(tmp_path / "models" / "wide" / "1" / "model.onnx")
    (tmp_path / "models" / "wide" / "config.toml").write_text("max_batch_size = 64\nidle_timeout_s = 0\nmax_queue_delay_ms = 200\n")
    config = tmp_path / "inferd.toml"
    config.write_text("")
    with DaemonProcess(tmp_path / "models", config=config) as d:
        fit = await fit_of(d, "wide")
        assert [p[0] for p in fit["points"]] == [1, 16, 64]
        per_row, base = fit["bytes_per_row"], fit["base_bytes"]
        assert 1 * MiB <= per_row <= 3 * MiB  # the 1 MiB tile, and what onnxruntime adds around it
        assert metric(d, "inferd_model_bytes_per_row", model="wide") == per_row
        assert metric(d, "inferd_model_batch_limit", model="wide") == 64  # the host has room for 64

        for rows in (20, 40):
            budget = base + int((rows + 0.5) * per_row)
            reload(d, config, f"[memory]\nbudget_bytes = {budget}\n")
            # (budget - the worker's base) / bytes per row: the fit, and nothing else, decides
            await eventually(lambda rows=rows: metric(d, "inferd_model_batch_limit", model="wide") == rows, 10,
                             f"the batch limit to be {rows}")
        async with AsyncClient(socket=d.socket_path) as c:
            before = metric(d, "inferd_batch_size_count", model="wide")
            x = np.ones((1, 256), np.float32)
            answers = await asyncio.gather(*(c.infer("wide", {"x": x * i}) for i in range(100)))
            assert [float(a["y"][0, 0]) for a in answers] == [256 * 1024 * i for i in range(100)]
            assert metric(d, "inferd_batch_size_count", model="wide") - before >= 3  # 100 rows, 40 at most
            assert float((await c.infer("wide", {"x": np.ones((64, 256), np.float32)}))["y"][63, 0]) == 256 * 1024  # alone
        assert metric(d, "inferd_device_memory_total_bytes", device="cpu") > 0


SLEEPY = '''
import time
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def load(self, model_dir, config):
        self.seconds = config["parameters"]["seconds"]

    def infer(self, inputs):
        time.sleep(self.seconds)
        return {"y": inputs["x"]}
'''


async def retry_after_when_full(d: DaemonProcess, model: str) -> int:
    """Measure one batch, fill the queue (one batch running, 32 rows queued), then ask once more."""
    rows = np.arange(8)
    async with AsyncClient(socket=d.socket_path) as c:
        await c.infer(model, {"x": rows})
        started = metric(d, "inferd_queue_duration_seconds_count", model=model)
        held = [asyncio.create_task(c.infer(model, {"x": rows}))]
        await eventually(lambda: metric(d, "inferd_queue_duration_seconds_count", model=model) > started, 10,
                         "the batch to start")
        held += [asyncio.create_task(c.infer(model, {"x": rows})) for _ in range(4)]
        await eventually(lambda: metric(d, "inferd_queue_rows", model=model) == 32, 10, "a full queue")
        body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [8], "data": rows.tolist()}]}
        async with aiohttp.ClientSession() as s, s.post(f"{d.url}/v2/models/{model}/infer", json=body) as r:
            assert r.status == 429 and "queue full" in (await r.json())["error"]
            retry_after = int(r.headers["Retry-After"])
        await asyncio.gather(*held)
    return retry_after


async def test_queue_full_retry_after_tracks_the_drain_rate(tmp_path):
    for name, seconds in (("fast", 0.4), ("slow", 2.4)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(SLEEPY)
        (tmp_path / name / "config.toml").write_text(
            f"max_batch_size = 8\nmax_queue_rows = 32\n[parameters]\nseconds = {seconds}\n")
    with DaemonProcess(tmp_path) as d:
        fast = await retry_after_when_full(d, "fast")
        slow = await retry_after_when_full(d, "slow")
    # 8 more rows fit once one batch of 8 has run: 8 rows / (8 rows per 0.4 s or 2.4 s)
    assert fast == 1
    assert slow in (3, 4)


GREEDY = '''
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        x = inputs["x"]
        if len(x) > 4:
            scratch = np.empty((len(x), 1 << 40), np.float64)  # 8 TiB a row: the allocation fails
        return {"y": x * 3}
'''


async def test_a_batch_that_runs_out_of_memory_is_split_and_the_limit_lowered(tmp_path):
    (tmp_path / "greedy" / "1").mkdir(parents=True)
    (tmp_path / "greedy" / "1" / "model.py").write_text(GREEDY)
    (tmp_path / "greedy" / "config.toml").write_text("max_batch_size = 16\nmax_queue_delay_ms = 300\n")
    with DaemonProcess(tmp_path) as d:
        async with AsyncClient(socket=d.socket_path) as c:
            answers = await asyncio.gather(*(c.infer("greedy", {"x": np.array([i])}) for i in range(12)))
            assert [int(a["y"][0]) for a in answers] == [3 * i for i in range(12)]  # every one answered
        assert metric(d, "inferd_oom_total", model="greedy") >= 1
        assert 1 <= metric(d, "inferd_model_batch_limit", model="greedy") <= 4
        assert any(e["model"] == "greedy" for e in d.events("a batch ran out of memory; running it again in smaller batches"))
        with Client(socket=d.socket_path) as c:
            with pytest.raises(InferdClientError) as e:
                c.infer("greedy", {"x": np.arange(8)})  # alone and still too big
            assert e.value.code == "unavailable" and "out of memory" in e.value.message and "batch limit is now" in e.value.message
            assert c.infer("greedy", {"x": np.arange(3)})["y"].tolist() == [0, 3, 6]  # the same worker serves on


def add_sub_model(root: Path, name: str, config: str) -> None:
    build_add_sub(root / name / "1" / "model.onnx")
    (root / name / "config.toml").write_text(config)


async def test_a_worker_starts_only_if_it_fits_and_idle_models_can_make_room(tmp_path):
    models = tmp_path / "models"
    add_sub_model(models, "a", "idle_timeout_s = 300\n")
    add_sub_model(models, "b", "idle_timeout_s = 0.3\n")
    config = tmp_path / "inferd.toml"
    config.write_text("")
    one = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
    with DaemonProcess(models, config=config) as d, Client(socket=d.socket_path) as c:
        needed_by_b = (await fit_of(d, "b"))["base_bytes"]
        await fit_of(d, "a")
        await eventually(lambda: metric(d, "inferd_workers", model="b") == 0, 30, "b to scale to zero")
        c.infer("a", one)  # a's validating worker is gone (min_workers = 0): this one stays (idle_timeout_s)
        await eventually(lambda: metric(d, "inferd_worker_memory_bytes", model="a") > 0, 10, "a's worker's memory")
        held_by_a = metric(d, "inferd_worker_memory_bytes", model="a")
        assert held_by_a > 0 and needed_by_b > 0
        reload(d, config, f"[memory]\nbudget_bytes = {int(held_by_a + needed_by_b / 2)}\n")
        with pytest.raises(InferdClientError) as e:
            c.infer("b", one)
        assert e.value.code == "unavailable" and "memory budget" in e.value.message and "cpu" in e.value.message
        assert metric(d, "inferd_workers_refused_total", model="b", reason="budget") >= 1  # the refusal's kind
        assert c.infer("a", one)["OUTPUT0"][0, 0] == 2  # what runs is untouched

        reload(d, config, f"[memory]\nbudget_bytes = {int(held_by_a + needed_by_b / 2)}\nevict_idle = true\n")
        assert c.infer("b", one)["OUTPUT0"][0, 0] == 2  # a (idle) made room
        assert metric(d, "inferd_worker_exits_total", model="a", cause="evicted") == 1
        assert metric(d, "inferd_workers", model="a") == 0
        [evicted] = d.events("scaling an idle model to zero to make room")
        assert evicted["model"] == "a" and evicted["for_model"] == "b version 1"
