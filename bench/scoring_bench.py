"""Benchmark of the scoring runtime: POST /score of the sample, collection off and on, against azmlinfsrv.

    .venv/bin/python bench/scoring_bench.py             # about 8 minutes; prints a Markdown table
    .venv/bin/python bench/scoring_bench.py --write     # and records it in bench/RESULTS.md ("## Scoring runtime")
    .venv/bin/python bench/scoring_bench.py --quick     # a smoke run

Three servers, each with the same number of worker processes, serve examples/score.py (numpy, two collectors):
- Tributary's runtime (`python -m scoring`: gunicorn gthread), collection off;
- the same, collection on, uploading to Azurite (started here, on loopback) through its delivery agent;
- the published `azureml-inference-server-http` (azmlinfsrv; Flask on gunicorn sync workers), collection off.
  It pins older OpenTelemetry packages than ours, so it lives in its own virtualenv, bench/out/scoring-peer-venv
  (git-ignored; created with pip on first use). It runs its own code path and gunicorn flags, bound to 127.0.0.1
  instead of 0.0.0.0, and loads the sample through bench/scoring_peer_score.py.

Load comes from `wrk` (Debian package `wrk`; a C load generator, so it takes little of the two cores the servers
need), to 127.0.0.1 only, one thread, bounded by seconds and `--max-requests` responses per run:
- saturated: `--connections` keep-alive connections sending as fast as the server answers (azmlinfsrv's sync
  workers close each connection, so wrk reconnects for each of its requests): throughput, the median of rounds;
- paced: `--paced-connections` connections, each pausing `--paced-delay-ms` after every response: latency at a
  moderate load, where collection's extra work has spare CPU (the "adds under 5% to p99" target is read here).
  A shared 2-core machine drifts by tens of percent within a minute, so one run's p99 against another's says
  little. Each round starts both of our servers (collection off and on; the idle one costs nothing) and runs
  `--chunks` short paced runs on each, alternating off, on, on, off, ...; after each run on the collecting server
  the benchmark waits until the delivery agent has delivered its rows (so the next run starts quiet, and the run's
  CPU includes its uploads). wrk writes each run's latency quantiles on a fine grid; a server's p50 and p99 are
  those of all its paced requests together, and the change's 90% interval comes from resampling the pairs of
  back-to-back runs. azmlinfsrv runs alone in each round.
Last, the sample is called in-process (no HTTP), collection off then on, to show each thread's CPU per request:
where collection's cost goes.
Benchmarks, not tests: numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector import config as dc  # noqa: E402
from devstack import free_port, start_azurite  # noqa: E402

PEER_VENV = REPO / "bench" / "out" / "scoring-peer-venv"
PEER_PACKAGE = "azureml-inference-server-http==1.5.1"
SAMPLE = REPO / "examples" / "score.py"
MODEL_DIR = REPO / "examples" / "sample_model"
PAYLOAD = (REPO / "examples" / "sample_request.json").read_text().strip()  # --rows N replaces it


def payload_of(rows: int) -> str:
    """A request of `rows` rows of the sample's 10 features (3 decimals, a fixed draw): a batch-scoring client."""
    draw = random.Random(rows)
    return json.dumps({"data": [[round(draw.random() * 100, 3) for _ in range(10)] for _ in range(rows)]})


RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Scoring runtime"

SCENARIOS = ("tributary, collection off", "tributary, collection on", "azmlinfsrv 1.5.1, collection off")


def say(message: str) -> None:
    print(f"[scoring-bench] {message}", file=sys.stderr, flush=True)


# -- the peer's virtualenv -----------------------------------------------------------------------------------------


def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".installed"
    if marker.exists() and marker.read_text() == PEER_PACKAGE:
        return python
    say(f"installing {PEER_PACKAGE} into {PEER_VENV.relative_to(REPO)} (once)")
    shutil.rmtree(PEER_VENV, ignore_errors=True)
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    import numpy

    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", PEER_PACKAGE, f"numpy=={numpy.__version__}"], check=True
    )
    marker.write_text(PEER_PACKAGE)
    return python


# -- servers ------------------------------------------------------------------------------------------------------


