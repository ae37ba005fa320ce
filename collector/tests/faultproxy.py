"""An HTTP proxy in front of Azurite that breaks requests on purpose.

The storage SDK talks plain HTTP to Azurite and signs only the path and headers, so a proxy on another port can
forward requests unchanged. Faults are rules matched against each request, in order:

- `reset_before`: close the connection without forwarding (a connection reset; nothing was written);
- `error_500`: answer 500 without forwarding (nothing was written);
- `reset_after`: forward, let Azurite commit, then close the connection without an answer;
- `stall_after`: forward, let Azurite commit, then answer only after `stall` seconds (a client timeout);
- `reset_after_then_refuse`: as `reset_after`, then refuse everything (storage gone right after a commit);
- `refuse`: every request is reset before forwarding (storage down);
- `run_first`: call the rule's `before()`, then forward (another request landing just ahead of this one).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def is_append(method: str, path: str, headers: dict[str, str]) -> bool:
    """A data append (the header block goes at position 0 and is left alone unless asked)."""
    return method == "PUT" and "comp=appendblock" in path and headers.get("x-ms-blob-condition-appendpos", "0") != "0"


@dataclass
class Rule:
    action: str
    match: Callable[[str, str, dict[str, str]], bool] = is_append
    times: int = 1  # how many matching requests it breaks; -1 for all
    every: int = 1  # break one matching request in `every`
    seen: int = 0
    hits: int = 0
    before: Callable[[], None] | None = None  # for `run_first`


@dataclass
class FaultProxy:
    target: str  # "http://127.0.0.1:PORT"
    stall: float = 3.0
    rules: list[Rule] = field(default_factory=list)
    refusing: bool = False
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, what happened)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        parsed = urlparse(self.target)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connection_string(self, account_key: str, account: str = "devstoreaccount1") -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={account_key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{account};"
        )

    def add(self, action: str, **kwargs: object) -> Rule:
        rule = Rule(action, **kwargs)  # type: ignore[arg-type]
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.refusing = False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, what: str) -> int:
        with self.lock:
            return sum(1 for _, _, w in self.log if w == what)

    def _decide(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, Rule | None]:
        with self.lock:
            if self.refusing:
                return "refuse", None
            for rule in self.rules:
                if rule.times == 0 or not rule.match(method, path, headers):
                    continue
                rule.seen += 1
                if (rule.seen - 1) % rule.every:
                    continue
                if rule.times > 0:
                    rule.times -= 1
                rule.hits += 1
                return rule.action, rule
        return "pass", None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        body = h.rfile.read(length) if length else b""
        action, rule = self._decide(h.command, h.path, headers)
        with self.lock:
            self.log.append((h.command, h.path, action))
        if action == "run_first" and rule is not None and rule.before is not None:
            rule.before()
        if action in ("refuse", "reset_before"):
            _reset(h)
            return
        if action == "error_500":
            payload = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>injected</Message></Error>"
            h.send_response(500)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.send_header("x-ms-error-code", "InternalError")
            h.end_headers()
            h.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            fwd = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(h.command, h.path, body=body, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if action in ("reset_after", "reset_after_then_refuse"):
            if action == "reset_after_then_refuse":
                self.refusing = True  # as if storage went away right after committing
            _reset(h)
            return
        if action == "stall_after":
            time.sleep(self.stall)
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or h.command == "HEAD"):
                h.send_header(k, v)
        if h.command != "HEAD":
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close with RST, so the client sees a reset connection rather than a clean end."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
