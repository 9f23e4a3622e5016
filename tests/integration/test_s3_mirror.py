"""One sync (daemon/models/s3_sync.py) against moto's S3 server, without a daemon: multipart
objects, the disk's free space, the object-count bound, what is deleted and what is kept, file
and directory names that clash, and the store's refusals as states."""

from __future__ import annotations

import pytest
from s3_models import local_files
from s3_server import S3Server

from inferd.daemon.models import source_mirror
from inferd.daemon.models.s3_sync import S3Mirror, SourceDown


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, request):
    client = s3.client()
    name = "mirror-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    client.create_bucket(Bucket=name)
    return client, name


def mirror(s3, bucket: str, root, **kw) -> S3Mirror:
    return S3Mirror(f"s3://{bucket}/p", root, s3.endpoint_url, "us-east-1", 1, 5, **kw)


@pytest.fixture(autouse=True)
def aws_env(s3, monkeypatch):
    for key, value in s3.env().items():  # the standard chain, as the daemon gets it
        monkeypatch.setenv(key, value)


def test_a_multipart_object_is_downloaded_and_checked_by_size_and_etag(s3, bucket, tmp_path):
    client, name = bucket
    parts = [b"a" * (5 << 20), b"b" * 1000]
    upload = client.create_multipart_upload(Bucket=name, Key="p/big/1/model.bin")
    etags = [client.upload_part(Bucket=name, Key="p/big/1/model.bin", UploadId=upload["UploadId"],
                                PartNumber=i + 1, Body=part)["ETag"] for i, part in enumerate(parts)]
    client.complete_multipart_upload(Bucket=name, Key="p/big/1/model.bin", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    report = mirror(s3, name, tmp_path).sync()
    assert report.downloaded == [("big/1/model.bin", len(parts[0]) + len(parts[1]))] and report.failed == []
    assert (tmp_path / "big/1/model.bin").read_bytes() == b"".join(parts)
    assert source_mirror.read_manifest(tmp_path)["big/1/model.bin"].etag.endswith('-2"')
    assert mirror(s3, name, tmp_path).sync().downloaded == []  # unchanged: not downloaded again


def test_an_object_that_would_fill_the_disk_is_skipped(s3, bucket, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="p/m.onnx", Body=b"x" * 100)
    report = mirror(s3, name, tmp_path, min_free_bytes=1 << 60).sync()
    assert report.downloaded == [] and "do not fit" in report.failed[0][1]
    assert local_files(tmp_path) == []


def test_more_objects_than_the_bound_refuses_the_whole_sync(s3, bucket, tmp_path):
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"p/m{i}.onnx", Body=b"x")
    with pytest.raises(SourceDown) as e:
        mirror(s3, name, tmp_path, max_objects=2).sync()
    assert e.value.result == "error" and "more than 2 objects" in e.value.reason
    assert local_files(tmp_path) == []
    assert len(mirror(s3, name, tmp_path, max_objects=3).sync().downloaded) == 3


def test_only_files_the_sync_wrote_are_deleted_and_clashing_names_fail_alone(s3, bucket, tmp_path):
    client, name = bucket
    for key in ("p/a.onnx", "p/b/1/model.onnx", "p/clash", "p/clash/x.onnx"):
        client.put_object(Bucket=name, Key=key, Body=b"x")
    (tmp_path / "operators.onnx").write_bytes(b"mine")
    first = mirror(s3, name, tmp_path).sync()
    assert len(first.downloaded) == 3 and len(first.failed) == 1  # "clash" as a file and a directory: one fails
    client.delete_object(Bucket=name, Key="p/b/1/model.onnx")
    client.delete_object(Bucket=name, Key="p/a.onnx")
    second = mirror(s3, name, tmp_path).sync()
    assert sorted(second.deleted) == ["a.onnx", "b/1/model.onnx"]
    assert "operators.onnx" in local_files(tmp_path) and not (tmp_path / "b").exists()
    assert not any(source_mirror.TEMP_PREFIX in f for f in local_files(tmp_path))


def test_the_store_refusing_or_absent_is_a_state_and_nothing_changes(s3, bucket, tmp_path, monkeypatch):
    client, name = bucket
    client.put_object(Bucket=name, Key="p/a.onnx", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(SourceDown) as e:
        mirror(s3, name, tmp_path).sync()
    assert e.value.result == "denied" and "SignatureDoesNotMatch" in e.value.reason
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    with pytest.raises(SourceDown) as e:
        mirror(s3, "no-such-bucket-here", tmp_path).sync()
    assert e.value.result == "error" and "no such bucket" in e.value.reason
    with pytest.raises(SourceDown) as e:
        S3Mirror(f"s3://{name}/p", tmp_path, "http://127.0.0.1:9", "us-east-1", 1, 1).sync()  # nothing listens
    assert e.value.result == "unreachable"
    assert local_files(tmp_path) == []
