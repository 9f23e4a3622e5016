"""Triton's custom metrics API (inferd.backends.triton.metrics) as a model calls it: Triton's
semantics and errors, inferd's bounds, and the file a worker writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from inferd.backends.triton.metrics import (
    MAX_FAMILIES,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    Metric,
    MetricFamily,
    TritonModelException,
)


def test_a_counter_counts_up_only():
    family = MetricFamily("unit_counter", "a counter", MetricFamily.COUNTER)
    metric = family.Metric(labels={"stage": "pre"})
    metric.increment(2)
    metric.increment(0.5)
    assert metric.value() == 2.5
    with pytest.raises(TritonModelException, match="can only be incremented monotonically by non-negative"):
        metric.increment(-1)
    with pytest.raises(TritonModelException, match="COUNTER does not support Set"):
        metric.set(1)
    with pytest.raises(TritonModelException, match="COUNTER does not support Observe"):
        metric.observe(1)
    assert metric.value() == 2.5


def test_a_gauge_goes_both_ways_and_takes_numpy_numbers():
    family = MetricFamily("unit_gauge", "a gauge", MetricFamily.GAUGE)
    metric = family.Metric()
    metric.set(np.int64(3))
    metric.increment(np.float32(-0.5))
    assert metric.value() == 2.5
    with pytest.raises(TypeError):
        metric.set("3")


def test_a_histogram_needs_buckets_and_has_no_value():
    family = MetricFamily("unit_histogram", "a histogram", MetricFamily.HISTOGRAM)
    with pytest.raises(TritonModelException, match="Missing required buckets"):
        family.Metric()
    with pytest.raises(TritonModelException, match="Buckets must be a list"):
        family.Metric(buckets=(1.0, 2.0))
    with pytest.raises(TritonModelException, match="strictly sorted"):
        family.Metric(buckets=[2.0, 1.0])
    metric = family.Metric(buckets=[1.0, 2.0])
    metric.observe(1.5)
    with pytest.raises(TritonModelException, match="HISTOGRAM does not support Value"):
        metric.value()
    with pytest.raises(TritonModelException, match="HISTOGRAM does not support Increment"):
        metric.increment(1)
    with pytest.raises(TritonModelException, match="Unexpected buckets found"):
        MetricFamily("unit_gauge_b", "", MetricFamily.GAUGE).Metric(buckets=[1.0])


def test_one_name_is_one_family_of_one_kind_and_one_label_set_one_value():
    first = MetricFamily("unit_shared", "first", MetricFamily.COUNTER)
    second = MetricFamily("unit_shared", "second", MetricFamily.COUNTER)
    a, b = first.Metric(labels={"k": "v"}), second.Metric(labels={"k": "v"})
    a.increment(1)
    b.increment(2)
    assert a.value() == b.value() == 3
    assert first.Metric(labels={"k": "other"}).value() == 0
    with pytest.raises(TritonModelException, match="Family name already exists with different type"):
        MetricFamily("unit_shared", "", MetricFamily.GAUGE)


def test_a_deleted_family_takes_its_metrics_with_it():
    family = MetricFamily("unit_deleted", "", MetricFamily.GAUGE)
    metric = family.Metric()
    metric.set(1)
    del family
    with pytest.raises(TritonModelException, match="corresponding 'MetricFamily' has been deleted"):
        metric.set(2)
    again = MetricFamily("unit_deleted", "", MetricFamily.COUNTER)  # the name is free again, for any kind
    assert again.Metric().value() == 0


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: MetricFamily("bad-name", "", MetricFamily.COUNTER), TritonModelException, "Invalid metric name"),
    (lambda: MetricFamily("9lives", "", MetricFamily.COUNTER), TritonModelException, "Invalid metric name"),
    (lambda: MetricFamily("inferd_requests", "", MetricFamily.COUNTER), TritonModelException, "the daemon's"),
    (lambda: MetricFamily("unit_kind", "", "COUNTER"), TypeError, "kind must be"),
    (lambda: MetricFamily(None, "", MetricFamily.COUNTER), TypeError, "must be strings"),
    (lambda: MetricFamily("unit_long", "x" * 5000, MetricFamily.COUNTER), TritonModelException, "description"),
])
def test_bad_families_are_refused_as_triton_does(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(("labels", "match"), [
    (["a", "b"], "Labels must be a dictionary"),
    ({"a-b": "v"}, "Invalid label name"),
    ({"__x": "v"}, "Invalid label name"),
    ({"a": 1}, "values must be strings"),
    ({"a": "v" * (MAX_LABEL_VALUE_CHARS + 1)}, f"at most {MAX_LABEL_VALUE_CHARS} characters"),
    ({f"l{i}": "v" for i in range(MAX_LABELS + 1)}, f"at most {MAX_LABELS} labels"),
])
def test_bad_labels_are_refused(labels, match):
    family = MetricFamily("unit_labels", "", MetricFamily.COUNTER)
    with pytest.raises(TritonModelException, match=match):
        family.Metric(labels=labels)


def test_le_is_a_histograms_own_label():
    with pytest.raises(TritonModelException, match="Invalid label name 'le'"):
        MetricFamily("unit_le", "", MetricFamily.HISTOGRAM).Metric(labels={"le": "1"}, buckets=[1.0])
    family = MetricFamily("unit_le_gauge", "", MetricFamily.GAUGE)
    assert isinstance(family.Metric(labels={"le": "1"}), Metric)


def test_families_are_bounded_and_freed():
    held = []
    with pytest.raises(TritonModelException, match=f"at most {MAX_FAMILIES} metric families"):
        for i in range(MAX_FAMILIES + 1):
            held.append(MetricFamily(f"unit_many_{i}", "", MetricFamily.GAUGE))
    held.clear()
    assert MetricFamily("unit_after_many", "", MetricFamily.GAUGE).Metric().value() == 0


WORKER = '''
import json, os, sys
from inferd.backends.triton import metrics

metrics.configure(sys.argv[1], "m", "1")
counter = metrics.MetricFamily("requests", "Requests", metrics.MetricFamily.COUNTER)
c = counter.Metric(labels={"kind": "a"})
histogram = metrics.MetricFamily("sizes", "Sizes", metrics.MetricFamily.HISTOGRAM)
h = histogram.Metric(buckets=[1.0, 10.0])
c.increment(2)
h.observe(0.5)
h.observe(50)
metrics.batch_done()
with open(os.path.join(sys.argv[1], f"{os.getpid()}.json")) as f:
    print(f.read())
c.increment(3)  # written at exit
'''


def test_a_process_writes_its_families_after_a_batch_and_at_exit(tmp_path):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WORKER), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    after_batch = json.loads(done.stdout)
    assert after_batch["model"] == "m" and after_batch["start"] > 0
    assert after_batch["families"] == [
        {"name": "requests", "description": "Requests", "kind": "counter",
         "metrics": [{"labels": {"kind": "a"}, "value": 2.0}]},
        {"name": "sizes", "description": "Sizes", "kind": "histogram",
         "metrics": [{"labels": {}, "buckets": [1.0, 10.0], "counts": [1, 0, 1], "sum": 50.5}]},
    ]
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{after_batch['pid']}.json"]  # (no temporary file left)
    at_exit = json.loads(files[0].read_text())
    assert at_exit["families"][0]["metrics"][0]["value"] == 5.0
