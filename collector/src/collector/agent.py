"""The delivery agent: uploads the rows that the processes of one replica spool, so that they never have to.

    python -m collector.agent [--status-file PATH] [--parent PID]

A scoring process that collects and also uploads spends CPU on HTTP requests to blob storage in a thread that
shares the interpreter lock with the requests it serves: each upload round holds requests up for milliseconds.
With `AML_MODEL_DC_DELIVERY=agent` the scoring processes only write their rows to the spool (collector.spool), and
this process, one per spool folder, delivers them all: it watches the spools of live processes, takes over those
of processes that stopped, and appends with the same exactly-once protocol (collector.upload).

It reads the same environment contract as the collector (collector.config). It runs at a lower CPU priority
(`--nice`, default 10): when the cores are busy, requests go first and rows wait a little. On SIGTERM or SIGINT, or
when the `--parent` process is gone, it delivers for up to `AML_MODEL_DC_SHUTDOWN_TIMEOUT` seconds and exits; what
is left stays spooled for the next agent. A second agent started on the same folder waits until the first exits.
The scoring runtime (scoring/server.py) starts it before its workers, restarts it if it dies and stops it after
them. `--status-file` receives `collector.stats()` as JSON every second, for the runtime's /status.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("collector")

PUBLISH_SECONDS = 1.0
LOCK_NAME = ".agent.lock"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--status-file", type=Path, help="write collector.stats() here (JSON) every second")
    parser.add_argument("--parent", type=int, help="exit (after delivering) when this process is gone")
    parser.add_argument("--nice", type=int, default=10, help="CPU priority to lower by (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s [%(process)d] [collector-agent] %(message)s")
    log.setLevel(logging.INFO)

    import collector
    from collector import config, engine

    settings = config.from_environ()
    if not settings.uploading:
        log.error("nothing to deliver: collection is off, has no storage connection string, or is in debug mode")
        return 2
    if args.nice:
        with contextlib.suppress(OSError):
            os.nice(args.nice)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def parent_gone() -> bool:
        return args.parent is not None and os.getppid() != args.parent

    lock_fd = _take_folder(settings.spool_dir, lambda: stop.is_set() or parent_gone())
    if lock_fd is None:
        return 0
    if args.status_file is not None:
        # A restarted agent goes on counting from where the one before it stopped, as a runtime's /status expects.
        with contextlib.suppress(OSError, ValueError):
            engine.COUNTERS.restore(json.loads(args.status_file.read_text()))
    agent = engine.serve_as_agent(settings)
    log.info(
        "delivering the rows spooled in %s (shutdown timeout %.0f s)", settings.spool_dir, settings.shutdown_timeout
    )

    def publish() -> None:
        if args.status_file is not None:
            _write_json(args.status_file, collector.stats())

    publish()
    while not stop.wait(PUBLISH_SECONDS):
        publish()
        if parent_gone():
            log.warning("the process that started this agent is gone: delivering what is left, then exiting")
            break
    delivered = agent.shutdown(settings.shutdown_timeout)
    publish()
    if not delivered:
        log.warning("stopping with rows still spooled in %s: the next agent delivers them", settings.spool_dir)
    os.close(lock_fd)
    return 0


def _take_folder(spool_dir: Path, give_up: Any) -> int | None:
    """Lock the spool folder for this agent, waiting while another holds it; None if told to stop first."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(spool_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if not said:
                log.info("another agent delivers %s: waiting for it to exit", spool_dir)
                said = True
        if give_up():
            os.close(fd)
            return None
        time.sleep(0.5)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
