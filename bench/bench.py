"""Benchmark inferd's V2 HTTP, gRPC and Unix-socket APIs against raw in-process onnxruntime, in
the same run.

    .venv/bin/python bench/bench.py [--concurrency 1,8,64] [--modes json,binary,grpc,unix]
                                    [--duration 5] [--procs N] [--bare] [--tiny] [--json FILE]
                                    [--url http://127.0.0.1:PORT [--grpc-address H:P] [--socket P]]

Without --url it starts the daemon on freshly generated models and stops it at the end.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import http.client
import json
import multiprocessing
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import msgpack
import numpy as np
import onnxruntime as ort

import loadgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_models import build_add_sub, build_mlp  # noqa: E402

ROWS = 512
TINY_WIDTH = 16
P50_TARGET_MS = 0.4  # concurrency 1, HTTP: p50 within this of raw batch-1 p50
TPUT_TARGET = 0.4  # concurrency 64, binary: at least this fraction of raw batch-1 calls/s
UNIX_TINY_P50_MS = 0.150  # tiny model, concurrency 1, unix: p50 within this of raw batch-1 p50
UNIX_VS_BINARY = 2.0  # concurrency 64: unix req/s at least this times HTTP binary's
GRPC_VS_BARE = 0.7  # concurrency 64: grpc req/s at least this fraction of the bare grpclib echo's
NOISE = 0.2  # raw before/after differing by more than this means the machine is noisy

MODES = ("json", "binary", "grpc", "unix")
FRONTEND = {"json": "http", "binary": "http", "grpc": "grpc", "unix": "socket"}  # log "frontend"
KIND = {"json": "http", "binary": "http", "grpc": "grpc", "unix": "unix"}  # loadgen kind
DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}
NUMPY = {"FP32": "<f4", "INT32": "<i4"}


@dataclasses.dataclass
class Workload:
    """One request's inputs for a model on the server, and raw onnxruntime's outputs for them."""
    model: str
    inputs: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]


def mlp_feed(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((batch, ROWS)).astype(np.float32)}


def tiny_feed(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: rng.integers(-1000, 1000, (batch, TINY_WIDTH), dtype=np.int32)
            for n in ("INPUT0", "INPUT1")}


def workload(path: pathlib.Path, name: str, feed) -> Workload:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = feed(1, np.random.default_rng(1))
    names = [o.name for o in sess.get_outputs()]
    return Workload(name, inputs, dict(zip(names, sess.run(names, inputs))))


# ---------------------------------------------------------------- raw onnxruntime

def measure_raw(model: pathlib.Path, feed, plan=((1, 2.0), (8, 1.0), (64, 1.0))) -> dict:
    """Latency and throughput of sess.run for each (batch, seconds) of plan."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    out = {}
    for batch, seconds in plan:
        inputs = feed(batch, rng)
        for _ in range(20):  # warm-up: first calls allocate arenas and spin up the thread pool
            sess.run(None, inputs)
        lat = []
        t0 = time.perf_counter_ns()
        end = t0 + int(seconds * 1e9)
        t = t0
        while t < end:
            sess.run(None, inputs)
            t1 = time.perf_counter_ns()
            lat.append(t1 - t)
            t = t1
        calls_s = len(lat) / ((t - t0) / 1e9)
        out[str(batch)] = {
            "p50_ms": float(np.percentile(lat, 50)) / 1e6,
            "p99_ms": float(np.percentile(lat, 99)) / 1e6,
            "calls_s": calls_s,
            "rows_s": calls_s * batch,
        }
    return out


def mean_raw(before: dict, after: dict, label: str = "") -> tuple[dict, list[str]]:
    mean, warnings = {}, []
    for b in before:
        mean[b] = {k: (before[b][k] + after[b][k]) / 2 for k in before[b]}
        for k in ("p50_ms", "calls_s"):
            x, y = before[b][k], after[b][k]
            if abs(x - y) > NOISE * (x + y) / 2:
                warnings.append(f"raw {label}batch {b} {k} moved {x:.4g} -> {y:.4g} (>{NOISE:.0%}): "
                                "noisy machine")
    return mean, warnings


# ---------------------------------------------------------------- requests

