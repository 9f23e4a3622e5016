"""Models from object storage, end to end: moto's S3 server (real HTTP, credential checks), the
real daemon mirroring a prefix into its models directory, real workers answering."""

from __future__ import annotations

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
