"""A model served by several OpenAI-compatible deployments (`endpoints = [...]`).

Each request goes to the endpoint with the fewest outstanding requests for its weight; a
failure before the reply's first batch is retried on another endpoint (see `failover`). A
failing endpoint rests (cooldown), then the next request that picks it is its probe: the
first batch of a reply makes it healthy again, a failure sends it back to rest for twice as
long. Requests that find every endpoint at its `max_concurrent` wait for one to free up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from parley.config import OpenAICompatConfig, UpstreamEndpoint
from parley.errors import ParleyError, RateLimited, UpstreamError, UpstreamTimeout
from parley.events import EventBatch
from parley.logs import current_request_id
from parley.models.base import ChatRequest, EndpointState, EndpointStatus, Model
from parley.models.failover import close, endpoints_fault, retry_after_seconds, worth_retrying
from parley.models.openai_compat import OpenAICompatModel, failure_kind

log = logging.getLogger("parley.models.pool")


class _Endpoint:
    """One deployment's client and the pool's bookkeeping of it."""

    __slots__ = (
        "client",
        "cooldown_until",
        "failures",
        "level",
        "max_concurrent",
        "name",
        "outstanding",
        "probe_in_flight",
        "served",
        "turn",
        "weight",
    )

    def __init__(self, name: str, client: OpenAICompatModel, weight: float, max_concurrent: int | None) -> None:
        self.name = name
        self.client = client
        self.weight = weight
        self.max_concurrent = max_concurrent
        self.outstanding = 0
        self.served = 0
        self.cooldown_until = 0.0  # 0: healthy; else resting until then, and probed after
        self.level = 0  # failed probes in a row: each doubles the next rest
        self.probe_in_flight = False
        self.turn = 0.0  # its place in the round robin among equally loaded endpoints
        self.failures: dict[str, int] = {}

    @property
    def full(self) -> bool:
        return self.max_concurrent is not None and self.outstanding >= self.max_concurrent

    def status(self, now: float) -> EndpointStatus:
        state: EndpointState = "healthy"
        left = 0.0
        if self.cooldown_until > now:
            state, left = "cooling", self.cooldown_until - now
        elif self.cooldown_until:
            state = "probing"
        return EndpointStatus(
            self.name, state, self.outstanding, self.weight, self.max_concurrent, left, dict(self.failures), self.served
        )


def _endpoint_config(model: OpenAICompatConfig, endpoint: UpstreamEndpoint) -> OpenAICompatConfig:
    """The single-upstream configuration of one endpoint: the model's settings, its URL and key."""
    update: dict[str, object] = {"base_url": endpoint.base_url, "endpoints": None, "fallbacks": []}
    if endpoint.api_key is not None or endpoint.api_key_env is not None:
        update |= {"api_key": endpoint.api_key, "api_key_env": endpoint.api_key_env}
    return model.model_copy(update=update)


