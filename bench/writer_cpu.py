"""Benchmark: the spool writer's CPU in a scoring worker, CSV written in the worker or left to the delivery agent.

In a scoring worker (collector role "writer", `AML_MODEL_DC_DELIVERY=agent`), the spool writer thread shares the
worker's GIL with the request threads: while it writes numbers as text, a request that arrives waits. Since
session 10 it spools numeric arrays as packed records (collector.tabular.pack) and the delivery agent, a process of
its own at nice 10, writes their CSV. This measures what that takes off the worker, side by side in one run:

- the sample (examples/score.py: inputs as a float array, predictions with add_correlations()) served through the
  scoring app in-process (no HTTP), paced (1 ms between calls), CALLS calls after a warm-up;
- requests of 2, 20 and 100 rows of 10 features (random, 3 decimals);
- the writer packing (as committed), and writing all CSV itself (as before; `PACK_BACKLOG_BYTES = 0`, what it does
  while the agent is behind);
- each in a fresh child process, ROUNDS times, alternating; the figure is the writer thread's CPU time
  (time.thread_time() around each batch), microseconds per request, median of rounds.

No agent runs: nothing is delivered (storage is unreachable), so only the worker's side is measured; the agent's
CSV costs what the worker's did (see bench/RESULTS.md for the agent's CPU under the scoring benchmark).

    .venv/bin/python bench/writer_cpu.py [--rounds 3] [--calls 3000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "score.py"
MODEL_DIR = REPO / "examples" / "sample_model"
UNREACHABLE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)
ROWS = (2, 20, 100)
MODES = ("packed", "csv in the worker")


def child(rows: int, mode: str, calls: int) -> None:
    sys.path[:0] = [str(REPO), str(REPO / "collector" / "src")]
    scratch = Path(tempfile.mkdtemp(prefix="tributary-writer-cpu-"))
    from collector import config as dc

    os.environ.update(
        dc.environ_for(
            enabled=True,
            connection_string=UNREACHABLE,
            workspace="bench/bench/bench",
            service_name="writer-cpu",
            model_versions={"sample-model": "1"},
            **{dc.SPOOL_DIR: str(scratch / "spool"), dc.DELIVERY: "agent"},
        )
    )
    os.environ["AZUREML_MODEL_DIR"] = str(MODEL_DIR)
    import collector
    from collector import engine
    from scoring import app, config
    from scoring.stats import WorkerStatus

    # Nothing is delivered here, so the backlog only grows: as if the agent kept up (packed), or as if it were
    # always behind (the CSV written in the worker, as before session 10).
    engine.PACK_BACKLOG_BYTES = 1 << 62 if mode == "packed" else 0
    spent = [0.0]
    write_batch = engine.Engine._write_batch

    def timed(self: engine.Engine, queue: object, limit: int) -> int:
        started = time.thread_time()
        try:
            return write_batch(self, queue, limit)  # type: ignore[arg-type]
        finally:
            spent[0] += time.thread_time() - started

    engine.Engine._write_batch = timed  # type: ignore[method-assign]
    scoring_app, application, _ = app.build(
        config.Settings(entry_script=str(SAMPLE)), WorkerStatus(None, collector.stats)
    )
    assert scoring_app.wait_ready(30), scoring_app.failure
    draw = random.Random(rows)
    body = json.dumps({"data": [[round(draw.random() * 100, 3) for _ in range(10)] for _ in range(rows)]}).encode()

    def call() -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/score", "CONTENT_LENGTH": str(len(body))}
        environ["wsgi.input"] = io.BytesIO(body)
        b"".join(application(environ, lambda status, headers: None))

    for _ in range(300):
        call()
    assert engine.current().spool_now()
    spent[0] = 0.0
    for _ in range(calls):
        call()
        time.sleep(0.001)
    assert engine.current().spool_now()
    print(json.dumps({"writer_us": spent[0] / calls * 1e6}))
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.calls)
        return 0
    results: dict[tuple[int, str], list[float]] = {}
    for round_no in range(args.rounds):
        for rows in ROWS:
            for mode in MODES if round_no % 2 == 0 else reversed(MODES):
                out = subprocess.run(
                    [sys.executable, __file__, "--calls", str(args.calls), "--child", str(rows), mode],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={k: v for k, v in os.environ.items() if not k.startswith("AML_")},
                )
                value = json.loads(out.stdout.strip().splitlines()[-1])["writer_us"]
                results.setdefault((rows, mode), []).append(value)
                print(f"[writer-cpu] round {round_no + 1} rows {rows} {mode}: {value:.1f} us", file=sys.stderr)
    print(f"Command: `.venv/bin/python bench/writer_cpu.py --rounds {args.rounds} --calls {args.calls}`")
    print()
    print("| rows per request | writer µs/request, CSV in the worker | packed | packed / CSV |")
    print("| ---: | ---: | ---: | ---: |")
    for rows in ROWS:
        csv = statistics.median(results[(rows, MODES[1])])
        packed = statistics.median(results[(rows, MODES[0])])
        print(f"| {rows} | {csv:.1f} | {packed:.1f} | {packed / csv:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
