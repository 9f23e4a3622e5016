"""The fleet's Prometheus files (packaging/fleet/prometheus.yml, inferd-rules.yml): they parse,
every metric the rules read is one a real daemon exports, and, where promtool is installed
(Debian's prometheus package; or PROMTOOL=/path/to/promtool), promtool accepts them and its
rule tests (inferd-rules.test.yml: two hosts aggregated into a fleet) pass."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import make_models
import pytest
import yaml
from daemon_process import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families

from inferd.config.settings import ModelsSection

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "packaging" / "fleet"
CONFIG, RULES = FLEET / "prometheus.yml", FLEET / "inferd-rules.yml"
RULE_TESTS = Path(__file__).with_name("inferd-rules.test.yml")
SOURCE_GROUP = "inferd-fleet-model-source"  # series only a daemon with [models] source has
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")


def _groups() -> dict[str, list[dict]]:
    return {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}


def _metrics_read(rules: list[dict]) -> set[str]:
    """The daemon's series the rules' expressions read (recorded names have colons: not these)."""
    return {name for rule in rules for name in re.findall(r"\binferd_[a-z0-9_]+\b", rule["expr"])}


def _exported(text: str) -> set[str]:
    """Every series name an exposition can carry, its families' empty ones included."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def test_scrape_config_names_each_host():
    config = yaml.safe_load(CONFIG.read_text())
    assert (CONFIG.parent / config["rule_files"][0]).exists()
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "inferd"]
    assert job["metrics_path"] == "/metrics"
    assert float(job["scrape_timeout"].rstrip("s")) < float(job["scrape_interval"].rstrip("s"))
    targets = [(t, group["labels"]["host"]) for group in job["static_configs"] for t in group["targets"]]
    assert len(targets) >= 2
    assert len({host for _, host in targets}) == len(targets)  # one `host` per machine


def test_every_rule_records_a_new_name_once():
    rules = [rule for group in _groups().values() for rule in group]
    names = [rule["record"] for rule in rules]
    assert len(names) == len(set(names))
    assert all(name.count(":") == 2 for name in names)  # level:metric:operations
    assert all(_metrics_read([rule]) or rule["expr"].startswith("sum by (job) (up{") for rule in rules)


def test_rules_read_only_metrics_a_daemon_exports(tmp_path):
    make_models.build_add_sub(tmp_path / "add_sub" / "1" / "model.onnx")
    with DaemonProcess(tmp_path) as daemon:
        exported = _exported(daemon.http_get("/metrics").decode())
    read = set().union(*(_metrics_read(rules) for name, rules in _groups().items() if name != SOURCE_GROUP))
    assert read - exported == set()


@pytest.mark.skipif("source" not in {f.name for f in dataclasses.fields(ModelsSection)},
                    reason="[models] source is not in this build")
def test_source_rules_read_only_metrics_a_daemon_with_a_source_exports(tmp_path):
    from s3_server import S3Server

    store = S3Server(tmp_path).start()
    try:
        store.client().create_bucket(Bucket="models")
        config = tmp_path / "inferd.toml"
        config.write_text(f'[models]\nsource = "s3://models"\nendpoint_url = "{store.endpoint_url}"\n')
        (tmp_path / "models").mkdir()
        with DaemonProcess(tmp_path / "models", env=store.env(), config=config) as daemon:
            exported = _exported(daemon.http_get("/metrics").decode())
    finally:
        store.stop()
    assert _metrics_read(_groups()[SOURCE_GROUP]) - exported == set()


@pytest.fixture
def promtool() -> str:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian: the prometheus package; or set PROMTOOL)")
    return PROMTOOL


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_accepts_the_config_with_and_without_a_token(promtool, tmp_path):
    shutil.copy(RULES, tmp_path / RULES.name)
    token = tmp_path / "inferd.token"
    token.write_text("secret\n")
    shipped = CONFIG.read_text()
    with_token = re.sub(r"(?m)^(\s*)# (authorization:\n)\1#   (type: Bearer\n)\1#   credentials_file: \S+",
                        rf"\1\2\1  \3\1  credentials_file: {token}", shipped)
    assert f"credentials_file: {token}" in with_token
    for name, text in (("prometheus.yml", shipped), ("with-token.yml", with_token)):
        (tmp_path / name).write_text(text)
        checked = _run(promtool, "check", "config", str(tmp_path / name))
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_rules_and_their_tests_pass(promtool):
    checked = _run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
