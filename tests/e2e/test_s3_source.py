"""Models from object storage, end to end: moto's S3 server (real HTTP, credential checks), the
real daemon mirroring a prefix into its models directory, real workers answering."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from daemon_process import DaemonProcess
from s3_models import PREFIX, add_sub_bytes, daemon_env, local_files, new_bucket, served_offset
from s3_server import S3Server
from waiting import eventually

from inferd.client import Client


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


async def test_uploaded_models_load_are_replaced_and_unloaded(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key=PREFIX + "addsub/1/model.onnx", Body=add_sub_bytes(tmp_path, 1))
    models = tmp_path / "models"
    with DaemonProcess(models, env=daemon_env(s3, bucket)) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "addsub") == 1  # synced before the first scan: served once ready
        # A new upload over the same key: loads beside, then serves.
        client.put_object(Bucket=bucket, Key=PREFIX + "addsub/1/model.onnx", Body=add_sub_bytes(tmp_path, 5))
        await eventually(lambda: served_offset(c, "addsub") == 5, 60, "the replaced model to serve")
        # A new version: the latest serves, the old one is retired.
        client.put_object(Bucket=bucket, Key=PREFIX + "addsub/2/model.onnx", Body=add_sub_bytes(tmp_path, 7))
        await eventually(lambda: served_offset(c, "addsub") == 7, 60, "version 2 to serve")
        await eventually(lambda: served_offset(c, "addsub", "1") is None, 60, "version 1 to be retired")
        # A second model, and then the first deleted from the store: unloaded, its files gone.
        client.put_object(Bucket=bucket, Key=PREFIX + "other.onnx", Body=add_sub_bytes(tmp_path, 3))
        await eventually(lambda: served_offset(c, "other") == 3, 60, "a second model to serve")
        for key in ("addsub/1/model.onnx", "addsub/2/model.onnx"):
            client.delete_object(Bucket=bucket, Key=PREFIX + key)
        await eventually(lambda: served_offset(c, "addsub") is None, 60, "the deleted model to unload")
        assert served_offset(c, "other") == 3
        assert local_files(models) == [".inferd-source.json", "other.onnx"]
        metrics = d.http_get("/metrics").decode()
        assert "inferd_model_source_up 1.0" in metrics
        assert 'inferd_model_source_syncs_total{result="ok"}' in metrics
        assert "inferd_model_source_downloaded_objects_total 4.0" in metrics


async def test_a_config_file_source_serves_and_a_bad_one_is_refused_at_start(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key="m.onnx", Body=add_sub_bytes(tmp_path, 4))  # the whole bucket
    config = tmp_path / "inferd.toml"
    config.write_text(f'[models]\nsource = "s3://{bucket}"\nendpoint_url = "{s3.endpoint_url}"\n'
                      'region = "us-east-1"\nsettle_ms = 100\n')
    with DaemonProcess(tmp_path / "models", env=s3.env(), config=config) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "m") == 4
    config.write_text('[models]\nsource = "s3://bucket/../x"\nendpoint_url = "file:///etc"\n')
    done = subprocess.run([sys.executable, "-m", "inferd.daemon", "serve", "--config", str(config),
                           "--models", str(tmp_path / "models")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid configuration" in done.stderr and "models.endpoint_url" in done.stderr


async def test_a_daemon_stops_at_once_while_its_sync_hangs_on_the_store(s3, tmp_path):
    client, bucket = new_bucket(s3)
    client.put_object(Bucket=bucket, Key=PREFIX + "m.onnx", Body=add_sub_bytes(tmp_path, 1))
    env = daemon_env(s3, bucket, INFERD_MODELS_SOURCE_READ_TIMEOUT_S="300", INFERD_MODELS_POLL_INTERVAL_S="3600")
    with DaemonProcess(tmp_path / "models", env=env) as d, Client(socket=d.socket_path) as c:
        assert served_offset(c, "m") == 1
        s3.pause()
        try:
            d.proc.send_signal(signal.SIGHUP)  # a sync that will hang (300 s reads) until stopped
            assert d.wait_for("RELOADING=1", 60)
            assert served_offset(c, "m") == 1  # requests never wait on the store
            started = time.monotonic()
            assert d.terminate(timeout=60) == 0  # the stuck sync's thread does not hold the exit
            print(f"stopped {time.monotonic() - started:.2f} s after SIGTERM with a sync hanging")
        finally:
            s3.resume()
