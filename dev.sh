#!/usr/bin/env bash
# One entry point for a checkout: sets up .venv (or $VENV) on first use, then
#   ./dev.sh serve [inferd serve flags]   generate the example models and serve them
#   ./dev.sh test  [pytest args]          run the test suite
#   ./dev.sh bench [bench.py args]        run the benchmark (bench/README.md)
#   ./dev.sh package                      build dist/*.deb and dist/*.rpm (root; packaging/build.sh)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

say() { echo "dev.sh: $*" >&2; }

setup() {  # $1: the extras to install; skipped when pyproject.toml has not changed since
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV"
    python3 -m venv "$VENV" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
  fi
  # The install is editable: code changes need no reinstall, only pyproject.toml changes do.
  local stamp="$VENV/.inferd-installed-${1//,/-}" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/inferd" ]; then
    say "installing inferd[$1] into $VENV (the first time takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$1]"
    echo "$want" > "$stamp"
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  serve)
    setup cpu,examples
    say "writing the example models that are missing from examples/models (existing files are kept)"
    "$VENV/bin/python" examples/make_models.py --keep examples/models >/dev/null
    say "starting: inferd serve --models examples/models $* (HTTP 127.0.0.1:8000 and gRPC 127.0.0.1:8001 unless flags say otherwise; Ctrl-C stops)"
    exec "$VENV/bin/inferd" serve --models examples/models "$@" ;;
  test)
    setup test
    # Triton's perf_analyzer for the tests that run it (no registry wheel runs here as is). It
    # needs the network, x86-64 and apt: where it cannot be installed those tests say they are
    # skipped, and the rest run (CI names it in PERF_ANALYZER, which makes it required).
    if [ ! -x .perf-analyzer/bin/perf_analyzer ]; then
      say "installing perf_analyzer into .perf-analyzer (once, about 35 s)"
      bench/perf_analyzer_setup.sh .perf-analyzer >/dev/null || say "perf_analyzer could not be installed: its tests will be skipped"
    fi
    # The load balancers of the fleet tests (tests/fleet), Debian's packages; without them (no
    # apt, no network) those tests say they are skipped (CI sets REQUIRE_BALANCERS=1).
    if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
      say "installing haproxy and nginx (Debian's packages; their services are not started)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx; } >/dev/null 2>&1 \
        || say "haproxy and nginx could not be installed: the fleet tests will be skipped"
    fi
    # promtool checks the shipped Prometheus config and rules (tests/fleet): taken out of Debian's
    # prometheus package without installing it (no service), once.
    if [ ! -x .promtool/promtool ]; then
      say "extracting promtool from Debian's prometheus package into .promtool (once)"
      ( set -e; rm -rf .promtool.tmp; mkdir -p .promtool.tmp; cd .promtool.tmp
        { apt-get download prometheus || { apt-get update -qq && apt-get download prometheus; }; } >/dev/null 2>&1
        dpkg-deb -x prometheus_*.deb x && mkdir -p ../.promtool && mv x/usr/bin/promtool ../.promtool/ ) \
        || say "promtool could not be extracted: its tests will be skipped"
      rm -rf .promtool.tmp
    fi
    if [ -z "${PROMTOOL:-}" ] && [ -x .promtool/promtool ]; then export PROMTOOL=$PWD/.promtool/promtool; fi
    if [ -z "${PERF_ANALYZER:-}" ] && [ -x .perf-analyzer/bin/perf_analyzer ]; then
      export PERF_ANALYZER=$PWD/.perf-analyzer/bin/perf_analyzer
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  bench)
    setup test
    exec "$VENV/bin/python" bench/bench.py "$@" ;;
  package)
    exec packaging/build.sh "$@" ;;
  *)
    echo "usage: ./dev.sh serve|test|bench|package [args]" >&2
    exit 2 ;;
esac
