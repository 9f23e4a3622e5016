"""The model source's async side (daemon/models/source.py) with a small stand-in store: one sync
at a time and calls sharing the next, a log line per change of state, the metrics, the notes;
the errors as states; the config's checks; boto3 imported only with a source."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from inferd.common.errors import ConfigError
from inferd.config.settings import load_daemon_config
from inferd.daemon.models.s3_sync import SourceDown, SyncReport, classify
from inferd.daemon.models.source import ModelSource
from inferd.daemon.operations.metrics import SourceMetrics


class Store:
    """Answers each sync with the next of `outcomes` (a SyncReport, or a SourceDown to raise);
    `gate`, when set, holds each sync until it is set."""

    def __init__(self, root: Path, *outcomes):
        self.source, self.root = "s3://bucket/models", root
        self.outcomes = list(outcomes)
        self.syncs = 0
        self.gate: threading.Event | None = None

    def sync(self) -> SyncReport:
        if self.gate is not None:
            self.gate.wait(10)
        self.syncs += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def make(tmp_path, *outcomes) -> tuple[ModelSource, Store, CollectorRegistry]:
    registry = CollectorRegistry()
    store = Store(tmp_path, *outcomes)
    return ModelSource(store, 3600, SourceMetrics(registry)), store, registry


DOWN = SourceDown("unreachable", "the store did not answer: timeout")


async def test_a_change_of_state_is_logged_once_and_shown_in_metrics_and_notes(tmp_path):
    source, store, registry = make(tmp_path, SyncReport(downloaded=[("a.onnx", 10)]), DOWN, DOWN, DOWN, SyncReport())
    value = registry.get_sample_value
    with capture_logs() as logs:
        assert await source.sync_now() is True
        assert value("inferd_model_source_up") == 1 and source.notes() == []
        for _ in range(3):
            assert await source.sync_now() is False
        assert value("inferd_model_source_up") == 0
        assert value("inferd_model_source_syncs_total", {"result": "unreachable"}) == 3
        (note,) = source.notes()
        assert "s3://bucket/models unreachable since" in note and "timeout" in note
        assert await source.sync_now() is True
    events = [e["event"] for e in logs if "model source" in e["event"]]
    assert events == ["model source reachable", "model source unavailable: serving the local copy",
                      "model source reachable"]
    assert value("inferd_model_source_downloaded_objects_total") == 1
    assert value("inferd_model_source_downloaded_bytes_total") == 10
    assert value("inferd_model_source_last_success_timestamp_seconds") > 0
    assert source.notes() == []


async def test_objects_not_mirrored_are_logged_once_each_and_noted(tmp_path):
    report = SyncReport(skipped=[("models/../x", "an empty, '.' or '..' path part")],
                        failed=[("big.onnx", "does not fit")])
    source, store, registry = make(tmp_path, report)
    with capture_logs() as logs:
        for _ in range(3):
            assert await source.sync_now() is True
    assert [e["key"] for e in logs if e["event"] == "model source object not mirrored"] == ["models/../x", "big.onnx"]
    assert registry.get_sample_value("inferd_model_source_syncs_total", {"result": "partial"}) == 3
    assert registry.get_sample_value("inferd_model_source_up") == 1
    assert any("big.onnx" in n and "does not fit" in n for n in source.notes())


async def test_calls_during_a_sync_share_the_next_one_and_never_overlap(tmp_path):
    source, store, _ = make(tmp_path, SyncReport())
    store.gate = threading.Event()
    first = asyncio.create_task(source.sync_now())
    await asyncio.sleep(0.05)  # (the first is in its thread, held by the gate)
    waiting = [asyncio.create_task(source.sync_now()) for _ in range(5)]
    await asyncio.sleep(0.05)
    store.gate.set()
    assert await first and all(await asyncio.gather(*waiting))
    assert store.syncs == 2  # the first, and one after the five calls: not six


async def test_start_removes_leftovers_then_syncs(tmp_path):
    (tmp_path / ".inferd-sync-abc").write_bytes(b"half")
    source, store, _ = make(tmp_path, SyncReport())
    await source.start()
    assert not (tmp_path / ".inferd-sync-abc").exists() and store.syncs == 1


def client_error(code: str, status: int = 403) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} says no"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "ListObjectsV2")


@pytest.mark.parametrize(("error", "result", "words"), [
    (client_error("SignatureDoesNotMatch"), "denied", "access denied (SignatureDoesNotMatch)"),
    (client_error("InvalidAccessKeyId"), "denied", "InvalidAccessKeyId"),
    (client_error("AccessDenied"), "denied", "AccessDenied"),
    (client_error("NoSuchBucket", 404), "error", "no such bucket"),
    (client_error("InternalError", 500), "error", "InternalError"),
    (NoCredentialsError(), "denied", "no usable credentials"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "unreachable", "did not answer"),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "unreachable", "did not answer"),
    (ValueError("odd"), "error", "ValueError"),
])
def test_store_errors_become_states_with_reasons(error, result, words):
    down = classify(error)
    assert (down.result, words in down.reason) == (result, True)


@pytest.mark.parametrize(("source", "words"), [
    ("s3://B", "bucket name"), ("http://bucket/x", "s3://bucket"), ("s3://bucket//x", "empty parts"),
    ("s3://bucket/a\x01", "printable"), ("s3://ab", "bucket name"),
])
def test_bad_sources_are_refused_naming_the_key(source, words):
    with pytest.raises(ConfigError) as e:
        load_daemon_config(environ={"INFERD_MODELS_SOURCE": source})
    assert e.value.key == "models.source" and words in e.value.reason


@pytest.mark.parametrize(("key", "value"), [
    ("INFERD_MODELS_ENDPOINT_URL", "ftp://x"), ("INFERD_MODELS_ENDPOINT_URL", "http://a b"),
    ("INFERD_MODELS_REGION", "EU West"), ("INFERD_MODELS_SOURCE_READ_TIMEOUT_S", "0"),
    ("INFERD_MODELS_SOURCE_MAX_OBJECTS", "0"),
])
def test_bad_source_settings_are_refused(key, value):
    with pytest.raises(ConfigError):
        load_daemon_config(environ={"INFERD_MODELS_SOURCE": "s3://bucket/x", key: value})


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_a_source_without_boto3_installed_names_the_extra():
    hide = ("import sys\nfrom inferd.config.settings import load_daemon_config\n"
            "sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\nsys.modules.pop('boto3', None)\n")
    done = run_python(hide + "load_daemon_config(environ={'INFERD_MODELS_SOURCE': 's3://bucket/x'})")
    assert done.returncode != 0 and "models.source" in done.stderr and "inferd[s3]" in done.stderr
    done = run_python(hide + "print(load_daemon_config(environ={}).models.source == '')")  # no source: no boto3 needed
    assert done.stdout.strip() == "True", done.stderr


def test_the_daemon_imports_boto3_only_with_a_source():
    code = ("import sys\nfrom inferd.daemon.server import Daemon\nfrom inferd.config.settings import load_daemon_config\n"
            "Daemon(load_daemon_config(environ={SOURCE}))\nprint('boto3' in sys.modules)")
    without = run_python(code.replace("{SOURCE}", "{}"))
    assert without.stdout.strip().splitlines()[-1] == "False", without.stderr
    with_one = run_python(code.replace("{SOURCE}", "{'INFERD_MODELS_SOURCE': 's3://bucket/x'}"))
    assert with_one.stdout.strip().splitlines()[-1] == "True", with_one.stderr
