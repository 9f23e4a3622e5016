#!/usr/bin/env bash
# One entry point for a checkout: sets up .venv (or $VENV) on first use, then
#   ./dev.sh serve [inferd serve flags]   generate the example models and serve them
#   ./dev.sh test  [pytest args]          run the test suite
#   ./dev.sh bench [bench.py args]        run the benchmark (bench/README.md)
#   ./dev.sh package                      build dist/*.deb and dist/*.rpm (root; packaging/build.sh)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

setup() {  # $1: the extras to install
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$1]"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  serve)
    setup cpu,examples
    "$VENV/bin/python" examples/make_models.py examples/models >/dev/null
    exec "$VENV/bin/inferd" serve --models examples/models "$@" ;;
  test)
    setup test
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
