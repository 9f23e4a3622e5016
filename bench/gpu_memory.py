"""On a machine with an NVIDIA GPU: memory-derived batch limits for real (NVML, onnxruntime-gpu).

Starts the daemon on one model whose every row costs a known amount of GPU memory (a Tile of
`--row-mib` MiB per row, `models/wide`, device auto), prints the fit it measured (base and
bytes per row on cuda:N) and the batch limit it derived, then lets another process take GPU
memory (cuMemAlloc through the CUDA driver, no framework needed) and prints the limit again
after the next recompute: it must shrink. Needs onnxruntime-gpu and nvidia-ml-py in the venv.

    .venv/bin/python bench/gpu_memory.py                 # 64 MiB a row, the hog takes 60% of what is free
    .venv/bin/python bench/gpu_memory.py --row-mib 256 --hog-fraction 0.8
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import make_models  # noqa: E402
from server import Server  # noqa: E402

# Runs in its own process: holds `bytes` of GPU memory on device 0 until its stdin closes.
HOG = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
def check(result, what):
    if result != 0:
        sys.exit(f"{what} failed: CUresult {result}")
check(cuda.cuInit(0), "cuInit")
device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
check(cuda.cuDeviceGet(ctypes.byref(device), int(sys.argv[2])), "cuDeviceGet")
check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(int(sys.argv[1]))), "cuMemAlloc")
print("allocated", flush=True)
sys.stdin.read()
"""


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row-mib", type=int, default=64, help="GPU memory a row costs (the Tile's size)")
    parser.add_argument("--max-batch-size", type=int, default=4096)
    parser.add_argument("--hog-fraction", type=float, default=0.6, help="share of the free GPU memory the other process takes")
    args = parser.parse_args()
    import onnxruntime
    import pynvml

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("onnxruntime has no CUDA provider (install onnxruntime-gpu): nothing to measure")
        return 2
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    print(f"GPU 0: {pynvml.nvmlDeviceGetName(handle)}, driver {pynvml.nvmlSystemGetDriverVersion()}")
    with tempfile.TemporaryDirectory(prefix="inferd-gpu-") as tmp:
        server = serve_wide(pathlib.Path(tmp), args)
        try:
            return measure(server, args)
        finally:
            server.stop()


def serve_wide(tmp: pathlib.Path, args) -> Server:
    """The daemon on the `wide` model alone, HTTP only, recomputing limits every 0.5 s."""
    make_models.build_wide(tmp / "models" / "wide" / "1" / "model.onnx", width=256, repeats=args.row_mib * 1024)
    (tmp / "models" / "wide" / "config.toml").write_text(f"max_batch_size = {args.max_batch_size}\nidle_timeout_s = 0\n")
    (tmp / "inferd.toml").write_text("[memory]\ncheck_interval_s = 0.5\n")
    cmd = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp / "models"), "--config", str(tmp / "inferd.toml"),
           "--http", "127.0.0.1:0", "--grpc", "", "--socket", "", "--log-format", "json"]
    return Server(cmd, tmp, "inferd", frontends=("http",), timeout=300)


def measure(server: Server, args) -> int:
    """The fit and batch limit, the limit while another process holds GPU memory and after it lets go."""
    host, port = server.addresses["http"]
    url = f"http://{host}:{port}"
    [probe] = server.events("memory probe")
    print("probe:", probe["probe"], json.dumps(probe["devices"]))
    fits = server.events("memory fit")
    if not fits:
        print("no memory fit was logged:", *list(server.stderr_tail)[-10:], sep="\n  ")
        return 1
    fit = fits[0]
    print(f"fit on {fit['device']}: base {fit['base_bytes'] / 2**20:,.0f} MiB, {fit['bytes_per_row'] / 2**20:,.1f} MiB per row"
          f" (expected about {args.row_mib} MiB), points {fit['points']}")
    before = metrics(url)
    limit = before['inferd_model_batch_limit{model="wide",version="1"}']
    free = before.get(f'inferd_device_memory_free_bytes{{device="{fit["device"]}"}}', 0)
    print(f"free on {fit['device']}: {free / 2**30:,.1f} GiB -> batch limit {limit:.0f} (max_batch_size {args.max_batch_size})")
    take = int(free * args.hog_fraction)
    gpu = fit["device"].partition(":")[2] or "0"
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(take), gpu], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if hog.stdout.readline().strip() != "allocated":
            print("the other process could not take GPU memory")
            return 1
        time.sleep(2)  # a few recomputes (check_interval_s 0.5)
        after = metrics(url)
        shrunk = after['inferd_model_batch_limit{model="wide",version="1"}']
        free_after = after.get(f'inferd_device_memory_free_bytes{{device="{fit["device"]}"}}', 0)
        print(f"another process took {take / 2**30:,.1f} GiB: free {free_after / 2**30:,.1f} GiB -> batch limit {shrunk:.0f}")
        hog.stdin.close()
        hog.wait(30)
        hog = None
    finally:
        if hog is not None:
            hog.kill()
    time.sleep(2)
    back = metrics(url)['inferd_model_batch_limit{model="wide",version="1"}']
    print(f"it let go: batch limit {back:.0f}")
    ok = fit["device"].startswith("cuda:") and shrunk < limit and back > shrunk
    print("PASS" if ok else "FAIL", "(the limit shrank while the memory was taken, and grew back)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
