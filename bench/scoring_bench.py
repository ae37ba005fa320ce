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
need), to 127.0.0.1 only, one thread, bounded by `--duration` seconds and `--max-requests` responses per run:
- saturated: `--connections` keep-alive connections sending as fast as the server answers (azmlinfsrv's sync
  workers close each connection, so wrk reconnects for each of its requests): throughput;
- paced: `--paced-connections` connections, each pausing `--paced-delay-ms` after every response: latency at a
  moderate load, where collection's extra work has spare CPU (the "adds under 5% to p99" target is read here).
Each round starts every server afresh, in a rotating order; the table gives the median of the rounds, so one
noisy round (other work on the machine) moves it less. Last, the sample is called in-process (no HTTP), collection
off then on, to show each thread's CPU per request: where collection's cost goes.
Benchmarks, not tests: numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector import config as dc  # noqa: E402
from devstack import free_port, start_azurite  # noqa: E402

PEER_VENV = REPO / "bench" / "out" / "scoring-peer-venv"
PEER_PACKAGE = "azureml-inference-server-http==1.5.1"
SAMPLE = REPO / "examples" / "score.py"
MODEL_DIR = REPO / "examples" / "sample_model"
PAYLOAD = (REPO / "examples" / "sample_request.json").read_text().strip()
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


def start_server(scenario: str, workers: int, port: int, scratch: Path, azurite_url: str) -> subprocess.Popen:
    log = open(scratch / f"server-{port}.log", "wb")  # noqa: SIM115 - the child owns it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "AZUREML_", "SCORING_", "OTEL_"))}
    if scenario.startswith("tributary"):
        env["PYTHONPATH"] = str(REPO)
        if "collection on" in scenario:
            env.update(collection_env(azurite_url, "bench", scratch / f"spool-{port}"))
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


def worker_shares(port: int) -> str:
    """How our runtime's workers shared the requests (from GET /status), e.g. "52/48%"."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            counts = [w["requests"] for w in json.loads(response.read())["workers"]]
    except (OSError, ValueError, KeyError):
        return "?"
    total = sum(counts) or 1
    return "/".join(f"{100 * c / total:.0f}" for c in counts) + "%"


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
    """POST the sample; stop after `max_requests` responses; wait `delay_ms` after each one (pacing)."""
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
"""
    )
    return path


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, float]:
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
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if bad or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"], "requests": requests}


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


def per_request(ticks: int, load: dict[str, float]) -> float:
    """Microseconds of CPU per request of a load run."""
    return ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, load["requests"])


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


