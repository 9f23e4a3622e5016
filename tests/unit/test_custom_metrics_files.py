"""The daemon's side of models' custom metrics (inferd.daemon.operations.custom_metrics): files
written as workers write them, merged per version and across models, none of them trusted."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.backends.triton.metrics import MAX_FILE_BYTES, process_start
from inferd.daemon.operations.custom_metrics import CustomMetrics

# Two running processes, as two workers of a version: this one and its parent.
LIVE = [os.getpid(), os.getppid()]


def _write(directory: str, pid: int, families: list[dict], start: int | None = None) -> Path:
    path = Path(directory) / f"{pid}.json"
    path.write_text(json.dumps({"start": process_start(pid) if start is None else start, "families": families}))
    return path


def _counter(name: str, value: float, labels: dict | None = None, kind: str = "counter") -> dict:
    return {"name": name, "description": f"{name} help", "kind": kind,
            "metrics": [{"labels": labels or {}, "value": value}]}


def _histogram(name: str, buckets: list[float], counts: list[float], total: float) -> dict:
    return {"name": name, "description": "", "kind": "histogram",
            "metrics": [{"labels": {}, "buckets": buckets, "counts": counts, "sum": total}]}


def _samples(custom: CustomMetrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(custom.exposition().decode()) for s in f.samples}


def _mv(model: str = "m", **more) -> tuple:
    return tuple(sorted({"model": model, "version": "1", **more}.items()))


@pytest.fixture
def custom(tmp_path):
    c = CustomMetrics(base=str(tmp_path))
    yield c
    c.close()


def test_a_versions_directory_is_private_and_its_own(custom, tmp_path):
    a, b = custom.directory_for("m", "1"), custom.directory_for("n", "1")
    assert a != b and custom.directory_for("m", "1") == a
    for d in (a, b, os.path.dirname(a)):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    custom.close()
    assert list(tmp_path.iterdir()) == []


def test_a_killed_daemons_directory_is_removed_by_the_next(custom, tmp_path):
    gone, running = tmp_path / "inferd-metrics-999999999-abcd", tmp_path / f"inferd-metrics-{os.getppid()}-abcd"
    for d in (gone, running):
        (d / "1").mkdir(parents=True)
    custom.directory_for("m", "1")
    assert not gone.exists() and running.exists()


def test_workers_of_a_version_are_summed_with_its_model_and_version(custom):
    d = custom.directory_for("m", "1")
    _write(d, LIVE[0], [_counter("c", 1, {"k": "v"}), _counter("g", 2, kind="gauge"),
                        _histogram("h", [1.0], [1, 0], 0.5)])
    _write(d, LIVE[1], [_counter("c", 2, {"k": "v", "model": "forged"}), _counter("g", 3, kind="gauge"),
                        _histogram("h", [1.0], [0, 2], 9.0)])
    assert _samples(custom) == {
        ("c_total", _mv(k="v")): 3.0, ("g", _mv()): 5.0,
        ("h_bucket", _mv(le="1.0")): 1.0, ("h_bucket", _mv(le="+Inf")): 3.0, ("h_count", _mv()): 3.0,
        ("h_sum", _mv()): 9.5,
    }


def test_a_gone_workers_counters_stay_its_gauges_and_file_go(custom):
    d = custom.directory_for("m", "1")
    gone = _write(d, 999_999_999, [_counter("c", 5), _counter("g", 7, kind="gauge")], start=1)
    _write(d, LIVE[0], [_counter("c", 1)])
    assert _samples(custom) == {("c_total", _mv()): 6.0}
    assert not gone.exists()
    assert _samples(custom) == {("c_total", _mv()): 6.0}  # counted once
    custom.forget("m", "1")
    assert _samples(custom) == {} and not os.path.exists(d)


def test_families_of_several_models_share_one_type_line_the_first_kind_wins(custom):
    _write(custom.directory_for("a", "1"), LIVE[0], [_counter("x", 1)])
    _write(custom.directory_for("b", "1"), LIVE[0], [_counter("x", 2, kind="gauge"), _counter("y", 3)])
    text = custom.exposition().decode()
    assert text.count("# TYPE x counter") == 1 and "# TYPE x gauge" not in text
    assert _samples(custom) == {("x_total", _mv("a")): 1.0, ("y_total", _mv("b")): 3.0}


def test_names_are_made_valid_and_the_daemons_are_refused(custom):
    d = custom.directory_for("m", "1")
    _write(d, LIVE[0], [_counter("inferd_requests", 1), _counter("9 bad-name", 2, {"a-b": "x\n\"y\""}),
                        _histogram("h", [1.0], [1, 1], 1.0), _counter("h_count", 4, kind="gauge")])
    assert _samples(custom) == {
        ("_9_bad_name_total", _mv(a_b='x\n"y"')): 2.0,
        ("h_bucket", _mv(le="1.0")): 1.0, ("h_bucket", _mv(le="+Inf")): 2.0, ("h_count", _mv()): 2.0,
        ("h_sum", _mv()): 1.0,
    }


@pytest.mark.parametrize("content", [
    b"\x00not json",
    b"[]",
    json.dumps({"start": 1, "families": [{"name": "c", "kind": "summary", "metrics": []}]}).encode(),
    json.dumps({"start": 1, "families": [_counter("c", -1)]}).encode(),
    json.dumps({"start": 1, "families": [_histogram("h", [2.0, 1.0], [0, 0, 0], 0)]}).encode(),
    json.dumps({"start": 1, "families": [_histogram("h", [1.0], [0], 0)]}).encode(),
    json.dumps({"start": 1, "families": [_counter("c", 1, {"k": 5})]}).encode(),
    b"{" + b" " * MAX_FILE_BYTES + b"}",
])
def test_a_malformed_file_is_ignored_and_the_rest_served(custom, content):
    d = custom.directory_for("m", "1")
    (Path(d) / f"{LIVE[1]}.json").write_bytes(content)
    _write(d, LIVE[0], [_counter("c", 1)])
    assert _samples(custom) == {("c_total", _mv()): 1.0}


def test_what_is_not_a_workers_file_is_not_read(custom):
    d = custom.directory_for("m", "1")
    (Path(d) / "notes.json").write_text(json.dumps({"start": 0, "families": [_counter("c", 1)]}))
    os.symlink("/etc/passwd", Path(d) / f"{LIVE[1]}.json")
    os.mkfifo(Path(d) / "12345.json")  # (a read would block: not opened as a file)
    assert _samples(custom) == {}
