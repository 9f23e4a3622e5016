"""Memory probes: how much memory each device has free, and how much a worker process uses.

One interface, two probes, picked by what the machine has:

- `HostProbe`: the host's memory (/proc/meminfo MemAvailable and MemTotal) as device "cpu",
  bounded by the daemon's cgroup memory limit where there is one (systemd's MemoryMax=, a
  container's limit: cgroup v2 memory.max and memory.current, v1 memory.limit_in_bytes and
  memory.usage_in_bytes, the tightest of its cgroup and their ancestors), and a process's
  resident memory (RSS; peak RSS through /proc/PID/status VmHWM, reset by
  writing 5 to /proc/PID/clear_refs).
- `NvmlProbe`: the host as above, plus every NVIDIA GPU as "cuda:N" through NVML
  (nvidia-ml-py's `pynvml`): free/total per GPU, and a process's usage from the GPU's list of
  running processes. GPU allocators keep what they took, so a process's usage after a run is
  its peak.

`pick_probe()` chooses: NVML when the library loads and sees a GPU, else the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import structlog

log = structlog.get_logger("inferd.memory")

CPU = "cpu"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceMemory:
    device: str  # "cpu" or "cuda:N"
    free: int
    total: int


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, ...)."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _status_bytes(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED_V1 = 2**62  # cgroup v1 spells "no limit" as a huge page-rounded number


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # v2's "max": no limit


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


# (hierarchy under the root, limit file, usage file, reclaimable page cache in memory.stat)
_V2 = (("", "memory.max", "memory.current", "inactive_file"),
       ("unified", "memory.max", "memory.current", "inactive_file"))
_V1 = (("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),)


def cgroup_memory(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> tuple[int, int] | None:
    """(limit, free) of the tightest memory limit on this process's cgroup or an ancestor of it
    (free: the limit less what is charged, inactive page cache being reclaimable); None where
    no limit applies. `root`: where the cgroup hierarchies are mounted."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    tightest = None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        layouts = _V2 if controllers == "" else _V1 if "memory" in controllers.split(",") else ()
        for sub, limit_file, usage_file, cache_key in layouts:
            base = Path(root, sub)
            directory = Path(base, path.lstrip("/"))
            for d in (directory, *directory.parents):
                limit = _read_int(d / limit_file)
                if limit is not None and limit < _UNLIMITED_V1:
                    used = (_read_int(d / usage_file) or 0) - _stat_value(d / "memory.stat", cache_key)
                    free = max(0, limit - max(0, used))
                    if tightest is None or free < tightest[1]:
                        tightest = (limit, free)
                if d == base or not d.is_relative_to(base):
                    break
    return tightest


class HostProbe:
    """Host memory only: every worker runs on "cpu". `cgroup_root`: where the cgroup
    hierarchies are mounted (default /sys/fs/cgroup), read with /proc/self/cgroup."""

    kind = "host"
    cgroup_root = CGROUP_ROOT

    def __init__(self, cgroup_root: str = CGROUP_ROOT) -> None:
        self.cgroup_root = cgroup_root

    def gpus(self) -> list[int]:
        return []

    def devices(self) -> list[DeviceMemory]:
        info = meminfo()
        free, total = info.get("MemAvailable", 0), info.get("MemTotal", 0)
        if (limited := cgroup_memory(self.cgroup_root)) is not None:
            total, free = min(total, limited[0]), min(free, limited[1])
        return [DeviceMemory(CPU, free, total)]

    def device(self, name: str) -> DeviceMemory | None:
        return next((d for d in self.devices() if d.device == name), None)

    def usage(self, pid: int, device: str) -> int:
        """What process `pid` holds now on `device` (host: RSS)."""
        return rss_bytes(pid) if device == CPU else 0

    def reset_peak(self, pid: int) -> None:
        """Start a new peak measurement for `pid` (host: reset VmHWM to the current RSS)."""
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # an older kernel: the peak is then the lifetime peak, still an upper bound

    def peak(self, pid: int, device: str) -> int:
        """The most `pid` held on `device` since reset_peak (host: VmHWM)."""
        if device == CPU:
            return _status_bytes(pid, "VmHWM") or rss_bytes(pid)
        return 0

    def close(self) -> None:
        pass


class NvmlProbe(HostProbe):
    """The host plus NVIDIA GPUs, through an NVML module (`pynvml`, or a stand-in in tests)."""

    kind = "nvml"

    def __init__(self, nvml) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def gpus(self) -> list[int]:
        return list(range(len(self._handles)))

    def devices(self) -> list[DeviceMemory]:
        out = super().devices()
        for index, handle in enumerate(self._handles):
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(DeviceMemory(f"cuda:{index}", int(info.free), int(info.total)))
        return out

    def usage(self, pid: int, device: str) -> int:
        if device == CPU:
            return super().usage(pid, device)
        handle = self._handles[int(device.partition(":")[2])]
        used = 0
        for list_processes in (self.nvml.nvmlDeviceGetComputeRunningProcesses,
                               self.nvml.nvmlDeviceGetGraphicsRunningProcesses):
            for process in list_processes(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    used += int(process.usedGpuMemory)
        return used

    def peak(self, pid: int, device: str) -> int:
        # CUDA allocators (onnxruntime's arena, torch's caching allocator) keep what they took.
        if device == CPU:
            return super().peak(pid, device)
        # In a container NVML may not list the processes of its PID namespace: the device's
        # used memory then stands in (its growth is still the process's, the base is not).
        return self.usage(pid, device) or next(d.total - d.free for d in self.devices() if d.device == device)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


def pick_probe(nvml=None) -> HostProbe:
    """NVML when it loads and sees at least one GPU, else the host. `nvml`: the NVML module
    to use (default: import pynvml from nvidia-ml-py)."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return HostProbe()
    try:
        probe = NvmlProbe(nvml)
    except Exception as e:  # no driver, no device, a container without /dev/nvidia*
        log.info("no GPU memory probe; sizing from host memory", reason=f"{type(e).__name__}: {e}")
        return HostProbe()
    if not probe.gpus():
        probe.close()
        return HostProbe()
    return probe


# -- per-row cost ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class MemoryFit:
    """Memory a worker of one model version holds at a batch of `rows`: base + rows x per_row,
    fitted (least squares) to (rows, bytes) measured when the version loaded."""

    device: str
    base: int
    per_row: int
    points: tuple[tuple[int, int], ...]

    def at(self, rows: int) -> int:
        return self.base + rows * self.per_row


def fit_line(device: str, points: list[tuple[int, int]]) -> MemoryFit:
    """Least-squares line through (rows, bytes); a slope at or below zero (the cost is too
    small to see) is 0: no memory-derived limit."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    per_row = max(0, round(slope))
    base = max(0, round(mean_y - per_row * mean_x))
    return MemoryFit(device, base, per_row, tuple(points))


def profile_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a new version is measured at: 1, a quarter of the limit, the limit."""
    if max_batch_size <= 1:
        return [1]
    return sorted({1, max(2, max_batch_size // 4), max_batch_size})


# -- limits ------------------------------------------------------------------------------------

def reserve_of(total: int, reserve_fraction: float, reserve_bytes: int) -> int:
    return int(reserve_fraction * total) + reserve_bytes


def batch_limit(configured: int, per_row: int, share: float) -> int:
    """min(configured, share / per_row), at least 1; `configured` when the cost is unknown."""
    if configured <= 0:
        return configured  # no batching: nothing to size
    if per_row <= 0:
        return configured
    return max(1, min(configured, int(share // per_row)))
