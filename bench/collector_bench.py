"""Benchmark of the model data collector against a naive synchronous upload and the published v2 collector.

    .venv/bin/python bench/collector_bench.py            # about 2 minutes; prints a Markdown table
    .venv/bin/python bench/collector_bench.py --quick    # a smoke run with smaller numbers

It starts Azurite (devstack) and a local HTTP sink for the v2 collector (`azureml-ai-monitoring`'s `Collector`,
which posts each payload to an MDC sidecar). The v2 package ships a regular `azureml/__init__.py` that would hide
our `azureml` namespace portion, so it is installed with pip into bench/out/peer-site (git-ignored) and its
scenarios run in a child process with that folder first on PYTHONPATH. Every scenario runs in a fresh child
process; the table comes from this one command. Benchmarks, not tests: numbers move with the machine's load.

Scenarios (a "row" is 10 random float64 features; the batch is a 100 x 10 array, a DataFrame for v2, whose
collect() takes only DataFrames; building the DataFrame is not timed):
- cost: time of one collect() call, p50 and p99, with collection on and off;
- burst: 20,000 rows/s offered for 10 s as single-row calls: rows delivered, dropped, or never sent because the
  caller was blocked;
- sustained: rows/s delivered to Azurite by one process collecting 100-row batches as fast as it can.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_SITE = REPO / "bench" / "out" / "peer-site"
PEER_PACKAGE = "azureml-ai-monitoring==1.0.0"
RESULT = "RESULT "

BURST_RATE = 20_000
BURST_SECONDS = 10.0


# -- scenarios (each runs in its own child process) -------------------------------------------------------------


def _data():
    import numpy as np

    rng = np.random.default_rng(7)
    return rng.random(10).tolist(), rng.random((100, 10))


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples_ns.sort()
    n = len(samples_ns)
    return {"p50": samples_ns[n // 2] / 1000, "p99": samples_ns[min(n - 1, int(n * 0.99))] / 1000, "calls": n}


def _time_calls(fn, arg, calls: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        t = clock()
        fn(arg)
        samples.append(clock() - t)
    return _percentiles(samples)


def _paced(fn, arg, rate: int, seconds: float) -> dict[str, float]:
    """Offer `rate` single-row calls per second for `seconds`; a blocking caller simply falls behind."""
    total = int(rate * seconds)
    sent = 0
    clock = time.perf_counter
    start = clock()
    while sent < total:
        elapsed = clock() - start
        due = min(total, int(elapsed * rate) + 1)
        while sent < due:
            if clock() - start > seconds + 0.05:  # the window is over: what is not sent never will be
                return {"offered": total, "sent": sent, "seconds": clock() - start}
            fn(arg)
            sent += 1
        time.sleep(0.0002)
    return {"offered": total, "sent": sent, "seconds": clock() - start}


def _tributary(designation: str = "inputs"):
    import collector

    return collector, collector.ModelDataCollector(
        "bench_model", designation=designation, feature_names=list("abcdefghij")
    )


def scenario_cost_tributary(quick: bool) -> dict:
    collector, dc = _tributary()
    row, batch = _data()
    calls = 3_000 if quick else 20_000
    out = {"row": _time_calls(dc.collect, row, calls), "batch": _time_calls(dc.collect, batch, calls // 10)}
    collector.flush(120)
    out["delivered"] = collector.stats()["rows_delivered"]
    return out


def _naive_append_blob(folder: str):  # type: ignore[no-untyped-def]
    """A fresh append blob for the naive peer: one synchronous append_block per collect()."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(os.environ["AML_MODEL_DC_STORAGE"])
    with contextlib.suppress(ResourceExistsError):
        service.create_container("modeldata")
    blob = service.get_blob_client("modeldata", f"{folder}/{os.getpid()}/data.csv")
    blob.create_append_blob()
    return blob


