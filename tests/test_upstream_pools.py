"""Upstream pools: a model served by several real scripted endpoints on 127.0.0.1, through a real
Parley (uvicorn) and the official `openai` client with its own retries off, so that every
failure Parley lets through is seen.

- Failures before the first token (refused connection, 500, 429) are retried on another
  endpoint: a hundred concurrent chats all succeed.
- A failure after the first token is the client's error event; the endpoint is then avoided,
  rests, and is probed back to healthy.
- When every endpoint fails, the model's fallbacks answer.
- /ready and /metrics show each endpoint's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from parley.config import ConfigError, OpenAICompatConfig, load_settings
from tests.support.pool_upstream import scripted_endpoints
from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, closed_port

ADMIN_KEY_ENV = "PARLEY_TEST_POOLS_ADMIN_KEY"
ADMIN_KEY = "pk-admin-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def admin_key() -> Iterator[None]:
    os.environ[ADMIN_KEY_ENV] = ADMIN_KEY
    try:
        yield
    finally:
        del os.environ[ADMIN_KEY_ENV]


def metric_samples(parley: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = httpx.get(parley + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == 200, reply.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def pool_model(name: str, endpoints: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": "m", "endpoints": endpoints, **options}


@contextlib.contextmanager
def parley_with(*models: dict[str, Any]) -> Iterator[str]:
    with running_parley(models=list(models), admin_key_env=ADMIN_KEY_ENV, auth="off") as url:
        yield url


def endpoint_states(parley: str, model: str = "pooled") -> dict[str, dict[str, Any]]:
    reply = httpx.get(parley + "/ready")
    assert reply.status_code == 200, reply.text
    return {endpoint["name"]: endpoint for endpoint in reply.json()["models"][model]["endpoints"]}


def ask(client: OpenAI, model: str = "pooled") -> str:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def client_of(parley: str) -> OpenAI:
    return OpenAI(base_url=parley + "/v1", api_key="x", max_retries=0, timeout=30)


def wait_for_state(parley: str, name: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = endpoint_states(parley)[name]
        if endpoint["state"] == state:
            return endpoint
        assert time.monotonic() < deadline, f"endpoint {name} stayed {endpoint['state']}, not {state}"
        time.sleep(0.05)


# -- configuration --


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"base_url": "http://a/v1", "endpoints": [{"base_url": "http://b/v1"}]}, "exactly one"),
        ({}, "exactly one"),
        ({"endpoints": [{"base_url": "http://a:1/v1"}, {"base_url": "http://a:1/v2"}]}, "distinct `name`"),
        ({"endpoints": [{"base_url": "http://a/v1", "weight": 0}]}, "greater than 0"),
        ({"base_url": "http://a/v1", "fallbacks": ["nowhere"]}, "unknown models"),
        ({"base_url": "http://a/v1", "fallbacks": ["m"]}, "unknown models (or itself)"),
    ],
)
def test_a_pool_is_configured_with_endpoints_or_base_url_not_both(model: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(models=[{"name": "m", "provider": "openai", **model}])
    assert words in str(raised.value)


def test_a_pool_reads_from_toml_as_the_readme_writes_it(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        "[[models]]\n"
        'name = "llama"\n'
        'provider = "openai"\n'
        "endpoints = [\n"
        '  { base_url = "http://10.0.0.11:8000/v1", weight = 2, max_concurrent = 64 },\n'
        '  { base_url = "http://user:secret@10.0.0.12:8000/v1", api_key_env = "SPARE_KEY" },\n'
        "]\n"
        "cooldown_seconds = 3\n"
        'fallbacks = ["local"]\n'
        "[[models]]\n"
        'name = "local"\n'
        'provider = "fake"\n'
    )
    (model, _) = load_settings(config).models
    assert isinstance(model, OpenAICompatConfig) and model.endpoints is not None
    assert [endpoint.label for endpoint in model.endpoints] == ["10.0.0.11:8000", "10.0.0.12:8000"]
    assert (model.endpoints[0].weight, model.endpoints[0].max_concurrent, model.cooldown_seconds) == (2, 64, 3)
    assert model.fallbacks == ["local"]


# -- failures before the first token: retried, never seen --


def test_a_hundred_concurrent_chats_through_a_pool_with_three_failing_endpoints_all_succeed() -> None:
    with scripted_endpoints("status-500", "status-429", "ok", "ok") as (failing, limited, first, second):
        refusing = f"http://127.0.0.1:{closed_port()}/v1"
        endpoints = [
            {"base_url": refusing, "name": "refusing"},
            {"base_url": failing.base_url, "name": "failing"},
            {"base_url": limited.base_url, "name": "limited"},
            {"base_url": first.base_url, "name": "first"},
            {"base_url": second.base_url, "name": "second"},
        ]
        with parley_with(pool_model("pooled", endpoints)) as parley:

            async def chats() -> list[str | BaseException]:
                client = AsyncOpenAI(base_url=parley + "/v1", api_key="x", max_retries=0, timeout=60)

                async def chat() -> str:
                    stream = await client.chat.completions.create(
                        model="pooled", messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

                try:
                    return await asyncio.gather(*(chat() for _ in range(100)), return_exceptions=True)
                finally:
                    await client.close()

            replies = asyncio.run(chats())
            assert [reply for reply in replies if reply != TEXT_REPLY] == []
            # The failing endpoints were tried (so their failures were retried), then left alone.
            assert failing.requests >= 1 and limited.requests >= 1
            states = endpoint_states(parley)
            assert {name: states[name]["state"] for name in ("refusing", "failing", "limited")} == dict.fromkeys(
                ("refusing", "failing", "limited"), "cooling"
            )
            refused = states["refusing"]["failures"]["unreachable"]
            assert states["refusing"]["failures"] == {"unreachable": refused} and refused >= 1
            assert states["failing"]["failures"] == {"server_error": failing.requests}
            assert states["limited"]["failures"] == {"rate_limited": limited.requests}
            assert states["limited"]["cooldown_left"] > 20  # its Retry-After (30 s), over the 5 s cooldown
            assert states["first"]["served"] + states["second"]["served"] == 100
            assert states["first"]["served"] > 0 and states["second"]["served"] > 0
            assert states["first"]["outstanding"] == states["second"]["outstanding"] == 0

            samples = metric_samples(parley)

            def sample(name: str, **labels: str) -> float:
                return samples[(name, frozenset({"model": "pooled", **labels}.items()))]

            state = "parley_upstream_endpoint_state"
            assert sample(state, endpoint="limited", state="cooling") == 1
            assert sample(state, endpoint="limited", state="healthy") == 0
            assert sample(state, endpoint="first", state="healthy") == 1
            failures = "parley_upstream_endpoint_failures_total"
            assert sample(failures, endpoint="refusing", kind="unreachable") == refused
            assert sample(failures, endpoint="failing", kind="server_error") == failing.requests
            served = "parley_upstream_endpoint_served_total"
            assert sample(served, endpoint="first") == states["first"]["served"]


def test_the_log_names_the_endpoint_that_served_and_the_client_never_sees_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parley")
    with scripted_endpoints("status-500", "ok") as (failing, healthy):
        endpoints = [
            {"base_url": failing.base_url, "name": "failing-internal-7"},
            {"base_url": healthy.base_url, "name": "healthy-internal-9"},
        ]
        with parley_with(pool_model("pooled", endpoints)) as parley:
            request_id = "pool-" + uuid.uuid4().hex
            body = {"model": "pooled", "messages": [{"role": "user", "content": "hi"}]}
            reply = httpx.post(parley + "/v1/chat/completions", json=body, headers={"x-request-id": request_id})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == TEXT_REPLY
            assert "internal" not in reply.text and str(healthy.port) not in reply.text
            assert "internal" not in "".join(f"{name}: {value}" for name, value in reply.headers.items())
    lines = [record.getMessage() for record in caplog.records if request_id in record.getMessage()]
    assert any("served by endpoint healthy-internal-9 after 1 failed attempt(s)" in line for line in lines), lines
    assert any(f"127.0.0.1:{failing.port}" in line and "answered 500" in line for line in lines), lines


def test_a_refused_request_is_not_retried_and_the_endpoint_stays_healthy() -> None:
    with scripted_endpoints("status-400", "ok") as (refusing, other):
        endpoints = [{"base_url": refusing.base_url, "name": "refusing"}, {"base_url": other.base_url, "name": "other"}]
        with parley_with(pool_model("pooled", endpoints)) as parley:
            with pytest.raises(openai.BadRequestError) as raised:
                ask(client_of(parley))
            assert raised.value.code == "context_length_exceeded"
            assert (refusing.requests, other.requests) == (1, 0)
            assert endpoint_states(parley)["refusing"]["state"] == "healthy"


def test_all_endpoints_rate_limited_gives_the_client_a_429_with_retry_after() -> None:
    with scripted_endpoints("status-429", "status-429") as endpoints:
        pool = [{"base_url": endpoint.base_url} for endpoint in endpoints]
        with parley_with(pool_model("pooled", pool)) as parley:
            reply = httpx.post(
                parley + "/v1/chat/completions",
                json={"model": "pooled", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            )
            assert reply.status_code == 429
            assert reply.headers["retry-after"] == "30"
            assert reply.json()["error"]["code"] == "rate_limited"
            assert [endpoint.requests for endpoint in endpoints] == [1, 1]
            # Now both rest: the next request is refused at once, without bothering them.
            again = httpx.post(
                parley + "/v1/chat/completions",
                json={"model": "pooled", "messages": [{"role": "user", "content": "x"}]},
            )
            assert again.status_code == 502
            assert again.json()["error"]["code"] == "upstream_unavailable"
            assert [endpoint.requests for endpoint in endpoints] == [1, 1]


def test_an_endpoint_silent_past_first_token_timeout_is_given_up_on_and_the_request_retried() -> None:
    with scripted_endpoints("silent", "ok") as (silent, healthy):
        endpoints = [{"base_url": silent.base_url, "name": "silent"}, {"base_url": healthy.base_url, "name": "healthy"}]
        with parley_with(pool_model("pooled", endpoints, first_token_timeout=0.5)) as parley:
            started = time.monotonic()
            assert ask(client_of(parley)) == TEXT_REPLY
            assert time.monotonic() - started >= 0.5
            assert (silent.requests, healthy.requests) == (1, 1)
            state = endpoint_states(parley)["silent"]
            assert state["state"] == "cooling" and state["failures"] == {"timeout": 1}
            assert state["outstanding"] == 0  # its connection was closed, not left waiting


# -- failures after the first token: the client's error event; the endpoint rests --


def test_an_endpoint_killed_mid_stream_ends_the_reply_with_an_error_then_is_avoided_and_probed_back() -> None:
    with scripted_endpoints("long", "ok") as (doomed, healthy):
        endpoints = [{"base_url": doomed.base_url, "name": "doomed"}, {"base_url": healthy.base_url, "name": "healthy"}]
        with parley_with(pool_model("pooled", endpoints, cooldown_seconds=2.0)) as parley:
            client = client_of(parley)
            stream = client.chat.completions.create(
                model="pooled", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            received: list[str] = []

            def read_and_kill() -> None:
                for chunk in stream:
                    received.extend(choice.delta.content or "" for choice in chunk.choices)
                    if "tick" in "".join(received):
                        doomed.kill()  # once: then it has nothing left to kill

            with pytest.raises(openai.APIError) as raised:
                read_and_kill()
            assert "tick" in "".join(received)  # the reply had started: no silent retry
            assert "closed the connection" in raised.value.message
            assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "upstream_error"

            rested = endpoint_states(parley)["doomed"]
            assert rested["state"] == "cooling" and rested["failures"] == {"disconnected": 1}
            doomed.behaviour = "ok"
            doomed.start()  # back on its port, but still resting: no request goes there
            assert [ask(client) for _ in range(5)] == [TEXT_REPLY] * 5
            assert doomed.requests == 1 and healthy.requests == 5

            wait_for_state(parley, "doomed", "probing")
            assert ask(client) == TEXT_REPLY  # the probe
            assert doomed.requests == 2
            assert endpoint_states(parley)["doomed"]["state"] == "healthy"


def test_a_failed_probe_rests_twice_as_long_and_a_good_one_makes_the_endpoint_healthy() -> None:
    with scripted_endpoints("status-500", "ok") as (flaky, healthy):
        endpoints = [{"base_url": flaky.base_url, "name": "flaky"}, {"base_url": healthy.base_url, "name": "healthy"}]
        with parley_with(pool_model("pooled", endpoints, cooldown_seconds=0.5)) as parley:
            client = client_of(parley)
            assert ask(client) == TEXT_REPLY  # flaky failed first, healthy answered
            assert (flaky.requests, healthy.requests) == (1, 1)
            wait_for_state(parley, "flaky", "probing")
            assert ask(client) == TEXT_REPLY  # the probe fails too: retried on healthy
            assert (flaky.requests, healthy.requests) == (2, 2)
            assert endpoint_states(parley)["flaky"]["cooldown_left"] > 0.6  # about 1 s now
            flaky.behaviour = "ok"
            wait_for_state(parley, "flaky", "probing")
            assert ask(client) == TEXT_REPLY
            assert flaky.requests == 3
            assert endpoint_states(parley)["flaky"]["state"] == "healthy"


# -- balancing --


def test_sequential_requests_are_shared_by_weight() -> None:
    with scripted_endpoints("ok", "ok") as (heavy, light):
        endpoints = [
            {"base_url": heavy.base_url, "name": "heavy", "weight": 3},
            {"base_url": light.base_url, "name": "light", "weight": 1},
        ]
        with parley_with(pool_model("pooled", endpoints)) as parley:
            client = client_of(parley)
            assert [ask(client) for _ in range(40)] == [TEXT_REPLY] * 40
            assert (heavy.requests, light.requests) == (30, 10)


def test_a_full_endpoint_is_passed_over_and_a_full_pool_answers_429_after_a_bounded_wait() -> None:
    with scripted_endpoints("long", "long") as endpoints:
        pool = [{"base_url": e.base_url, "name": f"e{n}", "max_concurrent": 1} for n, e in enumerate(endpoints)]
        with parley_with(pool_model("pooled", pool, endpoint_wait_seconds=0.5)) as parley:
            client = client_of(parley)
            body: dict[str, Any] = {"model": "pooled", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with (
                client.chat.completions.create(**body) as one,
                client.chat.completions.create(**body) as two,
            ):
                next(iter(one)), next(iter(two))
                assert [endpoint.requests for endpoint in endpoints] == [1, 1]
                started = time.monotonic()
                with pytest.raises(openai.RateLimitError) as raised:
                    client.chat.completions.create(**body)
                assert time.monotonic() - started >= 0.5
                assert "most requests at once" in raised.value.message
            # The client left: both endpoints are free again.
            deadline = time.monotonic() + 10
            while any(state["outstanding"] for state in endpoint_states(parley).values()):
                assert time.monotonic() < deadline
                time.sleep(0.05)


# -- fallbacks --


def test_a_model_whose_endpoints_all_fail_falls_back_to_the_next_model() -> None:
    with scripted_endpoints("status-500", "ok") as (failing, backup):
        refusing = f"http://127.0.0.1:{closed_port()}/v1"
        primary = pool_model(
            "pooled",
            [{"base_url": refusing, "name": "refusing"}, {"base_url": failing.base_url, "name": "failing"}],
            fallbacks=["broken", "backup", "local"],
        )
        broken = {"name": "broken", "provider": "openai", "base_url": refusing}
        second = {"name": "backup", "provider": "openai", "model": "m", "base_url": backup.base_url}
        local = {"name": "local", "provider": "fake", "replies": ["from the fake model"]}
        with parley_with(primary, broken, second, local) as parley:
            client = client_of(parley)
            assert ask(client) == TEXT_REPLY
            assert (failing.requests, backup.requests) == (1, 1)
            backup.kill()
            # Now the pool's endpoints rest, `broken` and `backup` refuse: the local model answers.
            assert ask(client) == "from the fake model"
            # The /api/chat transport goes through the same fallbacks.
            reply = httpx.post(parley + "/api/chat", json={"message": "hi", "model": "pooled", "stream": False})
            assert reply.status_code == 200, reply.text
            assert "from the fake model" in reply.text


def test_a_model_that_fails_after_its_first_token_does_not_fall_back() -> None:
    with scripted_endpoints("long") as (doomed,):
        primary = {"name": "pooled", "provider": "openai", "model": "m", "base_url": doomed.base_url}
        local = {"name": "local", "provider": "fake", "replies": ["from the fake model"]}
        with parley_with({**primary, "fallbacks": ["local"]}, local) as parley:
            stream = client_of(parley).chat.completions.create(
                model="pooled", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            received: list[str] = []

            def read_and_kill() -> None:
                for chunk in stream:
                    received.extend(choice.delta.content or "" for choice in chunk.choices)
                    if "tick" in "".join(received):
                        doomed.kill()

            with pytest.raises(openai.APIError) as raised:
                read_and_kill()
            assert "closed the connection" in raised.value.message
            assert "fake" not in "".join(received)


def test_without_fallbacks_a_pool_whose_endpoints_all_fail_answers_502() -> None:
    with scripted_endpoints("status-500") as (failing,):
        refusing = f"http://127.0.0.1:{closed_port()}/v1"
        pool = [{"base_url": refusing, "name": "refusing"}, {"base_url": failing.base_url, "name": "failing"}]
        with parley_with(pool_model("pooled", pool)) as parley:
            with pytest.raises(openai.InternalServerError) as raised:
                ask(client_of(parley))
            assert raised.value.status_code == 502
            assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "upstream_error"
            assert failing.requests == 1
