"""Usage records: every reply counted per day, key, end user and model, on the OpenAI API and
the chat API alike, with costs from the models' prices; `GET /api/usage` and `parley usage`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from parley.access.principal import ADMIN, KeyLimits, Principal
from parley.access.usage import UsageRecorder, prices_of
from parley.access.usage_report import usage_report
from parley.chat.service import ChatService
from parley.config import FakeConfig, ModelConfig, ModelPrice
from parley.models.base import ChatMessage, ChatRequest
from parley.models.registry import ModelRegistry, ModelState
from parley.store import ConversationStore
from tests.support.databases import drop_postgres_database
from tests.support.process import run_parley
from tests.support.server import running_parley
from tests.support.upstream import Upstream

PROMPT_PRICE, COMPLETION_PRICE = 2.0, 6.0  # per million tokens


def models(upstream: Upstream) -> list[dict[str, Any]]:
    return [
        {
            "name": "priced",
            "provider": "fake",
            "price": {"prompt_per_million": PROMPT_PRICE, "completion_per_million": COMPLETION_PRICE},
        },
        {"name": "free", "provider": "fake"},
        {"name": "broken", "provider": "openai", "base_url": f"{upstream.base_url}/v1", "model": "error-mid"},
    ]


def v1(client: httpx.Client, model: str, text: str, user: str | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return client.post("/v1/chat/completions", json=body, headers={"X-Parley-User": user} if user else {})


def report(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    reply = client.get("/api/usage", params=params)
    assert reply.status_code == 200, reply.text
    data: list[dict[str, Any]] = reply.json()["data"]
    return data


def by_group(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["group"]: line for line in lines}


def test_replies_on_every_route_are_counted_and_reported_each_way(upstream: Upstream, database_url: str) -> None:
    with (
        running_parley(models=models(upstream), database_url=database_url) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        first = v1(client, "priced", "count me on the OpenAI API")
        assert first.status_code == 200
        assert "x-ratelimit-limit-requests" not in first.headers  # no limits here: no headers
        streamed = client.post(
            "/v1/chat/completions",
            json={
                "model": "priced",
                "messages": [{"role": "user", "content": "and streamed, for alice"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"X-Parley-User": "alice"},
        )
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        chat = client.post("/api/chat", json={"message": "and on the chat API", "model": "priced", "stream": False})
        assert chat.status_code == 200
        assert v1(client, "free", "a free one for alice", user="alice").status_code == 200
        failed = v1(client, "broken", "this one fails upstream")
        assert failed.status_code == 502

        # The non-streamed replies tell their usage; the streamed one's adds to theirs.
        usages = [first.json()["usage"], chat.json()["usage"]]
        models_seen = by_group(report(client, group_by="model"))
        priced = models_seen["priced"]
        assert priced["requests"] == 3 and priced["errors"] == 0
        assert priced["prompt_tokens"] > sum(u["prompt_tokens"] for u in usages)  # (and the streamed one's)
        expected_cost = (priced["prompt_tokens"] * PROMPT_PRICE + priced["completion_tokens"] * COMPLETION_PRICE) / 1e6
        assert priced["cost"] == pytest.approx(expected_cost, rel=1e-6) and priced["cost"] > 0
        assert priced["total_tokens"] == priced["prompt_tokens"] + priced["completion_tokens"]
        assert models_seen["broken"]["errors"] == 1 and models_seen["broken"]["cost"] == 0
        users = by_group(report(client, group_by="user"))
        assert users["alice"]["requests"] == 2  # the X-Parley-User header names her
        assert users[""]["requests"] == 3
        today = datetime.now(UTC).date()
        days = report(client, group_by="day")
        assert [line["group"] for line in days] == [today.isoformat()]
        assert days[0]["requests"] == sum(line["requests"] for line in models_seen.values())
        keys = report(client, group_by="key")
        assert [(line["group"], line["key_alias"]) for line in keys] == [("", "open")]  # an open server: no key
        yesterday = (today - timedelta(days=1)).isoformat()
        assert report(client, group_by="day", **{"from": yesterday, "to": yesterday}) == []

        printed = run_parley("usage", "--url", url, "--group-by", "model")
        assert printed.returncode == 0, printed.stderr
        row = next(line for line in printed.stdout.splitlines() if "priced" in line)
        assert str(priced["prompt_tokens"]) in row.replace(",", "") and f"{priced['cost']:.4f}" in row
        assert "total" in printed.stdout


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "conversation"}, "query.group_by"),
        ({"from": "2026-13-01"}, "query.from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-12-01"}, "from"),
    ],
)
def test_a_bad_report_request_gets_a_400_in_openai_shape(params: dict[str, str], param: str) -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url:
        reply = httpx.get(f"{url}/api/usage", params=params)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_parley_usage_refuses_a_bad_group_and_an_unreachable_server() -> None:
    bad = run_parley("usage", "--group-by", "colour", "--url", "http://127.0.0.1:9")
    assert bad.returncode == 1 and "--group-by must be one of" in bad.stderr
    away = run_parley("usage", "--url", "http://127.0.0.1:9")
    assert away.returncode == 1 and "cannot reach" in away.stderr


async def test_a_key_reads_only_its_own_usage_and_the_admin_everyones(store: ConversationStore) -> None:
    configs: list[ModelConfig] = [
        FakeConfig(name="echo", provider="fake", price=ModelPrice(prompt_per_million=1e6, completion_per_million=0))
    ]
    registry = ModelRegistry(configs)
    registry.entries()[0].state = ModelState.READY
    recorder = UsageRecorder(store, prices_of(configs), flush_seconds=60)
    chat = ChatService(registry, [], gates=[recorder])
    callers = {
        "one": Principal(key_id="key-one", alias="one", limits=KeyLimits()),
        "two": Principal(key_id="key-two", alias="two", end_user="bob"),
    }
    for caller, times in (("one", 2), ("two", 3)):
        for _ in range(times):
            run = await chat.start(
                ChatRequest([ChatMessage(role="user", content="abcdefgh")]), principal=callers[caller]
            )
            await run.collect()
            await run.aclose()
    run = await chat.start(ChatRequest([ChatMessage(role="user", content="by the admin")]), principal=ADMIN)
    await run.collect()
    await run.aclose()
    await recorder.flush()
    today = datetime.now(UTC).date()
    own = await usage_report(store.engine, today, today, "key", key_id="key-one")
    assert [(line.group, line.key_alias, line.requests) for line in own] == [("key-one", "one", 2)]
    assert own[0].prompt_tokens == 2 * 2 and own[0].cost == pytest.approx(4.0)  # a dollar a token, for clarity
    everyone = await usage_report(store.engine, today, today, "key")
    assert [(line.group, line.requests) for line in everyone] == [("", 1), ("key-one", 2), ("key-two", 3)]
    users = await usage_report(store.engine, today, today, "user", key_id="key-two")
    assert [(line.group, line.requests) for line in users] == [("bob", 3)]
    # Flushed again later, the same rows grow (one upsert), rather than new rows appearing.
    run = await chat.start(ChatRequest([ChatMessage(role="user", content="abcdefgh")]), principal=callers["one"])
    await run.collect()
    await run.aclose()
    await recorder.aclose()
    again = await usage_report(store.engine, today, today, "model", key_id="key-one")
    assert [(line.group, line.requests) for line in again] == [("echo", 3)]


def test_the_report_of_a_database_gone_away_is_a_503_and_chats_on_v1_go_on(postgres_url: str) -> None:
    models = [{"name": "echo", "provider": "fake"}]
    with running_parley(models=models, database_url=postgres_url) as url, httpx.Client(base_url=url) as client:
        assert v1(client, "echo", "before").status_code == 200
        asyncio.run(drop_postgres_database(postgres_url))
        # /v1 keeps nothing but usage, which can't be written now: the reply still comes.
        assert v1(client, "echo", "after").status_code == 200
        reply = client.get("/api/usage", timeout=30)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "store_unavailable"
    assert str(make_url(postgres_url).database) not in reply.text
