"""Concurrency, backpressure and shutdown under load, against a real daemon."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import msgpack
import numpy as np
import orjson
import pytest
from daemon_process import DaemonProcess


def _batch_histogram(metrics_text: str, model: str) -> tuple[float, float]:
    """(batches, rows) executed for `model`, from inferd_batch_size's _count and _sum."""
    def value(suffix):
        m = re.search(rf'^inferd_batch_size_{suffix}{{model="{model}",version="1"}} (\S+)$', metrics_text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("count"), value("sum")


def _binary_add_sub(a: np.ndarray, b: np.ndarray, request_id: str) -> tuple[bytes, dict]:
    header = orjson.dumps({
        "id": request_id,
        "inputs": [
            {"name": "INPUT0", "shape": list(a.shape), "datatype": "INT32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "INPUT1", "shape": list(b.shape), "datatype": "INT32", "parameters": {"binary_data_size": b.nbytes}},
        ],
        "parameters": {"binary_data_output": True},
    })
    return header + a.tobytes() + b.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _decode_binary(body: bytes, header_length: int) -> tuple[dict, dict[str, np.ndarray]]:
    doc = orjson.loads(body[:header_length])
    out, offset = {}, header_length
    for o in doc["outputs"]:
        n = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[offset:offset + n], np.int32).reshape(o["shape"])
        offset += n
    return doc, out


async def test_32_clients_each_get_exactly_their_own_rows(daemon):
    clients, per_client = 32, 200
    async with aiohttp.ClientSession(daemon.url) as s:
        before = _batch_histogram(await (await s.get("/metrics")).text(), "add_sub")

        async def client(c: int) -> int:
            rng = np.random.default_rng(c)
            ok = 0
            for i in range(per_client):
                rows = 1 + (i % 3)  # 1..3 rows, so batches mix requests of different sizes
                a = rng.integers(-1000, 1000, (rows, 16), dtype=np.int32)
                b = rng.integers(-1000, 1000, (rows, 16), dtype=np.int32)
                body, headers = _binary_add_sub(a, b, f"{c}-{i}")
                async with s.post("/v2/models/add_sub/infer", data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    doc, out = _decode_binary(await r.read(), int(r.headers["Inference-Header-Content-Length"]))
                assert doc["id"] == f"{c}-{i}"
                np.testing.assert_array_equal(out["OUTPUT0"], a + b)
                np.testing.assert_array_equal(out["OUTPUT1"], a - b)
                ok += 1
            return ok

        results = await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(clients))), timeout=240)
        assert results == [per_client] * clients
        after = _batch_histogram(await (await s.get("/metrics")).text(), "add_sub")
    batches, rows = after[0] - before[0], after[1] - before[1]
    assert rows == clients * sum(1 + i % 3 for i in range(per_client))  # every row ran exactly once
    # Fewer executions than requests means batches of several requests formed under load.
    assert batches < clients * per_client
    assert rows / batches > 2.0


def _add_sub_repo(root, name: str, config: str):
    import make_models

    make_models.build_add_sub(root / name / "1" / "model.onnx")
    (root / name / "config.toml").write_text(config)
    return root


@pytest.fixture
def overflow_repo(tmp_path):
    # The batcher holds requests for up to 3 s hoping for 8 rows, but the queue takes only 4.
    return _add_sub_repo(tmp_path, "held", "max_batch_size = 8\nmax_queue_rows = 4\nmax_queue_delay_ms = 3000\n")


async def test_queue_overflow_is_429_and_the_daemon_recovers(overflow_repo):
    with DaemonProcess(overflow_repo) as d:
        a = np.ones((1, 16), np.int32)
        body, headers = _binary_add_sub(a, a, "x")
        async with aiohttp.ClientSession(d.url) as s:
            async def one():
                async with s.post("/v2/models/held/infer", data=body, headers=headers) as r:
                    return r.status, r.headers.get("Retry-After"), await r.read()

            results = await asyncio.gather(*(one() for _ in range(12)))
            statuses = sorted(status for status, _, _ in results)
            assert statuses == [200] * 4 + [429] * 8
            for status, retry_after, payload in results:
                if status == 429:
                    assert retry_after is not None
                    assert "queue full" in orjson.loads(payload)["error"]
            assert 'inferd_rejected_total{model="held",reason="queue_full",version="1"} 8.0' in await (await s.get("/metrics")).text()
            status, _, payload = await one()  # recovered: a lone request is served (after the delay)
            assert status == 200


