"""Files the daemon cannot read (a directory where a file should be, bytes that are not UTF-8)
are reasons, never tracebacks: at start (exit 2 naming the file), on SIGHUP (refused, READY=1
all the same), and in the models directory (the model is FAILED with the reason, the watcher
goes on). And a model unloaded on request goes through every state the metrics know."""

from __future__ import annotations

import gc
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from daemon_process import DaemonProcess
from test_workers import add_sub_model, metric
from waiting import eventually

from inferd.client import Client
from inferd.daemon import cli

NOT_UTF8 = b"max_batch_size = 8\n# caf\xe9\n"


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferd.daemon", "serve", "--http", "127.0.0.1:0", "--grpc", "",
                           "--socket", "", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_an_unreadable_config_at_start_is_refused_naming_the_file(tmp_path, kind):
    config = tmp_path / "inferd.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.write_bytes(NOT_UTF8)
    done = serve("--config", str(config), "--models", str(tmp_path))
    assert done.returncode == 2
    assert f"inferd: invalid configuration: {config}: (file):" in done.stderr
    assert ("cannot read it" if kind == "directory" else "not UTF-8") in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_config_unreadable_on_sighup_is_refused_and_ready_comes(tmp_path):
    models = tmp_path / "models"
    add_sub_model(models, "m", "")
    config = tmp_path / "inferd.toml"
    config.write_text("[defaults]\nmax_batch_size = 8\n")
    with DaemonProcess(models, config=config) as d, Client(socket=d.socket_path) as client:
        config.write_bytes(b"[defaults]\n" + NOT_UTF8)
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for("RELOADING=1", 30)
        assert d.wait_for("READY=1", 30)
        await eventually(lambda: d.events("reload refused: invalid configuration; keeping the running one"), 10,
                         "the refusal in the log")
        assert "not UTF-8" in d.events("reload refused: invalid configuration; keeping the running one")[0]["error"]
        a = np.ones((1, 16), np.int32)
        assert (client.infer("m", {"INPUT0": a, "INPUT1": a})["OUTPUT0"] == 3).all()  # add_sub_model's offset is 1
        assert d.http_json("/v2/models/m/config")["max_batch_size"] == 8
        assert d.terminate() == 0


async def test_a_model_whose_config_is_unreadable_fails_with_the_reason_and_the_watcher_goes_on(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with DaemonProcess(models, env={"INFERD_MODELS_SETTLE_MS": "100"}) as d, Client(socket=d.socket_path) as client:
        add_sub_model(models, "bad", "")
        (models / "bad" / "config.toml").write_bytes(NOT_UTF8)

        def state(name):
            return {r["name"]: r for r in client.models()}.get(name, {})

        await eventually(lambda: state("bad").get("state") == "FAILED", 30, "bad to fail")
        assert "config.toml: (file): not UTF-8" in state("bad")["reason"]
        add_sub_model(models, "good", "")  # the watcher still follows the directory
        await eventually(lambda: state("good").get("state") == "READY", 30, "good to load")
        (models / "bad" / "config.toml").write_text("max_batch_size = 8\n")  # fixed: it retries
        await eventually(lambda: state("bad").get("state") == "READY", 30, "bad to load once fixed")
        assert not [line for line in d.lines if "Traceback" in line]


async def test_an_unloaded_model_goes_through_every_state_the_metrics_know(tmp_path):
    models = tmp_path / "models"
    add_sub_model(models, "m", "")
    with DaemonProcess(models) as d, Client(socket=d.socket_path) as client:
        states = {s: metric(d, "inferd_model_state", model="m", state=s)
                  for s in ("LOADING", "READY", "UNLOADING", "FAILED", "UNLOADED")}
        assert states == {"LOADING": 0, "READY": 1, "UNLOADING": 0, "FAILED": 0, "UNLOADED": 0}
        assert re.search(r'^inferd_model_state\{model="m",state="UNLOADED",version="1"\} 0\.0$', d.http_get("/metrics").decode(),
                         re.M)  # present, not merely absent
        client.unload("m")
        await eventually(lambda: [e["state"] for e in d.events("model state") if e["model"] == "m"][-2:]
                         == ["UNLOADING", "UNLOADED"], 10, "the UNLOADED state in the log")
        assert 'inferd_model_state{model="m"' not in d.http_get("/metrics").decode()  # gone with it


def test_the_models_command_reads_its_token_file_and_closes_it(daemon, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert cli.main(["models", "--url", daemon.url, "--token-file", str(token)]) == 0
    gc.collect()  # an unclosed file would warn here (ResourceWarning): the suite's warnings are errors
    assert capsys.readouterr().out.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    token.write_bytes(b"\xff\xfe")
    assert cli.main(["models", "--url", daemon.url, "--token-file", str(token)]) == 1
    assert "inferd models:" in capsys.readouterr().err
