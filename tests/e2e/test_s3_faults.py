"""Models from object storage when things go wrong, end to end (moto's S3 server, the real
daemon): a store that hangs at start or while serving, wrong credentials, half-uploaded and
truncated objects, hostile keys. Whatever the store does, the daemon keeps serving what its
models directory has, and says what is wrong: a log line per change, metrics, index notes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import make_models
import pytest
from daemon_process import DaemonProcess
from s3_models import PREFIX, add_sub_bytes, daemon_env, local_files, metric, new_bucket, served_offset, syncs
from s3_server import S3Server
from waiting import eventually

from inferd.client import Client


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


def notes(c: Client, model: str) -> list[str]:
    return [n for r in c.models() if r["name"] == model for n in r.get("notes", [])]


def http_notes(d: DaemonProcess, model: str) -> list[str]:
    status, rows = d.post_json("/v2/repository/index", {})
    assert status == 200
    return [n for r in rows if r["name"] == model for n in r.get("notes", [])]


def source_events(d: DaemonProcess) -> list[str]:
    return [e["event"] for e in d.log_events() if e["event"].startswith("model source ")
            and e["event"] != "model source object not mirrored"]


async def test_a_store_that_hangs_at_start_leaves_the_local_models_serving_until_it_answers(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key=PREFIX + "remote.onnx", Body=add_sub_bytes(tmp_path, 2))
    models = tmp_path / "models"
    make_models.build_add_sub(models / "local.onnx", offset=1)
    (models / ".inferd-sync-0badc0de").write_bytes(b"a killed sync's half download")
    s3.pause()
    try:
        # Ready although the store does not answer: its first sync ends at the timeouts.
        with DaemonProcess(models, env=daemon_env(s3, bucket)) as d, Client(socket=d.socket_path) as c:
            assert served_offset(c, "local") == 1 and served_offset(c, "remote") is None
            assert metric(d, "inferd_model_source_up") == 0
            assert any("unreachable since" in n for n in notes(c, "local"))
            (down,) = d.events("model source unavailable: serving the local copy")
            assert down["state"] == "unreachable" and "did not answer" in down["reason"]
            assert not (models / ".inferd-sync-0badc0de").exists()
            assert d.events("removed an interrupted download")
            s3.resume()
            await eventually(lambda: served_offset(c, "remote") == 2, 60, "the store's model once it answers")
            assert metric(d, "inferd_model_source_up") == 1 and notes(c, "local") == []
            assert served_offset(c, "local") == 1  # an operator's file is not the mirror's: kept
            assert source_events(d) == ["model source unavailable: serving the local copy", "model source reachable"]
    finally:
        s3.resume()


async def test_a_store_that_hangs_while_serving_changes_nothing_and_is_said_once(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key=PREFIX + "remote.onnx", Body=add_sub_bytes(tmp_path, 3))
    with DaemonProcess(tmp_path / "models", env=daemon_env(s3, bucket)) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "remote") == 3
        s3.pause()
        try:
            await eventually(lambda: syncs(d, "unreachable") >= 3, 60, "three syncs against the hung store")
            assert served_offset(c, "remote") == 3  # the local copy serves on
            assert metric(d, "inferd_model_source_up") == 0
            assert metric(d, "inferd_model_source_last_success_timestamp_seconds") > 0
            assert any("unreachable since" in n for n in notes(c, "remote"))
            assert any("unreachable since" in n for n in http_notes(d, "remote"))
            assert source_events(d) == ["model source reachable", "model source unavailable: serving the local copy"]
        finally:
            s3.resume()
        client.put_object(Bucket=bucket, Key=PREFIX + "later.onnx", Body=add_sub_bytes(tmp_path, 4))
        await eventually(lambda: served_offset(c, "later") == 4, 60, "an upload after the store came back")
        assert metric(d, "inferd_model_source_up") == 1
        assert source_events(d)[-1] == "model source reachable"


async def test_wrong_credentials_are_named_and_the_local_models_serve(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key=PREFIX + "remote.onnx", Body=add_sub_bytes(tmp_path, 2))
    models = tmp_path / "models"
    make_models.build_add_sub(models / "local.onnx", offset=1)
    env = daemon_env(s3, bucket, secret_key="wrong")
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "local") == 1 and served_offset(c, "remote") is None
        (down,) = d.events("model source unavailable: serving the local copy")
        assert down["state"] == "denied" and "access denied (SignatureDoesNotMatch)" in down["reason"]
        assert syncs(d, "denied") >= 1 and metric(d, "inferd_model_source_up") == 0
        listing = subprocess.run([sys.executable, "-m", "inferd.daemon", "models", "--socket", d.socket_path],
                                 capture_output=True, text=True, timeout=60)
        assert "note: model source s3://" in listing.stdout and "denied since" in listing.stdout, listing
        assert "SignatureDoesNotMatch" in listing.stdout
        assert local_files(models) == ["local.onnx"]  # nothing written, no manifest


async def test_half_uploaded_and_truncated_objects_never_replace_what_serves(s3, tmp_path):
    client, bucket = new_bucket(s3)
    good = add_sub_bytes(tmp_path, 1)
    client.put_object(Bucket=bucket, Key=PREFIX + "addsub/1/model.onnx", Body=good)
    models = tmp_path / "models"
    with DaemonProcess(models, env=daemon_env(s3, bucket)) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "addsub") == 1
        # A multipart upload in progress (a part sent, not completed) is not an object yet.
        upload = client.create_multipart_upload(Bucket=bucket, Key=PREFIX + "coming/1/model.onnx")
        client.upload_part(Bucket=bucket, Key=PREFIX + "coming/1/model.onnx", UploadId=upload["UploadId"],
                           PartNumber=1, Body=good[: len(good) // 2])
        before = syncs(d)
        await eventually(lambda: syncs(d) >= before + 3, 60, "three syncs after the part")
        assert local_files(models) == [".inferd-source.json", "addsub/1/model.onnx"]
        assert "coming" not in [r["name"] for r in c.models()]
        # A truncated model uploaded over the serving one: its load fails, the old one serves.
        client.put_object(Bucket=bucket, Key=PREFIX + "addsub/1/model.onnx", Body=good[: len(good) // 2])
        await eventually(lambda: [e for e in d.events("model state") if e.get("model") == "addsub"
                                  and e.get("state") == "FAILED"], 60, "the truncated load to fail")
        assert served_offset(c, "addsub") == 1
        rows = {r["state"]: r for r in c.models() if r["name"] == "addsub"}
        assert sorted(rows) == ["FAILED", "READY"], rows  # the serving one, and the file that failed beside it
        assert "new file for the serving version" in rows["FAILED"]["reason"]
        # The upload completed and a good file again: it serves.
        client.complete_multipart_upload(Bucket=bucket, Key=PREFIX + "coming/1/model.onnx", UploadId=upload["UploadId"],
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": client.upload_part(
                                             Bucket=bucket, Key=PREFIX + "coming/1/model.onnx", UploadId=upload["UploadId"],
                                             PartNumber=1, Body=add_sub_bytes(tmp_path, 6))["ETag"]}]})
        client.put_object(Bucket=bucket, Key=PREFIX + "addsub/1/model.onnx", Body=add_sub_bytes(tmp_path, 8))
        await eventually(lambda: served_offset(c, "addsub") == 8, 60, "the good upload to serve")
        await eventually(lambda: served_offset(c, "coming") == 6, 60, "the completed multipart upload to serve")


HOSTILE = ["../escaped.onnx", "a/../../escaped2.onnx", ".hidden.onnx", "x/.git/config", ".inferd-source.json",
           "/abs.onnx", "back\\slash.onnx", "ctrl\x01.onnx", "long" + "x" * 300 + ".onnx",
           "/".join("deep" for _ in range(10)) + ".onnx"]


async def test_hostile_keys_are_skipped_with_a_log_line_each_and_the_rest_serves(s3, tmp_path):
    client, bucket = new_bucket(s3)
    for key in HOSTILE:
        client.put_object(Bucket=bucket, Key=PREFIX + key, Body=b"not a model")
    client.put_object(Bucket=bucket, Key=PREFIX + "fine.onnx", Body=add_sub_bytes(tmp_path, 5))
    models = tmp_path / "models"
    with DaemonProcess(models, env=daemon_env(s3, bucket)) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "fine") == 5
        before = syncs(d, "ok")
        await eventually(lambda: syncs(d, "ok") >= before + 3, 60, "three more syncs")
        assert local_files(models) == [".inferd-source.json", "fine.onnx"]
        assert sorted(os.listdir(tmp_path)) == ["models"]  # nothing escaped the models directory
        skipped = [e["key"] for e in d.events("model source object not mirrored")]
        assert sorted(skipped) == sorted((PREFIX + k)[:300] for k in HOSTILE)  # once each, not each poll
        assert any("key skipped" in n for n in notes(c, "fine"))


async def test_sighup_and_a_repository_load_sync_without_waiting_for_the_poll(s3, tmp_path):
    client, bucket = new_bucket(s3)
    env = daemon_env(s3, bucket, INFERD_MODELS_POLL_INTERVAL_S="3600")
    with DaemonProcess(tmp_path / "models", env=env) as d, Client(socket=d.socket_path) as c:
        client.put_object(Bucket=bucket, Key=PREFIX + "hup.onnx", Body=add_sub_bytes(tmp_path, 2))
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for("READY=1", 60)
        await eventually(lambda: served_offset(c, "hup") == 2, 60, "the model synced on SIGHUP")
        client.put_object(Bucket=bucket, Key=PREFIX + "api.onnx", Body=add_sub_bytes(tmp_path, 3))
        c.load("api")  # the repository API (over the Unix socket)
        assert served_offset(c, "api") == 3  # served once the load returns
        assert syncs(d) == 3  # start, SIGHUP, the load: no poll


async def test_a_broken_credentials_file_is_said_without_its_server_path(s3, tmp_path):
    """botocore names the file it cannot parse: the log keeps the path, the index shows callers
    only its last part (server paths never reach callers)."""
    _, bucket = new_bucket(s3)
    models = tmp_path / "models"
    make_models.build_add_sub(models / "local.onnx", offset=1)
    secret_dir = tmp_path / "secret-place"
    secret_dir.mkdir()
    (secret_dir / "credentials").write_text("[default\naws_access_key_id = x\n")
    env = {k: v for k, v in daemon_env(s3, bucket).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(secret_dir / "credentials")
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "local") == 1
        (down,) = d.events("model source unavailable: serving the local copy")
        assert str(secret_dir) in down["reason"]  # the log says which file
        for said in (notes(c, "local"), http_notes(d, "local")):
            assert any("Unable to parse config file: credentials" in n for n in said), said
            assert not any("secret-place" in n for n in said), said