def scenario_cost_naive(quick: bool) -> dict:
    import csv
    import io

    blob = _naive_append_blob("naive")

    def collect(data) -> None:
        buf = io.StringIO()
        rows = data.tolist() if hasattr(data, "tolist") else [data]
        csv.writer(buf).writerows(rows)
        blob.append_block(buf.getvalue().encode())

    row, batch = _data()
    calls = 100 if quick else 400
    return {"row": _time_calls(collect, row, calls), "batch": _time_calls(collect, batch, calls // 4)}


def _v2(on_error):
    from azureml.ai.monitoring import Collector

    return Collector(name="model_inputs", on_error=on_error)


def scenario_cost_v2(quick: bool) -> dict:
    import pandas as pd

    errors = [0]
    c = _v2(lambda e: errors.__setitem__(0, errors[0] + 1))
    row, batch = _data()
    row_df = pd.DataFrame([row], columns=list("abcdefghij"))
    batch_df = pd.DataFrame(batch, columns=list("abcdefghij"))
    calls = 1_000 if quick else 3_000
    out = {"row": _time_calls(c.collect, row_df, calls)}
    time.sleep(3)  # let its queue drain, or the batch calls would only measure a full queue
    out["batch"] = _time_calls(c.collect, batch_df, calls // 10)
    out["errors"] = errors[0]
    return out


def scenario_burst_tributary(quick: bool) -> dict:
    collector, dc = _tributary()
    row, _ = _data()
    seconds = 2.0 if quick else BURST_SECONDS
    out = _paced(dc.collect, row, BURST_RATE, seconds)
    out["flushed"] = collector.flush(120)
    stats = collector.stats()
    out["delivered"] = stats["rows_delivered"]
    out["dropped"] = stats["rows_dropped_total"]
    return out


def scenario_burst_v2(quick: bool) -> dict:
    import pandas as pd

    dropped = [0]
    c = _v2(lambda e: dropped.__setitem__(0, dropped[0] + 1))
    row, _ = _data()
    df = pd.DataFrame([row], columns=list("abcdefghij"))
    seconds = 2.0 if quick else BURST_SECONDS
    out = _paced(c.collect, df, BURST_RATE, seconds)
    out["dropped"] = dropped[0]
    # Let its worker drain what its queue accepted (its own teardown, which waits for the queue to empty).
    from azureml.ai.monitoring.init import teardown

    teardown(wait_for_flush=True)
    return out


def scenario_burst_naive(quick: bool) -> dict:
    import csv
    import io

    blob = _naive_append_blob("naive-burst")

    def collect(data) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(data)
        blob.append_block(buf.getvalue().encode())

    row, _ = _data()
    seconds = 2.0 if quick else BURST_SECONDS
    out = _paced(collect, row, BURST_RATE, seconds)
    out["delivered"] = out["sent"]
    out["dropped"] = 0
    return out


def scenario_sustained_tributary(quick: bool) -> dict:
    """Worst case for CSV: random float64 features, 16-17 significant digits each."""
    _, batch = _data()
    return _sustained(batch, quick)


def scenario_sustained_short_tributary(quick: bool) -> dict:
    """Typical measured features: values like 53.127 (three decimals)."""
    _, batch = _data()
    return _sustained((batch * 100).round(3), quick)


def _sustained(batch, quick: bool) -> dict:
    collector, dc = _tributary()
    total = 200_000 if quick else 1_500_000
    start = time.perf_counter()
    sent = 0
    while sent < total:
        if collector.stats()["queue_rows"] > 50_000:  # keep the producer from outrunning the writer
            time.sleep(0.001)
            continue
        for _ in range(20):
            dc.collect(batch)
        sent += 2_000
    flushed = collector.flush(300)
    seconds = time.perf_counter() - start
    stats = collector.stats()
    return {
        "rows": sent,
        "delivered": stats["rows_delivered"],
        "dropped": stats["rows_dropped_total"],
        "blocks": stats["blocks_appended"],
        "bytes": stats["bytes_delivered"],
        "seconds": seconds,
        "flushed": flushed,
    }


SCENARIOS = {name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")}


# -- orchestration ----------------------------------------------------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    """The MDC sidecar stand-in: accepts a payload, counts its rows."""

    rows = 0
    lock = threading.Lock()
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            n = len(json.loads(body))
        except ValueError:
            n = 0
        with _Sink.lock:
            _Sink.rows += n
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _ensure_peer() -> None:
    if (PEER_SITE / "azureml" / "ai" / "monitoring").exists():
        return
    print(f"installing {PEER_PACKAGE} into {PEER_SITE.relative_to(REPO)} ...", file=sys.stderr)
    # Its dependencies (pandas, requests) are already in our environment; --no-deps keeps our pins intact.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PEER_SITE), PEER_PACKAGE],
        check=True,
    )


def _run(name: str, env: dict[str, str], quick: bool, peer: bool = False) -> dict:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "AZUREML_"))}
    child_env.update(env)
    paths = [str(REPO)] + ([str(PEER_SITE)] if peer else [])
    if peer:
        paths.reverse()
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    argv = [sys.executable, __file__, "--scenario", name] + (["--quick"] if quick else [])
    done = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=900)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise RuntimeError(f"scenario {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load:.2f} at start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, for a smoke run")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(RESULT + json.dumps(SCENARIOS[args.scenario](args.quick)), flush=True)
        return

    sys.path.insert(0, str(REPO))
    from devstack import start_azurite

    _ensure_peer()
    machine = _machine()
    azurite = start_azurite()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.daemon_threads = True
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    spool = tempfile.mkdtemp(prefix="collector-bench-spool-")
    on = {
        "AML_MODEL_DC_STORAGE_ENABLED": "true",
        "AML_MODEL_DC_STORAGE": azurite.url,
        "AML_MODEL_DC_SPOOL_DIR": spool,
        "AML_MODEL_DC_QUEUE_MAX_ROWS": "1000000",
        "SERVICE_NAME": "bench",
    }
    off = {"AML_MODEL_DC_STORAGE_ENABLED": "false"}
    v2_on = {
        "AZUREML_MDC_ENABLED": "true",
        "AZUREML_MDC_HOST": "127.0.0.1",
        "AZUREML_MDC_PORT": str(sink.server_address[1]),
    }
    v2_off = {"AZUREML_MDC_ENABLED": "false"}
    q = args.quick
    results: dict[str, dict] = {}
    try:
        results["tributary on"] = _run("cost_tributary", on, q)
        results["tributary off"] = _run("cost_tributary", off, q)
        results["naive append_block"] = _run("cost_naive", on, q)
        results["v2 on"] = _run("cost_v2", v2_on, q, peer=True)
        results["v2 off"] = _run("cost_v2", v2_off, q, peer=True)
        time.sleep(2)
        burst = {"tributary": _run("burst_tributary", on, q), "naive append_block": _run("burst_naive", on, q)}
        before = _Sink.rows
        v2 = _run("burst_v2", v2_on, q, peer=True)
        v2["delivered"] = _Sink.rows - before
        burst["v2 (azureml-ai-monitoring)"] = v2
        sustained = {
            "random float64 (16-17 digits)": _run("sustained_tributary", on, q),
            "3-decimal features (53.127)": _run("sustained_short_tributary", on, q),
        }
    finally:
        sink.shutdown()
        azurite.stop()
    _print(machine, results, burst, sustained, q)


