"""The shared vocabulary: owned background tasks, the wire-code tables (a renamed enum member
must not change a protocol), the one fallback for bugs, and the BYTES helpers."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from inferd.backends import ipc
from inferd.common.errors import ErrorCode, InferdError, unexpected
from inferd.common.tasks import TaskSet
from inferd.common.tensors import as_bytes, bytes_elements, object_tensor, payload_bytes, texts
from inferd.daemon.frontends.http import HTTP_STATUS
from inferd.daemon.frontends.unix_codec import WIRE_CODES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "unix-socket-protocol.md"


async def test_a_failing_background_task_is_logged_once_and_cancel_waits_for_every_task():
    tasks = TaskSet("test")
    gate = asyncio.Event()

    async def fail():
        raise ValueError("broken")

    async def wait():
        await gate.wait()

    with capture_logs() as logs:
        failing, waiting = tasks.spawn(fail()), tasks.spawn(wait())
        await asyncio.wait([failing])
        await asyncio.sleep(0)  # the done callback runs
        assert len(tasks) == 1
        await tasks.cancel()
    assert waiting.cancelled() and len(tasks) == 0
    failures = [e for e in logs if e["event"] == "background task failed"]
    assert len(failures) == 1  # the cancelled one is no failure
    assert failures[0]["owner"] == "test" and failures[0]["error"] == "ValueError: broken"
    assert isinstance(failures[0]["exc_info"], ValueError)


def test_every_error_code_has_a_status_on_every_front_end_and_documented_wire_codes():
    assert set(WIRE_CODES) == set(HTTP_STATUS) == set(ErrorCode)
    # gRPC's table, in a process of its own: the daemon's generated gRPC code and tritonclient's
    # (which other tests import) register the same protobuf names.
    check = ("from inferd.daemon.frontends.grpc import GRPC_STATUS; from inferd.common.errors import ErrorCode; "
             "assert set(GRPC_STATUS) == set(ErrorCode)")
    assert subprocess.run([sys.executable, "-c", check], cwd="/").returncode == 0
    table = DOCS.read_text().split("The error codes are", 1)[1].split("## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert set(WIRE_CODES.values()) == set(documented) | {"cancelled"}  # (cancelled: never sent, the caller left)
    assert all(isinstance(v, str) for v in WIRE_CODES.values())
    assert not any(isinstance(code.value, str) for code in ErrorCode)  # the enum's values are no wire format


def test_worker_ipc_codes_round_trip_and_an_unknown_one_is_internal():
    for code, wire in ipc.ERROR_CODES.items():
        assert ipc.error_code(wire) is code
    assert ipc.error_code("something_new") is ErrorCode.INTERNAL


def test_unexpected_keeps_inferd_errors_and_hides_a_bugs_text():
    known = InferdError(ErrorCode.NOT_FOUND, "no such model")
    assert unexpected(known, "x") is known
    with capture_logs() as logs:
        error = unexpected(KeyError("/secret/path"), "lookup failed", model="m")
    assert error.code is ErrorCode.INTERNAL and "/secret/path" not in error.message and "KeyError" in error.message
    assert logs[0]["event"] == "lookup failed" and logs[0]["model"] == "m" and "/secret/path" in logs[0]["error"]


def test_bytes_helpers():
    array = object_tensor([b"a", "\u00e9", bytearray(b"c"), b""], (2, 2))
    assert array.shape == (2, 2) and array.dtype == object
    assert bytes_elements(array) == [b"a", "\u00e9".encode(), b"c", b""]
    assert bytes_elements(np.array(["x", "yz"])) == [b"x", b"yz"]  # numpy str arrays count as BYTES
    assert texts(object_tensor([b"a", b"\xc3\xa9"])) == ["a", "\u00e9"]
    with pytest.raises(UnicodeDecodeError):
        texts(object_tensor([b"\xff"]))
    with pytest.raises(TypeError, match="must be bytes or str, got int"):
        as_bytes(3)
    assert payload_bytes(object_tensor([b"ab", b"c"])) == 3 and payload_bytes(np.zeros((2, 3), np.float32)) == 24
    nested = object_tensor([b"ab", b"cd"])  # equal-length elements stay elements, never a 2-D array
    assert nested.shape == (2,)


def test_hide_paths_shows_server_paths_by_their_last_part_or_relative_to_a_root():
    from inferd.common.redaction import hide_paths

    text = "open /srv/m/a/1/model.py failed, see /var/log/x.log and http://h/a/b at 3/4"
    assert hide_paths(text) == "open model.py failed, see x.log and http://h/a/b at 3/4"
    assert hide_paths(text, ["/srv/m"]) == "open a/1/model.py failed, see x.log and http://h/a/b at 3/4"
    assert hide_paths("in /srv/m/", ["/srv/m"]) == "in the models directory"