@pytest.fixture
def drain_repo(tmp_path):
    # A queue delay keeps requests queued at the moment SIGTERM arrives.
    return _add_sub_repo(tmp_path, "add_sub", "max_batch_size = 64\nmax_queue_delay_ms = 200\n")


async def test_sigterm_during_load_answers_every_accepted_request_and_exits_0(drain_repo):
    d = DaemonProcess(drain_repo).start()
    try:
        answered, refused = [], []
        in_flight = asyncio.Event()

        async def client(c: int) -> None:
            # A fresh connection per request: a refused connection is then cleanly "not accepted".
            async with aiohttp.ClientSession(d.url, connector=aiohttp.TCPConnector(force_close=True)) as s:
                for i in range(1000):
                    a = np.full((1, 16), c * 1000 + i, np.int32)
                    body, headers = _binary_add_sub(a, a, f"{c}-{i}")
                    try:
                        request = s.post("/v2/models/add_sub/infer", data=body, headers=headers)
                        in_flight.set()
                        async with request as r:
                            if r.status == 503:
                                refused.append((c, i))
                                return
                            assert r.status == 200, await r.text()
                            _, out = _decode_binary(await r.read(), int(r.headers["Inference-Header-Content-Length"]))
                            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
                            answered.append((c, i))
                    except aiohttp.ClientConnectorError:  # listener closed: never accepted
                        refused.append((c, i))
                        return

        tasks = [asyncio.create_task(client(c)) for c in range(8)]
        await in_flight.wait()
        while len(answered) < 16:  # let load build up: some rounds of requests answered
            await asyncio.sleep(0.01)
        # Signal while requests sit in the queue (they wait up to 200 ms there for a fuller batch).
        async with aiohttp.ClientSession(d.url) as s:
            while 'inferd_queue_rows{model="add_sub",version="1"} 0.0' in await (await s.get("/metrics")).text():
                await asyncio.sleep(0.005)
        code = await asyncio.to_thread(d.terminate, 60)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert code == 0
        assert len(refused) == 8  # every client ended on a clean refusal, none on an error
        drained = d.events("draining")
        assert drained and drained[0]["inflight"] >= 1  # requests were queued when SIGTERM came
        assert d.events("stopped")[0]["drained"] is True
    finally:
        d.stop()


async def _send_held_request(d: DaemonProcess, protocol: str) -> asyncio.StreamWriter:
    """One add_sub request to the "held" model over HTTP or the Unix socket; the reply is never read."""
    a = np.ones((1, 16), np.int32)
    if protocol == "unix":
        _, writer = await asyncio.open_unix_connection(d.socket_path)
        tensors = [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": a.tobytes()} for n in ("INPUT0", "INPUT1")]
        payload = msgpack.packb({"id": 1, "op": "infer", "model": "held", "inputs": tensors})
        writer.write(len(payload).to_bytes(4, "big") + payload)
    else:
        body, headers = _binary_add_sub(a, a, "gone")
        _, writer = await asyncio.open_connection(*d.address)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST /v2/models/held/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body)
    await writer.drain()
    return writer


@pytest.mark.parametrize("protocol", ["http", "unix"])
async def test_a_client_that_disconnects_leaves_the_queue(overflow_repo, protocol):
    """Its request is removed at once, long before the batcher's 3 s delay would have sent it."""
    with DaemonProcess(overflow_repo) as d:
        writer = await _send_held_request(d, protocol)
        async with aiohttp.ClientSession(d.url) as s:
            async def queued_rows() -> str:
                text = await (await s.get("/metrics")).text()
                return re.search(r'^inferd_queue_rows\{model="held",version="1"\} (\S+)$', text, re.M).group(1)

            async with asyncio.timeout(2.5):  # under the 3 s delay: the removal is the disconnect's doing
                while await queued_rows() != "1.0":
                    await asyncio.sleep(0.01)
                writer.close()
                while await queued_rows() != "0.0":
                    await asyncio.sleep(0.01)
            text = await (await s.get("/metrics")).text()
            assert f'inferd_requests_total{{code="CANCELLED",model="held",protocol="{protocol}",version="1"}} 1.0' in text
            assert 'inferd_batch_size_count{model="held",version="1"} 0.0' in text  # it never ran


def test_watchdog_keep_alives_come_from_the_running_daemon(drain_repo):
    """Under systemd (WATCHDOG_USEC set), WATCHDOG=1 arrives at half the period after READY=1."""
    with DaemonProcess(drain_repo, env={"WATCHDOG_USEC": "400000"}) as d:
        for _ in range(3):
            assert d.wait_for("WATCHDOG=1", timeout=5)
