"""`inferd models`: a Triton model's platform in its own column, and its notes below it."""

from inferd.daemon.cli import format_models


def test_the_listing_has_no_platform_column_without_a_triton_model():
    text = format_models([{"name": "a", "version": "1", "state": "READY"},
                          {"name": "b", "version": "", "state": "UNAVAILABLE", "reason": "unloaded on request"}])
    assert text.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    assert text.splitlines()[2].split() == ["b", "-", "UNAVAILABLE", "unloaded", "on", "request"]


def test_a_triton_models_platform_reason_and_notes_are_shown():
    lines = format_models([
        {"name": "seq", "version": "1", "state": "READY", "platform": "onnxruntime_onnx", "notes": ["no queue delay", "x"]},
        {"name": "trt", "version": "1", "state": "FAILED", "platform": "tensorrt_plan", "reason": "not supported by inferd"},
        {"name": "own", "version": "1", "state": "READY"},
    ]).splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "PLATFORM", "REASON"]
    assert lines[1].split() == ["seq", "1", "READY", "onnxruntime_onnx"]
    assert lines[2:4] == ["    note: no queue delay", "    note: x"]
    assert lines[4].split()[:4] == ["trt", "1", "FAILED", "tensorrt_plan"] and lines[4].endswith("not supported by inferd")
    assert lines[5].split() == ["own", "1", "READY", "-"]
