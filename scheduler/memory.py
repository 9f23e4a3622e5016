"""Host memory, read from /proc: what the pool asks before it adds a worker."""

from __future__ import annotations

import os


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


def room_for_another(pids: list[int], reserve_fraction: float, reserve_bytes: int) -> bool:
    """Would one more worker as large as the largest of `pids` leave the reserve free?"""
    info = meminfo()
    needed = max((rss_bytes(p) for p in pids), default=0)
    reserve = reserve_fraction * info.get("MemTotal", 0) + reserve_bytes
    return info.get("MemAvailable", 0) - needed >= reserve
