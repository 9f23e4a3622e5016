"""The fleet scenarios of tests/fleet, from the command line, repeated: three daemons on loopback
behind HAProxy running the shipped packaging/fleet/haproxy.cfg, models from moto's S3 server,
closed-loop HTTP (small and over HAProxy's buffer) and gRPC clients; then one host SIGKILLed
(`kill`), one host SIGTERMed with a drain delay (`term`), a new version uploaded (`version`).
Prints, per trial, the failed requests (with reasons) and the times; `--json` writes them all.

    .venv/bin/python bench/fleet.py                               # each scenario once
    .venv/bin/python bench/fleet.py --scenarios kill,term --trials 5 --json fleet.json
    .venv/bin/python bench/fleet.py --drain-delay 0 --scenarios term    # no delay: HAProxy must retry
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve()
for path in (HERE.parents[1] / "tests", HERE.parents[1] / "tests" / "fleet", HERE.parents[1] / "examples"):
    sys.path.insert(0, str(path))

from harness_load import Load  # noqa: E402
from harness_scenarios import kill_one, new_version, running_fleet, stop_one  # noqa: E402
from s3_server import S3Server  # noqa: E402

SCENARIOS = {"kill": kill_one, "term": stop_one, "version": new_version}
TIMES = ("seconds_to_haproxy_down", "seconds_to_exit", "seconds_upload_to_all_hosts",
         "seconds_upload_to_first_v2_through_haproxy")


def trial(name: str, args: argparse.Namespace) -> dict:
    """One scenario on a fresh fleet (and a fresh store)."""
    env = {"INFERD_SERVER_DRAIN_DELAY_S": str(args.drain_delay)} if name == "term" else {}
    with tempfile.TemporaryDirectory(prefix="inferd-fleet-") as tmp, contextlib.ExitStack() as stack:
        root = pathlib.Path(tmp)
        s3 = S3Server(root).start()
        stack.callback(s3.stop)
        fleet, balancer = stack.enter_context(running_fleet(root, s3=s3, env=env))
        load = stack.enter_context(Load(balancer.http_url, balancer.grpc_address, http_clients=args.http_clients,
                                        big_http_clients=args.big_clients, grpc_clients=args.grpc_clients))
        return SCENARIOS[name](fleet, balancer, load)


def line(name: str, result: dict) -> str:
    kinds = {k: v for k, v in result.items() if isinstance(v, dict) and "failures" in v}
    served = " ".join(f"{k} {v['ok']} ok/{v['failed']} failed" for k, v in kinds.items())
    times = " ".join(f"{t.removeprefix('seconds_')}={result[t]:.2f}s" for t in TIMES if result.get(t) is not None)
    reasons = {r: n for v in kinds.values() for r, n in v["failures"].items()}
    return f"{name:8} failed={result['failed']:<3} {served}  {times}" + (f"\n         reasons: {reasons}" if reasons else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="kill,term,version", help="comma-separated: kill, term, version")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--http-clients", type=int, default=2)
    parser.add_argument("--big-clients", type=int, default=1, help="HTTP clients whose requests exceed HAProxy's buffer")
    parser.add_argument("--grpc-clients", type=int, default=2)
    parser.add_argument("--drain-delay", type=float, default=2.0, help="the daemons' server.drain_delay_s (term)")
    parser.add_argument("--json", type=pathlib.Path, help="write every trial's measurements here")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for name in args.scenarios.split(","):
        for _ in range(args.trials):
            result = trial(name, args)
            results.setdefault(name, []).append(result)
            print(line(name, result), flush=True)
    for name, runs in results.items():
        failed = [r["failed"] for r in runs]
        print(f"{name}: failed requests per trial {failed} (mean {statistics.mean(failed):.1f})")
        if name == "version":
            times = [r["seconds_upload_to_all_hosts"] for r in runs if r["seconds_upload_to_all_hosts"] is not None]
            if times:
                print(f"{name}: upload -> every host serving v2: median {statistics.median(times):.2f} s, "
                      f"max {max(times):.2f} s (poll_interval_s {runs[0]['poll_interval_s']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
