"""The production server: gunicorn, with `gthread` workers (scoring/README.md says why), built from Settings.

The master binds the port and forks `WORKER_COUNT` workers; each worker builds its own ScoringApp (the script is
never imported in the master: every worker has its own init(), model and collectors, as in the legacy runtime).
Hooks tie gunicorn's life cycle to the runtime's:

- a worker whose script cannot load or whose init() raises exits with gunicorn's boot-error code, which stops the
  whole server (exit code 3) instead of restarting the worker forever; the log says why (`FAILED: ...`);
- on SIGTERM (or SIGINT), each worker finishes the requests in flight, then flushes the collector
  (`collector.shutdown()`, up to `AML_MODEL_DC_SHUTDOWN_TIMEOUT`) and the telemetry before it exits;
- the master keeps the request and collector counts of exited workers, so `/status` survives worker restarts;
- with collection on, the workers only spool their rows (`AML_MODEL_DC_DELIVERY=agent`) and the master runs the
  collector's delivery agent beside them (`python -m collector.agent`): uploads never hold a worker's GIL while
  it serves requests. The agent starts before the workers, is restarted if it dies, and stops after them, so it
  delivers what they spooled last.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gunicorn import sock as gunicorn_sock
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

import collector
from scoring import app as scoring_app
from scoring.config import Settings
from scoring.stats import Board, WorkerStatus

log = logging.getLogger("scoring")

# How long a worker that gave up on a stuck run() drains when nothing but stuck calls is left in it.
STUCK_DRAIN_SECONDS = 2
WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the master halts instead of respawning

# This worker's app and telemetry (set in the worker by load(), read by the worker_exit hook).
_worker: dict[str, Any] = {}


def _fatal(reason: str) -> None:
    """In a worker whose script failed: stop it with the boot-error code, so that the master halts."""
    status = _worker.get("status")
    if status is not None:
        status.publish()
    collector.shutdown(2.0)
    _exit_now(WORKER_BOOT_ERROR)


def _exit_now(code: int) -> None:
    """End this worker process at once, its log and the script's last prints flushed first: os._exit() skips the
    interpreter's own flush, and its wait for threads that may never end."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def drain_seconds(graceful_timeout: float) -> int:
    """How long a stopping worker waits for its requests in flight: the graceful timeout less a quarter of it (at
    least 2 s) and one second more, so that its flush (worker_exit) runs before the master's deadline, when it kills
    what is left. The one second: gthread's loop checks its deadline between waits of up to a second, so a request
    that outlasts the drain keeps the worker up to a second beyond it."""
    return max(0, int(graceful_timeout - max(2.0, graceful_timeout / 4) - 1))


def _post_fork(server: Any, worker: Any) -> None:
    # The worker's own copy of the settings: the master keeps the whole graceful timeout as its deadline.
    worker.cfg.set("graceful_timeout", drain_seconds(server.cfg.graceful_timeout))
    _worker["gunicorn"] = worker
    board = server.app.board
    if (
        isinstance(worker, ScoringWorker)
        and server.cfg.reuse_port
        and hasattr(socket, "SO_REUSEPORT")
        and board.serving()
        and _others_ready(board)
    ):
        # A worker that replaces one that exited, beside others that serve. Each worker listens on a socket of its
        # own, and the kernel spreads new connections over them whether their worker is loading or not: this one
        # would hold up a share of the requests for as long as its init() takes. So it lets go of the sockets
        # gunicorn just made for it, and listens again once it is ready (ScoringWorker). Alone, it listens at once:
        # requests wait for its init(), as at start, rather than find the port closed.
        for listener in worker.sockets:
            listener.close()
        worker.sockets = []
        worker.joining = True


def _others_ready(board: Board) -> bool:
    return any(other.get("ready") for other in board.others(os.getpid()))


