"""Memory probes, fits and limits. The NVML probe runs against a stand-in for the NVML library
(these machines have no GPU: the only fake the project allows); the host probe reads this
machine's /proc for real."""

from __future__ import annotations

import os
import types

import numpy as np

from inferd.config.settings import MemorySection
from inferd.scheduler.limits import MemoryManager, Tenant
from inferd.scheduler.memory import CPU, HostProbe, NvmlProbe, batch_limit, fit_line, pick_probe, profile_sizes

GiB = 1 << 30
MiB = 1 << 20


class FakeNvml:
    """The slice of pynvml the probe uses: a few GPUs, their memory, their processes."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[tuple[int, int]], processes: dict[int, list[tuple[int, int | None]]] | None = None,
                 fail_init: bool = False):
        self.gpus = gpus  # (free, total) per GPU
        self.processes = processes or {}  # gpu index -> [(pid, used bytes or None)]
        self.fail_init = fail_init
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        free, total = self.gpus[handle[1]]
        return types.SimpleNamespace(free=free, total=total, used=total - free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self.processes.get(handle[1], [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return []


# -- fits --------------------------------------------------------------------------------------

def test_fit_recovers_base_and_per_row():
    fit = fit_line(CPU, [(1, 100 * MiB + 3 * MiB), (16, 100 * MiB + 48 * MiB), (64, 100 * MiB + 192 * MiB)])
    assert (fit.base, fit.per_row) == (100 * MiB, 3 * MiB)
    assert fit.at(10) == 130 * MiB
    noisy = fit_line(CPU, [(1, 1000 + 52), (16, 1000 + 805), (64, 1000 + 3190)])
    assert 49 <= noisy.per_row <= 51


def test_a_cost_too_small_to_see_is_no_limit():
    assert fit_line(CPU, [(1, 5000), (16, 5000), (64, 4096)]).per_row == 0
    assert fit_line(CPU, [(1, 5000)]) .per_row == 0 and fit_line(CPU, [(1, 5000)]).base == 5000
    assert batch_limit(64, 0, 10.0) == 64


def test_profile_sizes_and_batch_limit():
    assert profile_sizes(64) == [1, 16, 64] and profile_sizes(4) == [1, 2, 4] and profile_sizes(1) == [1]
    assert batch_limit(64, 1 * MiB, 20.5 * MiB) == 20
    assert batch_limit(64, 1 * MiB, 1000 * MiB) == 64  # never above the configured size
    assert batch_limit(64, 1 * MiB, 0) == 1  # at least one row: the request runs alone
    assert batch_limit(0, 1 * MiB, 1000 * MiB) == 0  # a model without batching stays so


# -- probes ------------------------------------------------------------------------------------

def test_host_probe_reads_this_machine():
    probe = HostProbe()
    [cpu] = probe.devices()
    assert cpu.device == CPU and 0 < cpu.free <= cpu.total
    mine = os.getpid()
    probe.reset_peak(mine)
    before = probe.peak(mine, CPU)
    block = np.ones(64 * MiB // 8)  # 64 MiB touched
    assert probe.peak(mine, CPU) >= before + 60 * MiB
    assert probe.usage(mine, CPU) >= 60 * MiB
    del block
    assert probe.usage(2**22 + 12345, CPU) == 0  # no such process


def test_nvml_probe_with_several_gpus():
    nvml = FakeNvml([(10 * GiB, 16 * GiB), (30 * GiB, 40 * GiB), (2 * GiB, 16 * GiB)],
                    {1: [(4242, 3 * GiB), (4243, None), (4242, 1 * GiB)]})
    probe = pick_probe(nvml)
    assert isinstance(probe, NvmlProbe) and probe.gpus() == [0, 1, 2]
    devices = {d.device: (d.free, d.total) for d in probe.devices()}
    assert devices["cuda:1"] == (30 * GiB, 40 * GiB) and CPU in devices
    assert probe.usage(4242, "cuda:1") == 4 * GiB  # every context of the process on that GPU
    assert probe.usage(4243, "cuda:1") == 0  # NVML could not say: nothing counted
    assert probe.usage(4242, "cuda:0") == 0
    assert probe.peak(4242, "cuda:1") == 4 * GiB
    assert probe.peak(999, "cuda:1") == 10 * GiB  # a process NVML does not list: the device's used memory
    probe.close()
    assert nvml.shut


def test_no_gpu_or_no_driver_falls_back_to_the_host():
    assert type(pick_probe(FakeNvml([], {}))) is HostProbe
    assert type(pick_probe(FakeNvml([(1, 2)], fail_init=True))) is HostProbe


# -- limits ------------------------------------------------------------------------------------

class Pool:
    """The pool's side the manager reads: pids, idleness, when it last ran a batch, scaling to zero."""

    def __init__(self, pids=(), idle=True, last_used=0.0):
        self.pids = list(pids)
        self.all_idle = idle
        self.last_used = last_used
        self.evicted = False
        self.pinned = lambda: False

    async def scale_to_zero(self, reason):
        self.pids, self.evicted = [], True
        return True


def tenant(m, name, device, pids, base, per_row, max_batch=64, **kw):
    from inferd.scheduler.memory import MemoryFit

    fit = MemoryFit(device, base, per_row, ()) if per_row is not None else None
    return Tenant(name, "1", Pool(pids, kw.pop("idle", True), kw.pop("last_used", 0.0)),
                  max_batch_size=max_batch, max_queue_rows=0, max_queue_bytes=0, row_bytes=kw.pop("row_bytes", 1024),
                  min_workers=kw.pop("min_workers", 0), device=device, fit=fit, recompute=m.recompute)


