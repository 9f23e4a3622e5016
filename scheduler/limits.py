"""Batch and queue limits from measured free memory, and where (and whether) a worker may start.

Every model version that serves is a `Tenant`: its pool, the device its workers run on, the fit
of what a batch costs there (base + rows x per_row, measured when it loaded), and the one owner
of its queue's limits (the queue reads them; an out-of-memory batch asks for a recompute).
`MemoryManager.recompute()` re-derives every tenant's limits, periodically and whenever a
tenant comes, goes or scales:

    headroom(device) = free + what our workers hold above their base - reserve
                       (and at most budget - the sum of our workers' base, with a budget)
    share            = headroom / the workers on the device (a cold tenant counts as one)
    batch limit      = min(max_batch_size, share / per_row, the ceiling an out-of-memory set)

so models that share a device leave each other room. Queues are host memory: their budget
(`queue_budget_bytes`, or a tenth of the host's headroom) is split among the tenants, in bytes
and, through the bytes a row of input takes, in rows.

`admit()` is asked before a worker starts: its base must fit in free memory above the reserve
(and in the budget). If it does not, and `evict_idle` is on, idle tenants on that device are
scaled to zero, least recently used first, until it does; otherwise it answers a Refusal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable

import structlog

from inferd.config.settings import MemorySection
from inferd.scheduler.memory import CPU, HostProbe, MemoryFit, batch_limit, fit_line, profile_sizes, reserve_of
from inferd.scheduler.pool import Refusal
from inferd.scheduler.worker import WorkerLost

log = structlog.get_logger("inferd.memory")


class LimitsObserver:
    """Hooks for metrics; the default does nothing."""

    def device_memory(self, device: str, free: int, total: int) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    batch_rows: int
    queue_rows: int
    queue_bytes: int


class Tenant:
    """One model version's claim on memory, and its queue's limits (inferd.scheduler.queue's
    QueueLimits): `batch_rows`, `queue_rows` and `queue_bytes` are set by `apply` only."""

    def __init__(self, name: str, version: str, pool, *, max_batch_size: int, max_queue_rows: int,
                 max_queue_bytes: int, row_bytes: int, min_workers: int, device: str, fit: MemoryFit | None,
                 recompute: Callable[[], None], observer=None):
        self.name, self.version = name, version
        self.pool = pool
        self.max_batch_size = max_batch_size  # configured
        self.max_queue_rows = max_queue_rows  # configured; 0: derived
        self.max_queue_bytes = max_queue_bytes  # configured; 0: derived
        self.row_bytes = row_bytes  # input bytes per row (typical sizes for dynamic dimensions)
        self.min_workers = min_workers
        self.device = device
        self.fit = fit
        self.oom_ceiling: int | None = None  # set by an out-of-memory batch, for this generation
        self.observer = observer
        self._recompute = recompute  # the manager's: every tenant's limits, now
        self.limits: Limits | None = None
        # The queue's limits until the manager's first recompute (when the tenant is added).
        self.batch_rows, self.queue_rows, self.queue_bytes = max_batch_size, max_queue_rows, max_queue_bytes

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version}"

    def out_of_memory(self, rows: int) -> None:
        """A batch of `rows` ran out of memory: the limit is at most half of it from now on,
        in force before this returns (the queue splits the batch next)."""
        self.oom_ceiling = max(1, min(rows // 2, self.oom_ceiling or rows))
        self._recompute()

    def apply(self, limits: Limits, used: int) -> None:
        # Logged when the batch or row limits move; the byte budget follows free memory all the time.
        changed = self.limits is None or (limits.batch_rows, limits.queue_rows) != (self.limits.batch_rows, self.limits.queue_rows)
        self.limits = limits
        self.batch_rows, self.queue_rows, self.queue_bytes = limits.batch_rows, limits.queue_rows, limits.queue_bytes
        if self.observer is not None:
            self.observer.memory_limits(limits.batch_rows, limits.queue_rows, limits.queue_bytes,
                                        self.fit.per_row if self.fit else 0, used)
        if changed:
            log.info("memory limits", model=self.name, version=self.version, device=self.device,
                     batch_limit=limits.batch_rows, queue_rows=limits.queue_rows, queue_bytes=limits.queue_bytes,
                     bytes_per_row=self.fit.per_row if self.fit else None, used_bytes=used)


PROFILE_MAX_ROWS = 64  # larger limits are extrapolated from the line: measuring costs load time


async def measure(pool, probe: HostProbe, max_batch_size: int, dim: int) -> MemoryFit | None:
    """Run a just-validated version's idle worker at a few batch sizes on synthetic inputs and
    fit its memory (peak RSS on the host, GPU memory on a GPU) to the rows. None when the model
    does not run on synthetic inputs (its limits are then the configured ones)."""
    worker = pool.take()
    if worker is None:
        log.warning("memory not measured: no idle worker", model=pool.spec.model, version=pool.spec.version)
        return None
    points: list[tuple[int, int]] = []
    try:
        for rows in profile_sizes(min(max_batch_size, PROFILE_MAX_ROWS)) if max_batch_size else [1]:
            probe.reset_peak(worker.pid)
            reply = await worker.profile(rows, dim)
            if not reply["ok"]:
                log.info("memory not measured at this batch size", model=pool.spec.model, version=pool.spec.version,
                         rows=rows, reason=reply["error"])
                break
            points.append((rows, probe.peak(worker.pid, worker.device)))
    except WorkerLost:
        log.warning("memory not measured: the worker exited", model=pool.spec.model, version=pool.spec.version)
        return None
    finally:
        pool.give_back(worker)
    return fit_line(worker.device, points) if points else None


class MemoryManager:
    def __init__(self, probe: HostProbe, section: MemorySection, observer: LimitsObserver | None = None):
        self.probe = probe
        self.section = section
        self.observer = observer or LimitsObserver()
        self.tenants: set[Tenant] = set()
        self._scheduled = False
        self._task: asyncio.Task | None = None

    # -- tenants -----------------------------------------------------------------------------

    def configure(self, section: MemorySection) -> None:
        """New [memory] settings (SIGHUP): in force at once."""
        self.section = section
        self.recompute()

    def add(self, tenant: Tenant) -> None:
        self.tenants.add(tenant)
        self.recompute()

    def remove(self, tenant: Tenant) -> None:
        self.tenants.discard(tenant)
        self.changed()

    def changed(self) -> None:
        """Something scaled or moved: recompute at the end of this loop turn (once)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._recompute_scheduled)

    def _recompute_scheduled(self) -> None:
        self._scheduled = False
        self.recompute()

    def start(self) -> None:
        self._task = asyncio.create_task(self._periodic())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.probe.close()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.section.check_interval_s)
            try:
                self.recompute()
            except Exception:
                log.exception("recomputing memory limits failed")

    # -- limits ------------------------------------------------------------------------------

    def _reserve(self, total: int) -> int:
        return reserve_of(total, self.section.reserve_fraction, self.section.reserve_bytes)

    def recompute(self) -> None:
        """Every tenant's limits from the memory free now (each tenant's `apply`)."""
        devices = {d.device: d for d in self.probe.devices()}
        for d in devices.values():
            self.observer.device_memory(d.device, d.free, d.total)
        batch_rows: dict[Tenant, int] = {}
        used_by: dict[Tenant, int] = {}
        for device in {t.device for t in self.tenants}:
            tenants = [t for t in self.tenants if t.device == device]
            usage = {t: [self.probe.usage(pid, device) for pid in t.pool.pids] for t in tenants}
            used_by.update((t, sum(usage[t])) for t in tenants)
            share = self._share(devices.get(device), usage)
            for t in tenants:
                # A device the probe cannot see (share None): the configured limit.
                limit = t.max_batch_size if share is None else batch_limit(t.max_batch_size, t.fit.per_row if t.fit else 0, share)
                if t.oom_ceiling is not None and limit > 0:
                    limit = min(limit, t.oom_ceiling)
                batch_rows[t] = limit
        self._apply(devices[CPU], batch_rows, used_by)

    def _share(self, memory, usage: dict[Tenant, list[int]]) -> float | None:
        """The memory each worker on a device may use for its batches (None: unknown)."""
        if memory is None:
            return None
        held = sum(max(0, u - t.fit.base) for t, used in usage.items() if t.fit for u in used)
        bases = sum(t.fit.base if t.fit else u for t, used in usage.items() for u in used)
        headroom = memory.free + held - self._reserve(memory.total)
        if self.section.budget_bytes:
            headroom = min(headroom, self.section.budget_bytes - bases)
        workers = sum(max(1, len(used)) for used in usage.values())
        return max(0.0, headroom / workers)

    def _apply(self, host, batch_rows: dict[Tenant, int], used_by: dict[Tenant, int]) -> None:
        """Queue limits (host memory, shared equally) beside each batch limit, applied."""
        queue_budget = self.section.queue_budget_bytes or max(0, host.free - self._reserve(host.total)) // 10
        per_tenant = queue_budget // max(1, len(self.tenants))
        for t in self.tenants:
            rows = batch_rows[t]
            queue_bytes = t.max_queue_bytes or per_tenant
            queue_rows = t.max_queue_rows
            if not queue_rows:
                queue_rows = max(16 * rows, 256)
                if t.row_bytes:
                    queue_rows = min(queue_rows, queue_bytes // t.row_bytes)
                queue_rows = max(queue_rows, rows, 1)
            t.apply(Limits(rows, queue_rows, queue_bytes), used_by[t])

    # -- placement ---------------------------------------------------------------------------

    def choose_gpu(self) -> int | None:
        """For device = "auto": the GPU with the most free memory (None without GPUs)."""
        gpus = [d for d in self.probe.devices() if d.device != CPU]
        if not gpus:
            return None
        return int(max(gpus, key=lambda d: d.free).device.partition(":")[2])

    def _refusal(self, device: str, needed: int) -> Refusal | None:
        memory = self.probe.device(device)
        if memory is None:
            return None  # nothing to check against
        reserve = self._reserve(memory.total)
        if memory.free - needed < reserve:
            return Refusal("memory", f"not enough memory on {device} for another worker: it needs about {_mb(needed)}, "
                                     f"{_mb(memory.free)} is free and {_mb(reserve)} is kept in reserve")
        if self.section.budget_bytes:
            ours = sum(self.probe.usage(pid, device) for t in self.tenants if t.device == device for pid in t.pool.pids)
            if ours + needed > self.section.budget_bytes:
                return Refusal("budget", f"memory budget of {_mb(self.section.budget_bytes)} on {device} reached: "
                                         f"the workers hold {_mb(ours)} and another needs about {_mb(needed)}")
        return None

    async def admit(self, device: str, needed: int, requester: str,
                    exclude: tuple[str, str] | None = None) -> Refusal | None:
        """None when a worker of about `needed` bytes may start on `device`; else why not.
        With evict_idle, idle tenants on the device (other than the version `exclude`, the
        requester's own) are scaled to zero (least recently used first) to make room."""
        reason = self._refusal(device, needed)
        if reason is None or not self.section.evict_idle:
            return reason
        candidates = sorted((t for t in self.tenants if t.device == device and (t.name, t.version) != exclude
                             and t.min_workers == 0 and t.pool.pids and t.pool.all_idle and not t.pool.pinned()),
                            key=lambda t: t.pool.last_used)
        for victim in candidates:
            if not victim.pool.all_idle or victim.pool.pinned():
                continue
            log.info("scaling an idle model to zero to make room", model=victim.name, version=victim.version,
                     device=device, for_model=requester, idle_s=round(time.monotonic() - victim.pool.last_used, 1))
            await victim.pool.scale_to_zero(f"evicted: {requester} needed memory on {device}")
            reason = self._refusal(device, needed)
            if reason is None:
                self.changed()
                return None
        return reason


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if abs(n) >= 2**20 else f"{math.ceil(n / 1024):,} KiB"