def encode_http(mode: str, wl: Workload) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a V2 infer request, in 'json' or 'binary' encoding."""
    if mode == "json":
        body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": DATATYPE[a.dtype],
                            "data": a.ravel().tolist()} for n, a in wl.inputs.items()]}
        return json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
    raws = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in wl.inputs.values()]
    head = json.dumps({
        "inputs": [{"name": n, "shape": list(a.shape), "datatype": DATATYPE[a.dtype],
                    "parameters": {"binary_data_size": len(r)}}
                   for (n, a), r in zip(wl.inputs.items(), raws)],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in wl.ref],
    }, separators=(",", ":")).encode()
    return head + b"".join(raws), {"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(head))}


def unix_message(wl: Workload, request_id: int = 1) -> dict:
    return {"id": request_id, "op": "infer", "model": wl.model,
            "inputs": [{"name": n, "datatype": DATATYPE[a.dtype], "shape": list(a.shape),
                        "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}
                       for n, a in wl.inputs.items()]}


def grpc_message(wl: Workload):
    from inferd.daemon.grpc_gen import inference_pb2 as pb
    msg = pb.ModelInferRequest(model_name=wl.model)
    for n, a in wl.inputs.items():
        msg.inputs.add(name=n, datatype=DATATYPE[a.dtype], shape=a.shape)
        msg.raw_input_contents.append(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return msg


def hot_request(mode: str, addr, wl: Workload) -> bytes:
    """The pre-encoded bytes loadgen sends for each request. One fixed unix id serves every
    connection: each has one request in flight, and ids need only be unique per connection."""
    if mode == "unix":
        return loadgen.build_frame(unix_message(wl))
    if mode == "grpc":
        return grpc_message(wl).SerializeToString()
    body, headers = encode_http(mode, wl)
    return loadgen.build_request(*addr, f"/v2/models/{wl.model}/infer", body, headers)


def compare(outputs: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    for name, want in ref.items():
        y = outputs.get(name)
        if y is None or y.size != want.size or not np.allclose(y.reshape(want.shape), want, atol=1e-5):
            return f"MISMATCH {name}"
    return "ok"


def verify(mode: str, addr, wl: Workload) -> str:
    """Send one request off the hot path and compare its outputs with raw onnxruntime."""
    try:
        if mode == "unix":
            return compare(_infer_unix(addr, wl), wl.ref)
        if mode == "grpc":
            return compare(asyncio.run(_infer_grpc(addr, wl)), wl.ref)
        return compare(_infer_http(mode, addr, wl), wl.ref)
    except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
        return f"error: {e!r}"


def _infer_http(mode: str, addr, wl: Workload) -> dict[str, np.ndarray]:
    body, headers = encode_http(mode, wl)
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{wl.model}/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    hlen = resp.getheader("Inference-Header-Content-Length")
    head = json.loads(data[: int(hlen)] if hlen else data)
    out, pos = {}, int(hlen or 0)
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"], NUMPY[o["datatype"]])
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(data[pos : pos + size], NUMPY[o["datatype"]])
            pos += size
    return out


def _infer_unix(path: str, wl: Workload) -> dict[str, np.ndarray]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(loadgen.build_frame(unix_message(wl)))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before the reply")
            data += chunk
    reply = msgpack.unpackb(data[4 : 4 + int.from_bytes(data[:4], "big")])
    if reply.get("ok") is not True:
        raise RuntimeError(f"reply {reply.get('error')!r}")
    return {o["name"]: np.frombuffer(o["data"], NUMPY[o["datatype"]]) for o in reply["outputs"]}


async def _infer_grpc(addr, wl: Workload) -> dict[str, np.ndarray]:
    from grpclib.client import Channel, UnaryUnaryMethod
    from inferd.daemon.grpc_gen import inference_pb2 as pb
    channel = Channel(*addr)
    try:
        method = UnaryUnaryMethod(channel, loadgen.GRPC_METHOD, pb.ModelInferRequest,
                                  pb.ModelInferResponse)
        reply = await method(grpc_message(wl), timeout=10)
    finally:
        channel.close()
    return {o.name: np.frombuffer(raw, NUMPY[o.datatype])
            for o, raw in zip(reply.outputs, reply.raw_output_contents)}


def batch_metrics(addr) -> tuple[float, float] | None:
    """(sum, count) of the inferd_batch_size histogram over all its series; None if absent."""
    try:
        conn = http.client.HTTPConnection(*addr, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    if resp.status != 200:
        return None
    total = {"_sum": 0.0, "_count": 0.0}
    found = False
    for line in text.splitlines():
        for suffix in total:
            name = "inferd_batch_size" + suffix
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                rest = line[line.rfind("}") + 1 :] if "{" in line else line[len(name) :]
                total[suffix] += float(rest.split()[0])
                found = True
    return (total["_sum"], total["_count"]) if found else None


# ---------------------------------------------------------------- servers

def parse_address(frontend: str, address: str):
    """(host, port) for TCP front-ends, the path for the Unix socket."""
    if frontend == "socket":
        return address
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


class Server:
    """A server subprocess that logs a JSON 'listening' line per front-end and sends READY=1 on
    $NOTIFY_SOCKET. `addresses` maps each front-end it announced to parse_address's form."""

    def __init__(self, cmd: list[str], tmp: pathlib.Path, name: str, frontends=("http",),
                 timeout: float = 60.0):
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=2000)
        self.addresses: dict = {}
        self._wanted = set(frontends)
        self._listening = threading.Event()
        sock_path = str(tmp / f"{name}.notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(sock_path)
        self.proc = subprocess.Popen(cmd, env={**os.environ, "NOTIFY_SOCKET": sock_path},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        # Drain stderr continuously so that the server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
            if not self._listening.wait(10):
                raise RuntimeError(f"READY=1 received but no 'listening' log line for "
                                   f"{sorted(self._wanted - set(self.addresses))}")
        except BaseException:
            self.stop()
            raise

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if (isinstance(ev, dict) and ev.get("event") == "listening"
                    and ev.get("frontend") in self._wanted and ev["frontend"] not in self.addresses):
                self.addresses[ev["frontend"]] = parse_address(ev["frontend"], str(ev["address"]))
                if self._wanted <= set(self.addresses):
                    self._listening.set()

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        self._notify.settimeout(0.5)  # short, to notice an early exit of the server
        while time.monotonic() < deadline:
            try:
                msg = self._notify.recv(4096)
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                       + "\n".join(list(self.stderr_tail)[-40:])) from None
                continue
            if "READY=1" in msg.decode(errors="replace").splitlines():
                return
        raise RuntimeError(f"no READY=1 within {timeout} s:\n" + "\n".join(list(self.stderr_tail)[-40:]))

    def events(self, name: str) -> list[dict]:
        """The server's JSON log events named `name`, among its last 2,000 lines."""
        out = []
        for line in list(self.stderr_tail):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
        return out

    def cpu_s(self) -> float:
        """utime+stime of the server and its descendants (e.g. backend worker processes)."""
        stats = {}
        for p in pathlib.Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    f = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(p.name)] = (int(f[1]), int(f[11]) + int(f[12]))  # ppid, utime+stime
        tree, changed = {self.proc.pid}, True
        while changed:  # grow the tree until no process's parent is in it that isn't itself
            changed = False
            for pid, (ppid, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self._notify.close()


# ---------------------------------------------------------------- load runs

def run_one(args, pool, kind: str, addr, request: bytes, conc: int) -> dict:
    """One closed-loop run at concurrency conc, split over args.procs generator processes."""
    shares = [conc // args.procs + (i < conc % args.procs) for i in range(args.procs)]
    start = time.time_ns() + int(0.3e9)  # time for every process to open its connections
    load = (kind, addr, request)
    tail = (start, args.warmup, args.duration, 10.0, args.grpc_channels)
    if pool is None:
        results = [loadgen.run_load(*load, conc, *tail)]
    else:
        futures = [pool.submit(loadgen.run_load, *load, n, *tail) for n in shares]
        results = [f.result() for f in futures]
    lat = np.concatenate([np.asarray(r["lat_ns"], np.int64) for r in results]) / 1e6
    n_resp = sum(r["responses"] for r in results)
    out = {
        "requests": int(lat.size),
        "rps": lat.size / args.duration,
        "errors": sum(r["errors"] for r in results),
        "gen_cpu_us_per_req": 1e6 * sum(r["cpu_s"] for r in results) / n_resp if n_resp else None,
        "responses_total": n_resp,
    }
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else None
    return out


def run_target(args, pool, name: str, addrs: dict, server: Server | None, modes, wl: Workload,
               concurrencies, check: bool = True) -> list[dict]:
    """Every concurrency x mode against one server. check=False (bare servers): no verification
    against onnxruntime and no /metrics."""
    runs = []
    for conc in concurrencies:
        for mode in modes:
            addr = addrs[FRONTEND[mode]]
            request = hot_request(mode, addr, wl)
            verdict = verify(mode, addr, wl) if check else "skipped"
            metrics = addrs.get("http") if check else None
            m0 = batch_metrics(metrics) if metrics else None
            cpu0 = server.cpu_s() if server else None
            r = run_one(args, pool, KIND[mode], addr, request, conc)
            cpu1 = server.cpu_s() if server else None
            m1 = batch_metrics(metrics) if m0 is not None else None
            r = {"target": name, "model": wl.model, "mode": mode, "concurrency": conc,
                 "verify": verdict, **r}
            r["mean_batch"] = ((m1[0] - m0[0]) / (m1[1] - m0[1])
                               if m0 and m1 and m1[1] > m0[1] else None)
            r["server_cpu_us_per_req"] = (1e6 * (cpu1 - cpu0) / r["responses_total"]
                                          if server and r["responses_total"] else None)
            runs.append(r)
            print(f"  {name:6} {wl.model:7} {mode:6} c={conc:<3} {r['rps']:9.1f} req/s  p50 "
                  f"{fmt(r['p50_ms'], 3)} ms  gen {fmt(r['gen_cpu_us_per_req'], 1)} us/req  "
                  f"errors {r['errors']}  verify {verdict}", flush=True)
    return runs


def add_ratios(runs: list[dict], raw: dict):
    """+p50 and x raw against the mean of raw before/after."""
    for r in runs:
        r["added_p50_ms"] = None if r["p50_ms"] is None else r["p50_ms"] - raw["1"]["p50_ms"]
        r["tput_vs_raw_b1"] = r["rps"] / raw["1"]["calls_s"]


def run_pairs(args, pool, tmp: pathlib.Path, addrs: dict, wl: Workload) -> dict[str, list[dict]]:
    """The two c=64 ratio targets measured in alternation, `--pairs` times each: gRPC on the
    daemon against the bare grpclib echo (both servers up; the idle one costs nothing), and the
    daemon's Unix socket against its own HTTP binary. On a machine whose speed drifts by a
    quarter within minutes, pairs run seconds apart compare like with like."""
    def alternate(label: str, a: tuple, b: tuple) -> list[dict]:
        out = []
        for i in range(args.pairs):
            ra, rb = (run_one(args, pool, KIND[mode], addr, request, 64) for mode, addr, request in (a, b))
            out.append({"a_rps": ra["rps"], "b_rps": rb["rps"], "ratio": ra["rps"] / rb["rps"] if rb["rps"] else None})
            print(f"  {label} pair {i + 1}: {ra['rps']:.1f} vs {rb['rps']:.1f} req/s, ratio {fmt(out[-1]['ratio'], 3)}",
                  flush=True)
        return out

    pairs = {}
    if "unix" in args.modes and "binary" in args.modes:
        unix, http = addrs[FRONTEND["unix"]], addrs[FRONTEND["binary"]]
        pairs["unix"] = alternate("unix/binary c=64", ("unix", unix, hot_request("unix", unix, wl)),
                                  ("binary", http, hot_request("binary", http, wl)))
    if args.bare and "grpc" in args.modes:
        here = pathlib.Path(__file__).parent
        bare = Server([sys.executable, str(here / "bare_grpc.py")], tmp, "bare-grpc-pairs", ("grpc",))
        try:
            request = hot_request("grpc", addrs["grpc"], wl)
            pairs["grpc"] = alternate("inferd/bare grpc c=64", ("grpc", addrs["grpc"], request),
                                      ("grpc", bare.addresses["grpc"], request))
        finally:
            bare.stop()
    return pairs


def check_targets(runs: list[dict], bare_runs: list[dict], tiny_runs: list[dict], pairs: dict | None = None) -> list[dict]:
    """A ratio target takes the median of its interleaved pairs where the run has them."""
    def find(rows, mode, conc):
        return next((r for r in rows if r["mode"] == mode and r["concurrency"] == conc), None)

    def check(table, mode, conc, target, value, ok):
        checks.append({"table": table, "mode": mode, "concurrency": conc, "target": target,
                       "value": value, "pass": ok})

    checks = []
    for r in runs:
        if r["concurrency"] == 1 and FRONTEND[r["mode"]] == "http" and r["added_p50_ms"] is not None:
            check("mlp", r["mode"], 1, f"p50 <= raw b1 p50 + {P50_TARGET_MS} ms", r["added_p50_ms"],
                  r["added_p50_ms"] <= P50_TARGET_MS)
        if r["concurrency"] == 64 and r["mode"] == "binary":
            check("mlp", "binary", 64, f"req/s >= {TPUT_TARGET} x raw b1 calls/s", r["tput_vs_raw_b1"],
                  r["tput_vs_raw_b1"] >= TPUT_TARGET)

    def ratio_check(mode, a, b, floor, versus):
        """a's req/s against b's at c=64: the target's row a must be in the run."""
        if not a:
            return
        ratios = [p["ratio"] for p in (pairs or {}).get(mode, ()) if p["ratio"] is not None]
        if ratios:
            ratio, how = float(np.median(ratios)), f"median of {len(ratios)} interleaved pairs: "
        elif b:
            ratio, how = a["rps"] / b["rps"] if b["rps"] else float("inf"), ""
        else:
            return
        check("mlp", mode, 64, f"req/s >= {floor} x {versus} c=64 ({how}{ratio:.2f}x)", ratio, ratio >= floor)

    ratio_check("unix", find(runs, "unix", 64), find(runs, "binary", 64), UNIX_VS_BINARY, "binary")
    ratio_check("grpc", find(runs, "grpc", 64), find(bare_runs, "grpc", 64), GRPC_VS_BARE, "bare grpc")
    tiny = find(tiny_runs, "unix", 1)
    if tiny and tiny["added_p50_ms"] is not None:
        check("tiny", "unix", 1, f"p50 <= raw b1 p50 + {UNIX_TINY_P50_MS:.3f} ms", tiny["added_p50_ms"],
              tiny["added_p50_ms"] <= UNIX_TINY_P50_MS)
    return checks


# ---------------------------------------------------------------- report

def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_raw(title: str, raw: dict):
    print(f"\n{title}")
    print(f"  {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'rows/s':>9}")
    for b, m in raw["mean"].items():
        print(f"  {b:>5} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} {m['calls_s']:9.1f} {m['rows_s']:9.1f}")
    for w in raw["warnings"]:
        print(f"  WARNING: {w}")


def print_runs(rows: list[dict], checks: list[dict], table: str):
    print(f"  {'target':6} {'mode':6} {'conc':>4} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'err':>4} {'+p50 ms':>8} {'x raw':>6} {'batch':>5} {'gen us':>6} {'srv us':>6}  check")
    for r in rows:
        marks = [("PASS" if c["pass"] else "FAIL") + f" ({c['target']})" for c in checks
                 if r["target"] == "inferd" and (c["table"], c["mode"], c["concurrency"])
                 == (table, r["mode"], r["concurrency"])]
        if r["verify"] not in ("ok", "skipped"):
            marks.append(f"verify {r['verify'][:40]}")
        print(f"  {r['target']:6} {r['mode']:6} {r['concurrency']:>4} {r['rps']:8.1f} "
              f"{fmt(r['p50_ms'], 3):>7} {fmt(r['p90_ms'], 3):>7} {fmt(r['p99_ms'], 3):>7} "
              f"{r['errors']:>4} {fmt(r['added_p50_ms'], 3):>8} {r['tput_vs_raw_b1']:6.2f} "
              f"{fmt(r['mean_batch'], 1):>5} {fmt(r['gen_cpu_us_per_req'], 0):>6} "
              f"{fmt(r['server_cpu_us_per_req'], 0):>6}  {'; '.join(marks)}")


def print_report(res: dict):
    cfg = res["config"]
    print_raw("raw onnxruntime, in-process, mlp (mean of before/after the load runs)", res["raw"])
    print(f"\nclosed loop, mlp, {cfg['duration_s']} s per run, {cfg['procs']} generator "
          f"process(es), {cfg['grpc_channels']} gRPC channel(s) per process")
    print_runs(res["runs"] + res["bare_runs"], res["targets"], "mlp")
    for mode, versus in (("unix", "inferd binary"), ("grpc", "bare grpc")):
        for i, pair in enumerate(res["pairs"].get(mode, ())):
            print(f"  {mode} c=64 pair {i + 1}: inferd {mode} {pair['a_rps']:.1f} req/s, {versus} "
                  f"{pair['b_rps']:.1f} req/s, ratio {fmt(pair['ratio'], 3)}")
    print("  latencies in ms; '+p50 ms' = p50 - raw batch-1 p50; 'x raw' = req/s / raw batch-1 "
          "calls/s;\n  batch = mean inferd_batch_size; gen/srv us = CPU us per request of the "
          "generator / server process tree")
    if res["tiny"]:
        print_raw("raw onnxruntime, in-process, add_sub (tiny; mean of before/after)",
                  res["tiny"]["raw"])
        print(f"\nclosed loop, add_sub (tiny), {cfg['duration_s']} s per run")
        print_runs(res["tiny"]["runs"], res["targets"], "tiny")


def machine() -> dict:
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu}


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def start_daemon(args, tmp: pathlib.Path, models: pathlib.Path, frontends: set[str]) -> Server:
    """The daemon with only the front-ends this run uses (HTTP always: /metrics)."""
    cmd = [a.replace("{python}", sys.executable) for a in shlex.split(args.daemon_cmd)]
    cmd += ["serve", "--models", str(models), "--http", "127.0.0.1:0",
            "--grpc", "127.0.0.1:0" if "grpc" in frontends else "",
            "--socket", str(tmp / "inferd.sock") if "socket" in frontends else ""]
    print(f"starting daemon: {shlex.join(cmd)}", flush=True)
    return Server(cmd, tmp, "daemon", frontends)


def run_bare(args, pool, tmp: pathlib.Path, wl: Workload) -> list[dict]:
    """The bare servers for the modes in this run, one at a time (none idles beside another)."""
    here = pathlib.Path(__file__).parent
    bares = [("binary", "http", [str(here / "bare_server.py")]),
             ("grpc", "grpc", [str(here / "bare_grpc.py")]),
             ("unix", "socket", [str(here / "bare_unix.py"), str(tmp / "bare.sock")])]
    runs = []
    for mode, frontend, argv in bares:
        if not any(FRONTEND[m] == frontend for m in args.modes):
            continue
        server = Server([sys.executable, *argv], tmp, f"bare-{mode}", (frontend,))
        try:
            runs += run_target(args, pool, "bare", server.addresses, server, [mode], wl,
                               args.concurrency, check=False)
        finally:
            server.stop()
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--concurrency", type=ints, default=[1, 8, 64])
    ap.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each run")
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--grpc-channels", type=int, default=1,
                    help="HTTP/2 connections per generator process shared by its gRPC clients")
    ap.add_argument("--url", help="benchmark this running server instead of starting the daemon")
    ap.add_argument("--grpc-address", help="with --url: the server's gRPC HOST:PORT")
    ap.add_argument("--socket", help="with --url: the server's Unix socket path")
    ap.add_argument("--model", default="mlp", help="MLP model name on the server")
    ap.add_argument("--daemon-cmd", default="{python} -m inferd.daemon",
                    help="command that starts the daemon; 'serve --models DIR ...' is appended")
    ap.add_argument("--bare", action="store_true",
                    help="also run against bare aiohttp, grpclib and Unix-socket servers")
    ap.add_argument("--tiny", action="store_true",
                    help="also run unix and binary at c=1 on the tiny add_sub model")
    ap.add_argument("--json", type=pathlib.Path, help="write the results here")
    ap.add_argument("--pairs", type=int, default=0,
                    help="also alternate c=64 runs N times: the daemon's unix and binary, and (with "
                         "--bare) its gRPC and the bare echo; those targets then take the median ratio")
    args = ap.parse_args()
    if (set(args.modes) - set(MODES) or args.procs < 1 or args.grpc_channels < 1
            or min(args.concurrency) < 1):
        ap.error(f"modes are {','.join(MODES)}; procs, grpc-channels and concurrencies must be >= 1")
    if args.url and ("grpc" in args.modes and not args.grpc_address
                     or ("unix" in args.modes or args.tiny) and not args.socket):
        ap.error("with --url, mode grpc needs --grpc-address and mode unix or --tiny needs --socket")
    tiny_modes = ["unix", "binary"] if args.tiny else []
    frontends = {FRONTEND[m] for m in args.modes + tiny_modes} | {"http"}

    # Spawn, not fork: the parent has onnxruntime threads. Workers only run loadgen.
    pool = (concurrent.futures.ProcessPoolExecutor(args.procs, multiprocessing.get_context("spawn"))
            if args.procs > 1 else None)
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)  # short: it holds the Unix sockets (paths <= 107 bytes)
        models = tmp / "models"
        mlp = workload(build_mlp(models / "mlp.onnx"), args.model, mlp_feed)
        tiny_path = build_add_sub(models / "add_sub.onnx") if args.tiny else None
        tiny = workload(tiny_path, "add_sub", tiny_feed) if args.tiny else None

        def raw_all():
            out = {"mlp": measure_raw(models / "mlp.onnx", mlp_feed)}
            if tiny:
                out["tiny"] = measure_raw(tiny_path, tiny_feed, ((1, 2.0),))
            return out

        print("raw onnxruntime (before)...", flush=True)
        raw_before = raw_all()
        servers: list[Server] = []
        tiny_runs, bare_runs, pairs = [], [], {}
        try:
            if args.url:
                u = urllib.parse.urlsplit(args.url)
                addrs, daemon = {"http": (u.hostname, u.port or 80)}, None
                if args.grpc_address:
                    addrs["grpc"] = parse_address("grpc", args.grpc_address)
                if args.socket:
                    addrs["socket"] = args.socket
            else:
                daemon = start_daemon(args, tmp, models, frontends)
                servers.append(daemon)
                addrs = daemon.addresses
            print(f"load runs against {addrs}", flush=True)
            runs = run_target(args, pool, "inferd", addrs, daemon, args.modes, mlp, args.concurrency)
            if tiny:
                tiny_runs = run_target(args, pool, "inferd", addrs, daemon, tiny_modes, tiny, [1])
            if args.pairs and 64 in args.concurrency:  # the targets they serve are at c=64
                pairs = run_pairs(args, pool, tmp, addrs, mlp)
            if args.bare:
                if daemon:  # don't leave an idle daemon sharing the cores
                    daemon.stop()
                bare_runs = run_bare(args, pool, tmp, mlp)
        finally:
            for s in servers:
                s.stop()
            if pool:
                pool.shutdown()
        print("raw onnxruntime (after)...", flush=True)
        raw_after = raw_all()

    raw, warnings = mean_raw(raw_before["mlp"], raw_after["mlp"])
    add_ratios(runs + bare_runs, raw)
    tiny_res = None
    if tiny:
        tiny_raw, tiny_warnings = mean_raw(raw_before["tiny"], raw_after["tiny"], "add_sub ")
        add_ratios(tiny_runs, tiny_raw)
        tiny_res = {"raw": {"before": raw_before["tiny"], "after": raw_after["tiny"],
                            "mean": tiny_raw, "warnings": tiny_warnings}, "runs": tiny_runs}
    res = {
        "config": {"concurrency": args.concurrency, "modes": args.modes, "duration_s": args.duration,
                   "warmup_s": args.warmup, "procs": args.procs, "grpc_channels": args.grpc_channels,
                   "url": args.url, "daemon_cmd": None if args.url else args.daemon_cmd,
                   "model": args.model, "tiny": args.tiny},
        "git_rev": git_rev(),
        "machine": machine(),
        "onnxruntime": ort.__version__,
        "raw": {"before": raw_before["mlp"], "after": raw_after["mlp"], "mean": raw,
                "warnings": warnings},
        "runs": runs,
        "bare_runs": bare_runs,
        "tiny": tiny_res,
        "pairs": pairs,
        "targets": check_targets(runs, bare_runs, tiny_runs, pairs),
    }
    print_report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
