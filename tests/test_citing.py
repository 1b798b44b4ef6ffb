"""Answers that cite: passages in the prompt, `sources` first on every transport, stored with the reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from websockets.sync.client import connect

from parley.events import PendingSource
from tests.support.overlap_knowledge import Passage, WordOverlapKnowledge
from tests.support.server import running_parley
from tests.support.upstream import Upstream, new_marker, running_upstream

VOLCANO = Passage("doc-volcano", "Volcanoes", "Mount Etna is the most active volcano in Europe, on Sicily.", page=3)
GLACIER = Passage("doc-glacier", "Glaciers", "The Aletsch glacier is the largest glacier in the Alps.")
COFFEE = Passage("doc-coffee", "Coffee", "Espresso is brewed by forcing hot water through finely ground coffee.")


# Three passages of about 30 tokens each; the more of "moon tides ocean" one shares, the higher it ranks.
TIDES = [
    Passage(f"doc-tide-{n}", f"Tides {n}", " ".join(["moon tides ocean"][:1] + ["water"] * 20 + extra))
    for n, extra in ((1, []), (2, ["moon"]), (3, ["moon", "tides"]))
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def knowledge() -> WordOverlapKnowledge:
    base = WordOverlapKnowledge()
    base.add("geo", [VOLCANO, GLACIER])
    base.add("kitchen", [COFFEE])
    base.add("tides", TIDES)
    base.add("alice-notes", [Passage("doc-alice", "Alice's notes", "Etna volcano diary entry.")], owner="open/alice")
    indexing = base.add("growing", [GLACIER])
    indexing.pending.append(PendingSource("doc-new", "New field report", "indexing", 0.4))
    return base


@pytest.fixture(scope="module")
def url(upstream: Upstream, knowledge: WordOverlapKnowledge) -> Iterator[str]:
    v1 = upstream.base_url + "/v1"
    models = [
        {"name": "text", "provider": "openai", "base_url": v1},
        {"name": "agent-search", "provider": "openai", "base_url": v1},
        {"name": "agent-desk", "provider": "openai", "base_url": v1},
        # A small context, counted by the remote estimate (4 characters a token), for fitting.
        {"name": "small", "provider": "openai", "base_url": v1, "model": "text", "context_size": 300},
    ]
    agents = [
        {"name": "librarian", "model": "agent-search", "collections": ["geo"]},
        {"name": "desk", "model": "agent-desk", "handoffs": ["librarian"]},
    ]
    knowledge_settings = {"context_share": 0.9}
    with running_parley(
        models=models, agents=agents, knowledge_base=knowledge, knowledge=knowledge_settings
    ) as base_url:
        yield base_url


def sse(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        connect_sse(client, "POST", "/api/chat", json=body, headers=headers or {}) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def system_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "system")


def test_sources_come_first_and_passages_reach_the_prompt(url: str, upstream: Upstream) -> None:
    marker = new_marker()
    events = sse(url, {"message": f"Which volcano is active in Europe? {marker}", "collections": ["geo"]})
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[1] == "sources"
    assert names.index("sources") < names.index("text_delta")
    passages = events[1][1]["passages"]
    assert passages[0]["document_id"] == "doc-volcano"
    assert passages[0]["index"] == 1 and passages[0]["page"] == 3
    assert set(passages[0]) == {"index", "document_id", "title", "uri", "page", "chunk_id", "text", "score"}
    seen = upstream.find(marker)
    prompt = system_text(seen.body)
    assert "[1] Volcanoes, page 3" in prompt and VOLCANO.text in prompt
    assert "[1], [2]" in prompt  # the citation instruction
    # The passages come before the conversation, the user's message last.
    assert seen.body["messages"][-1]["role"] == "user"


def test_sources_are_stored_and_exported(url: str) -> None:
    events = sse(url, {"message": "Tell me about the Aletsch glacier", "collections": ["geo"]})
    conversation = events[0][1]["conversation_id"]
    with httpx.Client(base_url=url) as client:
        detail = client.get(f"/api/conversations/{conversation}").json()
        reply = detail["messages"][-1]
        assert reply["role"] == "assistant"
        assert reply["sources"][0]["document_id"] == "doc-glacier"
        assert reply["sources"] == events[1][1]["passages"]
        assert detail["messages"][0]["sources"] is None
        markdown = client.get(f"/api/conversations/{conversation}/export", params={"format": "markdown"}).text
        assert "**Sources:**" in markdown and "1. Glaciers" in markdown


def test_follow_up_query_includes_the_previous_question(url: str, knowledge: WordOverlapKnowledge) -> None:
    first = sse(url, {"message": "Where is Mount Etna?", "collections": ["geo"]})
    conversation = first[0][1]["conversation_id"]
    sse(url, {"message": "How active is it?", "conversation_id": conversation, "collections": ["geo"]})
    assert knowledge.queries[-1] == "Where is Mount Etna?\nHow active is it?"


def test_another_owners_collection_is_not_found_and_nothing_is_stored(url: str) -> None:
    with httpx.Client(base_url=url, headers={"X-Parley-User": "bob"}) as client:
        before = client.get("/api/conversations").json()["data"]
        reply = client.post("/api/chat", json={"message": "Etna?", "collections": ["alice-notes"], "stream": False})
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "collection_not_found"
        assert client.get("/api/conversations").json()["data"] == before
    alice = sse(url, {"message": "Etna diary", "collections": ["alice-notes"]}, headers={"X-Parley-User": "alice"})
    assert alice[1][1]["passages"][0]["document_id"] == "doc-alice"


def test_a_question_during_indexing_says_so(url: str, upstream: Upstream) -> None:
    marker = new_marker()
    events = sse(url, {"message": f"largest glacier {marker}", "collections": ["growing"]})
    pending = events[1][1]["pending"]
    assert pending == [{"document_id": "doc-new", "title": "New field report", "state": "indexing", "progress": 0.4}]
    assert "Still being indexed, so not searched yet: New field report" in system_text(upstream.find(marker).body)


def test_json_reply_carries_sources(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        reply = client.post("/api/chat", json={"message": "espresso", "collections": ["kitchen"], "stream": False})
    assert reply.status_code == 200
    assert reply.json()["sources"]["passages"][0]["document_id"] == "doc-coffee"


def test_websocket_sources_frame_comes_first(url: str) -> None:
    with connect(url.replace("http", "ws") + "/ws/chat/citing-ws-1") as ws:
        ws.send(json.dumps({"type": "message", "message": "Etna volcano", "collections": ["geo"]}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["event"] not in ("message_complete", "error"):
            frames.append(json.loads(ws.recv(timeout=30)))
    types = [frame["event"] for frame in frames]
    assert frames[types.index("sources")]["data"]["passages"][0]["document_id"] == "doc-volcano"
    assert types.index("sources") < types.index("text_delta")
    assert types.index("message_start") < types.index("sources")


def test_v1_sources_extension_with_the_openai_client(url: str, upstream: Upstream) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    marker = new_marker()
    stream = client.chat.completions.create(
        model="text",
        messages=[{"role": "user", "content": f"Which volcano is in Sicily? {marker}"}],
        stream=True,
        extra_body={"parley_collections": ["geo"]},
    )
    chunks = list(stream)
    extension: list[dict[str, Any] | None] = [(chunk.model_extra or {}).get("parley") for chunk in chunks]
    assert extension[0] is None  # the role chunk
    sources = extension[1]
    assert sources is not None and sources["type"] == "sources"
    assert sources["passages"][0]["document_id"] == "doc-volcano"
    first_text = next(i for i, chunk in enumerate(chunks) if chunk.choices and chunk.choices[0].delta.content)
    assert first_text > 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the upstream."
    assert VOLCANO.text in system_text(upstream.find(marker).body)
    whole = client.chat.completions.create(
        model="text", messages=[{"role": "user", "content": "coffee"}], extra_body={"parley_collections": ["kitchen"]}
    )
    assert whole.choices[0].message.content == "Hello from the upstream."
    assert whole.model_extra is not None
    assert whole.model_extra["parley"]["sources"]["passages"][0]["document_id"] == "doc-coffee"


def test_v1_unknown_collection_is_a_404(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="text", messages=[{"role": "user", "content": "hi"}], extra_body={"parley_collections": ["nope"]}
        )


def test_agent_with_collections_cites_and_searches(url: str, upstream: Upstream) -> None:
    events = sse(url, {"message": "glacier in the Alps", "agent": "librarian"})
    names = [name for name, _ in events]
    assert names[1] == "sources"  # the agent's collections are searched each turn
    results = [payload for name, payload in events if name == "tool_result"]
    assert results and results[0]["name"] == "search_knowledge"
    assert results[0]["output"].startswith("[1] Glaciers")
    text = "".join(payload["text"] for name, payload in events if name == "text_delta")
    assert "Per the passages: [1] Glaciers" in text


@pytest.mark.parametrize("path", ["/api/chat", "/v1"])
def test_an_agent_handed_the_conversation_searches_its_own_collections(url: str, path: str) -> None:
    if path == "/api/chat":
        events = sse(url, {"message": "glacier in the Alps", "agent": "desk"})
        handoffs = [payload["to_agent"] for name, payload in events if name == "agent_handoff"]
        results = [(payload["name"], payload["output"]) for name, payload in events if name == "tool_result"]
        text = "".join(payload["text"] for name, payload in events if name == "text_delta")
    else:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        chunks = list(
            client.chat.completions.create(
                model="agent:desk",
                messages=[{"role": "user", "content": "glacier in the Alps"}],
                stream=True,
                extra_body={"parley_steps": True},
            )
        )
        steps = [chunk.model_extra["parley"] for chunk in chunks if chunk.model_extra and "parley" in chunk.model_extra]
        handoffs = [step["to_agent"] for step in steps if step["type"] == "agent_handoff"]
        results = [(step["name"], step["output"]) for step in steps if step["type"] == "tool_result"]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert handoffs == ["librarian"]
    assert [name for name, _ in results] == ["transfer_to_librarian", "search_knowledge"]
    assert results[1][1].startswith("[1] Glaciers"), "the librarian searched its own collection"
    assert "Per the passages: [1] Glaciers" in text


def test_fitting_drops_passages_before_history(url: str, upstream: Upstream) -> None:
    # Alone, all three passages fit the small model's context.
    marker = new_marker()
    alone = sse(url, {"message": f"moon tides ocean {marker}", "model": "small", "collections": ["tides"]})
    assert len(alone[1][1]["passages"]) == 3
    assert all(passage.text in system_text(upstream.find(marker).body) for passage in TIDES)
    # After a long first turn, history and all three don't fit: the lowest-scored passages go, the history stays.
    long_question = "Tell me everything about the sea " + "and the waves " * 20
    first = sse(url, {"message": long_question, "model": "small"})
    conversation = first[0][1]["conversation_id"]
    marker = new_marker()
    body = {"message": f"moon tides {marker}", "model": "small", "conversation_id": conversation}
    events = sse(url, {**body, "collections": ["tides"]})
    assert events[0][1]["truncated_messages"] == 0
    kept = events[1][1]["passages"]
    assert 1 <= len(kept) < 3
    assert [passage["document_id"] for passage in kept] == ["doc-tide-3", "doc-tide-2"][: len(kept)]
    assert [passage["index"] for passage in kept] == list(range(1, len(kept) + 1))
    seen = upstream.find(marker).body
    assert seen["messages"][-3]["content"] == long_question  # the whole history reached the model
    assert "] Tides 1\n" not in system_text(seen) and "] Tides 3\n" in system_text(seen)


def test_v1_agent_with_collections_cites(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="agent:librarian", messages=[{"role": "user", "content": "largest glacier in the Alps"}]
    )
    assert reply.model_extra is not None
    assert reply.model_extra["parley"]["sources"]["passages"][0]["document_id"] == "doc-glacier"
    assert reply.choices[0].message.content is not None
    assert "Per the passages: [1] Glaciers" in reply.choices[0].message.content


def test_collections_are_documented(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "collections" in schema["components"]["schemas"]["ChatBody"]["properties"]
    assert "SourcesOut" in schema["components"]["schemas"]
    assert "collection" in schema["paths"]["/api/chat"]["post"]["responses"]["404"]["description"]
