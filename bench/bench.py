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
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.parse

import loadgen
import numpy as np
import onnxruntime as ort
from frontends import FRONTEND, KIND, MODES, batch_metrics, hot_request, verify
from report import add_ratios, check_targets, fmt, print_report
from server import Server, parse_address
from workloads import Workload, mean_raw, measure_raw_all, mlp_feed, tiny_feed, workload

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_models import build_add_sub, build_mlp  # noqa: E402

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


def machine() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
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



# ---------------------------------------------------------------- command line

def parse_args() -> argparse.Namespace:
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
    return args


# ---------------------------------------------------------------- orchestration

def connect(args, tmp: pathlib.Path, frontends: set[str]) -> tuple[dict, Server | None]:
    """The addresses to load: those given with --url, or those of a daemon started here."""
    if not args.url:
        daemon = start_daemon(args, tmp, tmp / "models", frontends)
        return daemon.addresses, daemon
    u = urllib.parse.urlsplit(args.url)
    addrs = {"http": (u.hostname, u.port or 80)}
    if args.grpc_address:
        addrs["grpc"] = parse_address("grpc", args.grpc_address)
    if args.socket:
        addrs["socket"] = args.socket
    return addrs, None


def load_runs(args, pool, tmp: pathlib.Path, mlp: Workload, tiny: Workload | None, tiny_modes):
    """(runs, tiny_runs, pairs, bare_runs); stops the daemon and the generator pool at the end."""
    frontends = {FRONTEND[m] for m in args.modes + tiny_modes} | {"http"}
    daemon = None
    tiny_runs, bare_runs, pairs = [], [], {}
    try:
        addrs, daemon = connect(args, tmp, frontends)
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
        if daemon:
            daemon.stop()
        if pool:
            pool.shutdown()
    return runs, tiny_runs, pairs, bare_runs


def results(args, raw_before: dict, raw_after: dict, runs: list[dict], bare_runs: list[dict],
            tiny_runs: list[dict], pairs: dict) -> dict:
    """The run's results document (printed by print_report, written by --json)."""
    raw, warnings = mean_raw(raw_before["mlp"], raw_after["mlp"])
    add_ratios(runs + bare_runs, raw)
    tiny_res = None
    if args.tiny:
        tiny_raw, tiny_warnings = mean_raw(raw_before["tiny"], raw_after["tiny"], "add_sub ")
        add_ratios(tiny_runs, tiny_raw)
        tiny_res = {"raw": {"before": raw_before["tiny"], "after": raw_after["tiny"],
                            "mean": tiny_raw, "warnings": tiny_warnings}, "runs": tiny_runs}
    return {
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


def main():
    args = parse_args()
    tiny_modes = ["unix", "binary"] if args.tiny else []
    # Spawn, not fork: the parent has onnxruntime threads. Workers only run loadgen.
    pool = (concurrent.futures.ProcessPoolExecutor(args.procs, multiprocessing.get_context("spawn"))
            if args.procs > 1 else None)
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp_name:
        tmp = pathlib.Path(tmp_name)  # short: it holds the Unix sockets (paths <= 107 bytes)
        models = tmp / "models"
        mlp = workload(build_mlp(models / "mlp.onnx"), args.model, mlp_feed)
        tiny_path = build_add_sub(models / "add_sub.onnx") if args.tiny else None
        tiny = workload(tiny_path, "add_sub", tiny_feed) if args.tiny else None
        print("raw onnxruntime (before)...", flush=True)
        raw_before = measure_raw_all(models / "mlp.onnx", tiny_path)
        runs, tiny_runs, pairs, bare_runs = load_runs(args, pool, tmp, mlp, tiny, tiny_modes)
        print("raw onnxruntime (after)...", flush=True)
        raw_after = measure_raw_all(models / "mlp.onnx", tiny_path)

    res = results(args, raw_before, raw_after, runs, bare_runs, tiny_runs, pairs)
    print_report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
