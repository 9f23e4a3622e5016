"""The models directory as snapshots: scan (layouts, policies, incomplete files), settled, diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.common.errors import ConfigError
from inferd.config.model import ModelSettings, VersionPolicy, load_model_config
from inferd.daemon.models.scan import Found, diff, scan, settled


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _found(name: str, version: str = "1", stamp=(1, 1, 1), config_stamp=()) -> Found:
    config = Path(f"/m/{name}/config.toml") if config_stamp else None
    return Found(name, version, Path(f"/m/{name}/{version}/model.onnx"), config, file_stamp=stamp, config_stamp=config_stamp)


def _kinds(changes) -> set[tuple[str, str, str]]:
    return {(c.kind, c.found.name, c.found.version) for c in changes}


# -- diff ----------------------------------------------------------------------------------------

def test_diff_sees_adds_and_removals():
    old = {("a", "1"): _found("a"), ("b", "1"): _found("b")}
    new = {("a", "1"): _found("a"), ("c", "1"): _found("c")}
    assert _kinds(diff(old, new)) == {("added", "c", "1"), ("removed", "b", "1")}


def test_diff_sees_a_new_version_and_a_rewritten_file():
    old = {("a", "1"): _found("a"), ("b", "1"): _found("b", stamp=(10, 5, 7))}
    new = {("a", "1"): _found("a"), ("a", "2"): _found("a", "2"), ("b", "1"): _found("b", stamp=(10, 6, 8))}
    assert _kinds(diff(old, new)) == {("added", "a", "2"), ("file changed", "b", "1")}


def test_diff_sees_a_config_only_change():
    old = {("a", "1"): _found("a", config_stamp=(3, 1, 9))}
    new = {("a", "1"): _found("a", config_stamp=(4, 2, 9))}
    assert _kinds(diff(old, new)) == {("config changed", "a", "1")}
    added_config = {("a", "1"): _found("a")}
    assert _kinds(diff(added_config, new)) == {("config changed", "a", "1")}


def test_diff_of_equal_snapshots_is_empty():
    snap = {("a", "1"): _found("a", config_stamp=(1, 1, 1)), ("b", "3"): _found("b", "3")}
    assert diff(snap, dict(snap)) == []
    assert diff({}, {}) == []


# -- scan ----------------------------------------------------------------------------------------

def test_scan_reads_both_layouts_and_skips_what_is_not_a_model(tmp_path):
    _touch(tmp_path / "flat.onnx")
    _touch(tmp_path / "full" / "1" / "model.onnx")
    _touch(tmp_path / "full" / "3" / "model.onnx")
    _touch(tmp_path / "full" / "config.toml", b"max_batch_size = 8\n")
    for name in (".hidden.onnx", "copying.onnx.part", "copying.onnx.tmp", "notes.md"):
        _touch(tmp_path / name)
    (tmp_path / "empty").mkdir()  # no versions yet: not a model
    _touch(tmp_path / "nofile" / "1" / "README")
    snap = scan(tmp_path)
    assert set(snap) == {("flat", "1"), ("full", "3")}  # the default policy: the newest version only
    assert snap[("full", "3")].config_path == tmp_path / "full" / "config.toml"
    assert snap[("flat", "1")].file_stamp[0] == 1  # size, mtime_ns, inode


def test_scan_reports_duplicates_and_ambiguous_versions(tmp_path):
    _touch(tmp_path / "dup.onnx")
    _touch(tmp_path / "dup" / "1" / "model.onnx")
    _touch(tmp_path / "two" / "1" / "model.onnx")
    _touch(tmp_path / "two" / "1" / "model.pt")
    snap = scan(tmp_path)
    assert "define model 'dup'" in snap[("dup", "1")].problem
    assert "exactly one model" in snap[("two", "1")].problem


@pytest.mark.parametrize("policy,expected", [
    ("", {"5"}),
    ("version_policy = { latest = 2 }", {"2", "5"}),
    ('version_policy = "all"', {"1", "2", "5"}),
    ("version_policy = { specific = [1, 5, 9] }", {"1", "5"}),
])
def test_scan_applies_the_version_policy(tmp_path, policy, expected):
    for v in ("1", "2", "5"):
        _touch(tmp_path / "m" / v / "model.onnx")
    _touch(tmp_path / "m" / "config.toml", policy.encode())
    assert {v for _, v in scan(tmp_path)} == expected


def test_a_broken_config_keeps_every_version_selected(tmp_path):
    for v in ("1", "2"):
        _touch(tmp_path / "m" / v / "model.onnx")
    _touch(tmp_path / "m" / "config.toml", b"max_batch_size = [")
    assert {v for _, v in scan(tmp_path)} == {"1", "2"}


def test_the_policy_picks_among_complete_versions_only(tmp_path):
    _touch(tmp_path / "m" / "1" / "model.onnx")
    copying = _touch(tmp_path / "m" / "2" / "model.onnx")
    snap = scan(tmp_path, complete=lambda p: p != copying)
    assert set(snap) == {("m", "1")}  # version 1 keeps serving while 2 is copied


def test_an_incomplete_config_holds_the_whole_model_back(tmp_path):
    _touch(tmp_path / "m" / "1" / "model.onnx")
    config = _touch(tmp_path / "m" / "config.toml", b"max_batch_size = 4\n")
    assert scan(tmp_path, complete=lambda p: p != config) == {}


def test_scan_of_a_missing_directory_is_empty(tmp_path):
    assert scan(tmp_path / "nope") == {}


def test_scan_only_one_model(tmp_path):
    _touch(tmp_path / "a.onnx")
    _touch(tmp_path / "b" / "1" / "model.onnx")
    assert set(scan(tmp_path, only="b")) == {("b", "1")}


# -- settled -------------------------------------------------------------------------------------

def test_settled_keeps_a_version_whose_file_is_being_rewritten(tmp_path):
    path = _touch(tmp_path / "m.onnx")
    previous = scan(tmp_path)
    _touch(path, b"half a new fi")
    current = scan(tmp_path, complete=lambda p: p != path)
    assert current == {}
    assert settled(previous, current, lambda p: p != path) == previous


def test_settled_keeps_a_just_deleted_version_until_it_settles(tmp_path):
    path = _touch(tmp_path / "m.onnx")
    previous = scan(tmp_path)
    path.unlink()
    assert settled(previous, scan(tmp_path), lambda p: p != path) == previous  # maybe a replace
    assert settled(previous, scan(tmp_path), lambda p: True) == {}  # gone for good


# -- version policy in config.toml ---------------------------------------------------------------

def test_version_policy_select():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(latest=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(all=True).select([3, 1]) == [1, 3]
    assert VersionPolicy(specific=(1, 7)).select([1, 2]) == [1]


@pytest.mark.parametrize("text", [
    "version_policy = { latest = 0 }",
    'version_policy = "newest"',
    "version_policy = { specific = [] }",
    "version_policy = { latest = 1, all = true }",
])
def test_bad_version_policies_are_refused_with_the_key(tmp_path, text):
    path = _touch(tmp_path / "config.toml", text.encode())
    with pytest.raises(ConfigError) as e:
        load_model_config(path, ModelSettings())
    assert e.value.key == "version_policy"


# -- trust and what callers see ------------------------------------------------------------------

def test_code_is_trusted_only_where_no_one_else_can_change_it(tmp_path):
    root = tmp_path / "models"
    _touch(root / "ok" / "1" / "model.py")
    _touch(root / "weights.pt", b"x").chmod(0o664)  # a pickle: as strict as code
    helper = _touch(root / "lib" / "1" / "helpers" / "util.py")  # imported beside model.py
    _touch(root / "lib" / "1" / "model.py")
    helper.chmod(0o646)
    _touch(root / "data.onnx").chmod(0o666)  # data, not code: not checked here
    found = scan(root)
    assert found[("ok", "1")].problem == ""
    assert found[("weights", "1")].problem.startswith("weights.pt is writable by its group")
    assert found[("lib", "1")].problem.startswith("lib/1/helpers/util.py is writable by other users")
    assert found[("data", "1")].problem == "" and not found[("data", "1")].untrusted
    # Through a symlinked models directory, the same (paths stay relative to it).
    link = tmp_path / "link"
    link.symlink_to(root)
    assert scan(link)[("weights", "1")].problem.startswith("weights.pt is writable by its group")


def test_redact_keeps_paths_relative_to_the_models_directory(tmp_path):
    from inferd.daemon.models.trust import redact

    root = tmp_path / "models"
    text = f"cannot open '{root}/m/1/model.py' (from /usr/lib/python3/x.py); see {root} and 3/4 of http://h/a/b"
    assert redact(text, root) == "cannot open 'm/1/model.py' (from x.py); see the models directory and 3/4 of http://h/a/b"
