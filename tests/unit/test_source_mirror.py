"""The model source's local side (daemon/models/source_mirror.py): which keys may become files,
the manifest, what a listing changes, the checks on a download, leftovers and deletions."""

from __future__ import annotations

import hashlib
import json

import pytest

from inferd.daemon.models import source_mirror as m
from inferd.daemon.models.source_mirror import Entry

P = "models/"


@pytest.mark.parametrize(("key", "rel"), [
    ("models/a.onnx", "a.onnx"),
    ("models/addsub/1/model.onnx", "addsub/1/model.onnx"),
    ("models/a b/ü.onnx", "a b/ü.onnx"),
    ("models/x..y.onnx", "x..y.onnx"),  # dots inside a name are no '..'
])
def test_a_plain_key_maps_to_its_path_below_the_prefix(key, rel):
    assert m.local_path(key, P) == (rel, "")


@pytest.mark.parametrize(("key", "why"), [
    ("models/../evil.onnx", "'..'"),
    ("models/a/../../evil.onnx", "'..'"),
    ("models/./a.onnx", "'.'"),
    ("models//etc/passwd", "empty"),
    ("models/.hidden.onnx", "hidden"),
    ("models/a/.inferd-source.json", "hidden"),
    ("models/.inferd-sync-0123", "hidden"),
    ("models/a\\..\\b.onnx", "backslash"),
    ("models/a\x01.onnx", "control"),
    ("models/a\n.onnx", "control"),
    ("models/" + "x" * 256, "longer than 255"),
    ("models/" + "/".join("d" * 200 for _ in range(6)), "longer than 1024"),
    ("models/" + "/".join("d" for _ in range(9)), "levels deep"),
])
def test_hostile_keys_are_refused_with_the_reason(key, why):
    rel, reason = m.local_path(key, P)
    assert rel is None and why in reason


def test_folder_markers_are_skipped_silently():
    assert m.local_path("models/addsub/", P) == (None, "")


def test_the_whole_bucket_as_source_refuses_absolute_keys():
    assert m.local_path("/etc/passwd", "")[0] is None
    assert m.local_path("a/b.onnx", "") == ("a/b.onnx", "")


def test_the_manifest_round_trips_and_a_damaged_one_is_empty(tmp_path):
    files = {"a.onnx": Entry('"e1"', 10, "2026-01-01T00:00:00+00:00"), "b/1/model.onnx": Entry('"e2-2"', 20)}
    m.write_manifest(tmp_path, "s3://b/p", files)
    assert m.read_manifest(tmp_path) == files
    assert json.loads((tmp_path / m.MANIFEST).read_text())["source"] == "s3://b/p"
    assert [p.name for p in tmp_path.iterdir()] == [m.MANIFEST]  # its temporary name is gone
    for damaged in ("{", "[]", '{"files": {"a": {"size": 1}}}', '{"files": 3}'):
        (tmp_path / m.MANIFEST).write_text(damaged)
        assert m.read_manifest(tmp_path) == {}
    (tmp_path / m.MANIFEST).write_text(json.dumps({"files": {"../x": {"etag": "e", "size": 1}}}))
    assert m.read_manifest(tmp_path) == {}  # a path no key could give is never trusted (nor deleted)
    (tmp_path / m.MANIFEST).unlink()
    assert m.read_manifest(tmp_path) == {}


def test_the_plan_downloads_new_changed_and_damaged_files_and_deletes_only_manifest_ones(tmp_path):
    (tmp_path / "same.onnx").write_bytes(b"12345")
    (tmp_path / "resized.onnx").write_bytes(b"1")  # changed locally: downloaded again
    (tmp_path / "gone.onnx").write_bytes(b"1")
    (tmp_path / "operators.onnx").write_bytes(b"1")  # not the sync's: never deleted
    manifest = {"same.onnx": Entry("e", 5), "resized.onnx": Entry("e", 5), "changed.onnx": Entry("old", 5),
                "gone.onnx": Entry("e", 1), "missing.onnx": Entry("e", 5)}
    listing = {"same.onnx": Entry("e", 5), "resized.onnx": Entry("e", 5), "changed.onnx": Entry("new", 5),
               "missing.onnx": Entry("e", 5), "new.onnx": Entry("e", 3)}
    plan = m.plan(listing, manifest, tmp_path)
    assert sorted(plan.download) == ["changed.onnx", "missing.onnx", "new.onnx", "resized.onnx"]
    assert plan.delete == ["gone.onnx"]


def test_a_download_is_checked_for_size_etag_and_md5(tmp_path):
    data = b"model bytes"
    md5 = hashlib.md5(data).hexdigest()
    path = tmp_path / "f"
    path.write_bytes(data)
    listed = Entry(f'"{md5}"', len(data))
    assert m.check_download(path, listed, listed.etag, md5) == ""
    assert "bytes" in m.check_download(path, Entry(listed.etag, len(data) + 1), listed.etag, md5)
    assert "changed" in m.check_download(path, listed, '"other"', md5)
    assert "MD5" in m.check_download(path, listed, listed.etag, hashlib.md5(b"x").hexdigest())
    assert m.check_download(path, listed, listed.etag, "") == ""  # SSE-KMS: the ETag is no MD5
    multipart = Entry('"0123456789abcdef0123456789abcdef-3"', len(data))  # no MD5 to compare with
    assert m.check_download(path, multipart, multipart.etag, "whatever") == ""


def test_leftovers_of_a_killed_sync_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "a" / "1").mkdir(parents=True)
    keep = [tmp_path / "a" / "1" / "model.onnx", tmp_path / ".hidden-dir-file", tmp_path / m.MANIFEST]
    for p in keep:
        p.write_bytes(b"x")
    temps = [tmp_path / f"{m.TEMP_PREFIX}1", tmp_path / "a" / "1" / f"{m.TEMP_PREFIX}2"]
    for p in temps:
        p.write_bytes(b"x")
    assert sorted(m.remove_leftovers(tmp_path)) == sorted(str(p) for p in temps)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in temps)
    assert m.remove_leftovers(tmp_path / "absent") == []


def test_deleting_a_file_removes_the_directories_it_left_empty(tmp_path):
    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "a" / "1" / "model.onnx").write_bytes(b"x")
    (tmp_path / "b" / "1").mkdir(parents=True)
    (tmp_path / "b" / "1" / "model.onnx").write_bytes(b"x")
    (tmp_path / "b" / "config.toml").write_bytes(b"x")  # keeps b/
    m.delete_file(tmp_path, "a/1/model.onnx")
    m.delete_file(tmp_path, "b/1/model.onnx")
    m.delete_file(tmp_path, "never/there.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.toml"]


def test_a_models_configuration_is_downloaded_before_its_versions(tmp_path):
    listing = {rel: Entry("e", 1) for rel in ("m/1/model.onnx", "m/config.toml", "a.onnx", "m/2/model.onnx", "b/x/y/z")}
    assert list(m.plan(listing, {}, tmp_path).download) == [
        "a.onnx", "b/x/y/z", "m/config.toml", "m/1/model.onnx", "m/2/model.onnx"]
