"""ASGI guards around the app: a last-resort error boundary and the Host-header check.

Both are pure ASGI middleware (no per-request task), so they cost next to nothing per request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from starlette.requests import ClientDisconnect

log = logging.getLogger("leader.serve")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


async def send_json(send: Any, status: int, detail: str, close: bool = False) -> None:
    """A minimal ``{"detail": ...}`` response for guards that answer before the app runs."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorBoundary:
    """Turn any exception that escaped the app into a 500 logged by type only.

    Starlette's own last handler re-raises after answering, and uvicorn then logs the full
    traceback, whose frames and message can quote patient values; here nothing propagates.
    A client that hung up mid-request is not an error of the server: it is not logged at all.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return
        except Exception as e:  # noqa: BLE001 - the boundary: log the type, never the value
            log.error("internal error while serving a request: %s", type(e).__name__)
            if not started:
                await send_json(send, 500, "internal error (logged without patient data)", True)


def host_name(header: str) -> str:
    """``Host`` header value → the lower-case name without the port (``[::1]`` kept whole)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """Answer 400 unless the ``Host`` header names this server.

    Without a token, the only protection of a loopback server is that other machines cannot
    reach it; DNS rebinding lets any web page the user opens reach it under the page's own
    name, and the Host header is what gives that away.
    """

    def __init__(self, app: Any, allowed: Iterable[str]):
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(given) not in self.allowed:
                shown = given[:60] if given.isprintable() else "(unprintable)"
                await send_json(
                    send,
                    400,
                    f"Host header {shown!r} is not an allowed name of this server "
                    "(loopback names; add others with --allowed-host)",
                    close=True,
                )
                return
        await self.app(scope, receive, send)