def manager(nvml, **memory) -> MemoryManager:
    return MemoryManager(NvmlProbe(nvml), MemorySection(**{"reserve_fraction": 0.0, **memory}))


def test_models_sharing_a_gpu_split_its_headroom_and_a_pinned_device_uses_its_own():
    # GPU 0: 10 GiB free, shared by a and b (their workers hold just their base); GPU 1 has c.
    nvml = FakeNvml([(10 * GiB, 16 * GiB), (4 * GiB, 16 * GiB)],
                    {0: [(1, 1 * GiB), (2, 1 * GiB)], 1: [(3, 2 * GiB)]})
    m = manager(nvml)
    a = tenant(m, "a", "cuda:0", [1], 1 * GiB, 100 * MiB)
    b = tenant(m, "b", "cuda:0", [2], 1 * GiB, 10 * MiB)
    c = tenant(m, "c", "cuda:1", [3], 1 * GiB, 100 * MiB)  # device = "cuda:1" pinned in its config
    for t in (a, b, c):
        m.add(t)
    assert a.batch_rows == 51  # 5 GiB each (two workers on GPU 0) / 100 MiB
    assert b.batch_rows == 64  # 5 GiB / 10 MiB is over its configured 64
    assert c.batch_rows == 51  # GPU 1: 4 GiB free + the 1 GiB it holds above its base, / 100 MiB
    # Another process takes 6 GiB of GPU 0: a's limit shrinks at the next recompute.
    nvml.gpus[0] = (4 * GiB, 16 * GiB)
    m.recompute()
    assert a.batch_rows == 20 and c.batch_rows == 51
    assert m.choose_gpu() == 0  # the most free: 4 GiB on both; the first of them
    nvml.gpus[1] = (8 * GiB, 16 * GiB)
    assert m.choose_gpu() == 1


async def test_budget_reserve_and_out_of_memory_ceiling():
    nvml = FakeNvml([(10 * GiB, 16 * GiB)], {0: [(1, 1 * GiB)]})
    m = manager(nvml, budget_bytes=3 * GiB)
    t = tenant(m, "a", "cuda:0", [1], 1 * GiB, 100 * MiB)
    m.add(t)
    assert t.batch_rows == 20  # (3 GiB budget - 1 GiB base) / 100 MiB
    m.configure(MemorySection(reserve_fraction=0.5))  # 8 GiB of 16 kept free: 2 GiB left
    assert t.batch_rows == 20
    t.out_of_memory(12)
    assert t.batch_rows == 6  # in force at once: the queue splits the batch next
    m.recompute()
    assert t.batch_rows == 6  # the ceiling an out-of-memory batch set holds
    assert t.queue_rows == 256 and t.queue_bytes > 0


async def test_admission_refuses_with_the_reason_and_evicts_idle_models_lru_first():
    nvml = FakeNvml([(2 * GiB, 16 * GiB)], {0: [(1, 3 * GiB), (2, 3 * GiB), (3, 3 * GiB)]})
    m = manager(nvml, budget_bytes=10 * GiB)
    old = tenant(m, "old", "cuda:0", [1], 3 * GiB, 0, last_used=10.0)
    busy = tenant(m, "busy", "cuda:0", [2], 3 * GiB, 0, last_used=5.0, idle=False)
    warm = tenant(m, "warm", "cuda:0", [3], 3 * GiB, 0, last_used=1.0, min_workers=1)
    for t in (old, busy, warm):
        m.add(t)
    refusal = await m.admit("cuda:0", 3 * GiB, "new version 1")
    assert refusal.kind == "memory"
    assert "not enough memory on cuda:0" in refusal.message and "2,048 MiB is free" in refusal.message
    nvml.gpus[0] = (8 * GiB, 16 * GiB)
    refusal = await m.admit("cuda:0", 3 * GiB, "new version 1")
    assert refusal.kind == "budget" and "memory budget of 10,240 MiB on cuda:0 reached" in refusal.message
    m.configure(MemorySection(reserve_fraction=0.0, budget_bytes=10 * GiB, evict_idle=True))

    async def evicting(reason):  # the stand-in pool frees its process's memory
        old.pool.pids = []
        nvml.processes[0] = [p for p in nvml.processes[0] if p[0] != 1]
        old.pool.evicted = True
        return True

    old.pool.scale_to_zero = evicting
    assert await m.admit("cuda:0", 3 * GiB, "new version 1") is None
    assert old.pool.evicted and not busy.pool.evicted and not warm.pool.evicted  # busy and min_workers stay


async def test_eviction_skips_a_pool_whose_workers_hold_sequences():
    nvml = FakeNvml([(8 * GiB, 16 * GiB)], {0: [(1, 3 * GiB), (2, 3 * GiB)]})
    m = manager(nvml, budget_bytes=6 * GiB, evict_idle=True)  # the budget, not the device, is short
    stateful = tenant(m, "stateful", "cuda:0", [1], 3 * GiB, 0, last_used=1.0)  # the least recently used
    plain = tenant(m, "plain", "cuda:0", [2], 3 * GiB, 0, last_used=5.0)
    stateful.pool.pinned = lambda: True
    for t in (stateful, plain):
        m.add(t)

    async def evicting(reason):
        plain.pool.pids, plain.pool.evicted = [], True
        nvml.processes[0] = [p for p in nvml.processes[0] if p[0] != 2]
        return True

    plain.pool.scale_to_zero = evicting
    assert await m.admit("cuda:0", 3 * GiB, "new version 1") is None
    assert plain.pool.evicted and not stateful.pool.evicted

