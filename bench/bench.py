"""Benchmark inferd's KServe V2 HTTP API against raw in-process onnxruntime, in the same run.

    .venv/bin/python bench/bench.py [--concurrency 1,8,64] [--modes json,binary] [--duration 5]
                                    [--url http://127.0.0.1:PORT] [--procs N] [--bare] [--json FILE]

Without --url it starts the daemon on a freshly generated MLP and stops it at the end.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
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

import numpy as np
import onnxruntime as ort

import loadgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_models import build_mlp  # noqa: E402

ROWS = 512
P50_TARGET_MS = 0.4  # concurrency 1: p50 within this of raw batch-1 p50
TPUT_TARGET = 0.4  # concurrency 64, binary: at least this fraction of raw batch-1 calls/s
NOISE = 0.2  # raw before/after differing by more than this means the machine is noisy


# ---------------------------------------------------------------- raw onnxruntime

def measure_raw(model: pathlib.Path) -> dict:
    """Latency and throughput of sess.run at batch 1 (~2 s) and batch 8, 64 (~1 s each)."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    out = {}
    for batch, seconds in ((1, 2.0), (8, 1.0), (64, 1.0)):
        feed = {"input": rng.standard_normal((batch, ROWS)).astype(np.float32)}
        for _ in range(20):  # warm-up: first calls allocate arenas and spin up the thread pool
            sess.run(None, feed)
        lat = []
        t0 = time.perf_counter_ns()
        end = t0 + int(seconds * 1e9)
        t = t0
        while t < end:
            sess.run(None, feed)
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


def mean_raw(before: dict, after: dict) -> tuple[dict, list[str]]:
    mean, warnings = {}, []
    for b in before:
        mean[b] = {k: (before[b][k] + after[b][k]) / 2 for k in before[b]}
        for k in ("p50_ms", "calls_s"):
            x, y = before[b][k], after[b][k]
            if abs(x - y) > NOISE * (x + y) / 2:
                warnings.append(f"raw batch {b} {k} moved {x:.4g} -> {y:.4g} (>{NOISE:.0%}): noisy machine")
    return mean, warnings


# ---------------------------------------------------------------- V2 requests

def encode(mode: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a V2 infer request for input x, in 'json' or 'binary' encoding."""
    if mode == "json":
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        return json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
    raw = x.astype("<f4").tobytes()
    head = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }, separators=(",", ":")).encode()
    return head + raw, {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(head))}


def verify(host: str, port: int, path: str, mode: str, x: np.ndarray, ref: np.ndarray) -> str:
    """Send one request off the hot path and compare its output with raw onnxruntime."""
    body, headers = encode(mode, x)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return f"HTTP {resp.status}: {data[:200]!r}"
        hlen = resp.getheader("Inference-Header-Content-Length")
        head = json.loads(data[: int(hlen)] if hlen else data)
        out = head["outputs"][0]
        if "data" in out:
            y = np.asarray(out["data"], np.float32)
        else:
            size = out["parameters"]["binary_data_size"]
            y = np.frombuffer(data[int(hlen) : int(hlen) + size], "<f4")
        if y.size != ref.size or not np.allclose(y.reshape(ref.shape), ref, atol=1e-5):
            return "MISMATCH"
        return "ok"
    except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException) as e:
        return f"error: {e!r}"
    finally:
        conn.close()


def batch_metrics(host: str, port: int) -> tuple[float, float] | None:
    """(sum, count) of the inferd_batch_size histogram over all its series; None if absent."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
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

class Server:
    """A server subprocess that logs a JSON 'listening' line and sends READY=1 on $NOTIFY_SOCKET."""

    def __init__(self, cmd: list[str], tmp: pathlib.Path, name: str, timeout: float = 60.0):
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.port: int | None = None
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
                raise RuntimeError("READY=1 received but no 'listening' http log line")
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
                    and ev.get("frontend") == "http" and not self._listening.is_set()):
                self.port = int(str(ev["address"]).rsplit(":", 1)[1])
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
                                       + "\n".join(self.stderr_tail)) from None
                continue
            if "READY=1" in msg.decode(errors="replace").splitlines():
                return
        raise RuntimeError(f"no READY=1 within {timeout} s:\n" + "\n".join(self.stderr_tail))

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

