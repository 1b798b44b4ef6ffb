"""Where Prometheus reads the metrics: `/metrics` on the main port for the admin key only, or on a
port of its own (`metrics_port`) with no key.

The separate port is a small aiohttp server on the app's own event loop rather than
prometheus-client's `start_http_server`, which serves from a thread of its own that has no clean
way to stop with the app: this one starts and closes in the lifespan, like every other resource.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import HTTPConnection

from parley.errors import AdminOnly, AuthenticationRequired, NotFound

log = logging.getLogger("parley.metrics")

METRICS_PATH = "/metrics"

router = APIRouter(include_in_schema=False)


def presented_key(connection: HTTPConnection) -> str | None:
    """The API key a request carries, as `Authorization: Bearer …` or `x-api-key`."""
    authorization = connection.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return connection.headers.get("x-api-key") or None


def require_admin(connection: HTTPConnection, admin_key: str | None) -> None:
    """Refuse anyone but the admin key's holder: 401 without a key, 403 with another one.

    (Once keys are authenticated at the edge, this is `principal_of(connection).admin`.)
    """
    presented = presented_key(connection)
    if presented is None:
        raise AuthenticationRequired("/metrics needs the admin key (Authorization: Bearer <key>)")
    if admin_key is None or not hmac.compare_digest(presented.encode(), admin_key.encode()):
        raise AdminOnly("/metrics needs the admin key")


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition (OpenMetrics if the scraper asks for it), and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


@router.get(METRICS_PATH)
async def metrics(request: Request) -> Response:
    observability = request.app.state.observability
    if observability.metrics is None or observability.separate_port:
        where = "on metrics_port" if observability.separate_port else "off"
        raise NotFound(f"metrics are {where}: see the metrics settings")
    require_admin(request, observability.admin_key)
    body, content_type = render(observability.metrics.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)


class MetricsServer:
    """`GET /metrics` on a port of its own, without a key (for a private network or a sidecar)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics on http://%s:%d%s", host, runner.addresses[0][1], METRICS_PATH)

    async def _serve(self, request: web.Request) -> web.Response:
        body, content_type = render(self._registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
