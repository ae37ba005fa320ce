"""The command line: `python -m scoring` and `tributary-score` (options win over the variables of scoring.config)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from collector import config as collector_config
from scoring import config

log = logging.getLogger("scoring")

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tributary-score",
        description="Serve a scoring script (init() and run()) over HTTP: POST /score, GET /, /ready, /status.",
        epilog="Every option has an environment variable (scoring/config.py); the collector reads collector.config's.",
    )
    p.add_argument("--entry-script", help=f"the scoring script, score.py [{config.ENTRY_SCRIPT}]")
    p.add_argument("--model-dir", help=f"the model directory [{config.MODEL_DIR}]")
    p.add_argument("--host", help=f"address to listen on [{config.HOST}, default 127.0.0.1]")
    p.add_argument("--port", type=int, help=f"port to listen on [{config.PORT}, default 5001]")
    p.add_argument("--probe-port", type=int, help=f"port for GET / and /ready only [{config.PROBE_PORT}, default none]")
    p.add_argument("--workers", type=int, help=f"worker processes [{config.WORKERS}, default 1]")
    p.add_argument("--threads", type=int, help=f"threads per worker [{config.THREADS}, default 4]")
    p.add_argument(
        "--app-insights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"emit OpenTelemetry spans per request [{config.APP_INSIGHTS_ENABLED}]",
    )
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help=f"[{config.LOG_LEVEL}]")
    return p


def settings_from(args: argparse.Namespace) -> config.Settings:
    settings = config.from_environ()
    overrides = {
        "entry_script": args.entry_script,
        "model_dir": args.model_dir,
        "host": args.host,
        "port": args.port,
        "probe_port": args.probe_port,
        "workers": args.workers,
        "threads": args.threads,
        "app_insights": args.app_insights,
        "log_level": args.log_level,
    }
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, stream=sys.stderr)
    if settings.log_level != "DEBUG":
        # The Azure SDK logs every HTTP request of the collector's uploads at INFO: noise, and CPU taken from requests.
        logging.getLogger("azure").setLevel(logging.WARNING)
    if not settings.entry_script:
        log.error("FAILED: no entry script: pass --entry-script or set %s", config.ENTRY_SCRIPT)
        return 2
    # abspath, not resolve(): a model directory of symlinks (the local driver's) must keep its <name>/<version>.
    script = Path(os.path.abspath(settings.entry_script))
    if not script.is_file():
        log.error("FAILED: entry script %s does not exist", script)
        return 2
    problems = [
        f"{name} must be at least 1"
        for name, value in (("--workers", settings.workers), ("--threads", settings.threads))
        if value < 1
    ]
    if problems:
        log.error("FAILED: %s", "; ".join(problems))
        return 2
    # The script reads these (AZUREML_MODEL_DIR especially), in every worker.
    os.environ[config.ENTRY_SCRIPT] = str(script)
    model_dir = ""
    if settings.model_dir:
        model_dir = os.path.abspath(settings.model_dir)
        os.environ[config.MODEL_DIR] = model_dir
        if not Path(model_dir).exists():
            log.warning("model directory %s does not exist", model_dir)
    settings = dataclasses.replace(settings, entry_script=str(script), model_dir=model_dir)

    dc = collector_config.from_environ()
    collection = "off"
    if dc.debug:
        collection = "debug (CSV to standard output)"
    elif dc.uploading:
        collection = f"on, to container {dc.container!r}, spooling in {dc.spool_dir}"
    from scoring.server import port_problem, serve  # gunicorn only now: importing the package stays cheap

    problem = port_problem(settings)
    if problem:
        log.error("FAILED: %s", problem)
        return 2
    keys = "none needed"
    if settings.key_hashes is not None:
        keys = f"required ({len(settings.key_hashes)} valid digest(s))"
    log.info(
        "serving %s on http://%s:%s%s with %d worker(s) x %d thread(s); model dir %s; collection %s; telemetry %s; "
        "key %s",
        script,
        f"[{settings.host}]" if ":" in settings.host else settings.host,  # an IPv6 address, as a URL writes it
        settings.port,
        f" (probes also on port {settings.probe_port})" if settings.probe_port else "",
        settings.workers,
        settings.threads,
        model_dir or "(not set)",
        collection,
        "on" if settings.app_insights else "off",
        keys,
    )
    serve(settings)
    return 0
