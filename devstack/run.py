"""`make run`: the whole portal on one machine, on embedded defaults, stopped cleanly by Ctrl-C.

Starts what is not already given by the environment: a private Redis (unless REDIS_URL answers), Azurite keeping
its blobs under var/azurite (unless BLOB_CONNECTION_STRING is set), a Celery worker, and the web server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.services import (
    REPO,
    ManagedProcess,
    ServiceError,
    redis_answers,
    start_azurite,
    start_redis,
    wait_for_port,
)


def say(message: str) -> None:
    print(f"[tributary] {message}", flush=True)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args], env=env, cwd=REPO, check=True, text=True, capture_output=True
    )


def stop_local_services(state_dir: Path) -> None:
    """The scoring processes that the worker started for this machine's services go down with the portal."""
    if not state_dir.exists():
        return
    from deployments.compute.local import LocalDriver

    stopped = LocalDriver(state_dir).stop_all()
    if stopped:
        say(f"stopped {len(stopped)} local service(s)")


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "true")
    port = int(env.get("PORT", "8000"))
    started: list[ManagedProcess | subprocess.Popen] = []

    def stop_all(*_: object) -> None:
        try:
            stop_local_services(Path(env.get("VAR_DIR", REPO / "var")) / "services")
        except Exception as exc:  # the rest must still be stopped
            say(f"could not stop the local services: {type(exc).__name__}: {exc}")
        for item in reversed(started):
            try:
                if isinstance(item, ManagedProcess):
                    item.stop()
                    continue
                if item.poll() is None:
                    os.killpg(item.pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        item.wait(10)
                # What is left of its process group (all of it, past the timeout; a child it forked as the signal
                # came, such as Celery's beat, otherwise) would outlive it: gone too. The kernel hands out no pid
                # that is still some group's id, so the group is the child's own, or no longer exists.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(item.pid, signal.SIGKILL)
            except Exception as exc:  # the others must still be stopped
                say(f"could not stop {item.args if isinstance(item, subprocess.Popen) else item}: {exc}")
        started.clear()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if env.get("REDIS_URL") and redis_answers(env["REDIS_URL"]):
            say(f"Redis: using {env['REDIS_URL']}")
        else:
            if env.get("REDIS_URL"):
                say(f"Redis at {env['REDIS_URL']} does not answer; starting a private one")
            redis = start_redis()
            started.append(redis)
            env["REDIS_URL"] = redis.url
            say(f"Redis: started a private server at {redis.url}")

        if env.get("BLOB_CONNECTION_STRING"):
            say("Blob storage: using BLOB_CONNECTION_STRING")
        else:
            azurite = start_azurite(location=Path(env.get("VAR_DIR", REPO / "var")) / "azurite")
            started.append(azurite)
            env["BLOB_CONNECTION_STRING"] = azurite.url
            say(f"Blob storage: started Azurite at {azurite.url.split('BlobEndpoint=')[1].rstrip(';')}")

        manage("migrate", "--noinput", env=env)
        manage("reconcile_updates", env=env)
        # Services of this machine were stopped with the portal: start them again, then add the demo if missing.
        say(manage("start_local_services", env=env).stdout.strip())
        login = manage("setup_demo", env=env).stdout.strip()

        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--quiet",
                "-A",
                "portal",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={env.get('WORKER_CONCURRENCY', '2')}",
                # Celery beat in the worker: it re-enqueues updates that crashes left behind (deployments.reconcile).
                "--beat",
                f"--schedule={Path(env.get('VAR_DIR', REPO / 'var')) / 'celerybeat-schedule'}",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        started.append(worker)
        web = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "runserver", f"127.0.0.1:{port}"],
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        started.append(web)
        wait_for_port(port, timeout=30, proc=web)

        say(f"Tributary is running at http://127.0.0.1:{port}/")
        say(login)
        say("Press Ctrl-C to stop everything started here.")
        while all(p.poll() is None for p in (worker, web)):
            time.sleep(0.5)
        say("a child process exited; stopping")
        return 1
    except ServiceError as exc:
        say(f"could not start: {exc}")
        return 1
    except subprocess.CalledProcessError as exc:
        say(f"{' '.join(map(str, exc.cmd[1:]))} failed:\n{exc.stderr or exc.stdout}")
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        # A second Ctrl-C or SIGTERM (an impatient user, a supervisor) must not cut the stopping short: it would
        # leave Redis, Azurite, the worker, the web server and the local services running with no one to stop them.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping")
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
