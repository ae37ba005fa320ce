"""Probe of where collection's p99 goes in a scoring worker: how long a request thread waits for the GIL.

    .venv/bin/python bench/gil_probe.py                       # off and on, 3 rounds of 6,000 requests (~3 minutes)
    .venv/bin/python bench/gil_probe.py --variants off,on,switch=0.00002,wake=0.005 --rounds 3

A child process serves the sample (examples/score.py) in-process through the runtime's WSGI app, from one thread
that blocks in recv() on a UDP socket, as a gthread worker's thread blocks on its connection. This process sends it
a timestamp every `--gap` seconds (±50%, the rate of one worker under scoring_bench.py's paced load). The child
records, per request, the time from the send to its thread running again ("wake-up": the kernel's wake-up plus the
wait for the GIL) and to the end of the request. With collection on, the child's collector only spools (delivery
"agent", with no agent running), so nothing but the spool writer thread shares the GIL with the request.

Variants: off; on (as committed); switch=S (sys.setswitchinterval(S)); wake=S (the spool writer wakes every S seconds
instead of 20 ms); slice=B/Y (the writer stops every B seconds of encoding and sleeps Y seconds). Each round runs
every variant once, in shuffled order, in a fresh child. A benchmark, not a test: quote medians and compare variants
of one run. bench/RESULTS.md ("where collection's p99 goes") has a run and what it shows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack import azurite_connection_string, free_port  # noqa: E402

SAMPLE = REPO / "examples" / "score.py"
MODEL_DIR = REPO / "examples" / "sample_model"
PAYLOAD = (REPO / "examples" / "sample_request.json").read_text().strip()
WARM_UP = 500


def patch_writer(variant: str) -> None:
    """Apply a variant's change to the collector's spool writer, before it starts."""
    from collector import engine

    name, _, value = variant.partition("=")
    if name == "switch":
        sys.setswitchinterval(float(value))
    elif name == "wake":
        engine.IDLE_POLL = float(value)
    elif name == "slice":
        batch, pause = (float(v) for v in value.split("/"))
        engine.BATCH_SECONDS = batch
        sleep = time.sleep

        class Clock:  # the engine's `time`, whose sleep(0) between slices becomes a real pause
            def __getattr__(self, attr: str) -> object:
                return getattr(time, attr)

            def sleep(self, seconds: float) -> None:
                sleep(seconds or pause)

        engine.time = Clock()  # type: ignore[assignment]


def child(variant: str, port: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="tributary-gil-probe-"))
    if variant != "off":
        from collector import config as dc

        # Storage on a port where nothing listens: the rows are only spooled (no agent runs to deliver them).
        os.environ.update(
            dc.environ_for(
                enabled=True,
                connection_string=azurite_connection_string(free_port()),
                workspace="bench/bench/bench",
                service_name="gil-probe",
                model_versions={"sample-model": "1"},
                **{dc.SPOOL_DIR: str(scratch / "spool"), dc.SPOOL_MAX_BYTES: str(2**34), dc.DELIVERY: "agent"},
            )
        )
        patch_writer(variant)
    os.environ["AZUREML_MODEL_DIR"] = str(MODEL_DIR)
    import collector
    from scoring import app, config
    from scoring.stats import WorkerStatus

    _, application, _ = app.build(config.Settings(entry_script=str(SAMPLE)), WorkerStatus(None, collector.stats))
    body = PAYLOAD.encode()

    def call() -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/score", "CONTENT_LENGTH": str(len(body))}
        environ["wsgi.input"] = io.BytesIO(body)
        b"".join(application(environ, lambda status, headers: None))

    for _ in range(WARM_UP):
        call()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    wakes: list[int] = []
    totals: list[int] = []

    def serve() -> None:
        while (data := sock.recv(64)) != b"stop":
            woke = time.monotonic_ns()
            call()
            done = time.monotonic_ns()
            wakes.append(woke - int(data))
            totals.append(done - int(data))

    thread = threading.Thread(target=serve, name="request")
    thread.start()
    print("ready", flush=True)
    thread.join()
    collector.shutdown(1)
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"wakes": wakes, "totals": totals}), flush=True)


def run(variant: str, count: int, gap: float) -> dict[str, list[int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit(f"the {variant} child did not start")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        sender.sendto(str(time.monotonic_ns()).encode(), ("127.0.0.1", port))
        time.sleep(gap * random.uniform(0.5, 1.5))
    sender.sendto(b"stop", ("127.0.0.1", port))
    out = json.loads(proc.stdout.readline())
    proc.wait(30)
    return out


def quantile_us(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="off,on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6000, help="per variant and round")
    parser.add_argument("--gap", type=float, default=0.0023, help="mean seconds between requests")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    variants = args.variants.split(",")
    pooled: dict[str, dict[str, list[int]]] = {v: {"wakes": [], "totals": []} for v in variants}
    for round_ in range(args.rounds):
        for variant in random.sample(variants, len(variants)):
            out = run(variant, args.requests, args.gap)
            for key in ("wakes", "totals"):
                pooled[variant][key] += out[key]
            print(f"[gil-probe] round {round_ + 1}/{args.rounds} {variant}: done", file=sys.stderr, flush=True)
    print(f"{args.rounds} round(s) of {args.requests} requests per variant, one every {args.gap * 1000:.1f} ms (±50%)")
    print()
    print("| variant | wake-up p50 / p99 / p99.9 µs | request p50 / p99 µs |")
    print("| --- | ---: | ---: |")
    for variant, got in pooled.items():
        w, t = got["wakes"], got["totals"]
        print(
            f"| {variant} | {quantile_us(w, 0.5):.0f} / {quantile_us(w, 0.99):.0f} / {quantile_us(w, 0.999):.0f} "
            f"| {quantile_us(t, 0.5):.0f} / {quantile_us(t, 0.99):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