def collection_env(azurite_url: str, service_prefix: str, spool: Path) -> dict[str, str]:
    """What a compute driver sets to collect the sample's rows into Azurite (a fresh service name each time)."""
    return dc.environ_for(
        enabled=True,
        connection_string=azurite_url,
        workspace="bench/bench/bench",
        service_name=f"{service_prefix}-{uuid.uuid4().hex[:8]}",
        model_versions={"sample-model": "1"},
        **{dc.SPOOL_DIR: str(spool)},
    )


def start_server(
    scenario: str,
    workers: int,
    port: int,
    scratch: Path,
    azurite_url: str,
    checkout: Path = REPO,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start one server; ours from `checkout` (another git worktree of the repository: bench/scoring_ab.py)."""
    log = open(scratch / f"server-{port}.log", "wb")  # noqa: SIM115 - the child owns it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "AZUREML_", "SCORING_", "OTEL_"))}
    if scenario.startswith("tributary"):
        # The checkout's collector before the one installed (editable) from this repository.
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(checkout / "collector" / "src")])
        if "collection on" in scenario:
            env.update(collection_env(azurite_url, "bench", scratch / f"spool-{port}"))
        env.update(extra_env or {})
        argv = [sys.executable, "-m", "scoring", "--entry-script", str(SAMPLE), "--model-dir", str(MODEL_DIR)]
        argv += ["--port", str(port), "--workers", str(workers)]
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "collector" / "src")])
        env["XDG_RUNTIME_DIR"] = str(scratch)  # its gunicorn's control socket, away from $HOME
        launcher = (
            "import sys; import azureml_inference_server_http.amlserver as server; "
            "server.DEFAULT_HOST = '127.0.0.1'; sys.argv[0] = 'azmlinfsrv'; server.run()"
        )
        argv = [str(peer_python()), "-c", launcher, "--entry_script", str(REPO / "bench" / "scoring_peer_score.py")]
        argv += ["--model_dir", str(MODEL_DIR), "--port", str(port), "--worker_count", str(workers)]
    return subprocess.Popen(argv, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_scoring(port: int, process: subprocess.Popen, ready_path: str, timeout: float = 60) -> None:
    """Until the server says it is ready (every worker, for ours) and has answered a few scoring requests."""
    deadline = time.monotonic() + timeout

    def get(path: str, data: bytes | None = None) -> int:
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except OSError:
            return 0

    ok = 0
    while ok < 20:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start (exit {process.poll()})")
        if get(ready_path) != 200:
            time.sleep(0.05)
            continue
        ok += get("/score", PAYLOAD.encode()) == 200


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- load ---------------------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_script(scratch: Path, max_requests: int, delay_ms: int = 0) -> Path:
    """POST the sample; stop after `max_requests` responses; wait `delay_ms` after each one (pacing). When
    WRK_QUANTILES names a file, write the run's latency distribution there (see `Latencies`)."""
    body = json.dumps(PAYLOAD)  # a Lua string literal (JSON escapes are valid Lua escapes here)
    path = scratch / f"post-{delay_ms}.lua"
    pacing = f"function delay() return {delay_ms} end" if delay_ms else ""
    path.write_text(
        f"""
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
local seen = 0
function response(status, headers, body)
  seen = seen + 1
  if seen >= {max_requests} then wrk.thread:stop() end
end
{pacing}
function done(summary, latency, requests)
  local out = os.getenv("WRK_QUANTILES")
  if not out then return end
  local f = assert(io.open(out, "w"))
  f:write(string.format("%d %d %d\\n", summary.requests, latency.min, latency.max))
  for i = 1, 999 do f:write(string.format("%.4f %d\\n", i / 1000, latency:percentile(i / 10))) end
  for i = 1, 99 do f:write(string.format("%.6f %d\\n", 0.999 + i / 100000, latency:percentile(99.9 + i / 1000))) end
  f:close()
end
"""
    )
    return path


@dataclass
class Latencies:
    """One wrk run's latencies, as its quantiles on a fine grid (every 0.1%, every 0.001% above 99.9%): enough
    to pool runs, so that a p99 comes from all the requests of many short runs rather than from one run's tail."""

    requests: int
    fractions: list[float]  # ascending, from 0 (the fastest request) to 1 (the slowest)
    micros: list[float]  # the latency at each fraction, microseconds

    @classmethod
    def read(cls, path: Path) -> Latencies:
        head, *rows = path.read_text().split("\n")
        requests, low, high = (int(v) for v in head.split())
        points = [(float(f), float(x)) for f, x in (row.split() for row in rows if row)]
        fractions = [0.0] + [f for f, _ in points] + [1.0]
        return cls(requests, fractions, [float(low)] + [x for _, x in points] + [float(high)])

    def below(self, micros: float) -> float:
        """The fraction of this run's requests that took at most `micros`."""
        i = bisect.bisect_right(self.micros, micros)
        if i == 0:
            return 0.0
        if i == len(self.micros):
            return 1.0
        x0, x1, f0, f1 = self.micros[i - 1], self.micros[i], self.fractions[i - 1], self.fractions[i]
        return f0 + (f1 - f0) * (micros - x0) / (x1 - x0)


def pooled_ms(runs: list[Latencies], quantile: float) -> float:
    """The latency (ms) under which `quantile` of all the runs' requests together were answered."""
    total = sum(r.requests for r in runs)
    low, high = min(r.micros[0] for r in runs), max(r.micros[-1] for r in runs)
    for _ in range(40):  # bisection: far below wrk's microsecond resolution
        middle = (low + high) / 2
        if sum(r.requests * r.below(middle) for r in runs) >= quantile * total:
            high = middle
        else:
            low = middle
    return high / 1000


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """wrk's figures for one run: rps, p50 and p99 (ms), requests, and its `Latencies` under "latencies"."""
    quantiles = script.with_suffix(".quantiles")
    quantiles.unlink(missing_ok=True)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/score",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
        env={**os.environ, "WRK_QUANTILES": str(quantiles)},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if bad or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    figures: dict[str, Any] = {"rps": rps, "p50": latency["50"], "p99": latency["99"], "requests": requests}
    figures["latencies"] = Latencies.read(quantiles)
    return figures


# -- the run ------------------------------------------------------------------------------------------------------


def cpu_ticks(server: int, azurite: int) -> dict[str, int]:
    """CPU clock ticks so far of the server's worker processes, its delivery agent, and Azurite (from /proc)."""

    def ticks(pid: int) -> int:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return 0
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads

    out = {"workers": 0, "agent": 0, "azurite": ticks(azurite)}
    children = Path(f"/proc/{server}/task/{server}/children")
    for pid in map(int, children.read_text().split() if children.exists() else []):
        try:
            agent = b"collector.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out["agent" if agent else "workers"] += ticks(pid)
    return out


# -- where collection's cost goes (in a child process, without HTTP) ----------------------------------------------

CPU_CALLS = 8000


def cpu_child(azurite_url: str) -> None:
    """Serve the sample through the app object directly, paced, and print each thread's CPU per request (JSON)."""
    import io
    import logging
    import threading

    logging.basicConfig(level=logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="tributary-scoring-cpu-"))
    if azurite_url:
        os.environ.update(collection_env(azurite_url, "cpu", scratch / "spool"))
    os.environ["AZUREML_MODEL_DIR"] = str(MODEL_DIR)
    import collector
    from scoring import app, config
    from scoring.stats import WorkerStatus

    scoring_app, application, _ = app.build(
        config.Settings(entry_script=str(SAMPLE)), WorkerStatus(None, collector.stats)
    )
    assert scoring_app.wait_ready(30), scoring_app.failure
    body = PAYLOAD.encode()

    def call() -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/score", "CONTENT_LENGTH": str(len(body))}
        environ["wsgi.input"] = io.BytesIO(body)
        b"".join(application(environ, lambda status, headers: None))

    def cpu_ms() -> dict[str, float]:
        out = {}
        for thread in threading.enumerate():
            try:
                stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            out[thread.name] = (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
        return out

    for _ in range(1000):
        call()
    before = cpu_ms()
    for _ in range(CPU_CALLS):
        call()
        time.sleep(0.001)  # a moderate load: the collector's threads have time to run
    collector.flush(60)
    after = cpu_ms()
    print(json.dumps({name: 1000 * (after[name] - before.get(name, 0)) / CPU_CALLS for name in after}))
    collector.shutdown(10)
    shutil.rmtree(scratch, ignore_errors=True)


def cpu_breakdown(azurite_url: str, rows: int) -> dict[str, dict[str, float]]:
    rows_argv = ["--rows", str(rows)] if rows else []
    out = {}
    for mode, url in (("off", ""), ("on", azurite_url)):
        result = subprocess.run(
            [sys.executable, __file__, "--cpu-child", url or "-", *rows_argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        out[mode] = json.loads(result.stdout.splitlines()[-1])
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return json.loads(response.read())


def settle(port: int) -> None:
    """After a load run on our runtime: until the delivery agent has delivered every row collected (at once with
    collection off), so that the next run, of either server, starts on a quiet machine and this run's CPU
    includes the uploads its rows caused."""
    time.sleep(1.1)  # every worker publishes its counts each second (scoring.stats.PUBLISH_INTERVAL)
    deadline = time.monotonic() + 60
    while True:
        counts = status(port)["collector"]
        if counts.get("rows_delivered", 0) + counts.get("rows_dropped_total", 0) >= counts.get("rows_collected", 0):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the rows collected on port {port} were not delivered within 60 s: {counts}")
        time.sleep(0.1)


class Server:
    """One server under test, started for one round."""

    def __init__(self, scenario: str, args: argparse.Namespace, scratch: Path, azurite: Any) -> None:
        self.scenario, self.azurite = scenario, azurite
        self.ours = scenario.startswith("tributary")
        self.port = free_port()
        self.process = start_server(scenario, args.workers, self.port, scratch, azurite.url)
        try:
            wait_scoring(self.port, self.process, "/ready" if self.ours else "/")
        except BaseException:
            stop_server(self.process)
            raise

    def saturated(self, script: Path, args: argparse.Namespace) -> dict[str, Any]:
        run_wrk(self.port, script, args.connections, args.warmup)
        result = run_wrk(self.port, script, args.connections, args.duration)
        if self.ours:
            settle(self.port)
        return result

    def paced(self, script: Path, args: argparse.Namespace) -> dict[str, Any]:
        """One paced chunk, with the CPU ticks its requests cost (the delivery of their rows included)."""
        before = cpu_ticks(self.process.pid, self.azurite.process.pid)
        result = run_wrk(self.port, script, args.paced_connections, args.chunk)
        if self.ours:
            settle(self.port)
        after = cpu_ticks(self.process.pid, self.azurite.process.pid)
        result["ticks"] = {k: after[k] - before.get(k, 0) for k in after}
        return result

    def stop(self) -> None:
        stop_server(self.process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="for the saturating load")
    parser.add_argument("--paced-connections", type=int, default=4, help="for the paced load")
    parser.add_argument("--paced-delay-ms", type=int, default=4, help="each paced connection's pause between requests")
    parser.add_argument("--duration", type=int, default=6, help="seconds of each saturating load, per server and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=5, help="seconds of each paced run")
    parser.add_argument("--chunks", type=int, default=4, help="paced runs per server and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=200_000, help="per load run")
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--write", action="store_true", help=f"record the table in {RESULTS.relative_to(REPO)}")
    parser.add_argument("--rows", type=int, default=0, help="requests of this many rows, not the sample request")
    parser.add_argument("--cpu-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows:
        global PAYLOAD
        PAYLOAD = payload_of(args.rows)
    if args.cpu_child:
        cpu_child("" if args.cpu_child == "-" else args.cpu_child)
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup, args.chunk, args.chunks = 1, 2, 1, 2, 2
    if not shutil.which("wrk"):
        say("wrk is needed: `apt-get install wrk` (Debian) or your system's package")
        return 2
    peer_python()

    scratch = Path(tempfile.mkdtemp(prefix="tributary-scoring-bench-"))
    azurite = start_azurite()
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(azurite.url).create_container(dc.Settings().container)
    saturating = wrk_script(scratch, args.max_requests)
    paced = wrk_script(scratch, args.max_requests, args.paced_delay_ms)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"saturated": [], "paced": []} for s in SCENARIOS}
    off, on, peer = SCENARIOS
    rows: dict[str, int] = {}
    started = time.time()

    def log(round_no: int, scenario: str, load: str, r: dict[str, Any]) -> None:
        say(
            f"round {round_no + 1}/{args.rounds} {scenario}, {load}: {r['rps']:.0f} req/s, "
            f"p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms"
        )

    try:
        for round_no in range(args.rounds):
            # Ours: both servers up at once, the idle one costing nothing; the paced chunks alternate off, on, on,
            # off, ... so that each pair of chunks shares the machine's conditions of the moment.
            servers = {}
            try:
                for scenario in (off, on) if round_no % 2 == 0 else (on, off):
                    servers[scenario] = Server(scenario, args, scratch, azurite)
                    r = servers[scenario].saturated(saturating, args)
                    results[scenario]["saturated"].append(r)
                    log(round_no, scenario, "saturated", r)
                for chunk in range(args.chunks):
                    for scenario in (off, on) if chunk % 2 == 0 else (on, off):
                        r = servers[scenario].paced(paced, args)
                        results[scenario]["paced"].append(r)
                        log(round_no, scenario, f"paced chunk {chunk + 1}", r)
                counts = status(servers[on].port)["collector"]
                for key in ("rows_collected", "rows_delivered", "rows_dropped_total"):
                    rows[key] = rows.get(key, 0) + counts.get(key, 0)
            finally:
                for server in servers.values():
                    server.stop()
            # azmlinfsrv, alone.
            server = Server(peer, args, scratch, azurite)
            try:
                r = server.saturated(saturating, args)
                results[peer]["saturated"].append(r)
                log(round_no, peer, "saturated", r)
                for chunk in range(args.chunks):
                    r = server.paced(paced, args)
                    results[peer]["paced"].append(r)
                    log(round_no, peer, f"paced chunk {chunk + 1}", r)
            finally:
                server.stop()
        say("measuring where collection's cost goes (in-process, no HTTP)")
        cpu = cpu_breakdown(azurite.url, args.rows)
    finally:
        azurite.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    table = report(results, rows, cpu, args, time.time() - started)
    print(table)
    if args.write:
        record(table)
        say(f"recorded in {RESULTS.relative_to(REPO)}")
    return 0


def interval(off: list[Latencies], on: list[Latencies], quantile: float, draws: int = 1000) -> tuple[float, float]:
    """A 90% bootstrap interval of on's pooled quantile against off's: chunk pairs drawn with replacement (the two
    chunks of a pair ran back to back, so a draw keeps what the machine was doing then)."""
    pairs = list(zip(off, on, strict=True))
    draw = random.Random(4)
    ratios = []
    for _ in range(draws):
        sample = [draw.choice(pairs) for _ in pairs]
        ratios.append(pooled_ms([b for _, b in sample], quantile) / pooled_ms([a for a, _ in sample], quantile) - 1)
    ratios.sort()
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws) - 1]


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    rows: dict[str, int],
    cpu: dict[str, dict[str, float]],
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    def saturated(scenario: str, key: str) -> float:
        return statistics.median(r[key] for r in results[scenario]["saturated"])

    def paced(scenario: str, quantile: float) -> float:
        return pooled_ms([r["latencies"] for r in results[scenario]["paced"]], quantile)

    def paced_rps(scenario: str) -> float:
        runs = results[scenario]["paced"]
        return sum(r["requests"] for r in runs) / (len(runs) * args.chunk)

    def cpu_per_request(scenario: str, key: str) -> float:
        runs = results[scenario]["paced"]
        ticks = sum(r["ticks"][key] for r in runs)
        return ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, sum(r["requests"] for r in runs))

    off, on, peer = SCENARIOS
    flags = (" --quick" if args.quick else "") + (f" --rows {args.rows}" if args.rows else "")
    lines = [
        (
            f"Command: `.venv/bin/python bench/scoring_bench.py{flags}`: {args.workers} worker processes per server; "
            f"{args.rounds} round(s) with fresh servers, {elapsed:.0f} s in all. Saturated = wrk -t1 "
            f"-c{args.connections}, as fast as the server answers, {args.duration} s after {args.warmup} s of warm-up, "
            f"once per server and round (median of rounds). Paced = wrk -t1 -c{args.paced_connections} with "
            f"{args.paced_delay_ms} ms between a response and the next request on each connection (a moderate load), "
            f"in {args.chunks} runs of {args.chunk} s per server and round; ours, collection off and on, alternate "
            "(off, on, on, off, ...), each run after the rows of the one before are delivered; the latency "
            "percentiles are those of all the paced requests of a server together."
        ),
        f"Machine: {machine()}; wrk, Azurite and other work shared it.",
        "",
        "| server | saturated req/s | saturated p50 / p99 ms | paced req/s | paced p50 / p99 ms | paced p99 ms by run |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for scenario in SCENARIOS:
        chunks = ", ".join(f"{r['p99']:.2f}" for r in results[scenario]["paced"])
        lines.append(
            f"| {scenario} | {saturated(scenario, 'rps'):.0f} "
            f"| {saturated(scenario, 'p50'):.2f} / {saturated(scenario, 'p99'):.2f} | {paced_rps(scenario):.0f} "
            f"| {paced(scenario, 0.5):.2f} / {paced(scenario, 0.99):.2f} | {chunks} |"
        )
    low, high = interval(
        [r["latencies"] for r in results[off]["paced"]], [r["latencies"] for r in results[on]["paced"]], 0.99
    )
    pairs = [b["p99"] / a["p99"] - 1 for a, b in zip(results[off]["paced"], results[on]["paced"], strict=True)]

    def change(before: float, after: float) -> str:
        return f"{100 * (after / before - 1):+.1f}%"

    requests = sum(r["requests"] for r in results[on]["paced"])
    lines += [
        "",
        (
            f"- Collection on, paced load: p99 {change(paced(off, 0.99), paced(on, 0.99))} over {requests} requests "
            f"(90% bootstrap interval over the {len(pairs)} pairs of runs: {100 * low:+.1f}% to {100 * high:+.1f}%; "
            f"the median of each pair's own ratio {100 * statistics.median(pairs):+.1f}%), "
            f"p50 {change(paced(off, 0.5), paced(on, 0.5))} (target: p99 under +5%)."
        ),
        (
            f"- Collection on, saturated: throughput {change(saturated(off, 'rps'), saturated(on, 'rps'))}, p99 "
            f"{change(saturated(off, 'p99'), saturated(on, 'p99'))}: the spool writer in each worker, the delivery "
            "agent and Azurite take CPU that the workers would otherwise use."
        ),
        (
            f"- Throughput against azmlinfsrv, saturated: {saturated(off, 'rps') / saturated(peer, 'rps'):.2f}x "
            f"with collection off, {saturated(on, 'rps') / saturated(peer, 'rps'):.2f}x with it on "
            "(target: at least 1x)."
        ),
        (
            f"- Rows, collection on: {rows.get('rows_collected', 0)} collected, {rows.get('rows_delivered', 0)} "
            f"delivered to Azurite, {rows.get('rows_dropped_total', 0)} dropped."
        ),
        (
            "- CPU per request under the paced load, microseconds, from /proc (all threads of each process; Azurite's "
            "own timers cost it some CPU when idle): "
            f"tributary, collection off: workers {cpu_per_request(off, 'workers'):.0f}, Azurite "
            f"{cpu_per_request(off, 'azurite'):.0f}; collection on: workers {cpu_per_request(on, 'workers'):.0f}, "
            f"delivery agent {cpu_per_request(on, 'agent'):.0f}, Azurite {cpu_per_request(on, 'azurite'):.0f}; "
            f"azmlinfsrv: workers {cpu_per_request(peer, 'workers'):.0f}."
        ),
        (
            f"- Where collection's cost goes (the app called in-process, {CPU_CALLS} paced calls, no HTTP; CPU "
            f"microseconds per request of {args.rows or 2} rows in, as many predictions out): request thread {cpu['off']['MainThread']:.0f} "
            f"with collection off, {cpu['on']['MainThread']:.0f} with it on; the collector's spool writer "
            f"{cpu['on'].get('collector-spool-writer', 0):.0f} and uploader {cpu['on'].get('collector-uploader', 0):.0f}. "
            "In the runtime, the spool writer is a thread of each worker (it shares the worker's GIL) and the uploads "
            "run in the delivery agent, a process of their own at nice 10 (collector.agent)."
        ),
    ]
    return "\n".join(lines)


def record(table: str) -> None:
    """Replace this benchmark's section of bench/RESULTS.md (or add it), leaving the other sections alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    body = f"{SECTION}\n\n{table}\n"
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + body + (text[end:] if end >= 0 else "")
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
