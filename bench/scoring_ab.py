"""Side by side: collection's cost on the paced p99 for versions of the runtime, all up at once, in one run.

    .venv/bin/python bench/scoring_ab.py [--cycles 16] [--aa] [NAME=CHECKOUT[:VAR=VALUE,...] ...]

Every version of the collector tried for the "collection on adds under 5% to p99" target (issue 4) needs the same
comparison, and one run's p99 against another's says little on a shared 2-core machine: its p99 moves by 10
points or more within minutes. So this starts, at once, Tributary's runtime from this checkout with collection off
("off") and on ("on"), and one server for each NAME: the runtime from CHECKOUT (a `git worktree` of this
repository, say with a change to try), collection on, with the environment variables given. `--aa` adds a second
server of "off" ("off again"): the noise floor, what a change of nothing measures.

Then, `--cycles` times, every server gets one paced run (the load of bench/scoring_bench.py: wrk, 4 connections,
4 ms between a response and the next request on each) of `--chunk` seconds, in a fresh random order each cycle,
each run after the rows of the one before are delivered. A server's p50 and p99 are those of all its paced
requests together; each version's change against "off" has a 90% bootstrap interval over the cycles; CPU per
request comes from /proc (the workers, and the delivery agent), the delivery of the run's rows included.

To reproduce session 11's tables (bench/RESULTS.md), which measured hand-offs of the rows out of the workers:

    git worktree add /tmp/handoff HEAD && git -C /tmp/handoff apply bench/handoff_variants.patch
    .venv/bin/python bench/scoring_ab.py --aa capture=/tmp/handoff:TRIB_VARIANT=capture \\
        ring=/tmp/handoff:TRIB_VARIANT=ring reqpack=/tmp/handoff:TRIB_VARIANT=reqpack
    .venv/bin/python bench/scoring_ab.py sw200=/tmp/handoff:TRIB_SWITCH=0.0002 sw50=/tmp/handoff:TRIB_SWITCH=0.00005
    .venv/bin/python bench/scoring_ab.py --cycles 20 ring2=/tmp/handoff:TRIB_VARIANT=ring2 \
        ring2nice=/tmp/handoff:TRIB_VARIANT=ring2,TRIB_CHILD_NICE=10

A benchmark, not a test: about 6 s per server and cycle.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scoring_bench as bench

from collector import config as dc
from devstack import free_port, start_azurite


def version(spec: str) -> tuple[str, Path, dict[str, str]]:
    """NAME=CHECKOUT[:VAR=VALUE,...] as (name, checkout, environment)."""
    name, _, rest = spec.partition("=")
    checkout, _, assignments = rest.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    if not name or not (Path(checkout) / "scoring").is_dir():
        raise SystemExit(f"{spec!r}: expected NAME=CHECKOUT[:VAR=VALUE,...], CHECKOUT a copy of this repository")
    return name, Path(checkout).resolve(), env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", type=version, help="NAME=CHECKOUT[:VAR=VALUE,...], collection on")
    parser.add_argument("--cycles", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4, help="seconds of each paced run")
    parser.add_argument("--aa", action="store_true", help='a second "off" server: the noise floor')
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        bench.say("wrk is needed: `apt-get install wrk` (Debian) or your system's package")
        return 2
    # name: (scenario, checkout, environment)
    servers = {"off": (bench.SCENARIOS[0], bench.REPO, {}), "on": (bench.SCENARIOS[1], bench.REPO, {})}
    if args.aa:
        servers["off again"] = (bench.SCENARIOS[0], bench.REPO, {})
    for name, checkout, env in args.versions:
        servers[name] = (bench.SCENARIOS[1], checkout, env)

    scratch = Path(tempfile.mkdtemp(prefix="tributary-scoring-ab-"))
    azurite = start_azurite()
    running: dict[str, tuple[int, subprocess.Popen]] = {}
    try:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(azurite.url).create_container(dc.Settings().container)
        paced = bench.wrk_script(scratch, 200_000, 4)
        for name, (scenario, checkout, env) in servers.items():
            port = free_port()
            process = bench.start_server(scenario, args.workers, port, scratch, azurite.url, checkout, env)
            running[name] = (port, process)
            bench.wait_scoring(port, process, "/ready")
            bench.run_wrk(port, paced, 4, 2)  # warm-up
            bench.settle(port)
        runs: dict[str, list[bench.Latencies]] = {name: [] for name in servers}
        ticks = {name: {"workers": 0, "agent": 0} for name in servers}
        for cycle in range(args.cycles):
            order = list(servers)
            random.shuffle(order)
            for name in order:
                port, process = running[name]
                before = bench.cpu_ticks(process.pid, azurite.process.pid)
                result = bench.run_wrk(port, paced, 4, args.chunk)
                bench.settle(port)
                after = bench.cpu_ticks(process.pid, azurite.process.pid)
                runs[name].append(result["latencies"])
                for key in ticks[name]:
                    ticks[name][key] += after[key] - before[key]
            bench.say(
                f"cycle {cycle + 1}/{args.cycles}: "
                + ", ".join(f"{n} {bench.pooled_ms(runs[n][-1:], 0.99):.2f}" for n in servers)
            )
    finally:
        for _, process in running.values():
            bench.stop_server(process)
        azurite.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(table(servers, runs, ticks, args))
    return 0


def table(
    servers: dict[str, tuple[str, Path, dict[str, str]]],
    runs: dict[str, list[bench.Latencies]],
    ticks: dict[str, dict[str, int]],
    args: argparse.Namespace,
) -> str:
    per_second = os.sysconf("SC_CLK_TCK")
    off = runs["off"]
    off50, off99 = bench.pooled_ms(off, 0.5), bench.pooled_ms(off, 0.99)
    lines = [
        (
            f"Command: `.venv/bin/python bench/scoring_ab.py --cycles {args.cycles}{' --aa' if args.aa else ''} ...`; "
            f"{args.cycles} paced runs of {args.chunk} s per server. Machine: {bench.machine()}."
        ),
        "",
        (
            "| server | requests | paced p50 ms (against off) | paced p99 ms (against off, 90% interval) "
            "| workers' CPU µs/request | agent's |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (_, _, env) in servers.items():
        requests = sum(r.requests for r in runs[name])
        p50, p99 = bench.pooled_ms(runs[name], 0.5), bench.pooled_ms(runs[name], 0.99)
        change99 = f"{p99 / off99 - 1:+.1%}"
        if name != "off":
            low, high = bench.interval(off, runs[name], 0.99)
            change99 += f", {low:+.1%} to {high:+.1%}"
        cpu = {key: value / per_second / requests * 1e6 for key, value in ticks[name].items()}
        label = name if not env else f"{name} ({', '.join(f'{k}={v}' for k, v in env.items())})"
        lines.append(
            f"| {label} | {requests} | {p50:.2f} ({p50 / off50 - 1:+.1%}) | {p99:.2f} ({change99}) "
            f"| {cpu['workers']:.0f} | {cpu['agent']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
