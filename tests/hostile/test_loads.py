"""Loads a careless (or hostile) operator or model author can cause: many models dropped at
once, one model loaded by many callers at once, a daemon in a cgroup with a memory limit, and
what callers learn when loads fail (never a server path). The real daemon, real workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess
from waiting import eventually

from inferd.client import Client, InferdClientError

FAST = {"INFERD_MODELS_SETTLE_MS": "100"}
MANY = 120  # models dropped at once: enough that all-at-once would be obvious, few enough for CI
MAX_CONCURRENT_LOADS = 2  # models.max_concurrent_loads (default 4), set so that the key is seen to apply


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def worker_count(daemon_pid: int) -> int:
    """Worker processes alive now: the children of the daemon's forkserver."""
    for child in children(daemon_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in cmdline:
            return len(children(child))
    return 0


def post(d: DaemonProcess, path: str) -> tuple[int, dict | list]:
    request = urllib.request.Request(d.url + path, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")




def index(d: DaemonProcess) -> list[dict]:
    status, rows = post(d, "/v2/repository/index")
    assert status == 200
    return rows


async def test_many_models_dropped_at_once_load_a_few_at_a_time_and_keep_no_worker(tmp_path):
    models, staging = tmp_path / "models", tmp_path / "staging"
    models.mkdir()
    make_models.build_add_sub(staging / "template.onnx")
    for i in range(MANY):
        shutil.copy(staging / "template.onnx", staging / f"m{i:03}.onnx")
    env = {**FAST, "INFERD_MODELS_MAX_CONCURRENT_LOADS": str(MAX_CONCURRENT_LOADS)}
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as c:
        for i in range(MANY):  # dropped all at once
            os.replace(staging / f"m{i:03}.onnx", models / f"m{i:03}.onnx")
        peak, started, deadline = 0, time.monotonic(), time.monotonic() + 300
        while time.monotonic() < deadline:
            peak = max(peak, worker_count(d.proc.pid))
            states = [r["state"] for r in index(d)]
            if len(states) == MANY and all(s == "READY" for s in states):
                break
            await asyncio.sleep(0.02)
        seconds = time.monotonic() - started
        states = [r["state"] for r in index(d)]
        assert states.count("READY") == MANY, states
        print(f"{MANY} models: peak {peak} workers at once, all READY after {seconds:.1f} s")
        assert 1 <= peak <= MAX_CONCURRENT_LOADS
        # Scale-to-zero models (min_workers = 0, the default) keep no validating worker.
        assert worker_count(d.proc.pid) == 0
        ones = np.ones((1, 16), np.int32)
        assert c.infer("m007", {"INPUT0": ones, "INPUT1": ones})["OUTPUT0"].tolist() == [[2] * 16]  # a cold start


SLOW_LOAD = '''
import time

class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def load(self, model_dir, config):
        time.sleep(2)  # every caller asks while this load is in progress
        if config["parameters"].get("fail"):
            raise RuntimeError("this model refuses to load")

    def infer(self, inputs):
        return {"y": inputs["x"]}
'''


async def test_forty_concurrent_loads_of_one_model_share_one_load(tmp_path):
    for name, config in (("m", "min_workers = 1\n"), ("broken", "[parameters]\nfail = true\n")):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(SLOW_LOAD)
        (tmp_path / name / "config.toml").write_text(config)
    with DaemonProcess(tmp_path, env={"INFERD_MODELS_CONTROL": "explicit"}) as d:
        async with aiohttp.ClientSession() as s:
            async def load(name: str) -> tuple[int, dict]:
                async with s.post(f"{d.url}/v2/repository/models/{name}/load") as r:
                    return r.status, await r.json(content_type=None) if r.content_length else {}

            def loads_of(name: str) -> int:
                return len([e for e in d.events("model state") if e["model"] == name and e["state"] == "LOADING"])

            before = {name: loads_of(name) for name in ("m", "broken")}  # (the directory's first scan loads them too)
            answers = await asyncio.gather(*(load("m") for _ in range(40)))
            assert [status for status, _ in answers] == [200] * 40
            await eventually(lambda: loads_of("m") > before["m"])  # (the log is read by a thread)
            assert loads_of("m") == before["m"] + 1
            # min_workers = 1: one worker, not forty (the first scan's generation stops after the switch)
            await eventually(lambda: worker_count(d.proc.pid) == 1)

            failures = await asyncio.gather(*(load("broken") for _ in range(40)))
            assert {status for status, _ in failures} == {400}, failures
            reasons = {body["error"] for _, body in failures}
            assert reasons == {"failed to load model 'broken': version 1: RuntimeError: this model refuses to load"}
            await eventually(lambda: loads_of("broken") > before["broken"])
            assert loads_of("broken") == before["broken"] + 1


def test_failed_loads_and_the_index_show_no_server_path(tmp_path):
    models = tmp_path / "models"
    (models / "corrupt" / "1").mkdir(parents=True)
    (models / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (models / "badconfig" / "1").mkdir(parents=True)
    make_models.build_add_sub(models / "badconfig" / "1" / "model.onnx")
    (models / "badconfig" / "config.toml").write_text("max_batch_size = 'many'\n")
    (models / "twice" / "1").mkdir(parents=True)
    make_models.build_add_sub(models / "twice" / "1" / "model.onnx")
    make_models.build_add_sub(models / "twice.onnx")
    (models / "raises" / "1").mkdir(parents=True)
    (models / "raises" / "1" / "model.py").write_text(f"open({str(tmp_path / 'missing.txt')!r})\n")
    with DaemonProcess(models, env={"INFERD_MODELS_CONTROL": "explicit"}) as d:
        for name in ("corrupt", "badconfig", "twice", "raises", "nothere"):
            status, body = post(d, f"/v2/repository/models/{name}/load")
            assert status in (400, 404) and body["error"], (name, body)
            assert str(tmp_path) not in body["error"] and "/tmp" not in body["error"], body
        text = json.dumps(index(d))
        assert str(tmp_path) not in text and "/tmp" not in text, text
        rows = {r["name"]: r for r in json.loads(text)}
        assert "config.toml" in rows["badconfig"]["reason"] and "twice" in rows["twice"]["reason"]
        assert "missing.txt" in rows["raises"]["reason"]  # the file it named, without where it is
        with Client(socket=d.socket_path) as c, pytest.raises(InferdClientError) as e:
            c.infer("corrupt", {"x": [1]})
        assert str(tmp_path) not in e.value.message and "corrupt" in e.value.message


async def test_a_pipeline_whose_step_is_unloaded_is_not_ready_until_it_is_back(tmp_path):
    make_models.make_text_examples(tmp_path)
    with DaemonProcess(tmp_path, env=FAST) as d, Client(socket=d.socket_path) as c:
        assert c.ready("text_classifier")
        c.unload("label")
        assert not c.ready("text_classifier")
        row = next(r for r in c.models() if r["name"] == "text_classifier")
        assert row["state"] == "FAILED" and "step model 'label'" in row["reason"]
        c.load("label")
        deadline = time.monotonic() + 60
        while not c.ready("text_classifier") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert c.ready("text_classifier")


def test_config_shows_the_models_parameters(tmp_path):
    make_models.build_add_sub(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text('[parameters]\nlabel = "cats"\nthreshold = 0.5\nsizes = [1, 2]\n')
    with DaemonProcess(tmp_path) as d:
        config = d.http_json("/v2/models/m/config")
    assert config["parameters"] == {"label": {"string_value": "cats"}, "threshold": {"string_value": "0.5"},
                                    "sizes": {"string_value": "[1, 2]"}}


# -- a cgroup memory limit ---------------------------------------------------------------------

def _own_memory_cgroup() -> tuple[Path, str, str] | None:
    """(this process's memory cgroup directory, limit file, procs file) where a child can be
    made here (cgroup v2 with the memory controller, or v1's memory hierarchy), else None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                directory = base / path.lstrip("/")
                controllers_file = directory / "cgroup.controllers"
                if controllers_file.exists() and "memory" in controllers_file.read_text().split():
                    return directory, "memory.max", "cgroup.procs"
        elif "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes", "cgroup.procs"
    return None


@pytest.fixture
def limited_cgroup():
    """A child memory cgroup limited to 1 GiB (skipped where none can be made)."""
    own = _own_memory_cgroup()
    if own is None:
        pytest.skip("no writable memory cgroup here")
    parent, limit_file, procs = own
    child = parent / f"inferd-test-{os.getpid()}"
    try:
        child.mkdir()
        (child / limit_file).write_text(str(1 << 30))
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    try:
        yield child, procs
    finally:
        for _ in range(100):  # the daemon's processes leave it as they exit
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_memory_admission_honours_the_cgroup_limit(tmp_path, limited_cgroup):
    child, procs = limited_cgroup
    make_models.build_add_sub(tmp_path / "models" / "m" / "1" / "model.onnx")
    config = tmp_path / "inferd.toml"
    # 900 MiB kept free: the host has far more than that, the 1 GiB cgroup does not.
    config.write_text(f"[memory]\nreserve_bytes = {900 << 20}\n")
    enter = f'echo $$ > {child / procs} && exec "$0" "$@"'
    program = ["sh", "-c", enter, sys.executable, "-m", "inferd.daemon"]
    with DaemonProcess(tmp_path / "models", config=config, program=program) as d:
        [probe] = d.events("memory probe")
        assert probe["devices"]["cpu"]["total"] == 1 << 30
        [row] = index(d)
        assert row["state"] == "FAILED" and "not enough memory on cpu" in row["reason"], row


def test_the_cgroup_reading_takes_the_tightest_limit_of_a_real_tree(tmp_path):
    """The probe's reading, pointed (its documented `root` parameter) at a tree laid out like
    /sys/fs/cgroup, v2 and v1, with limits at two levels."""
    from inferd.scheduler.memory import cgroup_memory

    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/inferd.service\n")
    service = tmp_path / "fs" / "system.slice" / "inferd.service"
    service.mkdir(parents=True)
    (tmp_path / "fs" / "system.slice" / "memory.max").write_text(f"{8 << 30}\n")
    (tmp_path / "fs" / "system.slice" / "memory.current").write_text(f"{7 << 30}\n")  # 1 GiB left up there
    (service / "memory.max").write_text(f"{2 << 30}\n")  # systemd's MemoryMax=2G
    (service / "memory.current").write_text(f"{512 << 20}\n")
    (service / "memory.stat").write_text(f"anon 1\ninactive_file {256 << 20}\n")  # reclaimable
    assert cgroup_memory(str(tmp_path / "fs"), str(proc)) == (8 << 30, 1 << 30)
    (tmp_path / "fs" / "system.slice" / "memory.max").write_text("max\n")
    assert cgroup_memory(str(tmp_path / "fs"), str(proc)) == (2 << 30, (2 << 30) - (256 << 20))

    proc.write_text("4:memory:/box\n0::/\n")  # cgroup v1's memory hierarchy
    box = tmp_path / "v1" / "memory" / "box"
    box.mkdir(parents=True)
    (box / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (box / "memory.usage_in_bytes").write_text(f"{100 << 20}\n")
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    assert cgroup_memory(str(tmp_path / "v1"), str(proc)) == (1 << 30, (1 << 30) - (100 << 20))