def run_one(args, pool, host, port, request: bytes, conc: int) -> dict:
    """One closed-loop run at concurrency conc, split over args.procs generator processes."""
    shares = [conc // args.procs + (i < conc % args.procs) for i in range(args.procs)]
    start = time.time_ns() + int(0.3e9)  # time for every process to open its connections
    if pool is None:
        results = [loadgen.run_load(host, port, request, conc, start, args.warmup, args.duration)]
    else:
        futures = [pool.submit(loadgen.run_load, host, port, request, n, start, args.warmup,
                               args.duration) for n in shares]
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


def run_target(args, pool, name: str, host: str, port: int, server: Server | None, modes,
               x: np.ndarray, ref: np.ndarray | None) -> list[dict]:
    path = f"/v2/models/{args.model}/infer"
    runs = []
    for conc in args.concurrency:
        for mode in modes:
            body, headers = encode(mode, x)
            request = loadgen.build_request(host, port, path, body, headers)
            # ref is None for the bare server: nothing to verify and no metrics endpoint.
            check = verify(host, port, path, mode, x, ref) if ref is not None else "skipped"
            m0 = batch_metrics(host, port) if ref is not None else None
            cpu0 = server.cpu_s() if server else None
            r = run_one(args, pool, host, port, request, conc)
            cpu1 = server.cpu_s() if server else None
            m1 = batch_metrics(host, port) if m0 is not None else None
            r = {"target": name, "mode": mode, "concurrency": conc, "verify": check, **r}
            r["mean_batch"] = ((m1[0] - m0[0]) / (m1[1] - m0[1])
                               if m0 and m1 and m1[1] > m0[1] else None)
            r["server_cpu_us_per_req"] = (1e6 * (cpu1 - cpu0) / r["responses_total"]
                                          if server and r["responses_total"] else None)
            runs.append(r)
            print(f"  {name:6} {mode:6} c={conc:<3} {r['rps']:9.1f} req/s  p50 "
                  f"{fmt(r['p50_ms'], 3)} ms  errors {r['errors']}  verify {check}", flush=True)
    return runs


def check_targets(runs: list[dict]) -> list[dict]:
    checks = []
    for r in runs:
        if r["concurrency"] == 1 and r["added_p50_ms"] is not None:
            checks.append({"mode": r["mode"], "concurrency": 1, "target": f"p50 <= raw b1 p50 + {P50_TARGET_MS} ms",
                           "value": r["added_p50_ms"], "pass": r["added_p50_ms"] <= P50_TARGET_MS})
        if r["concurrency"] == 64 and r["mode"] == "binary":
            checks.append({"mode": "binary", "concurrency": 64, "target": f"req/s >= {TPUT_TARGET} x raw b1 calls/s",
                           "value": r["tput_vs_raw_b1"], "pass": r["tput_vs_raw_b1"] >= TPUT_TARGET})
    return checks


# ---------------------------------------------------------------- report

def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_report(res: dict):
    print("\nraw onnxruntime, in-process (mean of before/after the load runs)")
    print(f"  {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'rows/s':>9}")
    for b, m in res["raw"]["mean"].items():
        print(f"  {b:>5} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} {m['calls_s']:9.1f} {m['rows_s']:9.1f}")
    for w in res["raw"]["warnings"]:
        print(f"  WARNING: {w}")
    checks = {(c["mode"], c["concurrency"]): c for c in res["targets"]}
    print(f"\nclosed loop, {res['config']['duration_s']} s per run, "
          f"{res['config']['procs']} generator process(es)")
    print(f"  {'target':6} {'mode':6} {'conc':>4} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'err':>4} {'+p50 ms':>8} {'x raw':>6} {'batch':>5} {'gen us':>6} {'srv us':>6}  check")
    for r in res["runs"] + res["bare_runs"]:
        c = checks.get((r["mode"], r["concurrency"])) if r["target"] == "inferd" else None
        mark = "" if c is None else ("PASS" if c["pass"] else "FAIL") + f" ({c['target']})"
        if r["verify"] not in ("ok", "skipped"):
            mark += f" verify {r['verify'][:40]}"
        print(f"  {r['target']:6} {r['mode']:6} {r['concurrency']:>4} {r['rps']:8.1f} "
              f"{fmt(r['p50_ms'], 3):>7} {fmt(r['p90_ms'], 3):>7} {fmt(r['p99_ms'], 3):>7} "
              f"{r['errors']:>4} {fmt(r['added_p50_ms'], 3):>8} {r['tput_vs_raw_b1']:6.2f} "
              f"{fmt(r['mean_batch'], 1):>5} {fmt(r['gen_cpu_us_per_req'], 0):>6} "
              f"{fmt(r['server_cpu_us_per_req'], 0):>6}  {mark}")
    print("  latencies in ms; '+p50 ms' = p50 - raw batch-1 p50; 'x raw' = req/s / raw batch-1 "
          "calls/s;\n  batch = mean inferd_batch_size; gen/srv us = CPU us per request of the "
          "generator / server process tree")


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--concurrency", type=ints, default=[1, 8, 64])
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["json", "binary"])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each run")
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--url", help="benchmark this running server instead of starting the daemon")
    ap.add_argument("--model", default="mlp", help="model name on the server")
    ap.add_argument("--daemon-cmd", default="{python} -m inferd.daemon",
                    help="command that starts the daemon; 'serve --models DIR ...' is appended")
    ap.add_argument("--bare", action="store_true", help="also run against a bare aiohttp server")
    ap.add_argument("--json", type=pathlib.Path, help="write the results here")
    args = ap.parse_args()
    if set(args.modes) - {"json", "binary"} or args.procs < 1 or min(args.concurrency) < 1:
        ap.error("modes are json,binary; procs and concurrencies must be >= 1")

    # Spawn, not fork: the parent has onnxruntime threads. Workers only import loadgen.
    pool = (concurrent.futures.ProcessPoolExecutor(args.procs, multiprocessing.get_context("spawn"))
            if args.procs > 1 else None)
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        models = tmp / "models"
        model = build_mlp(models / "mlp.onnx")
        x = np.random.default_rng(1).standard_normal((1, ROWS)).astype(np.float32)
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

        print("raw onnxruntime (before)...", flush=True)
        raw_before = measure_raw(model)
        servers: list[Server] = []
        try:
            if args.url:
                u = urllib.parse.urlsplit(args.url)
                host, port, daemon = u.hostname, u.port or 80, None
            else:
                cmd = [a.replace("{python}", sys.executable) for a in shlex.split(args.daemon_cmd)]
                cmd += ["serve", "--models", str(models), "--http", "127.0.0.1:0",
                        "--grpc", "", "--socket", ""]
                print(f"starting daemon: {shlex.join(cmd)}", flush=True)
                daemon = Server(cmd, tmp, "daemon")
                servers.append(daemon)
                host, port = "127.0.0.1", daemon.port
            print(f"load runs against {host}:{port}", flush=True)
            runs = run_target(args, pool, "inferd", host, port, daemon, args.modes, x, ref)
            bare_runs = []
            if args.bare:
                if daemon:  # don't leave an idle daemon sharing the cores
                    daemon.stop()
                bare = Server([sys.executable, str(pathlib.Path(__file__).with_name("bare_server.py"))],
                              tmp, "bare")
                servers.append(bare)
                bare_runs = run_target(args, pool, "bare", "127.0.0.1", bare.port, bare, ["binary"],
                                       x, None)
        finally:
            for s in servers:
                s.stop()
            if pool:
                pool.shutdown()
        print("raw onnxruntime (after)...", flush=True)
        raw_after = measure_raw(model)

    raw, warnings = mean_raw(raw_before, raw_after)
    for r in runs + bare_runs:  # ratios against the mean of raw before/after
        r["added_p50_ms"] = None if r["p50_ms"] is None else r["p50_ms"] - raw["1"]["p50_ms"]
        r["tput_vs_raw_b1"] = r["rps"] / raw["1"]["calls_s"]
    res = {
        "config": {"concurrency": args.concurrency, "modes": args.modes, "duration_s": args.duration,
                   "warmup_s": args.warmup, "procs": args.procs, "url": args.url,
                   "daemon_cmd": None if args.url else args.daemon_cmd, "model": args.model},
        "git_rev": git_rev(),
        "machine": machine(),
        "onnxruntime": ort.__version__,
        "raw": {"before": raw_before, "after": raw_after, "mean": raw, "warnings": warnings},
        "runs": runs,
        "bare_runs": bare_runs,
        "targets": check_targets(runs),
    }
    print_report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