class ScoringWorker(ThreadWorker):
    """gunicorn's gthread worker, which can join the port late (see _post_fork): its event loop, the one thread that
    owns the listening sockets, opens them once the script is ready, or once no other worker is."""

    joining = False
    sockets: list[Any]  # gunicorn's listening sockets, which this worker may open late and close early

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self.joining and self.alive and self._may_join():
            self._join()
        if self.alive:
            self._give_up_on_a_stuck_run()
        super().wait_for_and_dispatch_events(timeout)

    def _give_up_on_a_stuck_run(self) -> None:
        """A run() that has outlasted WORKER_TIMEOUT holds its thread, and the gate every other run() waits at, for
        good: the worker stops and the master starts another. gunicorn's own timeout restarts a worker whose event
        loop stops (a sync worker's stuck request did); a gthread worker's loop goes on while its threads are stuck,
        and would take requests it never answers.

        Stopping, it closes its listening sockets at once (the kernel sends new connections to the other workers,
        or refuses them until the new worker listens), the requests waiting for their turn at run() answer 503
        with Retry-After, and the drain is cut short when no run() but stuck ones could still end."""
        app = _worker.get("app")
        longest = app.longest_run() if app is not None else None
        if app is None or longest is None or longest[0] <= self.cfg.timeout:
            return
        log.error(
            "run() of request %s has run for %.1f s, more than WORKER_TIMEOUT (%d s): restarting this worker",
            longest[1],
            longest[0],
            self.cfg.timeout,
        )
        self.alive = False
        app.stopping.set()
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        self.sockets = []
        running = list(app.running.values())
        if all(time.monotonic() - started > self.cfg.timeout for started, _ in running):
            # Only stuck calls left: time enough for the 503s to go out, not for what will never come.
            self.cfg.set("graceful_timeout", min(self.cfg.graceful_timeout, STUCK_DRAIN_SECONDS))

    def _may_join(self) -> bool:
        app, status = _worker.get("app"), _worker.get("status")
        if app is None or status is None:
            return False
        if app.script is not None:
            return True
        # Every other worker gone or stopping (a reload, several killed at once): listen now, and let requests wait.
        return status.board is None or not _others_ready(status.board)

    def _join(self) -> None:
        self.joining = False
        # Raises (SystemExit after failed binds) in the worker's main thread: the worker exits and is replaced.
        listeners = gunicorn_sock.create_sockets(self.cfg, self.log)
        for listener in listeners:
            gunicorn_util.close_on_exec(listener)  # as gunicorn does for the ones it makes: no child keeps the port
        self.set_accept_enabled(False)
        self.sockets = listeners
        self.set_accept_enabled(True)
        log.info("listening on the port")


def _worker_exit(server: Any, worker: Any) -> None:
    """In a worker, after its last request: flush what the script collected, then the telemetry."""
    probes = _worker.get("probes")
    if probes is not None:
        probes.shutdown()
        probes.server_close()
    delivered = collector.shutdown()
    if not delivered:
        log.warning("the collector could not deliver every row before exiting; the rest stays in its spool")
    telemetry = _worker.get("telemetry")
    if telemetry is not None:
        telemetry.shutdown()
    status = _worker.get("status")
    if status is not None:
        status.stop_publishing()
    app = _worker.get("app")
    if app is not None and app.longest_run() is not None:
        # A run() still stuck: the interpreter's exit would wait for its thread for ever (the master would kill the
        # worker at its deadline). What had to be flushed is.
        _exit_now(0)


def _child_exit(server: Any, worker: Any) -> None:
    board = server.app.board
    board.retire(worker.pid)


def _when_ready(server: Any) -> None:
    agent = server.app.agent
    if agent is not None:
        agent.start()


def _on_exit(server: Any) -> None:
    agent = server.app.agent
    if agent is not None:
        agent.stop()
    shutil.rmtree(server.app.board.folder, ignore_errors=True)


class DeliveryAgent:
    """The collector's delivery agent, a child process of the master (see collector.agent)."""

    def __init__(self, status_file: Path, shutdown_timeout: float) -> None:
        self.status_file = status_file
        self.shutdown_timeout = shutdown_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "collector.agent", "--status-file", str(self.status_file)]
        self.process = subprocess.Popen([*argv, "--parent", str(os.getpid())])

    def keep_running(self) -> None:
        # gunicorn reaps every child, so poll() may report 0 for an agent that died otherwise: restart it either way.
        if self.process is not None and self.process.poll() is not None:
            log.error("the collector's delivery agent exited (%s); starting it again", self.process.returncode)
            self.start()

    def stop(self) -> None:
        """SIGTERM: the agent delivers what is spooled for up to its shutdown timeout, then exits."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.shutdown_timeout + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ScoringArbiter(Arbiter):
    """gunicorn's arbiter, which also keeps the delivery agent running (it checks its workers once a second)."""

    def manage_workers(self) -> None:
        super().manage_workers()
        agent = self.app.agent
        if agent is not None:
            agent.keep_running()


