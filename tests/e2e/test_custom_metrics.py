"""Python models' own metrics (Triton's MetricFamily API) on the daemon's /metrics: a real daemon,
real workers, scraped with aiohttp and read with prometheus_client's parser."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import aiohttp
import pytest
from daemon_process import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families

from inferd.backends.triton.metrics import MAX_METRICS_PER_FAMILY, process_start

COUNTED = '''
import numpy as np
from inferd.backends.triton.metrics import MetricFamily


class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def load(self, model_dir, config):
        self.families = [
            MetricFamily("seen_requests", "Requests the model saw", MetricFamily.COUNTER),
            MetricFamily("last_elements", "Elements in the last request", MetricFamily.GAUGE),
            MetricFamily("element_values", "Values the model saw", MetricFamily.HISTOGRAM),
        ]
        self.requests = self.families[0].Metric(labels={"kind": "infer"})
        self.last = self.families[1].Metric()
        # A model's own model/version labels give way to the daemon's.
        self.values = self.families[2].Metric(labels={"model": "forged"}, buckets=[1.0, 10.0])

    def infer(self, inputs):
        x = inputs["x"]
        if x.any():  # (the daemon's warm-up and memory probes run on zeros: not counted)
            self.requests.increment(1)
            self.last.set(x.size)
            for v in x.tolist():
                self.values.observe(v)
        return {"y": x * 2}
'''

# Each call creates one metric more than a family may have, or a family with a bad name.
HOSTILE = '''
import numpy as np
from inferd.backends.triton.metrics import MAX_METRICS_PER_FAMILY, MetricFamily


class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def infer(self, inputs):
        x = inputs["x"]
        if x.any() and x[0] == 1:
            self.family = MetricFamily("many", "too many", MetricFamily.GAUGE)
            self.metrics = [self.family.Metric(labels={"i": str(i)}) for i in range(MAX_METRICS_PER_FAMILY + 1)]
        if x.any() and x[0] == 2:
            MetricFamily("bad-name", "", MetricFamily.COUNTER)
        if x.any() and x[0] == 3:
            MetricFamily("inferd_requests", "", MetricFamily.COUNTER)
        return {"y": x}
'''


def _models(root: Path) -> Path:
    for name, code in (("counted", COUNTED), ("hostile", HOSTILE)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return root


@pytest.fixture
def served(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with DaemonProcess(_models(tmp_path / "models"), env={"XDG_RUNTIME_DIR": str(run)}) as d:
        yield d, run


async def _infer(s: aiohttp.ClientSession, model: str, values: list[float]) -> aiohttp.ClientResponse:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values)], "data": values}]}
    async with s.post(f"/v2/models/{model}/infer", json=body) as r:
        await r.read()
        return r


async def _scrape(s: aiohttp.ClientSession) -> dict:
    """{family name: (type, documentation, {(sample name, labels): value})}"""
    async with s.get("/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {f.name: (f.type, f.documentation, {(x.name, tuple(sorted(x.labels.items()))): x.value for x in f.samples})
            for f in text_string_to_metric_families(text)}


def _directory_of(model: str, run: Path) -> Path:
    """The directory the daemon gave `model`'s workers (which its worker's file names)."""
    return next(f.parent for f in run.glob("inferd-metrics-*/*/*.json") if json.loads(f.read_text())["model"] == model)


def _mv(**more) -> tuple:
    return tuple(sorted({"model": "counted", "version": "1", **more}.items()))


async def test_counter_gauge_and_histogram_reach_metrics_with_model_and_version(served):
    d, _ = served
    async with aiohttp.ClientSession(d.url) as s:
        for values in ([0.5, 5.0], [20.0], [3.0, 4.0, 0.25]):
            assert (await _infer(s, "counted", values)).status == 200
        families = await _scrape(s)
    kind, doc, samples = families["seen_requests"]
    assert (kind, doc) == ("counter", "Requests the model saw")
    assert samples == {("seen_requests_total", _mv(kind="infer")): 3.0}
    assert families["last_elements"][0] == "gauge"
    assert families["last_elements"][2] == {("last_elements", _mv()): 3.0}
    kind, _, samples = families["element_values"]
    assert kind == "histogram"
    assert samples == {
        ("element_values_bucket", _mv(le="1.0")): 2.0, ("element_values_bucket", _mv(le="10.0")): 5.0,
        ("element_values_bucket", _mv(le="+Inf")): 6.0, ("element_values_count", _mv()): 6.0,
        ("element_values_sum", _mv()): 32.75,
    }


async def test_triton_style_text_a_counter_keeps_its_name(served):
    d, _ = served
    async with aiohttp.ClientSession(d.url) as s:
        assert (await _infer(s, "counted", [1.0])).status == 200
        async with s.get("/metrics") as r:
            text = await r.text()
    # What Triton's custom_metrics example looks for (its family has only the model and version labels).
    assert "# HELP seen_requests Requests the model saw\n# TYPE seen_requests counter\n" in text
    assert 'seen_requests{model="counted",version="1",kind="infer"} 1.0\n' in text
    assert 'last_elements{model="counted",version="1"} 1.0\n' in text


async def test_an_unloaded_models_families_go(served):
    d, run = served
    async with aiohttp.ClientSession(d.url) as s:
        assert (await _infer(s, "counted", [1.0])).status == 200
        assert "seen_requests" in await _scrape(s)
        async with s.post("/v2/repository/models/counted/unload") as r:
            assert r.status == 200
        families = await _scrape(s)
    assert not {"seen_requests", "last_elements", "element_values"} & families.keys()
    assert "inferd_requests" in families  # the daemon's own are still there
    assert len(list(run.glob("inferd-metrics-*/*"))) == 1  # the directory of "hostile" only


async def test_a_model_past_the_bounds_or_with_bad_names_fails_its_call_and_the_daemon_serves_on(served):
    d, _ = served
    async with aiohttp.ClientSession(d.url) as s:
        for first, expected in ((1.0, f"at most {MAX_METRICS_PER_FAMILY} metrics"), (2.0, "Invalid metric name"),
                                (3.0, "names beginning inferd_ are the daemon's")):
            async with s.post("/v2/models/hostile/infer", json={
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [first]}]}) as r:
                assert r.status == 500
                assert expected in (await r.json())["error"]
        assert (await _infer(s, "counted", [1.0])).status == 200
        families = await _scrape(s)
    assert families["seen_requests"][2] == {("seen_requests_total", _mv(kind="infer")): 1.0}
    assert len(families["many"][2]) == MAX_METRICS_PER_FAMILY  # (the model kept its family: those it could make)


async def test_garbage_and_hostile_files_in_the_directory_are_ignored_or_cleaned(served):
    d, run = served
    async with aiohttp.ClientSession(d.url) as s:
        assert (await _infer(s, "counted", [1.0])).status == 200  # (its directory has a file now)
        directory = _directory_of("counted", run)
        (directory / f"{os.getppid()}.json").write_bytes(b"\x00garbage{")  # a running process's pid
        (directory / "123.txt").write_text("not a metrics file's name")
        hostile = {"start": process_start(os.getpid()), "families": [
            {"name": "inferd_requests", "description": "", "kind": "counter", "metrics": [{"labels": {}, "value": 9}]},
            {"name": "bad name!", "description": "x", "kind": "gauge",
             "metrics": [{"labels": {"a-b": "v", "model": "other"}, "value": 7}]},
        ]}
        (directory / f"{os.getpid()}.json").write_text(json.dumps(hostile))
        first = await _scrape(s)
        second = await _scrape(s)
    assert first["seen_requests"][2] == {("seen_requests_total", _mv(kind="infer")): 1.0}
    assert first["bad_name_"][2] == {("bad_name_", _mv(a_b="v")): 7.0}  # named validly, under its directory's model
    assert ("inferd_requests_total", tuple(sorted({"model": "counted", "version": "1"}.items()))) not in \
        first["inferd_requests"][2]
    assert second == first
    ignored = [e for e in d.events("custom metrics file ignored") if e.get("file") == f"{os.getppid()}.json"]
    assert len(ignored) == 1 and ignored[0]["reason"] == "not JSON"
    refused = d.events("custom metric family left out")
    assert [e["family"] for e in refused] == ["inferd_requests"]


async def test_a_gone_workers_counters_stay_and_its_file_goes(served):
    d, run = served
    async with aiohttp.ClientSession(d.url) as s:
        assert (await _infer(s, "counted", [2.0, 2.0])).status == 200
        directory = _directory_of("counted", run)
        gone = {"start": 1, "families": [  # a start no running process has
            {"name": "seen_requests", "description": "", "kind": "counter",
             "metrics": [{"labels": {"kind": "infer"}, "value": 10}]},
            {"name": "last_elements", "description": "", "kind": "gauge", "metrics": [{"labels": {}, "value": 99}]},
        ]}
        (directory / "999999999.json").write_text(json.dumps(gone))
        families = await _scrape(s)
        assert not (directory / "999999999.json").exists()
        again = await _scrape(s)
    assert families["seen_requests"][2] == {("seen_requests_total", _mv(kind="infer")): 11.0}
    assert families["last_elements"][2] == {("last_elements", _mv()): 2.0}
    assert again["seen_requests"] == families["seen_requests"]



async def test_the_daemons_directory_goes_when_it_stops(served):
    d, run = served
    async with aiohttp.ClientSession(d.url) as s:
        assert (await _infer(s, "counted", [1.0])).status == 200
    assert list(run.glob("inferd-metrics-*/*/*.json"))
    assert d.terminate() == 0
    assert list(run.iterdir()) == []
