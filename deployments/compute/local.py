"""The local compute target: each service is a scoring-runtime process on this machine (the embedded default).

    driver = LocalDriver(state_dir=Path("var/services"), secrets={"BLOB_CONNECTION_STRING": "..."})
    driver.apply(spec)                     # start it, or restart it when its settings changed
    driver.rollout_state(spec)             # Transitioning, Healthy (answers GET /ready) or Failed with the reason
    driver.remove(spec)                    # stop it and forget it
    driver.runtime_status(service_id)      # what the running process says of itself (GET /status), for the portal
    driver.logs(spec, lines)               # the last lines of its log

One process per service: `python -m scoring` (gunicorn), on its own loopback port, with its own environment, in its
own session (so it outlives the portal process that started it). `spec.replicas` is its number of worker processes
(`WORKER_COUNT`), each with its own init() and model, all behind the one port; rollout_state() asks GET /ready on
a second port, the runtime's probe port, which busy request threads never hold up. `spec.image` means nothing here.

State, per service, under `<state_dir>/service-<id>/`:

    state.json         update id, settings hash, pid and its start time, ports, argv (never a secret: a hash of it)
    runtime.log        the process's standard output and error (runtime.log.1: the previous process's)
    exit-<pid>         its exit status, when it exited while this portal process was its parent
    models/            the model directory (AZUREML_MODEL_DIR): <name>/<version> links to each model's files
    spool/             the collector's spool (AML_MODEL_DC_SPOOL_DIR): kept across restarts, and by remove()
                       when rows are still waiting in it
    .lock              serialises apply/remove/stop of one service across the portal's processes

A later portal process finds the running processes again through state.json: a pid counts as ours only if the
process's start time (from /proc) is still the one recorded, so a reused pid is never mistaken for ours, and a
service is never started twice. apply() is idempotent: with the same settings (and the same script, secret and
models) it only records the new update id; otherwise it stops the process gracefully (SIGTERM: requests in
flight finish and the collector flushes) and starts the new one.

Secrets: `spec.storage_secret` names an entry of the `secrets` mapping (or resolver) given to the driver; its
value goes into the child's environment only (`AML_MODEL_DC_STORAGE`), and only while collection is on. The
child gets a clean environment (PATH, HOME, locale, the virtualenv), never the portal's own secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import scoring
from collector import config as collector_config
from deployments.compute import DesiredSpec, PermanentError, RolloutState, TransientError
from scoring import config as scoring_config

# Variables of the portal's environment that a scoring process may see; everything else is left behind.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV")
MAX_REASON = 500
STATUS_MAX_BYTES = 256 * 1024  # a runtime's GET /status: about 150 bytes a worker
LOG_READ_BYTES = 2 * 1024 * 1024  # logs() reads at most this much of the end of a log: 5,000 lines of 400 bytes
TELEMETRY_DESTINATIONS = (scoring_config.APPLICATIONINSIGHTS_CONNECTION_STRING, scoring_config.OTLP_ENDPOINT)
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FAILED = re.compile(r"\bFAILED: (.+?)\s*$")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")

Secrets = Mapping[str, str] | Callable[[str], str | None]


class LocalDriver:
    """Runs each service as a scoring-runtime process on this machine; see the module docstring.

    state_dir: where each service's folder lives (created if missing).
    secrets: the values that `spec.storage_secret` names, as a mapping or a function (None when unknown).
    host: the address the processes listen on and the scoring URLs use.
    python: the interpreter that runs `python -m scoring` (default: this one, so the same virtualenv).
    ready_timeout: seconds after a start by which the service must answer GET /ready, or it is Failed.
    stop_timeout: seconds a SIGTERM may take (requests in flight, the collector's flush) before SIGKILL.
    environ: extra variables for every process (e.g. a proxy setting); the spec's and the contract's win.
    """

    def __init__(
        self,
        state_dir: Path | str,
        secrets: Secrets | None = None,
        host: str = "127.0.0.1",
        *,
        python: str | None = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 45.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._secrets = secrets if secrets is not None else {}
        self.host = host
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.environ = dict(environ or {})

    # -- the ComputeDriver interface -------------------------------------------------------------------------------

    def apply(self, spec: DesiredSpec) -> None:
        """Make this machine run `spec`: start, or restart when anything it runs with has changed."""
        script = self._validate(spec)
        secret = self._secret(spec)
        digest = self._digest(spec, script, secret)
        folder = self._folder(spec.service_id)
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(folder):
            state = _read_state(folder)
            if state is not None and _alive(state):
                if state["config_hash"] == digest and not state.get("stopped"):
                    if state["update_id"] != spec.update_id:
                        _write_state(folder, {**state, "update_id": spec.update_id})
                    return
                self._stop(state)
            self._start(spec, folder, script, secret, digest, state)

    def rollout_state(self, spec: DesiredSpec) -> RolloutState:
        """Where `spec`'s rollout stands: Healthy once every worker answers GET /ready."""
        folder = self._folder(spec.service_id)
        state = _read_state(folder)
        if state is None:
            return RolloutState("Failed", "not running on this machine: it was never applied, or was removed")
        if state["update_id"] != spec.update_id:
            try:
                same = state["config_hash"] == self._digest(spec, self._validate(spec), self._secret(spec))
            except PermanentError as exc:
                return RolloutState("Failed", str(exc))
            if not same:
                if state["update_id"] > spec.update_id:
                    return RolloutState("Failed", f"superseded by update {state['update_id']}")
                return RolloutState("Transitioning", f"update {spec.update_id} is not applied yet")
        if state.get("stopped"):
            return RolloutState("Failed", "stopped when the portal shut down: apply it again to start it")
        if not _alive(state):
            return RolloutState("Failed", _exit_reason(folder, state))
        url = f"http://{_url_host(state['host'])}:{state['port']}"
        # Services started before the probe port (no "probe_port" in their state) are asked on the main port.
        answer = _probe(state["host"], int(state.get("probe_port") or state["port"]), "/ready")
        if answer is not None and answer[0] == 200:
            return RolloutState("Healthy", "", f"{url}/score")
        waited = time.time() - state["started_at"]
        if waited > self.ready_timeout:
            last = _log_reason(folder / "runtime.log") or "nothing in its log"
            return RolloutState("Failed", _clip(f"not ready within {self.ready_timeout:.0f}s: {last}"))
        detail = "starting" if answer is None else _message(answer[1])
        return RolloutState("Transitioning", f"{detail} ({waited:.0f}s)")

    def runtime_status(self, service_id: int) -> dict[str, Any] | None:
        """The service's runtime's own figures (its `GET /status`: requests, latency, the collector's counters), or
        None when it is not running or does not answer within 2 s."""
        state = _read_state(self._folder(service_id))
        if state is None or state.get("stopped") or not _alive(state):
            return None
        answer = None
        if state.get("probe_port"):
            answer = _probe(state["host"], int(state["probe_port"]), "/status", limit=STATUS_MAX_BYTES)
        if answer is None or answer[0] == 404:  # a runtime from before the probe port answered /status
            answer = _probe(state["host"], int(state["port"]), "/status", limit=STATUS_MAX_BYTES)
        if answer is None or answer[0] != 200:
            return None
        try:
            figures = json.loads(answer[1])
        except ValueError:
            return None
        return figures if isinstance(figures, dict) else None

    def remove(self, spec: DesiredSpec) -> None:
        """Stop the service and delete its folder (its spool stays while it holds undelivered rows)."""
        folder = self._folder(spec.service_id)
        if not folder.exists():
            return
        with self._locked(folder):
            state = _read_state(folder)
            if state is not None:
                self._stop(state)
            for child in folder.iterdir():
                if child.name == ".lock" or (child.name == "spool" and _non_empty(child)):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if not (folder / "spool").exists():
            shutil.rmtree(folder, ignore_errors=True)

    # -- for the run command and the portal ------------------------------------------------------------------------

    def stop_all(self) -> list[int]:
        """Stop every service process this state dir knows (for `make run`'s Ctrl-C); returns their service ids.

        They stop in parallel. Their state is kept, marked stopped: rollout_state() says so, and apply() of the
        same spec starts them again.
        """
        stopped = []
        threads = []
        for folder in sorted(self.state_dir.glob("service-*")):
            state = _read_state(folder)
            if state is None or not _alive(state):
                continue
            service_id = int(folder.name.removeprefix("service-"))

            def stop(folder: Path = folder) -> None:
                with self._locked(folder):
                    current = _read_state(folder)
                    if current is not None:
                        self._stop(current)
                        _write_state(folder, {**current, "stopped": True})

            thread = threading.Thread(target=stop, name=f"stop-service-{service_id}")
            thread.start()
            threads.append(thread)
            stopped.append(service_id)
        for thread in threads:
            thread.join()
        return stopped

    def logs(self, spec: DesiredSpec, lines: int) -> str:
        """The last lines of the service's log (what its script printed, the runtime's messages); "" if none."""
        return "\n".join(_tail(self._folder(spec.service_id) / "runtime.log", lines, max_bytes=LOG_READ_BYTES))

    # -- internals -------------------------------------------------------------------------------------------------

    def _folder(self, service_id: int) -> Path:
        return self.state_dir / f"service-{int(service_id)}"

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        with open(folder / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _validate(self, spec: DesiredSpec) -> Path:
        if not spec.entry_script:
            raise PermanentError("the local target needs an entry script (score.py)")
        script = Path(spec.entry_script).expanduser().resolve()
        if not script.is_file():
            raise PermanentError(f"entry script {script} does not exist on this machine")
        if not 1 <= spec.replicas <= 64:
            raise PermanentError(f"replicas must be between 1 and 64 on the local target, not {spec.replicas}")
        if spec.resources:
            raise PermanentError("the local target runs processes without CPU or memory requests or limits")
        if spec.autoscale:
            raise PermanentError("the local target runs a fixed number of processes: it does not autoscale")
        if spec.liveness:
            raise PermanentError("the local target watches its processes itself: it has no liveness probe")
        for model in spec.models:
            for what, value in (("model name", model.name), ("model version", model.version)):
                if not _SEGMENT.match(str(value)):
                    raise PermanentError(f"{what} {value!r} must be letters, digits, '.', '_' or '-'")
            if not model.path or not Path(model.path).expanduser().exists():
                raise PermanentError(f"model {model.name}:{model.version} has no files at {model.path!r}")
        if "port" in spec.target and not str(spec.target["port"]).isdigit():
            raise PermanentError(f"target port {spec.target['port']!r} is not a port number")
        return script

    def _secret(self, spec: DesiredSpec) -> str:
        """The storage connection string, when collection is on (it is needed only then)."""
        if not spec.collect_model_data:
            return ""
        if not spec.storage_secret:
            raise PermanentError("model data collection needs a storage secret, and none is set")
        resolve = self._secrets
        value = resolve(spec.storage_secret) if callable(resolve) else resolve.get(spec.storage_secret)
        if not value:
            raise PermanentError(f"the storage secret {spec.storage_secret!r} is not known to the local target")
        return value

    def _digest(self, spec: DesiredSpec, script: Path, secret: str) -> str:
        """Everything the process runs with; a change means a restart. The secret is in it only as a hash."""
        data = spec.to_json()
        data.pop("update_id")
        # Always empty here (_validate): no restart of processes started before they existed.
        data.pop("resources")
        data.pop("autoscale")
        data.pop("liveness")
        try:
            script_hash = hashlib.sha256(script.read_bytes()).hexdigest()
        except OSError as exc:
            raise TransientError(f"cannot read {script}: {exc}") from exc
        data["_script"] = script_hash
        data["_secret"] = hashlib.sha256(secret.encode()).hexdigest() if secret else ""
        # What this process gets of the driver's environment: a telemetry destination changed in the portal's
        # settings restarts the services that send telemetry, not the others.
        environ = {k: v for k, v in self.environ.items() if spec.enable_app_insights or k not in TELEMETRY_DESTINATIONS}
        data["_driver"] = [self.host, self.python, sorted(environ.items())]
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def _models(self, spec: DesiredSpec, folder: Path) -> str:
        """Lay out the model directory; return AZUREML_MODEL_DIR (one model's version folder, or the root)."""
        root = folder / "models"
        shutil.rmtree(root, ignore_errors=True)
        if not spec.models:
            return ""
        for model in spec.models:
            source = Path(model.path).expanduser().resolve()
            version_dir = root / model.name / model.version
            version_dir.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                version_dir.symlink_to(source, target_is_directory=True)
            else:  # a one-file model, registered under its file name as in Azure ML
                version_dir.mkdir()
                (version_dir / source.name).symlink_to(source)
        if len(spec.models) == 1:
            return str(root / spec.models[0].name / spec.models[0].version)
        return str(root)

    def _environ(self, spec: DesiredSpec, folder: Path, script: Path, secret: str, model_dir: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASS_THROUGH if name in os.environ}
        package_root = str(Path(scoring.__file__).resolve().parent.parent)
        if package_root not in site.getsitepackages():  # a source checkout: let `-m scoring` find the package
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        env.update(self.environ)
        env.update({str(k): str(v) for k, v in spec.environment.items()})
        env.update(
            collector_config.environ_for(
                enabled=spec.collect_model_data,
                connection_string=secret,
                workspace=spec.workspace_path or None,
                service_name=spec.service_name,
                model_versions={m.name: m.version for m in spec.models},
                **{collector_config.SPOOL_DIR: str(folder / "spool")},
            )
        )
        if not secret:
            env.pop(collector_config.STORAGE, None)
        env.update(
            scoring_config.environ_for(
                entry_script=str(script),
                model_dir=model_dir,
                workers=spec.replicas,
                app_insights=spec.enable_app_insights,
                **({scoring_config.KEY_HASHES: ",".join(spec.key_hashes)} if spec.require_key else {}),
            )
        )
        if not model_dir:
            env.pop(scoring_config.MODEL_DIR, None)
        if not spec.enable_app_insights:  # where telemetry would go, a secret maybe: only to those that send it
            for name in TELEMETRY_DESTINATIONS:
                env.pop(name, None)
        env["PYTHONUNBUFFERED"] = "1"  # prints reach the log at once
        return env

    def _start(
        self, spec: DesiredSpec, folder: Path, script: Path, secret: str, digest: str, previous: dict[str, Any] | None
    ) -> None:
        port = self._port(spec, previous)
        probe_port = self._probe_port(port, previous)
        model_dir = self._models(spec, folder)
        env = self._environ(spec, folder, script, secret, model_dir)
        (folder / "spool").mkdir(exist_ok=True)
        log_path = folder / "runtime.log"
        if log_path.exists():
            os.replace(log_path, folder / "runtime.log.1")
        for old in folder.glob("exit-*"):
            old.unlink(missing_ok=True)
        argv = [self.python, "-m", "scoring", "--entry-script", str(script), "--host", self.host, "--port", str(port)]
        argv += ["--probe-port", str(probe_port)]
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    argv,
                    cwd=script.parent,  # as the legacy runtime: relative paths in score.py are from its folder
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the portal; stopped as a group
                )
        except OSError as exc:
            raise PermanentError(f"cannot start {self.python}: {exc}") from exc
        _write_state(
            folder,
            {
                "service_id": spec.service_id,
                "update_id": spec.update_id,
                "config_hash": digest,
                "pid": process.pid,
                "start_ticks": _start_ticks(process.pid),
                "host": self.host,
                "port": port,
                "probe_port": probe_port,
                "argv": argv,
                "started_at": time.time(),
            },
        )
        reaper = threading.Thread(target=_reap, args=(process, folder), name=f"reap-{process.pid}", daemon=True)
        _reapers[process.pid] = reaper
        reaper.start()

    def _port(self, spec: DesiredSpec, previous: dict[str, Any] | None) -> int:
        """The spec's port, else the previous one (a stable URL across restarts) if free, else a free one."""
        if "port" in spec.target:
            return int(spec.target["port"])
        if previous is not None and _port_free(self.host, int(previous["port"])):
            return int(previous["port"])
        return _free_port(self.host)

    def _probe_port(self, port: int, previous: dict[str, Any] | None) -> int:
        """Where rollout_state() asks GET /ready: a port of its own, which busy request threads never hold up (on the
        main port a probe waits for a request thread, and a service busy for longer than the ready timeout would be
        reported Failed). The previous one if free, else a free one."""
        kept = int(previous.get("probe_port") or 0) if previous is not None else 0
        if kept and kept != port and _port_free(self.host, kept):
            return kept
        return _free_port(self.host, besides=port)

    def _stop(self, state: dict[str, Any]) -> None:
        """SIGTERM the runtime's master (it stops its workers gracefully); SIGKILL the group after stop_timeout."""
        pid = int(state["pid"])
        if not _alive(state):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while _alive(state):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                end = time.monotonic() + 5
                while _alive(state) and time.monotonic() < end:
                    time.sleep(0.02)
                break
            time.sleep(0.02)


# -- processes ----------------------------------------------------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """The process's start time since boot (from /proc), or None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _alive(state: dict[str, Any]) -> bool:
    """Our process is still running: the pid exists and started when we recorded (so it is not a reused pid)."""
    pid = int(state["pid"])
    if Path("/proc").is_dir():
        return state.get("start_ticks") is not None and _start_ticks(pid) == state["start_ticks"]
    try:  # no /proc (macOS): the weaker check
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


# pid -> the thread waiting for that child of this process, so a failure reason can wait for its exit status.
_reapers: dict[int, threading.Thread] = {}


def _reap(process: subprocess.Popen[bytes], folder: Path) -> None:
    """Wait for our child (no zombie is left) and record how it ended, for the failure reason."""
    code = process.wait()
    with contextlib.suppress(OSError):
        (folder / f"exit-{process.pid}").write_text(str(code))
    _reapers.pop(process.pid, None)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str, besides: int = 0) -> int:
    """A port free on `host` now (the kernel's pick), other than `besides`."""
    while True:
        with socket.socket(_family(host)) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != besides:
            return port


