"""Python's cyclic garbage collector, set for a long-running server process (the daemon and
each worker call `settle()` once their start-up is over).

With Python's default (a young collection every 700 net container allocations) the daemon at
gRPC concurrency 64 ran ~75 young collections a second, each walking the few thousand objects
that the requests in flight hold (~0.25 ms apiece), plus full collections over every module
and runtime object loaded at start (~30 ms apiece): about 7% of its CPU. Reference counting
frees almost everything here; only cycles need the collector, and they can wait longer.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # net container allocations between young collections (Python: 700)


def settle(collect: bool = True) -> int:
    """Move everything alive now (imported modules, the runtime, the model) out of the
    collector's view for good, and collect the young generation less often; with `collect`,
    collect first so that no garbage is frozen (a worker skips it: with torch imported it
    takes tens of ms of its cold start). Returns how many objects are frozen."""
    if collect:
        gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()