class ScoringLogger(Logger):
    """gunicorn's logger, without its master's `Listening at: <sockets> (<pid>)` line when the master has no socket
    to name: with reuse_port each worker listens on a socket of its own, and the line read `Listening at:  (pid)`.
    The runtime's first line says where it serves (`serving ... on http://host:port`), under the master's pid."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg == "Listening at: %s (%s)" and args and not args[0]:
            return
        super().info(msg, *args, **kwargs)


BOARD_PREFIX = "tributary-scoring-"


def _remove_stale_boards() -> None:
    """Board folders of runtimes whose master was killed (a graceful exit removes its own)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{BOARD_PREFIX}*-*"):
        pid = folder.name.removeprefix(BOARD_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


class ScoringServer(BaseApplication):
    """gunicorn's arbiter serving the scoring app with the runtime's Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        _remove_stale_boards()
        self.board = Board(Path(tempfile.mkdtemp(prefix=f"{BOARD_PREFIX}{os.getpid()}-")), settings.workers)
        self.agent: DeliveryAgent | None = None
        collection = collector.config.from_environ()
        if collection.uploading:
            # Set before the workers fork, so that each of them spools only, within its share of the replica's
            # spool bound (the bound is what the replica's volume holds, not what each of its workers may take).
            os.environ[collector.config.DELIVERY] = "agent"
            share = max(collection.spool_max_bytes // settings.workers, collector.config.MIN_SPOOL_MAX_BYTES)
            os.environ[collector.config.SPOOL_MAX_BYTES] = str(share)
            self.agent = DeliveryAgent(self.board.agent_file, collection.shutdown_timeout)
        super().__init__(prog="tributary-score")

    def run(self) -> None:
        ScoringArbiter(self).run()

    def load_config(self) -> None:
        s = self.settings
        assert self.cfg is not None
        options: dict[str, Any] = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": s.workers,
            "worker_class": "scoring.server.ScoringWorker",  # gthread, able to join the port late
            "logger_class": "scoring.server.ScoringLogger",
            "threads": s.threads,
            "timeout": s.worker_timeout,
            "graceful_timeout": int(s.graceful_timeout),
            "keepalive": 5,
            "accesslog": "-" if s.access_log else None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "proc_name": "tributary-score",
            # Several runtimes run side by side on one machine: no shared control socket in $HOME.
            "control_socket_disable": True,
            "post_fork": _post_fork,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            "when_ready": _when_ready,
            "on_exit": _on_exit,
        }
        if hasattr(socket, "SO_REUSEPORT"):
            # Each worker listens on its own socket and the kernel spreads connections over them. With one shared
            # socket, the worker awake first accepts a burst of keep-alive connections and keeps them: measured on
            # two workers, a third of the runs served on one worker at a third of the throughput.
            options["reuse_port"] = True
        if Path("/dev/shm").is_dir():  # heartbeat files in memory, as gunicorn advises for containers
            options["worker_tmp_dir"] = "/dev/shm"
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """In each worker: build the app and start loading the script."""
        status = WorkerStatus(self.board, collector.stats)
        status.start_publishing()
        app, application, telemetry = scoring_app.build(self.settings, status, on_fatal=_fatal)
        _worker.update(app=app, status=status, telemetry=telemetry)
        if self.settings.probe_port:
            # At once, joining the port late or not: a liveness probe must be answered while the model loads.
            worker = _worker["gunicorn"]  # set by _post_fork, which runs before load()
            _worker["probes"] = serve_probes(app, self.settings.host, self.settings.probe_port, lambda: worker.alive)
        return application


class _ProbeServer(ThreadingHTTPServer):
    allow_reuse_port = True  # every worker listens: the kernel spreads the probes over them, as it does requests
    daemon_threads = True

    def __init__(self, app: scoring_app.ScoringApp, host: str, port: int, serving: Callable[[], bool]) -> None:
        self.app = app
        self.serving = serving  # False once the worker stops taking requests (SIGTERM)
        self.address_family = _family(host)
        super().__init__((host, port), _ProbeHandler)


class _ProbeHandler(BaseHTTPRequestHandler):
    server: _ProbeServer
    timeout = 5  # a client that sends nothing does not hold a thread for ever

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ready" and not self.server.serving():
            # Draining: the main port takes no more requests, so neither should the load balancer send any.
            status, headers, out = 503, [("Content-Type", "application/json")], b'{"message": "the worker is stopping"}'
        elif path in ("/", "/ready", "/status"):
            status, headers, out, _ = self.server.app.handle({"PATH_INFO": path, "REQUEST_METHOD": "GET"})
        else:
            status, headers, out = 404, [("Content-Type", "text/plain")], b"only GET /, /ready and /status here"
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if body:
            self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would drown the log


def serve_probes(app: scoring_app.ScoringApp, host: str, port: int, serving: Callable[[], bool]) -> _ProbeServer:
    """In a worker: answer GET /, /ready and /status on `port` from threads of its own. On the main port a probe waits
    for a request thread, and all of them can be waiting for their turn at run() (see scoring/README.md)."""
    server = _ProbeServer(app, host, port, serving)
    threading.Thread(target=server.serve_forever, name="scoring-probes", daemon=True).start()
    return server


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port already (with SO_REUSEPORT, a second runtime could share it)."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_problem(settings: Settings) -> str | None:
    """Why the runtime cannot listen where `settings` say, if it cannot (checked before it says it serves)."""
    if settings.probe_port == settings.port:
        return f"the probe port must differ from the port ({settings.port})"
    for port in (settings.port, settings.probe_port):
        if port and port_in_use(settings.host, port):
            return f"port {port} on {settings.host} is in use"
    return None


def serve(settings: Settings) -> None:
    """Run the server until it is stopped (exits the process with gunicorn's status)."""
    server = ScoringServer(settings)
    try:
        server.run()
    except HaltServer as exc:
        # gunicorn halts on the first worker that failed to boot, and raises again (out of its own halt) when a
        # second one failed too: that is still a boot failure, not a crash of the runtime.
        log.error("stopped: %s", exc.reason)
        shutil.rmtree(server.board.folder, ignore_errors=True)
        sys.exit(exc.exit_status)
