"""Running the app under uvicorn: bind first, then serve, with a deadline on request heads.

uvicorn closes an idle keep-alive connection only after a first response, so a client that
connects and sends nothing, or dribbles header bytes, would hold a connection (and a file
descriptor) forever. :class:`HeadDeadlineProtocol` closes any connection whose request head is
not complete within ``head_timeout`` seconds of connecting or of the previous response.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from leader.errors import LeaderError

log = logging.getLogger("leader.serve")


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        old = getattr(self, "_head_deadline", None)
        if old is not None:
            old.cancel()
        cycle = self.cycle
        self._head_deadline = self.loop.call_later(
            self.head_timeout, self._head_deadline_passed, cycle
        )

    def _head_deadline_passed(self, cycle_when_armed: Any) -> None:
        self._head_deadline = None
        waiting_for_head = self.cycle is cycle_when_armed and (
            self.cycle is None or self.cycle.response_complete
        )
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


def protocol_class(head_timeout: float) -> type[HeadDeadlineProtocol]:
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": head_timeout})


def bind(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` now, so a busy port is a one-line error before anything runs."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise LeaderError(f"host {host!r}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise LeaderError(f"{host}:{port}: cannot listen ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def serve(
    app: Any, host: str, port: int, head_timeout: float, announce: Callable[[], None]
) -> None:
    """Bind, call ``announce`` (the socket is listening), then serve until interrupted.

    Access log off: paths and queries may carry patient codes.
    """
    import uvicorn

    sock = bind(host, port)
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="info",
        server_header=False,
        http=protocol_class(head_timeout),
        timeout_keep_alive=5,
    )
    announce()
    uvicorn.Server(config).run(sockets=[sock])