def cpu_breakdown(azurite_url: str) -> dict[str, dict[str, float]]:
    out = {}
    for mode, url in (("off", ""), ("on", azurite_url)):
        result = subprocess.run(
            [sys.executable, __file__, "--cpu-child", url or "-"],
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="for the saturating load")
    parser.add_argument("--paced-connections", type=int, default=4, help="for the paced load")
    parser.add_argument("--paced-delay-ms", type=int, default=4, help="each paced connection's pause between requests")
    parser.add_argument("--duration", type=int, default=6, help="seconds of each measured load, per server and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-requests", type=int, default=200_000, help="per load run")
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--write", action="store_true", help=f"record the table in {RESULTS.relative_to(REPO)}")
    parser.add_argument("--cpu-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_child:
        cpu_child("" if args.cpu_child == "-" else args.cpu_child)
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
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
    results: dict[str, list[dict[str, dict[str, float]]]] = {s: [] for s in SCENARIOS}
    started = time.time()
    try:
        for round_no in range(args.rounds):
            order = SCENARIOS[round_no % 3 :] + SCENARIOS[: round_no % 3]
            for scenario in order:
                port = free_port()
                process = start_server(scenario, args.workers, port, scratch, azurite.url)
                try:
                    wait_scoring(port, process, "/ready" if scenario.startswith("tributary") else "/")
                    run_wrk(port, saturating, args.connections, args.warmup)
                    result = {"saturated": run_wrk(port, saturating, args.connections, args.duration)}
                    before = cpu_ticks(process.pid, azurite.process.pid)
                    result["paced"] = run_wrk(port, paced, args.paced_connections, args.duration)
                    after = cpu_ticks(process.pid, azurite.process.pid)
                    result["cpu"] = {k: per_request(after[k] - before.get(k, 0), result["paced"]) for k in after}
                    shares = worker_shares(port) if scenario.startswith("tributary") else "n/a"
                finally:
                    stop_server(process)
                results[scenario].append(result)
                sat, pac = result["saturated"], result["paced"]
                say(
                    f"round {round_no + 1}/{args.rounds} {scenario}: saturated {sat['rps']:.0f} req/s "
                    f"p50 {sat['p50']:.2f} p99 {sat['p99']:.2f} ms; paced {pac['rps']:.0f} req/s "
                    f"p50 {pac['p50']:.2f} p99 {pac['p99']:.2f} ms; requests by worker {shares}"
                )
        say("measuring where collection's cost goes (in-process, no HTTP)")
        cpu = cpu_breakdown(azurite.url)
    finally:
        azurite.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    table = report(results, cpu, args, time.time() - started)
    print(table)
    if args.write:
        record(table)
        say(f"recorded in {RESULTS.relative_to(REPO)}")
    return 0


def report(
    results: dict[str, list[dict[str, dict[str, float]]]],
    cpu: dict[str, dict[str, float]],
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    def median(scenario: str, load: str, key: str) -> float:
        return statistics.median(r[load][key] for r in results[scenario])

    off, on, peer = SCENARIOS
    flags = " --quick" if args.quick else ""
    lines = [
        (
            f"Command: `.venv/bin/python bench/scoring_bench.py{flags}`: {args.workers} worker processes per server; "
            f"saturated = wrk -t1 -c{args.connections}, as fast as the server answers; paced = wrk -t1 "
            f"-c{args.paced_connections} with {args.paced_delay_ms} ms between a response and the next request on each "
            f"connection (a moderate load); {args.duration} s each, after {args.warmup} s of warm-up; median of "
            f"{args.rounds} round(s) with fresh servers in rotating order; {elapsed:.0f} s in all."
        ),
        f"Machine: {machine()}; wrk, Azurite and other work shared it.",
        "",
        (
            "| server | saturated req/s | saturated p50 / p99 ms | paced req/s | paced p50 / p99 ms "
            "| saturated req/s by round | paced p99 ms by round |"
        ),
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    cpu_lines = []
    for scenario in SCENARIOS:
        rounds = ", ".join(f"{r['saturated']['rps']:.0f}" for r in results[scenario])
        paced_p99s = ", ".join(f"{r['paced']['p99']:.2f}" for r in results[scenario])
        lines.append(
            f"| {scenario} | {median(scenario, 'saturated', 'rps'):.0f} "
            f"| {median(scenario, 'saturated', 'p50'):.2f} / {median(scenario, 'saturated', 'p99'):.2f} "
            f"| {median(scenario, 'paced', 'rps'):.0f} "
            f"| {median(scenario, 'paced', 'p50'):.2f} / {median(scenario, 'paced', 'p99'):.2f} | {rounds} "
            f"| {paced_p99s} |"
        )
        used = {k: statistics.median(r["cpu"][k] for r in results[scenario]) for k in ("workers", "agent", "azurite")}
        if scenario == on:  # only it uses Azurite (and has an agent); elsewhere Azurite's own timers are noise
            cpu_lines.append(
                f"{scenario}: workers {used['workers']:.0f}, delivery agent {used['agent']:.0f}, "
                f"Azurite {used['azurite']:.0f}"
            )
        else:
            cpu_lines.append(f"{scenario}: workers {used['workers']:.0f}")
    # The same round's servers ran minutes apart at most: their ratio is less moved by the machine's drift.
    pairs = [b["paced"]["p99"] / a["paced"]["p99"] - 1 for a, b in zip(results[off], results[on], strict=True)]

    def change(load: str, key: str) -> str:
        return f"{100 * (median(on, load, key) / median(off, load, key) - 1):+.1f}%"

    lines += [
        "",
        (
            f"- Collection on, paced load: p99 {change('paced', 'p99')} (the median of each round's on/off ratio: "
            f"{100 * statistics.median(pairs):+.1f}%, rounds from {100 * min(pairs):+.0f}% to {100 * max(pairs):+.0f}%), "
            f"p50 {change('paced', 'p50')} (target: p99 under +5%)."
        ),
        (
            f"- Collection on, saturated: throughput {change('saturated', 'rps')}, p99 {change('saturated', 'p99')}: the "
            "spool writer in each worker, the delivery agent and Azurite take CPU that the workers would otherwise use."
        ),
        (
            f"- Throughput against azmlinfsrv, saturated: {median(off, 'saturated', 'rps') / median(peer, 'saturated', 'rps'):.2f}x "
            f"with collection off, {median(on, 'saturated', 'rps') / median(peer, 'saturated', 'rps'):.2f}x with it on "
            "(target: at least 1x)."
        ),
        (
            "- CPU per request under the paced load, microseconds, from /proc (all threads of each process): "
            + "; ".join(cpu_lines)
            + "."
        ),
        (
            f"- Where collection's cost goes (the app called in-process, {CPU_CALLS} paced calls, no HTTP; CPU "
            f"microseconds per request of 2 rows in, 2 predictions out): request thread {cpu['off']['MainThread']:.0f} "
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
