"""Real faults for the tests: an HTTP proxy in front of a tracking server that misbehaves on demand.

It can answer errors (`fail_first`), hold one request until the test lets it go (a deterministic
point to kill a process or a server at), and lose the answer to a request the server did process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from harness.local_servers import free_port

# Headers of the upstream's answer that describe its own transfer, not the payload relayed.
TRANSFER_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")


class RelayHandler(BaseHTTPRequestHandler):
    """What the tests' HTTP servers share: read a request, forward it upstream, answer."""

    def serve(self) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        self.serve()

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def forward(
        self, upstream: str, body: bytes, *, drop: tuple[str, ...] = ()
    ) -> requests.Response | None:
        """The upstream's answer to this request (without the headers in `drop`); None when the
        server is down or does not answer."""
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", *drop)
        }
        try:
            return requests.request(
                self.command, upstream + self.path, data=body, headers=headers, timeout=60
            )
        except requests.RequestException:
            return None

    def answer(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for key, value in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client went away (killed) while it waited

    def relay(self, response: requests.Response | None) -> None:
        """Pass the upstream's answer on; with none, drop the connection as a dead server would."""
        if response is None:
            self.close_connection = True
            return
        headers = {k: v for k, v in response.headers.items() if k.lower() not in TRANSFER_HEADERS}
        self.answer(response.status_code, response.content, headers)

    def log_message(self, *args) -> None:
        pass


class LoopbackServer:
    """A threaded HTTP server on a free loopback port, serving `handler` while in its `with`
    block."""

    def __init__(self, handler: type[RelayHandler]):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Hold:
    """The first request whose method is `method` and whose path contains `path` waits at the proxy.

    `after_upstream`: the server has processed it before it waits (its answer is then sent, or
    with `lose_answer`, the connection closes without one). `reached` is set when it waits;
    setting `release` lets it go on.
    """

    method: str
    path: str
    after_upstream: bool = False
    lose_answer: bool = False
    abandoned: bool = (
        False  # set with `release` once the client is gone: the request goes no further
    )
    taken: bool = False
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        return not self.taken and method == self.method and self.path in path


class FaultProxy(LoopbackServer):
    """Forwards to `upstream`; answers `status` to the first `fail_first` API requests (every one
    with fail_first=None, none with 0), and applies `holds`. A request the upstream cannot take
    (the server is down) loses its connection, as it would without the proxy."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_first: int | None = 0,
        status: int = 503,
        holds: list[Hold] = (),
    ):
        self.upstream = upstream.rstrip("/")
        self.fail_first = fail_first
        self.status = status
        self.holds = list(holds)
        self.failed = 0
        self.forwarded = 0
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _should_fail(self) -> bool:
        with self._lock:
            if self.fail_first is None or self.failed < self.fail_first:
                self.failed += 1
                return True
            self.forwarded += 1
            return False

    def _hold_for(self, method: str, path: str) -> Hold | None:
        with self._lock:
            self.requests.append((method, path))
            for hold in self.holds:
                if hold.matches(method, path):
                    hold.taken = True
                    return hold
        return None

    def release_all(self) -> None:
        for hold in self.holds:
            hold.release.set()

    def _handler(self):
        proxy = self

        class Handler(RelayHandler):
            def serve(self) -> None:
                body = self.body()
                if proxy._should_fail():
                    self.answer(
                        proxy.status,
                        {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected fault"},
                    )
                    return
                hold = proxy._hold_for(self.command, self.path)
                if hold is not None and not hold.after_upstream:
                    self._wait(hold)
                    if hold.abandoned:
                        self.close_connection = True
                        return
                answer = self.forward(proxy.upstream, body)
                if hold is not None and hold.after_upstream:
                    self._wait(hold)
                if hold is not None and hold.lose_answer:
                    self.close_connection = True  # no answer: the client sees the connection drop
                    return
                self.relay(answer)

            def _wait(self, hold: Hold) -> None:
                hold.reached.set()
                hold.release.wait(timeout=600)

        return Handler

    def __exit__(self, *exc) -> None:
        self.release_all()
        super().__exit__(*exc)
