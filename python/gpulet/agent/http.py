"""A minimal HTTP endpoint for probes: ``/healthz`` (the agent's loop answers) and ``/readyz``
(200 when ready, 503 with the NotReady reason otherwise). Plain asyncio, no dependency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gpulet.readiness import Readiness

__all__ = ["ProbeServer"]

log = logging.getLogger("gpulet.agent")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ProbeServer:
    """Serves ``/healthz`` and ``/readyz`` on ``host:port`` (port 0: any free port)."""

    def __init__(self, readiness: Callable[[], Readiness], host: str, port: int) -> None:
        self._readiness = readiness
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("probes on http://%s:%d/healthz and /readyz", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5.0)
            # Drain the headers.
            while True:
                header = await asyncio.wait_for(reader.readline(), timeout=5.0)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body = 405, "method not allowed\n"
            elif path == "/healthz":
                status, body = 200, "ok\n"
            elif path == "/readyz":
                r = self._readiness()
                status, body = (200, f"ready: {r.reason}\n") if r.ready else (503, f"{r.reason}\n")
            else:
                status, body = 404, "not found\n"
            data = body.encode("utf-8")
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head + (data if method != "HEAD" else b""))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
