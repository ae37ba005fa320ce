"""A scoring process for the multi-process tests: `collector_child.py TAG ROWS THEN [EVERY [EXTRA]]`.

Collects ROWS rows tagged TAG (a flush every EVERY rows, to make many blocks; EXTRA more cells a row), then THEN:
flush (flush and print the counters as JSON), exit (return: atexit delivers), wait (print "ready", sleep until
signalled), spool (write to the spool, print "spooled", sleep until killed), adopt (wait until a dead process's
spool was adopted, flush, print the counters).
"""

import json
import sys
import time

import collector
from collector import ModelDataCollector, engine


def main(tag: str, rows: int, then: str, every: int = 0, extra: int = 0) -> None:
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=["writer", "seq", "payload"])
    for i in range(rows):
        dc.collect([tag, i, f"{tag} row {i}", *range(extra)])
        if every and i % every == every - 1:
            collector.flush(60)
    if then == "flush":
        print(json.dumps({"flushed": collector.flush(60), **collector.stats()}), flush=True)
    elif then == "wait":
        print("ready", flush=True)
        time.sleep(120)
    elif then == "spool":
        engine.current().spool_now()
        print("spooled", flush=True)
        time.sleep(120)
    elif then == "adopt":
        deadline = time.monotonic() + 30
        while collector.stats()["spools_adopted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        print(json.dumps({"flushed": collector.flush(60), **collector.stats()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(int(a) for a in sys.argv[4:]))
