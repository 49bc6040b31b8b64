"""The operations endpoints: /metrics for Prometheus, /healthz and /readyz for the supervisor.

/healthz answers from the event loop alone (if it answers, the process is alive and the loop
is not blocked); /readyz runs the dependency checks concurrently, each under a timeout, so one
hung dependency cannot make the probe itself hang. Failure messages carry the exception type
and a cut, URL-credential-scrubbed message: probes are often readable by more people than logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from triage.metrics import Metrics

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
MESSAGE_LIMIT = 200


def describe_failure(exc: BaseException) -> str:
    """``error: <Type>: <message>`` with any ``scheme://user:password@`` reduced to
    ``scheme://***@`` and the message cut to 200 characters."""
    message = _URL_CREDENTIALS.sub(r"\1***@", str(exc)).replace("\n", " ")
    return f"error: {type(exc).__name__}: {message[:MESSAGE_LIMIT]}"


async def _run_check(check: Check, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        return "timeout"
    except Exception as e:
        return describe_failure(e)
    return "ok"


def create_ops_app(
    metrics: Metrics,
    checks: Mapping[str, Check],
    *,
    metrics_token: str | None = None,
    timeout: float = 3.0,
    on_scrape: Callable[[], None] | None = None,
) -> Starlette:
    """The ops app. ``on_scrape`` (e.g. ``lambda: metrics.refresh_from_db(reads)``) runs in a
    worker thread before each /metrics answer; if it fails the last values are served."""
    expected = f"Bearer {metrics_token}".encode() if metrics_token else None
    checks = dict(checks)

    async def metrics_endpoint(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                return Response("unauthorized\n", status_code=401,
                                headers={"WWW-Authenticate": "Bearer"},
                                media_type="text/plain")
        if on_scrape is not None:
            try:
                await run_in_threadpool(on_scrape)
            except Exception as e:
                metrics.outbox_refresh_errors.inc()
                log.warning("metrics refresh failed: %s", describe_failure(e))
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        names = list(checks)
        results = await asyncio.gather(*(_run_check(checks[n], timeout) for n in names))
        outcome = dict(zip(names, results, strict=True))
        if all(r == "ok" for r in results):
            return JSONResponse({"status": "ready", "checks": outcome})
        for name, result in outcome.items():
            if result != "ok":
                log.warning("readiness check %s: %s", name, result)
        return JSONResponse({"status": "unready", "checks": outcome}, status_code=503)

    return Starlette(routes=[
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    app: Starlette,
    host: str,
    port: int,
    should_exit: asyncio.Event,
    *,
    bound: asyncio.Future[int] | None = None,
    http: Literal["httptools", "h11"] = "httptools",
) -> None:
    """Serve ``app`` in the running loop until ``should_exit`` is set.

    The socket is bound here, so a taken port raises ``OSError`` (uvicorn would call
    ``sys.exit``) and port 0 works: the real port is given to ``bound`` when it is passed.
    HTTP/1.1 is parsed by httptools (C; a dependency, so it is named rather than left to
    uvicorn's "auto", which falls back to h11 silently): every request, a refused login in a
    flood too, costs the event loop less than with h11 (measured in bench/results.md)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: the accepted connections copy the listener's protocol number, and
    # asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say TCP; with 0
    # Nagle stays on and a response's body waits for the client's delayed ACK of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    actual = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            server_header=False, http=http)
    server = _Server(config)

    async def stopper() -> None:
        await should_exit.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stopper())
    try:
        if bound is not None and not bound.done():
            bound.set_result(actual)
        log.info("ops endpoints on %s:%d", host, actual)
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        sock.close()


__all__ = ["create_ops_app", "describe_failure", "serve"]
