#!/usr/bin/env bash
# Installs Triton's perf_analyzer (the standard load tool for V2-protocol servers) into a
# virtualenv, on a machine with no GPU.   Usage: perf_analyzer_setup.sh VENV_DIR
#
# The registry's "perf-analyzer" package is only a placeholder for this platform, so this takes
# the binary that the tritonclient 2.50.0 manylinux wheel bundles (data/bin/perf_analyzer) and
# gives it its two missing shared libraries: libcudart.so.12 (nvidia-cuda-runtime-cu12 wheel; no
# GPU needed) and libb64.so.0d (Debian's libb64-0d, unpacked with dpkg -x, not installed).
# Afterwards VENV_DIR/bin/perf_analyzer works, e.g.:
#   perf_analyzer -m mlp -u 127.0.0.1:8000 -i http --concurrency-range 1:64:8 -b 1
set -euo pipefail
VENV=$(realpath -m "${1:?usage: perf_analyzer_setup.sh VENV_DIR}")
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "tritonclient[all]" nvidia-cuda-runtime-cu12
PA_DIR=$VENV/lib/perf_analyzer; mkdir -p "$PA_DIR"
if [ ! -x "$PA_DIR/perf_analyzer" ]; then
  "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$WORK/tc" tritonclient==2.50.0
  "$VENV/bin/python" - "$WORK/tc" "$PA_DIR" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(src, "tritonclient-2.50.0-*manylinux*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("tritonclient-2.50.0.data/data/bin/perf_analyzer")
out = os.path.join(dst, "perf_analyzer")
open(out, "wb").write(data); os.chmod(out, 0o755)
PY
fi
if [ ! -e "$PA_DIR/libb64.so.0d" ]; then
  (cd "$WORK" && { apt-get download libb64-0d 2>/dev/null || { apt-get update -qq && apt-get download libb64-0d; }; })
  dpkg -x "$WORK"/libb64-0d_*.deb "$WORK/libb64"
  cp "$WORK"/libb64/usr/lib/x86_64-linux-gnu/libb64.so.0d "$PA_DIR/"
fi
CUDART=$("$VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
cat > "$VENV/bin/perf_analyzer" <<EOF2
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$PA_DIR:$CUDART\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$PA_DIR/perf_analyzer" "\$@"
EOF2
chmod +x "$VENV/bin/perf_analyzer"
"$VENV/bin/perf_analyzer" --version 2>&1 | head -1 || true
