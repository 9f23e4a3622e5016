"""A fleet of real inferd daemons for the balancer tests: each with its own models directory,
all fed from one S3 bucket (moto on loopback, tests/s3_server.py) or, without a store, from the
same model files written into each directory.

The model is `add` (make_models.build_add_sub): OUTPUT0 = INPUT0 + INPUT1 + version, so every
answer says which version computed it."""

from __future__ import annotations

import concurrent.futures
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import make_models
import numpy as np
from daemon_process import DaemonProcess
from s3_server import S3Server

MODEL = "add"
BUCKET = "models"
PREFIX = "fleet"
INPUT0 = np.arange(16, dtype=np.int32).reshape(1, 16)
INPUT1 = np.ones((1, 16), dtype=np.int32)
# Fast enough for a test: files settle quickly, one warm worker per model (no cold starts while
# the load runs), the store listed every second.
DAEMON_ENV = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1"}
POLL_INTERVAL_S = 1.0


def model_bytes(version: int) -> bytes:
    """The `add` model's file for `version` (its OUTPUT0 is offset by the version)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = make_models.build_add_sub(Path(tmp) / "model.onnx", offset=version)
        return path.read_bytes()


def infer_body() -> bytes:
    """A V2 HTTP inference request for `add` (JSON)."""
    inputs = [{"name": name, "shape": list(a.shape), "datatype": "INT32", "data": a.ravel().tolist()}
              for name, a in (("INPUT0", INPUT0), ("INPUT1", INPUT1))]
    return json.dumps({"inputs": inputs}).encode()


def version_of(answer: dict) -> int:
    """Which version computed a V2 HTTP answer: its OUTPUT0 minus INPUT0 + INPUT1."""
    [out] = [o for o in answer["outputs"] if o["name"] == "OUTPUT0"]
    return int(out["data"][0]) - int((INPUT0 + INPUT1)[0, 0])


def served_version(url: str, timeout: float = 10) -> int:
    """The version that answers an inference at `url` (a daemon or a balancer)."""
    request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=infer_body(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return version_of(json.loads(response.read()))


class Fleet:
    """`size` daemons; with `s3`, each reads s3://models/fleet through [models] source; without,
    each has version 1 in its directory but the hosts (1, 2, ...) named in `empty`, and what
    `models(directory)` writes there."""

    def __init__(self, root: Path, size: int = 3, s3: S3Server | None = None, env: dict | None = None,
                 empty: tuple[int, ...] = (), models: Callable[[Path], None] | None = None):
        self.root = root
        self.empty = empty
        self.models = models
        self.s3 = s3
        self.env = {**DAEMON_ENV, **(env or {})}
        self.daemons: list[DaemonProcess] = []
        self.size = size
        self.poll_interval_s = POLL_INTERVAL_S

    def upload(self, version: int) -> None:
        """Put version `version` of `add` into the bucket (one PUT: S3 makes it visible at once)."""
        self.put(f"{MODEL}/{version}/model.onnx", model_bytes(version))

    def _daemon(self, index: int) -> DaemonProcess:
        models = self.root / f"host{index}" / "models"
        models.mkdir(parents=True)
        if self.s3 is None:
            if index not in self.empty:
                self.place(index, 1)
            if self.models:
                self.models(models)
            return DaemonProcess(models, env=self.env)
        config = self.root / f"host{index}" / "inferd.toml"
        config.write_text(f'[models]\nsource = "s3://{BUCKET}/{PREFIX}"\n'
                          f'endpoint_url = "{self.s3.endpoint_url}"\npoll_interval_s = {POLL_INTERVAL_S}\n')
        return DaemonProcess(models, env={**self.env, **self.s3.env()}, config=config)

    def start(self) -> Fleet:
        """Start every daemon at once (each is ready with version 1 of `add` loaded)."""
        if self.s3 is not None:
            self.s3.client().create_bucket(Bucket=BUCKET)
            self.upload(1)
        self.daemons = [self._daemon(i) for i in range(1, self.size + 1)]
        with concurrent.futures.ThreadPoolExecutor(self.size) as pool:
            started = [pool.submit(d.start) for d in self.daemons]
        failed = [f.exception() for f in started if f.exception()]
        if failed:
            self.stop()
            raise failed[0]
        for index, daemon in enumerate(self.daemons, 1):
            assert index in self.empty or served_version(daemon.url) == 1
        return self

    def place(self, index: int, version: int) -> None:
        """Write version `version` of `add` into host `index`'s own directory (renamed into place)."""
        target = self.root / f"host{index}" / "models" / MODEL / str(version) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(".model.onnx.part")  # hidden: not scanned while written
        part.write_bytes(model_bytes(version))
        part.rename(target)

    def put(self, key: str, body: bytes) -> None:
        """Any object under the fleet's prefix (a hostile upload, say)."""
        self.s3.client().put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=body)

    def wait_logged(self, matches: Callable[[dict], bool], since: float, timeout: float = 60) -> list[float | None]:
        """For each daemon, the seconds from `since` (a time.monotonic()) until it has logged an
        event that `matches` (None: not within `timeout`)."""
        found: list[float | None] = [None] * len(self.daemons)
        deadline = time.monotonic() + timeout
        while None in found and time.monotonic() < deadline:
            for index, daemon in enumerate(self.daemons):
                if found[index] is None and any(matches(e) for e in daemon.log_events()):
                    found[index] = time.monotonic() - since
            time.sleep(0.05)
        return found

    def load_seconds(self, version: int) -> list[float | None]:
        """Each daemon's own "model loaded" time for `version` of `add` (None: not loaded)."""
        return [next((e["seconds"] for e in d.events("model loaded")
                      if e.get("model") == MODEL and str(e.get("version")) == str(version)), None)
                for d in self.daemons]

    def grpc_address(self, daemon: DaemonProcess) -> str:
        [address] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
        return address

    def stop(self) -> None:
        """Stop every daemon at once (each may wait out its drain delay)."""
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.daemons))) as pool:
            list(pool.map(DaemonProcess.stop, self.daemons))
