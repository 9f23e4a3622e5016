"""What the packages promise, checked on the files themselves: the default config lists every key
with its real default, the unit carries the settings the daemon relies on, and journal fields
are named as documented. (tests/system/nspawn_test.sh runs them under a real systemd.)"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import tomllib
from pathlib import Path

from inferd.config.settings import DaemonConfig, load_daemon_config
from inferd.daemon.operations import logs

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def test_the_packaged_config_lists_every_key_with_its_default():
    text = (PACKAGING / "inferd.toml").read_text()
    assert load_daemon_config(PACKAGING / "inferd.toml", environ={}) == DaemonConfig()  # as shipped: defaults
    # Uncomment every "# key = value" line: the result must be exactly the defaults, key for key.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    arrays_as_lists = {section: {key: list(value) if isinstance(value, tuple) else value for key, value in keys.items()}
                       for section, keys in dataclasses.asdict(DaemonConfig()).items()}
    assert tomllib.loads(uncommented) == arrays_as_lists


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # repeated keys: the last one
    parser.optionxform = str
    parser.read(PACKAGING / name)
    return parser


def test_the_service_unit():
    service = unit("inferd.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].startswith("/opt/inferd/venv/bin/inferd serve --config /etc/inferd/inferd.toml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed" and service["Restart"] == "on-failure"
    assert (service["User"], service["Group"]) == ("inferd", "inferd")
    assert service["RuntimeDirectory"] == service["StateDirectory"] == service["ConfigurationDirectory"] == "inferd"
    stop = int(service["TimeoutStopSec"].removesuffix("s"))
    server = DaemonConfig().server
    # Not ready for the delay, the drain, then closing and stopping workers.
    assert stop > server.drain_delay_s + server.drain_timeout_s + 5
    assert int(service["WatchdogSec"].removesuffix("s")) >= 2
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict"


def test_socket_units_name_the_listeners_the_daemon_takes():
    names = {}
    for file in ("inferd.socket", "inferd-http.socket", "inferd-grpc.socket"):
        socket = unit(file)["Socket"]
        assert socket["Service"] == "inferd.service"
        names[socket["FileDescriptorName"]] = socket["ListenStream"]
    defaults = DaemonConfig().server
    assert names == {"socket": "/run/inferd/inferd.sock", "http": defaults.http, "grpc": defaults.grpc}


def test_journal_fields():
    fields = logs.journal_fields(None, "warning", {
        "event": "model state", "level": "warning", "timestamp": "2025-01-01T00:00:00Z",
        "model": "mlp", "version": "2", "request_id": "r-1", "models": {"READY": 2}, "seconds": 0.5,
        "bad-key.x": 1, "_private": "p"})
    assert fields == {
        "MESSAGE": "model state", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "inferd",
        "MODEL": "mlp", "VERSION": "2", "REQUEST_ID": "r-1", "MODELS": '{"READY":2}', "SECONDS": "0.5",
        "BAD_KEY_X": "1", "PRIVATE": "p"}
    assert logs.journal_fields(None, "error", {"event": "x", "message": "y"})["INFERD_MESSAGE"] == "y"


def test_journal_stream_must_be_our_own_stderr(tmp_path):
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        assert logs.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not logs.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)  # inherited, not ours
        assert not logs.under_journald({}, f)
