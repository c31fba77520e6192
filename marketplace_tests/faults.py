"""Real faults for the tests: an HTTP proxy in front of a tracking server that fails on demand."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from marketplace.local_servers import free_port


class FlakyProxy:
    """Forwards to `upstream`, but answers `status` to the first `fail_first` API requests
    (or to every one, with fail_first=None)."""

    def __init__(self, upstream: str, *, fail_first: int | None, status: int = 503):
        self.upstream = upstream.rstrip("/")
        self.fail_first = fail_first
        self.status = status
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _should_fail(self) -> bool:
        with self._lock:
            if self.fail_first is None or self.failed < self.fail_first:
                self.failed += 1
                return True
            self.forwarded += 1
            return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy._should_fail():
                    payload = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected fault"}'
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _relay

            def log_message(self, *args) -> None:
                pass

        return Handler

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