def _port_free(host: str, port: int) -> bool:
    """Whether the runtime could listen on host:port: a listener there stops it, connections of the process before
    in TIME_WAIT do not (the runtime's own check is the same; its probe port closes each connection first)."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _probe(host: str, port: int, path: str, limit: int = 2000) -> tuple[int, bytes] | None:
    """GET path, the first `limit` bytes of the answer; None when nothing answers (not listening yet, or too busy
    to answer within 2 s)."""
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read(limit)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")[:200]


# -- state files --------------------------------------------------------------------------------------------------


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / f".state.json.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, folder / "state.json")


def _non_empty(folder: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*"))


# -- failure reasons ----------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `lines` lines of the file, from at most its last `max_bytes` (a log can be large); lines end at
    "\n" only, as Kubernetes' tailLines counts them (a progress bar's "\r" does not use up the count)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(max(0, start - 1))  # the byte before: whether the read begins a line
            data = handle.read()
    except OSError:
        return []
    begins_a_line = start == 0 or data[:1] == b"\n"
    found = data[1 if start else 0 :].decode("utf-8", errors="replace").split("\n")
    if found[-1] == "":
        found.pop()  # the newline that ends the last line
    if not begins_a_line:
        # The read began inside this line: it goes, unless it is all there is (one line longer than max_bytes).
        found = found[1:] if len(found) > 1 else ["…" + line for line in found]
    return found[-lines:]


def _log_reason(log_path: Path) -> str:
    """Why the log says the process failed: the runtime's `FAILED:` line, else a traceback's last line, else
    the last line."""
    lines = _tail(log_path, 400)
    for line in reversed(lines):
        match = _FAILED.search(line)
        if match:
            return match.group(1)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last)"):
            for line in lines[index + 1 :]:
                if _EXCEPTION_LINE.match(line):
                    return line.strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


def _exit_reason(folder: Path, state: dict[str, Any]) -> str:
    reaper = _reapers.get(int(state["pid"]))
    if reaper is not None:  # our child died a moment ago (a zombie until reaped): its exit status is on its way
        reaper.join(timeout=2.0)
    how = "exited"
    with contextlib.suppress(OSError, ValueError):
        code = int((folder / f"exit-{state['pid']}").read_text())
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
    reason = _log_reason(folder / "runtime.log")
    return _clip(f"the process {how}: {reason}" if reason else f"the process {how}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
