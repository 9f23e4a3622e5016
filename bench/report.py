"""The benchmark's targets (PASS/FAIL), the columns derived from raw onnxruntime, and the printed
tables.
"""

from __future__ import annotations

import numpy as np
from frontends import FRONTEND

P50_TARGET_MS = 0.4  # concurrency 1, HTTP: p50 within this of raw batch-1 p50
TPUT_TARGET = 0.4  # concurrency 64, binary: at least this fraction of raw batch-1 calls/s
UNIX_TINY_P50_MS = 0.150  # tiny model, concurrency 1, unix: p50 within this of raw batch-1 p50
UNIX_VS_BINARY = 2.0  # concurrency 64: unix req/s at least this times HTTP binary's
GRPC_VS_BARE = 0.7  # concurrency 64: grpc req/s at least this fraction of the bare grpclib echo's


def add_ratios(runs: list[dict], raw: dict):
    """+p50 and x raw against the mean of raw before/after."""
    for r in runs:
        r["added_p50_ms"] = None if r["p50_ms"] is None else r["p50_ms"] - raw["1"]["p50_ms"]
        r["tput_vs_raw_b1"] = r["rps"] / raw["1"]["calls_s"]


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

