"""Closed-loop load through the balancer, bounded in time: HTTP clients on threads in this
process (keep-alive connections, like most clients), gRPC clients in a subprocess
(harness_grpc_client.py). Every request counts once: a success (with the version that answered)
or a failure with its reason; nothing is retried on the client side."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from harness import MODEL, infer_body, served_version, version_of
from harness_tally import Tally

GRPC_CLIENT = Path(__file__).with_name("harness_grpc_client.py")
MAX_SECONDS = 60  # no load phase outlives this, whatever the test does
WARM_S = 1.5  # load before a test's event
AFTER_S = 2.0  # and after it
# Whitespace after a JSON request makes it bigger than HAProxy's buffer (tune.bufsize, 16 KiB):
# such a request is streamed, and never replayed once sent (haproxy.cfg, "retry-on").
BIG_PADDING = 32 * 1024


def failed(counts: dict) -> int:
    """Failed requests in a Load.stop() answer, every kind of client together."""
    return sum(kind["failed"] for kind in counts.values())


def _one_http(connection: http.client.HTTPConnection, body: bytes, tally: Tally) -> bool:
    """One inference; False when the connection must be replaced."""
    try:
        connection.request("POST", f"/v2/models/{MODEL}/infer", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as e:
        tally.failure(f"{type(e).__name__}: {str(e)[:100]}")
        return False
    if response.status == 200:
        tally.success(version_of(json.loads(payload)))
    else:
        tally.failure(f"HTTP {response.status}: {payload[:100].decode(errors='replace')}")
    return not response.will_close


def _http_loop(url: str, body: bytes, stop: threading.Event, tally: Tally) -> None:
    address = urllib.parse.urlsplit(url)
    connection = None
    while not stop.is_set():
        connection = connection or http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        if not _one_http(connection, body, tally):
            connection.close()
            connection = None
    if connection:
        connection.close()


class Load:
    """Closed-loop clients against a balancer: `http_clients` with small requests (HAProxy can
    replay them), `big_http_clients` with requests over its buffer (it cannot), `grpc_clients`."""

    def __init__(self, http_url: str, grpc_address: str, http_clients: int = 2, big_http_clients: int = 1,
                 grpc_clients: int = 2):
        self.http_url, self.grpc_address = http_url, grpc_address
        self.bodies = {"http": (infer_body(), http_clients), "http_big": (infer_body() + b" " * BIG_PADDING,
                                                                          big_http_clients)}
        self.grpc_clients = grpc_clients
        self.clients = http_clients + big_http_clients + grpc_clients
        self.stop_event = threading.Event()
        self.tallies = {kind: Tally() for kind in self.bodies}
        self.threads: list[threading.Thread] = []
        self.grpc_proc: subprocess.Popen | None = None
        self.grpc: dict = {}

    def start(self) -> Load:
        if self.grpc_clients:
            self.grpc_proc = subprocess.Popen(
                [sys.executable, str(GRPC_CLIENT), self.grpc_address, MODEL, str(self.grpc_clients), str(MAX_SECONDS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert self.grpc_proc.stdout.readline().strip() == "started"
        self.threads = [threading.Thread(target=_http_loop, args=(self.http_url, body, self.stop_event, self.tallies[kind]))
                        for kind, (body, clients) in self.bodies.items() for _ in range(clients)]
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> dict:
        """Stop every client; {"http": summary, "http_big": summary, "grpc": summary}."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)
        if self.grpc_proc is not None:
            out, _ = self.grpc_proc.communicate("", timeout=90)
            self.grpc = json.loads(out.strip().splitlines()[-1])
        return {**{kind: tally.summary() for kind, tally in self.tallies.items()}, "grpc": self.grpc}

    def kill(self) -> None:
        """Teardown after a failure: stop the clients whatever state they are in."""
        self.stop_event.set()
        if self.grpc_proc is not None and self.grpc_proc.poll() is None:
            self.grpc_proc.kill()
            self.grpc_proc.wait()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def wait_served(urls: list[str], version: int, since: float, timeout: float = 60) -> list[float | None]:
    """Ask each daemon directly, every 50 ms, until `version` answers: for each, the seconds
    from `since` (a time.monotonic()) to its first such answer (None if not within `timeout`)."""
    found: list[float | None] = [None] * len(urls)

    def probe(index: int) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if served_version(urls[index]) == version:
                    found[index] = time.monotonic() - since
                    return
            except OSError:
                pass
            time.sleep(0.05)

    probes = [threading.Thread(target=probe, args=(i,)) for i in range(len(urls))]
    for thread in probes:
        thread.start()
    for thread in probes:
        thread.join(timeout + 30)
    return found
