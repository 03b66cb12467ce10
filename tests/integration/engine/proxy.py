"""A real HTTP forwarding proxy for tests: passes requests on, or tampers / duplicates one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class Proxy:
    def __init__(self, target: str) -> None:
        self.target = target
        self.next_tamper: Callable[[bytes], bytes] | None = None
        self.duplicate_next = False
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with proxy._lock:
                    tamper, proxy.next_tamper = proxy.next_tamper, None
                    duplicate, proxy.duplicate_next = proxy.duplicate_next, False
                if tamper is not None:
                    body = tamper(body)
                headers = {"content-type": self.headers.get("content-type", "")}
                try:
                    response = httpx.post(proxy.target, content=body, headers=headers, timeout=30)
                except httpx.ConnectError:
                    # the target is down: a 502, as a reverse proxy answers, not a connection
                    # closed after the whole request was read (which may have delivered it)
                    self.send_response(502)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if duplicate:  # the same bytes again, as a sender that lost our answer would
                    response = httpx.post(proxy.target, content=body, headers=headers, timeout=30)
                with proxy._lock:
                    proxy.forwarded += 2 if duplicate else 1
                self.send_response(response.status_code)
                for name in ("content-type", "soapaction"):
                    if name in response.headers:
                        self.send_header(name, response.headers[name])
                self.send_header("content-length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ebms"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