def _print(machine: str, cost: dict, burst: dict, sustained: dict, quick: bool) -> None:
    print(f"Machine: {machine}")
    print(f"Command: .venv/bin/python bench/collector_bench.py{' --quick' if quick else ''}\n")
    print("collect() cost per call, microseconds (per row for the batch: divide by 100)\n")
    print("| collector | 1 row p50 | 1 row p99 | 100-row batch p50 | 100-row batch p99 | batch p50 per row |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in cost.items():
        print(
            f"| {name} | {r['row']['p50']:.1f} | {r['row']['p99']:.1f} | {r['batch']['p50']:.1f} "
            f"| {r['batch']['p99']:.1f} | {r['batch']['p50'] / 100:.2f} |"
        )
    seconds = 2.0 if quick else BURST_SECONDS
    print(f"\nBurst: {BURST_RATE:,} single-row calls/s offered for {seconds:.0f} s\n")
    print("| collector | offered | delivered | dropped | never sent (caller blocked) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in burst.items():
        print(f"| {name} | {r['offered']:,} | {r['delivered']:,} | {r['dropped']:,} | {r['offered'] - r['sent']:,} |")
    print("\nSustained delivery to Azurite, one process, 100-row batches of 10 features (inputs: 18 columns a row)\n")
    print("| data | rows | delivered | dropped | seconds (first collect to flushed) | rows/s | blocks | MB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in sustained.items():
        rate = s["delivered"] / s["seconds"]
        print(
            f"| {name} | {s['rows']:,} | {s['delivered']:,} | {s['dropped']:,} | {s['seconds']:.1f} | {rate:,.0f} "
            f"| {s['blocks']} | {s['bytes'] / s['seconds'] / 1e6:.1f} |"
        )
    ratio = cost["naive append_block"]["row"]["p50"] / cost["tributary on"]["row"]["p50"]
    ratio_v2 = cost["v2 on"]["row"]["p50"] / cost["tributary on"]["row"]["p50"]
    print(f"\n1-row p50: naive / tributary = {ratio:,.0f}x, v2 / tributary = {ratio_v2:,.1f}x")


if __name__ == "__main__":
    main()
