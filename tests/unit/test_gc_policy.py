"""The collector settings a daemon or worker process takes once it has started (in a fresh
interpreter: freezing is for the life of the process)."""

import subprocess
import sys

SCRIPT = """
import gc, json
from inferd.common import gc_policy
big = [[i] for i in range(50_000)]  # start-up state: lists the collector tracks
cycle = []; cycle.append(cycle); del cycle  # garbage: collect=True frees it before freezing
frozen = gc_policy.settle(collect={collect})
print(json.dumps({{"frozen": frozen, "count": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                  "young_after": gc.get_count()[0]}}))
"""


def run(collect: bool) -> dict:
    import json
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(collect=collect)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_settle_freezes_what_is_alive_and_raises_the_young_threshold():
    frozen = {}
    for collect in (True, False):
        got = run(collect)
        assert got["frozen"] == got["count"] > 50_000  # the 50,000 lists and the interpreter's own objects
        assert got["threshold"][0] == 50_000
        assert got["young_after"] < 100  # nothing left in the young generation: it was all frozen
        frozen[collect] = got["frozen"]
    assert frozen[False] > frozen[True]  # without the collection, the garbage cycle is frozen too
