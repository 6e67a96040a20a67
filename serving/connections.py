"""Connections the service holds open, bounded in time and number.

uvicorn closes a kept-alive connection that goes idle, but not one whose request headers
never finish: each such connection (a slow or hostile client) holds a file descriptor for
good. This protocol, uvicorn's own HTTP protocol with two guards, answers 408 and closes a
connection whose headers are not in within `serving.header_timeout_seconds` (each request's
headers on a kept-alive connection too), and answers 503 and closes at once a connection
that would go past `serving.max_connections` open in this process. The request body has its
own limit (`serving.read_timeout_seconds`, in serving.metrics).
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlpipeline.config import ServingParams


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout: float, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        # When this connection began waiting for a request's headers (None: not waiting).
        # A sweep per server closes the late ones: a timer per request cost 2.5 us.
        self.headers_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable", f"more than {self.max_connections} open "
                         "connections (serving.max_connections): try again")
            return
        self.headers_since = self.loop.time()
        # The first connection starts the server's sweep (uvicorn's per-server state marks it).
        if not getattr(self.server_state, "header_sweep", False):
            self.server_state.header_sweep = True  # type: ignore[attr-defined]
            self._sweep()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.headers_since is None:  # the next request on a kept-alive connection
            self.headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.headers_since = None
        super().on_headers_complete()

    def _sweep(self) -> None:
        """Answer 408 on every connection of this server whose headers are late; again in a
        moment (so a late connection is closed within 1.5 header timeouts at most)."""
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpProtocol) and (
                    connection.headers_since is not None
                    and now - connection.headers_since > self.header_timeout):
                connection._refuse(408, "Request Timeout", "the request headers did not "
                                   f"arrive within {self.header_timeout:g} s "
                                   "(serving.header_timeout_seconds)")
        self.loop.call_later(self.header_timeout / 2, self._sweep)

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self.headers_since = None
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": detail}).encode()
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json"
                             f"\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                             .encode() + body)
        self.transport.close()


def uvicorn_options(settings: ServingParams) -> dict[str, Any]:
    """How uvicorn runs the service (python -m serving, and the tests' real servers)."""
    http = functools.partial(GuardedHttpProtocol, header_timeout=settings.header_timeout_seconds,
                             max_connections=settings.max_connections)
    return {"http": http, "access_log": False, "log_level": "info"}