class UpstreamPool(Model):
    provider = "openai"
    supports_tools = True

    def __init__(self, config: OpenAICompatConfig) -> None:
        super().__init__(config.name, config.context_size)
        assert config.endpoints, "a pool needs endpoints"
        self._config = config
        self._endpoints = [
            _Endpoint(e.label, OpenAICompatModel(_endpoint_config(config, e)), e.weight, e.max_concurrent)
            for e in config.endpoints
        ]
        self._freed = asyncio.Event()  # set (and replaced) whenever a request leaves an endpoint

    async def load(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.load()

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.aclose()

    def endpoints(self) -> list[EndpointStatus]:
        now = time.monotonic()
        return [endpoint.status(now) for endpoint in self._endpoints]

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        tried: list[_Endpoint] = []
        last: ParleyError | None = None
        while True:
            endpoint, probe = await self._acquire(tried)
            if endpoint is None:
                raise last or self._unavailable()
            tried.append(endpoint)
            started = False
            endpoint.client.listener = self.listener
            batches = endpoint.client.stream(request)
            try:
                first = await self._first_batch(batches)
                if first is not None:
                    started = True
                    self._served(endpoint, len(tried))
                    probe = False  # answered: the endpoint is healthy, and its probe over
                    yield first
                    async for batch in batches:
                        yield batch
                return
            except ParleyError as error:
                if endpoints_fault(error):
                    self._failed(endpoint, error)
                if started or not worth_retrying(error):
                    raise
                last = error
            finally:
                await close(batches)
                self._release(endpoint, probe)

    async def _first_batch(self, batches: AsyncIterator[EventBatch]) -> EventBatch | None:
        timeout = self._config.first_token_timeout
        try:
            if timeout is None:
                return await anext(batches)
            return await asyncio.wait_for(anext(batches), timeout)
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:  # the endpoint's own timeouts arrive as UpstreamTimeout
            if self.listener is not None:
                self.listener.upstream_failed(self.name, "timeout")
            raise UpstreamTimeout(
                "the upstream did not start its reply in time", detail=f"sent no token within {timeout:g} s"
            ) from exc

    # -- choosing an endpoint ----------------------------------------------------------------------

    async def _acquire(self, tried: list[_Endpoint]) -> tuple[_Endpoint | None, bool]:
        """The endpoint for the next attempt, counted as outstanding, and whether the attempt is
        its probe; None: none is left to try."""
        deadline: float | None = None
        while True:
            endpoint, any_full = self._choose(tried, time.monotonic())
            if endpoint is not None:
                endpoint.outstanding += 1
                probe = endpoint.probe_in_flight = bool(endpoint.cooldown_until)
                return endpoint, probe
            if not any_full:
                return None, False
            now = time.monotonic()
            deadline = deadline or now + self._config.endpoint_wait_seconds
            if now >= deadline:
                raise RateLimited(
                    f"every endpoint of model {self.name!r} is serving its most requests at once; retry shortly",
                    headers={"Retry-After": "1"},
                    detail=f"waited {self._config.endpoint_wait_seconds:g} s for a free endpoint",
                )
            freed = self._freed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), deadline - now)

    def _choose(self, tried: list[_Endpoint], now: float) -> tuple[_Endpoint | None, bool]:
        """The fewest outstanding requests for the weight; among equals (an idle pool, say), a
        smooth weighted round robin, so that requests one at a time are shared by weight too.

        An endpoint whose rest is over is chosen first, as its probe (one at a time). Also
        says whether an endpoint was passed over only for being full.
        """
        least: list[_Endpoint] = []
        least_load = 0.0
        any_full = False
        for endpoint in self._endpoints:
            if endpoint in tried:
                continue
            if endpoint.cooldown_until and (endpoint.cooldown_until > now or endpoint.probe_in_flight):
                continue
            if endpoint.full:
                any_full = True
                continue
            if endpoint.cooldown_until:
                return endpoint, any_full
            load = endpoint.outstanding / endpoint.weight
            if not least or load < least_load:
                least, least_load = [endpoint], load
            elif load == least_load:
                least.append(endpoint)
        if len(least) < 2:
            return (least[0] if least else None), any_full
        # nginx's smooth weighted round robin: each gains its weight, the chosen gives back the sum.
        for endpoint in least:
            endpoint.turn += endpoint.weight
        chosen = max(least, key=lambda endpoint: endpoint.turn)
        chosen.turn -= sum(endpoint.weight for endpoint in least)
        return chosen, any_full

    def _release(self, endpoint: _Endpoint, probe: bool) -> None:
        endpoint.outstanding -= 1
        if probe:
            endpoint.probe_in_flight = False
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    # -- what became of an attempt -----------------------------------------------------------------

    def _served(self, endpoint: _Endpoint, attempts: int) -> None:
        endpoint.served += 1
        if endpoint.cooldown_until:
            log.info("model %r endpoint %s answered its probe: healthy again", self.name, endpoint.name)
            endpoint.cooldown_until, endpoint.level, endpoint.probe_in_flight = 0.0, 0, False
        retried = f" after {attempts - 1} failed attempt(s)" if attempts > 1 else ""
        log.info("%s model %r served by endpoint %s%s", current_request_id(), self.name, endpoint.name, retried)

    def _failed(self, endpoint: _Endpoint, error: ParleyError) -> None:
        kind = failure_kind(error)
        endpoint.failures[kind] = endpoint.failures.get(kind, 0) + 1
        now = time.monotonic()
        config = self._config
        if endpoint.cooldown_until > now:  # resting already (a request that was running when it failed)
            rest = 0.0
        else:
            if endpoint.cooldown_until:  # its probe failed: rest twice as long as the last time
                endpoint.level += 1
            rest = min(config.cooldown_seconds * 2**endpoint.level, config.max_cooldown_seconds)
        asked = retry_after_seconds(error)
        if asked is not None:
            rest = max(rest, min(asked, config.max_cooldown_seconds))
        if rest:
            endpoint.cooldown_until = max(endpoint.cooldown_until, now + rest)
            log.warning("model %r endpoint %s failed (%s): resting %.1f s", self.name, endpoint.name, kind, rest)

    def _unavailable(self) -> UpstreamError:
        return UpstreamError(
            f"every endpoint of model {self.name!r} is resting after failures; retry shortly",
            code="upstream_unavailable",
            detail="no endpoint left to try: all are cooling down",
        )
